"""Elastic data state (issue 12): P processes save, P' processes resume, and every example of the
epoch is trained exactly once across the interruption (ids compared as multisets), with every
batching, drops, worker processes and a 2-component mixture. Processes are simulated in one
Python process: each has its own iterator, stepped in lockstep as the trainer does; states go
through JSON as in a checkpoint."""
import collections
import json

import ml_collections
import numpy as np
import pytest

from jaxift.data import elastic, pipeline
from jaxift.data.config import default_data_config
from jaxift.data.stats import DropStats

N_A, N_B = 36, 24


def _alpaca(prefix, n):
  out = []
  for k in range(n):
    r = {'instruction': f'{prefix} {k} ' + 'word ' * (k % 7), 'input': '',
         'output': f'answer {prefix} {k}'}
    if k % 11 == 5:
      r['output'] = ''  # dropped: empty response
    if k % 13 == 7:
      r['instruction'] = 'long ' * 200  # dropped: too long
    out.append(r)
  return out


@pytest.fixture(scope='module')
def files(tmp_path_factory):
  d = tmp_path_factory.mktemp('elastic')
  (d / 'a.jsonl').write_text('\n'.join(json.dumps(r) for r in _alpaca('alpha', N_A)))
  (d / 'b.jsonl').write_text('\n'.join(json.dumps(r) for r in _alpaca('beta', N_B)))
  return d


def _cfg(files, batching='packing', mix=True, **kw):
  cfg = default_data_config()
  cfg.max_seq_length, cfg.prefetch_buffer_size, cfg.split_fractions = 64, 2, (1.0, 0.0, 0.0)
  cfg.batching, cfg.buckets, cfg.shuffle = batching, (16, 32), True
  if mix:
    cfg.mixture.a = ml_collections.ConfigDict(dict(train_files=str(files / 'a.jsonl'),
                                                   weight=2.0))
    cfg.mixture.b = ml_collections.ConfigDict(dict(train_files=str(files / 'b.jsonl'),
                                                   weight=1.0))
  else:
    cfg.train_files = str(files / 'a.jsonl')
  cfg.update(kw)
  return cfg


def _epoch(cfg, tok):
  """(records per epoch, the global indices of the first epoch that the filters drop)."""
  base, total = elastic.base_dataset(ml_collections.FrozenConfigDict(cfg), tok, 0, DropStats())
  return total, {g for g in range(total) if pipeline.DROP_KEY in base[g]}


def _drop_oracle(cfg, tok):
  base, _ = elastic.base_dataset(ml_collections.FrozenConfigDict(cfg), tok, 0, DropStats())
  return lambda g: pipeline.DROP_KEY in base[g]


def _iterators(cfg, tok, count, global_batch, stream=None, counts=None):
  return [elastic.make_iterator(cfg, tok, batch_size=global_batch // count, shard_index=p,
                                shard_count=count, seed=0, stream=stream,
                                counts=counts if p == 0 else (None if counts is None else {}))
          for p in range(count)]


def _pulled(states):
  """The global indices that the emitted batches of these processes consumed (kept or dropped),
  in flight or not."""
  out = set()
  for s in states:
    e = s['elastic']
    stream = elastic.Stream.from_json(e['stream'])
    out.update(stream.at(e['process_index'] + e['process_count'] * j) for j in range(e['cursor']))
  return out


def _steps(its, n, ids):
  for _ in range(n):
    for it in its:
      batch = next(it)
      assert set(batch) == {'inputs', 'targets', 'weights', 'segment_ids', 'positions'}
      ids.extend(it.last_ids.tolist())


def _until_epoch_done(its, ids, total, dropped, limit=200):
  want = set(range(total)) - dropped
  for _ in range(limit):
    if want <= set(ids):
      return
    _steps(its, 1, ids)
  raise AssertionError(f'epoch not covered: missing {sorted(want - set(ids))}')


def _save(its):
  states = [json.loads(json.dumps(it.get_state())) for it in its]
  for it in its:
    it.close()
  return states


def _check(ids, total, dropped):
  counts = collections.Counter(ids)
  epoch = {g: c for g, c in counts.items() if g < total}
  assert epoch == {g: 1 for g in range(total) if g not in dropped}
  assert max(counts.values()) == 1  # nothing trained twice, past the epoch either


