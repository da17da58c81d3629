"""The bucketed KV cache of the sampler: growing the cache between decode segments gives exactly the
tokens of one cache allocated at full length, and of full uncached forwards."""
import jax
import numpy as np
import pytest
from flax import nnx

from jaxift.infer import sampler
from jaxift.model import attention
from jaxift.model.decoder import Decoder
from tests.infer.conftest import full_forward_logits
from tests.infer.stub_model import CountingModel, reference_continuation

PROMPTS = [[5, 6, 7], [1, 2, 3, 4, 5, 6, 7, 8, 9], [200], [17, 3]]


def test_ladder_ceil_is_the_smallest_power_of_two_or_three_halves_of_one():
  ladder = sorted({2 ** k for k in range(12)} | {3 * 2 ** k for k in range(11)})
  for n in range(1, 3000):
    assert sampler.ladder_ceil(n) == min(v for v in ladder if v >= n), n


def test_cache_lengths_grow_on_the_ladder_up_to_the_limit():
  # Prompt 64 slots, 256 new tokens: room for >= 32, then >= 2x the previous room, then 256.
  assert sampler.cache_lengths(64, 256, 32) == [96, 128, 192, 384]
  assert sampler.cache_lengths(48, 256, 32) == [96, 192, 384]
  assert sampler.cache_lengths(48, 48, 32) == [96]  # 48 + 48 fits the first length
  assert sampler.cache_lengths(8, 40, 4) == [12, 16, 24, 48]
  # Lengths come from one ladder whatever the prompt: prompts of 16 and 32 slots share the
  # decode shape 96 (so one compiled segment).
  assert sampler.cache_lengths(16, 64, 32) == [48, 96]
  assert sampler.cache_lengths(32, 64, 32) == [64, 96]
  with pytest.raises(ValueError, match="cache_bucket"):
    sampler.cache_lengths(8, 8, 0)


def test_stub_over_many_segments_matches_reference():
  """Four segments (cache lengths 12, 16, 24, 48 for an 8-slot prompt) of the counting stub
  against its Python rule."""
  stub = CountingModel()
  out = sampler.generate_tokens(stub, [[5], [1, 2, 3, 4, 5, 6, 7], [96, 95]], max_new_tokens=40,
                                prompt_bucket=8, cache_bucket=4)
  assert out == [reference_continuation(p, 40) for p in [[5], [1, 2, 3, 4, 5, 6, 7], [96, 95]]]


def _recomputed_greedy(model, prompt, n):
  seq = list(prompt)
  for _ in range(n):
    seq.append(int(np.argmax(full_forward_logits(model, seq)[-1])))
  return seq[len(prompt):]


def test_bucketed_decode_equals_full_cache_and_full_recompute(tiny_decoder):
  """Greedy, rows of different lengths: three segments (cache lengths 24, 32, 48 for a 16-slot
  prompt) vs one cache of 20 new slots vs argmax of full forwards."""
  n = 20
  bucketed = sampler.generate_tokens(tiny_decoder, PROMPTS, max_new_tokens=n, cache_bucket=3)
  full = sampler.generate_tokens(tiny_decoder, PROMPTS, max_new_tokens=n, cache_bucket=n)
  assert bucketed == full
  assert bucketed == [_recomputed_greedy(tiny_decoder, p, n) for p in PROMPTS]


def test_bucketed_decode_with_early_stops(tiny_decoder):
  """Rows stop in different segments (one in the prefill's bucket, one later, some never); every
  row is cut at its own first stop token, exactly as with the full-length cache."""
  n = 20
  free = sampler.generate_tokens(tiny_decoder, PROMPTS, max_new_tokens=n, cache_bucket=n)
  stop = {free[0][1], free[1][9]}  # row 0 stops by step 1, row 1 by step 9 (second segment)
  kwargs = dict(max_new_tokens=n, stop_token_ids=sorted(stop))
  bucketed = sampler.generate_tokens(tiny_decoder, PROMPTS, cache_bucket=3, **kwargs)
  full = sampler.generate_tokens(tiny_decoder, PROMPTS, cache_bucket=n, **kwargs)
  expected = []
  for row in free:
    cut = next((i for i, t in enumerate(row) if t in stop), len(row))
    expected.append(row[:cut])
  assert bucketed == full == expected
  assert len(bucketed[0]) <= 1 and len(bucketed[1]) <= 9


def test_all_rows_stopping_early_ends_generation(tiny_decoder):
  """Every row stops in the first segment: the output is cut there and nothing after it leaks."""
  free = sampler.generate_tokens(tiny_decoder, PROMPTS, max_new_tokens=16, cache_bucket=16)
  stop = sorted({row[0] for row in free})
  out = sampler.generate_tokens(tiny_decoder, PROMPTS, max_new_tokens=16, cache_bucket=2,
                                stop_token_ids=stop)
  assert out == [[] for _ in PROMPTS]


