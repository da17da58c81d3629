"""Logit filters against hand-worked distributions and transformers' logits warpers."""
import numpy as np
import jax
import jax.numpy as jnp

from jaxift.infer import sampling


def _kept(logits_BxV) -> list[list[int]]:
  return [sorted(np.flatnonzero(np.isfinite(row)).tolist()) for row in np.asarray(logits_BxV)]


def test_top_k_keeps_k_largest_per_row():
  logits = jnp.array([[0.1, 3.0, 2.0, -1.0], [5.0, 4.0, 3.0, 2.0]])
  assert _kept(sampling.top_k_filter(logits, 2)) == [[1, 2], [0, 1]]
  assert _kept(sampling.top_k_filter(logits, 0)) == [[0, 1, 2, 3]] * 2  # 0 disables
  assert _kept(sampling.top_k_filter(logits, 10)) == [[0, 1, 2, 3]] * 2  # k > vocab keeps all


def test_top_p_keeps_the_smallest_nucleus():
  # probabilities 0.05, 0.5, 0.12, 0.33: sorted mass 0.5, 0.83, 0.95, 1.0
  logits = jnp.log(jnp.array([[0.05, 0.5, 0.12, 0.33]]))
  assert _kept(sampling.top_p_filter(logits, 0.4)) == [[1]]
  assert _kept(sampling.top_p_filter(logits, 0.7)) == [[1, 3]]    # 0.5 < 0.7: 0.33 crosses it
  assert _kept(sampling.top_p_filter(logits, 0.9)) == [[1, 2, 3]]
  assert _kept(sampling.top_p_filter(logits, 1.0)) == [[0, 1, 2, 3]]
  assert _kept(sampling.top_p_filter(logits, 0.0)) == [[1]]      # the top token always survives


def test_filters_match_transformers_warpers():
  import torch
  from transformers.generation.logits_process import (TemperatureLogitsWarper, TopKLogitsWarper,
                                                      TopPLogitsWarper)
  logits = np.random.default_rng(0).normal(size=(3, 50)).astype(np.float32) * 3
  ours = sampling.filter_logits(jnp.asarray(logits), temperature=0.7, top_k=20, top_p=0.8)
  ref = torch.from_numpy(logits)
  for warper in (TemperatureLogitsWarper(0.7), TopKLogitsWarper(20), TopPLogitsWarper(0.8)):
    ref = warper(None, ref)
  np.testing.assert_array_equal(np.isfinite(np.asarray(ours)), np.isfinite(ref.numpy()))
  finite = np.isfinite(ref.numpy())
  np.testing.assert_allclose(np.asarray(ours)[finite], ref.numpy()[finite], rtol=1e-6)


def test_sampling_follows_the_filtered_distribution():
  logits = jnp.log(jnp.array([[0.1, 0.6, 0.3]]))
  rngs = jax.random.split(jax.random.key(0), 4000)
  draw = jax.vmap(lambda r: sampling.select_next(logits, r, greedy=False, temperature=1.0,
                                                 top_k=2, top_p=1.0)[0])
  counts = np.bincount(np.asarray(draw(rngs)), minlength=3) / 4000
  assert counts[0] == 0.0  # filtered out by top-k
  np.testing.assert_allclose(counts[1:], [2 / 3, 1 / 3], atol=0.03)
  greedy = sampling.select_next(logits, rngs[0], greedy=True)
  assert greedy.tolist() == [1]
