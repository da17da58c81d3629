"""Small building blocks: parameters with logical axes, norms, rotary embeddings, activations.

Every parameter carries its logical axis names in the `out_sharding` metadata (flax>=0.12), so
`nnx.get_partition_spec(state)` gives logical specs that `jaxift.model.sharding` maps to a mesh.
"""
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Initializer = Callable[[jax.Array, Sequence[int], jnp.dtype], jax.Array]


def param(rngs: nnx.Rngs, shape: Sequence[int], axes: Sequence[str | None], dtype,
          init: Initializer | None = None) -> nnx.Param:
  """A parameter with logical axis names. Default init: normal(0.02), like HF's initializer_range."""
  assert len(shape) == len(axes), (shape, axes)
  init = init or jax.nn.initializers.normal(0.02)
  return nnx.Param(init(rngs.params(), tuple(shape), dtype), out_sharding=tuple(axes))


def ones(rngs, shape, axes, dtype) -> nnx.Param:
  return param(rngs, shape, axes, dtype, jax.nn.initializers.ones)


def zeros(rngs, shape, axes, dtype) -> nnx.Param:
  return param(rngs, shape, axes, dtype, jax.nn.initializers.zeros)


class RMSNorm(nnx.Module):
  """RMSNorm computed in float32 (Llama/Qwen); returns the compute dtype.

  `offset=True` (Gemma): the stored scale is an offset from 1, y * (1 + scale), zero-initialised."""

  def __init__(self, dim: int, eps: float, *, rngs: nnx.Rngs, param_dtype, axis_name="norm",
               offset: bool = False):
    self.eps, self.offset = eps, offset
    self.scale = (zeros if offset else ones)(rngs, (dim,), (axis_name,), param_dtype)

  @jax.named_scope("norm")
  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    scale = self.scale[...].astype(jnp.float32)
    return ((1.0 + scale if self.offset else scale) * y).astype(x.dtype)


class LayerNorm(nnx.Module):
  """LayerNorm with scale and bias, computed in float32 (GPT-2)."""

  def __init__(self, dim: int, eps: float, *, rngs: nnx.Rngs, param_dtype):
    self.eps = eps
    self.scale = ones(rngs, (dim,), ("norm",), param_dtype)
    self.bias = zeros(rngs, (dim,), ("norm",), param_dtype)

  @jax.named_scope("norm")
  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
    return (y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)).astype(x.dtype)


def matmul_2d(x_NxK: jax.Array, w_KxM: jax.Array, *, k_dims: int = 1,
              preferred_element_type=None) -> jax.Array:
  """`x [..., K...] @ w [K..., M...]` computed as ONE 2-D matrix product on flattened operands:
  the `k_dims` trailing axes of x contract with the leading ones of w; the result has x's
  leading and w's trailing axes.

  The same numbers as the einsum, but its gradients are 2-D products too: for an einsum over
  [B, T, ...] operands, XLA:CPU computed the weight gradient (a contraction over B and T) by first
  materializing transposed copies of the [B*T, F] cotangent -- 20% of a SmolLM2 train step's op
  time at 30 layers (docs/benchmarks.md, issue 19). With flat operands it contracts in place."""
  lead, contract = x_NxK.shape[:x_NxK.ndim - k_dims], x_NxK.shape[x_NxK.ndim - k_dims:]
  if tuple(w_KxM.shape[:k_dims]) != tuple(contract):
    raise ValueError(f"matmul_2d: x {x_NxK.shape} and w {w_KxM.shape} do not contract over "
                     f"{k_dims} axes")
  out = w_KxM.shape[k_dims:]
  k, m = math.prod(contract), math.prod(out)
  y = jnp.matmul(x_NxK.reshape(-1, k), w_KxM.reshape(k, m),
                 preferred_element_type=preferred_element_type)
  return y.reshape(*lead, *out)


