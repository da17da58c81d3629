"""Counters of what the pipeline kept and dropped (by reason), for logs and data_params.json."""
import collections
import threading

# Reasons that are dropped and counted by default; any other RecordError fails the run unless
# data.skip_invalid is set (then it is counted too).
ALWAYS_COUNTED = ('empty_response', 'empty_turn', 'all_zero_mask', 'too_long',
                  'too_long_response', 'no_trainable_tokens')


class DropStats:
  """Thread-safe counts: `kept`, and one counter per drop reason."""

  def __init__(self):
    self._lock = threading.Lock()
    self._counts = collections.Counter()
    self._components = collections.defaultdict(collections.Counter)

  def add_component(self, name: str, reason: str | None, trained_tokens: float = 0.0) -> None:
    """One example of mixture component `name`: kept (reason None, with its trained tokens) or
    dropped for `reason`."""
    with self._lock:
      c = self._components[name]
      if reason is None:
        c['examples'] += 1
        c['trained_tokens'] += trained_tokens
      else:
        c[f'dropped/{reason}'] += 1

  @property
  def components(self) -> dict[str, dict[str, float]]:
    """{component: {'examples': n, 'trained_tokens': n, 'dropped/<reason>': n}}."""
    with self._lock:
      return {name: dict(sorted(c.items())) for name, c in sorted(self._components.items())}

  def add(self, key: str, n: int = 1) -> None:
    with self._lock:
      self._counts[key] += n

  def update(self, counts) -> None:
    with self._lock:
      self._counts.update(counts)

  @property
  def kept(self) -> int:
    return self._counts['kept']

  @property
  def dropped(self) -> dict[str, int]:
    with self._lock:
      return {k: v for k, v in sorted(self._counts.items()) if k != 'kept'}

  def as_dict(self) -> dict[str, int]:
    """{'kept': n, 'dropped/<reason>': n, ...}: ready for a metrics writer."""
    out = {'kept': self.kept}
    out.update({f'dropped/{k}': v for k, v in self.dropped.items()})
    for name, counts in self.components.items():
      out.update({f'mixture/{name}/{k}': v for k, v in counts.items()})
    return out

  def __repr__(self) -> str:
    extra = f', components={self.components}' if self._components else ''
    return f'DropStats(kept={self.kept}, dropped={self.dropped}{extra})'
