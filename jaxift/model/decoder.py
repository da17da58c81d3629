"""The decoder: Llama-style (llama, mistral, qwen2, qwen3, phi3), Gemma 3 and GPT-2 blocks in one
Flax NNX module.

Parameter layout (logical axes in brackets) -- the import/export tables in `hf.py` follow it:
  embed.embedding [vocab, embed]        pos_embedding [None, embed] (gpt2)
  layers.attn_norm / mlp_norm           final_norm            lm_head [embed, vocab] (untied)
  layers.attn.q_kernel [embed, heads, head_dim]   k_kernel, v_kernel [embed, kv_heads, head_dim]
  layers.attn.o_kernel [heads, head_dim, embed]   q_norm/k_norm [head_dim] (qwen3, gemma3)
  layers.post_attn_norm / post_mlp_norm (gemma3: norms on each sublayer's output; gemma3's norm
  scales are offsets from 1, as in its checkpoints)
  layers.mlp.gate_kernel, up_kernel [embed, mlp]  down_kernel [mlp, embed]
With `scan_layers` the block parameters are stacked with a leading `layers` axis; otherwise
`layers` is an `nnx.List` of blocks.
"""
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxift.model import attention as attention_lib
from jaxift.model import layers as L
from jaxift.model.cache import KVCache, LayerCache
from jaxift.model.config import SLIDING, ModelConfig


def _dtype(d) -> jnp.dtype:
  return jnp.dtype(d) if d is not None else jnp.float32


def remat_policy_fn(name: str):
  """None (no remat) or the `jax.checkpoint` policy for a policy name."""
  if name in (None, "", "none"):
    return None
  if name == "full":
    return jax.checkpoint_policies.nothing_saveable
  policy = getattr(jax.checkpoint_policies, name, None)
  if policy is None or name.startswith("_"):
    known = [p for p in dir(jax.checkpoint_policies) if p.endswith("saveable")]
    raise ValueError(f"remat_policy {name!r} is unknown; use 'none', 'full' or one of {known}")
  return policy


