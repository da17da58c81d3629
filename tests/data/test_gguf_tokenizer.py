"""gguf_tokenizer: the torch-free GGUF tokenizer against transformers' GGUF tokenizer (SmolLM2)."""
import json
import os
import pathlib
import subprocess
import sys
import textwrap
from unittest import mock

import pytest
from tokenizers import Tokenizer, pre_tokenizers

from jaxift.data import gguf_tokenizer
from jaxift.data import tokenizers as jaxift_tokenizers

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]

# None of these puts a run of whitespace right before a digit: there transformers and the tokenizer
# SmolLM2 was trained with disagree (see test_digits_split_like_the_smollm2_hub_tokenizer).
TEXTS = [
    'Hello, world! The quick brown fox jumps over the lazy dog.',
    "I'm sure they'll say it's fine, don't you think? We've SEEN it.",
    'def add(x, y):\n    return x + y  # sum\n\nprint(add(1,2))\n',
    'for (int i = 0; i < n; ++i) { total += a[i]; }',
    'Pi is 3.14159, a million is 1,000,000 and today is 2026-11-21 (x=12345).',
    'Café naïve résumé — Ångström; 你好，世界！ Россия; مرحبا',
    'Emoji: 😀👍🏽🇺🇸 and ❤️ and 🤗!',
    'multiple   internal    spaces\tand\ttabs\r\nand\n\n\nnewlines   ',
    '   leading spaces and trailing ones   ',
    '<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\nIt is 4.<|im_end|>\n',
    'text<|im_end|>glued<|im_start|>tokens<|endoftext|>',
]
# Whitespace runs before a digit: no field of the 1,100 Alpaca examples has one, but 79 examples do
# once their fields are joined with spaces (the second text is one).
DIGIT_TEXTS = ['  45', 'Convert 45 kilometers to meters.  45 kilometers is 45000 meters.',
               'a\n\n 7 and \t 12']
CONVERSATION = [
    {'role': 'system', 'content': 'You are terse.'},
    {'role': 'user', 'content': 'Name a prime number.'},
    {'role': 'assistant', 'content': '7'},
    {'role': 'user', 'content': 'And one above 10?  Say it in words 🙂'},
]
BLOCK_TORCH = "import sys; sys.modules['torch'] = None\n"  # what a machine without torch looks like


@pytest.fixture(scope='module')
def torchless_load(smollm2_gguf, tmp_path_factory):
  """Started first, to run beside the reference load: load_tokenizer with torch unimportable and an
  empty cache, twice (built by gguf_tokenizer, then the saved copy); prints what it got as JSON."""
  code = BLOCK_TORCH + textwrap.dedent(f"""
      import json
      from jaxift.data.tokenizers import load_tokenizer
      out = []
      for _ in range(2):
        tok = load_tokenizer({str(smollm2_gguf)!r})
        out.append(dict(ids=[tok.encode(t) for t in {TEXTS!r}],
                        special=[tok.bos_token_id, tok.eos_token_id, tok.pad_token_id,
                                 tok.unk_token_id],
                        torch_loaded=sys.modules.get('torch') is not None))
      print(json.dumps(out))
      """)
  cache = tmp_path_factory.mktemp('cache')
  env = dict(os.environ, JAXIFT_CACHE=str(cache), JAX_PLATFORMS='cpu')
  proc = subprocess.Popen([sys.executable, '-c', code], cwd=REPO_ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  yield proc, cache
  if proc.poll() is None:
    proc.kill()


@pytest.fixture(scope='module')
def reference(smollm2_gguf, torchless_load):
  """transformers' own GGUF tokenizer (imports torch)."""
  del torchless_load  # started before this slow load so that the two overlap
  import transformers
  return transformers.AutoTokenizer.from_pretrained(str(smollm2_gguf.parent),
                                                    gguf_file=smollm2_gguf.name)


@pytest.fixture(scope='module')
def torchless_result(torchless_load, reference):
  del reference  # loaded while the subprocess ran
  proc, _ = torchless_load
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-3000:]
  return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope='module')
