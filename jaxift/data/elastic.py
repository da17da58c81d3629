"""Training data whose order and checkpointed state do not depend on the number of processes
(`data.elastic`, issue 12): a run saved on P processes resumes on P' and trains every example of
the epoch exactly once, counting both runs.

The order. Global index g -> example is a pure function of g (`base_dataset`): the train split
shuffled per epoch (each component of a mixture in its own stream, then `MapDataset.mix`) and
repeated. What is left to read is a `Stream`: an explicit list of global indices (left over by an
earlier run) followed by g = start, start + 1, ... . Process p of P takes stream positions
p, p + P, p + 2P, ... ; with an empty list and start 0 that is the mixture path's order of
`pipeline.make_dataset` (and, for one process, its order without a mixture).

The state of process p, as of the last batch it emitted: the Grain state (exact same-count resume,
bit for bit), plus what no process count enters: the stream, `cursor` (positions of p's share the
filter had taken), `in_flight` (global indices taken and kept but not yet emitted: partly filled
packing bins), the counters (kept, dropped by reason, per component) and `counted` (indices in
flight in an earlier run, already counted). Batches in the prefetch buffer and elements in worker
buffers are past the snapshot: they are read again. A dropped example is done when the filter
counts it.

A resume on P' != P reads the P saved states and derives one new stream (`resume_stream`): every
index in flight anywhere, plus the positions some processes had not reached while another had,
sorted, then the base order from the furthest position reached. Its size is the examples in flight
plus the skew between processes: independent of the number of records.
"""
import dataclasses
import json
import re
import sys
from typing import Any

from etils import epath
import grain
import ml_collections
import numpy as np

from jaxift.data import batching, mixture, pipeline, sources, tokenize
from jaxift.data.stats import DropStats

INDEX_KEY = '_index'  # per token: global index + 1 of the example it belongs to (0 = padding)
GLOBAL_KEY = '_global_index'  # per example, between the dealt source and the filter
POSITION_KEY = '_position'  # per example: its position in this process's share of the stream
SNAPSHOT_KEY = '_elastic_snapshot'  # per batch: the tracker's state once the batch is emitted
STATE_VERSION = 1
_STATE_FILE = re.compile(r'process_(\d+)-of-(\d+)\.json$')


@dataclasses.dataclass(frozen=True)
class Stream:
  """The global indices still to read: `explicit`, then start, start + 1, ... ."""
  explicit: tuple[int, ...] = ()
  start: int = 0
  counted: frozenset[int] = frozenset()  # of `explicit`: kept and counted before (were in flight)

  def at(self, m: int) -> int:
    n = len(self.explicit)
    return self.explicit[m] if m < n else self.start + m - n

  def to_json(self) -> dict:
    return {'explicit': list(self.explicit), 'start': self.start,
            'counted': sorted(self.counted)}

  @classmethod
  def from_json(cls, d: dict) -> 'Stream':
    return cls(tuple(int(g) for g in d['explicit']), int(d['start']),
               frozenset(int(g) for g in d.get('counted', ())))

  def counted_share(self, index: int, count: int) -> set[int]:
    """Of `counted`, those process `index` of `count` reads."""
    return {g for g in self.explicit[index::count] if g in self.counted}


def base_dataset(cfg, tokenizer, seed: int, stats: DropStats) -> tuple[grain.MapDataset, int]:
  """(global index -> tokenized example, records per epoch) of the train split, repeating."""
  comps = mixture.components(cfg)
  if not comps:
    records, invalid = sources.load_split(cfg, 'train')
    stats.update(invalid)
    ds = grain.MapDataset.source(records)
    if cfg.shuffle:
      ds = ds.shuffle(seed=seed)
    return ds.repeat(None).map(pipeline.TokenizeRecord(cfg, tokenizer)), len(records)
  records, invalid = mixture.component_records(comps, 'train')
  stats.update(invalid)
  fns = [pipeline.TokenizeRecord(c.cfg, tokenizer, component=c.name) for c in comps]
  parts = [grain.MapDataset.source(r) for r in records]
  total = mixture.epoch_examples(records)
  if len(comps) > 1:
    return mixture.mix(parts, comps, seed=seed, shuffle=cfg.shuffle, tokenize_fns=fns), total
  ds = grain.MapDataset.concatenate([p.map(f) for p, f in zip(parts, fns)])
  if cfg.shuffle:
    ds = ds.shuffle(seed=seed)
  return ds.repeat(None), total


