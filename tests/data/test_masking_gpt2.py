"""Masking rules (DESIGN.md section 3) on hand-worked GPT-2 token sequences."""
import numpy as np
import pytest

from jaxift.data import tokenize
from jaxift.data.formats import RecordError

EOS = 50256
HI = 5303  # GPT-2 token of 'hi'
# 'Below is an instruction that describes a task. Write a response that appropriately completes
# the request.\n\n### Instruction:\nSay hi.\n\n### Response:\n' in GPT-2 tokens, worked out once:
ALPACA_SAY_HI_PROMPT = [
    21106, 318, 281, 12064, 326, 8477, 257, 4876, 13, 19430, 257, 2882, 326, 20431, 32543, 262,
    2581, 13, 198, 198, 21017, 46486, 25, 198, 25515, 23105, 13, 198, 198, 21017, 18261, 25, 198]


def test_alpaca_weights_only_response_and_eos(cfg, gpt2_tokenizer):
  ex = tokenize.tokenize_record({'instruction': 'Say hi.', 'input': '', 'output': 'hi'}, cfg,
                                gpt2_tokenizer)
  full = ALPACA_SAY_HI_PROMPT + [HI, EOS]
  assert ex['inputs'].tolist() == full[:-1]
  assert ex['targets'].tolist() == full[1:]
  # Targets are shifted: only 'hi' and the EOS after it are trained.
  assert ex['weights'].tolist() == [0.0] * (len(full) - 3) + [1.0, 1.0]
  assert ex['positions'].tolist() == list(range(len(full) - 1))
  assert ex['inputs'].dtype == np.int32 and ex['weights'].dtype == np.float32


def test_train_on_prompt_weights_every_target(cfg, gpt2_tokenizer):
  cfg.train_on_prompt = True
  ex = tokenize.tokenize_record({'instruction': 'Say hi.', 'input': '', 'output': 'hi'}, cfg,
                                gpt2_tokenizer)
  assert ex['weights'].tolist() == [1.0] * (len(ALPACA_SAY_HI_PROMPT) + 1)


def test_boundary_without_merge_matches_whole_text(cfg, gpt2_tokenizer):
  # The Alpaca prompt ends with '\n', which GPT-2 never merges with the next word: piecewise
  # tokens equal the tokens of the whole text.
  record = {'instruction': 'Name the capital of France.', 'input': '', 'output': 'Paris'}
  ex = tokenize.tokenize_record(record, cfg, gpt2_tokenizer)
  prompt = tokenize.prompt_tokens(record, cfg, gpt2_tokenizer)
  text = gpt2_tokenizer.decode(prompt) + 'Paris'
  whole = gpt2_tokenizer(text).input_ids + [EOS]
  assert ex['inputs'].tolist() + [EOS] == whole
  assert gpt2_tokenizer.decode(ex['targets'][ex['weights'] > 0]) == 'Paris<|endoftext|>'


def test_boundary_with_merge_is_exact_on_tokens(cfg, gpt2_tokenizer):
  # 'A: ' + 'Paris' tokenized as one text merges the space into ' Paris' (token 6342); the
  # pieces are tokenized apart so the prompt stays a token prefix and 'Paris' (40313) is trained.
  cfg.template = 'Q: {instruction}\nA: {response}'
  record = {'instruction': 'Capital of France?', 'input': '', 'output': 'Paris'}
  assert gpt2_tokenizer('A: Paris').input_ids == [32, 25, 6342]
  ex = tokenize.tokenize_record(record, cfg, gpt2_tokenizer)
  prompt = tokenize.prompt_tokens(record, cfg, gpt2_tokenizer)
  full = ex['inputs'].tolist() + [ex['targets'][-1]]
  assert full[:len(prompt)] == prompt
  assert prompt[-3:] == [32, 25, 220]  # 'A', ':', ' '
  assert full[len(prompt):] == [40313, EOS]
  assert ex['weights'].tolist() == [0.0] * (len(prompt) - 1) + [1.0, 1.0]


def test_one_end_target_when_pad_is_eos(cfg, gpt2_tokenizer):
  from jaxift.data import batching
  assert gpt2_tokenizer.pad_token_id == gpt2_tokenizer.eos_token_id == EOS
  ex = tokenize.tokenize_record({'instruction': 'Say hi.', 'input': '', 'output': 'hi'}, cfg,
                                gpt2_tokenizer)
  row = batching.pad_example(ex, 64, EOS)
  eos_targets = row['targets'] == EOS
  assert eos_targets.sum() > 1  # padding targets are EOS too ...
  assert (row['weights'][eos_targets] > 0).sum() == 1  # ... but only one EOS is trained
  assert row['segment_ids'].tolist() == [1] * len(ex['inputs']) + [0] * (64 - len(ex['inputs']))


