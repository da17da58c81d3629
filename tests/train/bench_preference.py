"""Preference-tuning measurement on SmolLM2-135M-Instruct + LoRA (configs/smollm2_dpo.py) on
chapter 7's instruction-data-with-preference.json, its 110-pair test split (85/5/10, file order):
logps/accuracy before; rewards/accuracies, rewards/margins, logps/accuracy after; the trainer's
median step time and the process's peak RSS. `--objective=sft` times SFT at the same batch.

  flock /tmp/bench.lock nice python -m tests.train.bench_preference --objective=dpo --steps=16 \
      --lr=1e-3 --workdir=/tmp/bench_dpo

(docs/benchmarks.md "Preference tuning"; a CPU-sized run, not a tuned recipe.)
"""
import json
import pathlib
import resource
import sys

from absl import app, flags

from jaxift.train.trainer import train_and_evaluate
from tests.train.conftest import load_config_file

flags.DEFINE_string("objective", "dpo", "dpo | orpo | simpo | sft")
flags.DEFINE_integer("steps", 25, "optimizer steps")
flags.DEFINE_integer("batch", 4, "pairs per step (examples for sft)")
flags.DEFINE_string("workdir", "/tmp/bench_preference", "run directory (must be new)")
flags.DEFINE_string("data", "/work/shared/data/instruction-data-with-preference.json", "pairs")
flags.DEFINE_float("lr", 0.0, "learning rate (0 = the config's)")
FLAGS = flags.FLAGS
CONFIG = pathlib.Path(__file__).resolve().parents[2] / "configs" / "smollm2_dpo.py"


def main(_):
  objective = FLAGS.objective
  c = load_config_file(CONFIG, f"data={FLAGS.data},objective="
                       f"{'dpo' if objective == 'sft' else objective},steps={FLAGS.steps}")
  c.train.global_batch_size = FLAGS.batch
  c.train.log_every, c.train.eval_every, c.train.save_every = 1, 0, 0
  c.train.progress_bar = c.train.tensorboard = False
  c.data.num_workers = 0
  c.data.buckets = (64, 96, 128, 256)  # the chapter's pairs are short: less padding
  if FLAGS.lr:
    c.optimizer.lr = FLAGS.lr
  if objective == "sft":  # the chapter file's `output` (= chosen) as SFT, no evaluation
    c.train.objective, c.data.pairs = "sft", False
    c.evals.validation = ""
  else:
    c.eval.preference_split = "test"  # the 110 held-out pairs, before (step 0) and after
    c.eval.batch_size, c.eval.max_batches = 8, 0
  results = train_and_evaluate(c, FLAGS.workdir)
  lines = (pathlib.Path(FLAGS.workdir) / "metrics.jsonl").read_text().splitlines()
  records = [json.loads(l) for l in lines if l.strip()]
  evals = [r for r in records if r["split"] == "validation"]
  times = sorted(r["step_time"] for r in records if r["split"] == "train" and "step_time" in r)
  keys = ("loss", "logps/accuracy", "rewards/accuracies", "rewards/margins", "rewards/chosen",
          "rewards/rejected", "logps/chosen", "logps/rejected", "pairs")
  out = {"objective": objective, "steps": FLAGS.steps, "batch": FLAGS.batch,
         "lr": float(c.optimizer.lr), "beta": float(c.preference.beta),
         "median_step_s": times[len(times) // 2] if times else None,
         "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
         "wall_s": results.get("wall_time_s")}
  if evals:
    out["test_before"] = {k: evals[0].get(k) for k in keys}
    out["test_after"] = {k: evals[-1].get(k) for k in keys}
  print("BENCH " + json.dumps(out), flush=True)
  sys.stdout.flush()


if __name__ == "__main__":
  app.run(main)
