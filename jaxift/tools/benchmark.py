"""Training throughput of jaxift, side by side with PyTorch + transformers, on random weights.

  python -m jaxift.tools.benchmark --shape=smollm2-135m --seq_len=256 --batch=8 --dtype=float32 \
      --packing --steps=3 --torch --out=/tmp/bench.json

jaxift: the trainer's own train step (`jaxift.train.state.build`: the step jitted with the
trainer's shardings, AdamW, clipping, a schedule) on a mesh over the local devices: compile time, steady-state step
time (median), tokens/s (non-padding tokens, as the trainer counts them), MFU (the trainer's
formula, `jaxift/train/mfu.py`) and peak device memory. PyTorch: the same shape, rows and tokens,
`transformers.AutoModelForCausalLM.from_config` (attn_implementation 'sdpa', eager mode), AdamW,
one optimizer step per batch with the same weighted cross entropy and clipping -- what most users
would run instead. With --data_file/--tokenizer the Grain input pipeline's batches/s for the same
batch shape is measured too (`jaxift.tools.benchmark_data`), to show the input side keeps up.

`--dtype=bfloat16`: jaxift computes in bfloat16 with float32 parameters; PyTorch runs float32
parameters under `torch.autocast(bfloat16)`, the same mixed precision. Packed rows: PyTorch's sdpa
path takes no segment ids, so its rows attend across packed examples (the same FLOPs; the jaxift
side masks them).
"""
import json
import platform
import statistics
import sys
import time

from absl import app
from absl import flags
import flax
import jax
import jaxlib
import numpy as np
import optax

from jaxift import tools
from jaxift import fileio
from jaxift.data.tokenizers import load_tokenizer
from jaxift.model import sharding
from jaxift.tools import benchmark_data
from jaxift.tools.shapes import SHAPES
from jaxift.train import host_batches
from jaxift.train import mfu as mfu_lib
from jaxift.train import state as state_lib
from jaxift.train.config import base_config


def define_flags() -> None:
  """The command-line flags; defined only when run as a program, so that importing this module
  (tests, other tools) never clashes with flags of the same names elsewhere."""
  flags.DEFINE_enum("shape", "smollm2-135m", sorted(SHAPES), "Architecture (random weights).")
  flags.DEFINE_integer("layers", 0, "Override the shape's number of layers (0: keep it); for "
                       "quick checks such as tools/gpu_benchmark.sh --dry-run.")
  flags.DEFINE_integer("seq_len", 256, "Row length.")
  flags.DEFINE_integer("batch", 8, "Global rows per step.")
  flags.DEFINE_bool("packing", True, "Packed rows (else one padded example per row).")
  flags.DEFINE_string("attention", "auto", "auto | xla | cudnn | splash")
  flags.DEFINE_string("dtype", "float32", "Compute dtype: float32 | bfloat16.")
  flags.DEFINE_bool("scan_layers", True, "lax.scan over layers.")
  flags.DEFINE_string("remat", "none", "Remat policy name (see docs/model.md).")
  flags.DEFINE_integer("loss_chunk_size", 0, "0: plain loss.")
  flags.DEFINE_integer("steps", 3, "Timed steps after the warm-up.")
  flags.DEFINE_integer("warmup", 1, "Untimed steps after compilation.")
  flags.DEFINE_bool("torch", True, "Also measure PyTorch + transformers.")
  flags.DEFINE_string("data_file", "", "Alpaca JSON for the input-pipeline measurement.")
  flags.DEFINE_string("tokenizer", "", "Tokenizer for --data_file.")
  flags.DEFINE_integer("data_workers", 0, "Grain worker processes.")
  flags.DEFINE_float("data_seconds", 5.0, "Seconds of input-pipeline measurement.")
  flags.DEFINE_string("out", "", "Also write the JSON here (atomically).")


