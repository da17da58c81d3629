"""The KV cache for generation, as typed pytrees (they pass through jit, scan and while_loop).

`KVCache` is what a caller holds between calls; `LayerCache` is one forward's view of it while the
layers run: the same stacked arrays plus the first slot this call writes and the layer index.
"""
from typing import Any

from flax import struct
import jax
import jax.numpy as jnp

# Logical axes of each cache field, for sharding it like the activations. Keys and values are kept
# kv-head-major, keys transposed ([..., kv_heads, head_dim, slots]) and values not ([..., kv_heads,
# slots, head_dim]): both attention products of a decode step are then plain batched matmuls over
# (batch, kv_heads) whose right operand is read where it lies, [head_dim, slots] for the scores and
# [slots, head_dim] for the output. Slot-major storage made XLA transpose (copy) each layer's whole
# cache at every step; keys stored [slots, head_dim] made XLA:CPU's scores product 2.6x slower at
# batch 32 and 384 slots (docs/benchmarks.md, "Decode speed v3").
CACHE_LOGICAL_AXES = {
    "k": ("layers", "batch", "kv_heads", "head_dim", None),
    "v": ("layers", "batch", "kv_heads", None, "head_dim"),
    "segment_ids": ("batch", None),
}


@struct.dataclass
class KVCache:
  k: Any  # [layers, batch, kv_heads, head_dim, max_len] in the compute dtype, or per layer (a
  v: Any  # tuple) [batch, kv_heads, head_dim, max_len]; v: [..., max_len, head_dim]
  segment_ids: jax.Array  # [batch, max_len] int32: the segment id written at each slot, 0 = empty

  @classmethod
  def empty(cls, cfg: Any, batch: int, max_len: int, dtype=jnp.float32) -> "KVCache":
    """Every slot has segment id 0, so nothing in it is attended to yet."""
    shape = (cfg.num_hidden_layers, batch, cfg.num_key_value_heads, max_len, cfg.head_dim)
    return cls(k=jnp.zeros(shape[:3] + (cfg.head_dim, max_len), dtype), v=jnp.zeros(shape, dtype),
               segment_ids=jnp.zeros((batch, max_len), jnp.int32))

  @property
  def is_per_layer(self) -> bool:
    return isinstance(self.k, tuple)

  def per_layer(self) -> "KVCache":
    """The same cache as one key and one value array per layer: layers that run one after
    another (unrolled, or `Decoder.unstacked_layers`) then read and update their own arrays in
    place, where slicing a layer out of the stacked arrays copied its cache at every decode step
    (XLA:CPU; a third of the attention time at batch 32)."""
    if self.is_per_layer:
      return self
    return self.replace(k=tuple(self.k), v=tuple(self.v))


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
    k_BxKxHxT = k_BxTxKxH.transpose(0, 2, 3, 1)
    v_BxKxTxH = v_BxTxKxH.transpose(0, 2, 1, 3)
    if isinstance(self.k, tuple):  # per layer: `layer` is a Python int
      def put(arrays, new, start):
        updated = jax.lax.dynamic_update_slice(arrays[self.layer],
                                               new.astype(arrays[self.layer].dtype), start)
        return arrays[:self.layer] + (updated,) + arrays[self.layer + 1:]
      return self.replace(k=put(self.k, k_BxKxHxT, (0, 0, 0, self.index)),
                          v=put(self.v, v_BxKxTxH, (0, 0, self.index, 0)))
    return self.replace(
        k=jax.lax.dynamic_update_slice(self.k, k_BxKxHxT[None].astype(self.k.dtype),
                                       (self.layer, 0, 0, 0, self.index)),
        v=jax.lax.dynamic_update_slice(self.v, v_BxKxTxH[None].astype(self.v.dtype),
                                       (self.layer, 0, 0, self.index, 0)))

  def keys_values(self, dtype) -> tuple[jax.Array, jax.Array]:
    """This layer's keys [batch, kv_heads, head_dim, max_len] and values [batch, kv_heads,
    max_len, head_dim] over every slot."""
    if isinstance(self.k, tuple):
      return self.k[self.layer].astype(dtype), self.v[self.layer].astype(dtype)
    return (jax.lax.dynamic_index_in_dim(self.k, self.layer, 0, keepdims=False).astype(dtype),
            jax.lax.dynamic_index_in_dim(self.v, self.layer, 0, keepdims=False).astype(dtype))
