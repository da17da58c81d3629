"""Offline preprocessing: instruction data -> tokenized, masked ArrayRecord + data_params.json.

Accepts the flags of Cerebras' fine-tuning preprocessing (--input_dir, --max_seq_length, --ftfy,
--sep_token, --prompt_key, --completion_key, --pack_sequences, --encoder_file/--vocab_file or
--huggingface_tokenizer) plus --tokenizer, --format, --template and --output_dir. The training
pipeline reads the output directly and lazily: data.train_files='OUT/*.arrayrecord'.
--num_shards=N writes N shards (contiguous record ranges, in file order), tokenized by worker
processes (--num_workers, 0 = one per shard up to the CPU count).

  python -m jaxift.tools.preprocess --input_dir=../shared/data --input_glob='instruction-data.json' \
      --tokenizer=../shared/data/gpt2 --max_seq_length=1024 --output_dir=/tmp/ift
"""
import json
import pathlib
import shutil

from absl import app
from absl import flags
import numpy as np

from jaxift import tools
from jaxift import fileio
from jaxift.data import shards, sources
from jaxift.data.config import default_data_config
from jaxift.data.stats import DropStats
from jaxift.data.tokenizers import load_tokenizer
from jaxift.tools import parse_flags

DATA_SUFFIXES = ('.json', '.jsonl', '.parquet', '.arrayrecord')


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
  f = dict(flag_values=fv)
  flags.DEFINE_string('input_dir', None, 'folder of .json/.jsonl/.parquet/.arrayrecord files', **f)
  flags.DEFINE_string('input_glob', '*', 'which files of --input_dir (default: all)', **f)
  flags.DEFINE_string('input_files', '', 'comma-separated files/globs instead', **f)
  flags.DEFINE_string('output_dir', None, 'output folder (written atomically)', **f)
  flags.DEFINE_bool('overwrite', False, 'replace an existing --output_dir', **f)
  flags.DEFINE_string('tokenizer', None, 'HF tokenizer dir, .gguf file, or GPT-2 encoder.json '
                      'folder', **f)
  flags.DEFINE_string('huggingface_tokenizer', None, 'Cerebras name for --tokenizer', **f)
  flags.DEFINE_string('tokenizer_type', '', 'Cerebras compatibility (ignored: the tokenizer kind '
                      'is detected from the files)', **f)
  flags.DEFINE_string('encoder_file', None, 'GPT-2 encoder.json (Cerebras style, with '
                      '--vocab_file)', **f)
  flags.DEFINE_string('vocab_file', None, 'GPT-2 vocab.bpe (Cerebras style, with --encoder_file)',
                      **f)
  flags.DEFINE_string('format', 'auto', 'record format (config.data.format)', **f)
  flags.DEFINE_string('template', 'alpaca', "name, format string, or 'a|b' mixture", **f)
  flags.DEFINE_string('prompt_key', 'prompt', 'prompt/completion format: the prompt field', **f)
  flags.DEFINE_string('completion_key', 'completion', 'the completion field', **f)
  flags.DEFINE_string('sep_token', '', 'text between prompt and completion', **f)
  flags.DEFINE_bool('ftfy', False, 'repair mojibake with ftfy', **f)
  flags.DEFINE_integer('max_seq_length', 2048, 'row length', **f)
  flags.DEFINE_enum('overlong', 'drop', ['drop', 'truncate_prompt', 'truncate'],
                    'what happens to over-long examples', **f)
  flags.DEFINE_bool('train_on_prompt', False, 'weight 1 on prompt tokens too', **f)
  flags.DEFINE_bool('pack_sequences', False, 'write packed rows of exactly max_seq_length '
                    '(segment_ids/positions) instead of one record per example', **f)
  flags.DEFINE_bool('skip_invalid', False, 'count and skip malformed records', **f)
  flags.DEFINE_integer('num_shards', 0, 'ArrayRecord shards to write', **f)
  flags.DEFINE_integer('num_output_files', 1, 'older name of --num_shards', **f)
  flags.DEFINE_integer('num_workers', 0, 'tokenizing processes (0 = one per shard up to the CPU '
                       'count, 1 = none)', **f)
  flags.mark_flag_as_required('output_dir', flag_values=fv)


def parse_args(argv) -> flags.FlagValues:
  """The tool's flags parsed from `argv` (for calling `preprocess` from Python)."""
  return parse_flags(define_flags, argv, 'preprocess')


