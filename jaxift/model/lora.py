"""LoRA: low-rank adapters on the decoder's projections, trained while the base stays frozen.

`apply_lora(model, config.lora)` adds to each projection whose parameter path matches
`config.lora.target_regex` (searched in `layers/3/attn/q_kernel`, or `layers/attn/q_kernel` with
`scan_layers`) two `LoRAParam`s, and the projection computes

    y = x W + (alpha / rank) * dropout(x) A B            (PEFT's formulation, on the input path)

  q/k/v: A [embed, rank]          B [rank, heads|kv_heads, head_dim]
  o:     A [heads, head_dim, rank] B [rank, embed]
  gate/up (down): A [embed (mlp), rank]  B [rank, mlp (embed)]

A is uniform(+-1/sqrt(fan_in)) (PEFT's kaiming_uniform(a=sqrt(5))), B is zero: the model starts
exactly equal to the base. Adapters carry logical axes (`lora_rank` plus the base weight's own
names, `layers` first when stacked), so `jaxift.model.sharding` shards them like the base.
`nnx.split(model, LoRAParam, ...)` separates the trainable adapters from the frozen rest.

The adapter is computed on the input path (not by merging W + AB each step) so the backward pass
never forms a full-size weight gradient; `merge_lora` folds the adapters in for export/serving.
Dropout is active only inside `with dropout_rng(key):` (the trainer passes a per-step key);
without it the forward is deterministic (evaluation, generation).
"""
import contextlib
import contextvars
import functools
import math
import re
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from jaxift.model import decoder as decoder_lib
from jaxift.model import loading
from jaxift.model import quantize as quantize_lib
from jaxift.model.config import ModelConfig
from jaxift.model.sharding import DEFAULT_LOGICAL_RULES, named_sharding

# projection -> (module attribute in a Block, number of leading input axes of its kernel)
PROJECTIONS = {"q": ("attn", 1), "k": ("attn", 1), "v": ("attn", 1), "o": ("attn", 2),
               "gate": ("mlp", 1), "up": ("mlp", 1), "down": ("mlp", 1)}
DEFAULT_TARGET_REGEX = r"(attn/(q|k|v|o)_kernel|mlp/(gate|up|down)_kernel)$"
# Named target sets for config variants (`targets=attn`).
TARGET_PRESETS = {"all": DEFAULT_TARGET_REGEX, "attn": r"attn/(q|k|v|o)_kernel$",
                  "qv": r"attn/(q|v)_kernel$"}
_PROJECTION_IDS = {name: i for i, name in enumerate(PROJECTIONS)}
_DROPOUT_KEY: contextvars.ContextVar = contextvars.ContextVar("lora_dropout_key", default=None)


def default_lora_config() -> ml_collections.ConfigDict:
  """`config.lora`: off by default."""
  c = ml_collections.ConfigDict()
  c.enabled = False
  c.rank = 8
  c.alpha = 16.0  # the adapter is scaled by alpha / rank (PEFT's lora_alpha)
  c.dropout = 0.0  # on the adapter's input, during training only
  c.target_regex = DEFAULT_TARGET_REGEX  # searched in parameter paths such as layers/0/attn/q_kernel
  c.base_dtype = ""  # '' keeps the base in config.model.param_dtype; 'bfloat16' halves its memory
  c.param_dtype = "float32"  # the adapters themselves
  # QLoRA: the frozen projections held quantized ('none' | 'int8' | 'int4' | 'nf4'), blocks of
  # `quantization_block_size` along each kernel's contraction axis (jaxift.model.quantize).
  c.base_quantization = "none"
  c.quantization_block_size = 64
  c.quantize_embedding = False  # also the embedding table and an untied lm_head
  return c


def enable(c: ml_collections.ConfigDict, *, rank: int, alpha: float, dropout: float,
           targets: str) -> None:
  """Switches `config.lora` on with a named target set from TARGET_PRESETS (config variants)."""
  if targets not in TARGET_PRESETS:
    raise ValueError(f"targets={targets!r}: expected one of {sorted(TARGET_PRESETS)}")
  c.enabled = True
  c.rank, c.alpha, c.dropout = rank, alpha, dropout
  c.target_regex = TARGET_PRESETS[targets]


