"""Blockwise weight-only quantization of the frozen base (QLoRA): `quantize` / `dequantize`.

Schemes (blocks of `block_size` consecutive values along one axis, the weight's contraction axis):

  int8  symmetric absmax: scale = absmax / 127, code = round(w / scale) in [-127, 127], int8
  int4  symmetric absmax: scale = absmax / 7,   code = round(w / scale) in [-7, 7], stored + 8
  nf4   QLoRA's NormalFloat4 (bitsandbytes' code book `NF4_CODEBOOK`): scale = absmax, code = the
        index of the nearest code-book value to w / absmax

Storage (`Quantized`): `codes` has the weight's shape (int8), or for the 4-bit schemes half of it
along the block axis, two codes per uint8 (element 2i in the low nibble, 2i+1 in the high one);
`scales` is float32 with the weight's shape except block axis / block_size. Both keep the weight's
axis order, so they carry its logical axis names and shard like it (FSDP on `embed`, tensor on
`heads`/`mlp`). Bits per weight at block 64: int8 8.5, int4/nf4 4.5. No double quantization of
the scales (bitsandbytes' 0.37 bits saved per weight are not worth a second code path here).

`quantize` accepts numpy arrays (the loader quantizes each tensor on the host as it is read, so a
full-precision model never exists) and jax arrays (traceable: `jax.eval_shape` sizes a quantized
model without weights), with one implementation for both.

In the model a quantized kernel is a `QuantizedWeight` module in the kernel's place
(`layers/attn/q_kernel/codes`, `.../scales`): `kernel[...]` dequantizes it, so the decoder's
projections are unchanged and, under `scan_layers`, each layer's weights are dequantized inside the
scan body, one layer at a time.
"""
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxift.model.sharding import DEFAULT_LOGICAL_RULES, named_sharding

SCHEMES = ("int8", "int4", "nf4")
# QLoRA (Dettmers et al. 2023) NF4 data type, as bitsandbytes' `get_4bit_type('nf4')`.
NF4_CODEBOOK = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0], np.float32)
_NF4_MIDPOINTS = (NF4_CODEBOOK[1:] + NF4_CODEBOOK[:-1]) / 2
_QMAX = {"int8": 127, "int4": 7}
SCALE_DTYPE = np.float32

# The contraction axis of each frozen projection kernel, counted from the end so the same number
# holds for a stacked (`scan_layers`) kernel and for one layer's slice of it.
KERNEL_AXES = {"q_kernel": -3, "k_kernel": -3, "v_kernel": -3,  # [embed, heads, head_dim]
               "o_kernel": -2,  # [heads, head_dim, embed]: blocks along head_dim
               "gate_kernel": -2, "up_kernel": -2, "down_kernel": -2}  # [in, out]
EMBEDDING_AXES = {("embed", "embedding"): -1, ("lm_head",): -2}  # [vocab, embed], [embed, vocab]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Quantized:
  """A quantized weight: `codes` and float32 `scales` (arrays), and how to read them (static)."""
  codes: Any
  scales: Any
  scheme: str = dataclasses.field(metadata=dict(static=True))
  block_size: int = dataclasses.field(metadata=dict(static=True))
  axis: int = dataclasses.field(metadata=dict(static=True))  # negative: counted from the end

  @property
  def shape(self) -> tuple[int, ...]:
    shape = list(self.codes.shape)
    if self.scheme != "int8":
      shape[self.axis] *= 2
    return tuple(shape)


def check_scheme(scheme: str, block_size: int, *, name: str = "scheme") -> None:
  if scheme not in SCHEMES:
    raise ValueError(f"{name}={scheme!r} is not a quantization scheme; expected one of "
                     f"{', '.join(SCHEMES)}")
  if not isinstance(block_size, (int, np.integer)) or block_size <= 0 or (
      scheme != "int8" and block_size % 2):
    raise ValueError(f"block_size={block_size!r} must be a positive integer (even for {scheme}: "
                     "two 4-bit codes share a byte)")


