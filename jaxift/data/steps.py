"""Steps per `num_epochs` from record counts: no tokenizing dry pass before step 1.

- `max_length` and `bucket` batching: one example per row, so the steps are exact from the record
  counts (`ceil(examples of the smallest shard * num_epochs / batch)`), as long as nothing is
  dropped.
- `packing`: an estimate. A seeded sample of records (`sample_size`) is tokenized and packed with
  the configured packer; its kept share and rows per example scale the record count. The figure
  can be cached in a file (the workdir), keyed by everything it depends on.

When the figure is off (drops with max_length/bucket; any packing estimate), training still runs
exactly `plan.steps` steps on every process: build the training iterator with `num_epochs=None`
(it repeats, a new shuffle each epoch) and stop at `plan.steps`. A run never ends early because a
shard ran dry and never runs past the planned steps; the data read is then a little more than
`num_epochs` (it continues into the next epoch's order) or a little less (the last epoch's tail is
not reached). `coverage(plan, stats)` says which, and by how much, for the log.
"""
import dataclasses
import hashlib
import json
import math

from etils import epath
import grain
import ml_collections
import numpy as np

from jaxift import fileio
from jaxift.data import batching, mixture, pipeline, preference, sources, tokenize


@dataclasses.dataclass(frozen=True)
class StepsPlan:
  steps: int  # batches every process runs
  examples: int  # examples per process in num_epochs (the smallest shard), before drops
  records_per_epoch: int  # records of the train split (all components of a mixture)
  exact: bool  # True: steps follow from record counts alone (max_length/bucket, no drops)
  method: str  # 'record_count' | 'sampled_packing' | 'cached'
  kept_share: float = 1.0  # packing: share of sampled examples kept
  rows_per_example: float = 1.0  # packing: packed rows per kept example in the sample
  sample: int = 0  # packing: records sampled

  def describe(self) -> str:
    how = ('exact from record counts' if self.exact else
           f'estimated from {self.sample} sampled records: {self.kept_share:.3f} kept, '
           f'{self.rows_per_example:.3f} rows per example' + (' (cached)' if self.method ==
                                                              'cached' else ''))
    return (f'{self.steps} steps for {self.examples} examples per process '
            f'({self.records_per_epoch} records per epoch; {how})')


