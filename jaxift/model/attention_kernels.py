"""Fused attention kernels behind `attention.attention`: cuDNN flash attention (NVIDIA GPUs; packed
batches through the Pallas GPU flash-attention kernel) and Pallas splash attention (TPUs). Each returns [B, T, N, H] like the XLA reference and honours the
same mask (causal, equal non-zero segment ids, optional sliding window); padding queries output 0.

Both kernels handle the training / full-forward case only (queries and keys are the same row,
`q_offset == 0`); `unsupported_reason` says why a call cannot use one, and the caller falls back.
"""
import functools
import logging
import os

import jax
import jax.numpy as jnp

log = logging.getLogger(__name__)

# Pallas interpret mode lets the splash kernel run (slowly) on CPU: tests and debugging only.
SPLASH_INTERPRET = os.environ.get("JAXIFT_PALLAS_INTERPRET", "") not in ("", "0")
_CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)
_SPLASH_BLOCKS = (512, 256, 128)  # the largest that divides T is used; the lane width is 128

_warned: set[str] = set()


def warn_once(key: str, message: str) -> None:
  if key not in _warned:
    _warned.add(key)
    log.warning(message)


# ---- availability ----------------------------------------------------------------------------
def backend_name() -> str:
  return jax.default_backend()


def cudnn_available() -> bool:
  if backend_name() != "gpu":
    return False
  try:
    from jax._src.lib import cuda_versions  # pylint: disable=import-outside-toplevel
    return cuda_versions is not None and cuda_versions.cudnn_get_version() > 0
  except Exception:  # pylint: disable=broad-except  (ROCm, or a jaxlib without the CUDA plugin)
    return False


def splash_available() -> bool:
  return backend_name() == "tpu" or SPLASH_INTERPRET


def available(name: str) -> bool:
  return {"xla": True, "cudnn": cudnn_available(), "splash": splash_available()}[name]


def unsupported_reason(name: str, q_BxTxNxH, k_BxSxKxH, q_offset) -> str | None:
  """Why `name` cannot run this call (None: it can)."""
  t, s, h = q_BxTxNxH.shape[1], k_BxSxKxH.shape[1], q_BxTxNxH.shape[3]
  if not (isinstance(q_offset, int) and q_offset == 0) or t != s:
    return "cached decoding (queries at an offset into a KV cache) uses the xla kernel"
  if name == "cudnn":
    if q_BxTxNxH.dtype not in _CUDNN_DTYPES:
      return (f"cuDNN attention needs bfloat16/float16 compute, got {q_BxTxNxH.dtype}; "
              "set config.model.dtype='bfloat16'")
    if h % 8 or h > 256:
      return f"cuDNN attention needs head_dim a multiple of 8 and <= 256, got {h}"
    if t % 2:
      return f"cuDNN attention (training) needs an even sequence length, got {t}"
  if name == "splash" and t % 128:
    return f"splash attention needs a sequence length divisible by 128, got {t}"
  return None