@pytest.mark.parametrize('before,after,batching,mix', [
    (2, 1, 'packing', True),
    (1, 2, 'packing', True),
    (2, 4, 'packing', True),
    (4, 2, 'max_length', False),
    (2, 1, 'bucket', True),
])
def test_resume_on_another_process_count_trains_each_example_once(
    files, gpt2_tokenizer, before, after, batching, mix):
  cfg = _cfg(files, batching, mix)
  total, dropped = _epoch(cfg, gpt2_tokenizer)
  assert dropped and total == (N_A + N_B if mix else N_A)
  uninterrupted = []
  its = _iterators(cfg, gpt2_tokenizer, before, 4)
  _until_epoch_done(its, uninterrupted, total, dropped)
  _save(its)
  _check(uninterrupted, total, dropped)

  ids = []
  its = _iterators(cfg, gpt2_tokenizer, before, 4)
  _steps(its, 3, ids)
  states = _save(its)
  stream = elastic.resume_stream(states)
  pulled = _pulled(states)
  in_flight = {g for s in states for g in s['elastic']['in_flight']}
  assert bool(in_flight) == (batching == 'packing')  # partly filled packing bins
  assert in_flight <= set(stream.explicit) and stream.counted == in_flight
  assert not set(stream.explicit) & (pulled - in_flight)  # emitted or dropped: never read again
  counts = elastic.add_stats([s['elastic']['counts'] for s in states])
  its = _iterators(cfg, gpt2_tokenizer, after, 4, stream, counts)
  _until_epoch_done(its, ids, total, dropped)
  _check(ids, total, dropped)
  # Drops are counted once: the counters of both runs add up to the drops among what was read,
  # and nothing was read twice.
  final = [it.get_state() for it in its]
  pulled_after = _pulled(final)
  assert pulled & pulled_after == in_flight
  drops = elastic.add_stats([s['elastic']['counts'] for s in final])['counts']
  is_drop = _drop_oracle(cfg, gpt2_tokenizer)
  assert sum(v for k, v in drops.items() if k != 'kept') == sum(
      map(is_drop, pulled | pulled_after))
  assert drops['kept'] == len(pulled | pulled_after) - sum(map(is_drop, pulled | pulled_after))
  _save(its)
  assert ({g for g in ids if g < total} == {g for g in uninterrupted if g < total})


def test_two_resizes_in_a_row_and_state_size(files, gpt2_tokenizer):
  cfg = _cfg(files, 'packing', True)
  total, dropped = _epoch(cfg, gpt2_tokenizer)
  ids = []
  its = _iterators(cfg, gpt2_tokenizer, 2, 4)
  _steps(its, 2, ids)
  states = [json.loads(json.dumps(it.get_state())) for it in its]
  _steps(its, 2, [])  # trained after the checkpoint, then kill -9: lost with their parameters
  _save(its)
  assert all(len(json.dumps(s['elastic'])) < 2000 for s in states)
  its = _iterators(cfg, gpt2_tokenizer, 4, 4, elastic.resume_stream(states))
  _steps(its, 2, ids)
  saved = _save(its)
  # A same-count resume after the resize: fresh iterators take the saved stream from the state.
  its = _iterators(cfg, gpt2_tokenizer, 4, 4)
  for it, s in zip(its, saved):
    it.set_state(s)
  _steps(its, 1, ids)
  its = _iterators(cfg, gpt2_tokenizer, 1, 4, elastic.resume_stream(_save(its)))
  _until_epoch_done(its, ids, total, dropped)
  _check(ids, total, dropped)


def test_same_count_resume_is_bit_exact(files, gpt2_tokenizer):
  cfg = _cfg(files, 'packing', True)
  its = _iterators(cfg, gpt2_tokenizer, 2, 4)
  [next(it) for it in its for _ in range(3)]
  states = [json.loads(json.dumps(it.get_state())) for it in its]
  want = [[next(it) for _ in range(4)] for it in its]
  want_states = _save(its)
  again = _iterators(cfg, gpt2_tokenizer, 2, 4)
  for it, s in zip(again, states):
    it.set_state(s)
  got = [[next(it) for _ in range(4)] for it in again]
  for w, g in zip(want, got):
    for a, b in zip(w, g):
      assert all(np.array_equal(a[k], b[k]) for k in a)
  # ... and the state after them matches too (the tracker moved with the Grain state)
  got_states = _save(again)
  for a, b in zip(got_states, want_states):
    assert a["elastic"] == b["elastic"]
    assert a["grain"] == b["grain"]


def test_mixture_order_matches_the_pipeline(files, gpt2_tokenizer):
  """Elastic mode reads the mixture path's order: the same batches for the same processes."""
  cfg = _cfg(files, 'packing', True)
  for p in range(2):
    want = pipeline.make_iterator(cfg, gpt2_tokenizer, split='train', batch_size=2,
                                  shard_index=p, shard_count=2, seed=0)
    got = elastic.make_iterator(cfg, gpt2_tokenizer, batch_size=2, shard_index=p,
                                shard_count=2, seed=0)
    for _ in range(5):
      a, b = next(want), next(got)
      assert all(np.array_equal(a[k], b[k]) for k in a)
    want.close()
    got.close()


def test_worker_processes(files, gpt2_tokenizer):
  cfg = _cfg(files, 'packing', True, num_workers=1)
  total, dropped = _epoch(cfg, gpt2_tokenizer)
  ids = []
  its = _iterators(cfg, gpt2_tokenizer, 2, 4)
  _steps(its, 2, ids)
  its = _iterators(cfg, gpt2_tokenizer, 1, 4, elastic.resume_stream(_save(its)))
  _until_epoch_done(its, ids, total, dropped)
  _check(ids, total, dropped)


def test_read_states_and_errors(tmp_path):
  for i in range(2):
    (tmp_path / f'process_{i}-of-3.json').write_text('{}')
  with pytest.raises(ValueError, match=r'processes \[2\] of 3 are missing'):
    elastic.read_states(tmp_path)
  with pytest.raises(ValueError, match='not an elastic one'):
    elastic.resume_stream([{'some': 'grain state'}])
  assert elastic.saved_process_count(tmp_path) == 3
