"""The Grain input pipeline: lazy records -> per-process shard -> shuffle (per epoch) ->
tokenize+mask -> filter (counted) -> pad / bucket / pack -> batch -> prefetch. A weighted mixture
(`data.mixture`) is one global order of its components, dealt to processes. Iterators are
checkpointable."""
import atexit
import os
import threading
import time
from typing import Any
import weakref

from absl import flags
import grain
import ml_collections
import numpy as np

from jaxift.data import batching, mixture, preference, sources, tokenize
from jaxift.data.formats import RecordError
from jaxift.data.stats import ALWAYS_COUNTED, DropStats

DROP_KEY = '_drop_reason'
NOTES_KEY = '_notes'  # turns dropped inside a kept example (e.g. leading non-user turns), by reason
COMPONENT_KEY = '_component'  # the mixture component an example came from (for its counts)
PRETOKENIZED_KEYS = ('inputs', 'targets', 'weights')


class TokenizeRecord(grain.transforms.Map):
  """(where, record) -> shifted example, or a {DROP_KEY: reason} marker counted after the workers
  (so drop counts are complete whatever the number of worker processes)."""

  def __init__(self, cfg: ml_collections.FrozenConfigDict, tokenizer, component: str = ''):
    self._cfg = cfg
    self._tokenizer = tokenizer
    self._component = component

  def map(self, element):
    ex = self._map(element)
    if self._component:
      ex[COMPONENT_KEY] = self._component
    return ex

  def _map(self, element):
    where, record = element
    try:
      if isinstance(record, RecordError):  # a source could not decode it (e.g. not JSON)
        raise record
      if isinstance(record, dict) and all(k in record for k in PRETOKENIZED_KEYS):
        return from_pretokenized(record, self._cfg, where)
      encode = _encoder(self._cfg)
      ex, notes = encode(record, self._cfg, self._tokenizer, where)
      if notes:
        ex[NOTES_KEY] = notes
      return ex
    except RecordError as e:
      if e.reason in ALWAYS_COUNTED or self._cfg.skip_invalid:
        return {DROP_KEY: e.reason}
      raise


def with_workers(ds: grain.IterDataset, cfg) -> grain.IterDataset:
  """`data.num_workers` Grain worker processes for the per-example work (0: in-process)."""
  if cfg.num_workers <= 0:
    return ds
  if not flags.FLAGS.is_parsed():  # Grain's workers read absl flags; outside absl.app parse none
    flags.FLAGS.mark_as_parsed()
  return ds.mp_prefetch(grain.MultiprocessingOptions(
      num_workers=cfg.num_workers, per_worker_buffer_size=cfg.worker_buffer_size),
      worker_init_fn=exit_with_parent)


PARENT_POLL_SECONDS = 1.0


def exit_with_parent(worker_index: int, worker_count: int) -> None:
  """Grain worker init: the worker exits within a second of its trainer's death.

  Grain's workers are spawned processes that outlive a parent killed by SIGKILL or the OOM killer
  (nothing runs in the parent to stop them): each would keep a CPU and its memory until the host
  is rebooted, and a restarted trainer would compete with them. A daemon thread in each worker
  watches its parent pid; when the worker is re-parented (the trainer is gone) it exits at once.
  Polling, not PR_SET_PDEATHSIG: that signal fires when the *thread* that spawned the worker
  exits, which in Grain is a prefetch thread, not the trainer."""
  del worker_index, worker_count
  parent = os.getppid()

  def watch():
    while os.getppid() == parent:
      time.sleep(PARENT_POLL_SECONDS)
    os._exit(1)  # pylint: disable=protected-access  # no cleanup: the reader is gone

  threading.Thread(target=watch, name='jaxift-exit-with-parent', daemon=True).start()


def _encoder(cfg):
  """Preference hook (issue 15): data.pairs tokenizes a record into a chosen/rejected pair."""
  if cfg.get('pairs', False):
    return preference.tokenize_pair_with_notes
  return tokenize.tokenize_record_with_notes


def from_pretokenized(record: dict, cfg, where: str) -> dict[str, np.ndarray]:
  """A record written by jaxift/tools/preprocess.py (already shifted and masked)."""
  ex = {k: np.asarray(record[k], np.int32 if k != 'weights' else np.float32)
        for k in PRETOKENIZED_KEYS}
  n = len(ex['inputs'])
  if 'segment_ids' in record:  # an offline-packed row
    if cfg.batching != 'max_length':
      raise ValueError(f"{where}: rows packed by jaxift/tools/preprocess.py need data.batching="
                       f"'max_length', not {cfg.batching!r}")
    ex['segment_ids'] = np.asarray(record['segment_ids'], np.int32)
    ex['positions'] = np.asarray(record['positions'], np.int32)
  else:
    ex['positions'] = np.asarray(record.get('positions', np.arange(n)), np.int32)
  if n > cfg.max_seq_length:
    raise RecordError(f'{where}: preprocessed row of {n} tokens > max_seq_length='
                      f'{cfg.max_seq_length}', reason='too_long')
  return ex


