"""Which Hugging Face tensor each jaxift parameter comes from, and how its layout changes.

HF `nn.Linear` weights are [out, in]; jaxift kernels are [in, ...out] with heads split out
(`q_kernel [embed, heads, head_dim]`). GPT-2's `Conv1D` weights are already [in, out], and its fused
`c_attn` holds q, k and v side by side. Import and export both read this one table.
"""
import dataclasses
import functools
from typing import Any, Callable

import jax
import numpy as np

from jaxift.model.config import ModelConfig

Path = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Rule:
  path: Path  # inside a Block when per_layer, else inside the Decoder
  hf_name: str  # '{i}' is the layer index
  to_ours: Callable[[Any], Any]
  to_hf: Callable[[Any], Any]
  per_layer: bool = True
  part: tuple[int, int] | None = None  # (k, n): k-th of n pieces concatenated on the HF last axis
  part_axis: int = -1  # the HF axis the parts are concatenated on (0: phi3's fused rows)
  sizes: tuple[int, ...] | None = None  # sizes of the parts on part_axis, when they differ

  def name(self, layer: int | None = None) -> str:
    return self.hf_name.format(i=layer)


def _identity(x):
  return x


def _linear(x):  # [out, in] <-> [in, out]
  return x.T


def _rules_llama(cfg: ModelConfig) -> list[Rule]:
  d, n, k, h = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
  p = "model.layers.{i}."

  def heads_in(heads):  # q/k/v: [heads*head_dim, embed] <-> [embed, heads, head_dim]
    return (lambda w: w.T.reshape(d, heads, h), lambda x: x.reshape(d, heads * h).T)

  def heads_bias(heads):
    return (lambda b: b.reshape(heads, h), lambda x: x.reshape(heads * h))

  rules = [
      Rule(("attn_norm", "scale"), p + "input_layernorm.weight", _identity, _identity),
      Rule(("attn", "q_kernel"), p + "self_attn.q_proj.weight", *heads_in(n)),
      Rule(("attn", "k_kernel"), p + "self_attn.k_proj.weight", *heads_in(k)),
      Rule(("attn", "v_kernel"), p + "self_attn.v_proj.weight", *heads_in(k)),
      Rule(("attn", "o_kernel"), p + "self_attn.o_proj.weight",
           lambda w: w.T.reshape(n, h, d), lambda x: x.reshape(n * h, d).T),
      Rule(("mlp_norm", "scale"), p + "post_attention_layernorm.weight", _identity, _identity),
      Rule(("mlp", "gate_kernel"), p + "mlp.gate_proj.weight", _linear, _linear),
      Rule(("mlp", "up_kernel"), p + "mlp.up_proj.weight", _linear, _linear),
      Rule(("mlp", "down_kernel"), p + "mlp.down_proj.weight", _linear, _linear),
      Rule(("embed", "embedding"), "model.embed_tokens.weight", _identity, _identity, False),
      Rule(("final_norm", "scale"), "model.norm.weight", _identity, _identity, False),
      Rule(("lm_head",), "lm_head.weight", _linear, _linear, False),
  ]
  if cfg.attention_bias:
    rules += [Rule(("attn", "q_bias"), p + "self_attn.q_proj.bias", *heads_bias(n)),
              Rule(("attn", "k_bias"), p + "self_attn.k_proj.bias", *heads_bias(k)),
              Rule(("attn", "v_bias"), p + "self_attn.v_proj.bias", *heads_bias(k))]
  if cfg.attention_out_bias:
    rules.append(Rule(("attn", "o_bias"), p + "self_attn.o_proj.bias", _identity, _identity))
  if cfg.qk_norm:
    rules += [Rule(("attn", "q_norm", "scale"), p + "self_attn.q_norm.weight", _identity, _identity),
              Rule(("attn", "k_norm", "scale"), p + "self_attn.k_norm.weight", _identity, _identity)]
  if cfg.mlp_bias:
    rules += [Rule(("mlp", f"{m}_bias"), p + f"mlp.{m}_proj.bias", _identity, _identity)
              for m in ("gate", "up", "down")]
  if cfg.family == "gemma3":
    rules += [Rule(("mlp_norm", "scale"), p + "pre_feedforward_layernorm.weight", _identity,
                   _identity),
              Rule(("post_attn_norm", "scale"), p + "post_attention_layernorm.weight", _identity,
                   _identity),
              Rule(("post_mlp_norm", "scale"), p + "post_feedforward_layernorm.weight", _identity,
                   _identity)]
    rules = [r for r in rules if r.hf_name != p + "post_attention_layernorm.weight"
             or r.path == ("post_attn_norm", "scale")]
  if cfg.family == "phi3":
    rules = [r for r in rules if r.path[0] not in ("attn", "mlp")
             or r.path[1] in ("o_kernel", "down_kernel")] + _fused_phi3(cfg, p)
  return rules


