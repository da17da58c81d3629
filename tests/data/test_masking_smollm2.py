"""Masking rules with the SmolLM2 tokenizer and its own ChatML chat_template (multi-turn)."""
import numpy as np

from jaxift.data import batching, tokenize

IM_START, IM_END = 1, 2  # SmolLM2's <|im_start|> (its BOS) and <|im_end|> (its EOS and pad)
MESSAGES = [
    {'role': 'system', 'content': 'Be brief.'},
    {'role': 'user', 'content': 'What is 2+2?'},
    {'role': 'assistant', 'content': 'Four.'},
    {'role': 'user', 'content': 'And 3+3?'},
    {'role': 'assistant', 'content': 'Six, of course.'},
]


def _chat_cfg(cfg):
  cfg.template = 'tokenizer'
  cfg.format = 'messages'
  return cfg


def test_tokens_equal_apply_chat_template(cfg, smollm2_tokenizer):
  ex = tokenize.tokenize_record({'messages': MESSAGES}, _chat_cfg(cfg), smollm2_tokenizer)
  reference = smollm2_tokenizer.apply_chat_template(MESSAGES, tokenize=True)
  reference = getattr(reference, 'input_ids', reference)
  if isinstance(reference, dict):
    reference = reference['input_ids']
  assert ex['inputs'].tolist() + [int(ex['targets'][-1])] == list(reference)


def test_every_assistant_turn_and_its_im_end_trained_nothing_else(cfg, smollm2_tokenizer):
  tok = smollm2_tokenizer
  ex = tokenize.tokenize_record({'messages': MESSAGES}, _chat_cfg(cfg), tok)
  trained = ex['targets'][ex['weights'] > 0].tolist()
  four = tok.encode('Four.', add_special_tokens=False)
  six = tok.encode('Six, of course.', add_special_tokens=False)
  assert trained == four + [IM_END] + six + [IM_END]
  # Exactly one <|im_end|> per assistant turn is trained, although every turn ends with one.
  im_end_targets = ex['targets'] == IM_END
  assert im_end_targets.sum() == 5  # system, user, assistant, user, assistant
  assert ex['weights'][im_end_targets].sum() == 2
  # The generation prompt '<|im_start|>assistant\n' and the '\n' after <|im_end|> are not trained.
  for j in np.flatnonzero(ex['weights']):
    assert ex['targets'][j] != IM_START


def test_prompt_tokens_end_with_generation_prompt(cfg, smollm2_tokenizer):
  tok = smollm2_tokenizer
  record = {'messages': MESSAGES}
  prompt = tokenize.prompt_tokens(record, _chat_cfg(cfg), tok)
  reference = tok.apply_chat_template(MESSAGES[:-1], tokenize=False, add_generation_prompt=True)
  assert prompt == tok.encode(reference, add_special_tokens=False)
  assert tokenize.end_token_ids(cfg, tok) == sorted({IM_END, tok.eos_token_id,
                                                     tok.convert_tokens_to_ids('<|endoftext|>')})


def test_pad_equals_eos_one_end_target_per_turn(cfg, smollm2_tokenizer):
  tok = smollm2_tokenizer
  assert tok.pad_token_id == tok.eos_token_id == IM_END
  ex = tokenize.tokenize_record({'messages': MESSAGES}, _chat_cfg(cfg), tok)
  row = batching.pad_example(ex, 128, tok.pad_token_id)
  assert (row['targets'] == IM_END).sum() > 5  # padding adds many more <|im_end|> targets
  assert ((row['targets'] == IM_END) & (row['weights'] > 0)).sum() == 2


def test_builtin_chatml_with_smollm2_tokens(cfg, smollm2_tokenizer):
  # Our 'chatml' template (no default system prompt) ends responses with the real <|im_end|>.
  tok = smollm2_tokenizer
  cfg.template = 'chatml'
  ex = tokenize.tokenize_record({'instruction': 'Say hi.', 'input': '', 'output': 'hi'}, cfg, tok)
  full = ex['inputs'].tolist() + [int(ex['targets'][-1])]
  text = '<|im_start|>user\nSay hi.<|im_end|>\n<|im_start|>assistant\nhi<|im_end|>\n'
  assert full == tok.encode(text, add_special_tokens=False)
  assert ex['targets'][ex['weights'] > 0].tolist() == tok.encode('hi', add_special_tokens=False) + [
      IM_END]
  assert full[0] == IM_START and full[1] != IM_START  # no BOS added in front of the template's