class CountDrops:
  """Filter predicate that counts; fails loudly when a whole pass over the data keeps nothing."""

  def __init__(self, stats: DropStats, patience: int):
    self._stats = stats
    self._patience = patience
    self._consecutive = 0

  def __call__(self, ex: dict[str, Any]) -> bool:
    notes = ex.pop(NOTES_KEY, None)  # counted here, then gone before batching
    if notes:
      self._stats.update(notes)
    reason = ex.get(DROP_KEY)
    component = ex.pop(COMPONENT_KEY, None)
    if component is not None:
      self._stats.add_component(component, reason, 0.0 if reason else float(ex['weights'].sum()))
    if reason is None:
      self._stats.add('kept')
      self._consecutive = 0
      return True
    self._stats.add(reason)
    self._consecutive += 1
    if self._consecutive > self._patience:
      raise ValueError(f'every example in a full pass was dropped: {self._stats}')
    return False


# Iterators not yet closed. Every Grain iterator closes itself in `__del__`; for one still alive at
# exit that runs during interpreter teardown, after modules such as `queue` are gone, and prints
# "AttributeError: 'NoneType' object has no attribute 'Empty'". An atexit hook (which runs before
# teardown) closes them and drops their Grain iterators, whose `__del__` then runs while
# everything still exists.
_OPEN_ITERATORS: 'weakref.WeakSet[DataIterator]' = weakref.WeakSet()


@atexit.register
def _release_open_iterators() -> None:
  for iterator in list(_OPEN_ITERATORS):
    iterator.close()
    iterator._parents = ()  # pylint: disable=protected-access


class DataIterator(grain.DatasetIterator):
  """The pipeline's Grain iterator, plus `stats` (DropStats of the examples this iterator saw)."""

  def __init__(self, parent: grain.DatasetIterator, stats: DropStats):
    super().__init__(parent)
    self.stats = stats
    _OPEN_ITERATORS.add(self)

  def __next__(self) -> dict[str, np.ndarray]:
    return next(self._parent)

  def get_state(self):
    return self._parent.get_state()

  def set_state(self, state) -> None:
    self._parent.set_state(state)

  def close(self) -> None:
    _OPEN_ITERATORS.discard(self)
    if not self._parents:  # released at exit
      return
    try:
      self._parent.close()
    except (AttributeError, TypeError):  # at interpreter exit Grain's modules may be gone already
      pass


class _FixedCountIterator(grain.DatasetIterator):
  """Yields exactly `count` batches: the parent's, then all-zero batches. Every process of a
  multi-process evaluation pass then runs the same number of steps, whatever its shard dropped."""

  def __init__(self, parent: grain.DatasetIterator, count: int, zero: dict[str, np.ndarray]):
    super().__init__(parent)
    self._count, self._zero = count, zero
    self._emitted, self._exhausted = 0, False

  def __next__(self) -> dict[str, np.ndarray]:
    if self._emitted >= self._count:
      raise StopIteration
    batch = None
    if not self._exhausted:
      try:
        batch = next(self._parent)
      except StopIteration:
        self._exhausted = True
    self._emitted += 1
    return batch if batch is not None else {k: v.copy() for k, v in self._zero.items()}

  def get_state(self):
    return {'parent': self._parent.get_state(), 'emitted': self._emitted,
            'exhausted': self._exhausted}

  def set_state(self, state) -> None:
    self._parent.set_state(state['parent'])
    self._emitted, self._exhausted = state['emitted'], state['exhausted']


class _FixedCount(grain.IterDataset):

  def __init__(self, parent: grain.IterDataset, count: int, zero: dict[str, np.ndarray]):
    super().__init__(parent)
    self._count, self._zero = count, zero

  def __iter__(self) -> _FixedCountIterator:
    return _FixedCountIterator(self._parent.__iter__(), self._count, self._zero)


class _WithStats(grain.IterDataset):

  def __init__(self, parent: grain.IterDataset, stats: DropStats):
    super().__init__(parent)
    self._stats = stats

  def __iter__(self) -> DataIterator:
    return DataIterator(self._parent.__iter__(), self._stats)