class LoRAParam(nnx.Param):
  """A trainable LoRA adapter matrix (the only parameters the optimizer sees in LoRA training)."""


class LoRALayerIndex(nnx.Variable):
  """The layer number, so each layer draws its own dropout mask (stacked with `scan_layers`)."""


@contextlib.contextmanager
def dropout_rng(key: jax.Array | None) -> Iterator[None]:
  """Enables LoRA dropout for forward passes traced inside the block, with this key."""
  token = _DROPOUT_KEY.set(key)
  try:
    yield
  finally:
    _DROPOUT_KEY.reset(token)


# ---- the adapter computation --------------------------------------------------------------------

def _dropout(module, x: jax.Array, name: str) -> jax.Array:
  key = _DROPOUT_KEY.get()
  rate = module.lora_dropout
  if key is None or rate <= 0.0:
    return x
  key = jax.random.fold_in(jax.random.fold_in(key, module.lora_layer[...]), _PROJECTION_IDS[name])
  keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


def _frozen(module, name: str, project, x: jax.Array) -> jax.Array:
  """`project(x)`, the frozen projection; on a quantized kernel rematerialized in the backward
  pass, so autodiff keeps x and the codes, never the dequantized weight, for the input gradient
  (else every layer's full-precision weights would be saved until the backward pass)."""
  if isinstance(getattr(module, f"{name}_kernel"), quantize_lib.QuantizedWeight):
    return jax.checkpoint(project, policy=jax.checkpoint_policies.nothing_saveable)(x)
  return project(x)


def _add_adapter(module, x: jax.Array, y: jax.Array, name: str) -> jax.Array:
  """y + scale * dropout(x) A B for a targeted projection; y unchanged otherwise."""
  if name not in module.lora_targets:
    return y
  a = getattr(module, f"{name}_lora_a")[...].astype(module.dtype)
  b = getattr(module, f"{name}_lora_b")[...].astype(module.dtype)
  h_BxTxR = jnp.tensordot(_dropout(module, x, name), a, axes=a.ndim - 1)
  return y + module.lora_scale * jnp.tensordot(h_BxTxR, b, axes=1).astype(y.dtype)


class LoRAAttention(decoder_lib.Attention):
  """`Attention` with adapters on q/k/v (`_project`) and o (`_output`)."""

  def _project(self, x_BxTxD, name: str) -> jax.Array:
    base = _frozen(self, name, lambda x: super(LoRAAttention, self)._project(x, name), x_BxTxD)
    return _add_adapter(self, x_BxTxD, base, name)

  def _output(self, out_BxTxNxH) -> jax.Array:
    base = _frozen(self, "o", super()._output, out_BxTxNxH)
    return _add_adapter(self, out_BxTxNxH, base, "o")


class LoRAMlp(decoder_lib.Mlp):
  """`Mlp` with adapters on gate/up/down."""

  def _dense(self, x, name: str):
    base = _frozen(self, name, lambda x_: super(LoRAMlp, self)._dense(x_, name), x)
    return _add_adapter(self, x, base, name)


_LORA_CLASSES = {decoder_lib.Attention: LoRAAttention, decoder_lib.Mlp: LoRAMlp}
_BASE_CLASSES = {v: k for k, v in _LORA_CLASSES.items()}


# ---- applying, inspecting and merging -------------------------------------------------------------

def lora_blocks(model) -> list[tuple[int | None, Any]]:
  """[(layer index or None for a stacked block, Block)]."""
  if model.scan_layers:
    return [(None, model.layers)]
  return list(enumerate(model.layers))


def _kernel_paths(model) -> list[str]:
  paths = []
  for layer, block in lora_blocks(model):
    prefix = "layers/" if layer is None else f"layers/{layer}/"
    for name, (part, _) in PROJECTIONS.items():
      if hasattr(getattr(block, part), f"{name}_kernel"):
        paths.append(f"{prefix}{part}/{name}_kernel")
  return paths


