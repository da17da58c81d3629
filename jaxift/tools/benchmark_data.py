"""Measures the data pipeline: non-padding share per batching mode and throughput (examples/s).

  python -m jaxift.tools.benchmark_data --data_file=../shared/data/instruction-data.json \
      --tokenizer=../shared/data/gpt2 --max_seq_length=1024 --batch_size=8 --workers=0,2

Non-padding share: one shuffled pass over the whole file (num_epochs=1; the last partial batch is
filled with empty rows, as in evaluation). Throughput: a repeating training iterator, examples per
second after the first batch (tokenize + mask + pad/pack + batch), for each worker count.

--scale_records=1000000,10000000: the data-at-scale table instead (jaxift.data.scale): a synthetic
Alpaca JSONL of N records and the same records in ArrayRecord shards under --scale_dir (deleted
afterwards unless --keep_data); index build time; per process (shard 0 of each --shard_counts),
in a fresh process each: time to the first batch, peak RSS, examples/s.
"""
import json
import os
import platform
import shutil
import time

from absl import app
from absl import flags
import grain
import transformers

from jaxift import tools
from jaxift.data import pipeline, scale
from jaxift.data.config import default_data_config
from jaxift.data.tokenizers import load_tokenizer
from jaxift.tools import parse_flags


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
  f = dict(flag_values=fv)
  flags.DEFINE_string('data_file', None, 'Alpaca JSON/JSONL for the padding and throughput table',
                      **f)
  flags.DEFINE_string('scale_records', '', 'e.g. 1000000,10000000: the scale table instead', **f)
  flags.DEFINE_string('scale_dir', '/tmp/jaxift_scale', 'where the scale data is written', **f)
  flags.DEFINE_string('shard_counts', '1,4', 'scale table: process counts (shard 0 measured)', **f)
  flags.DEFINE_integer('arrayrecord_files', 4, 'scale table: ArrayRecord shards', **f)
  flags.DEFINE_string('scale_batching', 'packing', 'scale table: batching mode', **f)
  flags.DEFINE_bool('keep_data', False, 'keep the scale data afterwards', **f)
  flags.DEFINE_string('tokenizer', None, 'tokenizer path', **f)
  flags.DEFINE_integer('max_seq_length', 1024, 'row length', **f)
  flags.DEFINE_integer('batch_size', 8, 'rows per batch', **f)
  flags.DEFINE_string('buckets', '64,128,256,512', 'bucket lengths', **f)
  flags.DEFINE_string('workers', '0,2', 'Grain worker counts for the throughput rows', **f)
  flags.DEFINE_float('seconds', 10.0, 'seconds per throughput measurement', **f)
  flags.DEFINE_string('throughput_batching', 'max_length,packing', 'batching modes measured', **f)
  flags.mark_flag_as_required('tokenizer', flag_values=fv)


def parse_args(argv) -> flags.FlagValues:
  """The tool's flags parsed from `argv` (for calling its measurements from Python)."""
  return parse_flags(define_flags, argv, 'benchmark_data')


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


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  args = flags.FLAGS
  if args.scale_records:
    scale_table(args)
    return
  if not args.data_file:
    raise app.UsageError('give --data_file (or --scale_records)')
  tokenizer = load_tokenizer(args.tokenizer)
  result = {'python': platform.python_version(), 'grain': grain.__version__,
            'transformers': transformers.__version__, 'machine': platform.machine(),
            'args': args.flag_values_dict(), 'padding': [], 'throughput': []}
  for batching in ('max_length', 'bucket', 'packing'):
    result['padding'].append(padding_share(args, tokenizer, batching))
    print(json.dumps(result['padding'][-1]), flush=True)
  for batching in args.throughput_batching.split(','):
    for workers in (int(w) for w in args.workers.split(',')):
      result['throughput'].append(throughput(args, tokenizer, batching, workers))
      print(json.dumps(result['throughput'][-1]), flush=True)
  print(json.dumps(result, default=str))


if __name__ == '__main__':
  define_flags()
  tools.run(main)
