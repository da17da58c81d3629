"""The Grain pipeline: batch contract, packing, evaluation passes, shards, epochs, state, drops."""
import collections
import json

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxift.data import pipeline, synthetic, tokenize
from jaxift.data.config import default_data_config

EOS = 50256
RECORDS = synthetic.make_examples(24, seed=5)


@pytest.fixture(scope='module')
def data_file(tmp_path_factory):
  path = tmp_path_factory.mktemp('pipe') / 'train.jsonl'
  path.write_text('\n'.join(json.dumps(r) for r in RECORDS))
  return path


@pytest.fixture
def pcfg(data_file):
  cfg = default_data_config()
  cfg.train_files, cfg.split_fractions = str(data_file), (1.0, 0.0, 0.0)
  cfg.max_seq_length, cfg.buckets = 128, (48, 64, 96)
  cfg.prefetch_buffer_size = 0
  return cfg


def _iterator(cfg, tok, batch_size=4, num_epochs=None, shard=(0, 1), seed=0):
  return pipeline.make_iterator(cfg, tok, split='train', batch_size=batch_size,
                                shard_index=shard[0], shard_count=shard[1], seed=seed,
                                num_epochs=num_epochs)


def _segments(batch):
  """(inputs, targets, weights) of every example in a batch, cut out by segment id."""
  out = []
  for b in range(batch['inputs'].shape[0]):
    seg = batch['segment_ids'][b]
    for s in range(1, seg.max() + 1):
      idx = np.flatnonzero(seg == s)
      assert idx.tolist() == list(range(idx[0], idx[-1] + 1))  # contiguous
      assert batch['positions'][b, idx].tolist() == list(range(len(idx)))  # restart at 0
      out.append(tuple(tuple(batch[k][b, idx].tolist()) for k in ('inputs', 'targets', 'weights')))
  return out


def _standalone(cfg, tok, records=RECORDS):
  exs = [tokenize.tokenize_record(r, cfg, tok) for r in records]
  return [tuple(tuple(e[k].tolist()) for k in ('inputs', 'targets', 'weights')) for e in exs]


@pytest.mark.parametrize('batching', ['max_length', 'bucket', 'packing'])
def test_batch_contract_and_every_example_once(pcfg, gpt2_tokenizer, batching):
  pcfg.batching, pcfg.shuffle = batching, False
  it = _iterator(pcfg, gpt2_tokenizer, num_epochs=1)
  batches = list(it)
  lengths = set()
  for b in batches:
    assert set(b) == {'inputs', 'targets', 'weights', 'segment_ids', 'positions'}
    assert {k: v.dtype for k, v in b.items()} == {
        'inputs': np.int32, 'targets': np.int32, 'weights': np.float32,
        'segment_ids': np.int32, 'positions': np.int32}
    assert all(v.shape == b['inputs'].shape for v in b.values()) and b['inputs'].shape[0] == 4
    assert not b['weights'][b['segment_ids'] == 0].any()  # padding never counts
    lengths.add(b['inputs'].shape[1])
  segments = [s for b in batches for s in _segments(b)]
  # Rule 5: each packed/padded example is exactly the standalone example, its last target its EOS.
  assert collections.Counter(segments) == collections.Counter(_standalone(pcfg, gpt2_tokenizer))
  assert all(s[1][-1] == EOS and s[2][-1] == 1.0 for s in segments)
  assert it.stats.kept == 24 and not it.stats.dropped
  if batching == 'max_length':
    assert lengths == {128} and len(batches) == 6
  elif batching == 'bucket':
    assert lengths <= {48, 64, 96, 128}
    for b in batches:  # the smallest bucket that holds the longest example
      longest = (b['segment_ids'] > 0).sum(1).max()
      assert b['inputs'].shape[1] == min(x for x in (48, 64, 96, 128) if x >= longest)
  else:
    assert lengths == {128} and len(batches) < 6
    assert max(b['segment_ids'].max() for b in batches) > 1


def test_eval_pass_fills_last_batch_with_zero_rows(pcfg, gpt2_tokenizer):
  pcfg.shuffle = False
  batches = list(_iterator(pcfg, gpt2_tokenizer, batch_size=5, num_epochs=1))
  assert len(batches) == 5  # 24 examples -> 4 full batches + 4 rows and one empty row
  last = batches[-1]
  assert last['inputs'].shape == (5, 128)
  assert (last['segment_ids'].max(1) > 0).tolist() == [True] * 4 + [False]
  assert last['weights'][4].sum() == 0


