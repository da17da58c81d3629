"""Tiny random decoders and hand-built packed/padded batches for the performance tests."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxift.model.config import ModelConfig
from jaxift.model.decoder import Decoder

# Llama-style, GQA (4 query heads on 2 kv heads), untied head so its gradient is separate.
TINY_HF = dict(model_type="llama", vocab_size=101, hidden_size=32, intermediate_size=48,
               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
               tie_word_embeddings=False, max_position_embeddings=512)


def tiny_decoder(seed: int = 0, **options) -> Decoder:
  cfg = ModelConfig.from_hf_dict({**TINY_HF, **options.pop("hf", {})})
  return Decoder(cfg, rngs=nnx.Rngs(seed), **options)


def contract_batch(rows: list[list[int]], seq_len: int, vocab: int, seed: int = 0):
  """A batch-contract dict from per-row segment lengths (1..k packed, then padding)."""
  rng = np.random.default_rng(seed)
  seg = np.zeros((len(rows), seq_len), np.int32)
  pos = np.zeros_like(seg)
  for r, lengths in enumerate(rows):
    start = 0
    for i, n in enumerate(lengths):
      seg[r, start:start + n] = i + 1
      pos[r, start:start + n] = np.arange(n)
      start += n
  inputs = rng.integers(0, vocab, seg.shape).astype(np.int32)
  targets = rng.integers(0, vocab, seg.shape).astype(np.int32)
  # Weights on the second half of each segment, like a response after a prompt.
  weights = ((seg > 0) & (pos >= 2)).astype(np.float32)
  return dict(inputs=inputs, targets=targets, weights=weights, segment_ids=seg, positions=pos)


@pytest.fixture
def qkv():
  """q [B, T, N, H], k/v [B, T, K, H] with GQA (N = 4, K = 2), and packed + padded segments."""
  def make(t: int = 256, h: int = 64, dtype=jnp.float32, seed: int = 0):
    keys = jax.random.split(jax.random.key(seed), 3)
    q = jax.random.normal(keys[0], (2, t, 4, h), dtype)
    k = jax.random.normal(keys[1], (2, t, 2, h), dtype)
    v = jax.random.normal(keys[2], (2, t, 2, h), dtype)
    seg = np.zeros((2, t), np.int32)
    seg[0, :t // 3], seg[0, t // 3:t - 20] = 1, 2  # two packed examples, then padding
    seg[1, :t - 7] = 1  # one example, then padding
    return q, k, v, jnp.asarray(seg)
  return make