class _Dealt(grain.MapDataset):
  """Element j of process `index` of `count`: the example at stream position index + count * j,
  tagged with its global index."""

  def __init__(self, parent: grain.MapDataset, stream: Stream, index: int, count: int):
    super().__init__(parent)
    self.stream, self._index, self._count = stream, index, count

  def __len__(self) -> int:
    return sys.maxsize // (2 * self._count)

  def __getitem__(self, j):
    if isinstance(j, slice):
      return self.slice(j)
    g = self.stream.at(self._index + self._count * j)
    ex = dict(self._parent[g])
    ex[GLOBAL_KEY], ex[POSITION_KEY] = g, j
    return ex


class _Tracker:
  """Counts what the filter pulls and what batches carry out. Runs in the producer thread; the
  consumer sees its state only through the snapshot attached to each batch. Elements below the
  cursor come again when Grain's packer restores its state (it re-reads its open bins from the
  parent): they pass without being counted or tracked a second time."""

  def __init__(self, stats: DropStats, patience: int):
    self._stats = stats
    self._count_drops = pipeline.CountDrops(stats, patience)
    self.cursor = 0
    self.in_flight: set[int] = set()
    self.counted: set[int] = set()  # in flight in an earlier run, which counted them as kept

  def filter(self, ex: dict[str, Any]) -> bool:
    g, j = int(ex.pop(GLOBAL_KEY)), int(ex.pop(POSITION_KEY))
    if j < self.cursor:  # a replay after set_state
      ex.pop(pipeline.NOTES_KEY, None)
      ex.pop(pipeline.COMPONENT_KEY, None)
      if pipeline.DROP_KEY in ex:
        return False
      ex[INDEX_KEY] = np.full((len(ex['inputs']),), g + 1, np.int64)
      return True
    self.cursor = j + 1
    if g in self.counted:  # kept before (tokenizing is deterministic): not counted again
      self.counted.discard(g)
      ex.pop(pipeline.NOTES_KEY, None)
      ex.pop(pipeline.COMPONENT_KEY, None)
    elif not self._count_drops(ex):
      return False  # done: counted once, never read again
    self.in_flight.add(g)
    ex[INDEX_KEY] = np.full((len(ex['inputs']),), g + 1, np.int64)
    return True

  def emit(self, batch: dict[str, Any]) -> dict[str, Any]:
    ids = np.unique(batch[INDEX_KEY])
    self.in_flight.difference_update((ids[ids > 0] - 1).tolist())
    batch[SNAPSHOT_KEY] = (self.cursor, sorted(self.in_flight), stats_state(self._stats),
                           sorted(self.counted))
    return batch

  def restore(self, cursor: int, in_flight, counts: dict, counted) -> None:
    self.cursor, self.in_flight = int(cursor), set(int(g) for g in in_flight)
    self.counted = set(int(g) for g in counted)
    load_stats(self._stats, counts)


def stats_state(stats: DropStats) -> dict:
  """The counters of `stats` as JSON: kept, drops by reason, per mixture component."""
  with stats._lock:  # pylint: disable=protected-access
    return {'counts': dict(stats._counts),  # pylint: disable=protected-access
            'components': {k: dict(v) for k, v in stats._components.items()}}  # pylint: disable=protected-access


def load_stats(stats: DropStats, state: dict) -> None:
  """Sets the counters of `stats` to `state` (from `stats_state`)."""
  with stats._lock:  # pylint: disable=protected-access
    stats._counts.clear()  # pylint: disable=protected-access
    stats._counts.update(state.get('counts', {}))  # pylint: disable=protected-access
    stats._components.clear()  # pylint: disable=protected-access
    for name, counts in state.get('components', {}).items():
      stats._components[name].update(counts)  # pylint: disable=protected-access


def add_stats(states: list[dict]) -> dict:
  """The counters of several `stats_state`s added."""
  total = DropStats()
  for s in states:
    total.update(s.get('counts', {}))
    for name, counts in s.get('components', {}).items():
      total._components[name].update(counts)  # pylint: disable=protected-access
  return stats_state(total)


def _pad_index(ids: np.ndarray, length: int) -> np.ndarray:
  out = np.zeros((length,), np.int64)
  out[:len(ids)] = ids
  return out


def _bucket_batch_fn(buckets, pad_id):
  rows_fn = batching.make_bucket_batch_fn(buckets, pad_id)

  def batch_fn(examples):
    batch = rows_fn(examples)
    length = batch['inputs'].shape[1]
    batch[INDEX_KEY] = np.stack([_pad_index(e[INDEX_KEY], length) for e in examples])
    return batch
  return batch_fn


