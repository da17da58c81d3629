"""Helpers for the trainer tests: the tiny config, subprocess runs of the entry point, metrics."""
import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import tempfile

import pytest

from jaxift.data import synthetic

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


# Rows of 80 tokens hold every tiny synthetic example (none dropped, so one process and two
# processes see the same records); one row length means one compilation.
TEST_SEQ_LEN = 80
COMPILE_CACHE = pathlib.Path(tempfile.gettempdir()) / "jaxift_train_tests_xla_cache"


@pytest.fixture(autouse=True, scope="session")
def _compile_cache():
  """A persistent XLA cache for this directory's tests: many runs compile the same tiny steps."""
  import jax
  old = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
  jax.config.update("jax_compilation_cache_dir", str(COMPILE_CACHE))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  yield
  jax.config.update("jax_compilation_cache_dir", old[0])
  jax.config.update("jax_persistent_cache_min_compile_time_secs", old[1])


def make_tiny_config(gpt2_dir: str, **arg):
  """The tiny config made cheaper for tests: 4 rows of 80 tokens, no shuffling."""
  arg = {"tokenizer": gpt2_dir, "batch": 4, **arg}
  c = load_config_file(TINY, ",".join(f"{k}={v}" for k, v in arg.items()))
  c.data.max_seq_length = TEST_SEQ_LEN
  c.data.shuffle = False
  c.data.prefetch_buffer_size = 2  # resume must be exact with a prefetching iterator too
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
          f"--config={TINY}:tokenizer={gpt2_dir},batch=4,steps={steps}",
          f"--workdir={workdir}", f"--config.data.max_seq_length={TEST_SEQ_LEN}",
          "--config.data.shuffle=False", *extra]


def subprocess_env(**extra: str) -> dict[str, str]:
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO_ROOT),
             JAX_COMPILATION_CACHE_DIR=str(COMPILE_CACHE),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  env.pop("XLA_FLAGS", None)
  env.update(extra)
  return env


def run(cmd: list[str], timeout: int = 300, cwd=REPO_ROOT, **env: str) -> subprocess.CompletedProcess:
  proc = subprocess.run(cmd, cwd=cwd, env=subprocess_env(**env), capture_output=True,
                        text=True, timeout=timeout)
  assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
  return proc


@pytest.fixture(scope="session")
def pairs_file(tmp_path_factory):
  """96 Alpaca preference records: chosen = the right answer, rejected = another record's."""
  records = synthetic.make_examples(96, seed=0)
  out = [{"instruction": r["instruction"], "input": r["input"], "chosen": r["output"],
          "rejected": records[(i + 7) % len(records)]["output"]} for i, r in enumerate(records)]
  path = tmp_path_factory.mktemp("pairs") / "pairs.json"
  path.write_text(json.dumps(out))
  return str(path)


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, gpt2_dir):
  """4 tiny steps on one device without interruption: what every other layout must reproduce."""
  from jaxift.train.trainer import train_and_evaluate
  workdir = tmp_path_factory.mktemp("reference")
  results = train_and_evaluate(make_tiny_config(gpt2_dir, steps=4), str(workdir))
  return workdir, results
