"""Weighted mixtures of datasets (FLAN-style): `config.data.mixture.<name>` components, each with
its own files, weight and overrides of any `config.data` key.

The mixture's order is global and index-based: each component is shuffled per epoch (its own seed
stream) and repeated; Grain's `MapDataset.mix` interleaves them by weight (a deterministic pattern
with the exact proportions); element k of the mixture is a pure function of k, and process p of P
takes elements p, p + P, p + 2P, ... . The iterator state is one index, so resume is exact.

One epoch of a mixture is `sum(records of each component)` examples, drawn by weight: a component
whose weight exceeds its share of the records is seen more than once per epoch (upsampled), one
whose weight is below it less than once.
"""
import dataclasses
from typing import Any

import grain
import ml_collections

from jaxift.data import sources

COMPONENT_ONLY_KEYS = ('weight',)
NOT_OVERRIDABLE = ('mixture', 'source', 'synthetic', 'shuffle', 'num_workers', 'batching',
                   'max_seq_length', 'buckets', 'packing_bins', 'packing_algorithm',
                   'worker_buffer_size', 'prefetch_buffer_size')


@dataclasses.dataclass(frozen=True)
class Component:
  name: str
  weight: float
  cfg: ml_collections.FrozenConfigDict  # config.data with the component's overrides


def components(cfg) -> list[Component]:
  """The mixture's components in name order ([] when `data.mixture` is empty), each with its
  resolved data config. Errors name the component and the key."""
  mixture = cfg.get('mixture') if hasattr(cfg, 'get') else None
  if not mixture:
    return []
  base = {k: v for k, v in _to_dict(cfg).items() if k != 'mixture'}
  out = []
  for name in sorted(mixture.keys()):
    spec = _to_dict(mixture[name])
    if not isinstance(spec, dict):
      raise ValueError(f'data.mixture.{name}: expected a ConfigDict with train_files and weight, '
                       f'got {type(spec).__name__}')
    if 'weight' not in spec:
      raise ValueError(f'data.mixture.{name}: no weight (set data.mixture.{name}.weight > 0)')
    try:
      weight = float(spec['weight'])
    except (TypeError, ValueError):
      raise ValueError(f'data.mixture.{name}.weight={spec["weight"]!r}: expected a number > 0'
                       ) from None
    if not weight > 0:
      raise ValueError(f'data.mixture.{name}.weight={weight}: a weight must be > 0 (remove the '
                       'component to leave it out)')
    if not spec.get('train_files'):
      raise ValueError(f'data.mixture.{name}: no train_files')
    merged = dict(base)
    merged.update(validation_files='', test_files='')  # a component names its own
    for key, value in spec.items():
      if key in COMPONENT_ONLY_KEYS:
        continue
      if key not in base:
        raise ValueError(f'data.mixture.{name}.{key}: not a data config key (a component may '
                         f'override any of {sorted(k for k in base if k not in NOT_OVERRIDABLE)})')
      if key in NOT_OVERRIDABLE:
        raise ValueError(f'data.mixture.{name}.{key}: set on config.data for the whole mixture, '
                         'not per component')
      merged[key] = value
    out.append(Component(name, weight, ml_collections.FrozenConfigDict(merged)))
  return out


def _to_dict(c) -> Any:
  return c.to_dict() if hasattr(c, 'to_dict') else c


def component_records(comps: list[Component], split: str):
  """-> ([records of each component's split], invalid-line counts). A component with no records
  in the split is an error naming it."""
  out, invalid = [], {}
  for c in comps:
    records, counts = sources.load_split(c.cfg, split)
    if len(records) == 0:
      raise ValueError(f'mixture component {c.name!r} has no {split} records '
                       f'(data.mixture.{c.name}.train_files={c.cfg.train_files!r}, '
                       f'split_fractions={tuple(c.cfg.split_fractions)})')
    for k, v in counts.items():
      invalid[k] = invalid.get(k, 0) + v
    out.append(records)
  return out, invalid


def mix(parts: list[grain.MapDataset], comps: list[Component], *, seed: int, shuffle: bool,
        tokenize_fns: list) -> grain.MapDataset:
  """Per component: shuffle (a new order each epoch), repeat forever, tokenize with the
  component's config; then interleave by weight. `parts` hold (where, record) elements."""
  streams = []
  for k, (ds, fn) in enumerate(zip(parts, tokenize_fns)):
    if shuffle:
      ds = ds.shuffle(seed=seed + 7919 * (k + 1))  # an independent stream per component
    streams.append(ds.repeat(None).map(fn))
  return grain.MapDataset.mix(streams, [c.weight for c in comps])


def epoch_examples(records: list) -> int:
  """Examples in one epoch of the mixture: the components' record counts added."""
  return sum(len(r) for r in records)
