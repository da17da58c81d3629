"""metrics.jsonl on an object store: lines are buffered and each flush writes ONE new object, so a
run of n lines writes O(n) bytes (it used to rewrite the whole file on every line: O(n^2))."""
import json

from jaxift import workdir
from jaxift.train import metrics


def test_remote_metrics_write_each_line_once(fake_gcs):
  run = "gs://bucket/run"
  writer = metrics.MetricWriter(run, total_steps=95, tensorboard=False, progress_bar=False,
                                flush_lines=10, flush_secs=1e9)
  for step in range(1, 96):
    writer.write(step, "train", {"loss": 1.0 / step})
  writer.close()
  parts = fake_gcs.root / "bucket" / "run" / "metrics.jsonl.parts"
  files = sorted(p.name for p in parts.iterdir())
  assert files == [f"{i:08d}.jsonl" for i in range(10)]  # 9 full flushes of 10 + 5 at close
  part_writes = [p for p in fake_gcs.opened_for_write if "metrics.jsonl" in p]
  assert len(part_writes) == 10  # each object written once, never rewritten
  total_bytes = sum((parts / f).stat().st_size for f in files)
  assert total_bytes == sum(len(json.dumps({"step": s, "split": "train", "loss": 1.0 / s}) + "\n")
                            for s in range(1, 96))
  records = workdir.read_metrics(run)
  assert [r["step"] for r in records] == list(range(1, 96))

  # A resumed run continues the part sequence; the reader returns both runs' lines in order.
  writer = metrics.MetricWriter(run, total_steps=100, initial_step=95, tensorboard=False,
                                progress_bar=False, flush_lines=10)
  writer.write(96, "validation", {"loss": 0.5})
  writer.close()
  assert sorted(p.name for p in parts.iterdir())[-1] == "00000010.jsonl"
  assert workdir.read_metrics(run, "validation") == [{"step": 96, "split": "validation",
                                                      "loss": 0.5}]