def _tokenizer_path(args, tmp: pathlib.Path) -> str:
  path = args.tokenizer or args.huggingface_tokenizer
  if path:
    return path
  if args.encoder_file and args.vocab_file:  # Cerebras' GPT-2 flags: gather the two files
    folder = tmp / 'gpt2_tokenizer'
    folder.mkdir()
    shutil.copy(args.encoder_file, folder / 'encoder.json')
    shutil.copy(args.vocab_file, folder / 'vocab.bpe')
    return str(folder)
  raise SystemExit('give --tokenizer (or --huggingface_tokenizer, or --encoder_file and '
                   '--vocab_file)')


def _input_files(args) -> list[str]:
  if args.input_files:
    return sources.expand_files(args.input_files)
  if not args.input_dir:
    raise SystemExit('give --input_dir or --input_files')
  folder = pathlib.Path(args.input_dir)
  if not folder.is_dir():
    raise SystemExit(f'--input_dir {folder} is not a directory')
  files = sorted(str(f) for f in folder.glob(args.input_glob)
                 if f.is_file() and f.name.endswith(DATA_SUFFIXES))
  if not files:
    raise SystemExit(f'no {DATA_SUFFIXES} files match {args.input_glob!r} in {folder}')
  return files


def data_config(args, files: list[str]):
  cfg = default_data_config()
  cfg.train_files, cfg.split_fractions = files, (1.0, 0.0, 0.0)
  template = args.template.split('|') if '|' in args.template else args.template
  cfg.update(dict(format=args.format, template=template, prompt_key=args.prompt_key,
                  completion_key=args.completion_key, sep_token=args.sep_token, ftfy=args.ftfy,
                  max_seq_length=args.max_seq_length, overlong=args.overlong,
                  train_on_prompt=args.train_on_prompt, skip_invalid=args.skip_invalid,
                  shuffle=False))
  return cfg


def preprocess(args) -> dict:
  out = pathlib.Path(args.output_dir)
  if out.exists() and any(out.iterdir()) and not args.overwrite:
    raise SystemExit(f'--output_dir {out} exists and is not empty (use --overwrite)')
  # Everything is written into a sibling temp folder and renamed at the end: a failed or
  # interrupted run never leaves a half-written output directory.
  tmp = pathlib.Path(fileio.staging_dir(out))
  try:
    files = _input_files(args)
    tok_path = _tokenizer_path(args, tmp)
    tokenizer = load_tokenizer(tok_path)
    cfg = data_config(args, files)
    records, invalid = sources.load_split(cfg, 'train')
    results = shards.write_shards(cfg, tokenizer, tok_path, str(tmp), num_records=len(records),
                                  num_shards=args.num_shards or args.num_output_files,
                                  num_workers=args.num_workers, pack=args.pack_sequences)
    stats = DropStats()
    stats.update(invalid)
    for r in results:
      stats.update(r.counts)
    rows = sum(r.rows for r in results)
    if not rows:
      raise SystemExit(f'every example was dropped: {stats}')
    names = [r.name for r in results]
    total = sum(r.total_tokens for r in results)
    row_tokens = rows * args.max_seq_length  # packed rows, or examples padded to max_seq_length
    if args.encoder_file and not (args.tokenizer or args.huggingface_tokenizer):
      tok_path = f'{args.encoder_file} + {args.vocab_file}'
    params = {
        'input_files': files, 'tokenizer': tok_path, 'output_files': names,
        'examples_read': len(records) + sum(invalid.values()),
        'examples_written': stats.kept, 'rows_written': rows,
        'dropped': stats.dropped, 'total_tokens': total,
        'trainable_tokens': int(sum(r.trainable_tokens for r in results)),
        'non_padding_tokens': total,
        'padding_fraction': round(1.0 - total / row_tokens, 6),
        'length_histogram': shards.histogram(
            np.sum([r.length_counts for r in results], axis=0), args.max_seq_length),
        'packed': args.pack_sequences,
        'data_config': {k: v for k, v in cfg.to_dict().items() if k != 'synthetic'},
    }
    shutil.rmtree(tmp / 'gpt2_tokenizer', ignore_errors=True)
    fileio.write_text(tmp / 'data_params.json', json.dumps(params, indent=2, default=list))
    fileio.replace_dir(tmp, out)
    return params
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  try:
    params = preprocess(flags.FLAGS)
  except (ValueError, OSError) as e:  # RecordError included: one line naming file:line
    raise SystemExit(f'error: {e}') from None
  summary = {k: params[k] for k in ('examples_read', 'examples_written', 'rows_written', 'dropped',
                                    'total_tokens', 'trainable_tokens', 'padding_fraction')}
  print(json.dumps(summary, indent=2))


if __name__ == '__main__':
  define_flags()
  tools.run(main)
