"""Record formats -> one normalized `Conversation` (turns of role/text/trainable).

Adapters: `alpaca` (instruction/input/output), `prompt_completion` (configurable keys and an
optional separator), `messages` (OpenAI style role/content, multi-turn, `tool_calls`, `tool` turns,
`reasoning_content`) and `sharegpt` (`conversations` of from/value, with `function_call` and
`observation` turns). `auto` picks one from the record's keys. A record's `tools` (JSON-schema
function specs) reach the chat template.

Robustness (the same for every multi-turn format; docs/data.md):
- leading non-user turns (an assistant or tool turn before the first user turn) are dropped from
  the conversation and counted in `Conversation.notes` (FastChat's rule);
- an empty system turn is dropped and counted; an empty user turn drops the example
  (`empty_turn`), an empty assistant turn `empty_response`; an empty tool result is kept;
- two consecutive turns with the same role (tool turns excepted: parallel calls) are an error
  (`repeated_role`), and so is an unknown role (`unknown_role`).
"""
import collections
import dataclasses
import json
import unicodedata
from typing import Any

import ftfy

FORMATS = ('alpaca', 'prompt_completion', 'messages', 'sharegpt', 'self_instruct')
ROLES = ('system', 'user', 'assistant', 'tool')
# Message kinds that data.roles_to_train may name: assistant replies and assistant tool calls. User,
# system and tool turns are never trained (DESIGN.md section 3).
TRAINABLE_KINDS = ('assistant', 'tool_call')
_MESSAGE_ROLES = {'system': 'system', 'developer': 'system', 'user': 'user',
                  'assistant': 'assistant', 'tool': 'tool', 'ipython': 'tool', 'function': 'tool'}
_SHAREGPT_ROLES = {'system': 'system', 'human': 'user', 'user': 'user', 'gpt': 'assistant',
                   'assistant': 'assistant', 'chatgpt': 'assistant', 'bing': 'assistant',
                   'bard': 'assistant', 'model': 'assistant', 'function_call': 'assistant',
                   'observation': 'tool', 'tool': 'tool'}


class RecordError(ValueError):
  """A record that does not fit its format; `reason` is the drop counter it goes to."""

  def __init__(self, message: str, reason: str = 'invalid_record'):
    super().__init__(message)
    self.reason = reason


@dataclasses.dataclass
class Turn:
  role: str  # 'system' | 'user' | 'assistant' | 'tool'
  text: str
  trainable: bool  # assistant turns are trained on (unless the template says otherwise)
  # OpenAI-shape calls of an assistant turn: [{'type': 'function', 'function': {'name', 'arguments'
  # (a dict)}, 'id'?}]; None when the turn calls no tool.
  tool_calls: list | None = None
  reasoning: str = ''  # the message's reasoning_content (rendered by thinking templates)
  extra: dict = dataclasses.field(default_factory=dict)  # e.g. a tool turn's name/tool_call_id


@dataclasses.dataclass
class Conversation:
  turns: list[Turn]
  # Named string fields for templates: instruction/input/output for Alpaca records, prompt/response
  # for single exchanges, and every string field of the raw record (for user format strings).
  fields: dict[str, str]
  tools: list | None = None  # JSON-schema function specs, passed to the chat template as tools=
  # Turns dropped while normalizing, by reason (e.g. leading_non_user_turns): the pipeline counts
  # them next to its example drops.
  notes: collections.Counter = dataclasses.field(default_factory=collections.Counter)


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
  if 'instruction' in record and 'instances' in record:
    return 'self_instruct'
  raise RecordError(
      f'cannot detect the format of a record with keys {sorted(record)}; expected alpaca '
      "(instruction/input/output), messages, conversations (sharegpt), prompt/completion or "
      "self-instruct seed tasks (instruction/instances); set data.format explicitly",
      reason='missing_key')


def _from_alpaca(record: dict, where: str) -> Conversation:
  instruction = _as_text(_require(record, 'instruction', where), 'instruction', where)
  inp = _as_text(record.get('input', ''), 'input', where)
  output = _as_text(_require(record, 'output', where), 'output', where)
  prompt = instruction + ('\n\n' + inp if inp.strip() else '')
  fields = {'instruction': instruction, 'input': inp, 'output': output}
  return Conversation([Turn('user', prompt, False), Turn('assistant', output, True)], fields)


def _from_self_instruct(record: dict, where: str) -> Conversation:
  """A self-instruct seed task (Alpaca's seed_tasks.jsonl): the instruction with its first
  instance's input and output, as an Alpaca record."""
  instances = _require(record, 'instances', where)
  if not isinstance(instances, list) or not instances or not isinstance(instances[0], dict):
    raise RecordError(f'{where}: key \'instances\' must hold a non-empty list of '
                      '{input, output} objects', reason='missing_key')
  first = instances[0]
  return _from_alpaca({'instruction': _require(record, 'instruction', where),
                       'input': first.get('input', ''), 'output': _require(first, 'output', where)},
                      where)