def quantize(w, scheme: str, block_size: int = 64, axis: int = 0, *,
             name: str = "the weight") -> Quantized:
  """Blockwise quantization of `w` along `axis`; numpy in, numpy out (else jax arrays).

  `name` (e.g. the parameter path) goes into the error when `block_size` does not divide the axis.
  """
  check_scheme(scheme, block_size)
  xp = np if isinstance(w, np.ndarray) else jnp
  if not -w.ndim <= axis < w.ndim:
    raise ValueError(f"axis={axis} is out of range for {name} of shape {tuple(w.shape)}")
  axis = axis - w.ndim if axis >= 0 else axis  # from the end: the same for a stacked kernel
  k = w.shape[axis]
  if k % block_size:
    raise ValueError(f"block_size={block_size} does not divide axis {axis + w.ndim} (size {k}) "
                     f"of {name} (shape {tuple(w.shape)})")
  w_KxR = xp.moveaxis(w.astype(np.float32), axis, 0)
  rest = w_KxR.shape[1:]
  w_NxBxR = w_KxR.reshape((k // block_size, block_size) + rest)
  absmax_NxR = xp.max(xp.abs(w_NxBxR), axis=1)
  scale_NxR = absmax_NxR / _QMAX[scheme] if scheme in _QMAX else absmax_NxR
  safe_NxR = xp.where(scale_NxR == 0, np.float32(1), scale_NxR)  # all-zero block: codes 0
  x_NxBxR = w_NxBxR / safe_NxR[:, None]
  if scheme == "nf4":
    codes = xp.searchsorted(xp.asarray(_NF4_MIDPOINTS), x_NxBxR.reshape(-1)).reshape(
        x_NxBxR.shape).astype(np.uint8)
  else:
    qmax = _QMAX[scheme]
    codes = xp.clip(xp.round(x_NxBxR), -qmax, qmax)
    codes = codes.astype(np.int8) if scheme == "int8" else (codes + 8).astype(np.uint8)
  codes_KxR = codes.reshape((k,) + rest)
  if scheme != "int8":  # pack pairs along the block axis: low nibble first
    pairs = codes_KxR.reshape((k // 2, 2) + rest)
    codes_KxR = (pairs[:, 0] | (pairs[:, 1] << 4)).astype(np.uint8)
  return Quantized(codes=xp.moveaxis(codes_KxR, 0, axis),
                   scales=xp.moveaxis(scale_NxR.astype(SCALE_DTYPE), 0, axis),
                   scheme=scheme, block_size=int(block_size), axis=axis)


def dequantize(q: Quantized, dtype=jnp.float32):
  """The weight `q` stands for (float32 arithmetic, returned in `dtype`); numpy in, numpy out."""
  xp = np if isinstance(q.codes, np.ndarray) else jnp
  codes_KxR = xp.moveaxis(q.codes, q.axis, 0)
  if q.scheme != "int8":
    low, high = codes_KxR & np.uint8(15), codes_KxR >> np.uint8(4)
    codes_KxR = xp.stack([low, high], axis=1).reshape((-1,) + codes_KxR.shape[1:])
  if q.scheme == "nf4":
    values = xp.asarray(NF4_CODEBOOK)[codes_KxR.astype(np.int32)]
  elif q.scheme == "int4":
    values = codes_KxR.astype(np.float32) - 8
  else:
    values = codes_KxR.astype(np.float32)
  k, rest = values.shape[0], values.shape[1:]
  scale_NxR = xp.moveaxis(q.scales, q.axis, 0).astype(np.float32)
  w_NxBxR = values.reshape((k // q.block_size, q.block_size) + rest) * scale_NxR[:, None]
  return xp.moveaxis(w_NxBxR.reshape((k,) + rest), 0, q.axis).astype(dtype)


# ---- settings: config.lora.base_quantization -------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class BaseQuantization:
  """How the frozen base is held: scheme, block size, and whether the embedding tables
  (`embed.embedding`, an untied `lm_head`) are quantized too."""
  scheme: str
  block_size: int = 64
  embedding: bool = False

  def axis(self, path: tuple) -> int | None:
    """The contraction axis of a flat-state parameter path if it is quantized, else None."""
    path = tuple(str(p) for p in path)
    if path and path[-1] in KERNEL_AXES and len(path) >= 2 and path[-2] in ("attn", "mlp"):
      return KERNEL_AXES[path[-1]]
    if self.embedding:
      return EMBEDDING_AXES.get(path)
    return None

  def as_dict(self) -> dict[str, Any]:
    return {"base_quantization": self.scheme, "quantization_block_size": self.block_size,
            "quantize_embedding": self.embedding}


def from_config(lora_config) -> BaseQuantization | None:
  """The settings of `config.lora` (None: a full-precision base), checked, errors naming the key."""
  get = lora_config.get
  scheme = str(get("base_quantization", "none") or "none")
  if scheme == "none":
    return None
  if scheme not in SCHEMES:
    raise ValueError(f"config.lora.base_quantization={scheme!r} is unknown; expected 'none' or "
                     f"one of {', '.join(repr(s) for s in SCHEMES)}")
  block = get("quantization_block_size", 64)
  try:
    check_scheme(scheme, block)
  except ValueError as e:
    raise ValueError(f"config.lora.quantization_block_size: {e}") from None
  return BaseQuantization(scheme, int(block), bool(get("quantize_embedding", False)))


def check_divides(settings: BaseQuantization, shapes: dict[tuple, tuple[int, ...]]) -> None:
  """Raises, before any tensor is read, when the block size does not divide a quantized axis."""
  for path, shape in shapes.items():
    axis = settings.axis(path)
    if axis is not None and shape[axis] % settings.block_size:
      raise ValueError(
          f"config.lora.quantization_block_size={settings.block_size} does not divide axis "
          f"{axis + len(shape)} (size {shape[axis]}) of {'/'.join(map(str, path))} "
          f"(shape {tuple(shape)}); choose a divisor of it")


# ---- in the model -----------------------------------------------------------------------------------

class QuantizedArray(nnx.Variable):
  """Codes or scales of a frozen quantized weight. Not an `nnx.Param`: never trained, never cast,
  and not part of `nnx.state(model, nnx.Param)` (the HF export tables)."""


class QuantizedWeight(nnx.Module):
  """A frozen kernel held quantized; `weight[...]` dequantizes it (in `dtype`, the compute dtype)."""

  def __init__(self, q: Quantized, axes: tuple, dtype):
    with nnx.use_eager_sharding(False):  # logical names, not mesh axes (as the decoder's)
      self.codes = QuantizedArray(q.codes, out_sharding=tuple(axes))
      self.scales = QuantizedArray(q.scales, out_sharding=tuple(axes))
    self.scheme, self.block_size, self.axis = q.scheme, q.block_size, q.axis
    self.dtype = jnp.dtype(dtype)
    self.axes = tuple(axes)

  def quantized(self) -> Quantized:
    return Quantized(self.codes[...], self.scales[...], self.scheme, self.block_size, self.axis)

  @property
  def shape(self) -> tuple[int, ...]:
    return self.quantized().shape

  @property
  def ndim(self) -> int:
    return len(self.codes.shape)

  def __getitem__(self, index):
    return dequantize(self.quantized(), self.dtype)[index]


def _holder(model, path: tuple):
  obj = model
  for p in path[:-1]:
    obj = obj[p] if isinstance(p, int) else getattr(obj, p)
  return obj


def install(model, path: tuple, q: Quantized, axes: tuple) -> None:
  """Puts `q` in place of the parameter at `path` (a flat-state path) as a `QuantizedWeight`."""
  setattr(_holder(model, path), path[-1], QuantizedWeight(q, axes, model.dtype))


def quantize_model(model, settings: BaseQuantization, *, mesh=None, rules=None) -> list[str]:
  """Quantizes `model`'s frozen kernels in place (a model already in memory: random init, tests;
  pretrained weights are quantized while loading instead). Returns the quantized paths."""
  rules = DEFAULT_LOGICAL_RULES if rules is None else rules
  flat = list(nnx.to_flat_state(nnx.state(model, nnx.Param)))
  check_divides(settings, {tuple(p): tuple(v.shape) for p, v in flat})
  done = []
  for path, var in flat:
    axis = settings.axis(path)
    if axis is None:
      continue
    axes = tuple(var.get_metadata().get("out_sharding") or (None,) * len(var.shape))
    fn = lambda w, axis=axis: quantize(w, settings.scheme, settings.block_size, axis)
    value = var[...]
    if isinstance(value, jax.core.Tracer) or mesh is None:
      q = fn(value)
    else:  # quantized where the weight lives: codes and scales born with its sharding
      shapes = jax.eval_shape(fn, value)
      out = Quantized(named_sharding(mesh, axes, rules, shapes.codes.shape),
                      named_sharding(mesh, axes, rules, shapes.scales.shape),
                      shapes.scheme, shapes.block_size, shapes.axis)
      q = jax.jit(fn, out_shardings=out)(value)
    install(model, tuple(path), q, axes)
    done.append("/".join(map(str, path)))
  return done


def dequantize_model(model, dtype=None) -> None:
  """Replaces every `QuantizedWeight` of `model` (in place) by a plain `nnx.Param` holding its
  dequantized value in `dtype` (default: the model's param_dtype): a plain Decoder for export."""
  dtype = jnp.dtype(dtype or model.param_dtype)
  for path, weight in list(nnx.iter_modules(model)):
    if isinstance(weight, QuantizedWeight):
      value = dequantize(weight.quantized(), jnp.float32).astype(dtype)
      with nnx.use_eager_sharding(False):
        setattr(_holder(model, tuple(path)), path[-1], nnx.Param(value, out_sharding=weight.axes))


def has_quantized(model) -> bool:
  return any(isinstance(m, QuantizedWeight) for _, m in nnx.iter_modules(model))
