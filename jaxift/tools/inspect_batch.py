"""Shows what the model is trained on: decoded examples of real batches with the trained tokens
highlighted (green in a terminal; --html FILE for a browser) and each batch's padding efficiency.

  python -m jaxift.tools.inspect_batch --tokenizer=../shared/data/gpt2 \
      --data.train_files=../shared/data/instruction-data.json --data.batching=packing \
      --batch_size=4 --num_batches=2 --html=/tmp/batch.html
  python -m jaxift.tools.inspect_batch --tokenizer=PATH.gguf --data.source=synthetic \
      --data.template=tokenizer
  python -m jaxift.tools.inspect_batch --config=configs/quickstart.py  # its data config and tokenizer
  python -m jaxift.tools.inspect_batch --config=... --check  # mask audit (jaxift/data/audit.py); exit 1
                                                      # on any violation
"""
import html
import sys

from absl import app
from absl import flags
from ml_collections import config_flags
import numpy as np

from jaxift import tools
from jaxift import fileio
from jaxift.data import audit, pipeline
from jaxift.data.config import default_data_config
from jaxift.data.tokenizers import load_tokenizer

def define_flags() -> None:
  """The command-line flags; defined only when run as a program, so that importing this module
  (tests, other tools) never clashes with flags of the same names elsewhere."""
  config_flags.DEFINE_config_dict('data', default_data_config(), lock_config=True)
  config_flags.DEFINE_config_file(
      'config', None, 'an experiment config: its config.data (override with --config.data.x=...) '
      'and its tokenizer (config.tokenizer.path, else config.model.path) replace --data.*')
  flags.DEFINE_string('tokenizer', None, 'HF dir, .gguf, or GPT-2 files folder')
  flags.DEFINE_enum('split', 'train', ['train', 'validation', 'test'], 'which split')
  flags.DEFINE_integer('batch_size', 4, 'rows per batch')
  flags.DEFINE_integer('num_batches', 1, 'how many batches to show')
  flags.DEFINE_string('html', None, 'also write an HTML page here')
  flags.DEFINE_bool('check', False, 'audit the masks of every example of the split '
                              'instead of showing batches; exits 1 on any violation')
  flags.DEFINE_bool('color', None, 'ANSI colours (default: when stdout is a terminal)')


FLAGS = flags.FLAGS


GREEN, DIM, RESET = '\x1b[1;32m', '\x1b[2m', '\x1b[0m'


def segments(batch: dict, row: int):
  """(token ids, trained flags) of each example in a row: the example's tokens are its inputs plus
  its last target; token k is trained when target k-1 has weight > 0."""
  seg = batch['segment_ids'][row]
  for s in range(1, int(seg.max()) + 1):
    idx = np.flatnonzero(seg == s)
    ids = batch['inputs'][row, idx].tolist() + [int(batch['targets'][row, idx[-1]])]
    trained = [False] + (batch['weights'][row, idx] > 0).tolist()
    yield ids, trained


def efficiency(batch: dict) -> tuple[float, float]:
  """(non-padding share, trained share) of the batch's token slots."""
  size = batch['segment_ids'].size
  return float((batch['segment_ids'] > 0).sum() / size), float((batch['weights'] > 0).sum() / size)


def render_text(tokenizer, ids, trained, color: bool) -> str:
  out = []
  for tok_id, t in zip(ids, trained):
    piece = tokenizer.decode([tok_id])
    if color:
      out.append((GREEN if t else DIM) + piece + RESET)
    else:
      out.append(f'[{piece}]' if t else piece)
  return ''.join(out)


def render_html(tokenizer, ids, trained) -> str:
  spans = []
  for tok_id, t in zip(ids, trained):
    piece = html.escape(tokenizer.decode([tok_id]))
    spans.append(f'<span class="{"trained" if t else "context"}">{piece}</span>')
  return ''.join(spans)


HTML_HEAD = ('<!doctype html><meta charset="utf-8"><title>jaxift batch</title><style>'
             'body{font-family:sans-serif} pre{white-space:pre-wrap;border:1px solid #ccc;'
             'padding:6px} .trained{background:#bdf5bd} .context{color:#777}</style>'
             '<p>Green: trained tokens (weight 1). Grey: context (weight 0).</p>')


def inspect(data_config, tokenizer, *, split: str, batch_size: int, num_batches: int,
            color: bool, html_path: str | None = None) -> str:
  it = pipeline.make_iterator(data_config, tokenizer, split=split, batch_size=batch_size,
                              shard_index=0, shard_count=1, seed=0, num_epochs=1)
  lines, page = [], [HTML_HEAD]
  for b, batch in zip(range(num_batches), it):
    nonpad, trained = efficiency(batch)
    head = (f'batch {b}: shape {batch["inputs"].shape}, non-padding {nonpad:.1%}, '
            f'trained {trained:.1%}')
    lines.append('=' * 8 + ' ' + head)
    page.append(f'<h3>{html.escape(head)}</h3>')
    for row in range(batch['inputs'].shape[0]):
      for s, (ids, flags_) in enumerate(segments(batch, row), 1):
        lines.append(f'--- row {row} segment {s} ({len(ids)} tokens, {sum(flags_)} trained)')
        lines.append(render_text(tokenizer, ids, flags_, color))
        page.append(f'<p>row {row} segment {s}</p><pre>{render_html(tokenizer, ids, flags_)}</pre>')
  lines.append(f'drops: {it.stats}')
  if html_path:
    fileio.write_text(html_path, '\n'.join(page))
  return '\n'.join(lines)


def main(argv) -> None:
  del argv
  data, tokenizer_path = FLAGS.data, FLAGS.tokenizer
  if FLAGS.config is not None:
    config = FLAGS.config
    data = config.data
    tokenizer_path = tokenizer_path or config.tokenizer.path or config.model.path
  if not tokenizer_path:
    raise app.UsageError('give --tokenizer (or --config with a tokenizer or model path)')
  tokenizer = load_tokenizer(tokenizer_path)
  if FLAGS.check:
    report = audit.run_audit(data, tokenizer, split=FLAGS.split)
    print(report.table())
    sys.exit(0 if report.ok else 1)
  color = sys.stdout.isatty() if FLAGS.color is None else FLAGS.color
  print(inspect(data, tokenizer, split=FLAGS.split, batch_size=FLAGS.batch_size,
                num_batches=FLAGS.num_batches, color=color, html_path=FLAGS.html))


if __name__ == '__main__':
  define_flags()
  tools.run(main)