def examples_per_process(data_config, shard_count: int, num_epochs: int) -> tuple[int, int]:
  """(examples of the smallest process shard over num_epochs, records per epoch). Reads only the
  record counts (indexes), never the records."""
  cfg = ml_collections.FrozenConfigDict(data_config)
  comps = mixture.components(cfg)
  if comps:
    records, _ = mixture.component_records(comps, 'train')
    total = mixture.epoch_examples(records)
    if len(comps) > 1:  # the mixed order is dealt to processes: p, p + P, ...
      return (num_epochs * total) // shard_count, total
    return (total // shard_count) * num_epochs, total
  total = len(sources.load_split(cfg, 'train')[0])
  return (total // shard_count) * num_epochs, total  # shard p holds records[p::P]


def _sample_packing(cfg, tokenizer, batch_size: int, seed: int, sample_size: int):
  """(kept share, packed rows per kept example, records sampled) on a seeded sample."""
  comps = mixture.components(cfg) or [mixture.Component('', 1.0, cfg)]
  weights = np.array([c.weight for c in comps]) / sum(c.weight for c in comps)
  rng = np.random.default_rng(seed)
  examples, seen = [], 0
  for c, w in zip(comps, weights):
    records, _ = sources.load_split(c.cfg, 'train')
    k = min(len(records), max(1, int(round(sample_size * w))))
    fn = pipeline.TokenizeRecord(c.cfg, tokenizer)
    for i in sorted(rng.choice(len(records), size=k, replace=False).tolist()):
      ex = fn.map(records[i])
      seen += 1
      if pipeline.DROP_KEY not in ex:
        keys = [k for k in ex if k.startswith(preference.SIDES)] if cfg.get('pairs') else (
            'inputs', 'targets', 'weights')  # a preference pair packs as one element
        examples.append({key: ex[key] for key in keys})
  if not examples:
    raise ValueError(f'every one of {seen} sampled training records was dropped: check '
                     'data.max_seq_length, data.format and the files')
  order = rng.permutation(len(examples))  # the training stream is shuffled
  ds = grain.MapDataset.source([examples[i] for i in order]).to_iter_dataset()
  pad_id = tokenize.tokenizer_info(tokenizer).pad_id
  pack = preference.pack_pairs if cfg.get('pairs') else batching.pack
  rows = sum(1 for _ in pack(ds, cfg.max_seq_length, cfg.packing_bins or 4 * batch_size,
                                      pad_id, seed, cfg.get('packing_algorithm', 'first_fit')))
  return len(examples) / seen, rows / len(examples), seen


def plan_steps(data_config, tokenizer, *, batch_size: int, shard_count: int, num_epochs: int,
               seed: int = 0, sample_size: int = 2000, cache_file: str | None = None) -> StepsPlan:
  """Steps every process runs for `num_epochs` over the train split (of the mixture), from record
  counts; packing from a sampled length histogram, or from `cache_file` when it was computed for
  the same data, config, tokenizer, batch and process count."""
  cfg = ml_collections.FrozenConfigDict(data_config)
  if num_epochs <= 0:
    raise ValueError(f'num_epochs={num_epochs}: expected a positive number')
  examples, per_epoch = examples_per_process(cfg, shard_count, num_epochs)
  if examples == 0:
    raise ValueError(f'the train split has {per_epoch} records: fewer than the {shard_count} '
                     'processes')
  if cfg.batching != 'packing':
    return StepsPlan(math.ceil(examples / batch_size), examples, per_epoch, True, 'record_count')
  key = hashlib.sha1(json.dumps(
      [cfg.to_dict(), batch_size, shard_count, num_epochs, seed, sample_size, per_epoch,
       getattr(tokenizer, 'name_or_path', ''), len(tokenizer)], sort_keys=True,
      default=str).encode()).hexdigest()
  if cache_file and epath.Path(cache_file).exists():
    try:
      cached = json.loads(epath.Path(cache_file).read_text())
      if cached.get('key') == key:
        return dataclasses.replace(StepsPlan(**cached['plan']), method='cached')
    except (ValueError, TypeError, KeyError):
      pass  # unreadable or from another version: computed again
  kept, rows_per_example, seen = _sample_packing(cfg, tokenizer, batch_size, seed, sample_size)
  rows = examples * kept * rows_per_example
  plan = StepsPlan(max(1, math.ceil(rows / batch_size)), examples, per_epoch, False,
                   'sampled_packing', round(kept, 6), round(rows_per_example, 6), seen)
  if cache_file:
    fileio.write_text(cache_file, json.dumps({'key': key, 'plan': dataclasses.asdict(plan)},
                                             indent=1))
  return plan


def coverage(plan: StepsPlan, stats) -> dict:
  """How much of the planned data a run of `plan.steps` read (`stats`: the train iterator's
  DropStats, counted since it was created): for the log at the end of training."""
  read = stats.kept + sum(v for k, v in stats.dropped.items() if k != 'invalid_json')
  ratio = read / max(plan.examples, 1)
  if read > plan.examples:
    note = (f'read {read - plan.examples} examples past the planned {plan.examples} (into the '
            'next epoch, a new shuffle)')
  elif read < plan.examples:
    note = f'{plan.examples - read} of the planned {plan.examples} examples were not reached'
  else:
    note = f'read exactly the planned {plan.examples} examples'
  return {'planned_examples': plan.examples, 'read_examples': read, 'ratio': round(ratio, 4),
          'message': f'data: {note} in {plan.steps} steps ({ratio:.1%} of num_epochs)'}
