"""Ahead-of-time memory estimate: compile a config's train step without running it, bytes per device.

  python -m jaxift.tools.memory_estimate --config=configs/llama3_8b_tpu.py:batch=16,seq=4096 \
      --shape=llama-3.1-8b --devices=16
  python -m jaxift.tools.memory_estimate --config=configs/quickstart.py --config.train.global_batch_size=8

`--shape` takes the architecture from `jaxift.tools.shapes.SHAPES` (no checkpoint needed); without
it the config's `model.path` (only its config/metadata is read) or `model.hf_config` is used.

Nothing is loaded or allocated: `jaxift.train.state.build(..., abstract_hf=...)` -- the trainer's
own state builder -- gives parameters, optimizer state and the batch as `jax.ShapeDtypeStruct`s
carrying the trainer's shardings (LoRA configs: adapters and frozen base, QLoRA: the base's codes
and scales, `frozen_bytes_per_device`), and the trainer's jitted
train step is lowered and compiled (`.lower(...).compile().memory_analysis()`). The numbers are per
device (one SPMD partition).

Preference objectives (`train.objective` dpo/orpo/simpo): `train.global_batch_size` counts pairs,
so the step is sized on twice as many rows; a full-fine-tuning DPO step takes its frozen reference
copy as an argument (`reference_bytes_per_device`). `--preference_reference` sizes the two ways to
give full fine-tuning DPO its reference (docs/training.md "Preference tuning"): the frozen, sharded
copy (the DPO step as built), against a pre-pass storing the reference log-probs with the data
(`preference_reference_options`).

`--devices=N` compiles for N devices on whatever backend this machine has; on a CPU-only machine it
re-runs itself in a subprocess with N fake CPU devices (XLA_FLAGS), so a laptop can size a slice.
The CPU compiler fuses and lays out differently from the TPU/GPU ones: treat CPU numbers as an
estimate (parameters, optimizer state and batch bytes are exact; temporaries are approximate) and
run the tool on one host of the target slice for the real figure.
"""
import json
import os
import subprocess
import sys
import time

from absl import app
from absl import flags
import jax
import numpy as np
from ml_collections import config_flags

from jaxift import tools
from jaxift import fileio
from jaxift.model import loading
from jaxift.model import sharding
from jaxift.tools.shapes import SHAPES
from jaxift.train import state as state_lib

_CHILD_ENV = "JAXIFT_MEMORY_ESTIMATE_CHILD"

def define_flags() -> None:
  """The command-line flags; defined only when run as a program, so that importing this module
  (tests, other tools) never clashes with flags of the same names elsewhere."""
  config_flags.DEFINE_config_file(
      "config", None, "Experiment config file (variants after ':' and --config.a.b=v overrides as "
      "for jaxift.main).", lock_config=True)
  flags.DEFINE_integer("devices", 0, "Compile for this many devices (0: the devices "
                                  "here); on CPU, fake devices in a subprocess.")
  flags.DEFINE_integer("seq_len", 0, "Row length (0: config.data.max_seq_length).")
  flags.DEFINE_string("shape", "", "Use this architecture of jaxift.tools.shapes "
                               f"({', '.join(sorted(SHAPES))}) instead of the config's "
                               "model.path / model.hf_config.")
  flags.DEFINE_string("out", "", "Also write the JSON here (atomically).")
  flags.DEFINE_integer("preference_reference", 0, "> 0: size full-fine-tuning DPO's reference "
                       "both ways (a frozen copy vs a pre-pass of this many pairs' log-probs).")


def leaf_bytes_per_device(abstract) -> int:
  """Bytes one device holds of a tree of ShapeDtypeStructs with shardings."""
  total = 0
  for x in jax.tree.leaves(abstract):
    shape = x.shape
    if getattr(x, "sharding", None) is not None:
      shape = x.sharding.shard_shape(x.shape)
    total += int(np.prod(shape, dtype=np.int64)) * np.dtype(x.dtype).itemsize
  return total


def estimate(config, seq_len: int = 0) -> dict:
  """Compile the trainer's train step of `config` for the devices here; the memory report."""
  mesh = sharding.make_mesh(tuple(config.mesh.shape))
  total_steps = int(config.train.num_steps) if config.train.num_steps > 0 else 1000
  state = state_lib.build(config, mesh, total_steps, abstract_hf=loading.architecture(config.model))
  objective = str(config.train.get("objective", "sft"))
  pairs = objective != "sft"  # global_batch_size counts pairs: two rows each
  rows = int(config.train.global_batch_size) * (2 if pairs else 1)
  t = int(seq_len or config.data.max_seq_length)
  batch = state.abstract_batch(rows, t)
  step = jax.ShapeDtypeStruct((), np.int32, sharding=state.replicated)

  t0 = time.perf_counter()
  compiled = state.train_step.lower(state.params, state.opt_state, state.rest, step,
                                    batch).compile()
  compile_s = time.perf_counter() - t0
  m = compiled.memory_analysis()
  arg, out = int(m.argument_size_in_bytes), int(m.output_size_in_bytes)
  alias, temp = int(m.alias_size_in_bytes), int(m.temp_size_in_bytes)
  code = int(m.generated_code_size_in_bytes)
  return {
      "platform": jax.devices()[0].platform,
      "device_kind": jax.devices()[0].device_kind,
      "num_devices": mesh.size,
      "mesh": dict(mesh.shape),
      "global_batch": rows,
      "objective": objective,
      "seq_len": t,
      "model": {k: config.model.get(k) for k in ("dtype", "param_dtype", "scan_layers",
                                                 "remat_policy", "attention")},
      "lora": bool(config.lora.enabled),
      # QLoRA: how the frozen base is held (its bytes: frozen_bytes_per_device).
      "lora_settings": ({k: config.lora.get(k) for k in (
          "rank", "target_regex", "base_dtype", "base_quantization", "quantization_block_size",
          "quantize_embedding")} if config.lora.enabled else None),
      "loss_chunk_size": int(config.train.loss_chunk_size),
      "params_bytes_per_device": leaf_bytes_per_device(state.params),
      "frozen_bytes_per_device": leaf_bytes_per_device(state.rest),
      "opt_state_bytes_per_device": leaf_bytes_per_device(state.opt_state),
      "reference_bytes_per_device": (0 if state.ref_params is None else
                                     leaf_bytes_per_device(state.ref_params)),
      "batch_bytes_per_device": leaf_bytes_per_device(batch),
      "argument_bytes": arg,
      "output_bytes": out,
      "alias_bytes": alias,
      "temp_bytes": temp,
      "generated_code_bytes": code,
      # Donated params/opt state are aliased into the outputs, so they are not counted twice.
      "peak_bytes_per_device": arg + out - alias + temp,
      "compile_s": round(compile_s, 2),
  }


