"""Builds the decoder from `config.model`: pretrained weights placed straight into their shardings,
or random init born sharded (DESIGN.md section 6).

Pretrained: the module is built abstractly (`nnx.eval_shape`), every tensor is checked (present,
right shape) before any is read, then each is read on the host one at a time, converted to the
jaxift layout and `param_dtype`, and placed shard by shard with `jax.make_array_from_callback`.
"""
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxift.model import gguf as gguf_lib
from jaxift.model import hf
from jaxift.model import quantize as quantize_lib
from jaxift.model import weights
from jaxift.model.config import ModelConfig, default_model_config
from jaxift.model.decoder import Decoder
from jaxift.model.sharding import DEFAULT_LOGICAL_RULES, named_sharding


def module_options(model_config) -> dict[str, Any]:
  """Decoder keyword arguments from a `config.model` ConfigDict (or dict)."""
  get = model_config.get
  return dict(dtype=get("dtype", "float32"), param_dtype=get("param_dtype", "float32"),
              scan_layers=bool(get("scan_layers", False)),
              remat_policy=get("remat_policy", "none") or "none",
              attention_impl=get("attention", "auto") or "auto")


def open_checkpoint(path: str):
  """(ModelConfig, tensor source) for an HF directory, a .gguf file or a hub id."""
  local = hf.resolve_path(str(path))
  if local.is_file():
    if local.suffix != ".gguf":
      raise ValueError(f"{local}: expected a Hugging Face directory or a .gguf file")
    return gguf_lib.open_gguf(local)
  return hf.open_hf_dir(local)


def logical_axes(variable) -> tuple | None:
  return variable.get_metadata().get("out_sharding")


def param_sharding(variable, shape, mesh: Mesh | None, rules) -> NamedSharding | None:
  if mesh is None:
    return None
  return named_sharding(mesh, logical_axes(variable), rules, shape)


def state_shardings(abstract_state, mesh: Mesh, rules=DEFAULT_LOGICAL_RULES):
  """NamedShardings for an (abstract) nnx State, from the parameters' logical axes."""
  flat = nnx.to_flat_state(abstract_state)
  out = []
  for path, var in flat:
    var = var.replace(named_sharding(mesh, logical_axes(var), rules, var.shape))
    out.append((path, var))
  return nnx.from_flat_state(out)


def _place(host: np.ndarray, sharding: NamedSharding | None) -> jax.Array:
  if sharding is None:
    return jnp.asarray(host)
  return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def _plan(cfg: ModelConfig, flat, scan_layers: bool, source) -> list:
  """[(variable, rule, layers)] for every parameter; raises before reading anything."""
  rules = {r.path: r for r in weights.rules_for(cfg)}
  available = source.keys()
  plan, missing, wrong = [], [], []
  for path, var in flat:
    sub, layer = weights.split_path(path, scan_layers)
    rule = rules.get(sub)
    if rule is None:
      raise KeyError(f"internal: no import rule for parameter {'/'.join(map(str, path))}")
    layers = (list(range(cfg.num_hidden_layers)) if scan_layers and rule.per_layer
              else [layer])
    layer_shape = tuple(var.shape[1:]) if scan_layers and rule.per_layer else tuple(var.shape)
    expected = weights.expected_hf_shape(rule, layer_shape)
    for i in layers:
      name = rule.name(i)
      if name not in available:
        missing.append(name)
      elif tuple(source.shape(name)) != expected:
        wrong.append(f"{name}: expected shape {expected}, found {tuple(source.shape(name))}")
    plan.append((path, var, rule, layers))
  if missing:
    shown = ", ".join(sorted(set(missing))[:8])
    more = f" (and {len(set(missing)) - 8} more)" if len(set(missing)) > 8 else ""
    raise KeyError(f"{source.description}: missing tensor(s) {shown}{more} for a "
                   f"{cfg.model_type} model with {cfg.num_hidden_layers} layers")
  if wrong:
    raise ValueError(f"{source.description}: shape mismatch: " + "; ".join(wrong[:8]))
  return plan


