"""Dot-product attention behind one function, so faster kernels can be added by `impl` name.

The mask is the batch contract's: a query at slot `q_offset + t` sees key slot `s` iff `s <= q slot`,
both carry the same non-zero segment id, and (sliding window) `q slot - s < sliding_window`.
Slots are row indices: positions inside a packed row or a left-padded KV cache, both contiguous per
segment, so slot differences equal position differences within a segment.
"""
import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("auto", "xla", "cudnn", "splash")
_IMPLEMENTED = ("xla",)
_MASKED = -0.7 * float(jnp.finfo(jnp.float32).max)  # finite: fully masked rows stay NaN-free


def resolve_impl(name: str) -> str:
  """'auto' -> the best implemented kernel for the backend ('xla' everywhere for now)."""
  if name not in IMPLEMENTATIONS:
    raise ValueError(f"attention {name!r} is unknown; choose one of {', '.join(IMPLEMENTATIONS)}")
  if name == "auto":
    return "xla"
  if name not in _IMPLEMENTED:
    raise NotImplementedError(
        f"attention kernel {name!r} is not available in this jaxift build (implemented: "
        f"{', '.join(_IMPLEMENTED)}); set config.model.attention='auto' or 'xla'")
  return name


def attention_mask(q_segment_ids_BxT: jax.Array, kv_segment_ids_BxS: jax.Array, q_offset,
                   sliding_window: int | None = None) -> jax.Array:
  """Boolean [B, T, S]: causal over slots, equal non-zero segment ids, optional window."""
  t = q_segment_ids_BxT.shape[1]
  s = kv_segment_ids_BxS.shape[1]
  q_slot_T = q_offset + jnp.arange(t)
  kv_slot_S = jnp.arange(s)
  causal_TxS = kv_slot_S[None, :] <= q_slot_T[:, None]
  if sliding_window is not None:
    causal_TxS &= (q_slot_T[:, None] - kv_slot_S[None, :]) < sliding_window
  same_BxTxS = q_segment_ids_BxT[:, :, None] == kv_segment_ids_BxS[:, None, :]
  real_BxT = q_segment_ids_BxT != 0
  return causal_TxS[None] & same_BxTxS & real_BxT[:, :, None]


def attention(q_BxTxNxH: jax.Array, k_BxSxKxH: jax.Array, v_BxSxKxH: jax.Array, *,
              q_segment_ids_BxT: jax.Array, kv_segment_ids_BxS: jax.Array, q_offset=0,
              sliding_window: int | None = None, impl: str = "xla") -> jax.Array:
  """Grouped-query attention; returns [B, T, N, H] in the dtype of q. Softmax in float32."""
  impl = resolve_impl(impl)
  b, t, n, h = q_BxTxNxH.shape
  k_heads = k_BxSxKxH.shape[2]
  g = n // k_heads  # query heads per kv head: query head n uses kv head n // g (HF's repeat_kv)
  q_BxTxKxGxH = q_BxTxNxH.reshape(b, t, k_heads, g, h)
  scores_BxKxGxTxS = jnp.einsum("BTKGH,BSKH->BKGTS", q_BxTxKxGxH, k_BxSxKxH,
                                preferred_element_type=jnp.float32) * (h ** -0.5)
  mask_BxTxS = attention_mask(q_segment_ids_BxT, kv_segment_ids_BxS, q_offset, sliding_window)
  mask_Bx1x1xTxS = mask_BxTxS[:, None, None]
  scores_BxKxGxTxS = jnp.where(mask_Bx1x1xTxS, scores_BxKxGxTxS, _MASKED)
  probs_BxKxGxTxS = jax.nn.softmax(scores_BxKxGxTxS, axis=-1)
  # Padding queries see nothing: give them zeros rather than an average over masked keys.
  probs_BxKxGxTxS = jnp.where(mask_Bx1x1xTxS.any(-1, keepdims=True), probs_BxKxGxTxS, 0.0)
  out_BxTxKxGxH = jnp.einsum("BKGTS,BSKH->BTKGH", probs_BxKxGxTxS.astype(v_BxSxKxH.dtype),
                             v_BxSxKxH)
  return out_BxTxKxGxH.reshape(b, t, n, h).astype(q_BxTxNxH.dtype)