# A pre-pass stores each pair's reference log-prob sums (chosen, rejected) as two float32s.
PREPASS_BYTES_PER_PAIR = 8


def preference_reference_options(config, seq_len: int = 0, dataset_pairs: int = 0) -> dict:
  """Full-fine-tuning DPO's reference, sized both ways on the devices here.

  frozen_copy: the DPO train step as the trainer builds it (the frozen copy of the parameters is a
  step argument, and the step runs the reference forward). prepass: the same step with the
  reference log-probs read from the data instead; its compiled step is the SimPO step's (the same
  policy forward and backward, no reference argument and no reference forward: the two differ only
  in per-pair scalar arithmetic), plus the stored log-probs: 8 bytes per pair of the dataset (on
  the host with the data) and per pair of the batch (on the device)."""
  def sized(objective: str) -> dict:
    c = config.copy_and_resolve_references()
    with c.unlocked():
      c.train.objective, c.lora.enabled = objective, False
    return estimate(c, seq_len)

  frozen, prepass = sized("dpo"), sized("simpo")
  batch_extra = PREPASS_BYTES_PER_PAIR * int(config.train.global_batch_size)
  prepass["batch_bytes_per_device"] += batch_extra // frozen["num_devices"]
  prepass["peak_bytes_per_device"] += batch_extra // frozen["num_devices"]
  return {"frozen_copy": frozen, "prepass": prepass,
          "prepass_dataset_pairs": dataset_pairs,
          "prepass_dataset_bytes": PREPASS_BYTES_PER_PAIR * dataset_pairs,
          "frozen_copy_extra_peak_bytes_per_device": (frozen["peak_bytes_per_device"]
                                                      - prepass["peak_bytes_per_device"])}


def _run_child(devices: int) -> int:
  """Re-run this command with `devices` fake CPU devices (they must exist before JAX starts)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", **{_CHILD_ENV: "1"})
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                      f" --xla_force_host_platform_device_count={devices}").strip()
  return subprocess.call([sys.executable, "-m", "jaxift.tools.memory_estimate", *sys.argv[1:]],
                         env=env)


FLAGS = flags.FLAGS


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  wanted = FLAGS.devices
  if wanted and wanted != jax.device_count():
    if os.environ.get(_CHILD_ENV) or jax.default_backend() != "cpu":
      raise app.UsageError(f"--devices={wanted}, but this backend has {jax.device_count()} "
                           f"{jax.default_backend()} devices (fake devices only exist on CPU)")
    sys.exit(_run_child(wanted))
  config = FLAGS.config
  if FLAGS.shape:
    if FLAGS.shape not in SHAPES:
      raise app.UsageError(f"--shape={FLAGS.shape!r} is unknown; choose one of {sorted(SHAPES)}")
    with config.unlocked():
      config.model.path, config.model.hf_config = "", SHAPES[FLAGS.shape]
  if FLAGS.preference_reference:
    options = preference_reference_options(config, FLAGS.seq_len, FLAGS.preference_reference)
    report = options["frozen_copy"]
  else:
    options, report = None, estimate(config, FLAGS.seq_len)
  text = json.dumps(options or report, indent=1)
  if FLAGS.out:
    fileio.write_text(FLAGS.out, text + "\n")
  print(text, flush=True)
  gib = 1024 ** 3
  print(f"peak {report['peak_bytes_per_device'] / gib:.3f} GiB per device on "
        f"{report['num_devices']} {report['platform']} devices (params "
        f"{report['params_bytes_per_device'] / gib:.3f}, frozen "
        f"{report['frozen_bytes_per_device'] / gib:.3f}, optimizer "
        f"{report['opt_state_bytes_per_device'] / gib:.3f}, temporaries "
        f"{report['temp_bytes'] / gib:.3f} GiB)", file=sys.stderr)
  if options:
    print(f"DPO reference: frozen copy peak {report['peak_bytes_per_device'] / gib:.3f} GiB per "
          f"device (copy {report['reference_bytes_per_device'] / gib:.3f}); pre-pass peak "
          f"{options['prepass']['peak_bytes_per_device'] / gib:.3f} GiB per device + "
          f"{options['prepass_dataset_bytes'] / 2**20:.2f} MiB of stored log-probs for "
          f"{options['prepass_dataset_pairs']} pairs", file=sys.stderr)


if __name__ == "__main__":
  define_flags()
  flags.mark_flags_as_required(["config"])
  tools.run(main)
