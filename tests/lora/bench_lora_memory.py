"""Not a test: the ahead-of-time memory table of docs/benchmarks.md (per device).

  python tests/lora/bench_lora_memory.py SHAPE CHUNK full|lora [bfloat16]
  e.g.  python tests/lora/bench_lora_memory.py llama-3.1-8b 512 lora bfloat16

SHAPE from tools/benchmark.py's SHAPES. Batch 8 x 2048, bfloat16 compute, scanned layers, remat
`full`, mesh (1, -1, 1) over 8 fake CPU devices (set here, before JAX starts); the trainer's step
from tools/memory_estimate.train_step_parts, compiled on abstract inputs. Prints one JSON line.
"""
import json
import os
import pathlib
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "tools")]
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def main(shape: str, chunk: int, method: str, base_dtype: str = "") -> None:
  from benchmark import SHAPES  # pylint: disable=import-outside-toplevel
  from memory_estimate import _leaf_bytes_per_device, abstract_batch, train_step_parts  # pylint: disable=import-outside-toplevel
  from jaxift.model import lora  # pylint: disable=import-outside-toplevel
  from jaxift.train import checkpoint as ckpt_lib  # pylint: disable=import-outside-toplevel
  from jaxift.train import sharding  # pylint: disable=import-outside-toplevel
  from jaxift.train.config import base_config, mesh_rules  # pylint: disable=import-outside-toplevel

  c = base_config()
  c.model.dtype, c.model.scan_layers, c.model.remat_policy = "bfloat16", True, "full"
  c.train.global_batch_size, c.train.loss_chunk_size = 8, chunk
  c.lora.enabled, c.lora.rank, c.lora.alpha, c.lora.base_dtype = True, 16, 32.0, base_dtype
  mesh = sharding.make_mesh((1, -1, 1))
  if method == "lora":
    graphdef, params, rest, _ = lora.abstract_split(c, SHAPES[shape], mesh, mesh_rules(c))
  else:
    graphdef, params, rest, _ = ckpt_lib.abstract_model(c.model, SHAPES[shape], mesh,
                                                        mesh_rules(c))
  parts = train_step_parts(c, mesh, graphdef, rest, params)
  batch = abstract_batch(8, 2048, parts["batch_sharding"])
  t0 = time.perf_counter()
  args = parts["args"](params, parts["opt_state"], parts["step"], batch)
  m = parts["train_step"].lower(*args).compile().memory_analysis()
  gib = 2**30
  print(json.dumps(dict(
      shape=shape, method=method, base_dtype=base_dtype, loss_chunk=chunk,
      trained_gib=_leaf_bytes_per_device(params) / gib,
      frozen_gib=_leaf_bytes_per_device(rest) / gib,
      opt_state_gib=_leaf_bytes_per_device(parts["opt_state"]) / gib,
      temp_gib=m.temp_size_in_bytes / gib,
      peak_gib=(m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
                + m.temp_size_in_bytes) / gib,
      compile_s=round(time.perf_counter() - t0, 1))), flush=True)


if __name__ == "__main__":
  main(sys.argv[1], int(sys.argv[2]), sys.argv[3], *(sys.argv[4:5]))
