"""Conversation -> tokens and loss weights (the masking rules of DESIGN.md section 3), then the
per-example shift to inputs/targets/weights/positions, before any padding or packing."""
import ast
import dataclasses
import functools
import json
from typing import Any

import numpy as np

from jaxift.data import formats, templates
from jaxift.data.formats import RecordError

# End-of-turn tokens of common chat templates; those that are single tokens of a vocabulary end a
# response (and stop the sampler) together with EOS.
END_OF_TURN_STRINGS = ('<|im_end|>', '<|eot_id|>', '<|end|>', '<end_of_turn>', '<|endoftext|>',
                       '</s>', '<|end_of_text|>')


@dataclasses.dataclass(frozen=True)
class TokenizerInfo:
  bos_id: int | None
  eos_id: int | None
  pad_id: int
  adds_bos: bool  # the tokenizer puts BOS in front of encoded text by default
  end_ids: frozenset[int]  # tokens that may end a response under the 'tokenizer' template


def single_token_id(tokenizer, text: str) -> int | None:
  ids = tokenizer.encode(text, add_special_tokens=False)
  return ids[0] if len(ids) == 1 else None


@functools.lru_cache(maxsize=16)
def _info_cached(tokenizer) -> TokenizerInfo:
  bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
  probe = tokenizer.encode('a', add_special_tokens=True)
  adds_bos = bos is not None and bool(probe) and probe[0] == bos
  ends = {i for i in (single_token_id(tokenizer, s) for s in END_OF_TURN_STRINGS) if i is not None}
  if eos is not None:
    ends.add(eos)
  pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos or 0)
  return TokenizerInfo(bos, eos, pad, adds_bos, frozenset(ends))


def tokenizer_info(tokenizer) -> TokenizerInfo:
  try:
    return _info_cached(tokenizer)
  except TypeError:  # unhashable tokenizer object
    return _info_cached.__wrapped__(tokenizer)


def end_id(marker: str, tokenizer) -> int:
  """Token that ends a response: the template's marker if it is one token, else EOS."""
  if marker:
    tid = single_token_id(tokenizer, marker)
    if tid is not None:
      return tid
  eos = tokenizer.eos_token_id
  if eos is None:
    raise ValueError(f'the tokenizer has no EOS token and {marker!r} is not a single token: no '
                     'token can end a response')
  return eos


def _wants_bos(cfg, info: TokenizerInfo) -> bool:
  add = info.adds_bos if cfg.get('add_bos') is None else bool(cfg.add_bos)
  return add and info.bos_id is not None


def encode_pieces(pieces: list[templates.Piece], cfg, tokenizer) -> tuple[list[int], list[float]]:
  """Tokenizes pieces separately (no special tokens added) and concatenates them, so every prompt
  is a token prefix of its full sequence. Returns tokens and per-token weights (1 = trained)."""
  info = tokenizer_info(tokenizer)
  tokens: list[int] = []
  weights: list[float] = []
  texts = [p.text for p in pieces if p.end is None or p.end == templates.AUTO_END]
  encoded = iter(tokenizer(texts, add_special_tokens=False)['input_ids']) if texts else iter(())
  for piece in pieces:
    if piece.end is not None and piece.end != templates.AUTO_END:
      ids, w = [end_id(piece.end, tokenizer)], [1.0 if piece.trained else 0.0]
    else:
      ids = list(next(encoded))
      w = [1.0 if piece.trained else 0.0] * len(ids)
      if piece.end == templates.AUTO_END and piece.trained:
        # Rendered by a chat template: content + end-of-turn (+ e.g. '\n'); train through the first
        # end-of-turn token only, so there is exactly one end target per turn.
        stop = next((j for j, t in enumerate(ids) if t in info.end_ids), len(ids) - 1)
        w = [1.0] * (stop + 1) + [0.0] * (len(ids) - stop - 1)
    tokens += ids
    weights += w
  if _wants_bos(cfg, info) and (not tokens or tokens[0] != info.bos_id):
    tokens, weights = [info.bos_id] + tokens, [0.0] + weights
  return tokens, weights


