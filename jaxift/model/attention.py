"""Dot-product attention behind one function; the kernel is chosen by `impl` name.

The mask is the batch contract's: a query at slot `q_offset + t` sees key slot `s` iff `s <= q slot`,
both carry the same non-zero segment id, and (sliding window) `q slot - s < sliding_window`.
Slots are row indices: positions inside a packed row or a left-padded KV cache, both contiguous per
segment, so slot differences equal position differences within a segment.

Kernels (`attention_kernels.py` holds the fused ones):
  xla     the reference below, every backend.
  cudnn   cuDNN flash attention via `jax.nn.dot_product_attention` (NVIDIA GPUs, bf16/fp16).
  splash  the Pallas splash-attention kernel with segment ids (TPUs).
  auto    per call: splash on TPU, cudnn on GPU, xla elsewhere; when the chosen kernel cannot take
          a call (dtype, shape, cached decoding) it falls back to xla with one log line.
An explicitly named kernel that the backend lacks is an error at model construction; one that
cannot take a call's dtype/shape is an error at trace time, except cached decoding, which always
uses xla (the fused kernels here are for training and full forwards).
"""
import jax
import jax.numpy as jnp

from jaxift.model import attention_kernels as kernels

IMPLEMENTATIONS = ("auto", "xla", "cudnn", "splash")
_NEEDS = {"cudnn": "an NVIDIA GPU with cuDNN", "splash": "a TPU"}
_MASKED = -0.7 * float(jnp.finfo(jnp.float32).max)  # finite: fully masked rows stay NaN-free


def resolve_impl(name: str) -> str:
  """Checks `name` against this backend: 'auto' stays 'auto' (chosen per call, see `choose`)."""
  if name not in IMPLEMENTATIONS:
    raise ValueError(f"attention {name!r} is unknown; choose one of {', '.join(IMPLEMENTATIONS)}")
  if name in _NEEDS and not kernels.available(name):
    raise NotImplementedError(
        f"attention kernel {name!r} is not available on this backend "
        f"({kernels.backend_name()}): it needs {_NEEDS[name]}; "
        "set config.model.attention='auto' or 'xla'")
  return name


def auto_kernel() -> str:
  """The kernel 'auto' prefers on this backend."""
  if kernels.splash_available() and kernels.backend_name() == "tpu":
    return "splash"
  if kernels.cudnn_available():
    return "cudnn"
  return "xla"


def choose(impl: str, q_BxTxNxH, k_BxSxKxH, q_offset) -> str:
  """The kernel that runs this call (trace time): explicit kernels raise, 'auto' falls back."""
  impl = resolve_impl(impl)
  explicit = impl != "auto"
  name = impl if explicit else auto_kernel()
  if name == "xla":
    return name
  reason = kernels.unsupported_reason(name, q_BxTxNxH, k_BxSxKxH, q_offset)
  if reason is None:
    return name
  decoding = not (isinstance(q_offset, int) and q_offset == 0) or (
      q_BxTxNxH.shape[1] != k_BxSxKxH.shape[1])
  if explicit and not decoding:
    raise ValueError(f"attention kernel {name!r} cannot run this call: {reason}; "
                     "set config.model.attention='auto' to fall back to xla")
  kernels.warn_once(f"{name}:{reason}", f"attention: {name} -> xla: {reason}")
  return "xla"


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
              sliding_window=None, impl: str = "xla", softcap: float | None = None) -> jax.Array:
  """Grouped-query attention; returns [B, T, N, H] in the dtype of q. Softmax in float32.

  `sliding_window` may be a traced scalar (gemma3's per-layer window under `scan_layers`) and
  `softcap` caps the scores (cap * tanh(s / cap)); both run on the xla kernel only."""
  name = choose(impl, q_BxTxNxH, k_BxSxKxH, q_offset)
  if name != "xla" and (softcap is not None or not (
      sliding_window is None or isinstance(sliding_window, int))):
    kernels.warn_once(f"{name}:softcap-window", f"attention: {name} -> xla: score soft-capping or "
                      "a per-layer (traced) sliding window")
    name = "xla"
  if name == "splash":
    return kernels.splash_attention(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH,
                                    segment_ids_BxT=q_segment_ids_BxT,
                                    sliding_window=sliding_window)
  if name == "cudnn":
    def xla_fallback(q, k, v):
      return xla_attention(q, k, v, q_segment_ids_BxT=q_segment_ids_BxT,
                           kv_segment_ids_BxS=kv_segment_ids_BxS, sliding_window=sliding_window)
    return kernels.cudnn_attention(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH,
                                   segment_ids_BxT=q_segment_ids_BxT,
                                   sliding_window=sliding_window, xla_fallback=xla_fallback)
  return xla_attention(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, q_segment_ids_BxT=q_segment_ids_BxT,
                       kv_segment_ids_BxS=kv_segment_ids_BxS, q_offset=q_offset,
                       sliding_window=sliding_window, softcap=softcap)


