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


def render(spec: str, conv: Conversation, tokenizer=None) -> list[Piece]:
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
    return _chat_template(conv, tokenizer)
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


def _chat_template(conv: Conversation, tokenizer) -> list[Piece]:
  """Pieces from the tokenizer's chat_template: each assistant turn is located by rendering the
  conversation up to it with add_generation_prompt=True (works without {% generation %})."""
  if tokenizer is None or not getattr(tokenizer, 'chat_template', None):
    raise ValueError("data.template='tokenizer' needs a tokenizer with a chat_template")
  messages = [{'role': t.role, 'content': t.text} for t in conv.turns]

  def rendered(n: int, gen: bool) -> str:
    return tokenizer.apply_chat_template(messages[:n], tokenize=False, add_generation_prompt=gen)

  pieces, done = [], ''
  for i, turn in enumerate(conv.turns):
    if turn.role != 'assistant':
      continue
    prompt, full = rendered(i, True), rendered(i + 1, False)
    if not prompt.startswith(done) or not full.startswith(prompt):
      raise RecordError(f'the chat template does not render turn {i} as an extension of the turns '
                        'before it, so its prompt is not a prefix', reason='template_not_prefix')
    pieces += [Piece(prompt[len(done):]),
               Piece(full[len(prompt):], trained=turn.trainable, end=AUTO_END)]
    done = full
  final = rendered(len(messages), False)
  if not final.startswith(done):
    raise RecordError('the chat template re-renders earlier turns', reason='template_not_prefix')
  if final[len(done):]:
    pieces.append(Piece(final[len(done):]))
  return pieces
