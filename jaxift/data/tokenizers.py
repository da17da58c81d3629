"""Tokenizers from local paths: a transformers directory, a GGUF file, or GPT-2 BPE files."""
import hashlib
import inspect
import json
import os
import pathlib
import shutil

from absl import logging
from etils import epath
import transformers

from jaxift import fileio
from jaxift.data import gguf_tokenizer

GPT2_SPECIAL = '<|endoftext|>'


def _cache_root() -> pathlib.Path:
  root = os.environ.get('JAXIFT_CACHE') or os.path.join(
      os.environ.get('XDG_CACHE_HOME', os.path.expanduser('~/.cache')), 'jaxift')
  return pathlib.Path(root) / 'tokenizers'


def _load_gguf(path: pathlib.Path) -> transformers.PreTrainedTokenizerBase:
  """Rebuilding a GGUF tokenizer takes seconds; keep a saved copy keyed by file identity.

  jaxift's own reader (no torch) builds byte-level BPE files; only for another tokenizer do we fall
  back to transformers' GGUF path, which imports torch."""
  stat = path.stat()
  key = hashlib.sha1(f'{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}:'
                     f'{transformers.__version__}:'
                     f'jaxift-gguf-{gguf_tokenizer.BUILDER_VERSION}'.encode()).hexdigest()[:16]
  cached = _cache_root() / f'{path.stem}-{key}'
  if (cached / 'tokenizer_config.json').exists():
    return transformers.AutoTokenizer.from_pretrained(str(cached))
  try:
    tok = gguf_tokenizer.load_gguf_tokenizer(path)
  except gguf_tokenizer.UnsupportedGgufTokenizer as e:
    logging.warning('%s; loading it through transformers instead (needs torch)', e)
    tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
  try:  # write beside, then rename: a concurrent reader never sees a half-written cache
    tmp = pathlib.Path(fileio.staging_dir(cached))
    tok.save_pretrained(str(tmp))
    try:
      os.rename(tmp, cached)
    except OSError:  # another process won the race
      shutil.rmtree(tmp, ignore_errors=True)
  except OSError:
    pass  # a read-only cache only costs speed
  return tok


def _load_gpt2_files(folder: pathlib.Path) -> transformers.PreTrainedTokenizerBase:
  vocab = folder / 'encoder.json' if (folder / 'encoder.json').exists() else folder / 'vocab.json'
  merges = folder / 'vocab.bpe' if (folder / 'vocab.bpe').exists() else folder / 'merges.txt'
  special = dict(unk_token=GPT2_SPECIAL, bos_token=GPT2_SPECIAL, eos_token=GPT2_SPECIAL)
  if 'vocab' in inspect.signature(transformers.GPT2TokenizerFast.__init__).parameters:
    # transformers>=5 builds the BPE from the vocab dict and merge pairs.
    with open(vocab, encoding='utf-8') as f:
      vocab_dict = json.load(f)
    with open(merges, encoding='utf-8') as f:
      lines = f.read().split('\n')
    merge_pairs = [tuple(l.split()) for l in lines if l.strip() and not l.startswith('#version')]
    tok = transformers.GPT2TokenizerFast(vocab=vocab_dict, merges=merge_pairs, **special)
  else:
    tok = transformers.GPT2TokenizerFast(vocab_file=str(vocab), merges_file=str(merges), **special)
  tok.pad_token = tok.eos_token  # GPT-2 has no pad token; padding is masked by weights anyway
  return tok


def load_tokenizer(path: str) -> transformers.PreTrainedTokenizerBase:
  """An HF tokenizer directory, a `.gguf` file, or a folder with GPT-2 `encoder.json`+`vocab.bpe`
  (or `vocab.json`+`merges.txt` without a tokenizer config)."""
  if not path:
    raise ValueError('tokenizer path is empty')
  p = epath.Path(path)
  if not p.exists():
    raise FileNotFoundError(f'tokenizer path {path} does not exist')
  local = pathlib.Path(str(p))
  if p.is_file():
    if p.name.endswith('.gguf'):
      return _load_gguf(local)
    raise ValueError(f'tokenizer path {path} is a file but not a .gguf; give a directory')
  names = {c.name for c in p.iterdir()}
  if 'tokenizer.json' in names or 'tokenizer_config.json' in names:
    tok = transformers.AutoTokenizer.from_pretrained(str(local))
  elif {'encoder.json', 'vocab.bpe'} <= names or {'vocab.json', 'merges.txt'} <= names:
    tok = _load_gpt2_files(local)
  else:
    ggufs = sorted(n for n in names if n.endswith('.gguf'))
    if len(ggufs) != 1:
      raise ValueError(f'{path}: expected tokenizer.json/tokenizer_config.json, encoder.json + '
                       'vocab.bpe, vocab.json + merges.txt, or one .gguf file; found '
                       f'{sorted(names)}')
    return _load_gguf(local / ggufs[0])
  if tok.pad_token is None and tok.eos_token is not None:
    tok.pad_token = tok.eos_token
  return tok