def _pack(ds, length: int, num_bins: int, pad_id: int, seed: int, algorithm: str):
  """`batching.pack` carrying the per-token global index through the packer (same rows)."""
  if algorithm not in batching.PACKERS:
    raise ValueError(f'data.packing_algorithm={algorithm!r}; expected one of '
                     f'{sorted(batching.PACKERS)}')
  features = ('inputs', 'targets', 'weights', INDEX_KEY)
  ds = ds.map(lambda ex: {k: ex[k] for k in features})
  ds = batching.PACKERS[algorithm](
      ds, length_struct={k: length for k in features}, num_packing_bins=num_bins, seed=seed,
      shuffle_bins=False,
      padding_struct={'inputs': pad_id, 'targets': pad_id, 'weights': 0, INDEX_KEY: 0})
  return ds.map(lambda row: {
      'inputs': row['inputs'].astype(np.int32), 'targets': row['targets'].astype(np.int32),
      'weights': row['weights'].astype(np.float32),
      'segment_ids': row['inputs_segment_ids'].astype(np.int32),
      'positions': row['inputs_positions'].astype(np.int32),
      INDEX_KEY: row[INDEX_KEY].astype(np.int64)})


class ElasticIterator(pipeline.DataIterator):
  """Batches of the batch contract; `last_ids` holds the global indices in the last batch.
  `stats` counts what the emitted batches consumed (kept and dropped examples), so counts and
  position move together; they are part of the state.
  get_state: {'grain': ..., 'elastic': {...}} (see the module docstring)."""

  def __init__(self, parent, tracker: _Tracker, dealt: _Dealt, index: int, count: int,
               counts: dict | None = None):
    super().__init__(parent, DropStats())
    self._tracker, self._dealt, self.index, self.count = tracker, dealt, index, count
    stream = self.stream = dealt.stream
    counts = counts or stats_state(DropStats())
    counted = sorted(stream.counted_share(index, count))
    tracker.restore(0, (), counts, counted)
    load_stats(self.stats, counts)
    self._snapshot: tuple[int, list[int], dict, list[int]] = (0, [], counts, counted)
    self.last_ids = np.zeros((0,), np.int64)

  def __next__(self) -> dict[str, np.ndarray]:
    batch = next(self._parent)
    ids = batch.pop(INDEX_KEY)
    self._snapshot = batch.pop(SNAPSHOT_KEY)
    load_stats(self.stats, self._snapshot[2])
    ids = np.unique(ids)
    self.last_ids = ids[ids > 0] - 1
    return batch

  def get_state(self) -> dict[str, Any]:
    cursor, in_flight, counts, counted = self._snapshot
    return {'grain': self._parent.get_state(),
            'elastic': {'version': STATE_VERSION, 'process_index': self.index,
                        'process_count': self.count, 'stream': self.stream.to_json(),
                        'cursor': int(cursor), 'in_flight': [int(g) for g in in_flight],
                        'counts': counts, 'counted': [int(g) for g in counted]}}

  def set_state(self, state) -> None:
    """Same-count resume (bit-exact). Another process count goes through `resume_stream`."""
    if not isinstance(state, dict) or 'elastic' not in state:
      raise ValueError('the saved data iterator state is not an elastic one (data.elastic was '
                       'off when it was saved); set data.elastic=False to resume it')
    el = state['elastic']
    if (el['process_count'], el['process_index']) != (self.count, self.index):
      raise ValueError(f"state of process_{el['process_index']}-of-{el['process_count']} given "
                       f'to process {self.index} of {self.count}')
    # The stream the saved run read (after an earlier resize, not the fresh one): set before the
    # producer thread or worker processes start, which happens at the first batch.
    self.stream = self._dealt.stream = Stream.from_json(el['stream'])
    self._parent.set_state(state['grain'])  # stops the producer thread before the tracker moves
    self._tracker.restore(el['cursor'], el['in_flight'], el['counts'], el['counted'])
    load_stats(self.stats, el['counts'])
    self._snapshot = (int(el['cursor']), list(el['in_flight']), el['counts'], el['counted'])


class _WithElastic(grain.IterDataset):

  def __init__(self, parent, tracker, dealt, index, count, counts):
    super().__init__(parent)
    self._args = (tracker, dealt, index, count, counts)

  def __iter__(self) -> ElasticIterator:
    return ElasticIterator(self._parent.__iter__(), *self._args)


