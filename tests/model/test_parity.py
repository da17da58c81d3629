"""Logit parity with transformers (PyTorch, CPU, float32) for every family, on padded and packed
batches: each example's logits must equal what transformers gives that example alone."""
import numpy as np
import pytest

from jaxift.model.loading import load_model
from tests.model.conftest import FAMILY_CASES, jax_logits, random_examples, torch_logits

TOL = 1e-4
LENGTHS = (5, 9, 3)  # 9 > mistral's sliding window of 4, so the window matters
T = 12


def _padded_batch(examples):
  """Row 0 right-padded (training), row 1 left-padded (generation prompts), row 2 right-padded."""
  b = len(examples)
  tokens, positions, segments = (np.zeros((b, T), np.int32) for _ in range(3))
  for row, ex in enumerate(examples):
    start = T - len(ex) if row == 1 else 0
    tokens[row, start:start + len(ex)] = ex
    positions[row, start:start + len(ex)] = np.arange(len(ex))
    segments[row, start:start + len(ex)] = 1
  tokens[segments == 0] = 7  # padding ids must not matter
  return tokens, positions, segments, [T - len(ex) if row == 1 else 0
                                       for row, ex in enumerate(examples)]


def _packed_row(examples):
  length = sum(map(len, examples)) + 2
  tokens, positions, segments = (np.zeros((1, length), np.int32) for _ in range(3))
  starts, cursor = [], 0
  for k, ex in enumerate(examples, start=1):
    tokens[0, cursor:cursor + len(ex)] = ex
    positions[0, cursor:cursor + len(ex)] = np.arange(len(ex))
    segments[0, cursor:cursor + len(ex)] = k
    starts.append(cursor)
    cursor += len(ex)
  return tokens, positions, segments, starts


@pytest.mark.parametrize("case", sorted(FAMILY_CASES))
def test_logits_match_transformers_padded_and_packed(case, tiny_checkpoint):
  directory, torch_model = tiny_checkpoint(case)
  model, cfg = load_model(directory)
  assert cfg.model_type == torch_model.config.model_type
  examples = random_examples(sum(map(ord, case)), LENGTHS)
  refs = [torch_logits(torch_model, ex) for ex in examples]

  tokens, positions, segments, starts = _padded_batch(examples)
  logits = jax_logits(model, tokens, positions, segments)
  assert logits.dtype == np.float32
  padded_diff = max(np.abs(logits[row, s:s + len(ex)] - ref).max()
                    for row, (ex, ref, s) in enumerate(zip(examples, refs, starts)))

  tokens, positions, segments, starts = _packed_row(examples)
  logits = jax_logits(model, tokens, positions, segments)[0]
  packed_diff = max(np.abs(logits[s:s + len(ex)] - ref).max()
                    for ex, ref, s in zip(examples, refs, starts))
  print(f"{case}: max |logit diff| padded {padded_diff:.2e} packed {packed_diff:.2e}")
  assert padded_diff <= TOL, padded_diff
  assert packed_diff <= TOL, packed_diff


def test_mistral_window_is_applied(tiny_checkpoint):
  """The sliding window changes the logits past it (so the parity above really checks it)."""
  import dataclasses
  from flax import nnx
  from jaxift.model.decoder import Decoder
  directory, _ = tiny_checkpoint("mistral_window")
  model, cfg = load_model(directory)
  abstract = nnx.eval_shape(lambda: Decoder(dataclasses.replace(cfg, sliding_window=None),
                                            rngs=nnx.Rngs(0)))
  unwindowed = nnx.merge(nnx.split(abstract)[0], nnx.state(model))  # same weights, no window
  ex = random_examples(3, (9,))[0]
  args = (np.array([ex]), np.arange(9)[None], np.ones((1, 9), np.int32))
  a, b = jax_logits(model, *args)[0], jax_logits(unwindowed, *args)[0]
  np.testing.assert_allclose(a[:4], b[:4], atol=1e-6)  # within the window: identical
  assert np.abs(a[4:] - b[4:]).max() > 1e-3
