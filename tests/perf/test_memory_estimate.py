"""jaxift.tools.memory_estimate: compiles a config's train step without running it; bytes per device
are positive, exact for parameters/optimizer state, and grow with the batch."""
import importlib.util
import json
import pathlib
import subprocess
import sys

import pytest

from jaxift.tools import memory_estimate

REPO = pathlib.Path(__file__).resolve().parents[2]


def _load(path: pathlib.Path, name: str):
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def tool():
  return memory_estimate


def _config(batch: int, layers: int = 2, remat: str = "none"):
  config = _load(REPO / "configs" / "tiny.py", "jaxift_configs_tiny").get_config("vocab=256")
  config.train.global_batch_size = batch
  config.data.max_seq_length = 64
  config.model.remat_policy = remat
  config.model.scan_layers = True  # one compiled layer body: compile time independent of depth
  config.model.hf_config.num_hidden_layers = layers
  return config


# AdamW: two float32 moments per parameter, plus scalar counters.
def _param_count(config) -> int:
  h = config.model.hf_config
  d, f, v, n, k, hd = (h.hidden_size, h.intermediate_size, h.vocab_size, h.num_attention_heads,
                       h.num_key_value_heads, h.head_dim)
  per_layer = d * n * hd * 2 + 2 * d * k * hd + 3 * d * f + 2 * d
  return h.num_hidden_layers * per_layer + v * d + d  # tied embedding, final norm


@pytest.fixture(scope="module")
def estimates(tool):
  """Three compiles of a 6-layer scanned tiny model: batch 2 and 8 without remat, 8 with full."""
  return {(batch, remat): tool.estimate(_config(batch, layers=6, remat=remat))
          for batch, remat in ((2, "none"), (8, "none"), (8, "full"))}


def test_exact_state_bytes_and_growth_with_batch(estimates):
  small, large = estimates[(2, "none")], estimates[(8, "none")]
  assert small["params_bytes_per_device"] == 4 * _param_count(_config(2, layers=6))
  assert 2 * small["params_bytes_per_device"] <= small["opt_state_bytes_per_device"] <= (
      2 * small["params_bytes_per_device"] + 1024)
  assert small["batch_bytes_per_device"] == 5 * 4 * 2 * 64
  for key in ("argument_bytes", "temp_bytes", "peak_bytes_per_device"):
    assert small[key] > 0
  assert small["peak_bytes_per_device"] >= (small["params_bytes_per_device"]
                                            + small["opt_state_bytes_per_device"])
  assert large["temp_bytes"] > small["temp_bytes"]
  assert large["peak_bytes_per_device"] > small["peak_bytes_per_device"]


def test_full_remat_reduces_temporaries_of_a_deeper_model(estimates):
  plain, remat = estimates[(8, "none")], estimates[(8, "full")]
  assert remat["params_bytes_per_device"] == plain["params_bytes_per_device"]
  assert remat["temp_bytes"] < plain["temp_bytes"]


def test_cli_on_fake_devices_shards_the_state(tmp_path):
  """--devices=4 on CPU: a subprocess with 4 fake devices; FSDP splits params 4 ways."""
  out = tmp_path / "estimate.json"
  cmd = [sys.executable, "-m", "jaxift.tools.memory_estimate", f"--config={REPO / 'configs' / 'tiny.py'}:vocab=256",
         "--devices=4", "--seq_len=64", "--config.train.global_batch_size=4",
         "--config.model.scan_layers=True", f"--out={out}"]
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(out.read_text())
  assert report["num_devices"] == 4 and report["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
  assert report["seq_len"] == 64 and report["global_batch"] == 4
  total_params = 4 * _param_count(_config(4))
  # Every large tensor is split over fsdp=4; norms (replicated) keep it slightly above a quarter.
  assert total_params / 4 <= report["params_bytes_per_device"] < total_params / 3
  assert report["batch_bytes_per_device"] == 5 * 4 * 1 * 64
  assert "GiB per device on 4 cpu devices" in proc.stderr


def test_cli_refuses_an_unknown_shape():
  proc = subprocess.run([sys.executable, "-m", "jaxift.tools.memory_estimate", f"--config={REPO / 'configs' / 'tiny.py'}",
                         "--shape=gpt5"], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0 and "--shape='gpt5' is unknown" in proc.stderr
