"""Not a test: the LoRA-vs-full measurement in docs/benchmarks.md.

  python tests/lora/bench_lora_vs_full.py --mode=full|lora [--steps=60] [--lr=...] [--rank=16]

configs/quickstart.py (SmolLM2-135M-Instruct, synthetic tasks, packed 96-token rows, batch 4),
trained by the trainer's own jitted step (`jaxift.train.step.make_train_step`) and optimizer, then
exact match of greedy generations on the 64 held-out test records (`jaxift.infer.generation_check`). `full` is the
quickstart as configured (embedding and bottom 15 layers frozen); `lora` trains only adapters on
every projection of every layer. Prints one JSON line.
"""
import argparse
import importlib.util
import json
import pathlib
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--mode", choices=["full", "lora"], required=True)
  p.add_argument("--steps", type=int, default=60)
  p.add_argument("--lr", type=float, default=0.0)
  p.add_argument("--rank", type=int, default=16)
  p.add_argument("--alpha", type=float, default=32.0)
  p.add_argument("--before", action="store_true", help="also measure exact match before training")
  args = p.parse_args()

  import jax
  import numpy as np
  from flax import nnx
  from jaxift.data.pipeline import make_iterator
  from jaxift.data.tokenizers import load_tokenizer
  from jaxift.model import lora
  from jaxift.model.loading import build_model
  from jaxift.infer import generation_check
  from jaxift.train import optimizer as opt_lib
  from jaxift.train import step as step_lib

  spec = importlib.util.spec_from_file_location("quickstart", REPO / "configs" / "quickstart.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(f"steps={args.steps}")
  if args.lr:
    config.optimizer.lr = args.lr
  tokenizer = load_tokenizer(config.model.path)
  model, _ = build_model(config.model, seed=0)
  out = {"mode": args.mode, "steps": args.steps, "lr": config.optimizer.lr}
  if args.before:
    out["exact_match_before"] = generation_check.exact_match_eval(model, tokenizer, config, 64)[
        "exact_match"]
  if args.mode == "lora":
    lc = lora.default_lora_config()
    lc.rank, lc.alpha = args.rank, args.alpha
    lora.apply_lora(model, lc)
    graphdef, params, rest = nnx.split(model, lora.LoRAParam, ...)
    freeze = ""
    out.update(rank=args.rank, alpha=args.alpha)
  else:
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    freeze = config.train.freeze_regex
  del model
  tx, schedule = opt_lib.make_optimizer(config.optimizer, params, args.steps, freeze_regex=freeze)
  opt_state = tx.init(params)
  trainable = opt_lib.trainable_mask(params, freeze)
  out["trainable_params"] = int(sum(int(np.prod(x.shape)) for x, t in zip(
      jax.tree.leaves(params), jax.tree.leaves(trainable)) if t))
  out["opt_state_bytes"] = int(sum(x.nbytes for x in jax.tree.leaves(opt_state)
                                   if hasattr(x, "nbytes")))

  # The frozen state (`rest`) is an argument of the step, never a closure (jit constants).
  step_fn = jax.jit(step_lib.make_train_step(graphdef, tx, trainable, schedule=schedule),
                    donate_argnums=(0, 1))
  it = make_iterator(config.data, tokenizer, split="train", batch_size=config.train.global_batch_size,
                     shard_index=0, shard_count=1, seed=config.train.seed, num_epochs=None)
  losses, times = [], []
  for s in range(args.steps):
    batch = next(it)
    t0 = time.perf_counter()
    params, opt_state, metrics = step_fn(params, opt_state, rest, np.int32(s), batch)
    losses.append(float(metrics["loss"]))
    times.append(time.perf_counter() - t0)
  out.update(first_loss=losses[0], last5_loss=float(np.mean(losses[-5:])),
             median_step_s=float(np.median(times[1:])))
  model = nnx.merge(graphdef, params, rest)
  out["exact_match_after"] = generation_check.exact_match_eval(model, tokenizer, config, 64)[
      "exact_match"]
  print(json.dumps(out), flush=True)


if __name__ == "__main__":
  main()
