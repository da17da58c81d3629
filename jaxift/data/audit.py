"""Mask audit: runs a dataset through tokenize+mask and checks, per example, the invariants a
template can break (DESIGN.md section 3). `jaxift/tools/inspect_batch.py --check` prints its table.

- `end_token`: every trained run of tokens (one per trained assistant turn) ends with exactly one
  end-of-turn token, and no other token of the run ends a turn; the runs match the trained turns.
- `trained_in_<role>`: no trained character inside a user, system or tool turn's text, or inside a
  tool's description (the tools preamble). Found on the decoded text: each message's text is
  searched in order after the previous one's, as a reader would find it.
- `prompt_prefix`: `tokenize.prompt_tokens` (what generation feeds the model) is exactly the
  training tokens before the last trained turn.
"""
import collections
import dataclasses

from jaxift.data import formats, pipeline, preference, sources, tokenize
from jaxift.data.formats import RecordError
from jaxift.data.stats import ALWAYS_COUNTED

INVARIANTS = ('end_token', 'trained_in_user', 'trained_in_system', 'trained_in_tool',
              'trained_in_tools_preamble', 'prompt_prefix')


@dataclasses.dataclass
class AuditReport:
  checked: int = 0  # examples tokenized and checked
  dropped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  violations: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  turns_dropped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  first: dict = dataclasses.field(default_factory=dict)  # kind -> 'file:line: detail'
  longer_than_max: int = 0  # checked examples longer than max_seq_length + 1 tokens (pre-policy)

  @property
  def ok(self) -> bool:
    return not self.violations

  def add(self, kind: str, where: str, detail: str) -> None:
    self.violations[kind] += 1
    self.first.setdefault(kind, f'{where}: {detail}')

  def table(self) -> str:
    kinds = list(INVARIANTS) + sorted(k for k in self.violations if k not in INVARIANTS)
    lines = [f'mask audit: {self.checked} examples checked, {sum(self.dropped.values())} dropped '
             f'({", ".join(f"{k} {v}" for k, v in sorted(self.dropped.items())) or "none"}); '
             'turns dropped from kept examples: '
             f'{", ".join(f"{k} {v}" for k, v in sorted(self.turns_dropped.items())) or "none"}; '
             f'{self.longer_than_max} longer than max_seq_length (data.overlong applies)',
             f'{"violation":<28} {"count":>7}  first',
             *(f'{k:<28} {self.violations[k]:>7}  {self.first.get(k, "")}' for k in kinds),
             'OK' if self.ok else f'FAILED: {sum(self.violations.values())} violations']
    return '\n'.join(lines)


def char_offsets(tokenizer, tokens: list[int]) -> tuple[str, list[int]]:
  """(decoded text, start offset of each token plus the end). Byte-level tokens that split a
  character are merged into their neighbours' offsets by decoding prefixes there."""
  pieces = tokenizer.batch_decode([[t] for t in tokens])
  text = tokenizer.decode(tokens)
  if ''.join(pieces) == text:
    offsets = [0]
    for p in pieces:
      offsets.append(offsets[-1] + len(p))
    return text, offsets
  offsets = [len(tokenizer.decode(tokens[:k])) for k in range(len(tokens) + 1)]
  return text, offsets


def _runs(weights: list[float]) -> list[tuple[int, int]]:
  runs, start = [], None
  for k, w in enumerate(weights + [0.0]):
    if w > 0 and start is None:
      start = k
    elif w <= 0 and start is not None:
      runs.append((start, k))
      start = None
  return runs


def _protected_spans(conv: formats.Conversation, text: str) -> list[tuple[str, int, int]]:
  spans, pos = [], 0
  for tool in conv.tools or ():
    desc = (tool.get('function', tool) or {}).get('description')
    j = text.find(desc) if isinstance(desc, str) and desc else -1
    if j >= 0:
      spans.append(('tools_preamble', j, j + len(desc)))
  for turn in conv.turns:
    body = turn.text.strip()
    j = text.find(body, pos) if body else -1
    if j < 0:
      continue
    pos = j + len(body)
    if turn.role != 'assistant':
      spans.append((turn.role, j, pos))
  return spans


def check_example(conv: formats.Conversation, tokens: list[int], weights: list[float],
                  prompt: list[int] | None, tokenizer) -> list[tuple[str, str]]:
  """(kind, detail) of each invariant this example breaks; weights are per token (1 = trained)."""
  found = []
  end_ids = tokenize.tokenizer_info(tokenizer).end_ids
  runs = _runs(weights)
  n_trained = sum(t.trainable for t in conv.turns)
  if len(runs) != n_trained:
    found.append(('end_token', f'{len(runs)} trained runs for {n_trained} trained turns'))
  for start, stop in runs:
    ends = [k for k in range(start, stop) if tokens[k] in end_ids]
    if ends != [stop - 1]:
      found.append(('end_token', f'trained run at tokens {start}..{stop - 1} has end-of-turn '
                                 f'tokens at {ends}'))
      break
  text, offsets = char_offsets(tokenizer, tokens)
  trained_chars = [(offsets[k], offsets[k + 1]) for k, w in enumerate(weights) if w > 0]
  for role, a, b in _protected_spans(conv, text):
    hit = next(((x, y) for x, y in trained_chars if x < b and a < y), None)
    if hit:
      found.append((f'trained_in_{role}', f'trained {text[hit[0]:hit[1]]!r} inside '
                                          f'{text[a:b][:40]!r}'))
  if prompt is not None and runs:
    k = runs[-1][0]
    if prompt != tokens[:k]:
      found.append(('prompt_prefix', f'prompt_tokens ({len(prompt)} tokens) differ from the '
                                     f'{k} training tokens before the last trained turn'))
  return found


def _audit_record(report: 'AuditReport', record, data_config, tokenizer, where: str) -> None:
  try:
    conv, tokens, weights = tokenize.encode_record(record, data_config, tokenizer, where)
  except RecordError as e:
    report.dropped[e.reason] += 1
    if e.reason not in ALWAYS_COUNTED and not data_config.skip_invalid:
      report.add(f'record_error/{e.reason}', where, str(e)[len(where) + 2:])
    return
  prompt = tokenize.prompt_tokens(record, data_config, tokenizer, where)
  report.checked += 1
  report.longer_than_max += len(tokens) > data_config.max_seq_length + 1
  report.turns_dropped.update(conv.notes)
  for kind, detail in check_example(conv, tokens, weights, prompt, tokenizer):
    report.add(kind, where, detail)


def run_audit(data_config, tokenizer, split: str = 'train', limit: int | None = None
              ) -> AuditReport:
  """Checks every record of a split (or the first `limit`), before the over-long policy."""
  report = AuditReport()
  records, invalid = sources.load_split(data_config, split)
  report.dropped.update(invalid)
  for where, record in records[:limit]:
    if isinstance(record, dict) and all(k in record for k in pipeline.PRETOKENIZED_KEYS):
      report.dropped['pretokenized_not_audited'] += 1  # jaxift/tools/preprocess.py rows: no text left
      continue
    try:  # a preference pair (data.pairs) audits its chosen and its rejected sequence
      sides = preference.split_pair(record, where) if data_config.get('pairs') else (record,)
    except RecordError as e:
      report.dropped[e.reason] += 1
      report.add(f'record_error/{e.reason}', where, str(e)[len(where) + 2:])
      continue
    for side in sides:
      _audit_record(report, side, data_config, tokenizer, where)
  return report
