"""jaxift.tools.memory_estimate on preference configs: pairs are sized as two rows each, and
full-fine-tuning DPO's frozen reference copy is one more argument of the compiled step, exactly the
parameters' bytes (the compiler's own argument count), against a pre-pass that stores 8 bytes of
reference log-probs per pair."""
import importlib.util
import pathlib

from jaxift.tools import memory_estimate
from tests.perf.test_memory_estimate import _param_count

REPO = pathlib.Path(__file__).resolve().parents[2]


def _tiny(pairs: int):
  spec = importlib.util.spec_from_file_location("jaxift_configs_tiny_pref", REPO / "configs" /
                                                "tiny.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("vocab=256")
  config.train.global_batch_size = pairs
  config.data.max_seq_length = 64
  config.model.scan_layers = True
  return config


def test_frozen_copy_versus_prepass():
  config = _tiny(pairs=2)
  report = memory_estimate.preference_reference_options(config, dataset_pairs=1100)
  frozen, prepass = report["frozen_copy"], report["prepass"]
  params_bytes = 4 * _param_count(config)
  assert frozen["objective"] == "dpo" and prepass["objective"] == "simpo"
  assert frozen["global_batch"] == prepass["global_batch"] == 4  # 2 pairs = 4 rows
  assert frozen["params_bytes_per_device"] == params_bytes
  assert frozen["reference_bytes_per_device"] == params_bytes
  assert prepass["reference_bytes_per_device"] == 0
  # The compiled step's arguments differ by exactly the frozen copy.
  assert frozen["argument_bytes"] - prepass["argument_bytes"] == params_bytes
  assert frozen["batch_bytes_per_device"] == 5 * 4 * 4 * 64
  assert prepass["batch_bytes_per_device"] == 5 * 4 * 4 * 64 + 8 * 2  # + 2 pairs' log-probs
  assert report["prepass_dataset_bytes"] == 8 * 1100
  assert report["frozen_copy_extra_peak_bytes_per_device"] == (
      frozen["peak_bytes_per_device"] - prepass["peak_bytes_per_device"]) > 0
  assert config.train.objective == "sft"  # the caller's config is left alone


def test_sft_config_sizes_rows_not_pairs():
  report = memory_estimate.estimate(_tiny(pairs=2))
  assert report["objective"] == "sft" and report["global_batch"] == 2
  assert report["reference_bytes_per_device"] == 0