def test_shards_are_disjoint_and_cover_the_split(pcfg, gpt2_tokenizer):
  pcfg.shuffle = False
  shards = [[s for b in _iterator(pcfg, gpt2_tokenizer, num_epochs=1, shard=(i, 2))
             for s in _segments(b)] for i in range(2)]
  assert len(shards[0]) == len(shards[1]) == 12
  assert not set(shards[0]) & set(shards[1])
  assert collections.Counter(shards[0] + shards[1]) == collections.Counter(
      _standalone(pcfg, gpt2_tokenizer))


def test_each_epoch_is_a_new_permutation(pcfg, gpt2_tokenizer):
  it = _iterator(pcfg, gpt2_tokenizer, batch_size=4)
  order = [s for _ in range(12) for s in _segments(next(it))]  # two epochs of 24
  first, second = order[:24], order[24:]
  assert collections.Counter(first) == collections.Counter(second) == collections.Counter(
      _standalone(pcfg, gpt2_tokenizer))
  assert first != second and first != _standalone(pcfg, gpt2_tokenizer)
  again = _iterator(pcfg, gpt2_tokenizer, batch_size=4)
  assert [s for _ in range(6) for s in _segments(next(again))] == first  # same seed, same order
  other = _iterator(pcfg, gpt2_tokenizer, batch_size=4, seed=1)
  assert [s for _ in range(6) for s in _segments(next(other))] != first


def _same(a, b):
  return all(set(x) == set(y) and all(np.array_equal(x[k], y[k]) for k in x) for x, y in zip(a, b))


@pytest.mark.parametrize('batching', ['bucket', 'packing'])
def test_state_restore_mid_epoch_gives_the_same_batches(pcfg, gpt2_tokenizer, batching, tmp_path):
  pcfg.batching = batching
  pcfg.prefetch_buffer_size = 2
  it = _iterator(pcfg, gpt2_tokenizer)
  for _ in range(3):
    next(it)
  state = it.get_state()
  manager = ocp.CheckpointManager(tmp_path / 'ckpt', item_names=('data',))
  manager.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
  manager.wait_until_finished()
  expected = [next(it) for _ in range(10)]  # crosses into the second epoch
  restored = _iterator(pcfg, gpt2_tokenizer)
  restored.set_state(state)
  assert _same(expected, [next(restored) for _ in range(10)])
  from_orbax = _iterator(pcfg, gpt2_tokenizer)
  manager.restore(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(from_orbax)))
  assert _same(expected, [next(from_orbax) for _ in range(10)])


def test_worker_processes_give_the_same_batches_and_restore(pcfg, gpt2_tokenizer):
  reference = _iterator(pcfg, gpt2_tokenizer)
  expected = [next(reference) for _ in range(8)]
  pcfg.num_workers = 2
  it = _iterator(pcfg, gpt2_tokenizer)
  try:
    got = [next(it) for _ in range(4)]
    state = it.get_state()
    got += [next(it) for _ in range(4)]
    assert it.stats.kept >= 32  # counted in this process, whatever ran the tokenizer
  finally:
    it.close()
  assert _same(expected, got)
  restored = _iterator(pcfg, gpt2_tokenizer)
  try:
    restored.set_state(state)
    assert _same(expected[4:], [next(restored) for _ in range(4)])
  finally:
    restored.close()