def template_kwargs(cfg) -> dict[str, Any]:
  """data.chat_template_kwargs as a dict: a dict/ConfigDict, or its JSON or Python-literal text."""
  value = cfg.get('chat_template_kwargs')
  if value is None or value == '':
    return {}
  if isinstance(value, str):
    try:
      value = json.loads(value)
    except json.JSONDecodeError:
      value = ast.literal_eval(value)  # "{'enable_thinking': False}" from a command line
  if hasattr(value, 'as_configdict'):  # a FrozenConfigDict (the pipeline freezes data config)
    value = value.as_configdict()
  if hasattr(value, 'to_dict'):
    value = value.to_dict()
  if not isinstance(value, dict):
    raise ValueError(f'data.chat_template_kwargs must be a dict, got {value!r}')
  return dict(value)


@functools.lru_cache(maxsize=16)
def _end_strings_cached(tokenizer) -> tuple[str, ...]:
  info = tokenizer_info(tokenizer)
  ends = [s for s in END_OF_TURN_STRINGS if single_token_id(tokenizer, s) in info.end_ids]
  if tokenizer.eos_token:
    ends.append(tokenizer.eos_token)
  return tuple(dict.fromkeys(ends))


def end_strings(tokenizer) -> tuple[str, ...]:
  """Texts of the tokens that end a turn under the 'tokenizer' template (cached per tokenizer)."""
  try:
    return _end_strings_cached(tokenizer)
  except TypeError:  # unhashable tokenizer object
    return _end_strings_cached.__wrapped__(tokenizer)


def chat_options(cfg, tokenizer) -> templates.ChatOptions:
  """The data.* keys that change how the 'tokenizer' template renders and masks."""
  override = cfg.get('chat_template') or ''
  kwargs = template_kwargs(cfg)
  ends = end_strings(tokenizer) if tokenizer is not None else ()
  tags = cfg.get('reasoning_tags', ('<think>', '</think>'))
  tags = tuple(tags) if tags else ('', '')  # () or None: no reasoning blocks
  return templates.ChatOptions(
      chat_template=templates.read_chat_template(override) if override else None,
      kwargs=tuple(kwargs.items()),
      train_on_reasoning=bool(cfg.get('train_on_reasoning', False)),
      train_on_empty_reasoning=bool(cfg.get('train_on_empty_reasoning', False)),
      reasoning_tags=tags, end_strings=ends)


def conversation_pieces(conv: formats.Conversation, cfg, tokenizer) -> list[templates.Piece]:
  specs = templates.parse_template(cfg.template)
  if cfg.get('chat_template') and 'tokenizer' not in specs:
    raise ValueError(f"data.chat_template is set but data.template={cfg.template!r} has no "
                     "'tokenizer' entry to use it")
  spec = templates.choose(specs, conv, cfg.template_seed)
  options = chat_options(cfg, tokenizer) if spec == 'tokenizer' else templates.ChatOptions()
  return templates.render(spec, conv, tokenizer, options)


def fit_length(tokens: list[int], weights: list[float], cfg, bos_id: int | None, where: str):
  """Over-long policy on an example of n tokens; it fits when n - 1 <= max_seq_length."""
  limit = cfg.max_seq_length + 1
  excess = len(tokens) - limit
  if excess <= 0:
    return tokens, weights
  if cfg.overlong == 'drop':
    raise RecordError(f'{where}: {len(tokens) - 1} tokens > max_seq_length', reason='too_long')
  if cfg.overlong == 'truncate':
    return tokens[:limit], weights[:limit]
  if cfg.overlong == 'truncate_prompt':
    first_trained = next((j for j, w in enumerate(weights) if w > 0), len(weights))
    keep = 1 if bos_id is not None and tokens[0] == bos_id else 0  # keep BOS in front
    if first_trained - keep - 1 < excess:  # keep at least one prompt token to predict from
      raise RecordError(f'{where}: the response alone is longer than max_seq_length',
                        reason='too_long_response')
    return (tokens[:keep] + tokens[keep + excess:], weights[:keep] + weights[keep + excess:])
  raise ValueError(f"data.overlong={cfg.overlong!r}; expected 'drop', 'truncate_prompt' or "
                   "'truncate'")


