"""Weighted mixtures: proportions, determinism, exact resume, per-component counts and validation,
per-component overrides (a CSV component next to an Alpaca one), errors naming the component."""
import collections
import json

import ml_collections
import numpy as np
import pytest

from jaxift.data import mixture, pipeline
from jaxift.data.config import default_data_config


def _alpaca(prefix, n):
  return [{'instruction': f'{prefix} {k}', 'input': '', 'output': f'answer {prefix} {k}'}
          for k in range(n)]


@pytest.fixture(scope='module')
def files(tmp_path_factory):
  d = tmp_path_factory.mktemp('mix')
  (d / 'a.jsonl').write_text('\n'.join(json.dumps(r) for r in _alpaca('alpha', 40)))
  long = {'instruction': 'long ' * 300, 'input': '', 'output': 'x'}
  (d / 'b.jsonl').write_text('\n'.join(json.dumps(r) for r in _alpaca('beta', 19) + [long]))
  (d / 'c.csv').write_text('Label,Text\n' + ''.join(
      f'{"Complaint" if k % 2 else "Praise"},review number {k}\n' for k in range(30)))
  return d


def _cfg(files, weights=(3.0, 1.0), **kw):
  cfg = default_data_config()
  cfg.max_seq_length, cfg.prefetch_buffer_size, cfg.split_fractions = 64, 0, (1.0, 0.0, 0.0)
  cfg.mixture.a = ml_collections.ConfigDict(dict(train_files=str(files / 'a.jsonl'),
                                                 weight=weights[0]))
  cfg.mixture.b = ml_collections.ConfigDict(dict(train_files=str(files / 'b.jsonl'),
                                                 weight=weights[1]))
  cfg.update(kw)
  return cfg


def _iterator(cfg, tok, **kw):
  args = dict(split='train', batch_size=4, shard_index=0, shard_count=1, seed=0)
  args.update(kw)
  return pipeline.make_iterator(cfg, tok, **args)


def _same(xs, ys):
  return len(xs) == len(ys) and all(
      set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a) for a, b in zip(xs, ys))


def _texts(batch, tok):
  out = []
  for b in range(batch['inputs'].shape[0]):
    for s in range(1, batch['segment_ids'][b].max() + 1):
      out.append(tok.decode(batch['inputs'][b][batch['segment_ids'][b] == s]))
  return out


def test_proportions_over_10k_examples(files, gpt2_tokenizer):
  cfg = _cfg(files)
  it = _iterator(cfg, gpt2_tokenizer, batch_size=100)
  for _ in range(100):  # 10,000 examples kept (counted as the batches consume them)
    next(it)
  comps = it.stats.components
  drawn = {name: sum(v for k, v in c.items() if k != 'trained_tokens') for name, c in comps.items()}
  # weights 3:1 -> 75% / 25% of the examples drawn; b's over-long record is drawn and dropped
  assert comps['a']['examples'] + comps['b']['examples'] == 10_000
  assert abs(drawn['a'] / (drawn['a'] + drawn['b']) - 0.75) < 0.01
  assert comps['b']['dropped/too_long'] > 0


def test_deterministic_and_exact_resume_mid_mixture(files, gpt2_tokenizer):
  cfg = _cfg(files, batching='packing')
  it = _iterator(cfg, gpt2_tokenizer)
  for _ in range(5):
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(12)]  # past one epoch of the mixture (60 records)
  again = _iterator(cfg, gpt2_tokenizer)
  head = [next(again) for _ in range(5)]
  assert _same(expected, [next(again) for _ in range(12)])  # same seed, same mixture
  restored = _iterator(cfg, gpt2_tokenizer)
  restored.set_state(state)
  assert _same(expected, [next(restored) for _ in range(12)]) and len(head) == 5
  other = _iterator(cfg, gpt2_tokenizer, seed=1)
  assert _texts(next(other), gpt2_tokenizer) != _texts(next(_iterator(cfg, gpt2_tokenizer)),
                                                       gpt2_tokenizer)