def xla_attention(q_BxTxNxH: jax.Array, k_BxSxKxH: jax.Array, v_BxSxKxH: jax.Array, *,
                  q_segment_ids_BxT: jax.Array, kv_segment_ids_BxS: jax.Array, q_offset=0,
                  sliding_window=None, softcap: float | None = None) -> jax.Array:
  """The reference kernel: explicit [B, K, G, T, S] scores, any backend, any shape."""
  b, t, n, h = q_BxTxNxH.shape
  k_heads = k_BxSxKxH.shape[2]
  g = n // k_heads  # query heads per kv head: query head n uses kv head n // g (HF's repeat_kv)
  q_BxTxKxGxH = q_BxTxNxH.reshape(b, t, k_heads, g, h)
  scores_BxKxGxTxS = jnp.einsum("BTKGH,BSKH->BKGTS", q_BxTxKxGxH, k_BxSxKxH,
                                preferred_element_type=jnp.float32) * (h ** -0.5)
  if softcap is not None:
    scores_BxKxGxTxS = jnp.tanh(scores_BxKxGxTxS / softcap) * softcap
  mask_BxTxS = attention_mask(q_segment_ids_BxT, kv_segment_ids_BxS, q_offset, sliding_window)
  # The mask as an additive bias of [B, T, S] (0 or _MASKED), not a select over the [B, K, G, T, S]
  # scores: the backward pass then needs no mask (masked probabilities are exactly 0, so their
  # score gradients are 0). s + _MASKED rounds to _MASKED for any score below ~1e31, so a fully
  # masked row is the same uniform row as with a select.
  bias_Bx1x1xTxS = jnp.where(mask_BxTxS, 0.0, _MASKED).astype(jnp.float32)[:, None, None]
  probs_BxKxGxTxS = jax.nn.softmax(scores_BxKxGxTxS + bias_Bx1x1xTxS, axis=-1)
  out_BxTxKxGxH = jnp.einsum("BKGTS,BSKH->BTKGH", probs_BxKxGxTxS.astype(v_BxSxKxH.dtype),
                             v_BxSxKxH)
  # Padding queries see nothing: give them zeros rather than an average over masked keys. Zeroing
  # their output rows ([B, T, N, H]) equals zeroing their probabilities ([B, K, G, T, S]) in value
  # and gradient, on a tensor T/H times smaller.
  sees_any_BxTx1x1x1 = mask_BxTxS.any(-1)[:, :, None, None, None]
  out_BxTxKxGxH = jnp.where(sees_any_BxTx1x1x1, out_BxTxKxGxH, jnp.zeros((), out_BxTxKxGxH.dtype))
  return out_BxTxKxGxH.reshape(b, t, n, h).astype(q_BxTxNxH.dtype)


def cached_attention(q_BxTxNxH: jax.Array, k_BxKxHxS: jax.Array, v_BxKxSxH: jax.Array, *,
                     q_segment_ids_BxT: jax.Array, kv_segment_ids_BxS: jax.Array, q_offset=0,
                     sliding_window=None, softcap: float | None = None) -> jax.Array:
  """`xla_attention` over a KV cache kept kv-head-major, keys transposed ([B, K, H, S]) and values
  not ([B, K, S, H]; see model/cache.py for why).

  Same masking and float32 softmax; only the layout differs, so that both products are batched
  matmuls over (B, K) with the cache read in place: with slot-major keys XLA copied each layer's
  cache into this layout at every decode step, a cost that grows with the cache."""
  b, t, n, h = q_BxTxNxH.shape
  k_heads = k_BxKxHxS.shape[1]
  g = n // k_heads  # query heads per kv head: query head n uses kv head n // g (HF's repeat_kv)
  q_BxKxGTxH = q_BxTxNxH.reshape(b, t, k_heads, g, h).transpose(0, 2, 3, 1, 4).reshape(
      b, k_heads, g * t, h)
  scores_BxKxGTxS = jnp.einsum("BKQH,BKHS->BKQS", q_BxKxGTxH, k_BxKxHxS,
                               preferred_element_type=jnp.float32) * (h ** -0.5)
  if softcap is not None:
    scores_BxKxGTxS = jnp.tanh(scores_BxKxGTxS / softcap) * softcap
  mask_BxTxS = attention_mask(q_segment_ids_BxT, kv_segment_ids_BxS, q_offset, sliding_window)
  mask_Bx1xGTxS = jnp.broadcast_to(mask_BxTxS[:, None, None], (b, 1, g) + mask_BxTxS.shape[1:]
                                   ).reshape(b, 1, g * t, -1)
  scores_BxKxGTxS = jnp.where(mask_Bx1xGTxS, scores_BxKxGTxS, _MASKED)
  probs_BxKxGTxS = jax.nn.softmax(scores_BxKxGTxS, axis=-1)
  # Padding queries see nothing: give them zeros rather than an average over masked keys.
  probs_BxKxGTxS = jnp.where(mask_Bx1xGTxS.any(-1, keepdims=True), probs_BxKxGTxS, 0.0)
  out_BxKxGTxH = jnp.einsum("BKQS,BKSH->BKQH", probs_BxKxGTxS.astype(v_BxKxSxH.dtype), v_BxKxSxH)
  out_BxTxNxH = out_BxKxGTxH.reshape(b, k_heads, g, t, h).transpose(0, 3, 1, 2, 4).reshape(
      b, t, n, h)
  return out_BxTxNxH.astype(q_BxTxNxH.dtype)
