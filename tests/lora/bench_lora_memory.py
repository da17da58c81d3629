"""Not a test: the ahead-of-time memory table of docs/benchmarks.md (per device).

  python tests/lora/bench_lora_memory.py SHAPE CHUNK full|lora [bfloat16]
  e.g.  python tests/lora/bench_lora_memory.py llama-3.1-8b 512 lora bfloat16

SHAPE from jaxift.tools.shapes. Batch 8 x 2048, bfloat16 compute, scanned layers, remat
`full`, mesh (1, -1, 1) over 8 fake CPU devices (set here, before JAX starts); the trainer's step
from jaxift.tools.memory_estimate.estimate (the trainer's state builder), compiled on abstract inputs. Prints one JSON line.
"""
import json
import os
import pathlib
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO)]
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def main(shape: str, chunk: int, method: str, base_dtype: str = "") -> None:
  from jaxift.tools.memory_estimate import estimate  # pylint: disable=import-outside-toplevel
  from jaxift.tools.shapes import SHAPES  # pylint: disable=import-outside-toplevel
  from jaxift.train.config import base_config  # pylint: disable=import-outside-toplevel
  # (imported here: XLA_FLAGS above must be set before JAX starts)

  c = base_config()
  c.model.path, c.model.hf_config = "", SHAPES[shape]
  c.model.dtype, c.model.scan_layers, c.model.remat_policy = "bfloat16", True, "full"
  c.train.global_batch_size, c.train.loss_chunk_size = 8, chunk
  c.data.max_seq_length = 2048
  c.lora.enabled = method == "lora"
  c.lora.rank, c.lora.alpha, c.lora.base_dtype = 16, 32.0, base_dtype
  report = estimate(c)
  gib = 2**30
  print(json.dumps(dict(
      shape=shape, method=method, base_dtype=base_dtype, loss_chunk=chunk,
      trained_gib=report["params_bytes_per_device"] / gib,
      frozen_gib=report["frozen_bytes_per_device"] / gib,
      opt_state_gib=report["opt_state_bytes_per_device"] / gib,
      temp_gib=report["temp_bytes"] / gib,
      peak_gib=report["peak_bytes_per_device"] / gib,
      compile_s=report["compile_s"])), flush=True)


if __name__ == "__main__":
  main(sys.argv[1], int(sys.argv[2]), sys.argv[3], *(sys.argv[4:5]))
