"""Raw records from files (JSON array, JSONL, Parquet, ArrayRecord, a saved HF dataset) and the
deterministic train/validation/test split."""
import collections
import functools
import glob
import json
import os
import time
from typing import Any

from etils import epath
import numpy as np

SPLITS = ('train', 'validation', 'test')


def expand_files(spec: Any) -> list[str]:
  """Comma-separated (or listed) paths and globs, local or etils.epath (gs://...)."""
  items = spec.split(',') if isinstance(spec, str) else list(spec or [])
  paths = []
  for item in (i.strip() for i in items):
    if not item:
      continue
    if any(c in item for c in '*?['):
      if '://' in item:
        base = epath.Path(item.split('*')[0].rsplit('/', 1)[0])
        matches = sorted(str(p) for p in base.glob(item[len(str(base)) + 1:]))
      else:
        matches = sorted(glob.glob(item))
      if not matches:
        raise FileNotFoundError(f'no file matches {item!r}')
      paths += matches
    else:
      if not epath.Path(item).exists():
        raise FileNotFoundError(f'data file {item} does not exist')
      paths.append(item)
  return paths


def _parse_json_lines(path: str, text: str, skip_invalid: bool, counts) -> list[tuple[str, Any]]:
  out = []
  for lineno, line in enumerate(text.splitlines(), 1):
    if not line.strip():
      continue
    try:
      out.append((f'{path}:{lineno}', json.loads(line)))
    except json.JSONDecodeError as e:
      if not skip_invalid:
        raise ValueError(f'{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno}); fix '
                         'the line or set data.skip_invalid=True to skip and count it') from None
      counts['invalid_json'] += 1
  return out


def _read_json(path: str, skip_invalid: bool, counts) -> list[tuple[str, Any]]:
  text = epath.Path(path).read_text(encoding='utf-8')
  if path.endswith('.jsonl') or not text.lstrip().startswith('['):
    return _parse_json_lines(path, text, skip_invalid, counts)
  try:
    data = json.loads(text)
  except json.JSONDecodeError as e:
    raise ValueError(f'{path}:{e.lineno}: malformed JSON ({e.msg} at column {e.colno})') from None
  return [(f'{path}[{i}]', r) for i, r in enumerate(data)]


def _read_parquet(path: str) -> list[tuple[str, Any]]:
  import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
  with epath.Path(path).open('rb') as f:
    rows = pq.read_table(f).to_pylist()
  return [(f'{path} row {i}', r) for i, r in enumerate(rows)]


def _read_array_record(path: str, skip_invalid: bool, counts) -> list[tuple[str, Any]]:
  from array_record.python import array_record_module  # pylint: disable=import-outside-toplevel
  reader = array_record_module.ArrayRecordReader(path)
  try:
    raw = reader.read_all()
  finally:
    reader.close()
  out = []
  for i, blob in enumerate(raw):
    try:
      out.append((f'{path} record {i}', json.loads(blob)))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      if not skip_invalid:
        raise ValueError(f'{path} record {i}: not a JSON object ({e})') from None
      counts['invalid_json'] += 1
  return out


def _read_hf_dataset(path: str, hf_split: str) -> list[tuple[str, Any]]:
  try:
    import datasets  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(f'{path} is a saved Hugging Face dataset; pip install datasets') from e
  ds = datasets.load_from_disk(path)
  if isinstance(ds, datasets.DatasetDict):
    if hf_split not in ds:
      raise KeyError(f'{path}: split {hf_split!r} not in the saved DatasetDict {list(ds)}')
    ds = ds[hf_split]
  return [(f'{path} row {i}', r) for i, r in enumerate(ds.to_list())]


@functools.lru_cache(maxsize=8)
def _read_cached(path: str, stamp: tuple, skip_invalid: bool, hf_split: str):
  del stamp  # part of the cache key only: a changed file is read again
  counts = collections.Counter()
  p = epath.Path(path)
  if p.is_dir():
    records = _read_hf_dataset(path, hf_split)
  elif path.endswith(('.json', '.jsonl')):
    records = _read_json(path, skip_invalid, counts)
  elif path.endswith('.parquet'):
    records = _read_parquet(path)
  elif path.endswith(('.arrayrecord', '.array_record')) or '.arrayrecord-' in path:
    records = _read_array_record(path, skip_invalid, counts)
  else:
    raise ValueError(f'{path}: unknown data file type; expected .json, .jsonl, .parquet, '
                     '.arrayrecord or a datasets.save_to_disk folder')
  return records, dict(counts)


def read_files(spec: Any, skip_invalid: bool = False, hf_split: str = 'train'):
  """-> ([(where, record)], counts of skipped invalid lines)."""
  records, counts = [], collections.Counter()
  for path in expand_files(spec):
    try:  # a changed file is read again (nanosecond mtimes where the file is local)
      if '://' in path:
        st = epath.Path(path).stat()
        stamp = (st.length, st.mtime)
      else:
        st = os.stat(path)
        stamp = (st.st_size, st.st_mtime_ns)
    except (OSError, AttributeError):
      stamp = (time.time(),)  # cannot tell: never reuse
    got, c = _read_cached(path, stamp, skip_invalid, hf_split)
    records += got
    counts.update(c)
  return records, counts


def split_bounds(n: int, fractions) -> dict[str, tuple[int, int]]:
  """"LLMs from scratch" order: train first, then test, then validation (the remainder)."""
  if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
    raise ValueError(f'data.split_fractions={tuple(fractions)}: need 3 non-negative fractions '
                     '(train, validation, test) that sum to 1')
  n_train, n_test = int(n * fractions[0]), int(n * fractions[2])
  return {'train': (0, n_train), 'test': (n_train, n_train + n_test),
          'validation': (n_train + n_test, n)}


def load_split(cfg, split: str):
  """-> ([(where, record)] of one split, counts of skipped invalid lines)."""
  if split not in SPLITS:
    raise ValueError(f'split={split!r}; expected one of {SPLITS}')
  if cfg.source == 'synthetic':
    from jaxift.data import synthetic  # pylint: disable=import-outside-toplevel
    records = synthetic.make_splits(cfg.synthetic)[split]
    return [(f'synthetic {split}[{i}]', r) for i, r in enumerate(records)], collections.Counter()
  if cfg.source != 'files':
    raise ValueError(f"data.source={cfg.source!r}; expected 'files' or 'synthetic'")
  own = {'train': cfg.train_files, 'validation': cfg.validation_files, 'test': cfg.test_files}
  if cfg.validation_files or cfg.test_files:  # separate files per split
    if not own[split]:
      raise ValueError(f'no data for split {split!r}: set data.{split}_files')
    return read_files(own[split], cfg.skip_invalid, cfg.hf_split)
  if not cfg.train_files:
    raise ValueError(f'no data for split {split!r}: set data.train_files (and optionally '
                     "data.validation_files/test_files), or data.source='synthetic'")
  records, counts = read_files(cfg.train_files, cfg.skip_invalid, cfg.hf_split)
  if cfg.split_seed is not None:
    order = np.random.default_rng(cfg.split_seed).permutation(len(records))
    records = [records[i] for i in order]
  lo, hi = split_bounds(len(records), cfg.split_fractions)[split]
  return records[lo:hi], counts


def load_records(data_config, split: str) -> list[dict]:
  """Raw records of `train`, `validation` or `test`: the same split the pipeline uses."""
  return [r for _, r in load_split(data_config, split)[0]]
