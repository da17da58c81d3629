"""Wall time of a run by phase (load, compile, steps, evaluations, saving): one summary line at
the end of training, so that a slow run says where its minutes went."""
import collections
import contextlib
import time


class PhaseTimes:
  """Seconds per named phase, added up over every `with times.phase(name):` block."""

  def __init__(self):
    self.seconds: dict[str, float] = collections.defaultdict(float)

  @contextlib.contextmanager
  def phase(self, name: str):
    t0 = time.perf_counter()
    try:
      yield
    finally:
      self.seconds[name] += time.perf_counter() - t0

  def add(self, name: str, seconds: float) -> None:
    self.seconds[name] += seconds

  def as_dict(self) -> dict[str, float]:
    return {k: round(v, 2) for k, v in self.seconds.items()}

  def summary(self, total: float | None = None) -> str:
    """'time by phase: load 12.1 s, compile 40.2 s, ... (total 300.0 s)'."""
    parts = ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items())
    return f"time by phase: {parts}" + (f" (total {total:.1f} s)" if total is not None else "")