def has_lora(model) -> bool:
  return any(isinstance(getattr(b, p), tuple(_BASE_CLASSES)) for _, b in lora_blocks(model)
             for p in ("attn", "mlp"))


def lora_settings(model) -> dict[str, Any]:
  """rank, alpha, dropout and the targeted projections per layer ({layer: [names]})."""
  out: dict[str, Any] = {"targets": {}}
  for layer, block in lora_blocks(model):
    for part in ("attn", "mlp"):
      module = getattr(block, part)
      # (a module of a quantized base can hold the LoRA class without adapters: see apply_lora)
      if isinstance(module, tuple(_BASE_CLASSES)) and module.lora_targets:
        out.update(rank=module.lora_rank, alpha=module.lora_alpha, dropout=module.lora_dropout)
        layers = range(model.cfg.num_hidden_layers) if layer is None else [layer]
        for i in layers:
          out["targets"].setdefault(i, []).extend(module.lora_targets)
  return out


@functools.lru_cache(maxsize=None)
def _jitted_init(kind: str, shape: tuple, dtype, bound: float, sharding):
  def init(key):
    if kind == "uniform":
      return jax.random.uniform(key, shape, dtype, -bound, bound)
    return jnp.zeros(shape, dtype)
  return jax.jit(init, out_shardings=sharding)


def _new_variable(cls, kind: str, key, shape, dtype, axes, mesh, rules, bound: float = 0.0):
  """A variable born with its sharding (jit out_shardings) when a mesh is given."""
  sharding = None if mesh is None else named_sharding(mesh, axes, rules, shape)
  value = _jitted_init(kind, tuple(shape), jnp.dtype(dtype), float(bound), sharding)(key)
  return cls(value, out_sharding=tuple(axes))


def _index_variable(value, axes, mesh, rules) -> LoRALayerIndex:
  """Layer numbers; on the mesh (replicated) when there is one, like every other model array."""
  value = np.asarray(value, np.int32)
  if mesh is not None:
    return LoRALayerIndex(jax.device_put(value, named_sharding(mesh, axes, rules, value.shape)),
                          out_sharding=axes)
  return LoRALayerIndex(jnp.asarray(value), out_sharding=axes)


def apply_lora(model, lora_config, *, mesh=None, rules=None, seed: int = 0) -> list[str]:
  """Adds adapters to `model` (a `Decoder`, in place); returns the targeted parameter paths."""
  rules = DEFAULT_LOGICAL_RULES if rules is None else rules
  get = lora_config.get
  rank, alpha = int(get("rank", 8)), float(get("alpha", 16.0))
  dropout, regex = float(get("dropout", 0.0)), get("target_regex", DEFAULT_TARGET_REGEX)
  if rank <= 0:
    raise ValueError(f"config.lora.rank must be a positive integer, got {rank}")
  if not 0.0 <= dropout < 1.0:
    raise ValueError(f"config.lora.dropout must be in [0, 1), got {dropout}")
  if has_lora(model):
    raise ValueError("the model already has LoRA adapters")
  try:
    pattern = re.compile(regex)
  except re.error as e:
    raise ValueError(f"config.lora.target_regex={regex!r} is not a valid regex: {e}") from e
  candidates = _kernel_paths(model)
  chosen = [p for p in candidates if pattern.search(p)]
  if not chosen:
    raise ValueError(f"config.lora.target_regex={regex!r} matches no projection; parameter paths "
                     f"are like {', '.join(candidates[:7])}")
  adapter_dtype = jnp.dtype(get("param_dtype", "float32") or "float32")
  base_key = jax.random.key(seed)
  num_layers = model.cfg.num_hidden_layers

  with nnx.use_eager_sharding(False):
    for layer, block in lora_blocks(model):
      prefix = "layers/" if layer is None else f"layers/{layer}/"
      for part in ("attn", "mlp"):
        module = getattr(block, part)
        names = tuple(n for n, (p, _) in PROJECTIONS.items()
                      if p == part and f"{prefix}{part}/{n}_kernel" in chosen)
        # A module with quantized kernels and no adapters still takes the LoRA class: its hooks
        # rematerialize the dequantized weights (`_frozen`).
        if not names and not _has_quantized_kernel(module):
          continue
        module.__class__ = _LORA_CLASSES[type(module)]
        module.lora_targets, module.lora_rank, module.lora_alpha = names, rank, alpha
        module.lora_dropout, module.lora_scale = dropout, alpha / rank
        if layer is None:  # stacked: one adapter per layer along a leading `layers` axis
          stack, stack_axes = (num_layers,), ("layers",)
          module.lora_layer = _index_variable(np.arange(num_layers), ("layers",), mesh, rules)
        else:
          stack, stack_axes = (), ()
          module.lora_layer = _index_variable(np.asarray(layer), (), mesh, rules)
        for name in names:
          kernel = getattr(module, f"{name}_kernel")
          n_in = PROJECTIONS[name][1]
          shape, axes = _kernel_layout(kernel)
          shape, axes = shape[len(stack):], axes[len(stack):]
          in_shape, out_shape = shape[:n_in], shape[n_in:]
          bound = 1.0 / math.sqrt(math.prod(in_shape))
          key = jax.random.fold_in(jax.random.fold_in(base_key, num_layers if layer is None
                                                      else layer), _PROJECTION_IDS[name])
          setattr(module, f"{name}_lora_a", _new_variable(
              LoRAParam, "uniform", key, stack + in_shape + (rank,), adapter_dtype,
              stack_axes + axes[:n_in] + ("lora_rank",), mesh, rules, bound))
          setattr(module, f"{name}_lora_b", _new_variable(
              LoRAParam, "zeros", key, stack + (rank,) + out_shape, adapter_dtype,
              stack_axes + ("lora_rank",) + axes[n_in:], mesh, rules))

  base_dtype = get("base_dtype", "")
  if base_dtype:
    cast_base(model, base_dtype)
  return chosen


