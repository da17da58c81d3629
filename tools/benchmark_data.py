"""Measures the data pipeline: non-padding share per batching mode and throughput (examples/s).

  python tools/benchmark_data.py --data_file=../shared/data/instruction-data.json \
      --tokenizer=../shared/data/gpt2 --max_seq_length=1024 --batch_size=8 --workers=0,2

Non-padding share: one shuffled pass over the whole file (num_epochs=1; the last partial batch is
filled with empty rows, as in evaluation). Throughput: a repeating training iterator, examples per
second after the first batch (tokenize + mask + pad/pack + batch), for each worker count.

--scale_records=1000000,10000000: the data-at-scale table instead (jaxift.data.scale): a synthetic
Alpaca JSONL of N records and the same records in ArrayRecord shards under --scale_dir (deleted
afterwards unless --keep_data); index build time; per process (shard 0 of each --shard_counts),
in a fresh process each: time to the first batch, peak RSS, examples/s.
"""
import argparse
import json
import pathlib
import os
import platform
import shutil
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from jaxift.data import pipeline, scale  # noqa: E402
from jaxift.data.config import default_data_config  # noqa: E402
from jaxift.data.tokenizers import load_tokenizer  # noqa: E402


def _config(args, batching: str, workers: int):
  cfg = default_data_config()
  cfg.train_files, cfg.split_fractions = args.data_file, (1.0, 0.0, 0.0)
  cfg.max_seq_length, cfg.batching, cfg.num_workers = args.max_seq_length, batching, workers
  cfg.buckets = tuple(int(b) for b in args.buckets.split(','))
  return cfg


def padding_share(args, tokenizer, batching: str) -> dict:
  it = pipeline.make_iterator(_config(args, batching, 0), tokenizer, split='train',
                              batch_size=args.batch_size, shard_index=0, shard_count=1, seed=0,
                              num_epochs=1)
  real = slots = batches = 0
  shapes = set()
  for batch in it:
    real += int((batch['segment_ids'] > 0).sum())
    slots += batch['segment_ids'].size
    batches += 1
    shapes.add(batch['inputs'].shape[1])
  it.close()
  return {'batching': batching, 'non_padding_share': round(real / slots, 4), 'batches': batches,
          'row_lengths': sorted(shapes), 'examples': it.stats.kept}


def throughput(args, tokenizer, batching: str, workers: int) -> dict:
  it = pipeline.make_iterator(_config(args, batching, workers), tokenizer, split='train',
                              batch_size=args.batch_size, shard_index=0, shard_count=1, seed=0)
  next(it)  # start-up (worker processes, first tokenizations) is not throughput
  kept0, t0, n = it.stats.kept, time.perf_counter(), 0
  while time.perf_counter() - t0 < args.seconds:
    next(it)
    n += 1
  dt = time.perf_counter() - t0
  kept = it.stats.kept - kept0
  it.close()
  return {'batching': batching, 'workers': workers, 'batches_per_s': round(n / dt, 1),
          'examples_per_s': round(kept / dt, 1)}


def scale_table(args) -> list[dict]:
  rows = []
  for n in (int(x) for x in args.scale_records.split(',')):
    folder = os.path.join(args.scale_dir, f'n{n}')
    os.makedirs(folder, exist_ok=True)
    jsonl, ar_dir = os.path.join(folder, 'alpaca.jsonl'), os.path.join(folder, 'arrayrecord')
    index_dir = os.path.join(folder, 'index')
    try:
      gen = scale.write_jsonl(jsonl, n)
      size_mb = os.path.getsize(jsonl) / 2 ** 20
      index = scale.run_child('build_indexes', files=jsonl, index_dir=index_dir)
      ar = scale.write_arrayrecord(jsonl, ar_dir, args.arrayrecord_files)
      print(json.dumps({'records': n, 'jsonl_mb': round(size_mb), 'generate_s': round(gen, 1),
                        'index_build': index, 'arrayrecord_write_s': round(ar, 1)}), flush=True)
      for fmt, files in (('jsonl (indexed)', jsonl), ('arrayrecord', f'{ar_dir}/*.arrayrecord')):
        for count in (int(c) for c in args.shard_counts.split(',')):
          row = {'records': n, 'format': fmt, 'shard_count': count,
                 'index_build_s': index['seconds'] if fmt.startswith('jsonl') else None}
          row.update(scale.run_child(
              'measure', files=files, tokenizer_path=args.tokenizer, shard_index=0,
              shard_count=count, batching=args.scale_batching, max_seq_length=args.max_seq_length,
              batch_size=args.batch_size, seconds=args.seconds, index_dir=index_dir))
          print(json.dumps(row), flush=True)
          rows.append(row)
    finally:
      if not args.keep_data:
        shutil.rmtree(folder, ignore_errors=True)
  return rows


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument('--data_file')
  p.add_argument('--scale_records', default='', help='e.g. 1000000,10000000: the scale table')
  p.add_argument('--scale_dir', default='/tmp/jaxift_scale')
  p.add_argument('--shard_counts', default='1,4')
  p.add_argument('--arrayrecord_files', type=int, default=4)
  p.add_argument('--scale_batching', default='packing')
  p.add_argument('--keep_data', action='store_true')
  p.add_argument('--tokenizer', required=True)
  p.add_argument('--max_seq_length', type=int, default=1024)
  p.add_argument('--batch_size', type=int, default=8)
  p.add_argument('--buckets', default='64,128,256,512')
  p.add_argument('--workers', default='0,2')
  p.add_argument('--seconds', type=float, default=10.0)
  p.add_argument('--throughput_batching', default='max_length,packing')
  args = p.parse_args()
  if args.scale_records:
    scale_table(args)
    return
  if not args.data_file:
    p.error('give --data_file (or --scale_records)')
  tokenizer = load_tokenizer(args.tokenizer)
  import grain, transformers  # pylint: disable=import-outside-toplevel,multiple-imports
  result = {'python': platform.python_version(), 'grain': grain.__version__,
            'transformers': transformers.__version__, 'machine': platform.machine(),
            'args': vars(args), 'padding': [], 'throughput': []}
  for batching in ('max_length', 'bucket', 'packing'):
    result['padding'].append(padding_share(args, tokenizer, batching))
    print(json.dumps(result['padding'][-1]), flush=True)
  for batching in args.throughput_batching.split(','):
    for workers in (int(w) for w in args.workers.split(',')):
      result['throughput'].append(throughput(args, tokenizer, batching, workers))
      print(json.dumps(result['throughput'][-1]), flush=True)
  print(json.dumps(result))


if __name__ == '__main__':
  main()
