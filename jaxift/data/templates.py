"""Templates: a `Conversation` -> text pieces, each marked trained or not.

Pieces are tokenized separately and concatenated (jaxift/data/tokenize.py), so the boundary between
prompt and response is exact on tokens, whatever the tokenizer merges across the join.
Built-in: `alpaca` (the Stanford Alpaca wording), `phi3`, `chatml`, `plain`, `tokenizer` (the
tokenizer's own chat_template), user format strings such as 'Q: {instruction}\nA: {response}', and
mixtures (a list; one template drawn per example, deterministically from its text and a seed).
"""
import dataclasses
import functools
import json
import string
import zlib
from typing import Any, Sequence

from etils import epath
import jinja2
import numpy as np

from jaxift.data.formats import Conversation, RecordError

NAMES = ('alpaca', 'phi3', 'chatml', 'plain', 'tokenizer')
EOS = ''  # end marker meaning "the tokenizer's EOS token"
AUTO_END = '<auto>'  # end marker: train up to and including the first end-of-turn token

ALPACA_PREAMBLE_INPUT = (
    'Below is an instruction that describes a task, paired with an input that provides further '
    'context. Write a response that appropriately completes the request.\n\n')
ALPACA_PREAMBLE = ('Below is an instruction that describes a task. Write a response that '
                   'appropriately completes the request.\n\n')


@dataclasses.dataclass(frozen=True)
class Piece:
  text: str
  trained: bool = False
  # Set on the piece that ends a response: EOS, a marker string ('<|im_end|>') or AUTO_END.
  end: str | None = None


@dataclasses.dataclass(frozen=True)
class ChatOptions:
  """How the 'tokenizer' template renders and masks (from data.* keys; tokenize.chat_options)."""
  chat_template: str | None = None  # jinja text replacing the tokenizer's own; None = its own
  kwargs: tuple = ()  # (name, value) pairs passed to every apply_chat_template call
  train_on_reasoning: bool = False
  train_on_empty_reasoning: bool = False
  reasoning_tags: tuple[str, str] = ('<think>', '</think>')
  # Texts of the tokens that may end an assistant turn (single tokens of the vocabulary, and EOS):
  # the end of a turn in a final rendering is the first of them after the turn's content.
  end_strings: tuple[str, ...] = ()


@functools.lru_cache(maxsize=16)
def read_chat_template(spec: str) -> str:
  """data.chat_template: inline jinja (it holds '{%' or '{{'), else the path of a template file."""
  if '{%' in spec or '{{' in spec:
    return spec
  path = epath.Path(spec)
  if not path.exists():
    raise ValueError(f'data.chat_template={spec!r} is neither jinja (no {{% or {{{{) nor an '
                     'existing file')
  return path.read_text()


def parse_template(spec: Any) -> list[str]:
  """data.template -> list of names/format strings (a mixture when longer than one)."""
  specs = [spec] if isinstance(spec, str) else list(spec)
  if not specs:
    raise ValueError('data.template is an empty list')
  for s in specs:
    if not isinstance(s, str):
      raise ValueError(f'data.template entries must be strings, got {s!r}')
  return list(_validated(tuple(specs)))


@functools.lru_cache(maxsize=64)
def _validated(specs: tuple[str, ...]) -> tuple[str, ...]:
  # Cached: the per-example map asks for the same few specs once per example.
  for s in specs:
    if '{' in s:
      _check_format_string(s)
    elif s not in NAMES:
      raise ValueError(f'data.template={s!r}: expected one of {NAMES} or a format string with '
                       "named fields ending in '{response}'")
  return specs


def _check_format_string(spec: str) -> None:
  fields = [f for _, f, _, _ in string.Formatter().parse(spec) if f is not None]
  if fields.count('response') != 1 or not spec.endswith('{response}'):
    raise ValueError(f"data.template={spec!r}: a user template must end with '{{response}}' "
                     f'(and name it once); found fields {fields}')


def choose(specs: Sequence[str], conv: Conversation, seed: int) -> str:
  """One template per example, from a hash of its text: the same record always gets the same one."""
  if len(specs) == 1:
    return specs[0]
  key = json.dumps([[t.role, t.text] for t in conv.turns]).encode()
  rng = np.random.default_rng([seed, zlib.crc32(key)])
  return specs[int(rng.integers(len(specs)))]


def render(spec: str, conv: Conversation, tokenizer=None,
           options: ChatOptions = ChatOptions()) -> list[Piece]:
  if spec != 'tokenizer' and (conv.tools or any(t.tool_calls for t in conv.turns)):
    raise RecordError(f'template {spec!r} cannot render tools or tool calls; use '
                      "data.template='tokenizer' with a chat template that knows tools",
                      reason='template_mismatch')
  if spec == 'alpaca':
    return _alpaca(conv)
  if spec == 'plain':
    return _single_turn(conv, 'plain',
                        lambda system, prompt: (system + '\n\n' if system else '') + prompt)
  if spec == 'chatml':
    return _role_tagged(conv, lambda r: f'<|im_start|>{r}\n', '<|im_end|>', '\n')
  if spec == 'phi3':
    return _role_tagged(conv, lambda r: f'<|{r}|>\n', '<|end|>', '\n')
  if spec == 'tokenizer':
    return _chat_template(conv, tokenizer, options)
  return _format_string(spec, conv)