def shift(tokens: list[int], weights: list[float]) -> dict[str, np.ndarray]:
  """Per example, before packing: the last target is the example's own end token (rule 5)."""
  tokens_N = np.asarray(tokens, np.int32)
  n = len(tokens_N) - 1
  return {'inputs': tokens_N[:-1], 'targets': tokens_N[1:],
          'weights': np.asarray(weights[1:], np.float32), 'positions': np.arange(n, dtype=np.int32)}


def _named(error: RecordError, where: str) -> RecordError:
  """The same error, its message starting with the record's file:line."""
  if str(error).startswith(where):
    return error
  return RecordError(f'{where}: {error}', reason=error.reason)


def encode_record(record: dict, cfg, tokenizer, where: str = 'record'):
  """Raw record -> (conversation, tokens, weights) before the over-long policy and the shift."""
  try:
    conv = formats.to_conversation(record, cfg, where)
    tokens, weights = encode_pieces(conversation_pieces(conv, cfg, tokenizer), cfg, tokenizer)
  except RecordError as e:
    raise _named(e, where) from None
  if not any(weights[1:]):
    raise RecordError(f'{where}: the template leaves no trained token (all-zero mask)',
                      reason='all_zero_mask')
  return conv, tokens, weights


def tokenize_record_with_notes(record: dict, cfg, tokenizer, where: str = 'record'):
  """(shifted example, turns dropped while normalizing by reason): the pipeline counts both."""
  conv, tokens, weights = encode_record(record, cfg, tokenizer, where)
  if cfg.train_on_prompt:
    weights = [0.0] + [1.0] * (len(tokens) - 1)
  tokens, weights = fit_length(tokens, weights, cfg, tokenizer_info(tokenizer).bos_id, where)
  if len(tokens) < 2 or not any(weights[1:]):
    raise RecordError(f'{where}: no trained token left after truncation',
                      reason='no_trainable_tokens')
  return shift(tokens, weights), dict(conv.notes)


def tokenize_record(record: dict, cfg, tokenizer, where: str = 'record') -> dict[str, np.ndarray]:
  """Raw record -> one shifted example; raises RecordError (with a drop reason) when unusable."""
  return tokenize_record_with_notes(record, cfg, tokenizer, where)[0]


def prompt_tokens(record: dict, cfg, tokenizer, where: str = 'record') -> list[int]:
  """The tokens the model saw before the record's last response in training: BOS if any, template
  text, earlier turns and the generation prompt (with data.chat_template/chat_template_kwargs, and
  an untrained reasoning block). A chat that ends with a user or tool turn gives the prompt of the
  answer that would follow it. Generate from them and stop on `end_token_ids`."""
  try:
    conv = formats.to_conversation(record, cfg, where, open_ended=True)
    pieces = conversation_pieces(conv, cfg, tokenizer)
  except RecordError as e:
    raise _named(e, where) from None
  last = max(i for i, p in enumerate(pieces)
             if p.trained and p.end in (None, templates.AUTO_END))  # the last response's text
  tokens, _ = encode_pieces(pieces[:last], cfg, tokenizer)
  return tokens


def end_token_ids(cfg, tokenizer) -> list[int]:
  """Token ids that end a response under the configured template(s): stop generation on them."""
  info = tokenizer_info(tokenizer)
  ids = set()
  for spec in templates.parse_template(cfg.template):
    if spec == 'tokenizer':
      ids |= info.end_ids
    elif spec == 'chatml':
      ids.add(end_id('<|im_end|>', tokenizer))
    elif spec == 'phi3':
      ids.add(end_id('<|end|>', tokenizer))
    else:
      ids.add(end_id(templates.EOS, tokenizer))
  return sorted(ids)


def stop_token_ids(tokenizer, cfg=None) -> list[int]:
  """The one stop-token rule of generation: EOS plus every end-of-turn token the tokenizer has as a
  single token (`<|im_end|>`, `<|eot_id|>`, ...), plus, given a data config, the tokens that end a
  response under its template(s) -- so a model stops exactly where its training responses ended."""
  ids = set(tokenizer_info(tokenizer).end_ids)
  if cfg is not None:
    ids |= set(end_token_ids(cfg, tokenizer))
  return sorted(ids)


def response_text(record: dict, cfg) -> str:
  """The reference answer of a record (its last trained turn), for exact-match evaluation."""
  conv = formats.to_conversation(record, cfg)
  return [t.text for t in conv.turns if t.trainable][-1]

