"""Steps per num_epochs from record counts (no dry pass): exact for max_length/bucket, a sampled
estimate for packing (cached), and what a run of plan.steps reads when the figure is off."""
import json

import ml_collections
import pytest

from jaxift.data import pipeline, steps, synthetic
from jaxift.data.config import default_data_config

RECORDS = synthetic.make_examples(90, seed=3)


@pytest.fixture
def scfg(tmp_path):
  path = tmp_path / 'train.jsonl'
  path.write_text('\n'.join(json.dumps(r) for r in RECORDS))
  cfg = default_data_config()
  cfg.train_files, cfg.split_fractions = str(path), (1.0, 0.0, 0.0)
  cfg.max_seq_length, cfg.prefetch_buffer_size = 128, 0
  return cfg


def _count(cfg, tok, batch, shard, epochs):
  it = pipeline.make_iterator(cfg, tok, split='train', batch_size=batch, shard_index=shard[0],
                              shard_count=shard[1], seed=0, num_epochs=epochs)
  return sum(1 for _ in it)


@pytest.mark.parametrize('batching', ['max_length', 'bucket'])
@pytest.mark.parametrize('processes, epochs', [(1, 1), (4, 2)])
def test_exact_from_record_counts(scfg, gpt2_tokenizer, batching, processes, epochs):
  scfg.batching = batching
  plan = steps.plan_steps(scfg, gpt2_tokenizer, batch_size=4, shard_count=processes,
                          num_epochs=epochs)
  dry = min(_count(scfg, gpt2_tokenizer, 4, (p, processes), epochs) for p in range(processes))
  assert plan.exact and plan.steps == dry  # what the trainer's dry pass counted
  assert plan.examples == (90 // processes) * epochs and plan.records_per_epoch == 90


@pytest.mark.parametrize('algorithm', ['first_fit', 'best_fit'])
def test_packing_estimate_is_close_and_cached(scfg, gpt2_tokenizer, tmp_path, algorithm):
  scfg.batching, scfg.packing_algorithm = 'packing', algorithm
  cache = str(tmp_path / 'workdir' / 'data_plan.json')
  plan = steps.plan_steps(scfg, gpt2_tokenizer, batch_size=4, shard_count=1, num_epochs=2,
                          sample_size=60, cache_file=cache)
  real = _count(scfg, gpt2_tokenizer, 4, (0, 1), 2)
  assert not plan.exact and plan.method == 'sampled_packing' and plan.sample == 60
  assert abs(plan.steps - real) <= max(2, 0.2 * real), (plan, real)
  assert 'estimated from 60 sampled records' in plan.describe()
  again = steps.plan_steps(scfg, gpt2_tokenizer, batch_size=4, shard_count=1, num_epochs=2,
                           sample_size=60, cache_file=cache)
  assert again.method == 'cached' and again.steps == plan.steps
  other = steps.plan_steps(scfg, gpt2_tokenizer, batch_size=8, shard_count=1, num_epochs=2,
                           sample_size=60, cache_file=cache)
  assert other.method == 'sampled_packing'  # another batch size: not the cached figure


def test_a_wrong_figure_neither_stops_early_nor_runs_past_the_plan(scfg, gpt2_tokenizer,
                                                                  tmp_path):
  # 3 of 33 records are dropped (too long): the exact-from-counts figure is 1 step too many.
  path = tmp_path / 'drops.jsonl'
  long = {'instruction': 'long ' * 300, 'input': '', 'output': 'y'}
  path.write_text('\n'.join(json.dumps(r) for r in RECORDS[:30] + [long] * 3))
  scfg.train_files = str(path)
  plan = steps.plan_steps(scfg, gpt2_tokenizer, batch_size=3, shard_count=1, num_epochs=1)
  assert plan.steps == 11 and _count(scfg, gpt2_tokenizer, 3, (0, 1), 1) == 10
  # The trainer's contract: a repeating iterator, exactly plan.steps batches.
  it = pipeline.make_iterator(scfg, gpt2_tokenizer, split='train', batch_size=3, shard_index=0,
                              shard_count=1, seed=0, num_epochs=None)
  batches = [next(it) for _ in range(plan.steps)]
  assert all((b['segment_ids'].max(1) > 0).all() for b in batches)  # full batches, no stop
  report = steps.coverage(plan, it.stats)
  assert report['read_examples'] > plan.examples and 'past the planned 33' in report['message']
  # A figure that is too small: the tail of the epoch is not reached, and the log says so.
  short = steps.StepsPlan(5, 33, 33, False, 'sampled_packing')
  it = pipeline.make_iterator(scfg, gpt2_tokenizer, split='train', batch_size=3, shard_index=0,
                              shard_count=1, seed=0, num_epochs=None)
  for _ in range(short.steps):
    next(it)
  assert 'were not reached' in steps.coverage(short, it.stats)['message']


def test_mixture_epoch_is_the_components_records(scfg, gpt2_tokenizer, tmp_path):
  other = tmp_path / 'other.jsonl'
  other.write_text('\n'.join(json.dumps(r) for r in RECORDS[:30]))
  scfg.mixture.main = ml_collections.ConfigDict(dict(train_files=scfg.train_files, weight=1.0))
  scfg.mixture.other = ml_collections.ConfigDict(dict(train_files=str(other), weight=1.0))
  plan = steps.plan_steps(scfg, gpt2_tokenizer, batch_size=4, shard_count=2, num_epochs=1)
  assert plan.records_per_epoch == 120 and plan.examples == 60 and plan.steps == 15
  assert min(_count(scfg, gpt2_tokenizer, 4, (p, 2), 1) for p in range(2)) == 15


def test_best_fit_packs_every_example_once_with_no_more_rows(scfg, gpt2_tokenizer):
  scfg.batching, scfg.shuffle = 'packing', False
  rows, segments = {}, {}
  for algorithm in ('first_fit', 'best_fit'):
    scfg.packing_algorithm = algorithm
    batches = list(pipeline.make_iterator(scfg, gpt2_tokenizer, split='train', batch_size=4,
                                          shard_index=0, shard_count=1, seed=0, num_epochs=1))
    rows[algorithm] = sum(int((b['segment_ids'].max(1) > 0).sum()) for b in batches)
    segments[algorithm] = sorted(
        tuple(b['inputs'][r][b['segment_ids'][r] == s].tolist())
        for b in batches for r in range(4) for s in range(1, b['segment_ids'][r].max() + 1))
  assert segments['first_fit'] == segments['best_fit'] and len(segments['best_fit']) == 90
  assert rows['best_fit'] <= rows['first_fit']
  scfg.packing_algorithm = 'worst_fit'
  with pytest.raises(ValueError, match="packing_algorithm='worst_fit'"):
    next(pipeline.make_iterator(scfg, gpt2_tokenizer, split='train', batch_size=4, shard_index=0,
                                shard_count=1, seed=0))