# ---- cuDNN -----------------------------------------------------------------------------------
def _is_right_padded(segment_ids_BxT: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(every row is [1]*n + [0]*(T-n), lengths n [B]): the layout cuDNN's seq lengths express."""
  lengths_B = jnp.sum(segment_ids_BxT != 0, axis=1).astype(jnp.int32)
  expected_BxT = (jnp.arange(segment_ids_BxT.shape[1])[None] < lengths_B[:, None]).astype(
      segment_ids_BxT.dtype)
  return jnp.all(segment_ids_BxT == expected_BxT), lengths_B


def cudnn_attention(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, *, segment_ids_BxT, sliding_window,
                    xla_fallback, implementation: str = "cudnn") -> jax.Array:
  """cuDNN flash attention for causal, right-padded rows (one segment each).

  `jax.nn.dot_product_attention` (JAX 0.10) takes sequence lengths but no segment ids, so a batch
  with several segments in a row (packing) runs another kernel, chosen at run time by `lax.cond`
  (the batch decides; both branches are compiled), announced by one logged warning: the Pallas
  GPU (Triton) flash attention, which takes segment ids, or `xla_fallback` with a sliding window
  (that kernel has none).
  `implementation='xla'` runs JAX's own XLA version of the same call (and the Pallas kernel in
  interpret mode): how the CPU tests check the arguments built here without a GPU.
  """
  window = None if sliding_window is None else (sliding_window - 1, 0)
  padded_only, lengths_B = _is_right_padded(segment_ids_BxT)

  def fused(q, k, v):
    out = jax.nn.dot_product_attention(
        q, k, v, is_causal=True, query_seq_lengths=lengths_B, key_value_seq_lengths=lengths_B,
        local_window_size=window, implementation=implementation)
    return jnp.where((segment_ids_BxT != 0)[:, :, None, None], out, 0).astype(q.dtype)

  if sliding_window is None and q_BxTxNxH.shape[1] % 16 == 0:
    def packed(q, k, v):
      return pallas_gpu_attention(q, k, v, segment_ids_BxT=segment_ids_BxT,
                                  interpret=backend_name() != "gpu")
    packed_kernel = "the Pallas GPU flash-attention kernel (segment ids)"
  else:
    packed, packed_kernel = xla_fallback, "the xla kernel"
  warn_once(f"cudnn_segments:{packed_kernel}",
            "cuDNN attention: jax.nn.dot_product_attention in this JAX has no segment ids; "
            f"batches with several segments per row (packing) use {packed_kernel}")
  return jax.lax.cond(padded_only, fused, packed, q_BxTxNxH, k_BxSxKxH, v_BxSxKxH)


def pallas_gpu_attention(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, *, segment_ids_BxT,
                         interpret: bool = False) -> jax.Array:
  """Causal flash attention with segment ids: `jax.experimental.pallas.ops.gpu.attention.mha`
  (Triton). It is multi-head only, so kv heads are repeated for GQA (HF's repeat_kv order)."""
  from jax.experimental.pallas.ops.gpu import attention as pallas_mha  # pylint: disable=import-outside-toplevel
  t, n, h = q_BxTxNxH.shape[1:]
  g = n // k_BxSxKxH.shape[2]
  k_BxSxNxH = jnp.repeat(k_BxSxKxH, g, axis=2)
  v_BxSxNxH = jnp.repeat(v_BxSxKxH, g, axis=2)
  b = next(size for size in (128, 64, 32, 16) if t % size == 0)
  sizes = pallas_mha.BlockSizes(block_q=b, block_k=b, block_q_dkv=b, block_kv_dkv=b,
                                block_q_dq=b, block_kv_dq=b)
  out = pallas_mha.mha(q_BxTxNxH, k_BxSxNxH, v_BxSxNxH, segment_ids_BxT.astype(jnp.int32),
                       sm_scale=h ** -0.5, causal=True, block_sizes=sizes, interpret=interpret)
  # Padding (segment 0) attends to padding inside the kernel; the contract says it outputs 0.
  return jnp.where((segment_ids_BxT != 0)[:, :, None, None], out, 0).astype(q_BxTxNxH.dtype)


# ---- splash (Pallas, TPU) ----------------------------------------------------------------------
def _block(t: int) -> int:
  return next(b for b in _SPLASH_BLOCKS if t % b == 0)


@functools.lru_cache(maxsize=32)
def _splash_kernel(t: int, groups: int, sliding_window: int | None, interpret: bool):
  from jax.experimental.pallas.ops.tpu import splash_attention as sa  # pylint: disable=import-outside-toplevel
  if sliding_window is None:
    head_mask = sa.CausalMask((t, t))
  else:  # causal and at most `sliding_window` keys, itself included
    head_mask = sa.LocalMask((t, t), window_size=(sliding_window - 1, 0), offset=0)
  b = _block(t)
  sizes = sa.BlockSizes(block_q=b, block_kv=b, block_kv_compute=b, block_q_dkv=b, block_kv_dkv=b,
                        block_kv_dkv_compute=b, block_q_dq=b, block_kv_dq=b)
  # One kernel per kv head: its `groups` query heads share the keys (MQA form of GQA).
  mask = sa.MultiHeadMask([head_mask] * groups)
  # Built once per shape and cached: its mask-info arrays must be constants, not tracers of the
  # jit trace that happened to build it first.
  with jax.ensure_compile_time_eval():
    return sa.make_splash_mqa_single_device(mask, block_sizes=sizes, interpret=interpret)


def splash_attention(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, *, segment_ids_BxT,
                     sliding_window) -> jax.Array:
  from jax.experimental.pallas.ops.tpu import splash_attention as sa  # pylint: disable=import-outside-toplevel
  b, t, n, h = q_BxTxNxH.shape
  k_heads = k_BxSxKxH.shape[2]
  g = n // k_heads
  kernel = _splash_kernel(t, g, sliding_window, backend_name() != "tpu")
  # The kernel does not scale the logits: fold 1/sqrt(H) into q (as the xla kernel's scores).
  q_BxKxGxTxH = (q_BxTxNxH * (h ** -0.5)).astype(q_BxTxNxH.dtype).reshape(
      b, t, k_heads, g, h).transpose(0, 2, 3, 1, 4)
  k_BxKxSxH = k_BxSxKxH.transpose(0, 2, 1, 3)
  v_BxKxSxH = v_BxSxKxH.transpose(0, 2, 1, 3)

  def one_row(q_KxGxTxH, k_KxSxH, v_KxSxH, seg_T):
    segments = sa.SegmentIds(q=seg_T, kv=seg_T)
    return jax.vmap(lambda q, k, v: kernel(q, k, v, segment_ids=segments))(
        q_KxGxTxH, k_KxSxH, v_KxSxH)

  out_BxKxGxTxH = jax.vmap(one_row)(q_BxKxGxTxH, k_BxKxSxH, v_BxKxSxH,
                                    segment_ids_BxT.astype(jnp.int32))
  out_BxTxNxH = out_BxKxGxTxH.transpose(0, 3, 1, 2, 4).reshape(b, t, n, h)
  # Segment 0 (padding) attends to itself inside the kernel; the contract says padding outputs 0.
  out_BxTxNxH = jnp.where((segment_ids_BxT != 0)[:, :, None, None], out_BxTxNxH, 0)
  return out_BxTxNxH.astype(q_BxTxNxH.dtype)

