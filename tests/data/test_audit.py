"""The mask audit (jaxift/data/audit.py, python -m jaxift.tools.inspect_batch --check): hand-made violations are
each found; real templates over synthetic tool/reasoning conversations have none."""
import copy
import json
import pathlib
import subprocess
import sys

import pytest

from jaxift.data import audit, formats, synthetic_chat
from tests.data import chat_templates as ct

IM_END = 2
REPO = pathlib.Path(__file__).resolve().parents[2]


def enc(tok, text):
  return tok.encode(text, add_special_tokens=False)


def _files(tmp_path, records, name='chats.jsonl'):
  path = tmp_path / name
  path.write_text(''.join(json.dumps(r) + '\n' for r in records))
  return str(path)


def _cfg(cfg, files, template=None, **kw):
  cfg.train_files, cfg.split_fractions = files, (1.0, 0.0, 0.0)
  cfg.template, cfg.chat_template, cfg.max_seq_length = 'tokenizer', template or '', 512
  cfg.update(kw)
  return cfg


def test_check_example_finds_each_hand_made_violation(cfg, smollm2_tokenizer):
  tok = smollm2_tokenizer
  conv = formats.to_conversation({'messages': [{'role': 'user', 'content': 'Hi there'},
                                               {'role': 'assistant', 'content': 'Hello!'}]}, cfg)
  prompt = enc(tok, '<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n')
  answer = enc(tok, 'Hello!') + [IM_END]
  tokens = prompt + answer + enc(tok, '\n')
  good = [0.0] * len(prompt) + [1.0] * len(answer) + [0.0]
  assert audit.check_example(conv, tokens, good, prompt, tok) == []
  user_token = len(enc(tok, '<|im_start|>user\nHi'))  # the token ' there'
  bad = list(good)
  bad[user_token] = 1.0
  # Two trained runs for one trained turn, the first without an end token, inside the user text.
  assert [k for k, _ in audit.check_example(conv, tokens, bad, prompt, tok)] == [
      'end_token', 'end_token', 'trained_in_user']
  no_end = good[:-2] + [0.0, 0.0]  # <|im_end|> not trained
  assert [k for k, _ in audit.check_example(conv, tokens, no_end, prompt, tok)] == ['end_token']
  past_end = good[:-1] + [1.0]  # the '\n' after <|im_end|> trained as well
  assert [k for k, _ in audit.check_example(conv, tokens, past_end, prompt, tok)] == ['end_token']
  assert [k for k, _ in audit.check_example(conv, tokens, good, prompt[:-1], tok)] == [
      'prompt_prefix']


@pytest.fixture(scope='module')
def conversations():
  return synthetic_chat.make_conversations(60, seed=3)


def test_real_templates_pass_the_audit(cfg, smollm2_tokenizer, conversations, tmp_path):
  tok = copy.deepcopy(smollm2_tokenizer)
  tok.add_tokens(['<|begin_of_text|>', '<|start_header_id|>', '<|end_header_id|>', '<|eot_id|>'],
                 special_tokens=True)
  files = _files(tmp_path, conversations)
  kinds = [r['kind'] for r in conversations]
  assert set(kinds) == set(synthetic_chat.KINDS)
  for template, extra in ((ct.QWEN3, {}), (ct.QWEN3, {'train_on_reasoning': True}),
                          (ct.QWEN3, {'chat_template_kwargs': {'enable_thinking': False}}),
                          (ct.LLAMA31_TOOLS, {})):
    report = audit.run_audit(_cfg(copy.deepcopy(cfg), files, template, **extra), tok)
    assert report.ok, report.table()
    assert dict(report.dropped) == {'empty_turn': kinds.count('empty_user')}
    assert dict(report.turns_dropped) == {'leading_non_user_turns': kinds.count('leading')}
    assert report.checked == len(kinds) - kinds.count('empty_user')
  plain = _files(tmp_path, [synthetic_chat.plain(r) for r in conversations], 'plain.jsonl')
  report = audit.run_audit(_cfg(copy.deepcopy(cfg), plain), tok)  # SmolLM2's own ChatML
  assert report.ok and report.checked == len(kinds) - kinds.count('empty_user')


def test_a_template_without_end_token_fails_the_audit_and_the_tool(cfg, smollm2_tokenizer,
                                                                    tmp_path, smollm2_gguf):
  # '### role: text' turns end in no end-of-turn token: the whole rest of the turn is trained.
  template = ('{%- for m in messages %}### {{ m.role }}: {{ m.content }}\n{% endfor %}'
              '{%- if add_generation_prompt %}### assistant: {% endif %}')
  records = [{'messages': [{'role': 'user', 'content': 'Hi'},
                           {'role': 'assistant', 'content': 'Hello!'}]}] * 2
  files = _files(tmp_path, records)
  report = audit.run_audit(_cfg(cfg, files, template), smollm2_tokenizer)
  assert not report.ok and report.violations['end_token'] == 2
  assert report.first['end_token'].startswith(f'{files}:1: trained run')
  assert f'{files}:1: trained run' in report.table()
  run = subprocess.run(
      [sys.executable, '-m', 'jaxift.tools.inspect_batch', f'--tokenizer={smollm2_gguf}',
       f'--data.train_files={files}', '--data.split_fractions=(1.0,0.0,0.0)',
       '--data.template=tokenizer', f'--data.chat_template={template}', '--check'],
      capture_output=True, text=True, cwd=REPO, timeout=300)
  assert run.returncode == 1, run.stderr[-2000:]
  assert 'end_token                          2' in run.stdout and 'FAILED' in run.stdout