def _single_exchange(conv: Conversation, name: str) -> tuple[str, str, str]:
  system = [t.text for t in conv.turns if t.role == 'system']
  body = [t for t in conv.turns if t.role != 'system']
  if len(body) != 2 or body[0].role != 'user' or body[1].role != 'assistant':
    raise RecordError(f'template {name!r} takes a single user/assistant exchange, got roles '
                      f'{[t.role for t in conv.turns]}; use chatml, phi3 or tokenizer for '
                      'multi-turn data', reason='template_mismatch')
  return '\n'.join(system), body[0].text, body[1].text


def _single_turn(conv: Conversation, name: str, prompt_fn) -> list[Piece]:
  system, prompt, response = _single_exchange(conv, name)
  return [Piece(prompt_fn(system, prompt)), Piece(response, trained=True), Piece('', True, EOS)]


def _alpaca(conv: Conversation) -> list[Piece]:
  system, user, response = _single_exchange(conv, 'alpaca')
  instruction, inp = conv.fields.get('instruction'), conv.fields.get('input', '')
  if instruction is None or conv.fields.get('output') != response:
    instruction, inp = user, ''  # not an Alpaca record: the user turn is the instruction
  if inp.strip():
    prompt = (system + '\n\n' if system else ALPACA_PREAMBLE_INPUT) + (
        f'### Instruction:\n{instruction}\n\n### Input:\n{inp}\n\n### Response:\n')
  else:
    prompt = (system + '\n\n' if system else ALPACA_PREAMBLE) + (
        f'### Instruction:\n{instruction}\n\n### Response:\n')
  return [Piece(prompt), Piece(response, trained=True), Piece('', True, EOS)]


def _role_tagged(conv: Conversation, header, end: str, after_end: str) -> list[Piece]:
  pieces, pending = [], ''
  for turn in conv.turns:
    if turn.role == 'assistant':
      pieces += [Piece(pending + header('assistant')), Piece(turn.text, trained=turn.trainable),
                 Piece(end, turn.trainable, end), Piece(after_end)]
      pending = ''
    else:
      pending += header(turn.role) + turn.text + end + after_end
  if pending:
    pieces.append(Piece(pending))
  return pieces


def _format_string(spec: str, conv: Conversation) -> list[Piece]:
  system, user, response = _single_exchange(conv, 'user format string')
  fields = {'prompt': user, 'system': system, 'input': '', **conv.fields}
  prompt_spec = spec[:-len('{response}')]
  try:
    prompt = prompt_spec.format(**fields)
  except KeyError as e:
    raise RecordError(f'template {spec!r} names field {e.args[0]!r}; this record has fields '
                      f'{sorted(fields)}', reason='missing_key') from None
  return [Piece(prompt), Piece(response, trained=True), Piece('', True, EOS)]


def _message(turn) -> dict:
  m = {'role': turn.role, 'content': turn.text}
  if turn.tool_calls:
    m['tool_calls'] = turn.tool_calls
  if turn.reasoning:
    m['reasoning_content'] = turn.reasoning
  m.update(turn.extra)
  return m


def split_reasoning(text: str, options: ChatOptions) -> tuple[str, bool]:
  """(reasoning block at the start of an assistant turn's text, whether it is trained): the open
  tag (after whitespace) through the close tag and the whitespace after it; '' when there is
  none."""
  open_tag, close_tag = options.reasoning_tags
  stripped = text.lstrip()
  if not open_tag or not stripped.startswith(open_tag):
    return '', False
  start = len(text) - len(stripped) + len(open_tag)
  j = text.find(close_tag, start)
  if j < 0:
    return '', False
  k = j + len(close_tag)
  while k < len(text) and text[k] in ' \n':
    k += 1
  has_reasoning = bool(text[start:j].strip())
  trained = options.train_on_reasoning if has_reasoning else options.train_on_empty_reasoning
  return text[:k], trained


def _turn_pieces(prompt: str, body: str, trainable: bool, options: ChatOptions) -> list[Piece]:
  """An untrained prompt, then an assistant turn's rendering: its reasoning block stays in the
  prompt unless trained; the rest is trained through its first end-of-turn token (AUTO_END)."""
  lead, lead_trained = split_reasoning(body, options)
  if lead_trained or not lead:
    return [Piece(prompt), Piece(body, trained=trainable, end=AUTO_END)]
  return [Piece(prompt + lead), Piece(body[len(lead):], trained=trainable, end=AUTO_END)]


