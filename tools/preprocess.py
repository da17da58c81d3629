"""Offline preprocessing: instruction data -> tokenized, masked ArrayRecord + data_params.json.

Accepts the flags of Cerebras' fine-tuning preprocessing (--input_dir, --max_seq_length, --ftfy,
--sep_token, --prompt_key, --completion_key, --pack_sequences, --encoder_file/--vocab_file or
--huggingface_tokenizer) plus --tokenizer, --format, --template and --output_dir. The training
pipeline reads the output directly and lazily: data.train_files='OUT/*.arrayrecord'.
--num_shards=N writes N shards (contiguous record ranges, in file order), tokenized by worker
processes (--num_workers, 0 = one per shard up to the CPU count).

  python tools/preprocess.py --input_dir=../shared/data --input_glob='instruction-data.json' \
      --tokenizer=../shared/data/gpt2 --max_seq_length=1024 --output_dir=/tmp/ift
"""
import argparse
import json
import os
import pathlib
import shutil
import sys
import tempfile

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from jaxift.data import shards, sources  # noqa: E402
from jaxift.data.config import default_data_config  # noqa: E402
from jaxift.data.stats import DropStats  # noqa: E402
from jaxift.data.tokenizers import load_tokenizer  # noqa: E402

DATA_SUFFIXES = ('.json', '.jsonl', '.parquet', '.arrayrecord')


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument('--input_dir', help='folder of .json/.jsonl/.parquet/.arrayrecord files')
  p.add_argument('--input_glob', default='*', help='which files of --input_dir (default: all)')
  p.add_argument('--input_files', default='', help='comma-separated files/globs instead')
  p.add_argument('--output_dir', required=True)
  p.add_argument('--overwrite', action='store_true', help='replace an existing --output_dir')
  p.add_argument('--tokenizer', help='HF tokenizer dir, .gguf file, or GPT-2 encoder.json folder')
  p.add_argument('--huggingface_tokenizer', help='Cerebras name for --tokenizer')
  p.add_argument('--tokenizer_type', default='', help='Cerebras compatibility (ignored: the '
                 'tokenizer kind is detected from the files)')
  p.add_argument('--encoder_file', help='GPT-2 encoder.json (Cerebras style, with --vocab_file)')
  p.add_argument('--vocab_file', help='GPT-2 vocab.bpe (Cerebras style, with --encoder_file)')
  p.add_argument('--format', default='auto')
  p.add_argument('--template', default='alpaca', help="name, format string, or 'a|b' mixture")
  p.add_argument('--prompt_key', default='prompt')
  p.add_argument('--completion_key', default='completion')
  p.add_argument('--sep_token', default='')
  p.add_argument('--ftfy', action='store_true')
  p.add_argument('--max_seq_length', type=int, default=2048)
  p.add_argument('--overlong', default='drop', choices=('drop', 'truncate_prompt', 'truncate'))
  p.add_argument('--train_on_prompt', action='store_true')
  p.add_argument('--pack_sequences', action='store_true', help='write packed rows of exactly '
                 'max_seq_length (segment_ids/positions) instead of one record per example')
  p.add_argument('--skip_invalid', action='store_true')
  p.add_argument('--num_shards', type=int, default=0, help='ArrayRecord shards to write')
  p.add_argument('--num_output_files', type=int, default=1, help='older name of --num_shards')
  p.add_argument('--num_workers', type=int, default=0,
                 help='tokenizing processes (0 = one per shard up to the CPU count, 1 = none)')
  return p.parse_args(argv)


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
  out.parent.mkdir(parents=True, exist_ok=True)
  # Everything is written into a sibling temp folder and renamed at the end: a failed or
  # interrupted run never leaves a half-written output directory.
  tmp = pathlib.Path(tempfile.mkdtemp(dir=out.parent, prefix=f'.{out.name}.tmp-'))
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
    (tmp / 'data_params.json').write_text(json.dumps(params, indent=2, default=list))
    tmp.chmod(0o755)  # mkdtemp makes it private
    if out.exists():
      old = out.parent / f'.{out.name}.old-{os.getpid()}'
      out.rename(old)
      tmp.rename(out)
      shutil.rmtree(old)
    else:
      tmp.rename(out)
    return params
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def main(argv=None) -> None:
  params = preprocess(parse_args(argv))
  summary = {k: params[k] for k in ('examples_read', 'examples_written', 'rows_written', 'dropped',
                                    'total_tokens', 'trainable_tokens', 'padding_fraction')}
  print(json.dumps(summary, indent=2))


if __name__ == '__main__':
  main()