def make_norm(cfg, dim: int, *, rngs, param_dtype) -> nnx.Module:
  if cfg.family == "gpt2":
    return LayerNorm(dim, cfg.norm_eps, rngs=rngs, param_dtype=param_dtype)
  return RMSNorm(dim, cfg.norm_eps, rngs=rngs, param_dtype=param_dtype,
                 offset=cfg.family == "gemma3")


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
  table = {
      "silu": jax.nn.silu, "swish": jax.nn.silu, "relu": jax.nn.relu,
      "gelu": lambda x: jax.nn.gelu(x, approximate=False),
      "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
      "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
      "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
  }
  if name not in table:
    raise ValueError(f"activation {name!r} is not supported (supported: {', '.join(table)})")
  return table[name]


def _longrope(cfg, scaling: dict) -> tuple[np.ndarray, np.ndarray, float]:
  """(short inv_freq, long inv_freq, cos/sin factor) as transformers' `_compute_longrope_parameters`."""
  dim = cfg.head_dim
  original = float(scaling["original_max_position_embeddings"])
  factor = scaling.get("factor") or cfg.max_position_embeddings / original
  attention_factor = scaling.get("attention_factor")
  if attention_factor is None:
    attention_factor = (1.0 if factor <= 1.0
                        else math.sqrt(1 + math.log(factor) / math.log(original)))
  shape = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / dim
  base = np.float32(cfg.rope_theta) ** shape
  short, long = (1.0 / (np.asarray(scaling[k], np.float32) * base)
                 for k in ("short_factor", "long_factor"))
  return short.astype(np.float32), long.astype(np.float32), float(attention_factor)


def rope_tables(cfg, positions_BxT: jax.Array) -> tuple[jax.Array, jax.Array]:
  """cos, sin [B, T, head_dim/2] for `cfg`'s rotary (any supported rope type).

  longrope (Phi-3): the long factors when the largest position + 1 in the call exceeds
  `original_max_position_embeddings`, else the short ones (transformers' dynamic update), and
  cos/sin scaled by the attention factor."""
  scaling = cfg.rope_scaling_dict
  if scaling and scaling["rope_type"] == "longrope":
    short, long, attention_factor = _longrope(cfg, scaling)
    use_long = (jnp.max(positions_BxT) + 1) > int(scaling["original_max_position_embeddings"])
    inv_freq = jnp.where(use_long, jnp.asarray(long), jnp.asarray(short))
    cos, sin = rope_cos_sin(inv_freq, positions_BxT)
    return cos * attention_factor, sin * attention_factor
  return rope_cos_sin(rope_inv_freq(cfg), positions_BxT)


def rope_inv_freq(cfg) -> np.ndarray:
  """Inverse frequencies [head_dim/2] in float32, as transformers computes them (incl. llama3)."""
  dim = cfg.head_dim
  inv_freq = 1.0 / (np.float32(cfg.rope_theta) ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
  inv_freq = inv_freq.astype(np.float32)
  scaling = cfg.rope_scaling_dict
  if not scaling:
    return inv_freq
  rope_type = scaling["rope_type"]
  factor = float(scaling.get("factor", 1.0))
  if rope_type == "linear":
    return (inv_freq / factor).astype(np.float32)
  if rope_type == "llama3":
    low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    old_len = float(scaling["original_max_position_embeddings"])
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)
  raise ValueError(f"rope type {rope_type!r} is not supported")


def rope_cos_sin(inv_freq_H2: np.ndarray, positions_BxT: jax.Array) -> tuple[jax.Array, jax.Array]:
  """cos, sin [B, T, head_dim/2] in float32 for each token's position."""
  angles_BxTxH2 = positions_BxT.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq_H2)
  return jnp.cos(angles_BxTxH2), jnp.sin(angles_BxTxH2)


def apply_rope(x_BxTxNxH: jax.Array, cos_BxTxH2: jax.Array, sin_BxTxH2: jax.Array) -> jax.Array:
  """Rotary embedding in the HF (rotate-half, non-interleaved) layout, computed in float32."""
  x = x_BxTxNxH.astype(jnp.float32)
  x1, x2 = jnp.split(x, 2, axis=-1)
  cos, sin = cos_BxTxH2[:, :, None, :], sin_BxTxH2[:, :, None, :]
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BxTxNxH.dtype)
