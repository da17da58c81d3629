"""Record formats -> conversations, and the built-in/user/mixed templates, rendered to text."""
import pytest

from jaxift.data import formats, templates, tokenize
from jaxift.data.formats import RecordError


def _text(pieces):
  return ''.join(p.text for p in pieces if p.end is None)


def test_alpaca_wording_with_and_without_input(cfg):
  no_input = formats.to_conversation({'instruction': 'Do X.', 'input': '', 'output': 'ok'}, cfg)
  assert _text(templates.render('alpaca', no_input)) == (
      'Below is an instruction that describes a task. Write a response that appropriately '
      'completes the request.\n\n### Instruction:\nDo X.\n\n### Response:\nok')
  with_input = formats.to_conversation({'instruction': 'Do X.', 'input': 'abc', 'output': 'ok'},
                                       cfg)
  assert _text(templates.render('alpaca', with_input)) == (
      'Below is an instruction that describes a task, paired with an input that provides further '
      'context. Write a response that appropriately completes the request.\n\n'
      '### Instruction:\nDo X.\n\n### Input:\nabc\n\n### Response:\nok')


def test_prompt_completion_keys_and_sep_token(cfg, gpt2_tokenizer):
  cfg.format, cfg.prompt_key, cfg.completion_key = 'prompt_completion', 'q', 'a'
  cfg.sep_token, cfg.template = ' =>', 'plain'
  record = {'q': 'one plus one', 'a': ' two'}
  ex = tokenize.tokenize_record(record, cfg, gpt2_tokenizer)
  assert gpt2_tokenizer.decode(tokenize.prompt_tokens(record, cfg, gpt2_tokenizer)) == (
      'one plus one =>')
  assert gpt2_tokenizer.decode(ex['targets'][ex['weights'] > 0]) == ' two<|endoftext|>'


def test_messages_and_sharegpt_are_the_same_conversation(cfg):
  messages = {'messages': [{'role': 'system', 'content': 'S'}, {'role': 'user', 'content': 'U1'},
                           {'role': 'assistant', 'content': 'A1'},
                           {'role': 'user', 'content': 'U2'},
                           {'role': 'assistant', 'content': 'A2'}]}
  sharegpt = {'conversations': [{'from': 'system', 'value': 'S'}, {'from': 'human', 'value': 'U1'},
                                {'from': 'gpt', 'value': 'A1'}, {'from': 'human', 'value': 'U2'},
                                {'from': 'gpt', 'value': 'A2'}]}
  a, b = formats.to_conversation(messages, cfg), formats.to_conversation(sharegpt, cfg)
  assert [(t.role, t.text, t.trainable) for t in a.turns] == [
      (t.role, t.text, t.trainable) for t in b.turns] == [
          ('system', 'S', False), ('user', 'U1', False), ('assistant', 'A1', True),
          ('user', 'U2', False), ('assistant', 'A2', True)]
  pieces = templates.render('phi3', a)
  assert _text(pieces) == ('<|system|>\nS<|end|>\n<|user|>\nU1<|end|>\n<|assistant|>\nA1\n'
                           '<|user|>\nU2<|end|>\n<|assistant|>\nA2\n')
  assert [p.text for p in pieces if p.trained and p.end is None] == ['A1', 'A2']
  assert [p.end for p in pieces if p.end] == ['<|end|>', '<|end|>']
  chatml = templates.render('chatml', a)
  assert _text(chatml).startswith('<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU1')


def test_missing_key_names_key_and_found_keys(cfg):
  cfg.format = 'alpaca'
  with pytest.raises(RecordError, match=r"data.json:7: missing key 'output'.*\['input', "
                     r"'instruction', 'response'\]"):
    formats.to_conversation({'instruction': 'x', 'input': '', 'response': 'y'}, cfg,
                            'data.json:7')


def test_user_format_string_and_its_errors(cfg):
  conv = formats.to_conversation({'instruction': 'Hi?', 'input': '', 'output': 'Yo',
                                  'topic': 'greet'}, cfg)
  pieces = templates.render('[{topic}] Q: {instruction}\nA: {response}', conv)
  assert [p.text for p in pieces] == ['[greet] Q: Hi?\nA: ', 'Yo', '']
  with pytest.raises(RecordError, match="names field 'missing'"):
    templates.render('{missing} {response}', conv)
  with pytest.raises(ValueError, match='must end with'):
    templates.parse_template('Q: {instruction} {response} bye')
  with pytest.raises(ValueError, match='expected one of'):
    templates.parse_template('alpacca')


def test_template_mixture_is_deterministic_and_mixed(cfg):
  specs = templates.parse_template(['alpaca', 'chatml', 'Q: {instruction}\nA: {response}'])
  convs = [formats.to_conversation({'instruction': f'task {i}', 'input': '', 'output': 'x'}, cfg)
           for i in range(60)]
  first = [templates.choose(specs, c, seed=0) for c in convs]
  assert first == [templates.choose(specs, c, seed=0) for c in convs]
  assert set(first) == set(specs)  # 60 draws from 3 templates use all three
  assert first != [templates.choose(specs, c, seed=1) for c in convs]


def test_inverted_swaps_prompt_and_response(cfg, gpt2_tokenizer):
  cfg.inverted = True
  record = {'instruction': 'Write a haiku.', 'input': '', 'output': 'Old pond, frog jumps in.'}
  conv = formats.to_conversation(record, cfg)
  assert [(t.role, t.text) for t in conv.turns] == [('user', 'Old pond, frog jumps in.'),
                                                    ('assistant', 'Write a haiku.')]
  ex = tokenize.tokenize_record(record, cfg, gpt2_tokenizer)
  assert gpt2_tokenizer.decode(ex['targets'][ex['weights'] > 0]) == 'Write a haiku.<|endoftext|>'


def test_ftfy_repairs_mojibake_with_nfc(cfg):
  cfg.ftfy = True
  conv = formats.to_conversation({'instruction': 'cafÃ©', 'input': '', 'output': 'e\u0301'}, cfg)
  assert conv.turns[0].text == 'caf\u00e9'
  assert conv.turns[1].text == '\u00e9'  # NFC composes e + combining acute


def test_system_prompt_is_added(cfg):
  cfg.system_prompt = 'You are terse.'
  conv = formats.to_conversation({'prompt': 'p', 'completion': 'c'}, cfg)
  assert [(t.role, t.text) for t in conv.turns] == [('system', 'You are terse.'), ('user', 'p'),
                                                    ('assistant', 'c')]
