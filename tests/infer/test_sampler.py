"""Sampler mechanics (padding, cache slots, positions, stops) on a stub with a known next token."""
import numpy as np
import pytest

from jaxift.data import tokenize
from jaxift.infer import sampler
from tests.infer.conftest import full_forward_logits
from tests.infer.stub_model import CountingModel, reference_continuation

PROMPTS = [[5], [1, 2, 3, 4, 5, 6, 7], [10, 20, 30], [42, 0, 8, 9], [96, 95]]


@pytest.fixture(scope="module")
def stub():
  return CountingModel()


def test_left_pad_layout():
  tokens, positions, segments = sampler.left_pad([[7, 8], [1, 2, 3]], 4, pad_id=0)
  np.testing.assert_array_equal(tokens, [[0, 0, 7, 8], [0, 1, 2, 3]])
  np.testing.assert_array_equal(positions, [[0, 0, 0, 1], [0, 0, 1, 2]])
  np.testing.assert_array_equal(segments, [[0, 0, 1, 1], [0, 1, 1, 1]])


def test_batched_prompts_of_different_lengths_match_reference(stub):
  out = sampler.generate_tokens(stub, PROMPTS, max_new_tokens=12, prompt_bucket=8)
  assert out == [reference_continuation(p, 12) for p in PROMPTS]


def test_stop_tokens_end_each_row_independently(stub):
  full = [reference_continuation(p, 12) for p in PROMPTS]
  stop = {full[1][3], full[3][0]}  # row 1 stops after 3 tokens, row 3 at once
  out = sampler.generate_tokens(stub, PROMPTS, max_new_tokens=12, stop_token_ids=sorted(stop),
                                prompt_bucket=8)
  expected = [reference_continuation(p, 12, stop=frozenset(stop)) for p in PROMPTS]
  assert out == expected
  assert len(out[3]) == 0 and len(out[1]) <= 3


def test_seeded_sampling_is_reproducible_and_seed_dependent():
  import jax.numpy as jnp
  model = CountingModel()
  model.scale.value = jnp.float32(0.5)  # flat logits: samples really depend on the seed
  kwargs = dict(max_new_tokens=10, temperature=1.0, top_k=50, top_p=0.95)
  a = sampler.generate_tokens(model, PROMPTS, seed=1, **kwargs)
  b = sampler.generate_tokens(model, PROMPTS, seed=1, **kwargs)
  c = sampler.generate_tokens(model, PROMPTS, seed=2, **kwargs)
  assert a == b and a != c


def test_stop_strings_and_default_stop_ids(gpt2_tokenizer):
  assert sampler.trim_at_stop_strings("The answer is 4.\n### Instruction: x", ["###", "\n\n"]) == \
      "The answer is 4.\n"
  assert sampler.trim_at_stop_strings("no stop here", ["###"]) == "no stop here"
  assert tokenize.stop_token_ids(gpt2_tokenizer) == [50256]


def test_bad_arguments(stub):
  with pytest.raises(ValueError, match="prompt 1 is empty"):
    sampler.generate_tokens(stub, [[1], []], max_new_tokens=4)
  with pytest.raises(ValueError, match="max_new_tokens"):
    sampler.generate_tokens(stub, [[1]], max_new_tokens=0)


def test_cached_greedy_matches_full_recompute_on_a_real_decoder(tiny_decoder):
  """The KV-cache path against argmax of full uncached forwards, token by token."""
  prompts = [[5, 6, 7], [1, 2, 3, 4, 5, 6, 7, 8, 9], [200]]
  out = sampler.generate_tokens(tiny_decoder, prompts, max_new_tokens=8)
  for prompt, got in zip(prompts, out):
    seq = list(prompt)
    for _ in range(8):
      seq.append(int(np.argmax(full_forward_logits(tiny_decoder, seq)[-1])))
    assert got == seq[len(prompt):]
