"""Metric writer: JSONL lines and TensorBoard event files."""
import json

import numpy as np

from jaxift import workdir
from jaxift.train import metrics


def test_jsonl_and_tensorboard(tmp_path):
  writer = metrics.MetricWriter(tmp_path, total_steps=3, progress_bar=False)
  writer.write(1, "train", {"loss": np.float32(2.5), "learning_rate": 1e-3, "mfu": None})
  writer.write(2, "validation", {"loss": 2.0, "perplexity": float(np.exp(2.0))})
  writer.close()
  lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert lines[0] == {"step": 1, "split": "train", "loss": 2.5, "learning_rate": 1e-3}
  assert lines[1]["split"] == "validation" and lines[1]["perplexity"] == np.exp(2.0)
  assert [r["step"] for r in workdir.read_metrics(tmp_path, "validation")] == [2]
  events = list((tmp_path / "tb").glob("events.out.tfevents.*"))
  assert events and events[0].stat().st_size > 0