def make_rows(batch: int, seq_len: int, vocab: int, packing: bool, seed: int = 0) -> dict:
  """Batch-contract numpy rows: packed examples of 1/8..1/2 of a row, or one padded example per
  row (3/4 of a row on average). Prompt (first third of each example) weight 0, response 1."""
  rng = np.random.default_rng(seed)
  seg = np.zeros((batch, seq_len), np.int32)
  pos = np.zeros_like(seg)
  for r in range(batch):
    start, s = 0, 0
    while start < seq_len:
      n = int(rng.integers(seq_len // 8, seq_len // 2 + 1)) if packing else int(
          rng.integers(seq_len // 2, seq_len + 1))
      n = min(n, seq_len - start)
      s += 1
      seg[r, start:start + n], pos[r, start:start + n] = s, np.arange(n)
      start += n
      if not packing:
        break
  weights = ((seg > 0) & (pos >= np.maximum(1, pos.max(1, keepdims=True) // 3))).astype(np.float32)
  inputs = np.where(seg > 0, rng.integers(3, vocab, seg.shape), 0).astype(np.int32)
  targets = np.where(seg > 0, rng.integers(3, vocab, seg.shape), 0).astype(np.int32)
  return dict(inputs=inputs, targets=targets, weights=weights, segment_ids=seg, positions=pos)


def make_config(hf: dict, *, batch: int, seq_len: int, dtype: str = "float32",
                scan_layers: bool = True, remat: str = "none", attention: str = "auto",
                loss_chunk_size: int = 0):
  """The trainer's config for a random-weight model of architecture `hf` (no checkpoint read)."""
  c = base_config()
  c.model.path, c.model.hf_config = "", hf
  c.model.dtype, c.model.param_dtype = dtype, "float32"
  c.model.scan_layers, c.model.remat_policy, c.model.attention = scan_layers, remat, attention
  c.train.global_batch_size, c.train.num_steps = batch, 1000
  c.train.loss_chunk_size = loss_chunk_size
  c.data.max_seq_length = seq_len
  return c


def _peak_device_bytes():
  stats = jax.local_devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use")


def bench_jaxift(hf: dict, rows: dict, *, steps: int, warmup: int, **config_kw) -> dict:
  """The trainer's own jitted step (`jaxift.train.state.build`) on a mesh over the local devices."""
  config = make_config(hf, **config_kw)
  mesh = sharding.make_mesh(tuple(config.mesh.shape))
  state = state_lib.build(config, mesh, int(config.train.num_steps))
  batch = host_batches.to_global(rows, state.batch_sharding)
  step = state.device_step(0)
  t0 = time.perf_counter()
  compiled = state.train_step.lower(state.params, state.opt_state, state.rest, step,
                                    batch).compile()
  compile_s = time.perf_counter() - t0
  params, opt_state = state.params, state.opt_state
  times, cpu_times, losses = [], [], []
  for _ in range(warmup + steps):
    t0, c0 = time.perf_counter(), time.process_time()
    params, opt_state, metrics = compiled(params, opt_state, state.rest, step, batch)
    losses.append(float(metrics["loss"]))  # fetching the loss waits for the step
    times.append(time.perf_counter() - t0)
    cpu_times.append(time.process_time() - c0)
  step_s = statistics.median(times[warmup:])
  tokens = int((rows["segment_ids"] > 0).sum())
  flops_per_token = mfu_lib.train_flops_per_token(mfu_lib.flops_shape_from_hf(hf),
                                                  config_kw["seq_len"])
  peak = mfu_lib.peak_flops_per_device()
  memory = compiled.memory_analysis()
  return {
      "compile_s": round(compile_s, 2),
      "step_s": round(step_s, 4),
      "step_times_s": [round(t, 4) for t in times],
      "process_cpu_s_per_step": round(statistics.median(cpu_times[warmup:]), 3),
      "tokens_per_s": round(tokens / step_s, 1),
      "mfu": mfu_lib.mfu(tokens / step_s, flops_per_token, mesh.size, peak),
      "peak_device_bytes": _peak_device_bytes(),
      "compiled_peak_bytes_estimate": int(memory.argument_size_in_bytes + memory.output_size_in_bytes
                                          - memory.alias_size_in_bytes + memory.temp_size_in_bytes),
      "losses": [round(x, 4) for x in losses],
      "devices": mesh.size,
      "device_kind": jax.devices()[0].device_kind,
  }


def bench_torch(hf: dict, rows: dict, *, steps: int, warmup: int, dtype: str) -> dict:
  # torch is the comparison, not a dependency of jaxift (it comes with the [test] extra).
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  device = "cuda" if torch.cuda.is_available() else "cpu"
  torch.manual_seed(0)
  config = transformers.AutoConfig.for_model(**hf)
  model = transformers.AutoModelForCausalLM.from_config(
      config, dtype=torch.float32, attn_implementation="sdpa").to(device).train()
  opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8,
                          weight_decay=0.0)
  t = {k: torch.as_tensor(v, device=device) for k, v in rows.items()}
  ids, targets, weights = t["inputs"].long(), t["targets"].long(), t["weights"]
  attention_mask = (t["segment_ids"] > 0).long()
  position_ids = t["positions"].long()
  autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == "bfloat16")

  def one_step() -> float:
    opt.zero_grad(set_to_none=True)
    with autocast:
      logits = model(input_ids=ids, attention_mask=attention_mask,
                     position_ids=position_ids).logits
    ce = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten(),
                                           reduction="none")
    loss = (ce * weights.flatten()).sum() / weights.sum().clamp_min(1.0)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss.detach().item()  # synchronizes with the device

  if device == "cuda":
    torch.cuda.reset_peak_memory_stats()
  times, cpu_times, losses = [], [], []
  for _ in range(warmup + steps):
    t0, c0 = time.perf_counter(), time.process_time()
    losses.append(one_step())
    times.append(time.perf_counter() - t0)
    cpu_times.append(time.process_time() - c0)
  step_s = statistics.median(times[warmup:])
  tokens = int((rows["segment_ids"] > 0).sum())
  return {
      "step_s": round(step_s, 4),
      "step_times_s": [round(x, 4) for x in times],
      "process_cpu_s_per_step": round(statistics.median(cpu_times[warmup:]), 3),
      "tokens_per_s": round(tokens / step_s, 1),
      "peak_device_bytes": torch.cuda.max_memory_allocated() if device == "cuda" else None,
      "losses": [round(x, 4) for x in losses],
      "device": device,
      "threads": torch.get_num_threads(),
  }


def versions() -> dict:
  out = dict(python=platform.python_version(), jax=jax.__version__, jaxlib=jaxlib.__version__,
             flax=flax.__version__, optax=optax.__version__, machine=platform.machine(),
             processor=platform.processor() or platform.machine())
  try:  # optional: only where the PyTorch comparison can run
    import torch, transformers  # pylint: disable=import-outside-toplevel,multiple-imports
    out.update(torch=torch.__version__, transformers=transformers.__version__)
  except ImportError:
    pass
  return out


FLAGS = flags.FLAGS


def main(argv) -> dict:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  hf = dict(SHAPES[FLAGS.shape])
  if FLAGS.layers:
    hf["num_hidden_layers"] = FLAGS.layers
  rows = make_rows(FLAGS.batch, FLAGS.seq_len, hf["vocab_size"], FLAGS.packing)
  args = {name: flags.FLAGS[name].value for name in (
      "shape", "layers", "seq_len", "batch", "packing", "attention", "dtype", "scan_layers", "remat",
      "loss_chunk_size", "steps", "warmup", "torch", "data_file", "tokenizer", "data_workers",
      "data_seconds", "out")}
  result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "versions": versions(),
            "args": args, "non_padding_share": round(float((rows["segment_ids"] > 0).mean()), 4)}
  result["jaxift"] = bench_jaxift(
      hf, rows, steps=FLAGS.steps, warmup=FLAGS.warmup, batch=FLAGS.batch,
      seq_len=FLAGS.seq_len, dtype=FLAGS.dtype, scan_layers=FLAGS.scan_layers, remat=FLAGS.remat,
      attention=FLAGS.attention, loss_chunk_size=FLAGS.loss_chunk_size)
  print(json.dumps({"jaxift": result["jaxift"]}), flush=True)
  if FLAGS.torch:
    result["torch"] = bench_torch(hf, rows, steps=FLAGS.steps, warmup=FLAGS.warmup,
                                  dtype=FLAGS.dtype)
    print(json.dumps({"torch": result["torch"]}), flush=True)
    result["tokens_per_s_ratio_jaxift_over_torch"] = round(
        result["jaxift"]["tokens_per_s"] / result["torch"]["tokens_per_s"], 3)
    # On a shared CPU the wall clock depends on the neighbours; CPU seconds per step do less so.
    result["cpu_s_per_step_ratio_torch_over_jaxift"] = round(
        result["torch"]["process_cpu_s_per_step"] / result["jaxift"]["process_cpu_s_per_step"], 3)
  if FLAGS.data_file and FLAGS.tokenizer:
    batching = "packing" if FLAGS.packing else "max_length"
    data_args = benchmark_data.parse_args([
        f"--data_file={FLAGS.data_file}", f"--tokenizer={FLAGS.tokenizer}",
        f"--max_seq_length={FLAGS.seq_len}", f"--buckets={FLAGS.seq_len}",
        f"--batch_size={FLAGS.batch}", f"--seconds={FLAGS.data_seconds}"])
    result["data_pipeline"] = benchmark_data.throughput(
        data_args, load_tokenizer(FLAGS.tokenizer), batching, FLAGS.data_workers)
    result["data_pipeline"]["train_steps_per_s"] = round(1.0 / result["jaxift"]["step_s"], 2)
  text = json.dumps(result, indent=1)
  if FLAGS.out:
    fileio.write_text(FLAGS.out, text + "\n")
  print(text, flush=True)
  if "tokens_per_s_ratio_jaxift_over_torch" in result:
    print(f"jaxift/PyTorch tokens/s: {result['tokens_per_s_ratio_jaxift_over_torch']}x",
          file=sys.stderr)
  return result


if __name__ == "__main__":
  define_flags()
  tools.run(main)
