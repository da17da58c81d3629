"""SIGTERM (Cloud TPU preemption, `kill`) -> save a checkpoint at the next step boundary and exit.

One process: a signal handler sets a flag the loop polls. Several processes: every host must stop
at the SAME step, so the decision goes through JAX's preemption sync point (Orbax's
`reached_preemption`), which the distributed runtime coordinates.
"""
import signal
import threading
from typing import Any

import jax


class PreemptionWatcher:

  def __init__(self, checkpointer: Any):
    self._checkpointer = checkpointer
    self._flag = threading.Event()
    self._previous = None
    self._multi = jax.process_count() > 1
    if not self._multi and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame) -> None:  # pylint: disable=unused-argument
    self._flag.set()

  def reached(self, step: int) -> bool:
    if self._multi:
      return bool(self._checkpointer.manager.reached_preemption(step))
    return self._flag.is_set()

  def close(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None
