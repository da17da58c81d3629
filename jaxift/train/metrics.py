"""Where metrics go: `workdir/metrics.jsonl`, TensorBoard events in `workdir/tb/`, the console.

Only process 0 writes. JSONL lines are `{"step": s, "split": "train"|"validation"|..., name: value}`.
TensorBoard through tensorboardX (no TensorFlow). The console gets a tqdm progress bar whose
postfix shows the latest training loss and learning rate.
"""
import json
import math
import time
from typing import Any, Mapping

from etils import epath
import jax
import numpy as np


def _plain(value: Any) -> Any:
  """Numpy/JAX scalars -> Python numbers so JSON can hold them (NaN/Inf stay floats)."""
  if isinstance(value, (np.ndarray, np.generic, jax.Array)):
    value = np.asarray(value).item()
  return value


class MetricWriter:
  """Writes metric dicts to JSONL, TensorBoard and a console progress bar."""

  def __init__(self, workdir: str | epath.Path, *, total_steps: int, initial_step: int = 0,
               tensorboard: bool = True, progress_bar: bool = True):
    self.enabled = jax.process_index() == 0
    self.workdir = epath.Path(workdir)
    self.jsonl_path = self.workdir / "metrics.jsonl"
    self._remote_lines: list[str] | None = None
    self._tb = None
    self._bar = None
    if not self.enabled:
      return
    self.workdir.mkdir(parents=True, exist_ok=True)
    if not _is_local(self.jsonl_path):  # object stores cannot append: keep lines, rewrite
      self._remote_lines = (self.jsonl_path.read_text().splitlines(keepends=True)
                            if self.jsonl_path.exists() else [])
    if tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(str(self.workdir / "tb"), flush_secs=30)
    if progress_bar:
      import tqdm  # pylint: disable=g-import-not-at-top
      self._bar = tqdm.tqdm(total=total_steps, initial=initial_step, unit="step",
                            dynamic_ncols=True, mininterval=1.0)

  def write(self, step: int, split: str, metrics: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), "split": split}
    record.update({k: _plain(v) for k, v in metrics.items() if v is not None})
    line = json.dumps(record, allow_nan=True) + "\n"
    if self._remote_lines is None:
      with open(self.jsonl_path, "a") as f:
        f.write(line)
    else:
      self._remote_lines.append(line)
      self.jsonl_path.write_text("".join(self._remote_lines))
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

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._tb = None
    if self._bar is not None:
      self._bar.close()
      self._bar = None


def _is_local(path: epath.Path) -> bool:
  return "://" not in str(path)


def read_metrics(workdir: str | epath.Path, split: str | None = None) -> list[dict[str, Any]]:
  """The JSONL records of a workdir (optionally one split), in order."""
  path = epath.Path(workdir) / "metrics.jsonl"
  if not path.exists():
    raise FileNotFoundError(f"{path} does not exist: no metrics were written in this workdir")
  records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
  return [r for r in records if split is None or r.get("split") == split]


class StepTimer:
  """Wall time between consecutive `lap()` calls (the first lap has no predecessor: None)."""

  def __init__(self):
    self._last: float | None = None

  def lap(self) -> float | None:
    now = time.perf_counter()
    elapsed = None if self._last is None else now - self._last
    self._last = now
    return elapsed
