"""`tools/evaluate.py`'s preference metrics on a tiny run's TEST pairs: equal to what the
trainer's own `preference` evaluator reported for the same parameters on the same split, and
`logps/accuracy` equal to a numpy recomputation from the restored model's logits (per-sequence
masked log-prob sums of each pair's chosen and rejected rows)."""
import json
import sys

import numpy as np
import pytest

from jaxift import workdir as workdir_lib
from jaxift.data import pipeline
from jaxift.tools import evaluate as evaluate_tool
from jaxift.train.trainer import train_and_evaluate
from tests.train.conftest import REPO_ROOT, run

TRL_KEYS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
            "logps/chosen", "logps/rejected", "logps/accuracy")


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _numpy_logps_accuracy(model, config, tokenizer) -> tuple[float, int]:
  """The share of test pairs whose chosen row has the higher sum of weight * log p(target),
  from the model's logits in numpy (padding: one sequence per row)."""
  batches = pipeline.make_iterator(config.data, tokenizer, split="test", batch_size=4,
                                   shard_index=0, shard_count=1, seed=0, num_epochs=1)
  wins, pairs = 0, 0
  for batch in batches:
    logits = np.asarray(model(batch["inputs"], batch["positions"], batch["segment_ids"]),
                        np.float64)
    logp = np.take_along_axis(_log_softmax(logits), batch["targets"][..., None], -1)[..., 0]
    weights = np.asarray(batch["weights"], np.float64)
    sums, counts = (weights * logp).sum(-1), weights.sum(-1)
    for chosen, rejected, nc, nr in zip(sums[0::2], sums[1::2], counts[0::2], counts[1::2]):
      if nc > 0 and nr > 0:
        wins, pairs = wins + int(chosen > rejected), pairs + 1
  return wins / pairs, pairs


@pytest.mark.parametrize("objective,lora", [("dpo", True), ("dpo", False), ("orpo", False)],
                         ids=["dpo-lora", "dpo-full", "orpo-full"])
def test_evaluate_preference_metrics_on_test_pairs(tiny_config, pairs_file, tmp_path, objective,
                                                   lora):
  """DPO with LoRA (reference: adapters off), full-fine-tuning DPO (the rebuilt initial model) and
  ORPO (reference-free; the state built abstract, only the checkpoint read)."""
  c = tiny_config(data=pairs_file, steps=3)
  c.train.objective, c.preference.beta, c.evals.generation = objective, 0.5, ""
  c.eval.preference_split = "test"  # the trainer's own evaluation of the final params: the target
  c.eval.batch_size, c.eval.max_batches = 4, 0
  c.optimizer.lr = 1e-2  # move the policy away from the reference: rewards are not 0
  if lora:
    c.lora.enabled, c.lora.rank, c.lora.alpha, c.lora.dropout = True, 4, 8.0, 0.0
  train_and_evaluate(c, str(tmp_path))
  trainer = [r for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())
             if r["split"] == "validation"][-1]
  assert trainer["step"] == 3 and trainer["rewards/margins"] != 0

  got = evaluate_tool.workdir_preference_metrics(tmp_path, 3, batch_size=4)
  assert got["preference_objective"] == objective and got["preference_pairs"] == trainer["pairs"]
  assert got["preference_loss"] == pytest.approx(trainer["loss"], abs=1e-6)
  for key in TRL_KEYS:
    assert got[key] == pytest.approx(trainer[key], abs=1e-5), key

  model, tokenizer, config = workdir_lib.load_for_inference(tmp_path, 3)
  accuracy, pairs = _numpy_logps_accuracy(model, config, tokenizer)
  assert pairs == got["preference_pairs"] > 0
  assert got["logps/accuracy"] == pytest.approx(accuracy, abs=1e-9)


def test_evaluate_tool_writes_preference_metrics(tiny_config, pairs_file, tmp_path):
  """The command line: on by default for a DPO run, in summary.json and the printed table."""
  c = tiny_config(data=pairs_file, steps=2)
  c.train.objective, c.evals.generation = "dpo", ""
  c.lora.enabled, c.lora.rank, c.lora.alpha, c.lora.dropout = True, 4, 8.0, 0.0
  train_and_evaluate(c, str(tmp_path / "run"))
  want = evaluate_tool.workdir_preference_metrics(tmp_path / "run", 2, batch_size=4)
  out = run([sys.executable, "-m", "jaxift.tools.evaluate", f"--workdir={tmp_path / 'run'}",
             "--skip_loss", "--max_examples=2", "--max_new_tokens=2", "--batch_size=4",
             f"--output_dir={tmp_path / 'eval'}"], cwd=REPO_ROOT)
  assert out.returncode == 0, out.stderr[-3000:]
  summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
  for key in ("preference_loss", "preference_pairs") + TRL_KEYS:
    assert summary[key] == pytest.approx(want[key], abs=1e-6), key
  assert "logps/accuracy" in out.stdout