class Attention(nnx.Module):

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, dtype, param_dtype, attention_impl: str):
    d, n, k, h = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    self.cfg, self.dtype, self.impl = cfg, dtype, attention_impl
    self.q_kernel = L.param(rngs, (d, n, h), ("embed", "heads", "head_dim"), param_dtype)
    self.k_kernel = L.param(rngs, (d, k, h), ("embed", "kv_heads", "head_dim"), param_dtype)
    self.v_kernel = L.param(rngs, (d, k, h), ("embed", "kv_heads", "head_dim"), param_dtype)
    self.o_kernel = L.param(rngs, (n, h, d), ("heads", "head_dim", "embed"), param_dtype)
    if cfg.attention_bias:
      self.q_bias = L.zeros(rngs, (n, h), ("heads", "head_dim"), param_dtype)
      self.k_bias = L.zeros(rngs, (k, h), ("kv_heads", "head_dim"), param_dtype)
      self.v_bias = L.zeros(rngs, (k, h), ("kv_heads", "head_dim"), param_dtype)
    if cfg.attention_out_bias:
      self.o_bias = L.zeros(rngs, (d,), ("embed",), param_dtype)
    if cfg.qk_norm:
      offset = cfg.family == "gemma3"
      self.q_norm = L.RMSNorm(h, cfg.norm_eps, rngs=rngs, param_dtype=param_dtype,
                              axis_name="head_dim", offset=offset)
      self.k_norm = L.RMSNorm(h, cfg.norm_eps, rngs=rngs, param_dtype=param_dtype,
                              axis_name="head_dim", offset=offset)

  def _project(self, x_BxTxD, name: str) -> jax.Array:
    y = L.matmul_2d(x_BxTxD, getattr(self, f"{name}_kernel")[...].astype(self.dtype))  # BTD,DNH
    if self.cfg.attention_bias:
      y = y + getattr(self, f"{name}_bias")[...].astype(self.dtype)
    return y

  def _layer_kind(self, rope, layer):
    """(cos, sin) and sliding window of this layer: per layer type for gemma3 (a Python int
    `layer` decides statically; a traced one, under scan, selects with `jnp.where`)."""
    cfg = self.cfg
    if cfg.layer_types is None:
      return rope, cfg.sliding_window
    sliding = np.array([t == SLIDING for t in cfg.layer_types])
    if isinstance(layer, (int, np.integer)):
      return ((rope["local"], cfg.sliding_window) if sliding[layer]
              else (rope["global"], None))
    is_sliding = jnp.asarray(sliding)[layer]
    rope = tuple(jnp.where(is_sliding, a, b) for a, b in zip(rope["local"], rope["global"]))
    no_window = jnp.iinfo(jnp.int32).max
    return rope, jnp.where(is_sliding, cfg.sliding_window or no_window, no_window)

  def _project_qkv(self, x_BxTxD, qkv_kernel=None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """q, k, v: three products, or one with `qkv_kernel` ([embed, (heads + 2 kv_heads) *
    head_dim], from `Decoder.unstacked_layers(fuse_projections=True)`)."""
    if qkv_kernel is None:
      return self._project(x_BxTxD, "q"), self._project(x_BxTxD, "k"), self._project(x_BxTxD, "v")
    cfg = self.cfg
    n, k = cfg.num_attention_heads, cfg.num_key_value_heads
    qkv = L.matmul_2d(x_BxTxD, qkv_kernel.astype(self.dtype))
    split = jnp.split(qkv.reshape(*qkv.shape[:-1], n + 2 * k, cfg.head_dim), [n, n + k], axis=-2)
    if cfg.attention_bias:
      split = [y + getattr(self, f"{name}_bias")[...].astype(self.dtype)
               for y, name in zip(split, "qkv")]
    return tuple(split)

  def __call__(self, x_BxTxD, rope, segment_ids_BxT, kv: LayerCache | None, layer=None,
               qkv_kernel=None) -> tuple[jax.Array, LayerCache | None]:
    q_BxTxNxH, k_BxTxKxH, v_BxTxKxH = self._project_qkv(x_BxTxD, qkv_kernel)
    if self.cfg.qk_norm:
      q_BxTxNxH, k_BxTxKxH = self.q_norm(q_BxTxNxH), self.k_norm(k_BxTxKxH)
    rope, window = self._layer_kind(rope, layer)
    if self.cfg.query_pre_attn_scalar is not None:  # attention scale != head_dim ** -0.5
      ratio = (self.cfg.query_pre_attn_scalar / self.cfg.head_dim) ** -0.5
      if ratio != 1.0:
        q_BxTxNxH = q_BxTxNxH * jnp.asarray(ratio, q_BxTxNxH.dtype)
    if rope is not None:
      q_BxTxNxH = L.apply_rope(q_BxTxNxH, *rope)
      k_BxTxKxH = L.apply_rope(k_BxTxKxH, *rope)
    if kv is None:  # training / full forward: keys are this row's tokens
      keys, values, kv_segments, offset = k_BxTxKxH, v_BxTxKxH, segment_ids_BxT, 0
    else:  # write the new tokens into this layer's cache slots, attend over the whole cache
      kv = kv.write(k_BxTxKxH, v_BxTxKxH)
      keys_BxKxHxS, values_BxKxSxH = kv.keys_values(self.dtype)
      out_BxTxNxH = attention_lib.cached_attention(
          q_BxTxNxH, keys_BxKxHxS, values_BxKxSxH, q_segment_ids_BxT=segment_ids_BxT,
          kv_segment_ids_BxS=kv.segment_ids, q_offset=kv.index, sliding_window=window,
          softcap=self.cfg.attn_logit_softcapping)
      return self._output(out_BxTxNxH), kv
    out_BxTxNxH = attention_lib.attention(
        q_BxTxNxH, keys, values, q_segment_ids_BxT=segment_ids_BxT,
        kv_segment_ids_BxS=kv_segments, q_offset=offset,
        sliding_window=window, impl=self.impl, softcap=self.cfg.attn_logit_softcapping)
    return self._output(out_BxTxNxH), kv

  def _output(self, out_BxTxNxH) -> jax.Array:
    """The output projection (a hook: LoRA adds its `o` adapter here)."""
    y_BxTxD = L.matmul_2d(out_BxTxNxH, self.o_kernel[...].astype(self.dtype), k_dims=2)  # BTNH,NHD
    if self.cfg.attention_out_bias:
      y_BxTxD = y_BxTxD + self.o_bias[...].astype(self.dtype)
    return y_BxTxD


class Mlp(nnx.Module):

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, dtype, param_dtype):
    d, f = cfg.hidden_size, cfg.intermediate_size
    self.cfg, self.dtype = cfg, dtype
    L.activation(cfg.hidden_act)  # fail early on an unknown name
    self.gated = cfg.family != "gpt2"
    if self.gated:
      self.gate_kernel = L.param(rngs, (d, f), ("embed", "mlp"), param_dtype)
    self.up_kernel = L.param(rngs, (d, f), ("embed", "mlp"), param_dtype)
    self.down_kernel = L.param(rngs, (f, d), ("mlp", "embed"), param_dtype)
    if cfg.mlp_bias:
      if self.gated:
        self.gate_bias = L.zeros(rngs, (f,), ("mlp",), param_dtype)
      self.up_bias = L.zeros(rngs, (f,), ("mlp",), param_dtype)
      self.down_bias = L.zeros(rngs, (d,), ("embed",), param_dtype)

  def _dense(self, x, name: str):
    y = L.matmul_2d(x, getattr(self, f"{name}_kernel")[...].astype(self.dtype))
    if self.cfg.mlp_bias:
      y = y + getattr(self, f"{name}_bias")[...].astype(self.dtype)
    return y

  def __call__(self, x_BxTxD, gate_up_kernel=None):
    """`gate_up_kernel`: [embed, 2 mlp], gate and up in one product (see `Attention._project_qkv`)."""
    act = L.activation(self.cfg.hidden_act)  # looked up here: the graphdef stays hashable/equal
    if self.gated and gate_up_kernel is not None:
      gate_BxTxF, up_BxTxF = jnp.split(L.matmul_2d(x_BxTxD, gate_up_kernel.astype(self.dtype)), 2,
                                       axis=-1)
      if self.cfg.mlp_bias:
        gate_BxTxF = gate_BxTxF + self.gate_bias[...].astype(self.dtype)
        up_BxTxF = up_BxTxF + self.up_bias[...].astype(self.dtype)
      h_BxTxF = act(gate_BxTxF) * up_BxTxF
    elif self.gated:
      h_BxTxF = act(self._dense(x_BxTxD, "gate")) * self._dense(x_BxTxD, "up")
    else:
      h_BxTxF = act(self._dense(x_BxTxD, "up"))
    return self._dense(h_BxTxF, "down")


