"""Ahead-of-time memory estimate: compile a config's train step without running it, bytes per device.

  python tools/memory_estimate.py --config=configs/llama3_8b_tpu.py:batch=16,seq=4096 \
      --shape=llama-3.1-8b --devices=16
  python tools/memory_estimate.py --config=configs/quickstart.py --config.train.global_batch_size=8

`--shape` takes the architecture from tools/benchmark.py's SHAPES (no checkpoint needed); without
it the config's `model.path` (only its config/metadata is read) or `model.hf_config` is used.

Nothing is loaded or allocated: the decoder is built with `nnx.eval_shape`, parameters, optimizer
state and the batch are `jax.ShapeDtypeStruct`s carrying the trainer's shardings, and the jitted
train step is lowered and compiled (`.lower(...).compile().memory_analysis()`). The numbers are per
device (one SPMD partition).

`--devices=N` compiles for N devices on whatever backend this machine has; on a CPU-only machine it
re-runs itself in a subprocess with N fake CPU devices (XLA_FLAGS), so a laptop can size a slice.
The CPU compiler fuses and lays out differently from the TPU/GPU ones: treat CPU numbers as an
estimate (parameters, optimizer state and batch bytes are exact; temporaries are approximate) and
run the tool on one host of the target slice for the real figure.
"""
import inspect
import json
import os
import pathlib
import subprocess
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

_CHILD_ENV = "JAXIFT_MEMORY_ESTIMATE_CHILD"


def _leaf_bytes_per_device(abstract) -> int:
  """Bytes one device holds of a tree of ShapeDtypeStructs with shardings."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  total = 0
  for x in jax.tree.leaves(abstract):
    shape = x.shape
    if getattr(x, "sharding", None) is not None:
      shape = x.sharding.shard_shape(x.shape)
    total += int(np.prod(shape, dtype=np.int64)) * np.dtype(x.dtype).itemsize
  return total


def _hf_dict(model_config) -> dict:
  if model_config.get("path", ""):
    from jaxift.model.loading import open_checkpoint  # pylint: disable=import-outside-toplevel
    return open_checkpoint(model_config.path)[0].to_hf_dict()  # header/metadata only
  hf = model_config.get("hf_config")
  return hf.to_dict() if hasattr(hf, "to_dict") else dict(hf or {})


def train_step_parts(config, mesh, graphdef, rest, params) -> dict:
  """The trainer's jitted train step for `params` (abstract or real) on `mesh`, with its optimizer,
  shardings and the abstract optimizer state and batch (shared with tools/benchmark.py)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=import-outside-toplevel
  from jaxift.train import optimizer as opt_lib  # pylint: disable=import-outside-toplevel
  from jaxift.train import step as step_lib  # pylint: disable=import-outside-toplevel
  from jaxift.train.trainer import BATCH_AXES, optimizer_shardings  # pylint: disable=import-outside-toplevel

  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P(BATCH_AXES))
  total_steps = int(config.train.num_steps) if config.train.num_steps > 0 else 1000
  tx, schedule = opt_lib.make_optimizer(config.optimizer, params, total_steps,
                                        freeze_regex=config.train.freeze_regex)
  param_shardings = jax.tree.map(lambda x: x.sharding, params)
  opt_shardings = optimizer_shardings(tx, params, param_shardings, replicated)
  opt_state = jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
                           jax.eval_shape(tx.init, params), opt_shardings)
  trainable = opt_lib.trainable_mask(params, config.train.freeze_regex)
  step_kw = dict(accum=int(config.train.grad_accum_steps), z_loss=float(config.train.z_loss),
                 schedule=schedule, micro_batch_sharding=NamedSharding(mesh, P(None, BATCH_AXES)))
  chunk = int(config.train.get("loss_chunk_size", 0) or 0)
  accepted = inspect.signature(step_lib.make_train_step).parameters
  if chunk and "loss_chunk" in accepted:
    step_kw["loss_chunk"] = chunk
  step = jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated)
  # The trainer's step takes the non-trained state `rest` as an argument (so frozen weights are
  # not jit constants); an older step closed over it. Both are handled, as the trainer calls them.
  if "rest" in accepted:
    fn = step_lib.make_train_step(graphdef, rest, tx, trainable, **step_kw)
    in_shardings = (param_shardings, opt_shardings, replicated, batch_sharding)
    def args(params, opt_state, step, batch):
      return params, opt_state, step, batch
  else:
    fn = step_lib.make_train_step(graphdef, tx, trainable, **step_kw)
    rest_shardings = jax.tree.map(lambda x: x.sharding, rest)
    in_shardings = (param_shardings, opt_shardings, rest_shardings, replicated, batch_sharding)
    def args(params, opt_state, step, batch):
      return params, opt_state, rest, step, batch
  train_step = jax.jit(fn, in_shardings=in_shardings,
                       out_shardings=(param_shardings, opt_shardings, replicated),
                       donate_argnums=(0, 1))
  return dict(train_step=train_step, args=args, tx=tx, opt_shardings=opt_shardings,
              opt_state=opt_state, batch_sharding=batch_sharding, replicated=replicated,
              loss_chunk_size=chunk, step=step)


def abstract_batch(rows: int, seq_len: int, batch_sharding) -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  return {k: jax.ShapeDtypeStruct((rows, seq_len), jnp.float32 if k == "weights" else jnp.int32,
                                  sharding=batch_sharding)
          for k in ("inputs", "targets", "weights", "segment_ids", "positions")}