def load_pretrained(cfg: ModelConfig, source, options: dict, *, mesh=None,
                    rules=DEFAULT_LOGICAL_RULES,
                    quantization: quantize_lib.BaseQuantization | None = None) -> Decoder:
  """The pretrained Decoder; with `quantization` its frozen kernels are quantized tensor by tensor
  as they are read (one layer's full-precision tensor on the host at a time, codes and scales placed
  straight into the shardings of the weight's logical axes)."""
  abstract = nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0), **options))
  graphdef, state = nnx.split(abstract)
  flat = list(nnx.to_flat_state(state))
  param_dtype = jnp.dtype(options.get("param_dtype", "float32"))
  plan = _plan(cfg, flat, options.get("scan_layers", False), source)
  if quantization is not None:
    quantize_lib.check_divides(quantization, {tuple(p): tuple(v.shape) for p, v in flat})
  quantized = {}
  for path, var, rule, layers in plan:
    axis = None if quantization is None else quantization.axis(path)
    if axis is not None:
      quantized[tuple(path)] = _load_quantized(var, rule, layers, source, quantization, axis,
                                               mesh, rules, options)
      continue
    sharding = param_sharding(var, var.shape, mesh, rules)
    stacked = bool(options.get("scan_layers", False)) and rule.per_layer
    # A stacked parameter is placed layer by layer (sharded like the stack minus its first axis)
    # and stacked on the devices, so the host never holds more than one layer's tensor.
    piece_sharding = sharding
    if stacked and sharding is not None:
      piece_sharding = NamedSharding(mesh, PartitionSpec(*tuple(sharding.spec)[1:]))
    pieces = []
    for i in layers:
      host = np.ascontiguousarray(rule.to_ours(source.get(rule.name(i))), dtype=param_dtype)
      pieces.append(_place(host, piece_sharding))
      del host
    if stacked:
      value = jax.jit(lambda *xs: jnp.stack(xs), out_shardings=sharding)(*pieces)
    else:
      value = pieces[0]
    del pieces
    var.set_value(value)
  model = nnx.merge(graphdef, nnx.from_flat_state(flat))
  for path, (q, axes) in quantized.items():  # their slots still hold shapes only
    quantize_lib.install(model, path, q, axes)
  return model


def _load_quantized(var, rule, layers, source, quantization, axis, mesh, rules, options):
  """(Quantized, logical axes) of one frozen kernel: each layer's tensor is read in float32,
  quantized on the host and its codes and scales placed in their shards, then stacked on the
  devices when the layers are (`scan_layers`)."""
  axes = tuple(logical_axes(var) or (None,) * len(var.shape))
  stacked = bool(options.get("scan_layers", False)) and rule.per_layer
  piece_axes = axes[1:] if stacked else axes
  codes, scales, q = [], [], None
  for i in layers:
    host = np.ascontiguousarray(rule.to_ours(source.get(rule.name(i))), dtype=np.float32)
    q = quantize_lib.quantize(host, quantization.scheme, quantization.block_size, axis,
                              name=rule.name(i))
    del host
    for out, x in ((codes, q.codes), (scales, q.scales)):
      sharding = None if mesh is None else named_sharding(mesh, piece_axes, rules, x.shape)
      out.append(_place(np.ascontiguousarray(x), sharding))
  if stacked:
    stack = lambda xs: jax.jit(lambda *a: jnp.stack(a), out_shardings=None if mesh is None else
                               named_sharding(mesh, axes, rules, (len(xs),) + xs[0].shape))(*xs)
    codes, scales = [stack(codes)], [stack(scales)]
  return quantize_lib.Quantized(codes[0], scales[0], q.scheme, q.block_size, q.axis), axes


