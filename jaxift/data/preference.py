"""Preference pairs (DPO, ORPO, SimPO): a record with a `chosen` and a `rejected` response -> two
sequences tokenized by exactly the SFT rules, kept together through padding, bucketing and packing.

Record shapes (`data.pairs = True`):
- Alpaca: `{instruction, input, chosen, rejected}` ("LLMs from scratch" chapter 7's
  instruction-data-with-preference.json; an `output` key is ignored). Each side is the Alpaca
  record with that response as its output, through any template.
- Chat: `prompt` (a string, or a list of messages) plus `chosen` and `rejected`, each a string (one
  assistant reply), a message dict or a list of messages (TRL's conversational preference format);
  without `prompt`, `chosen` and `rejected` are whole conversations. Each side is the
  conversation prompt + response, through the configured template (e.g. 'tokenizer').

Both sides go through `tokenize.tokenize_record_with_notes`: the same masking rules (only the
response and its end token are trained), the same over-long policy. A pair where either side is
dropped is dropped whole, counted under the side's reason (one count per pair).

The batch contract for pairs (docs/design.md): `batch_size` counts pairs and a batch has 2 *
batch_size rows; row 2i holds chosen sequences, row 2i+1 the rejected sequences of the same pairs,
and a pair is the same segment id in both rows. Padding and bucketing put one pair in a row pair
(segment id 1 in both rows); packing packs pairs into row pairs with Grain's packer over the
chosen and rejected features at once, so the k-th pair of a bin has segment id k in both rows.
"""
from typing import Any

import grain
import numpy as np

from jaxift.data import batching, tokenize
from jaxift.data.formats import RecordError

SIDES = ('chosen', 'rejected')
FEATURES = ('inputs', 'targets', 'weights', 'positions')


def split_pair(record: Any, where: str = 'record') -> tuple[dict, dict]:
  """A preference record -> (chosen record, rejected record), each an SFT record of the same
  prompt; a clear RecordError naming `where` when the record is not a preference pair."""
  if not isinstance(record, dict):
    raise RecordError(f'{where}: a preference record must be a JSON object, got '
                      f'{type(record).__name__}')
  missing = [k for k in SIDES if k not in record]
  if missing:
    raise RecordError(f'{where}: a preference record needs {missing} (data.pairs=True: '
                      f'"chosen" and "rejected"); the record has keys {sorted(record)}',
                      reason='missing_key')
  if 'instruction' in record:  # Alpaca shape
    base = {k: v for k, v in record.items() if k not in SIDES}
    return tuple({**base, 'output': record[side]} for side in SIDES)  # type: ignore[return-value]
  prompt = record.get('prompt')
  if isinstance(prompt, str):
    prompt = [{'role': 'user', 'content': prompt}]
  elif isinstance(prompt, dict):
    prompt = [prompt]
  elif prompt is not None and not isinstance(prompt, list):
    raise RecordError(f'{where}: "prompt" must be a string or a list of messages, got '
                      f'{type(prompt).__name__}')
  out = []
  for side in SIDES:
    value = record[side]
    if isinstance(value, str):
      value = [{'role': 'assistant', 'content': value}]
    elif isinstance(value, dict):
      value = [value]
    elif not isinstance(value, list):
      raise RecordError(f'{where}: "{side}" must be a string, a message or a list of messages, '
                        f'got {type(value).__name__}')
    extra = {k: v for k, v in record.items() if k not in SIDES + ('prompt',)}
    out.append({**extra, 'messages': list(prompt or []) + list(value)})
  return out[0], out[1]


def tokenize_pair_with_notes(record: Any, cfg, tokenizer, where: str = 'record'):
  """(pair example, notes): the flat dict `chosen/<feature>`, `rejected/<feature>` of the two
  shifted examples (plus `weights`, both sides' weights, for the pipeline's counts)."""
  chosen, rejected = split_pair(record, where)
  ex: dict[str, np.ndarray] = {}
  notes: dict[str, int] = {}
  for side, rec in zip(SIDES, (chosen, rejected)):
    try:
      one, side_notes = tokenize.tokenize_record_with_notes(rec, cfg, tokenizer, where)
    except RecordError as e:
      raise RecordError(f'{e} (the {side} response; the pair is dropped whole)',
                        reason=e.reason) from None
    for k, v in side_notes.items():
      notes[k] = notes.get(k, 0) + v
    ex.update({f'{side}/{k}': one[k] for k in FEATURES})
  ex['weights'] = np.concatenate([ex['chosen/weights'], ex['rejected/weights']])
  return ex, notes


