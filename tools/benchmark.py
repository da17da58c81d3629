"""Training throughput of jaxift, side by side with PyTorch + transformers, on random weights.

  python tools/benchmark.py --shape=smollm2-135m --seq_len=256 --batch=8 --dtype=float32 \
      --packing --steps=3 --torch --out=/tmp/bench.json

jaxift: the trainer's own train step (`jaxift.train.step` jitted with the trainer's shardings,
AdamW, clipping, a schedule) on a mesh over the local devices: compile time, steady-state step
time (median), tokens/s (non-padding tokens, as the trainer counts them), MFU (the trainer's
formula, `jaxift/train/mfu.py`) and peak device memory. PyTorch: the same shape, rows and tokens,
`transformers.AutoModelForCausalLM.from_config` (attn_implementation 'sdpa', eager mode), AdamW,
one optimizer step per batch with the same weighted cross entropy and clipping -- what most users
would run instead. With --data_file/--tokenizer the Grain input pipeline's batches/s for the same
batch shape is measured too (tools/benchmark_data.py), to show the input side keeps up.

`--dtype=bfloat16`: jaxift computes in bfloat16 with float32 parameters; PyTorch runs float32
parameters under `torch.autocast(bfloat16)`, the same mixed precision. Packed rows: PyTorch's sdpa
path takes no segment ids, so its rows attend across packed examples (the same FLOPs; the jaxift
side masks them).
"""
import argparse
import json
import pathlib
import platform
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

_LLAMA3_ROPE = dict(rope_type="llama3", low_freq_factor=1.0, high_freq_factor=4.0,
                    original_max_position_embeddings=8192)
# HF config.json dicts of the benchmarked shapes (random weights; no checkpoint is read).
SHAPES: dict[str, dict] = {
    "smollm2-135m": dict(
        model_type="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536,
        num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, head_dim=64,
        max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=100000.0,
        tie_word_embeddings=True, hidden_act="silu"),
    "llama-3.2-1b": dict(
        model_type="llama", vocab_size=128256, hidden_size=2048, intermediate_size=8192,
        num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, head_dim=64,
        max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0,
        rope_scaling=dict(_LLAMA3_ROPE, factor=32.0), tie_word_embeddings=True,
        hidden_act="silu"),
    "llama-3.1-8b": dict(
        model_type="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336,
        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
        max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0,
        rope_scaling=dict(_LLAMA3_ROPE, factor=8.0), tie_word_embeddings=False,
        hidden_act="silu"),
}


def make_rows(batch: int, seq_len: int, vocab: int, packing: bool, seed: int = 0) -> dict:
  """Batch-contract numpy rows: packed examples of 1/8..1/2 of a row, or one padded example per
  row (3/4 of a row on average). Prompt (first third of each example) weight 0, response 1."""
  import numpy as np  # pylint: disable=import-outside-toplevel
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


def _config(args, hf: dict):
  from jaxift.train.config import base_config  # pylint: disable=import-outside-toplevel
  c = base_config()
  c.model.path, c.model.hf_config = "", hf
  c.model.dtype, c.model.param_dtype = args.dtype, "float32"
  c.model.scan_layers, c.model.remat_policy = args.scan_layers, args.remat
  c.model.attention = args.attention
  c.train.global_batch_size, c.train.num_steps = args.batch, 1000
  c.data.max_seq_length = args.seq_len
  if args.loss_chunk_size:
    with c.unlocked():
      c.train.loss_chunk_size = args.loss_chunk_size
  return c


def _peak_device_bytes():
  import jax  # pylint: disable=import-outside-toplevel
  stats = jax.local_devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use")


def bench_jaxift(args, hf: dict, rows: dict) -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel
  import memory_estimate  # pylint: disable=import-outside-toplevel
  from jaxift.model.loading import build_model  # pylint: disable=import-outside-toplevel
  from jaxift.train import host_batches, mfu as mfu_lib, sharding  # pylint: disable=import-outside-toplevel
  from jaxift.train.config import mesh_rules  # pylint: disable=import-outside-toplevel

  config = _config(args, hf)
  mesh = sharding.make_mesh(tuple(config.mesh.shape))
  model, _ = build_model(config.model, mesh=mesh, rules=mesh_rules(config), seed=0)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  del model
  parts = memory_estimate.train_step_parts(config, mesh, graphdef, rest, params)
  opt_state = jax.jit(parts["tx"].init, out_shardings=parts["opt_shardings"])(params)
  batch = host_batches.to_global(rows, parts["batch_sharding"])
  step = jax.device_put(jax.numpy.int32(0), parts["replicated"])

  t0 = time.perf_counter()
  args_of = parts["args"]  # (params, opt_state, step, batch) in the order the step takes them
  compiled = parts["train_step"].lower(*args_of(params, opt_state, step, batch)).compile()
  compile_s = time.perf_counter() - t0
  times, cpu_times, losses = [], [], []
  for _ in range(args.warmup + args.steps):
    t0, c0 = time.perf_counter(), time.process_time()
    params, opt_state, metrics = compiled(*args_of(params, opt_state, step, batch))
    losses.append(float(metrics["loss"]))  # fetching the loss waits for the step
    times.append(time.perf_counter() - t0)
    cpu_times.append(time.process_time() - c0)
  step_s = statistics.median(times[args.warmup:])
  tokens = int((rows["segment_ids"] > 0).sum())
  flops_per_token = mfu_lib.train_flops_per_token(mfu_lib.flops_shape_from_hf(hf), args.seq_len)
  peak = mfu_lib.peak_flops_per_device()
  memory = compiled.memory_analysis()
  return {
      "compile_s": round(compile_s, 2),
      "step_s": round(step_s, 4),
      "step_times_s": [round(t, 4) for t in times],
      "process_cpu_s_per_step": round(statistics.median(cpu_times[args.warmup:]), 3),
      "tokens_per_s": round(tokens / step_s, 1),
      "mfu": mfu_lib.mfu(tokens / step_s, flops_per_token, mesh.size, peak),
      "peak_device_bytes": _peak_device_bytes(),
      "compiled_peak_bytes_estimate": int(memory.argument_size_in_bytes + memory.output_size_in_bytes
                                          - memory.alias_size_in_bytes + memory.temp_size_in_bytes),
      "losses": [round(x, 4) for x in losses],
      "devices": mesh.size,
      "device_kind": jax.devices()[0].device_kind,
  }