def test_drops_are_counted_by_reason(pcfg, gpt2_tokenizer, tmp_path):
  path = tmp_path / 'mixed.jsonl'
  rows = [json.dumps(r) for r in RECORDS[:6]] + [
      json.dumps({'instruction': 'x', 'input': '', 'output': ''}),
      json.dumps({'instruction': 'long ' * 200, 'input': '', 'output': 'y'}),
      json.dumps({'instruction': 'x', 'input': '', 'answer': 'y'}),
      '{not json']
  path.write_text('\n'.join(rows))
  pcfg.train_files, pcfg.shuffle, pcfg.format = str(path), False, 'alpaca'
  with pytest.raises(ValueError, match='mixed.jsonl:10: malformed JSON'):
    _iterator(pcfg, gpt2_tokenizer, num_epochs=1)
  pcfg.skip_invalid = True
  it = _iterator(pcfg, gpt2_tokenizer, num_epochs=1)
  assert sum(int((b['segment_ids'].max(1) > 0).sum()) for b in it) == 6
  assert it.stats.as_dict() == {'kept': 6, 'dropped/empty_response': 1, 'dropped/invalid_json': 1,
                                'dropped/missing_key': 1, 'dropped/too_long': 1}
  pcfg.skip_invalid = False
  path.write_text('\n'.join(rows[:-1]))
  with pytest.raises(Exception, match=r"mixed.jsonl:9: missing key 'output'"):
    list(_iterator(pcfg, gpt2_tokenizer, num_epochs=1))


def test_all_dropped_fails_instead_of_spinning(pcfg, gpt2_tokenizer):
  pcfg.max_seq_length = 8  # every example is too long
  with pytest.raises(ValueError, match='every example in a full pass was dropped'):
    next(_iterator(pcfg, gpt2_tokenizer))


@pytest.mark.parametrize('batching', ['bucket', 'packing'])
def test_multi_process_eval_passes_have_equal_batch_counts(pcfg, gpt2_tokenizer, tmp_path,
                                                           batching):
  # 25 records over 2 shards (13 + 12), one of shard 0's too long: every process must still run
  # the same number of evaluation steps, or collectives would hang.
  path = tmp_path / 'odd.jsonl'
  rows = RECORDS + [{'instruction': 'long ' * 200, 'input': '', 'output': 'y'}]
  path.write_text('\n'.join(json.dumps(r) for r in rows))
  pcfg.train_files, pcfg.validation_files, pcfg.batching = str(path), str(path), batching

  def _iterator(cfg, tok, num_epochs, shard):
    return pipeline.make_iterator(cfg, tok, split='validation', batch_size=4, shard_index=shard[0],
                                  shard_count=shard[1], seed=0, num_epochs=num_epochs)
  counts, kept = [], 0
  for shard in range(2):
    it = _iterator(pcfg, gpt2_tokenizer, num_epochs=1, shard=(shard, 2))
    batches = list(it)
    counts.append(len(batches))
    kept += it.stats.kept
    assert it.stats.dropped == ({'too_long': 1} if shard == 0 else {})
    assert len({b['inputs'].shape for b in batches}) == 1 or batching == 'bucket'
    assert all(b['weights'].shape[0] == 4 for b in batches)
  assert counts == [4, 4] and kept == 24  # ceil(13 / 4) batches on every process
  it = _iterator(pcfg, gpt2_tokenizer, num_epochs=1, shard=(0, 2))
  head = [next(it) for _ in range(2)]
  state = it.get_state()
  tail = list(it)
  restored = _iterator(pcfg, gpt2_tokenizer, num_epochs=1, shard=(0, 2))
  restored.set_state(state)
  assert len(head + tail) == 4 and _same(tail, list(restored)) and len(tail) == 2


def test_script_that_never_closes_its_iterator_exits_cleanly(shared_data, tmp_path):
  """Grain's prefetch iterators close themselves in __del__, which for a live one used to run
  during interpreter teardown and print "AttributeError: 'NoneType' object has no attribute
  'Empty'". The pipeline closes open iterators at exit instead."""
  import subprocess
  import sys
  script = tmp_path / "script.py"
  script.write_text(
      "from jaxift.data.config import default_data_config\n"
      "from jaxift.data.pipeline import make_iterator\n"
      "from jaxift.data.tokenizers import load_tokenizer\n"
      "c = default_data_config()\n"
      "c.source, c.max_seq_length, c.batching, c.prefetch_buffer_size = "
      "'synthetic', 64, 'packing', 2\n"
      f"tok = load_tokenizer({str(shared_data / 'gpt2')!r})\n"
      "it = make_iterator(c, tok, split='train', batch_size=2, shard_index=0, shard_count=1, "
      "seed=0)\n"
      "print(next(it)['inputs'].shape)\n")
  done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                        timeout=120)
  assert done.returncode == 0, done.stderr[-2000:]
  assert done.stdout.strip() == "(2, 64)"
  assert "Traceback" not in done.stderr and "Error" not in done.stderr, done.stderr[-2000:]
