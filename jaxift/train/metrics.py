"""Where metrics go: `workdir/metrics.jsonl`, TensorBoard events in `workdir/tb/`, the console.

Only process 0 writes. JSONL lines are `{"step": s, "split": "train"|"validation"|..., name: value}`.
TensorBoard through tensorboardX (no TensorFlow). The console gets a tqdm progress bar whose
postfix shows the latest training loss and learning rate.

Object stores (gs://) cannot append, and rewriting the whole file per line is O(n^2) over a run:
there the lines are buffered and each flush writes a NEW object under `metrics.jsonl.parts/`
(every `flush_lines` lines or `flush_secs` seconds, and at close); `workdir.read_metrics` reads
both forms.
"""
import json
import math
import time
from typing import Any, Mapping

from etils import epath
import jax
import numpy as np
from tensorboardX import SummaryWriter
import tqdm

from jaxift import fileio
from jaxift import workdir as workdir_lib


def _plain(value: Any) -> Any:
  """Numpy/JAX scalars -> Python numbers so JSON can hold them (NaN/Inf stay floats)."""
  if isinstance(value, (np.ndarray, np.generic, jax.Array)):
    value = np.asarray(value).item()
  return value


class MetricWriter:
  """Writes metric dicts to JSONL, TensorBoard and a console progress bar."""

  def __init__(self, workdir: str | epath.Path, *, total_steps: int, initial_step: int = 0,
               tensorboard: bool = True, progress_bar: bool = True, flush_lines: int = 100,
               flush_secs: float = 30.0, truncate_after: int | None = None):
    """`truncate_after=N` (a resume from step N): rows of steps past N, written by the run that
    died after its last checkpoint, are removed so each (step, split) appears once."""
    self.enabled = jax.process_index() == 0
    self.workdir = epath.Path(workdir)
    self.jsonl_path = workdir_lib.metrics_path(self.workdir)
    self.remote = "://" in str(self.jsonl_path)
    self._pending: list[str] = []  # remote only: lines not yet written
    self._flush_lines, self._flush_secs = flush_lines, flush_secs
    self._last_flush = time.monotonic()
    self._tb = None
    self._bar = None
    if not self.enabled:
      return
    self.workdir.mkdir(parents=True, exist_ok=True)
    if truncate_after is not None and not self.remote and self.jsonl_path.exists():
      lines = self.jsonl_path.read_text().splitlines(keepends=True)
      kept = [l for l in lines if not l.strip() or json.loads(l).get("step", 0) <= truncate_after]
      if len(kept) != len(lines):
        fileio.write_text(self.jsonl_path, "".join(kept))
    if self.remote:  # objects are not rewritten: `workdir.read_metrics` keeps the last row per key
      parts = workdir_lib.metrics_parts_dir(self.workdir)
      parts.mkdir(parents=True, exist_ok=True)
      existing = [int(p.stem) for p in parts.glob("*.jsonl") if p.stem.isdigit()]
      self._next_part = max(existing, default=-1) + 1  # a resumed run continues the sequence
    if tensorboard:
      self._tb = SummaryWriter(str(self.workdir / "tb"), flush_secs=30)
    if progress_bar:
      self._bar = tqdm.tqdm(total=total_steps, initial=initial_step, unit="step",
                            dynamic_ncols=True, mininterval=1.0)

  def write(self, step: int, split: str, metrics: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), "split": split}
    record.update({k: _plain(v) for k, v in metrics.items() if v is not None})
    line = json.dumps(record, allow_nan=True) + "\n"
    if not self.remote:
      with open(self.jsonl_path, "a") as f:
        f.write(line)
    else:
      self._pending.append(line)
      if (len(self._pending) >= self._flush_lines
          or time.monotonic() - self._last_flush >= self._flush_secs):
        self.flush()
    if self._tb is not None:
      for name, value in record.items():
        if name in ("step", "split") or not isinstance(value, (int, float)):
          continue
        self._tb.add_scalar(f"{split}/{name}", value, global_step=int(step))
    if self._bar is not None and split == "train":
      self._bar.set_postfix(loss=f"{record.get('loss', math.nan):.4f}",
                            lr=f"{record.get('learning_rate', math.nan):.2e}", refresh=False)

  def message(self, text: str) -> None:
    """A console line that does not break the progress bar."""
    if not self.enabled:
      return
    if self._bar is not None:
      self._bar.write(text)
    else:
      print(text, flush=True)

  def advance(self, step: int) -> None:
    if self._bar is not None:
      self._bar.update(step - self._bar.n)

  def flush(self) -> None:
    """Remote: writes the buffered lines as one new part object (never rewriting older ones)."""
    self._last_flush = time.monotonic()
    if not self.enabled or not self._pending:
      return
    part = workdir_lib.metrics_parts_dir(self.workdir) / f"{self._next_part:08d}.jsonl"
    fileio.write_text(part, "".join(self._pending))
    self._next_part += 1
    self._pending = []

  def close(self) -> None:
    self.flush()
    if self._tb is not None:
      self._tb.close()
      self._tb = None
    if self._bar is not None:
      self._bar.close()
      self._bar = None


class StepTimer:
  """Wall time between consecutive `lap()` calls (the first lap has no predecessor: None)."""

  def __init__(self):
    self._last: float | None = None

  def lap(self) -> float | None:
    now = time.perf_counter()
    elapsed = None if self._last is None else now - self._last
    self._last = now
    return elapsed
