"""The KV cache for generation, as typed pytrees (they pass through jit, scan and while_loop).

`KVCache` is what a caller holds between calls; `LayerCache` is one forward's view of it while the
layers run: the same stacked arrays plus the first slot this call writes and the layer index.
"""
from typing import Any

from flax import struct
import jax
import jax.numpy as jnp

# Logical axes of each cache field, for sharding it like the activations. Keys and values are kept
# kv-head-major ([..., kv_heads, slots, head_dim]): a decode step's attention is then a batched
# matmul over (batch, kv_heads) that reads the cache where it lies; slot-major storage made XLA
# transpose (copy) each layer's whole cache at every step.
CACHE_LOGICAL_AXES = {
    "k": ("layers", "batch", "kv_heads", None, "head_dim"),
    "v": ("layers", "batch", "kv_heads", None, "head_dim"),
    "segment_ids": ("batch", None),
}


@struct.dataclass
class KVCache:
  k: jax.Array  # [layers, batch, kv_heads, max_len, head_dim], the compute dtype
  v: jax.Array  # [layers, batch, kv_heads, max_len, head_dim]
  segment_ids: jax.Array  # [batch, max_len] int32: the segment id written at each slot, 0 = empty

  @classmethod
  def empty(cls, cfg: Any, batch: int, max_len: int, dtype=jnp.float32) -> "KVCache":
    """Every slot has segment id 0, so nothing in it is attended to yet."""
    shape = (cfg.num_hidden_layers, batch, cfg.num_key_value_heads, max_len, cfg.head_dim)
    return cls(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype),
               segment_ids=jnp.zeros((batch, max_len), jnp.int32))


@struct.dataclass
class LayerCache:
  """The cache during one forward: new tokens are written at slots `index .. index+T-1` of layer
  `layer`; `segment_ids` already holds the new tokens' segment ids (every layer attends to them)."""
  k: jax.Array
  v: jax.Array
  segment_ids: jax.Array
  index: jax.Array  # int32 scalar: the first slot this call writes
  layer: Any  # int (unrolled layers) or int32 scalar (scanned layers)

  def write(self, k_BxTxKxH: jax.Array, v_BxTxKxH: jax.Array) -> "LayerCache":
    start = (self.layer, 0, 0, self.index, 0)
    k_1xBxKxTxH = k_BxTxKxH.transpose(0, 2, 1, 3)[None].astype(self.k.dtype)
    v_1xBxKxTxH = v_BxTxKxH.transpose(0, 2, 1, 3)[None].astype(self.v.dtype)
    return self.replace(k=jax.lax.dynamic_update_slice(self.k, k_1xBxKxTxH, start),
                        v=jax.lax.dynamic_update_slice(self.v, v_1xBxKxTxH, start))

  def keys_values(self, dtype) -> tuple[jax.Array, jax.Array]:
    """This layer's keys and values over every slot, [batch, kv_heads, max_len, head_dim]."""
    return (jax.lax.dynamic_index_in_dim(self.k, self.layer, 0, keepdims=False).astype(dtype),
            jax.lax.dynamic_index_in_dim(self.v, self.layer, 0, keepdims=False).astype(dtype))
