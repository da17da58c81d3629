"""Record formats -> one normalized `Conversation` (turns of role/text/trainable).

Adapters: `alpaca` (instruction/input/output), `prompt_completion` (configurable keys and an
optional separator), `messages` (OpenAI style role/content, multi-turn) and `sharegpt`
(`conversations` of from/value). `auto` picks one from the record's keys.
"""
import dataclasses
import unicodedata
from typing import Any

FORMATS = ('alpaca', 'prompt_completion', 'messages', 'sharegpt')
ROLES = ('system', 'user', 'assistant')
_SHAREGPT_ROLES = {'system': 'system', 'human': 'user', 'user': 'user', 'gpt': 'assistant',
                   'assistant': 'assistant', 'chatgpt': 'assistant', 'bing': 'assistant',
                   'bard': 'assistant', 'model': 'assistant'}


class RecordError(ValueError):
  """A record that does not fit its format; `reason` is the drop counter it goes to."""

  def __init__(self, message: str, reason: str = 'invalid_record'):
    super().__init__(message)
    self.reason = reason


@dataclasses.dataclass
class Turn:
  role: str  # 'system' | 'user' | 'assistant'
  text: str
  trainable: bool  # assistant turns are trained on (unless the template says otherwise)


@dataclasses.dataclass
class Conversation:
  turns: list[Turn]
  # Named string fields for templates: instruction/input/output for Alpaca records, prompt/response
  # for single exchanges, and every string field of the raw record (for user format strings).
  fields: dict[str, str]


def _require(record: dict, key: str, where: str) -> Any:
  if key not in record:
    raise RecordError(f'{where}: missing key {key!r}; the record has keys {sorted(record)}',
                      reason='missing_key')
  return record[key]


def _as_text(value: Any, key: str, where: str) -> str:
  if value is None:
    return ''
  if not isinstance(value, str):
    raise RecordError(f'{where}: key {key!r} must hold a string, got {type(value).__name__}')
  return value


def detect_format(record: dict) -> str:
  if 'instruction' in record and 'output' in record:
    return 'alpaca'
  if 'messages' in record:
    return 'messages'
  if 'conversations' in record:
    return 'sharegpt'
  if 'prompt' in record and 'completion' in record:
    return 'prompt_completion'
  raise RecordError(
      f'cannot detect the format of a record with keys {sorted(record)}; expected alpaca '
      "(instruction/input/output), messages, conversations (sharegpt) or prompt/completion; "
      'set data.format explicitly', reason='missing_key')


def _from_alpaca(record: dict, where: str) -> Conversation:
  instruction = _as_text(_require(record, 'instruction', where), 'instruction', where)
  inp = _as_text(record.get('input', ''), 'input', where)
  output = _as_text(_require(record, 'output', where), 'output', where)
  prompt = instruction + ('\n\n' + inp if inp.strip() else '')
  fields = {'instruction': instruction, 'input': inp, 'output': output}
  return Conversation([Turn('user', prompt, False), Turn('assistant', output, True)], fields)


def _from_prompt_completion(record: dict, cfg, where: str) -> Conversation:
  prompt = _as_text(_require(record, cfg.prompt_key, where), cfg.prompt_key, where)
  completion = _as_text(_require(record, cfg.completion_key, where), cfg.completion_key, where)
  # The separator belongs to the prompt, so it is never trained on and ends the generation prompt.
  prompt = prompt + (cfg.sep_token or '')
  fields = {'instruction': prompt, 'input': '', 'output': completion}
  return Conversation([Turn('user', prompt, False), Turn('assistant', completion, True)], fields)


def _from_turn_list(items: Any, role_key: str, text_key: str, role_map: dict[str, str],
                    where: str, key: str) -> Conversation:
  if not isinstance(items, list) or not items:
    raise RecordError(f'{where}: key {key!r} must hold a non-empty list of turns')
  turns = []
  for i, item in enumerate(items):
    if not isinstance(item, dict):
      raise RecordError(f'{where}: {key}[{i}] must be an object with {role_key!r}/{text_key!r}')
    role = role_map.get(str(_require(item, role_key, f'{where}: {key}[{i}]')).lower())
    if role is None:
      raise RecordError(f'{where}: {key}[{i}] has unknown role {item[role_key]!r}; expected one '
                        f'of {sorted(role_map)}')
    text = _as_text(_require(item, text_key, f'{where}: {key}[{i}]'), text_key, where)
    turns.append(Turn(role, text, role == 'assistant'))
  return Conversation(turns, {})


def to_conversation(record: dict, cfg, where: str = 'record') -> Conversation:
  """Normalizes one raw record. `where` names the record (file:line) in error messages."""
  if not isinstance(record, dict):
    raise RecordError(f'{where}: expected a JSON object, got {type(record).__name__}')
  fmt = cfg.format if cfg.format != 'auto' else detect_format(record)
  if fmt == 'alpaca':
    conv = _from_alpaca(record, where)
  elif fmt == 'prompt_completion':
    conv = _from_prompt_completion(record, cfg, where)
  elif fmt == 'messages':
    conv = _from_turn_list(_require(record, cfg.messages_key, where), 'role', 'content',
                           {r: r for r in ROLES}, where, cfg.messages_key)
  elif fmt == 'sharegpt':
    conv = _from_turn_list(_require(record, cfg.conversations_key, where), 'from', 'value',
                           _SHAREGPT_ROLES, where, cfg.conversations_key)
  else:
    raise ValueError(f'data.format={fmt!r}; expected one of {FORMATS + ("auto",)}')
  # Raw string fields stay available to user format strings ({question}, {context}, ...).
  for k, v in record.items():
    if isinstance(v, str) and k not in conv.fields:
      conv.fields[k] = v
  if not any(t.role == 'assistant' for t in conv.turns):
    raise RecordError(f'{where}: the conversation has no assistant turn', reason='no_response')
  if cfg.system_prompt and conv.turns[0].role != 'system':
    conv.turns.insert(0, Turn('system', cfg.system_prompt, False))
  if cfg.inverted:
    conv = invert(conv, where)
  if cfg.ftfy:
    conv = clean(conv)
  if any(t.trainable and not t.text.strip() for t in conv.turns):
    raise RecordError(f'{where}: empty response', reason='empty_response')
  return conv


def invert(conv: Conversation, where: str) -> Conversation:
  """Instruction backtranslation (Humpback): the response becomes the prompt and vice versa."""
  body = [t for t in conv.turns if t.role != 'system']
  if len(body) != 2 or body[0].role != 'user' or body[1].role != 'assistant':
    raise RecordError(f'{where}: data.inverted needs a single user/assistant exchange')
  system = [t for t in conv.turns if t.role == 'system']
  user, assistant = body
  fields = dict(conv.fields)
  fields.update(instruction=assistant.text, input='', output=user.text)
  return Conversation(system + [Turn('user', assistant.text, False),
                                Turn('assistant', user.text, True)], fields)


def clean(conv: Conversation) -> Conversation:
  """ftfy repair + NFC, so the same text always becomes the same tokens."""
  import ftfy  # pylint: disable=import-outside-toplevel

  def fix(s: str) -> str:
    return unicodedata.normalize('NFC', ftfy.fix_text(s))
  return Conversation([Turn(t.role, fix(t.text), t.trainable) for t in conv.turns],
                      {k: fix(v) for k, v in conv.fields.items()})