def ours(smollm2_gguf, torchless_load, torchless_result):
  """Our SmolLM2 tokenizer as users get it after the first run: the copy the torch-free subprocess
  built and saved (its fresh build is checked in test_load_tokenizer_without_torch)."""
  del torchless_result  # the cache is complete
  _, cache = torchless_load
  assert len(list((cache / 'tokenizers').glob('*/tokenizer.json'))) == 1
  with mock.patch.dict(os.environ, JAXIFT_CACHE=str(cache)):
    tok = jaxift_tokenizers.load_tokenizer(str(smollm2_gguf))
  assert isinstance(tok.backend_tokenizer.pre_tokenizer, pre_tokenizers.Sequence)  # ours, not HF's
  return tok


def test_ids_and_decode_match_transformers(ours, reference):
  for text in TEXTS:
    ids = reference.encode(text)
    assert ours.encode(text) == ids, text
    assert ours.encode(text, add_special_tokens=False) == reference.encode(
        text, add_special_tokens=False), text
    assert ours.decode(ids) == reference.decode(ids) == text
    assert ours.decode(ids, skip_special_tokens=True) == reference.decode(
        ids, skip_special_tokens=True)
  assert ours.convert_ids_to_tokens(ours.encode(TEXTS[-1])) == [  # worked by hand
      'text', '<|im_end|>', 'g', 'lu', 'ed', '<|im_start|>', 'tokens', '<|endoftext|>']


def test_special_tokens_match_transformers(ours, reference):
  for name in ('bos', 'eos', 'pad', 'unk'):
    assert getattr(ours, f'{name}_token_id') == getattr(reference, f'{name}_token_id'), name
    assert getattr(ours, f'{name}_token') == getattr(reference, f'{name}_token'), name
  special_ids = [ours.bos_token_id, ours.eos_token_id, ours.pad_token_id, ours.unk_token_id]
  assert special_ids == [1, 2, 2, 0]
  assert ({i: (t.content, t.special) for i, t in ours.added_tokens_decoder.items()}
          == {i: (t.content, t.special) for i, t in reference.added_tokens_decoder.items()})
  assert len(ours) == len(reference) == 49152


@pytest.mark.parametrize('add_generation_prompt', [False, True])
def test_chat_template_matches_transformers(ours, reference, add_generation_prompt):
  for messages in (CONVERSATION, CONVERSATION[1:]):  # with a system turn and with the default one
    want = reference.apply_chat_template(messages, tokenize=False,
                                         add_generation_prompt=add_generation_prompt)
    got = ours.apply_chat_template(messages, tokenize=False,
                                   add_generation_prompt=add_generation_prompt)
    assert got == want
    assert got.endswith('<|im_start|>assistant\n') == add_generation_prompt
    assert ours(got, add_special_tokens=False).input_ids == reference(
        want, add_special_tokens=False).input_ids


def test_digits_split_like_the_smollm2_hub_tokenizer(ours, reference):
  """SmolLM2's tokenizer.json on the Hub pre-tokenizes with Digits(individual_digits) then
  ByteLevel; llama.cpp's 'smollm' does the same. transformers' GGUF reader drops the Digits step."""
  assert ours.convert_ids_to_tokens(ours.encode('  45')) == ['ĠĠ', '4', '5']  # worked by hand
  assert reference.convert_ids_to_tokens(reference.encode('  45')) == ['Ġ', 'Ġ', '4', '5']
  # The Hub pipeline rebuilt on transformers' vocabulary and merges agrees with ours everywhere.
  hub = Tokenizer.from_str(reference.backend_tokenizer.to_str())
  hub.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Digits(individual_digits=True),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
  for text in TEXTS + DIGIT_TEXTS:
    assert ours.encode(text) == hub.encode(text).ids, text


def test_load_tokenizer_without_torch(torchless_result, reference):
  built, cached = torchless_result
  want = [reference.encode(t) for t in TEXTS]
  for got in (built, cached):
    assert got['ids'] == want
    assert got['special'] == [1, 2, 2, 0]
    assert not got['torch_loaded']


