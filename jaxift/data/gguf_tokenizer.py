"""A byte-level BPE tokenizer rebuilt from a GGUF file's metadata, without PyTorch.

transformers can read a GGUF tokenizer too, but its GGUF reader imports torch; jaxift needs torch
only for its parity tests. We read the tokenizer keys with the `gguf` package and build the same
`tokenizers.Tokenizer` transformers would (BPE, byte-level pre-tokenizer and decoder, the file's
control tokens as special tokens), with the split regex llama.cpp uses for `tokenizer.ggml.pre`.

Only `tokenizer.ggml.model == "gpt2"` (byte-level BPE: GPT-2, SmolLM, Llama 3, Qwen 2, ...) is built
here; anything else raises `UnsupportedGgufTokenizer` so the caller can fall back to transformers.
"""
import pathlib
from typing import Any

import gguf
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
import transformers

# Bump when the tokenizer this module builds changes, so on-disk caches built by older code are
# not reused.
BUILDER_VERSION = 1

_TOKENIZER_KEYS = (
    'tokenizer.ggml.model', 'tokenizer.ggml.pre', 'tokenizer.ggml.tokens',
    'tokenizer.ggml.token_type', 'tokenizer.ggml.merges', 'tokenizer.ggml.bos_token_id',
    'tokenizer.ggml.eos_token_id', 'tokenizer.ggml.unknown_token_id',
    'tokenizer.ggml.padding_token_id', 'tokenizer.ggml.add_bos_token',
    'tokenizer.ggml.add_eos_token', 'tokenizer.chat_template')

# llama.cpp's token types (llama_token_type): 3 is CONTROL (<|im_end|>), 4 USER_DEFINED (<think>).
_CONTROL, _USER_DEFINED = 3, 4

# The split regexes per `tokenizer.ggml.pre`, as llama.cpp (llama-vocab.cpp) and transformers
# (integrations/gguf/gguf_tokenizer_mapping.py, the Llama 3 and Qwen 2 tokenizers) use them.
# None: GPT-2's own regex, which `pre_tokenizers.ByteLevel(use_regex=True)` applies.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_GPT2 = 'gpt2'            # GPT-2's regex alone
# Each digit alone first, then GPT-2's regex: llama.cpp splits on `\p{N}`; the Hub tokenizer.json of
# SmolLM2 and StarCoder says `Digits(individual_digits=True)`, which we use. transformers' own GGUF
# reader does not know 'smollm' and drops the digit split, so "  45" becomes 'Ġ','Ġ','4','5' there
# but 'ĠĠ','4','5' in the tokenizer SmolLM2 was trained with (and here).
_DIGITS_GPT2 = 'digits'
_PRE_SPLITS: dict[str, str] = {
    'gpt2': _GPT2, 'mpt': _GPT2, 'olmo': _GPT2,
    'smollm': _DIGITS_GPT2, 'starcoder': _DIGITS_GPT2, 'refact': _DIGITS_GPT2,
    'codeshell': _DIGITS_GPT2,
    'llama-bpe': _LLAMA3_SPLIT, 'llama3': _LLAMA3_SPLIT, 'llama-v3': _LLAMA3_SPLIT,
    'falcon3': _LLAMA3_SPLIT, 'smaug-bpe': _LLAMA3_SPLIT, 'dbrx': _LLAMA3_SPLIT,
    'qwen2': _QWEN2_SPLIT, 'deepseek-r1-qwen': _QWEN2_SPLIT, 'stablelm2': _QWEN2_SPLIT,
}
SUPPORTED_PRE = tuple(sorted(_PRE_SPLITS))


class UnsupportedGgufTokenizer(ValueError):
  """The file describes a tokenizer this module does not build (transformers may, with torch)."""


def _byte_alphabet() -> dict[int, str]:
  """GPT-2's byte -> printable character map: the alphabet byte-level BPE vocabularies use."""
  printable = (list(range(ord('!'), ord('~') + 1)) + list(range(ord('¡'), ord('¬') + 1))
               + list(range(ord('®'), ord('ÿ') + 1)))
  chars = printable[:]
  extra = 0
  for b in range(256):
    if b not in printable:
      printable.append(b)
      chars.append(256 + extra)
      extra += 1
  return dict(zip(printable, map(chr, chars)))


def read_gguf_tokenizer_fields(path: pathlib.Path) -> dict[str, Any]:
  """The tokenizer keys present in the file, as Python values (no tensor data is read)."""
  reader = gguf.GGUFReader(str(path))
  return {key: reader.fields[key].contents() for key in _TOKENIZER_KEYS if key in reader.fields}