@pytest.mark.parametrize("window,softcap", [(None, None), (5, None), (None, 30.0)])
def test_cached_attention_equals_reference_kernel(window, softcap):
  """The kv-head-major cached attention (keys [B, K, H, S], values [B, K, S, H]) against
  `xla_attention` on slot-major keys and values: queries at
  slots 6..7 of a 12-slot cache, left padding, GQA with 2 query heads per kv head."""
  b, t, s, n, k, h = 2, 2, 12, 4, 2, 8
  rng = np.random.default_rng(0)
  q = rng.normal(size=(b, t, n, h)).astype(np.float32)
  keys = rng.normal(size=(b, s, k, h)).astype(np.float32)
  values = rng.normal(size=(b, s, k, h)).astype(np.float32)
  kv_seg = np.zeros((b, s), np.int32)
  kv_seg[0, :8] = 1
  kv_seg[1, 3:8] = 1  # row 1 left-padded
  q_seg = np.ones((b, t), np.int32)
  expected = attention.xla_attention(q, keys, values, q_segment_ids_BxT=q_seg,
                                     kv_segment_ids_BxS=kv_seg, q_offset=6,
                                     sliding_window=window, softcap=softcap)
  got = attention.cached_attention(q, keys.transpose(0, 2, 3, 1), values.transpose(0, 2, 1, 3),
                                   q_segment_ids_BxT=q_seg, kv_segment_ids_BxS=kv_seg, q_offset=6,
                                   sliding_window=window, softcap=softcap)
  np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-5, atol=1e-6)


@pytest.fixture
def take_rows_calls(monkeypatch):
  """Counts the sampler's batch shrinks (`_take_rows` calls) and the batch sizes they produce."""
  calls = []
  original = sampler._take_rows

  def spy(s, rows, filler):
    calls.append(len(rows))
    return original(s, rows, filler)
  monkeypatch.setattr(sampler, "_take_rows", spy)
  return calls


def test_stub_rows_that_stop_leave_the_batch(take_rows_calls):
  """Six rows stopping at different steps, checked every 2 steps: the batch shrinks (6 -> 2 -> 1
  rows still generating) and every row still equals its Python reference, cut at its stop."""
  stub = CountingModel()
  prompts = [[5], [1, 2, 3, 4, 5, 6, 7], [96, 95], [3], [40, 41], [8, 8, 8]]
  free = [reference_continuation(p, 30) for p in prompts]
  stop = frozenset({free[0][2], free[1][5], free[2][3], free[3][1], free[4][20]})
  expected = [reference_continuation(p, 30, stop=stop) for p in prompts]
  assert sorted(len(e) for e in expected)[-2:] != [30, 30]  # at most one row runs to the limit
  out = sampler.generate_tokens(stub, prompts, max_new_tokens=30, stop_token_ids=sorted(stop),
                                prompt_bucket=8, cache_bucket=4, check_every=2)
  assert out == expected
  assert take_rows_calls and all(n <= 3 for n in take_rows_calls), take_rows_calls


@pytest.mark.parametrize("layout", ["cpu", "stacked"])
def test_dropping_finished_rows_keeps_every_token(tiny_decoder, layout, take_rows_calls,
                                                   monkeypatch):
  """A real decoder (scanned weights; on the CPU decoded over per-layer slices and a per-layer
  cache, 'stacked': the scan and the stacked cache of accelerators): rows stopping at different
  steps give the same tokens whether finished rows leave the batch or stay in it, and the same as
  one full-length cache checked once."""
  scanned = Decoder(tiny_decoder.cfg, rngs=nnx.Rngs(0), scan_layers=True)
  # Weights far from init scale, so the next token depends on the whole cache, not mostly on the
  # last token: a row continuing on another row's cache then shows in its tokens.
  for _, var in nnx.to_flat_state(nnx.state(scanned, nnx.Param)):
    var.set_value(var[...] * 25.0)
  if layout == "stacked":
    monkeypatch.setattr(sampler, "_decode_layout", lambda m, batch: (False, False))
  n = 24
  free = sampler.generate_tokens(scanned, PROMPTS, max_new_tokens=n, cache_bucket=n,
                                 drop_finished=False)
  stop = sorted({free[0][1], free[1][4], free[3][6]} - set(free[2]))
  kwargs = dict(max_new_tokens=n, stop_token_ids=stop, cache_bucket=4, check_every=3)
  kept = sampler.generate_tokens(scanned, PROMPTS, drop_finished=False, **kwargs)
  assert not take_rows_calls
  dropped = sampler.generate_tokens(scanned, PROMPTS, **kwargs)
  assert take_rows_calls  # the batch of 4 did shrink
  once = sampler.generate_tokens(scanned, PROMPTS, max_new_tokens=n, stop_token_ids=stop,
                                 cache_bucket=n, check_every=n, drop_finished=False)
  assert dropped == kept == once
  assert len(dropped[2]) == n and min(len(row) for row in dropped) < n
