"""Fixtures of the data tests: configs and small tokenizers built from the shared GPT-2 files."""
import copy

import pytest

from jaxift.data.config import default_data_config


@pytest.fixture
def cfg():
  """A fresh default data config (tests change it freely)."""
  return default_data_config()


@pytest.fixture(scope='session')
def gpt2_bos_tokenizer(gpt2_tokenizer):
  """GPT-2 BPE whose encoder prepends BOS (<|endoftext|>) like Llama's: for the BOS rule."""
  from tokenizers import processors
  tok = copy.deepcopy(gpt2_tokenizer)
  bos = tok.bos_token
  tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
      single=f'{bos} $A', pair=f'{bos} $A $B', special_tokens=[(bos, tok.bos_token_id)])
  assert tok('hi').input_ids == [tok.bos_token_id, 5303]
  return tok
