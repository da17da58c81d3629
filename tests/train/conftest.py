"""Helpers for the trainer tests: the tiny config, subprocess runs of the entry point, metrics."""
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
TINY = REPO_ROOT / "configs" / "tiny.py"


def load_config_file(path: pathlib.Path, arg: str | None = None):
  spec = importlib.util.spec_from_file_location(f"config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


@pytest.fixture(scope="session")
def gpt2_dir(shared_data) -> str:
  return str(shared_data / "gpt2")


def make_tiny_config(gpt2_dir: str, **arg):
  """The tiny config made cheaper for tests: 4 rows of at most 64 tokens, no shuffling."""
  arg = {"tokenizer": gpt2_dir, "batch": 4, "batching": "bucket", **arg}
  c = load_config_file(TINY, ",".join(f"{k}={v}" for k, v in arg.items()))
  c.data.max_seq_length = 64
  c.data.buckets = (48, 64)
  c.data.shuffle = False
  c.checkpoint.async_save = False
  return c


@pytest.fixture
def tiny_config(gpt2_dir):
  return lambda **arg: make_tiny_config(gpt2_dir, **arg)


def train_records(workdir, key: str = "loss") -> dict[int, float]:
  lines = (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
  records = [json.loads(line) for line in lines if line.strip()]
  return {r["step"]: r[key] for r in records if r["split"] == "train"}


def tiny_cli_args(gpt2_dir: str, workdir, *extra: str, steps: int = 2) -> list[str]:
  """`python -m jaxift.main` with the test variant of configs/tiny.py."""
  return [sys.executable, "-m", "jaxift.main",
          f"--config={TINY}:tokenizer={gpt2_dir},batch=4,batching=bucket,steps={steps}",
          f"--workdir={workdir}", "--config.data.max_seq_length=64",
          "--config.data.buckets=(48, 64)", "--config.data.shuffle=False", *extra]


def subprocess_env(**extra: str) -> dict[str, str]:
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO_ROOT))
  env.pop("XLA_FLAGS", None)
  env.update(extra)
  return env


def run(cmd: list[str], timeout: int = 300, **env: str) -> subprocess.CompletedProcess:
  proc = subprocess.run(cmd, cwd=REPO_ROOT, env=subprocess_env(**env), capture_output=True,
                        text=True, timeout=timeout)
  assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
  return proc