def bench_torch(args, hf: dict, rows: dict) -> dict:
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
  autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")

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
  for _ in range(args.warmup + args.steps):
    t0, c0 = time.perf_counter(), time.process_time()
    losses.append(one_step())
    times.append(time.perf_counter() - t0)
    cpu_times.append(time.process_time() - c0)
  step_s = statistics.median(times[args.warmup:])
  tokens = int((rows["segment_ids"] > 0).sum())
  return {
      "step_s": round(step_s, 4),
      "step_times_s": [round(x, 4) for x in times],
      "process_cpu_s_per_step": round(statistics.median(cpu_times[args.warmup:]), 3),
      "tokens_per_s": round(tokens / step_s, 1),
      "peak_device_bytes": torch.cuda.max_memory_allocated() if device == "cuda" else None,
      "losses": [round(x, 4) for x in losses],
      "device": device,
      "threads": torch.get_num_threads(),
  }


def bench_data(args) -> dict:
  import benchmark_data  # pylint: disable=import-outside-toplevel
  from jaxift.data.tokenizers import load_tokenizer  # pylint: disable=import-outside-toplevel
  data_args = argparse.Namespace(data_file=args.data_file, max_seq_length=args.seq_len,
                                 buckets=str(args.seq_len), batch_size=args.batch,
                                 seconds=args.data_seconds)
  batching = "packing" if args.packing else "max_length"
  return benchmark_data.throughput(data_args, load_tokenizer(args.tokenizer), batching,
                                   args.data_workers)


def _versions() -> dict:
  import jax, jaxlib, flax, optax  # pylint: disable=import-outside-toplevel,multiple-imports
  out = dict(python=platform.python_version(), jax=jax.__version__, jaxlib=jaxlib.__version__,
             flax=flax.__version__, optax=optax.__version__, machine=platform.machine(),
             processor=platform.processor() or platform.machine())
  try:
    import torch, transformers  # pylint: disable=import-outside-toplevel,multiple-imports
    out.update(torch=torch.__version__, transformers=transformers.__version__)
  except ImportError:
    pass
  return out


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--shape", choices=sorted(SHAPES), default="smollm2-135m")
  p.add_argument("--seq_len", type=int, default=256)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--packing", action=argparse.BooleanOptionalAction, default=True)
  p.add_argument("--attention", default="auto", help="auto | xla | cudnn | splash")
  p.add_argument("--dtype", default="float32", help="compute dtype: float32 | bfloat16")
  p.add_argument("--scan_layers", action=argparse.BooleanOptionalAction, default=True)
  p.add_argument("--remat", default="none", help="remat policy name (see docs/model.md)")
  p.add_argument("--loss_chunk_size", type=int, default=0, help="0: plain loss")
  p.add_argument("--steps", type=int, default=3, help="timed steps after the warm-up")
  p.add_argument("--warmup", type=int, default=1)
  p.add_argument("--torch", action=argparse.BooleanOptionalAction, default=True)
  p.add_argument("--data_file", default="", help="Alpaca JSON for the input-pipeline measurement")
  p.add_argument("--tokenizer", default="")
  p.add_argument("--data_workers", type=int, default=0)
  p.add_argument("--data_seconds", type=float, default=5.0)
  p.add_argument("--out", default="", help="also write the JSON here (atomically)")
  args = p.parse_args(argv)

  hf = SHAPES[args.shape]
  rows = make_rows(args.batch, args.seq_len, hf["vocab_size"], args.packing)
  result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "versions": _versions(),
            "args": vars(args),
            "non_padding_share": round(float((rows["segment_ids"] > 0).mean()), 4)}
  result["jaxift"] = bench_jaxift(args, hf, rows)
  print(json.dumps({"jaxift": result["jaxift"]}), flush=True)
  if args.torch:
    result["torch"] = bench_torch(args, hf, rows)
    print(json.dumps({"torch": result["torch"]}), flush=True)
    result["tokens_per_s_ratio_jaxift_over_torch"] = round(
        result["jaxift"]["tokens_per_s"] / result["torch"]["tokens_per_s"], 3)
    # On a shared CPU the wall clock depends on the neighbours; CPU seconds per step do less so.
    result["cpu_s_per_step_ratio_torch_over_jaxift"] = round(
        result["torch"]["process_cpu_s_per_step"] / result["jaxift"]["process_cpu_s_per_step"], 3)
  if args.data_file and args.tokenizer:
    result["data_pipeline"] = bench_data(args)
    result["data_pipeline"]["train_steps_per_s"] = round(1.0 / result["jaxift"]["step_s"], 2)
  text = json.dumps(result, indent=1)
  if args.out:
    out = pathlib.Path(args.out)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text + "\n")
    tmp.replace(out)
  print(text, flush=True)
  if "tokens_per_s_ratio_jaxift_over_torch" in result:
    print(f"jaxift/PyTorch tokens/s: {result['tokens_per_s_ratio_jaxift_over_torch']}x",
          file=sys.stderr)
  return result


if __name__ == "__main__":
  main()