def init_random(cfg: ModelConfig, options: dict, *, mesh=None, rules=DEFAULT_LOGICAL_RULES,
                seed: int = 0) -> Decoder:
  def init():
    return nnx.split(Decoder(cfg, rngs=nnx.Rngs(seed), **options))[1]
  abstract = nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(seed), **options))
  graphdef, abstract_state = nnx.split(abstract)
  if mesh is None:
    return nnx.merge(graphdef, jax.jit(init)())
  shardings = state_shardings(abstract_state, mesh, rules)
  return nnx.merge(graphdef, jax.jit(init, out_shardings=shardings)())


def architecture(model_config) -> dict:
  """The HF config.json dict `config.model` describes, reading no weights (a checkpoint's header or
  metadata only, or `hf_config`)."""
  if model_config.get("path", ""):
    return open_checkpoint(model_config.path)[0].to_hf_dict()
  hf = model_config.get("hf_config")
  hf_dict = hf.to_dict() if hasattr(hf, "to_dict") else dict(hf or {})
  if not hf_dict:
    raise ValueError("config.model needs either `path` (HF dir, .gguf or hub id) or `hf_config`")
  return ModelConfig.from_hf_dict(hf_dict).to_hf_dict()


def build_model(model_config, *, mesh: Mesh | None = None, rules=None, seed: int = 0,
                quantization: quantize_lib.BaseQuantization | None = None
                ) -> tuple[Decoder, ModelConfig]:
  """(Decoder, ModelConfig) from `config.model`: pretrained from `path`, else random `hf_config`.
  `quantization`: frozen kernels held quantized (QLoRA), quantized while loading."""
  rules = DEFAULT_LOGICAL_RULES if rules is None else rules
  options = module_options(model_config)
  path = model_config.get("path", "")
  if path:
    cfg, source = open_checkpoint(path)
    return load_pretrained(cfg, source, options, mesh=mesh, rules=rules,
                           quantization=quantization), cfg
  hf_config = model_config.get("hf_config")
  hf_dict = hf_config.to_dict() if hasattr(hf_config, "to_dict") else dict(hf_config or {})
  if not hf_dict:
    raise ValueError("config.model needs either `path` (HF dir, .gguf or hub id) or `hf_config`")
  cfg = ModelConfig.from_hf_dict(hf_dict)
  model = init_random(cfg, options, mesh=mesh, rules=rules, seed=seed)
  if quantization is not None:  # a random base is small (tests, sizing): quantized after init
    quantize_lib.quantize_model(model, quantization, mesh=mesh, rules=rules)
  return model, cfg


def abstract_model(model_config: ml_collections.ConfigDict, hf_dict: dict, mesh: Any, rules: Any):
  """(graphdef, abstract params with target shardings, rest, ModelConfig), reading no weights."""
  cfg = ModelConfig.from_hf_dict(hf_dict)
  options = module_options(model_config)
  abstract = nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0), **options))
  graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
  if jax.tree.leaves(rest):
    raise ValueError("the decoder holds non-parameter state; it cannot be rebuilt abstractly")
  return graphdef, with_target_shardings(params, mesh, rules), rest, cfg


def with_target_shardings(abstract_state, mesh: Mesh | None, rules) -> Any:
  """ShapeDtypeStructs of an abstract nnx State carrying the shardings its logical axes get on
  `mesh` (the default device without a mesh): targets for a restore or an AOT compile."""
  leaves, treedef = jax.tree.flatten(abstract_state)
  if mesh is not None:
    shardings = jax.tree.leaves(state_shardings(abstract_state, mesh, rules))
  else:
    shardings = [jax.sharding.SingleDeviceSharding(jax.devices()[0])] * len(leaves)
  return jax.tree.unflatten(treedef, [
      jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s) for x, s in zip(leaves, shardings)])


def load_model(path: str | pathlib.Path, *, mesh=None, rules=None, **options) -> tuple[Decoder, ModelConfig]:
  """Convenience: `load_model('dir_or.gguf', dtype='bfloat16', scan_layers=True)`."""
  model_config = default_model_config()
  model_config.path = str(path)
  model_config.update(options)
  return build_model(model_config, mesh=mesh, rules=rules)