def test_no_bos_for_gpt2_and_single_bos_when_tokenizer_adds_one(cfg, gpt2_tokenizer,
                                                                 gpt2_bos_tokenizer):
  record = {'instruction': 'Say hi.', 'input': '', 'output': 'hi'}
  plain = tokenize.tokenize_record(record, cfg, gpt2_tokenizer)
  assert plain['inputs'][0] == ALPACA_SAY_HI_PROMPT[0]  # GPT-2 adds no BOS
  with_bos = tokenize.tokenize_record(record, cfg, gpt2_bos_tokenizer)
  assert with_bos['inputs'].tolist() == [EOS] + plain['inputs'].tolist()
  # A chat template that writes BOS itself must not get a second one.
  gpt2_bos_tokenizer.chat_template = (
      "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}"
      "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}\n{% endfor %}"
      "{% if add_generation_prompt %}assistant: {% endif %}")
  cfg.template = 'tokenizer'
  chat = tokenize.tokenize_record(record, cfg, gpt2_bos_tokenizer)
  full = chat['inputs'].tolist() + [chat['targets'][-1]]
  assert full[0] == EOS and full[1] != EOS
  assert gpt2_bos_tokenizer.decode(chat['targets'][chat['weights'] > 0]) == 'hi<|endoftext|>'


def test_overlong_policies(cfg, gpt2_tokenizer):
  record = {'instruction': 'Say hi.', 'input': '', 'output': 'hi there friend'}
  full = tokenize.tokenize_record(record, cfg, gpt2_tokenizer)
  n = len(full['inputs'])  # 33 prompt tokens + 3 response tokens + EOS -> 36 shifted
  cfg.max_seq_length = n - 5
  cfg.overlong = 'drop'
  with pytest.raises(RecordError) as e:
    tokenize.tokenize_record(record, cfg, gpt2_tokenizer)
  assert e.value.reason == 'too_long'
  cfg.overlong = 'truncate_prompt'
  cut = tokenize.tokenize_record(record, cfg, gpt2_tokenizer)
  assert len(cut['inputs']) == n - 5
  assert cut['targets'].tolist() == full['targets'][5:].tolist()  # prompt cut from the left
  assert cut['weights'].sum() == full['weights'].sum() == 4
  cfg.overlong = 'truncate'
  cfg.max_seq_length = n - 2
  start = tokenize.tokenize_record(record, cfg, gpt2_tokenizer)
  assert start['inputs'].tolist() == full['inputs'][:n - 2].tolist()
  assert start['weights'].sum() == 2 and start['targets'][-1] != EOS  # keeps the start only
  cfg.max_seq_length = 20  # the start holds only prompt: nothing left to train on
  with pytest.raises(RecordError) as e:
    tokenize.tokenize_record(record, cfg, gpt2_tokenizer)
  assert e.value.reason == 'no_trainable_tokens'
  cfg.overlong = 'truncate_prompt'
  cfg.max_seq_length = 3  # the response alone does not fit
  with pytest.raises(RecordError) as e:
    tokenize.tokenize_record(record, cfg, gpt2_tokenizer)
  assert e.value.reason == 'too_long_response'


def test_all_zero_mask_is_an_error(cfg, gpt2_tokenizer):
  import copy
  tok = copy.deepcopy(gpt2_tokenizer)
  tok.chat_template = ("{% for m in messages %}{% if m['role'] == 'user' %}{{ m['content'] }}\n"
                       "{% endif %}{% endfor %}")  # drops assistant turns: nothing to train
  cfg.template = 'tokenizer'
  with pytest.raises(RecordError) as e:
    tokenize.tokenize_record({'instruction': 'Say hi.', 'input': '', 'output': 'hi'}, cfg, tok)
  assert e.value.reason == 'all_zero_mask'


def test_empty_response_is_counted_not_trained(cfg, gpt2_tokenizer):
  with pytest.raises(RecordError) as e:
    tokenize.tokenize_record({'instruction': 'Say hi.', 'input': '', 'output': '  '}, cfg,
                             gpt2_tokenizer)
  assert e.value.reason == 'empty_response'


def test_end_token_ids(cfg, gpt2_tokenizer):
  assert tokenize.end_token_ids(cfg, gpt2_tokenizer) == [EOS]
  cfg.template = 'chatml'  # <|im_end|> is not a GPT-2 token: the response ends with EOS
  assert tokenize.end_token_ids(cfg, gpt2_tokenizer) == [EOS]
