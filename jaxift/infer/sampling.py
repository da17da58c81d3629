"""Next-token selection: greedy, temperature, top-k and top-p (nucleus) filtering.

Pure functions of `logits_BxV`, usable inside `jax.jit` and `lax.while_loop`. Filters replace
excluded logits with -inf, so `jax.random.categorical` never picks them. The conventions follow
`transformers`' logits warpers: temperature first, then top-k, then top-p; top-p keeps the smallest
set of most likely tokens whose probability mass reaches `p` (the token that crosses `p` is kept).
"""
import jax
import jax.numpy as jnp

NEG_INF = -jnp.inf


def apply_temperature(logits_BxV: jax.Array, temperature: float | jax.Array) -> jax.Array:
  return logits_BxV / jnp.asarray(temperature, logits_BxV.dtype)


def top_k_filter(logits_BxV: jax.Array, k: int | jax.Array) -> jax.Array:
  """Keeps the k largest logits per row (ties with the k-th value are kept too); k <= 0 keeps all.

  `k` may be traced: the threshold is read from a full descending sort instead of `lax.top_k`,
  whose k must be static.
  """
  vocab = logits_BxV.shape[-1]
  k = jnp.asarray(k, jnp.int32)
  sorted_BxV = -jnp.sort(-logits_BxV, axis=-1)
  kth_B1 = jax.lax.dynamic_index_in_dim(sorted_BxV, jnp.clip(k - 1, 0, vocab - 1), axis=-1)
  filtered = jnp.where(logits_BxV < kth_B1, NEG_INF, logits_BxV)
  return jnp.where(k > 0, filtered, logits_BxV)


def top_p_filter(logits_BxV: jax.Array, p: float | jax.Array) -> jax.Array:
  """Nucleus filter: drops the least likely tokens whose cumulative probability is <= 1 - p.

  Same rule as transformers' TopPLogitsWarper (ascending sort, remove cumsum <= 1 - p), so the most
  likely token always survives and p >= 1 keeps everything.
  """
  p = jnp.asarray(p, jnp.float32)
  ascending_BxV = jnp.sort(logits_BxV, axis=-1)
  cumulative_BxV = jnp.cumsum(jax.nn.softmax(ascending_BxV.astype(jnp.float32), axis=-1), axis=-1)
  removed_BxV = cumulative_BxV <= (1.0 - p)
  removed_BxV = removed_BxV.at[:, -1].set(False)  # the most likely token is never removed
  # The threshold is the smallest kept logit; everything strictly below it goes.
  threshold_B1 = jnp.min(jnp.where(removed_BxV, jnp.inf, ascending_BxV), axis=-1, keepdims=True)
  filtered = jnp.where(logits_BxV < threshold_B1, NEG_INF, logits_BxV)
  return jnp.where(p < 1.0, filtered, logits_BxV)


def filter_logits(logits_BxV: jax.Array, *, temperature, top_k, top_p) -> jax.Array:
  logits_BxV = apply_temperature(logits_BxV.astype(jnp.float32), temperature)
  logits_BxV = top_k_filter(logits_BxV, top_k)
  return top_p_filter(logits_BxV, top_p)


def select_next(logits_BxV: jax.Array, rng: jax.Array, *, greedy: bool, temperature=1.0,
                top_k=0, top_p=1.0) -> jax.Array:
  """Next token ids `[B]`. `greedy` is static: greedy decoding skips the sorts entirely."""
  if greedy:
    return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
  filtered_BxV = filter_logits(logits_BxV, temperature=temperature, top_k=top_k, top_p=top_p)
  return jax.random.categorical(rng, filtered_BxV, axis=-1).astype(jnp.int32)