def make_iterator(data_config, tokenizer, *, batch_size: int, shard_index: int, shard_count: int,
                  seed: int, stream: Stream | None = None,
                  counts: dict | None = None) -> ElasticIterator:
  """The training iterator of process `shard_index` of `shard_count` over `stream` (default: the
  whole base order from its start), its counters starting at `counts` (a `stats_state`).
  Repeats forever."""
  cfg = ml_collections.FrozenConfigDict(data_config)
  if not 0 <= shard_index < shard_count:
    raise ValueError(f'shard_index={shard_index} not in [0, {shard_count})')
  stream = stream or Stream()
  stats = DropStats()
  base, n_records = base_dataset(cfg, tokenizer, seed, stats)
  if counts is None:  # a fresh start: the invalid lines the sources counted
    counts = stats_state(stats)
  dealt = _Dealt(base, stream, shard_index, shard_count)
  ds = dealt.to_iter_dataset()
  ds = pipeline.with_workers(ds, cfg)
  tracker = _Tracker(stats, patience=n_records // shard_count + 1)
  ds = ds.filter(tracker.filter)
  pad_id = tokenize.tokenizer_info(tokenizer).pad_id
  length = cfg.max_seq_length
  if cfg.batching == 'max_length':
    ds = ds.map(lambda ex: {**batching.pad_example(ex, length, pad_id),
                            INDEX_KEY: _pad_index(ex[INDEX_KEY], length)})
    ds = ds.batch(batch_size)
  elif cfg.batching == 'bucket':
    ds = ds.batch(batch_size, batch_fn=_bucket_batch_fn(batching.bucket_lengths(cfg), pad_id))
  elif cfg.batching == 'packing':
    bins = cfg.packing_bins or 4 * batch_size
    ds = _pack(ds, length, bins, pad_id, seed, cfg.get('packing_algorithm', 'first_fit'))
    ds = ds.batch(batch_size)
  else:
    raise ValueError(f"data.batching={cfg.batching!r}; expected 'max_length', 'bucket' or "
                     "'packing'")
  ds = ds.map(lambda b: tracker.emit(batching.fill_batch(b, batch_size)))
  if cfg.prefetch_buffer_size > 0:
    ds = grain.experimental.ThreadPrefetchIterDataset(
        ds, prefetch_buffer_size=cfg.prefetch_buffer_size)
  return iter(_WithElastic(ds, tracker, dealt, shard_index, shard_count, counts))


def resume_stream(states: list[dict]) -> Stream:
  """The stream left to read after the saved states of all P processes of a run (any order):
  every global index in flight, and every position some process had not pulled below the furthest
  one pulled, sorted; then the rest of the old stream. Any process count may read it."""
  if not states:
    raise ValueError('no saved data iterator states to resume from')
  elastic = []
  for s in states:
    if not isinstance(s, dict) or 'elastic' not in s:
      raise ValueError('the saved data iterator state is not an elastic one (data.elastic was off '
                       'when it was saved): it cannot move to another number of processes')
    elastic.append(s['elastic'])
  count = elastic[0]['process_count']
  got = sorted(e['process_index'] for e in elastic)
  if got != list(range(count)) or any(e['process_count'] != count for e in elastic):
    raise ValueError(f'saved data states of processes {got} do not make up one run of {count} '
                     'processes')
  stream = Stream.from_json(elastic[0]['stream'])
  if any(Stream.from_json(e['stream']) != stream for e in elastic):
    raise ValueError('the saved data states of the processes read different streams')
  nxt = {e['process_index']: e['process_index'] + count * int(e['cursor']) for e in elastic}
  furthest = max(nxt.values())
  in_flight = {int(g) for e in elastic for g in e['in_flight']}
  counted = in_flight | {int(g) for e in elastic for g in e['counted']}
  left = set(in_flight)
  for p, m in nxt.items():
    left.update(stream.at(k) for k in range(m, furthest, count))
  n = len(stream.explicit)
  if furthest < n:
    left.update(stream.explicit[furthest:])
  start = stream.start + max(0, furthest - n)
  return Stream(tuple(sorted(left)), start, frozenset(counted & left))


def read_states(directory) -> tuple[int, list[dict]]:
  """(process count, the states) of a checkpoint's `data_iter` folder (Grain's
  process_<i>-of-<P>.json files)."""
  directory = epath.Path(directory)
  files = {}
  for path in directory.glob('process_*-of-*.json'):
    m = _STATE_FILE.search(path.name)
    if m:
      files[(int(m.group(2)), int(m.group(1)))] = path
  counts = {c for c, _ in files}
  if len(counts) != 1:
    raise ValueError(f'{directory}: expected the data states of one process count, found '
                     f'{sorted(counts) or "none"}')
  count = counts.pop()
  missing = [i for i in range(count) if (count, i) not in files]
  if missing:
    raise ValueError(f'{directory}: the data states of processes {missing} of {count} are missing')
  return count, [json.loads(files[(count, i)].read_text()) for i in range(count)]


def saved_process_count(directory) -> int | None:
  """The process count that wrote a checkpoint's `data_iter` folder (None: none there)."""
  directory = epath.Path(directory)
  if not directory.exists():
    return None
  for path in directory.glob('process_*-of-*.json'):
    m = _STATE_FILE.search(path.name)
    if m:
      return int(m.group(2))
  return None
