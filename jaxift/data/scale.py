"""Data-at-scale measurements (`jaxift/tools/benchmark_data.py --scale_records=...`): synthetic Alpaca
JSONL and ArrayRecord files of N records, and per-process time to the first batch, peak RSS and
steady examples/s, each measured in a fresh process (so RSS is that process's own).

  python -m jaxift.tools.benchmark_data --scale_records=1000000 --scale_dir=/tmp/scale \
      --tokenizer=../shared/data/gpt2 --shard_counts=1,4
"""
import json
import os
import resource
import subprocess
import sys
import time

from array_record.python import array_record_module
import numpy as np

from jaxift.data import index as index_lib
from jaxift.data import pipeline, sources
from jaxift.data.config import default_data_config
from jaxift.data.tokenizers import load_tokenizer

WORDS = ('the quick brown fox jumps over a lazy dog while data flows through every shard of '
         'the pipeline and each record is read only when it is needed by its process').split()


def write_jsonl(path: str, n: int, seed: int = 0) -> float:
  """n Alpaca records of about 310 bytes (the issue's 1M-record file is 312 MB). -> seconds."""
  t0 = time.perf_counter()
  rng = np.random.default_rng(seed)
  with open(path, 'w', encoding='utf-8', buffering=1 << 22) as f:
    for i in range(n):
      if i % 100_000 == 0:  # in blocks: the generator itself stays small
        lengths = rng.integers(5, 40, size=(100_000, 3))
      a, b, c = lengths[i % 100_000]
      words = [WORDS[(i * 7 + j) % len(WORDS)] for j in range(a + b + c)]
      f.write(json.dumps({'instruction': f'Task {i}: ' + ' '.join(words[:a]),
                          'input': ' '.join(words[a:a + b // 2]),
                          'output': ' '.join(words[a + b:])}) + '\n')
  return time.perf_counter() - t0


def write_arrayrecord(jsonl: str, out_dir: str, num_files: int) -> float:
  """The same records, one JSON object per ArrayRecord record, in `num_files` contiguous shards."""
  t0 = time.perf_counter()
  os.makedirs(out_dir, exist_ok=True)
  n = sum(1 for _ in open(jsonl, 'rb'))
  bounds = [n * i // num_files for i in range(num_files + 1)]
  with open(jsonl, 'rb') as f:
    for i in range(num_files):
      writer = array_record_module.ArrayRecordWriter(
          os.path.join(out_dir, f'data-{i:05d}-of-{num_files:05d}.arrayrecord'), 'group_size:1')
      for _ in range(bounds[i + 1] - bounds[i]):
        writer.write(f.readline().rstrip(b'\n'))
      writer.close()
  return time.perf_counter() - t0


def _rss_mb() -> float:
  """Peak RSS of this process in MiB: VmHWM (reset by exec), not ru_maxrss, which Linux carries
  over from the parent through fork + exec."""
  try:
    with open('/proc/self/status', encoding='ascii') as f:
      for line in f:
        if line.startswith('VmHWM:'):
          return int(line.split()[1]) / 1024
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure(files: str, tokenizer_path: str, *, shard_index: int, shard_count: int,
            batching: str = 'packing', max_seq_length: int = 512, batch_size: int = 8,
            seconds: float = 10.0, index_dir: str = '') -> dict:
  """In this process: time to the first batch (sources opened, indexes mapped, iterator built,
  first batch out), peak RSS, then examples/s over `seconds`."""
  tokenizer = load_tokenizer(tokenizer_path)
  base_rss = _rss_mb()
  cfg = default_data_config()
  cfg.train_files, cfg.split_fractions = files, (1.0, 0.0, 0.0)
  cfg.max_seq_length, cfg.batching, cfg.index_dir = max_seq_length, batching, index_dir
  t0 = time.perf_counter()
  it = pipeline.make_iterator(cfg, tokenizer, split='train', batch_size=batch_size,
                              shard_index=shard_index, shard_count=shard_count, seed=0)
  next(it)
  first = time.perf_counter() - t0
  kept0, t1 = it.stats.kept, time.perf_counter()
  while time.perf_counter() - t1 < seconds:
    next(it)
  rate = (it.stats.kept - kept0) / (time.perf_counter() - t1)
  it.close()
  return {'time_to_first_batch_s': round(first, 2), 'peak_rss_mb': round(_rss_mb()),
          'rss_after_imports_and_tokenizer_mb': round(base_rss),
          'examples_per_s': round(rate, 1)}


def build_indexes(files: str, index_dir: str = '') -> dict:
  """Builds (or finds) the byte-offset index of each text file. -> seconds, records."""
  out = {'seconds': 0.0, 'records': 0, 'built': False}
  for path in sources.expand_files(files):
    kind = sources._kind(path)  # pylint: disable=protected-access
    if kind in ('jsonl', 'json', 'csv', 'tsv'):
      idx, info = index_lib.load_or_build(path, kind, index_dir)
      out['seconds'] += info['seconds']
      out['records'] += idx.n
      out['built'] |= info['built']
  out['seconds'] = round(out['seconds'], 1)
  out['peak_rss_mb'] = round(_rss_mb())
  return out


def run_child(kind: str, **kwargs) -> dict:
  """`measure` or `build_indexes` in a fresh Python process (its own RSS), niced."""
  code = ('import json, sys; from jaxift.data import scale; '
          f'print("RESULT" + json.dumps(scale.{kind}(**json.loads(sys.argv[1]))))')
  out = subprocess.run(['nice', '-n', '10', sys.executable, '-c', code, json.dumps(kwargs)],
                       capture_output=True, text=True, check=False,
                       cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
  for line in out.stdout.splitlines():
    if line.startswith('RESULT'):
      return json.loads(line[len('RESULT'):])
  raise RuntimeError(f'{kind} failed:\n{out.stderr[-3000:]}')
