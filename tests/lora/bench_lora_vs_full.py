"""Not a test: the LoRA-vs-full measurement in docs/benchmarks.md.

  python tests/lora/bench_lora_vs_full.py --mode=full|lora [--steps=60] [--lr=...] [--rank=16]
      [--base_quantization=none|int8|int4|nf4 (QLoRA, blocks of --block=64)]

configs/quickstart.py (SmolLM2-135M-Instruct, synthetic tasks, packed 96-token rows, batch 4),
trained by the trainer's own state and jitted step (`jaxift.train.state.build`), then exact match
of greedy generations on the 64 held-out test records (`jaxift.infer.generation_check`). `full`
is the quickstart as configured (embedding and bottom 15 layers frozen); `lora` trains only
adapters on every projection of every layer. Prints one JSON line.
"""
import argparse
import importlib.util
import json
import pathlib
import time

import jax
import numpy as np

from jaxift.data.pipeline import make_iterator
from jaxift.data.tokenizers import load_tokenizer
from jaxift.infer import generation_check
from jaxift.model import sharding
from jaxift.train import host_batches, optimizer
from jaxift.train import state as state_lib

REPO = pathlib.Path(__file__).resolve().parents[2]


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--mode", choices=["full", "lora"], required=True)
  p.add_argument("--steps", type=int, default=60)
  p.add_argument("--lr", type=float, default=0.0)
  p.add_argument("--rank", type=int, default=16)
  p.add_argument("--alpha", type=float, default=32.0)
  p.add_argument("--base_quantization", default="none", help="QLoRA: the frozen base's scheme")
  p.add_argument("--block", type=int, default=64)
  p.add_argument("--before", action="store_true", help="also measure exact match before training")
  args = p.parse_args()

  spec = importlib.util.spec_from_file_location("quickstart", REPO / "configs" / "quickstart.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(f"steps={args.steps}")
  if args.lr:
    config.optimizer.lr = args.lr
  out = {"mode": args.mode, "steps": args.steps, "lr": config.optimizer.lr}
  if args.mode == "lora":
    config.lora.enabled, config.lora.rank, config.lora.alpha = True, args.rank, args.alpha
    config.train.freeze_regex = ""
    config.lora.base_quantization = args.base_quantization
    config.lora.quantization_block_size = args.block
    out.update(rank=args.rank, alpha=args.alpha, base_quantization=args.base_quantization)
  tokenizer = load_tokenizer(config.model.path)
  state = state_lib.build(config, sharding.make_mesh((1, -1, 1)), args.steps)
  if args.before:
    out["exact_match_before"] = generation_check.exact_match_eval(
        state.model(), tokenizer, config, 64)["exact_match"]
  mask = optimizer.trainable_mask(state.params, config.train.freeze_regex)
  out["trainable_params"] = int(sum(int(np.prod(x.shape)) for x, t in zip(
      jax.tree.leaves(state.params), jax.tree.leaves(mask)) if t))
  out["opt_state_bytes"] = int(sum(x.nbytes for x in jax.tree.leaves(state.opt_state)
                                   if hasattr(x, "nbytes")))
  it = make_iterator(config.data, tokenizer, split="train", batch_size=config.train.global_batch_size,
                     shard_index=0, shard_count=1, seed=config.train.seed, num_epochs=None)
  losses, times = [], []
  for s in range(args.steps):
    batch = host_batches.to_global(next(it), state.batch_sharding)
    t0 = time.perf_counter()
    state.params, state.opt_state, metrics = state.train_step(
        state.params, state.opt_state, state.rest, state.device_step(s), batch)
    losses.append(float(metrics["loss"]))
    times.append(time.perf_counter() - t0)
  out.update(first_loss=losses[0], last5_loss=float(np.mean(losses[-5:])),
             median_step_s=float(np.median(times[1:])))
  out["exact_match_after"] = generation_check.exact_match_eval(state.model(), tokenizer, config,
                                                               64)["exact_match"]
  print(json.dumps(out), flush=True)


if __name__ == "__main__":
  main()
