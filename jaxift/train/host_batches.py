"""Host batches -> global arrays, and keeping processes in lockstep on a multi-host run.

Every process must feed arrays of the same shape at the same step. Bucketed batches can differ in
row length T between processes, and an evaluation pass can run out of batches sooner on one
process than on another; these helpers pad to the longest T (zero weight, segment 0: padding) and
feed all-padding batches to a process that ran out until every process has.
"""
from typing import Iterator

import jax
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
import numpy as np

BATCH_KEYS = ("inputs", "targets", "weights", "segment_ids", "positions")


def pad_length(host_batch: dict[str, np.ndarray], length: int) -> dict[str, np.ndarray]:
  extra = length - host_batch["inputs"].shape[1]
  if extra <= 0:
    return host_batch
  return {k: np.pad(np.asarray(host_batch[k]), ((0, 0), (0, extra))) for k in BATCH_KEYS}


def empty_batch(rows: int, length: int) -> dict[str, np.ndarray]:
  return {k: np.zeros((rows, length), np.float32 if k == "weights" else np.int32)
          for k in BATCH_KEYS}


def _allgather(values: np.ndarray) -> np.ndarray:
  return np.asarray(multihost_utils.process_allgather(values))


def same_length(host_batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Pads to the longest row length over processes (no-op on one process)."""
  if jax.process_count() == 1:
    return host_batch
  lengths = _allgather(np.int32(host_batch["inputs"].shape[1]))
  return pad_length(host_batch, int(lengths.max()))


def lockstep(batches: Iterator[dict[str, np.ndarray]], rows: int
             ) -> Iterator[dict[str, np.ndarray]]:
  """Yields until EVERY process is out of batches; a process that ran out gets empty batches."""
  batches = iter(batches)
  if jax.process_count() == 1:
    yield from batches
    return
  while True:
    batch = next(batches, None)
    length = 0 if batch is None else batch["inputs"].shape[1]
    gathered = _allgather(np.array([batch is not None, length], np.int32)).reshape(-1, 2)
    if not gathered[:, 0].any():
      return
    target = int(gathered[:, 1].max())
    yield pad_length(batch, target) if batch is not None else empty_batch(rows, target)


def to_global(host_batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
  """This process's rows -> one global array per key, sharded over the batch axes."""
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(host_batch[k]))
          for k in BATCH_KEYS}