def _records_dataset(cfg, tokenizer, split: str, shard_index: int, shard_count: int, seed: int,
                     num_epochs: int | None, stats: DropStats, component: str | None):
  """-> (MapDataset of tokenized examples of this process, records per epoch of the split)."""
  comps = mixture.components(cfg)
  if component is not None:
    picked = [c for c in comps if c.name == component]
    if not picked:
      raise ValueError(f'component={component!r} is not in data.mixture '
                       f'({[c.name for c in comps]})')
    comps = picked
  if not comps:  # one data set: shard first, then shuffle within the shard (as always)
    records, invalid = sources.load_split(cfg, split)
    stats.update(invalid)
    ds = grain.MapDataset.source(records)[shard_index::shard_count]
    if len(ds) == 0:
      raise ValueError(f'split {split!r} has {len(records)} records: none for shard '
                       f'{shard_index} of {shard_count}')
    if cfg.shuffle and split == 'train':
      ds = ds.shuffle(seed=seed)
    ds = ds.repeat(num_epochs)  # None = forever; each epoch is shuffled anew
    return ds.map(TokenizeRecord(cfg, tokenizer)), len(records)
  records, invalid = mixture.component_records(comps, split)
  stats.update(invalid)
  fns = [TokenizeRecord(c.cfg, tokenizer, component=c.name) for c in comps]
  parts = [grain.MapDataset.source(r) for r in records]
  total = mixture.epoch_examples(records)
  if split == 'train' and len(comps) > 1:  # weighted, global order, dealt to processes
    ds = mixture.mix(parts, comps, seed=seed, shuffle=cfg.shuffle, tokenize_fns=fns)
    if num_epochs is not None:
      ds = ds[:num_epochs * total]
  else:  # one component, or evaluation: every record of every component once per epoch
    ds = grain.MapDataset.concatenate([p.map(f) for p, f in zip(parts, fns)])
    if cfg.shuffle and split == 'train':
      ds = ds.shuffle(seed=seed)
    ds = ds.repeat(num_epochs)
  ds = ds[shard_index::shard_count]
  if len(ds) == 0:
    raise ValueError(f'split {split!r} of the mixture has {total} records: none for shard '
                     f'{shard_index} of {shard_count}')
  return ds, total


def make_dataset(data_config, tokenizer, *, split: str, batch_size: int, shard_index: int,
                 shard_count: int, seed: int, num_epochs: int | None = None,
                 stats: DropStats | None = None, component: str | None = None) -> grain.IterDataset:
  cfg = ml_collections.FrozenConfigDict(data_config)
  stats = stats if stats is not None else DropStats()
  if not 0 <= shard_index < shard_count:
    raise ValueError(f'shard_index={shard_index} not in [0, {shard_count})')
  ds, n_records = _records_dataset(cfg, tokenizer, split, shard_index, shard_count, seed,
                                   num_epochs, stats, component)
  ds = ds.to_iter_dataset()
  ds = with_workers(ds, cfg)
  ds = ds.filter(CountDrops(stats, patience=n_records // shard_count + 1))
  pad_id = tokenize.tokenizer_info(tokenizer).pad_id
  length = cfg.max_seq_length
  pairs = bool(cfg.get('pairs', False))
  if pairs:  # preference hook (issue 15): batch_size pairs -> 2 * batch_size interleaved rows
    ds = preference.batch_pairs(ds, cfg, batch_size, pad_id, seed)
  elif cfg.batching == 'max_length':
    ds = ds.map(lambda ex: batching.pad_example(ex, length, pad_id))
    ds = ds.batch(batch_size)
  elif cfg.batching == 'bucket':
    ds = ds.batch(batch_size, batch_fn=batching.make_bucket_batch_fn(
        batching.bucket_lengths(cfg), pad_id))
  elif cfg.batching == 'packing':
    bins = cfg.packing_bins or 4 * batch_size
    ds = batching.pack(ds, length, bins, pad_id, seed,
                       algorithm=cfg.get('packing_algorithm', 'first_fit')).batch(batch_size)
  else:
    raise ValueError(f"data.batching={cfg.batching!r}; expected 'max_length', 'bucket' or "
                     "'packing'")
  if not pairs:
    ds = ds.map(lambda b: batching.fill_batch(b, batch_size))
  if num_epochs is not None and shard_count > 1 and split != 'train':
    # Evaluation passes: each example fills at most one row, so no shard makes more batches than
    # this bound. (Training counts its steps itself and takes the minimum over processes.)
    rows = -(-n_records // shard_count) * num_epochs
    width = batching.bucket_lengths(cfg)[0] if cfg.batching == 'bucket' else length
    zero = batching.fill_batch({k: np.zeros((0, width), batching.DTYPES[k])
                                for k in batching.KEYS}, batch_size * (2 if pairs else 1))
    ds = _FixedCount(ds, -(-rows // batch_size), zero)
  if cfg.prefetch_buffer_size > 0:
    ds = grain.experimental.ThreadPrefetchIterDataset(
        ds, prefetch_buffer_size=cfg.prefetch_buffer_size)
  return _WithStats(ds, stats)


def make_iterator(data_config, tokenizer, *, split: str, batch_size: int, shard_index: int,
                  shard_count: int, seed: int, num_epochs: int | None = None,
                  component: str | None = None) -> DataIterator:
  """Checkpointable iterator of batch-contract dicts [batch_size, T] (batch_size per process);
  `.stats` counts kept and dropped examples by reason (and per mixture component).
  num_epochs=None repeats forever. `component`: only that mixture component's data (e.g. its
  validation loss)."""
  return iter(make_dataset(data_config, tokenizer, split=split, batch_size=batch_size,
                           shard_index=shard_index, shard_count=shard_count, seed=seed,
                           num_epochs=num_epochs, component=component))