def test_counts_per_component_and_epoch_length(files, gpt2_tokenizer):
  cfg = _cfg(files, weights=(2.0, 1.0))
  it = _iterator(cfg, gpt2_tokenizer, num_epochs=1, batch_size=5)
  batches = list(it)
  comps = it.stats.components
  assert comps['a']['examples'] == 40 and sum(comps['b'].values()) - comps['b'][
      'trained_tokens'] == 20  # one epoch = 60 draws, 2:1
  assert comps['b'].get('dropped/too_long', 0) <= 1
  trained = sum(float(b['weights'].sum()) for b in batches)
  assert comps['a']['trained_tokens'] + comps['b']['trained_tokens'] == trained
  metrics = it.stats.as_dict()
  assert metrics['mixture/a/examples'] == 40 and 'mixture/b/trained_tokens' in metrics


def test_processes_take_disjoint_slices_of_one_global_order(files, gpt2_tokenizer):
  cfg = _cfg(files, shuffle=True)
  one = [t for b in _iterator(cfg, gpt2_tokenizer, num_epochs=1, batch_size=2) for t in
         _texts(b, gpt2_tokenizer)]
  two = [[t for b in _iterator(cfg, gpt2_tokenizer, num_epochs=1, batch_size=2,
                               shard_index=p, shard_count=2) for t in _texts(b, gpt2_tokenizer)]
         for p in range(2)]
  assert collections.Counter(two[0] + two[1]) == collections.Counter(one)
  assert two[0][:5] == one[0:10:2][:5] and two[1][:5] == one[1:10:2][:5]


def test_component_overrides_and_validation_per_component(files, gpt2_tokenizer):
  cfg = _cfg(files)
  cfg.mixture.c = ml_collections.ConfigDict(dict(
      train_files=str(files / 'c.csv'), weight=1.0, format='prompt_completion',
      prompt_key='Text', completion_key='Label', template='Review: {Text}\nLabel: {response}',
      split_fractions=(0.8, 0.2, 0.0)))
  it = _iterator(cfg, gpt2_tokenizer)
  texts = [t for _ in range(10) for t in _texts(next(it), gpt2_tokenizer)]
  assert any(t.startswith('Review: review number') for t in texts)
  assert any('### Instruction' in t for t in texts)
  val = list(_iterator(cfg, gpt2_tokenizer, split='validation', component='c', num_epochs=1))
  val_texts = [t for b in val for t in _texts(b, gpt2_tokenizer)]
  assert len(val_texts) == 6 and all(t.startswith('Review: review number 2') for t in val_texts)
  with pytest.raises(ValueError, match=r"component='zz' is not in data.mixture"):
    _iterator(cfg, gpt2_tokenizer, split='validation', component='zz')


@pytest.mark.parametrize('change, message', [
    (dict(weight=0.0), r'data.mixture.b.weight=0.0: a weight must be > 0'),
    (dict(weight=-1.0), r'data.mixture.b.weight=-1.0'),
    (dict(templat='plain'), r'data.mixture.b.templat: not a data config key'),
    (dict(batching='packing'), r'data.mixture.b.batching: set on config.data'),
    (dict(split_fractions=(0.0, 1.0, 0.0)), r"mixture component 'b' has no train records"),
])
def test_bad_components_are_named(files, gpt2_tokenizer, change, message):
  cfg = _cfg(files)
  spec = cfg.mixture.b.to_dict()
  spec.update(change)
  cfg.mixture.b = ml_collections.ConfigDict(spec)
  with pytest.raises(ValueError, match=message):
    _iterator(cfg, gpt2_tokenizer)


def test_components_resolve_in_name_order(files):
  comps = mixture.components(ml_collections.FrozenConfigDict(_cfg(files)))
  assert [(c.name, c.weight) for c in comps] == [('a', 3.0), ('b', 1.0)]
  assert comps[0].cfg.train_files.endswith('a.jsonl') and comps[0].cfg.max_seq_length == 64


def test_worker_processes_give_the_same_mixture(files, gpt2_tokenizer):
  cfg = _cfg(files, batching='packing')
  expected = [next(it) for it in [_iterator(cfg, gpt2_tokenizer)] for _ in range(6)]
  cfg.num_workers = 2
  it = _iterator(cfg, gpt2_tokenizer)
  try:
    assert _same(expected, [next(it) for _ in range(6)])
    assert it.stats.components['a']['examples'] > 0  # counted in this process
  finally:
    it.close()
