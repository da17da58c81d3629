"""The KV cache for generation: a plain dict pytree, so it passes through jit and while_loop.

  k, v         [layers, batch, max_len, kv_heads, head_dim]  (compute dtype)
  segment_ids  [batch, max_len] int32: the segment id written at each slot, 0 = empty/padding
"""
import jax
import jax.numpy as jnp

# Logical axes of each cache entry, for sharding it like the activations.
CACHE_LOGICAL_AXES = {
    "k": ("layers", "batch", None, "kv_heads", "head_dim"),
    "v": ("layers", "batch", None, "kv_heads", "head_dim"),
    "segment_ids": ("batch", None),
}


def init_cache(cfg, batch: int, max_len: int, dtype=jnp.float32) -> dict[str, jax.Array]:
  """An empty cache: every slot has segment id 0, so nothing in it is attended to yet."""
  shape = (cfg.num_hidden_layers, batch, max_len, cfg.num_key_value_heads, cfg.head_dim)
  return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype),
          "segment_ids": jnp.zeros((batch, max_len), jnp.int32)}