def _from_prompt_completion(record: dict, cfg, where: str) -> Conversation:
  prompt = _as_text(_require(record, cfg.prompt_key, where), cfg.prompt_key, where)
  completion = _as_text(_require(record, cfg.completion_key, where), cfg.completion_key, where)
  # The separator belongs to the prompt, so it is never trained on and ends the generation prompt.
  prompt = prompt + (cfg.sep_token or '')
  fields = {'instruction': prompt, 'input': '', 'output': completion}
  return Conversation([Turn('user', prompt, False), Turn('assistant', completion, True)], fields)


def _content_text(value: Any, where: str) -> str:
  """A message's content: a string, None, or a list of OpenAI content parts (text parts joined)."""
  if isinstance(value, list):
    parts = [p.get('text', '') for p in value if isinstance(p, dict) and p.get('type') == 'text']
    if len(parts) != len(value):
      raise RecordError(f'{where}: only text content parts are supported, got {value!r:.80}')
    return ''.join(parts)
  return _as_text(value, 'content', where)


def _arguments(value: Any, where: str) -> dict:
  """Tool-call arguments as a dict (chat templates serialize them with tojson)."""
  if isinstance(value, str):
    try:
      value = json.loads(value) if value.strip() else {}
    except json.JSONDecodeError as e:
      raise RecordError(f'{where}: tool-call arguments are not JSON: {e}') from None
  if not isinstance(value, dict):
    raise RecordError(f'{where}: tool-call arguments must be an object, got {value!r:.80}')
  return value


def _tool_calls(value: Any, where: str) -> list | None:
  """OpenAI tool_calls ({'function': {...}}) or bare {'name', 'arguments'} calls -> OpenAI shape."""
  if value is None or value == []:
    return None
  if isinstance(value, dict):
    value = [value]
  if not isinstance(value, list):
    raise RecordError(f'{where}: tool_calls must be a list, got {type(value).__name__}')
  calls = []
  for call in value:
    fn = call.get('function', call) if isinstance(call, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get('name'), str):
      raise RecordError(f'{where}: a tool call needs a function name, got {call!r:.80}')
    out = {'type': 'function',
           'function': {'name': fn['name'], 'arguments': _arguments(fn.get('arguments'), where)}}
    if isinstance(call, dict) and 'id' in call:
      out['id'] = call['id']
    calls.append(out)
  return calls


def _from_turn_list(items: Any, role_key: str, text_key: str, role_map: dict[str, str],
                    where: str, key: str) -> Conversation:
  if not isinstance(items, list) or not items:
    raise RecordError(f'{where}: key {key!r} must hold a non-empty list of turns')
  turns = []
  for i, item in enumerate(items):
    at = f'{where}: {key}[{i}]'
    if not isinstance(item, dict):
      raise RecordError(f'{at} must be an object with {role_key!r}/{text_key!r}')
    raw_role = str(_require(item, role_key, at)).lower()
    role = role_map.get(raw_role)
    if role is None:
      raise RecordError(f'{at} has unknown role {item[role_key]!r}; expected one of '
                        f'{sorted(role_map)}', reason='unknown_role')
    if raw_role == 'function_call':  # ShareGPT: the value is the call(s) as JSON
      try:
        calls = json.loads(_as_text(_require(item, text_key, at), text_key, at))
      except json.JSONDecodeError as e:
        raise RecordError(f'{at}: a function_call value must be JSON: {e}') from None
      turns.append(Turn(role, '', True, tool_calls=_tool_calls(calls, at)))
      continue
    if text_key not in item and role == 'assistant' and item.get('tool_calls'):
      text = ''
    else:
      text = _content_text(_require(item, text_key, at), at)
    extra = {k: item[k] for k in ('name', 'tool_call_id') if role == 'tool' and k in item}
    turns.append(Turn(role, text, role == 'assistant',
                      tool_calls=_tool_calls(item.get('tool_calls'), at),
                      reasoning=_as_text(item.get('reasoning_content'), 'reasoning_content', at),
                      extra=extra))
  return Conversation(turns, {})


def _tools(record: dict, where: str) -> list | None:
  tools = record.get('tools')
  if tools is None or tools == '' or tools == []:
    return None
  if isinstance(tools, str):  # ShareGPT dumps keep them as a JSON string
    try:
      tools = json.loads(tools)
    except json.JSONDecodeError as e:
      raise RecordError(f'{where}: key \'tools\' is not JSON: {e}') from None
  if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
    raise RecordError(f'{where}: key \'tools\' must be a list of function specs')
  return tools