def _pre_tokenizer(pre: str):
  split = _PRE_SPLITS[pre]
  if split == _GPT2:
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  if split == _DIGITS_GPT2:
    return pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
  return pre_tokenizers.Sequence([
      pre_tokenizers.Split(Regex(split), behavior='isolated'),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


def _token_at(fields: dict[str, Any], key: str, tokens: list[str],
              path: pathlib.Path) -> str | None:
  token_id = fields.get(f'tokenizer.ggml.{key}')
  if token_id is None:
    return None
  if not 0 <= token_id < len(tokens):
    raise ValueError(f'{path}: tokenizer.ggml.{key} = {token_id} is outside the vocabulary '
                     f'of {len(tokens)} tokens')
  return tokens[token_id]


def build_tokenizer(fields: dict[str, Any],
                    path: pathlib.Path) -> transformers.PreTrainedTokenizerFast:
  """A fast tokenizer from the fields `read_gguf_tokenizer_fields` returns (`path` names errors)."""
  model = fields.get('tokenizer.ggml.model')
  if model != 'gpt2':
    raise UnsupportedGgufTokenizer(
        f'{path}: tokenizer.ggml.model = {model!r}; jaxift builds only "gpt2" (byte-level BPE)')
  pre = fields.get('tokenizer.ggml.pre', 'gpt2')
  if pre not in _PRE_SPLITS:
    raise UnsupportedGgufTokenizer(
        f'{path}: tokenizer.ggml.pre = {pre!r} is not one of the pre-tokenizers jaxift builds '
        f'({", ".join(SUPPORTED_PRE)})')
  for key in ('tokenizer.ggml.tokens', 'tokenizer.ggml.merges'):
    if key not in fields:
      raise ValueError(f'{path}: no {key} in the GGUF metadata; byte-level BPE needs it')
  tokens: list[str] = fields['tokenizer.ggml.tokens']
  token_types: list[int] = fields.get('tokenizer.ggml.token_type') or []
  if token_types and len(token_types) != len(tokens):
    raise ValueError(f'{path}: tokenizer.ggml.token_type has {len(token_types)} entries for '
                     f'{len(tokens)} tokens')

  # A token written outside the byte alphabet (rare, llama.cpp conversions) is respelled in it,
  # as transformers does, so the merges that spell it find it.
  spelling = _byte_alphabet()
  alphabet = set(spelling.values())
  vocab = {}
  for index, token in enumerate(tokens):
    spelled = token if set(token) <= alphabet else ''.join(spelling[b] for b in token.encode())
    vocab[spelled] = index  # a later duplicate wins, as in transformers
  merges = []
  for index, merge in enumerate(fields['tokenizer.ggml.merges']):
    pair = merge.split(' ')
    if len(pair) != 2:
      raise ValueError(f'{path}: tokenizer.ggml.merges[{index}] = {merge!r} is not two tokens '
                       'separated by one space')
    merges.append(tuple(pair))

  backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, dropout=None,
                                 continuing_subword_prefix='', end_of_word_suffix='',
                                 fuse_unk=False, byte_fallback=False))
  backend.pre_tokenizer = _pre_tokenizer(pre)
  backend.decoder = decoders.ByteLevel()
  # Control tokens stay whole and are special (skipped by decode(skip_special_tokens=True)). A
  # control token outside the byte alphabet is a llama.cpp mislabel that would grow the vocabulary:
  # skipped, like transformers does. User-defined tokens stay whole but are ordinary text
  # (transformers' and llama.cpp's reading).
  control = [AddedToken(t, normalized=False, special=True)
             for t, kind in zip(tokens, token_types) if kind == _CONTROL and set(t) <= alphabet]
  backend.add_special_tokens(control)
  user_defined = [AddedToken(t, normalized=False, special=False)
                  for t, kind in zip(tokens, token_types) if kind == _USER_DEFINED and t in vocab]
  backend.add_tokens(user_defined)

  return transformers.PreTrainedTokenizerFast(
      tokenizer_object=backend,
      bos_token=_token_at(fields, 'bos_token_id', tokens, path),
      eos_token=_token_at(fields, 'eos_token_id', tokens, path),
      unk_token=_token_at(fields, 'unknown_token_id', tokens, path),
      pad_token=_token_at(fields, 'padding_token_id', tokens, path),
      # Explicit flags make transformers write the post-processor that adds BOS/EOS (or not).
      add_bos_token=bool(fields.get('tokenizer.ggml.add_bos_token', False)),
      add_eos_token=bool(fields.get('tokenizer.ggml.add_eos_token', False)),
      chat_template=fields.get('tokenizer.chat_template'),
      clean_up_tokenization_spaces=False)


def load_gguf_tokenizer(path: str | pathlib.Path) -> transformers.PreTrainedTokenizerFast:
  """The tokenizer a `.gguf` file describes; `UnsupportedGgufTokenizer` if not byte-level BPE."""
  path = pathlib.Path(path)
  return build_tokenizer(read_gguf_tokenizer_fields(path), path)
