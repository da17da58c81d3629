"""Per-example padding, bucket padding and Grain packing, all emitting the batch contract:
inputs/targets int32, weights float32, segment_ids/positions int32, shape [B, T]."""
from typing import Sequence

import grain
import numpy as np

KEYS = ('inputs', 'targets', 'weights', 'segment_ids', 'positions')
DTYPES = {'inputs': np.int32, 'targets': np.int32, 'weights': np.float32,
           'segment_ids': np.int32, 'positions': np.int32}


def pad_example(ex: dict[str, np.ndarray], length: int, pad_id: int) -> dict[str, np.ndarray]:
  n = len(ex['inputs'])
  out = {}
  for key in KEYS:
    fill = pad_id if key in ('inputs', 'targets') else 0
    row = np.full((length,), fill, DTYPES[key])
    if key == 'segment_ids' and key not in ex:
      row[:n] = 1
    else:  # an offline-packed row already has its segment ids
      row[:n] = ex[key]
    out[key] = row
  return out


def bucket_length(n: int, buckets: Sequence[int]) -> int:
  return next(b for b in buckets if b >= n)


def bucket_lengths(cfg) -> list[int]:
  buckets = cfg.buckets
  if isinstance(buckets, str):
    buckets = [int(b) for b in buckets.split(',') if b.strip()]
  return sorted({int(b) for b in buckets if int(b) < cfg.max_seq_length} | {cfg.max_seq_length})


def make_bucket_batch_fn(buckets: Sequence[int], pad_id: int):
  """Pads a list of examples to the smallest bucket that fits the longest: a few shapes only."""
  def batch_fn(examples):
    length = bucket_length(max(len(e['inputs']) for e in examples), buckets)
    rows = [pad_example(e, length, pad_id) for e in examples]
    return {k: np.stack([r[k] for r in rows]) for k in KEYS}
  return batch_fn


def fill_batch(batch: dict[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
  """A last partial batch gets all-zero-weight rows (segment 0) so every batch has one shape."""
  n = batch['inputs'].shape[0]
  if n == batch_size:
    return batch
  return {k: np.concatenate([v, np.zeros((batch_size - n,) + v.shape[1:], v.dtype)])
          for k, v in batch.items()}


PACKERS = {'first_fit': grain.experimental.FirstFitPackIterDataset,
           'best_fit': grain.experimental.BestFitPackIterDataset}


def pack(ds: grain.IterDataset, length: int, num_bins: int, pad_id: int, seed: int,
         algorithm: str = 'first_fit') -> grain.IterDataset:
  """Grain's first-fit or best-fit packing; segment ids 1..k and restarting positions come from
  Grain. Both fill `num_bins` rows and emit them all when an example fits none; first fit puts
  each example in the first row with room, best fit in the row it leaves with the least room."""
  if algorithm not in PACKERS:
    raise ValueError(f'data.packing_algorithm={algorithm!r}; expected one of {sorted(PACKERS)}')
  features = ('inputs', 'targets', 'weights')
  ds = ds.map(lambda ex: {k: ex[k] for k in features})
  ds = PACKERS[algorithm](
      ds, length_struct={k: length for k in features}, num_packing_bins=num_bins, seed=seed,
      shuffle_bins=False, padding_struct={'inputs': pad_id, 'targets': pad_id, 'weights': 0})
  return ds.map(lambda row: {
      'inputs': row['inputs'].astype(np.int32), 'targets': row['targets'].astype(np.int32),
      'weights': row['weights'].astype(np.float32),
      'segment_ids': row['inputs_segment_ids'].astype(np.int32),
      'positions': row['inputs_positions'].astype(np.int32)})