def _side(ex: dict[str, np.ndarray], side: str) -> dict[str, np.ndarray]:
  return {k: ex[f'{side}/{k}'] for k in FEATURES}


def pair_length(ex: dict[str, np.ndarray]) -> int:
  return max(len(ex['chosen/inputs']), len(ex['rejected/inputs']))


def pad_pair(ex: dict[str, np.ndarray], length: int, pad_id: int) -> dict[str, np.ndarray]:
  """One pair -> [2, length] rows (chosen, rejected), each padded as `batching.pad_example`."""
  rows = [batching.pad_example(_side(ex, side), length, pad_id) for side in SIDES]
  return {k: np.stack([r[k] for r in rows]) for k in batching.KEYS}


def interleave(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """[B, 2, T] pair rows -> [2B, T]: row 2i chosen, row 2i+1 rejected."""
  return {k: v.reshape(-1, *v.shape[2:]) for k, v in batch.items()}


def make_bucket_batch_fn(buckets, pad_id: int):
  """Pads a list of pairs to the smallest bucket holding the longest side of any of them."""
  def batch_fn(pairs):
    length = batching.bucket_length(max(pair_length(p) for p in pairs), buckets)
    return interleave({k: np.stack([pad_pair(p, length, pad_id)[k] for p in pairs])
                       for k in batching.KEYS})
  return batch_fn


def pack_pairs(ds: grain.IterDataset, length: int, num_bins: int, pad_id: int, seed: int,
               algorithm: str = 'first_fit') -> grain.IterDataset:
  """Packs pairs into row pairs: Grain's packer sees the chosen and rejected features of a pair
  as one element, so a pair goes into a bin only where both sides fit, and the k-th pair of a bin
  has segment id k in the chosen row and in the rejected row."""
  if algorithm not in batching.PACKERS:
    raise ValueError(f'data.packing_algorithm={algorithm!r}; expected one of '
                     f'{sorted(batching.PACKERS)}')
  features = [f'{side}/{k}' for side in SIDES for k in ('inputs', 'targets', 'weights')]
  ds = ds.map(lambda ex: {k: ex[k] for k in features})
  padding = {f: (0 if f.endswith('weights') else pad_id) for f in features}
  ds = batching.PACKERS[algorithm](
      ds, length_struct={f: length for f in features}, num_packing_bins=num_bins, seed=seed,
      shuffle_bins=False, padding_struct=padding)

  def to_rows(row):
    out = {}
    for key, dtype in batching.DTYPES.items():
      sides = []
      for side in SIDES:
        if key == 'segment_ids':
          value = row[f'{side}/inputs_segment_ids']
        elif key == 'positions':
          value = row[f'{side}/inputs_positions']
        else:
          value = row[f'{side}/{key}']
        sides.append(np.asarray(value).astype(dtype))
      out[key] = np.stack(sides)
    return out
  return ds.map(to_rows)


def batch_pairs(ds: grain.IterDataset, cfg, batch_size: int, pad_id: int,
                seed: int) -> grain.IterDataset:
  """Tokenized pairs -> batches of `batch_size` pairs, [2 * batch_size, T] rows (interleaved),
  by data.batching; a last partial batch is filled with all-zero-weight rows."""
  length = cfg.max_seq_length
  if cfg.batching == 'max_length':
    ds = ds.map(lambda ex: pad_pair(ex, length, pad_id)).batch(batch_size).map(interleave)
  elif cfg.batching == 'bucket':
    ds = ds.batch(batch_size, batch_fn=make_bucket_batch_fn(batching.bucket_lengths(cfg), pad_id))
  elif cfg.batching == 'packing':
    bins = cfg.packing_bins or 4 * batch_size
    ds = pack_pairs(ds, length, bins, pad_id, seed,
                    algorithm=cfg.get('packing_algorithm', 'first_fit'))
    ds = ds.batch(batch_size).map(interleave)
  else:
    raise ValueError(f"data.batching={cfg.batching!r}; expected 'max_length', 'bucket' or "
                     "'packing'")
  return ds.map(lambda b: batching.fill_batch(b, 2 * batch_size))