def _fused_phi3(cfg: ModelConfig, p: str) -> list[Rule]:
  """phi3: qkv_proj [(N+2K)*H, D] = q | k | v rows, gate_up_proj [2F, D] = gate | up rows."""
  d, n, k, h, f = (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads,
                   cfg.head_dim, cfg.intermediate_size)
  sizes = (n * h, k * h, k * h)
  starts = (0, n * h, n * h + k * h)
  rules = []
  for j, (name, heads) in enumerate((("q", n), ("k", k), ("v", k))):
    rules.append(Rule(
        ("attn", f"{name}_kernel"), p + "self_attn.qkv_proj.weight",
        (lambda w, a=starts[j], b=sizes[j], m=heads: w[a:a + b].T.reshape(d, m, h)),
        (lambda x, m=heads: x.reshape(d, m * h).T), part=(j, 3), part_axis=0, sizes=sizes))
  for j, name in enumerate(("gate", "up")):
    rules.append(Rule(("mlp", f"{name}_kernel"), p + "mlp.gate_up_proj.weight",
                      (lambda w, a=j * f: w[a:a + f].T), _linear, part=(j, 2), part_axis=0,
                      sizes=(f, f)))
  return rules


def _rules_gpt2(cfg: ModelConfig) -> list[Rule]:
  d, n, h = cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim
  p = "transformer.h.{i}."

  def qkv(j):  # Conv1D c_attn [embed, 3*embed] = [q | k | v]
    return dict(to_ours=lambda w: w[:, j * d:(j + 1) * d].reshape(d, n, h),
                to_hf=lambda x: x.reshape(d, n * h), part=(j, 3))

  def qkv_bias(j):
    return dict(to_ours=lambda b: b[j * d:(j + 1) * d].reshape(n, h),
                to_hf=lambda x: x.reshape(n * h), part=(j, 3))

  rules = [Rule(("attn_norm", "scale"), p + "ln_1.weight", _identity, _identity),
           Rule(("attn_norm", "bias"), p + "ln_1.bias", _identity, _identity),
           Rule(("mlp_norm", "scale"), p + "ln_2.weight", _identity, _identity),
           Rule(("mlp_norm", "bias"), p + "ln_2.bias", _identity, _identity)]
  for j, name in enumerate("qkv"):
    rules.append(Rule(("attn", f"{name}_kernel"), p + "attn.c_attn.weight", **qkv(j)))
    rules.append(Rule(("attn", f"{name}_bias"), p + "attn.c_attn.bias", **qkv_bias(j)))
  rules += [
      Rule(("attn", "o_kernel"), p + "attn.c_proj.weight",
           lambda w: w.reshape(n, h, d), lambda x: x.reshape(n * h, d)),
      Rule(("attn", "o_bias"), p + "attn.c_proj.bias", _identity, _identity),
      Rule(("mlp", "up_kernel"), p + "mlp.c_fc.weight", _identity, _identity),
      Rule(("mlp", "up_bias"), p + "mlp.c_fc.bias", _identity, _identity),
      Rule(("mlp", "down_kernel"), p + "mlp.c_proj.weight", _identity, _identity),
      Rule(("mlp", "down_bias"), p + "mlp.c_proj.bias", _identity, _identity),
      Rule(("embed", "embedding"), "transformer.wte.weight", _identity, _identity, False),
      Rule(("pos_embedding",), "transformer.wpe.weight", _identity, _identity, False),
      Rule(("final_norm", "scale"), "transformer.ln_f.weight", _identity, _identity, False),
      Rule(("final_norm", "bias"), "transformer.ln_f.bias", _identity, _identity, False),
      Rule(("lm_head",), "lm_head.weight", _linear, _linear, False),
  ]
  return rules


def rules_for(cfg: ModelConfig) -> list[Rule]:
  rules = _rules_gpt2(cfg) if cfg.family == "gpt2" else _rules_llama(cfg)
  if cfg.tie_word_embeddings:
    rules = [r for r in rules if r.path != ("lm_head",)]
  return rules


def split_path(path: tuple, scan_layers: bool) -> tuple[Path, int | None]:
  """A flat-state path -> (path inside Block or Decoder, layer index or None)."""
  if path[0] != "layers":
    return tuple(path), None
  if scan_layers:
    return tuple(path[1:]), None
  return tuple(path[2:]), int(path[1])


@functools.lru_cache(maxsize=None)  # one trace per rule and shape, not per layer
def expected_hf_shape(rule: Rule, our_shape: tuple[int, ...]) -> tuple[int, ...]:
  """The HF tensor shape this parameter implies (parts count the whole fused tensor)."""
  out = list(jax.eval_shape(rule.to_hf, jax.ShapeDtypeStruct(our_shape, np.float32)).shape)
  if rule.part is not None:
    out[rule.part_axis] = sum(rule.sizes) if rule.sizes else out[rule.part_axis] * rule.part[1]
  return tuple(out)