def estimate(config, seq_len: int = 0) -> dict:
  """Compile the train step of `config` for the devices here; the memory report as a dict."""
  import jax  # pylint: disable=import-outside-toplevel
  from jaxift.train import checkpoint as ckpt_lib  # pylint: disable=import-outside-toplevel
  from jaxift.train import sharding  # pylint: disable=import-outside-toplevel
  from jaxift.train.config import mesh_rules  # pylint: disable=import-outside-toplevel

  from jaxift.model import lora as lora_lib  # pylint: disable=import-outside-toplevel
  if lora_lib.enabled(config):
    raise ValueError("memory_estimate compiles the full fine-tuning step; LoRA configs "
                     "(config.lora) are not estimated yet -- set config.lora off for an upper bound")
  mesh = sharding.make_mesh(tuple(config.mesh.shape))
  graphdef, params, rest, _ = ckpt_lib.abstract_model(config.model, _hf_dict(config.model), mesh,
                                                      mesh_rules(config))
  parts = train_step_parts(config, mesh, graphdef, rest, params)
  train_step, opt_state, step = parts["train_step"], parts["opt_state"], parts["step"]
  chunk = parts["loss_chunk_size"]
  rows, t = int(config.train.global_batch_size), int(seq_len or config.data.max_seq_length)
  batch = abstract_batch(rows, t, parts["batch_sharding"])

  t0 = time.perf_counter()
  compiled = train_step.lower(*parts["args"](params, opt_state, step, batch)).compile()
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
      "seq_len": t,
      "model": {k: config.model.get(k) for k in ("dtype", "param_dtype", "scan_layers",
                                                 "remat_policy", "attention")},
      "loss_chunk_size": chunk,
      "params_bytes_per_device": _leaf_bytes_per_device(params),
      "opt_state_bytes_per_device": _leaf_bytes_per_device(opt_state),
      "batch_bytes_per_device": _leaf_bytes_per_device(batch),
      "argument_bytes": arg,
      "output_bytes": out,
      "alias_bytes": alias,
      "temp_bytes": temp,
      "generated_code_bytes": code,
      # Donated params/opt state are aliased into the outputs, so they are not counted twice.
      "peak_bytes_per_device": arg + out - alias + temp,
      "compile_s": round(compile_s, 2),
  }


def _run_child(devices: int) -> int:
  """Re-run this command with `devices` fake CPU devices (they must exist before JAX starts)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", **{_CHILD_ENV: "1"})
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                      f" --xla_force_host_platform_device_count={devices}").strip()
  return subprocess.call([sys.executable, *sys.argv], env=env)


def _write(text: str, path: str) -> None:
  target = pathlib.Path(path)
  tmp = target.with_name(target.name + ".tmp")
  tmp.write_text(text)
  tmp.replace(target)


def _define_flags() -> None:
  """Flags exist only when run as a script, so importing this module (tests, benchmark.py) does
  not clash with other absl flags of the same names."""
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  config_flags.DEFINE_config_file("config", None, "Experiment config file (variants after ':' "
                                  "and --config.a.b=v overrides as for jaxift.main).",
                                  lock_config=True)
  flags.DEFINE_integer("devices", 0, "Compile for this many devices (0: the devices here); on "
                       "CPU, fake devices in a subprocess.")
  flags.DEFINE_integer("seq_len", 0, "Row length (0: config.data.max_seq_length).")
  flags.DEFINE_string("shape", "", "Use this benchmark shape's architecture (tools/benchmark.py "
                      "SHAPES: smollm2-135m, llama-3.2-1b, llama-3.1-8b) instead of the config's "
                      "model.path / model.hf_config.")
  flags.DEFINE_string("out", "", "Also write the JSON here (atomically).")


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  import jax  # pylint: disable=import-outside-toplevel
  f = flags.FLAGS
  wanted = f.devices
  if wanted and wanted != jax.device_count():
    if os.environ.get(_CHILD_ENV) or jax.default_backend() != "cpu":
      raise app.UsageError(f"--devices={wanted}, but this backend has {jax.device_count()} "
                           f"{jax.default_backend()} devices (fake devices only exist on CPU)")
    sys.exit(_run_child(wanted))
  config = f.config
  if f.shape:
    from benchmark import SHAPES  # pylint: disable=import-outside-toplevel
    if f.shape not in SHAPES:
      raise app.UsageError(f"--shape={f.shape!r} is unknown; choose one of {sorted(SHAPES)}")
    with config.unlocked():
      config.model.path, config.model.hf_config = "", SHAPES[f.shape]
  report = estimate(config, f.seq_len)
  text = json.dumps(report, indent=1)
  if f.out:
    _write(text + "\n", f.out)
  print(text, flush=True)
  gib = 1024 ** 3
  print(f"peak {report['peak_bytes_per_device'] / gib:.3f} GiB per device on "
        f"{report['num_devices']} {report['platform']} devices (params "
        f"{report['params_bytes_per_device'] / gib:.3f}, optimizer "
        f"{report['opt_state_bytes_per_device'] / gib:.3f}, temporaries "
        f"{report['temp_bytes'] / gib:.3f} GiB)", file=sys.stderr)


if __name__ == "__main__":
  _define_flags()
  flags.mark_flags_as_required(["config"])
  app.run(main)