class Block(nnx.Module):
  """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x)).
  gemma3 also norms each sublayer's output: x + post_attn_norm(attn(norm(x))), same for the mlp."""

  def __init__(self, cfg: ModelConfig, *, rngs, dtype, param_dtype, attention_impl):
    self.attn_norm = L.make_norm(cfg, cfg.hidden_size, rngs=rngs, param_dtype=param_dtype)
    self.attn = Attention(cfg, rngs=rngs, dtype=dtype, param_dtype=param_dtype,
                          attention_impl=attention_impl)
    self.mlp_norm = L.make_norm(cfg, cfg.hidden_size, rngs=rngs, param_dtype=param_dtype)
    self.mlp = Mlp(cfg, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.post_norms = cfg.family == "gemma3"
    if self.post_norms:
      self.post_attn_norm = L.make_norm(cfg, cfg.hidden_size, rngs=rngs, param_dtype=param_dtype)
      self.post_mlp_norm = L.make_norm(cfg, cfg.hidden_size, rngs=rngs, param_dtype=param_dtype)

  def __call__(self, x_BxTxD, rope, segment_ids_BxT, kv: LayerCache | None, layer=None,
               fused: dict | None = None) -> tuple[jax.Array, LayerCache | None]:
    """`fused`: {'qkv': kernel, 'gate_up': kernel} from `Decoder.unstacked_layers`, or None."""
    fused = fused or {}
    # Named scopes tag the compiled ops for the per-op profile (jaxift.tools.profile_step).
    normed_BxTxD = self.attn_norm(x_BxTxD)
    with jax.named_scope("attention"):
      y_BxTxD, kv = self.attn(normed_BxTxD, rope, segment_ids_BxT, kv, layer,
                              qkv_kernel=fused.get("qkv"))
    if self.post_norms:
      y_BxTxD = self.post_attn_norm(y_BxTxD)
    x_BxTxD = x_BxTxD + y_BxTxD
    normed_BxTxD = self.mlp_norm(x_BxTxD)
    with jax.named_scope("mlp"):
      y_BxTxD = self.mlp(normed_BxTxD, gate_up_kernel=fused.get("gate_up"))
    if self.post_norms:
      y_BxTxD = self.post_mlp_norm(y_BxTxD)
    return x_BxTxD + y_BxTxD, kv


class Decoder(nnx.Module):
  """Decoder-only LM: `__call__` -> float32 logits; `forward_with_cache` -> (logits, KVCache)."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, dtype="float32", param_dtype="float32",
               scan_layers: bool = False, remat_policy: str = "none",
               attention_impl: str = "auto"):
    self.cfg = cfg
    self.dtype, self.param_dtype = _dtype(dtype), _dtype(param_dtype)
    self.scan_layers = scan_layers
    self.remat_policy = remat_policy
    remat_policy_fn(remat_policy)  # fail early on a bad name
    self.attention_impl = attention_lib.resolve_impl(attention_impl)
    block_kw = dict(dtype=self.dtype, param_dtype=self.param_dtype,
                    attention_impl=self.attention_impl)
    pd = self.param_dtype
    # Logical names are not mesh axes: shardings are applied by the loader/trainer from rules.
    with nnx.use_eager_sharding(False):
      self.embed = nnx.Embed(cfg.vocab_size, cfg.hidden_size, rngs=rngs, param_dtype=pd,
                             embedding_init=nnx.with_partitioning(
                                 jax.nn.initializers.normal(0.02), ("vocab", "embed")))
      if cfg.family == "gpt2":
        self.pos_embedding = L.param(rngs, (cfg.max_position_embeddings, cfg.hidden_size),
                                     (None, "embed"), pd, jax.nn.initializers.normal(0.01))
      if scan_layers:
        keys = jax.random.split(rngs.params(), cfg.num_hidden_layers)

        @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def make_block(key):
          return Block(cfg, rngs=nnx.Rngs(params=key), **block_kw)
        self.layers = make_block(keys)
      else:
        self.layers = nnx.List([Block(cfg, rngs=rngs, **block_kw)
                                for _ in range(cfg.num_hidden_layers)])
      self.final_norm = L.make_norm(cfg, cfg.hidden_size, rngs=rngs, param_dtype=pd)
      if not cfg.tie_word_embeddings:
        self.lm_head = L.param(rngs, (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"), pd)

  # ---- KV cache ----------------------------------------------------------------------------------
  def init_cache(self, batch: int, max_len: int) -> KVCache:
    return KVCache.empty(self.cfg, batch, max_len, self.dtype)

  # ---- forward -----------------------------------------------------------------------------------
  @jax.named_scope("embed")
  def _embed(self, inputs_BxT, positions_BxT):
    x_BxTxD = self.embed.embedding[...][inputs_BxT].astype(self.dtype)
    if self.cfg.family == "gemma3":  # scaled by sqrt(hidden), rounded to the dtype (as HF)
      x_BxTxD = x_BxTxD * jnp.asarray(self.cfg.hidden_size ** 0.5, jnp.float32).astype(self.dtype)
    if self.cfg.family == "gpt2":
      x_BxTxD = x_BxTxD + self.pos_embedding[...][positions_BxT].astype(self.dtype)
    return x_BxTxD

  def unstacked_layers(self, fuse_projections: bool = False) -> tuple | None:
    """With `scan_layers`: each layer's parameters as arrays of their own, for
    `forward_with_cache(layers=...)`; None otherwise. One {'state': nnx.State sliced from the
    stacked one, 'fused': None or {'qkv': [embed, (heads + 2 kv_heads) * head_dim], 'gate_up':
    [embed, 2 mlp]}} per layer.

    Why: a scanned layer slices its kernels out of the stacked arrays at every call, and XLA:CPU
    copies each slice before its matmul: at decode, one token per row, that copy costs as much as
    the matmuls (every weight is read twice and written once per step). Sliced once, outside the
    decode loop, the copy is paid once per generate call instead of once per token.
    `fuse_projections` also concatenates q/k/v and gate/up into one kernel each (plain layers only,
    not LoRA or quantized ones): at one token per step the products are bound by reading the
    weights, and five products become two (30 SmolLM2-shaped layers' matmuls in isolation on
    XLA:CPU: 17.5 -> 13.7 ms at batch 1; slower at batch 8 and 32, docs/benchmarks.md)."""
    if not self.scan_layers:
      return None
    state = nnx.state(self.layers)
    fuse = (fuse_projections and type(self.layers.attn) is Attention  # pylint: disable=unidiomatic-typecheck
            and type(self.layers.mlp) is Mlp and self.layers.mlp.gated  # pylint: disable=unidiomatic-typecheck
            and all(isinstance(getattr(m, f"{name}_kernel"), nnx.Param)
                    for m, names in ((self.layers.attn, "qkv"), (self.layers.mlp, ("gate", "up")))
                    for name in names))
    if fuse:
      attn, mlp = self.layers.attn, self.layers.mlp
      n_layers, d = self.cfg.num_hidden_layers, self.cfg.hidden_size
      qkv = jnp.concatenate([getattr(attn, f"{name}_kernel")[...].reshape(n_layers, d, -1)
                             for name in "qkv"], axis=-1)
      gate_up = jnp.concatenate([mlp.gate_kernel[...], mlp.up_kernel[...]], axis=-1)
    return tuple({"state": jax.tree.map(lambda a, i=i: a[i], state),
                  "fused": {"qkv": qkv[i], "gate_up": gate_up[i]} if fuse else None}
                 for i in range(self.cfg.num_hidden_layers))

  def _run_layers(self, x_BxTxD, rope, segment_ids_BxT, kv: LayerCache | None, layers=None):
    policy = remat_policy_fn(self.remat_policy)

    def apply_block(graphdef, state, x, kv, layer, fused=None):
      block = nnx.merge(graphdef, state)
      return block(x, rope, segment_ids_BxT, None if kv is None else kv.replace(layer=layer),
                   layer, fused)

    if policy is not None:  # unstacked layers keep their index static (gemma3 layer types)
      apply_block = jax.checkpoint(apply_block, policy=policy,
                                   static_argnums=(0,) if self.scan_layers else (0, 4))

    if self.scan_layers and layers is not None:  # stacked parameters, sliced by the caller
      graphdef = nnx.graphdef(self.layers)
      for i, layer in enumerate(layers):
        x_BxTxD, kv = apply_block(graphdef, layer["state"], x_BxTxD, kv, i, layer["fused"])
    elif self.scan_layers:
      if kv is not None and isinstance(kv.k, tuple):
        raise ValueError("a per-layer KV cache needs the layers run one by one: pass "
                         "forward_with_cache(layers=model.unstacked_layers())")
      graphdef, state = nnx.split(self.layers)

      def body(carry, xs):
        x, kv = carry
        layer_state, layer = xs
        return apply_block(graphdef, layer_state, x, kv, layer), None

      layer_ids = jnp.arange(self.cfg.num_hidden_layers)
      (x_BxTxD, kv), _ = jax.lax.scan(body, (x_BxTxD, kv), (state, layer_ids))
    else:
      for i, block in enumerate(self.layers):
        graphdef, state = nnx.split(block)
        x_BxTxD, kv = apply_block(graphdef, state, x_BxTxD, kv, i)
    return x_BxTxD, kv

  def _hidden(self, inputs_BxT, positions_BxT, segment_ids_BxT, cache, cache_index, layers=None):
    inputs_BxT = jnp.asarray(inputs_BxT, jnp.int32)
    positions_BxT = jnp.asarray(positions_BxT, jnp.int32)
    segment_ids_BxT = jnp.asarray(segment_ids_BxT, jnp.int32)
    x_BxTxD = self._embed(inputs_BxT, positions_BxT)
    rope = None if self.cfg.family == "gpt2" else L.rope_tables(self.cfg, positions_BxT)
    if self.cfg.layer_types is not None:  # gemma3: sliding layers' rotary has its own base
      local = dataclasses.replace(self.cfg, rope_theta=self.cfg.rope_local_theta,
                                  rope_scaling=None)
      rope = {"global": rope, "local": L.rope_tables(local, positions_BxT)}
    kv = None
    if cache is not None:
      index = jnp.asarray(cache_index, jnp.int32)
      segments_BxS = jax.lax.dynamic_update_slice(
          cache.segment_ids, segment_ids_BxT.astype(cache.segment_ids.dtype), (0, index))
      kv = LayerCache(k=cache.k, v=cache.v, segment_ids=segments_BxS, index=index,
                      layer=jnp.int32(0))
    x_BxTxD, kv = self._run_layers(x_BxTxD, rope, segment_ids_BxT, kv, layers)
    hidden_BxTxD = self.final_norm(x_BxTxD)
    new_cache = None if kv is None else KVCache(k=kv.k, v=kv.v, segment_ids=kv.segment_ids)
    return hidden_BxTxD, new_cache

  def hidden(self, inputs_BxT, positions_BxT, segment_ids_BxT) -> jax.Array:
    """Final-norm output [B, T, D] in the compute dtype (for a chunked loss)."""
    return self._hidden(inputs_BxT, positions_BxT, segment_ids_BxT, None, None)[0]

  @jax.named_scope("logits")
  def logits_from_hidden(self, hidden_BxTxD) -> jax.Array:
    if self.cfg.tie_word_embeddings:
      kernel_VxD = self.embed.embedding[...].astype(self.dtype)
      b, t, d = hidden_BxTxD.shape
      logits = jax.lax.dot_general(hidden_BxTxD.astype(self.dtype).reshape(b * t, d), kernel_VxD,
                                   (((1,), (1,)), ((), ())),
                                   preferred_element_type=jnp.float32).reshape(b, t, -1)
    else:
      logits = L.matmul_2d(hidden_BxTxD.astype(self.dtype), self.lm_head[...].astype(self.dtype),
                           preferred_element_type=jnp.float32)  # BTD,DV->BTV
    cap = self.cfg.final_logit_softcapping
    if cap is not None:
      logits = jnp.tanh(logits / cap) * cap
    return logits

  def __call__(self, inputs_BxT, positions_BxT, segment_ids_BxT) -> jax.Array:
    """Float32 logits [B, T, V] of a batch-contract row set (training, scoring)."""
    hidden_BxTxD, _ = self._hidden(inputs_BxT, positions_BxT, segment_ids_BxT, None, None)
    return self.logits_from_hidden(hidden_BxTxD)

  def forward_with_cache(self, inputs_BxT, positions_BxT, segment_ids_BxT, cache: KVCache,
                         cache_index: Any, *, last_logits_only: bool = False,
                         layers: tuple | None = None) -> tuple[jax.Array, KVCache]:
    """(logits [B, T, V], the cache with the new tokens written at slots `cache_index ..
    cache_index+T-1`): prefill and each decode step of generation. A query attends to the slots up
    to its own with an equal, non-zero segment id.

    `last_logits_only`: logits [B, 1, V] of the last column only (a prefill samples from nothing
    else; the other P-1 columns' logits were a fifth of its work at SmolLM2's vocabulary).
    `layers`: `unstacked_layers()`, computed once by the caller (scanned models)."""
    hidden_BxTxD, new_cache = self._hidden(inputs_BxT, positions_BxT, segment_ids_BxT, cache,
                                           cache_index, layers)
    if last_logits_only:
      hidden_BxTxD = hidden_BxTxD[:, -1:]
    return self.logits_from_hidden(hidden_BxTxD), new_cache