def _chat_template(conv: Conversation, tokenizer, options: ChatOptions) -> list[Piece]:
  """Pieces from the tokenizer's (or data.chat_template's) chat template.

  Prefix-preserving templates (ChatML, Llama 3, Gemma, Mistral): each assistant turn is located by
  rendering the conversation up to it with add_generation_prompt=True (works without
  {% generation %}). Templates that render earlier turns differently once later ones exist (Qwen3
  drops old reasoning and puts an empty think block in the last turn only): the final rendering is
  cut at each assistant message's character span instead (`_final_rendering_pieces`)."""
  if tokenizer is None or not (options.chat_template or getattr(tokenizer, 'chat_template', None)):
    raise ValueError("data.template='tokenizer' needs a tokenizer with a chat_template (or "
                     'data.chat_template)')
  messages = [_message(t) for t in conv.turns]
  kwargs = dict(options.kwargs)

  @functools.lru_cache(maxsize=None)
  def rendered(n: int, gen: bool) -> str:
    try:
      return tokenizer.apply_chat_template(
          messages[:n], tools=conv.tools, chat_template=options.chat_template, tokenize=False,
          add_generation_prompt=gen, **kwargs)
    except (jinja2.TemplateError, ValueError) as e:
      raise RecordError(f'the chat template fails on this conversation: {e}',
                        reason='template_error') from None

  pieces, done = [], ''
  for i, turn in enumerate(conv.turns):
    if turn.role != 'assistant':
      continue
    prompt, full = rendered(i, True), rendered(i + 1, False)
    if not prompt.startswith(done) or not full.startswith(prompt):
      return _final_rendering_pieces(conv, rendered, options)
    pieces += _turn_pieces(prompt[len(done):], full[len(prompt):], turn.trainable, options)
    done = full
  final = rendered(len(messages), False)
  if not final.startswith(done):
    return _final_rendering_pieces(conv, rendered, options)
  if final[len(done):]:
    pieces.append(Piece(final[len(done):]))
  return pieces


def _generation_header(conv: Conversation, rendered, options: ChatOptions) -> str:
  """What add_generation_prompt adds (e.g. '<|im_start|>assistant\\n'), cut before a reasoning
  block (enable_thinking=False adds an empty one that earlier turns do not have)."""
  first = next(i for i, t in enumerate(conv.turns) if t.role == 'assistant')
  with_gen, without = rendered(first, True), rendered(first, False)
  if not with_gen.startswith(without):
    raise RecordError('add_generation_prompt does not extend the rendering',
                      reason='template_not_prefix')
  header = with_gen[len(without):]
  open_tag = options.reasoning_tags[0]
  return header.split(open_tag)[0] if open_tag else header


def _final_rendering_pieces(conv: Conversation, rendered, options: ChatOptions) -> list[Piece]:
  """Cuts the final rendering at each assistant turn: its generation header (untrained), an
  optional reasoning block (split_reasoning), then its content and tool calls through the first
  end-of-turn string (trained). Turns are aligned in order: each message's content is found after
  the previous one's, so an answer that repeats the question is not matched inside the question."""
  final = rendered(len(conv.turns), False)
  header = _generation_header(conv, rendered, options)
  pieces, cut, pos = [], 0, 0
  close_tag = options.reasoning_tags[1]
  for i, turn in enumerate(conv.turns):
    text = turn.text.strip()
    if turn.role == 'assistant' and close_tag and close_tag in text:
      # Reasoning inline in the content: thinking templates move or drop it; find the answer.
      text = text.split(close_tag)[-1].strip()
    if turn.role != 'assistant':
      j = final.find(text, pos) if text else -1
      pos = j + len(text) if j >= 0 else pos  # tool results may be re-serialized: not required
      continue
    if header:
      h = final.find(header, pos)
      if h < 0:
        raise RecordError(f'cannot find the generation prompt {header!r} of turn {i} in the final '
                          'rendering', reason='template_alignment')
      start = h + len(header)
    else:  # no generation prompt ([INST] style): the turn starts at its content
      start = final.find(text, pos) if text else -1
      if start < 0:
        raise RecordError(f'the chat template has no generation prompt and the content of turn '
                          f'{i} is not in the final rendering', reason='template_alignment')
    lead, _ = split_reasoning(final[start:], options)
    body = start + len(lead)
    end = _end_of_turn(final, body, options)
    if text:
      c = final.find(text, body)
      if c < 0 or 0 <= end <= c:  # not in this turn (before its first end-of-turn string)
        raise RecordError(f'the content of turn {i} is not in its rendering by the chat '
                          'template', reason='template_alignment')
      if c + len(text) > end:  # the content itself holds an end-of-turn string
        end = _end_of_turn(final, c + len(text), options)
    if end < 0:
      raise RecordError(f'turn {i} has no end-of-turn token in the rendering '
                        f'(looked for {list(options.end_strings)})', reason='template_alignment')
    pieces += _turn_pieces(final[cut:start], final[start:end], turn.trainable, options)
    cut = pos = end
  if final[cut:]:
    pieces.append(Piece(final[cut:]))
  return pieces


def _end_of_turn(text: str, start: int, options: ChatOptions) -> int:
  """Index just past the first end-of-turn string at or after start; -1 when there is none."""
  hits = [(j, s) for s in options.end_strings for j in [text.find(s, start)] if j >= 0]
  if not hits:
    return -1
  j, s = min(hits)
  return j + len(s)
