"""load_tokenizer: GPT-2 BPE files, an HF directory, a GGUF file (with its cache), bad paths."""
import shutil

import pytest

from jaxift.data.tokenizers import load_tokenizer

HELLO = [31373, 995, 50256]  # GPT-2 ids of 'hello', ' world', '<|endoftext|>'


def test_gpt2_files_both_namings_and_hf_dir(shared_data, tmp_path):
  tok = load_tokenizer(str(shared_data / 'gpt2'))
  assert tok('hello world<|endoftext|>').input_ids == HELLO
  assert tok.eos_token_id == tok.pad_token_id == 50256 and len(tok) == 50257
  other = tmp_path / 'renamed'
  other.mkdir()
  shutil.copy(shared_data / 'gpt2' / 'encoder.json', other / 'vocab.json')
  shutil.copy(shared_data / 'gpt2' / 'vocab.bpe', other / 'merges.txt')
  assert load_tokenizer(str(other))('hello world<|endoftext|>').input_ids == HELLO
  tok.save_pretrained(str(tmp_path / 'hf'))
  assert load_tokenizer(str(tmp_path / 'hf'))('hello world<|endoftext|>').input_ids == HELLO


def test_gguf_is_cached_and_identical(smollm2_gguf, smollm2_tokenizer, tmp_path, monkeypatch):
  monkeypatch.setenv('JAXIFT_CACHE', str(tmp_path))
  first = load_tokenizer(str(smollm2_gguf))
  cached = list((tmp_path / 'tokenizers').glob('*/tokenizer_config.json'))
  assert len(cached) == 1
  second = load_tokenizer(str(smollm2_gguf))  # from the saved copy
  text = '<|im_start|>user\nHello, world!<|im_end|>\n'
  assert first.encode(text) == second.encode(text) == smollm2_tokenizer.encode(text)
  assert second.encode(text, add_special_tokens=False)[:1] == [1]  # <|im_start|> is one token
  assert second.chat_template == first.chat_template and second.eos_token == '<|im_end|>'


def test_bad_paths_are_named(tmp_path):
  with pytest.raises(FileNotFoundError, match='nowhere does not exist'):
    load_tokenizer(str(tmp_path / 'nowhere'))
  (tmp_path / 'empty').mkdir()
  with pytest.raises(ValueError, match='expected tokenizer.json'):
    load_tokenizer(str(tmp_path / 'empty'))
  (tmp_path / 'x.bin').write_bytes(b'0')
  with pytest.raises(ValueError, match='not a .gguf'):
    load_tokenizer(str(tmp_path / 'x.bin'))
