"""Offline tokenization into N ArrayRecord shards, one worker process per shard at a time (the
library side of `jaxift/tools/preprocess.py --num_shards`).

Shard i holds the contiguous record range [i * N / S, (i + 1) * N / S) of the train split, so the
shards read in name order are the records in file order. Each worker opens the split lazily (its
own range only), tokenizes and masks it exactly as the online pipeline does, optionally packs it,
and writes its shard; the parent adds the workers' counts.
"""
import dataclasses
import json
import multiprocessing
import os

from array_record.python import array_record_module
import grain
import ml_collections
import numpy as np

from jaxift.data import batching, pipeline, sources, tokenize
from jaxift.data.stats import DropStats
from jaxift.data.tokenizers import load_tokenizer

PACKING_BINS = 64


@dataclasses.dataclass
class ShardResult:
  name: str
  examples: int = 0  # kept examples
  rows: int = 0  # rows written (packed rows with pack=True)
  total_tokens: int = 0
  trainable_tokens: float = 0.0
  length_counts: list = dataclasses.field(default_factory=list)  # bincount of example lengths
  counts: dict = dataclasses.field(default_factory=dict)  # kept + drops by reason


def shard_name(i: int, n: int) -> str:
  return f'data-{i:05d}-of-{n:05d}.arrayrecord'


def shard_ranges(n: int, num_shards: int) -> list[tuple[int, int]]:
  return [(n * i // num_shards, n * (i + 1) // num_shards) for i in range(num_shards)]


def write_shard(cfg_dict: dict, tokenizer, lo: int, hi: int, path: str, pack: bool) -> ShardResult:
  """Tokenizes records [lo, hi) of the train split and writes them (or their packed rows)."""
  cfg = ml_collections.FrozenConfigDict(cfg_dict)
  if isinstance(tokenizer, str):  # in a worker process: load it there
    tokenizer = load_tokenizer(tokenizer)
  records, _ = sources.load_split(cfg, 'train')
  fn = pipeline.TokenizeRecord(cfg, tokenizer)
  stats = DropStats()
  result = ShardResult(os.path.basename(path))
  lengths = np.zeros(cfg.max_seq_length + 2, np.int64)
  examples = []
  for i in range(lo, hi):
    ex = fn.map(records[i])
    if pipeline.DROP_KEY in ex:
      stats.add(ex[pipeline.DROP_KEY])
      continue
    stats.add('kept')
    ex = {k: ex[k] for k in pipeline.PRETOKENIZED_KEYS}
    lengths[min(len(ex['inputs']), cfg.max_seq_length + 1)] += 1
    result.total_tokens += len(ex['inputs'])
    result.trainable_tokens += float(ex['weights'].sum())
    examples.append(ex)
  rows = examples
  if pack and examples:
    pad_id = tokenize.tokenizer_info(tokenizer).pad_id
    ds = grain.MapDataset.source(examples).to_iter_dataset()
    rows = list(batching.pack(ds, cfg.max_seq_length, PACKING_BINS, pad_id, seed=0,
                              algorithm=cfg.get('packing_algorithm', 'first_fit')))
  writer = array_record_module.ArrayRecordWriter(path, 'group_size:1')
  try:
    for row in rows:
      writer.write(json.dumps({k: np.asarray(v).tolist() for k, v in row.items()}).encode())
  finally:
    writer.close()
  result.examples, result.rows = len(examples), len(rows)
  result.length_counts = lengths.tolist()
  result.counts = {'kept': stats.kept, **stats.dropped}
  return result


def _write_shard_star(args):
  return write_shard(*args)


def write_shards(data_config, tokenizer, tokenizer_path: str, out_dir: str, *, num_records: int,
                 num_shards: int, num_workers: int = 0, pack: bool = False) -> list[ShardResult]:
  """Writes `num_shards` shards of the train split into `out_dir` with `num_workers` processes
  (0 = one per shard, at most the CPU count; 1 = in this process)."""
  if num_shards < 1:
    raise ValueError(f'num_shards={num_shards}: expected >= 1')
  cfg_dict = ml_collections.ConfigDict(data_config).to_dict()
  workers = num_workers or min(num_shards, os.cpu_count() or 1)
  jobs = [(cfg_dict, tokenizer if workers <= 1 else tokenizer_path, lo, hi,
           os.path.join(out_dir, shard_name(i, num_shards)), pack)
          for i, (lo, hi) in enumerate(shard_ranges(num_records, num_shards))]
  if workers <= 1:
    return [write_shard(*job) for job in jobs]
  # spawn, not fork: the parent may hold threads (Grain, tokenizers) that fork would copy mid-lock
  with multiprocessing.get_context('spawn').Pool(min(workers, num_shards)) as pool:
    return pool.map(_write_shard_star, jobs, chunksize=1)


def histogram(length_counts, max_len: int) -> dict[str, int]:
  """Example lengths in power-of-two bins (as data_params.json has always written them)."""
  counts = np.asarray(length_counts, np.int64)
  edges = [0] + [2 ** k for k in range(4, 32) if 2 ** k < max_len] + [max_len]
  bounds = edges + [len(counts)]
  out = {}
  for lo, hi, a, b in zip(edges, edges[1:] + [max_len], bounds[:-1], bounds[1:]):
    c = int(counts[a:b].sum())
    if c:
      out[f'{lo + 1}-{hi}'] = c
  return out
