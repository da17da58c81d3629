"""A model with the Decoder's cache interface whose next token is a known function of its context.

next token = (sum of the token ids it attends to + 3 * its position) % vocab, where it attends to
cache slots <= its own with its own non-zero segment id. A pure-Python reference of that rule
checks the sampler's left padding, cache slots, segment ids and positions without a real model.
"""
import jax
import jax.numpy as jnp
from flax import nnx


class CountingModel(nnx.Module):

  def __init__(self, vocab: int = 97):
    self.vocab = vocab
    self.scale = nnx.Param(jnp.float32(20.0))  # sharp logits: sampling is near-deterministic

  def init_cache(self, batch: int, max_len: int):
    return {"tokens": jnp.zeros((batch, max_len), jnp.int32),
            "segments": jnp.zeros((batch, max_len), jnp.int32)}

  def forward_with_cache(self, inputs_BxT, positions_BxT, segment_ids_BxT, cache, cache_index, *,
                         last_logits_only: bool = False):
    tokens_BxL = jax.lax.dynamic_update_slice(cache["tokens"], inputs_BxT, (0, cache_index))
    segments_BxL = jax.lax.dynamic_update_slice(cache["segments"], segment_ids_BxT,
                                                (0, cache_index))
    T, L = inputs_BxT.shape[1], tokens_BxL.shape[1]
    query_slot_T = cache_index + jnp.arange(T)
    attend_BxTxL = ((jnp.arange(L)[None, None, :] <= query_slot_T[None, :, None])
                    & (segments_BxL[:, None, :] == segment_ids_BxT[:, :, None])
                    & (segment_ids_BxT[:, :, None] != 0))
    total_BxT = jnp.sum(jnp.where(attend_BxTxL, tokens_BxL[:, None, :], 0), axis=-1)
    next_BxT = (total_BxT + 3 * positions_BxT) % self.vocab
    logits = jax.nn.one_hot(next_BxT, self.vocab) * self.scale.value
    if last_logits_only:
      logits = logits[:, -1:]
    return logits, {"tokens": tokens_BxL, "segments": segments_BxL}


def reference_continuation(prompt: list[int], n: int, vocab: int = 97,
                           stop: frozenset = frozenset()) -> list[int]:
  seq, out = list(prompt), []
  for _ in range(n):
    token = (sum(seq) + 3 * (len(seq) - 1)) % vocab
    if token in stop:
      break
    seq.append(token)
    out.append(token)
  return out
