"""Size of the elastic data state (issue 12) and restore time, for docs/benchmarks.md.

  python -m jaxift.tools.benchmark_elastic --tokenizer=../shared/data/gpt2 --records=1000000 \
      --processes=4 --resume_on=2 --steps=100

Writes a synthetic Alpaca JSONL of --records records (jaxift.data.scale), simulates --processes
training processes in this one (each its own iterator, stepped in lockstep, packing), saves their
states as Grain's checkpoint handler does, then measures: the bytes of each process's state; a
same-count restore (set_state, first batch); a resume on --resume_on processes (read the P files,
merge them into one stream, build the iterator, first batch) and the size of the merged stream.
"""
import json
import os
import platform
import tempfile
import time

from absl import app
from absl import flags

from jaxift.data import elastic, scale
from jaxift.data.config import default_data_config
from jaxift.data.tokenizers import load_tokenizer

_TOKENIZER = flags.DEFINE_string('tokenizer', None, 'tokenizer path', required=True)
_RECORDS = flags.DEFINE_integer('records', 1_000_000, 'synthetic records')
_PROCESSES = flags.DEFINE_integer('processes', 4, 'processes that save')
_RESUME_ON = flags.DEFINE_integer('resume_on', 2, 'processes that resume')
_STEPS = flags.DEFINE_integer('steps', 100, 'steps before the save')
_BATCH = flags.DEFINE_integer('global_batch', 32, 'rows per global batch')
_LENGTH = flags.DEFINE_integer('max_seq_length', 512, 'row length (packing)')
_DIR = flags.DEFINE_string('dir', '', "where the JSONL goes ('' = a temporary folder)")


def main(argv):
  del argv
  tok = load_tokenizer(_TOKENIZER.value)
  folder = _DIR.value or tempfile.mkdtemp()
  path = os.path.join(folder, f'alpaca_{_RECORDS.value}.jsonl')
  if not os.path.exists(path):
    scale.write_jsonl(path, _RECORDS.value)
  cfg = default_data_config()
  cfg.train_files, cfg.split_fractions = path, (1.0, 0.0, 0.0)
  cfg.batching, cfg.max_seq_length, cfg.precheck_records = 'packing', _LENGTH.value, 0
  count = _PROCESSES.value

  def iterators(n, stream=None):
    return [elastic.make_iterator(cfg, tok, batch_size=_BATCH.value // n, shard_index=p,
                                  shard_count=n, seed=0, stream=stream) for p in range(n)]

  its = iterators(count)
  for _ in range(_STEPS.value):
    for it in its:
      next(it)
  states = [it.get_state() for it in its]
  for it in its:
    it.close()
  ckpt = os.path.join(folder, 'data_iter')
  os.makedirs(ckpt, exist_ok=True)
  sizes = []
  for p, s in enumerate(states):
    text = json.dumps(s, indent=4)  # as grain.checkpoint.CheckpointHandler writes it
    with open(os.path.join(ckpt, f'process_{p}-of-{count}.json'), 'w') as f:
      f.write(text)
    sizes.append(len(text))

  t = time.perf_counter()
  it = iterators(count)[0]
  it.set_state(json.loads(open(os.path.join(ckpt, f'process_0-of-{count}.json')).read()))
  next(it)
  same = time.perf_counter() - t
  it.close()

  t = time.perf_counter()
  _, saved = elastic.read_states(ckpt)
  stream = elastic.resume_stream(saved)
  merge = time.perf_counter() - t
  it = iterators(_RESUME_ON.value, stream)[0]
  next(it)
  other = time.perf_counter() - t
  it.close()
  cursors = [s['elastic']['process_index'] + count * s['elastic']['cursor'] for s in states]
  print(json.dumps({
      'machine': f'{platform.machine()}, {os.cpu_count()} cores', 'records': _RECORDS.value,
      'processes': count, 'resume_on': _RESUME_ON.value, 'steps': _STEPS.value,
      'global_batch': _BATCH.value, 'max_seq_length': _LENGTH.value,
      'state_bytes_per_process': sizes,
      'in_flight_per_process': [len(s['elastic']['in_flight']) for s in states],
      'skew_positions': max(cursors) - min(cursors),
      'merged_stream_indices': len(stream.explicit),
      'merged_stream_json_bytes': len(json.dumps(stream.to_json())),
      'same_count_restore_s': round(same, 3), 'merge_s': round(merge, 4),
      'other_count_restore_s': round(other, 3)}, indent=1))


if __name__ == '__main__':
  app.run(main)
