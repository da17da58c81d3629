"""Conversations as real dumps have them: leading assistant turns (dropped and counted), repeated
roles, empty turns, unknown roles; every record error names file:line, through the pipeline too."""
import json

import pytest

from jaxift.data import pipeline, tokenize
from jaxift.data.formats import RecordError
from tests.data import chat_templates as ct

GOOD = {'conversations': [{'from': 'human', 'value': 'Hi'}, {'from': 'gpt', 'value': 'Hello!'}]}
LEADING = {'conversations': [{'from': 'gpt', 'value': 'Welcome, ask me.'},
                             {'from': 'human', 'value': 'Hi'}, {'from': 'gpt', 'value': 'Hello!'}]}
UNKNOWN = {'conversations': [{'from': 'human', 'value': 'Hi'}, {'from': 'narrator', 'value': 'x'},
                             {'from': 'gpt', 'value': 'Hello!'}]}


def _write(tmp_path, records):
  path = tmp_path / 'chats.jsonl'
  path.write_text(''.join(json.dumps(r) + '\n' for r in records))
  return str(path)


def _cfg(cfg, files):
  cfg.train_files, cfg.split_fractions = files, (1.0, 0.0, 0.0)
  cfg.template, cfg.max_seq_length, cfg.shuffle = 'tokenizer', 64, False
  cfg.prefetch_buffer_size = 0
  return cfg


def test_leading_assistant_turn_dropped_counted_not_crashing(cfg, smollm2_tokenizer, tmp_path):
  tok = smollm2_tokenizer
  cfg = _cfg(cfg, _write(tmp_path, [GOOD, LEADING, GOOD]))
  trimmed = tokenize.tokenize_record(LEADING, cfg, tok)
  reference = tokenize.tokenize_record(GOOD, cfg, tok)
  assert trimmed['inputs'].tolist() == reference['inputs'].tolist()
  assert trimmed['weights'].tolist() == reference['weights'].tolist()
  it = pipeline.make_iterator(cfg, tok, split='train', batch_size=3, shard_index=0, shard_count=1,
                              seed=0, num_epochs=1)
  batch = next(it)
  assert set(batch) == {'inputs', 'targets', 'weights', 'segment_ids', 'positions'}
  assert it.stats.as_dict() == {'kept': 3, 'dropped/leading_non_user_turns': 1}


def test_unknown_role_names_file_and_line_or_is_counted(cfg, smollm2_tokenizer, tmp_path):
  path = _write(tmp_path, [GOOD, UNKNOWN, GOOD])
  cfg = _cfg(cfg, path)
  it = pipeline.make_iterator(cfg, smollm2_tokenizer, split='train', batch_size=3, shard_index=0,
                              shard_count=1, seed=0, num_epochs=1)
  with pytest.raises(RecordError, match=rf"^{path}:2: conversations\[1\] has unknown role "
                     r"'narrator'"):
    next(it)
  cfg.skip_invalid = True
  it = pipeline.make_iterator(cfg, smollm2_tokenizer, split='train', batch_size=3, shard_index=0,
                              shard_count=1, seed=0, num_epochs=1)
  next(it)
  assert it.stats.as_dict() == {'kept': 2, 'dropped/unknown_role': 1}


@pytest.mark.parametrize('turns, reason', [
    ([('human', 'Hi'), ('human', 'Again'), ('gpt', 'Hello!')], 'repeated_role'),
    ([('human', 'Hi'), ('gpt', 'Hello!'), ('gpt', 'More.')], 'repeated_role'),
    ([('human', ''), ('gpt', 'Hello!')], 'empty_turn'),
    ([('human', 'Hi'), ('gpt', '  ')], 'empty_response'),
    ([('gpt', 'Only me.')], 'no_response'),
])
def test_each_malformed_conversation_has_a_reason_and_its_line(cfg, smollm2_tokenizer, turns,
                                                               reason):
  record = {'conversations': [{'from': r, 'value': v} for r, v in turns]}
  cfg.template = 'tokenizer'
  with pytest.raises(RecordError, match=r'^data.jsonl:9: ') as e:
    tokenize.tokenize_record(record, cfg, smollm2_tokenizer, 'data.jsonl:9')
  assert e.value.reason == reason


def test_empty_system_turn_dropped_and_noted(cfg, smollm2_tokenizer):
  cfg.template = 'tokenizer'
  record = {'messages': [{'role': 'system', 'content': ''}, {'role': 'user', 'content': 'Hi'},
                         {'role': 'assistant', 'content': 'Hello!'}]}
  ex, notes = tokenize.tokenize_record_with_notes(record, cfg, smollm2_tokenizer)
  assert notes == {'empty_system_turns': 1}
  assert ex['inputs'].tolist() == tokenize.tokenize_record(GOOD, cfg, smollm2_tokenizer)[
      'inputs'].tolist()


def test_template_errors_name_file_and_line(cfg, smollm2_tokenizer):
  tok = smollm2_tokenizer
  cfg.template = 'tokenizer'
  # Gemma's template raises on a system turn in the middle (roles must alternate).
  cfg.chat_template = ct.GEMMA3
  record = {'messages': [{'role': 'user', 'content': 'Hi'}, {'role': 'system', 'content': 'S'},
                         {'role': 'assistant', 'content': 'Hello!'}]}
  with pytest.raises(RecordError, match=r'^a.jsonl:3: the chat template fails.*must alternate'
                     ) as e:
    tokenize.tokenize_record(record, cfg, tok, 'a.jsonl:3')
  assert e.value.reason == 'template_error'
  # A template that is not prefix-preserving and rewrites the last answer: its content cannot be
  # aligned with the rendering, which is an error naming the record, not a silent mask.
  cfg.chat_template = ('{%- for m in messages %}<|im_start|>{{ m.role }}\n'
                       '{{ m.content | upper if loop.last else m.content }}<|im_end|>\n'
                       '{%- endfor %}{%- if add_generation_prompt %}<|im_start|>assistant\n'
                       '{%- endif %}')
  with pytest.raises(RecordError, match=r'^b.jsonl:5: the content of turn 1 is not in') as e:
    tokenize.tokenize_record(GOOD, cfg, tok, 'b.jsonl:5')
  assert e.value.reason == 'template_alignment'