def _has_quantized_kernel(module) -> bool:
  return any(isinstance(getattr(module, f"{n}_kernel", None), quantize_lib.QuantizedWeight)
             for n in PROJECTIONS)


def _kernel_layout(kernel) -> tuple[tuple[int, ...], tuple]:
  """(shape, logical axes) of a base kernel, full precision or quantized."""
  if isinstance(kernel, quantize_lib.QuantizedWeight):
    return tuple(kernel.shape), kernel.axes
  axes = kernel.get_metadata().get("out_sharding") or (None,) * kernel.ndim
  return tuple(kernel.shape), tuple(axes)


def cast_base(model, dtype) -> None:
  """Stores every frozen (non-LoRA) parameter in `dtype` (e.g. bfloat16), keeping shardings
  (quantized kernels are `QuantizedArray`s, not parameters: they keep their codes and scales)."""
  dtype = jnp.dtype(dtype)
  for _, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    if not isinstance(var, LoRAParam) and var[...].dtype != dtype:
      var.set_value(var[...].astype(dtype))


def _delta(a: jax.Array, b: jax.Array, stacked: bool, scale: float) -> jax.Array:
  """scale * A B in the kernel's layout, float32 ([L, ...] when stacked)."""
  a, b = a.astype(jnp.float32), b.astype(jnp.float32)
  product = lambda a_, b_: jnp.tensordot(a_, b_, axes=1)
  return scale * (jax.vmap(product)(a, b) if stacked else product(a, b))