def _normalize_turns(conv: Conversation, where: str) -> None:
  """The robustness rules of the module docstring, in place."""
  turns, seen_user = [], False
  for turn in conv.turns:
    if turn.role == 'system' and not turn.text.strip():
      conv.notes['empty_system_turns'] += 1
      continue
    if not seen_user and turn.role in ('assistant', 'tool'):
      conv.notes['leading_non_user_turns'] += 1
      continue
    seen_user = seen_user or turn.role == 'user'
    turns.append(turn)
  for i, turn in enumerate(turns):
    if turn.role == 'user' and not turn.text.strip():  # (a tool may return nothing)
      raise RecordError(f'{where}: turn {i} ({turn.role}) is empty', reason='empty_turn')
    if i and turn.role == turns[i - 1].role and turn.role != 'tool':
      raise RecordError(f'{where}: turns {i - 1} and {i} both have role {turn.role!r}',
                        reason='repeated_role')
  conv.turns = turns


def _set_trainable(conv: Conversation, cfg) -> None:
  """data.roles_to_train (which assistant messages) and data.train_on_last_turn_only."""
  kinds = tuple(getattr(cfg, 'roles_to_train', TRAINABLE_KINDS))
  unknown = [k for k in kinds if k not in TRAINABLE_KINDS]
  if unknown:
    raise ValueError(f'data.roles_to_train={kinds!r}: {unknown} unknown; expected a subset of '
                     f'{TRAINABLE_KINDS} (user, system and tool turns are never trained)')
  for turn in conv.turns:
    if turn.role == 'assistant':
      turn.trainable = turn.trainable and ('tool_call' if turn.tool_calls else 'assistant') in kinds
  if getattr(cfg, 'train_on_last_turn_only', False):
    trained = [t for t in conv.turns if t.trainable]
    for turn in trained[:-1]:
      turn.trainable = False


# The answer put after a chat that ends with a user or tool turn when only its prompt is wanted
# (generation): any text the templates render as is.
OPEN_ANSWER = 'x'


def to_conversation(record: dict, cfg, where: str = 'record', *,
                    open_ended: bool = False) -> Conversation:
  """Normalizes one raw record. `where` names the record (file:line) in error messages.
  `open_ended`: a chat ending with a user or tool turn gets a placeholder answer (OPEN_ANSWER), so
  that the prompt of the turn to generate can be rendered."""
  if not isinstance(record, dict):
    raise RecordError(f'{where}: expected a JSON object, got {type(record).__name__}')
  fmt = cfg.format if cfg.format != 'auto' else detect_format(record)
  if fmt == 'alpaca':
    conv = _from_alpaca(record, where)
  elif fmt == 'prompt_completion':
    conv = _from_prompt_completion(record, cfg, where)
  elif fmt == 'self_instruct':
    conv = _from_self_instruct(record, where)
  elif fmt == 'messages':
    conv = _from_turn_list(_require(record, cfg.messages_key, where), 'role', 'content',
                           _MESSAGE_ROLES, where, cfg.messages_key)
  elif fmt == 'sharegpt':
    conv = _from_turn_list(_require(record, cfg.conversations_key, where), 'from', 'value',
                           _SHAREGPT_ROLES, where, cfg.conversations_key)
  else:
    raise ValueError(f'data.format={fmt!r}; expected one of {FORMATS + ("auto",)}')
  if fmt in ('messages', 'sharegpt'):
    conv.tools = _tools(record, where)
    _normalize_turns(conv, where)
  # Raw string fields stay available to user format strings ({question}, {context}, ...).
  for k, v in record.items():
    if isinstance(v, str) and k not in conv.fields:
      conv.fields[k] = v
  if open_ended and conv.turns and conv.turns[-1].role in ('user', 'tool'):
    conv.turns.append(Turn('assistant', OPEN_ANSWER, True))
  if not any(t.role == 'assistant' for t in conv.turns):
    raise RecordError(f'{where}: the conversation has no assistant turn', reason='no_response')
  if cfg.system_prompt and conv.turns[0].role != 'system':
    conv.turns.insert(0, Turn('system', cfg.system_prompt, False))
  if cfg.inverted:
    conv = invert(conv, where)
  if cfg.ftfy:
    conv = clean(conv)
  if any(t.role == 'assistant' and t.trainable and not t.text.strip() and not t.tool_calls
         for t in conv.turns):
    raise RecordError(f'{where}: empty response', reason='empty_response')
  _set_trainable(conv, cfg)
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
                                Turn('assistant', user.text, True)], fields, notes=conv.notes)


def clean(conv: Conversation) -> Conversation:
  """ftfy repair + NFC, so the same text always becomes the same tokens."""

  def fix(s: str) -> str:
    return unicodedata.normalize('NFC', ftfy.fix_text(s))
  return dataclasses.replace(
      conv, turns=[dataclasses.replace(t, text=fix(t.text), reasoning=fix(t.reasoning))
                   for t in conv.turns],
      fields={k: fix(v) for k, v in conv.fields.items()})