def _fields(**over):
  fields = {'tokenizer.ggml.model': 'gpt2', 'tokenizer.ggml.pre': 'qwen2',
            'tokenizer.ggml.tokens': ['a', 'b', 'ab', 'Ġ', '<|x|>', '<y>'],
            'tokenizer.ggml.token_type': [1, 1, 1, 1, 3, 4], 'tokenizer.ggml.merges': ['a b'],
            'tokenizer.ggml.eos_token_id': 4, 'tokenizer.ggml.add_bos_token': False}
  fields.update(over)
  return fields


def test_small_vocabulary_control_and_user_tokens():
  tok = gguf_tokenizer.build_tokenizer(_fields(), pathlib.Path('tiny.gguf'))
  assert tok.encode('ab a<|x|>b<y>') == [2, 3, 0, 4, 1, 5]  # worked by hand
  assert tok.eos_token == '<|x|>' and tok.bos_token is None and tok.pad_token is None
  assert tok.decode([2, 4, 5], skip_special_tokens=True) == 'ab<y>'  # <y> is text, <|x|> special
  with_bos = gguf_tokenizer.build_tokenizer(
      _fields(**{'tokenizer.ggml.bos_token_id': 4, 'tokenizer.ggml.add_bos_token': True}),
      pathlib.Path('tiny.gguf'))
  assert with_bos.encode('ab') == [4, 2]


def test_split_regex_follows_pre():
  def pieces(pre, text):
    tok = gguf_tokenizer.build_tokenizer(_fields(**{'tokenizer.ggml.pre': pre}), pathlib.Path('t'))
    return [p for p, _ in tok.backend_tokenizer.pre_tokenizer.pre_tokenize_str(text)]
  assert pieces('llama-bpe', 'x 12345') == ['x', 'Ġ', '123', '45']  # \p{N}{1,3}
  assert pieces('qwen2', 'x 123') == ['x', 'Ġ', '1', '2', '3']  # \p{N}
  assert pieces('gpt2', 'x 123') == ['x', 'Ġ123']  # GPT-2: ' ?\p{N}+'
  assert pieces('smollm', 'x 123') == ['x', 'Ġ', '1', '2', '3']


def test_unsupported_and_bad_files_are_named():
  cases = [
      ({'tokenizer.ggml.model': 'llama'}, gguf_tokenizer.UnsupportedGgufTokenizer,
       r"m\.gguf: tokenizer\.ggml\.model = 'llama'"),
      ({'tokenizer.ggml.pre': 'exotic'}, gguf_tokenizer.UnsupportedGgufTokenizer,
       r"m\.gguf: tokenizer\.ggml\.pre = 'exotic'"),
      ({'tokenizer.ggml.merges': ['a b c']}, ValueError,
       r"m\.gguf: tokenizer\.ggml\.merges\[0\] = 'a b c'"),
      ({'tokenizer.ggml.eos_token_id': 9}, ValueError,
       r'm\.gguf: tokenizer\.ggml\.eos_token_id = 9 is outside'),
  ]
  for change, error, message in cases:
    with pytest.raises(error, match=message) as raised:
      gguf_tokenizer.build_tokenizer(_fields(**change), pathlib.Path('m.gguf'))
    assert type(raised.value) is error  # a broken file is not "unsupported": no fallback


def test_unsupported_file_falls_back_to_transformers(ours, tmp_path, monkeypatch):
  fake = tmp_path / 'sp.gguf'
  fake.write_bytes(b'GGUF')
  monkeypatch.setenv('JAXIFT_CACHE', str(tmp_path / 'cache'))

  def unsupported(path):
    raise gguf_tokenizer.UnsupportedGgufTokenizer(f'{path}: tokenizer.ggml.model = \'llama\'')
  calls = []

  def from_pretrained(*args, **kwargs):
    calls.append((args, kwargs))
    return ours
  monkeypatch.setattr(jaxift_tokenizers.gguf_tokenizer, 'load_gguf_tokenizer', unsupported)
  monkeypatch.setattr(jaxift_tokenizers.transformers.AutoTokenizer, 'from_pretrained',
                      from_pretrained)
  assert jaxift_tokenizers.load_tokenizer(str(fake)) is ours
  assert calls == [((str(tmp_path),), {'gguf_file': 'sp.gguf'})]