def merge_lora(model, dtype=None):
  """A plain `Decoder` with W + (alpha/rank) A B folded into each kernel (the input is untouched).

  Merged kernels are computed in float32 and stored in `dtype` (default: the model's param_dtype).
  A quantized base (QLoRA) is dequantized: the merged weights are dequantize(W) + (alpha/rank) A B,
  so they carry the base's quantization error (docs/lora.md).
  """
  merged = nnx.clone(model)  # new modules and variables (over the same arrays): model untouched
  dtype = jnp.dtype(dtype or merged.param_dtype)
  for layer, block in lora_blocks(merged):
    for part in ("attn", "mlp"):
      module = getattr(block, part)
      if not isinstance(module, tuple(_BASE_CLASSES)):
        continue
      for name in module.lora_targets:
        kernel = getattr(module, f"{name}_kernel")
        delta = _delta(getattr(module, f"{name}_lora_a")[...], getattr(module, f"{name}_lora_b")[...],
                       layer is None, module.lora_scale)
        if isinstance(kernel, quantize_lib.QuantizedWeight):
          value = quantize_lib.dequantize(kernel.quantized(), jnp.float32) + delta
          with nnx.use_eager_sharding(False):
            setattr(module, f"{name}_kernel", nnx.Param(value.astype(dtype),
                                                        out_sharding=kernel.axes))
        else:
          kernel.set_value((kernel[...].astype(jnp.float32) + delta).astype(dtype))
        delattr(module, f"{name}_lora_a")
        delattr(module, f"{name}_lora_b")
      for attr in ("lora_layer", "lora_targets", "lora_rank", "lora_alpha", "lora_dropout",
                   "lora_scale"):
        delattr(module, attr)
      module.__class__ = _BASE_CLASSES[type(module)]
  quantize_lib.dequantize_model(merged, dtype)  # the kernels without adapters, the embedding
  return merged


def count_params(state) -> int:
  return sum(int(math.prod(x.shape)) for x in jax.tree.leaves(state))


def state_bytes(state) -> int:
  return sum(int(math.prod(x.shape)) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(state))


def abstract_lora_model(cfg, lora_config, **options):
  """The LoRA model as shapes only (`nnx.eval_shape`): sizes of a 70B run without its weights."""
  def build():
    model = decoder_lib.Decoder(cfg, rngs=nnx.Rngs(0), **options)
    quantization = quantize_lib.from_config(lora_config)
    if quantization is not None:
      quantize_lib.quantize_model(model, quantization)
    apply_lora(model, lora_config)
    return model
  return nnx.eval_shape(build)


# ---- the trainer's view: config.lora ---------------------------------------------------------------

def enabled(config) -> bool:
  """Whether a full experiment config asks for LoRA (`config.lora.enabled`)."""
  section = config.get("lora") if hasattr(config, "get") else None
  return bool(section is not None and section.get("enabled", False))


def trainable_filter(config):
  """The nnx filter of the trained state: the adapters under LoRA, else every parameter."""
  return LoRAParam if enabled(config) else nnx.Param


def build_model(config, *, mesh=None, rules=None, seed: int = 0):
  """(Decoder, ModelConfig): `loading.build_model(config.model)` plus adapters when enabled.

  The base comes from `config.model.path` (or `hf_config` + seed), so a LoRA checkpoint needs only
  the adapters: resuming and `load_for_inference` rebuild the base from this same reference.
  """
  quantization = quantize_lib.from_config(config.lora) if enabled(config) else None
  model, cfg = loading.build_model(config.model, mesh=mesh, rules=rules, seed=seed,
                                   quantization=quantization)
  if enabled(config):
    apply_lora(model, config.lora, mesh=mesh, rules=rules, seed=seed)
  return model, cfg


def base_reference(config) -> dict[str, Any]:
  """What a LoRA checkpoint records about its frozen base (written into checkpoint metadata)."""
  return {"path": str(config.model.get("path", "")), "seed": int(config.train.get("seed", 0)),
          "param_dtype": str(config.model.get("param_dtype", "float32")),
          "base_dtype": str(config.lora.get("base_dtype", "")),
          "base_quantization": str(config.lora.get("base_quantization", "none") or "none"),
          "quantization_block_size": int(config.lora.get("quantization_block_size", 64)),
          "quantize_embedding": bool(config.lora.get("quantize_embedding", False))}


def abstract_split(config, hf_dict: dict, mesh, rules):
  """(graphdef, adapters, frozen, ModelConfig) of a LoRA config as ShapeDtypeStructs carrying
  their target shardings: what the trainer would hold, for ahead-of-time compilation (sizing)."""
  cfg = ModelConfig.from_hf_dict(hf_dict)
  abstract = abstract_lora_model(cfg, config.lora, **loading.module_options(config.model))
  graphdef, adapters, frozen = nnx.split(abstract, LoRAParam, ...)
  return (graphdef, loading.with_target_shardings(adapters, mesh, rules),
          loading.with_target_shardings(frozen, mesh, rules), cfg)
