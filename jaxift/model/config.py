"""Model architecture (from/to a Hugging Face `config.json`) and the `config.model` defaults.

`ModelConfig` holds the architecture only; how the model runs (dtypes, scan, remat, attention
kernel) lives in `config.model` (`default_model_config()`), so one checkpoint runs many ways.
"""
import dataclasses
import json
from typing import Any

import ml_collections

# HF `model_type` -> the decoder family that computes it.
# `gemma3` (the multimodal config) is read for its `text_config` only.
FAMILIES = {"llama": "llama", "mistral": "llama", "qwen2": "llama", "qwen3": "llama", "gpt2": "gpt2",
            "gemma3_text": "gemma3", "gemma3": "gemma3", "phi3": "phi3"}
SUPPORTED_MODEL_TYPES = tuple(FAMILIES)
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "longrope")
_ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                  "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM", "gpt2": "GPT2LMHeadModel",
                  "gemma3_text": "Gemma3ForCausalLM", "phi3": "Phi3ForCausalLM"}
SLIDING, FULL = "sliding_attention", "full_attention"


def default_model_config() -> ml_collections.ConfigDict:
  """`config.model`: where the weights come from and how the decoder runs."""
  c = ml_collections.ConfigDict()
  c.path = ""  # HF directory, .gguf file or hub id; '' = random init from `hf_config`.
  # config.json-style dict for random init of small models (empty when `path` is set), e.g.
  # dict(model_type='llama', vocab_size=256, hidden_size=64, intermediate_size=128,
  #      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2).
  c.hf_config = ml_collections.ConfigDict()
  c.dtype = "float32"  # compute dtype ('bfloat16' on accelerators); norms/softmax/logits stay f32.
  c.param_dtype = "float32"
  c.scan_layers = False  # stacked layer parameters + lax.scan: compile time independent of depth.
  c.remat_policy = "none"  # 'none', 'full', or a jax.checkpoint_policies name ('dots_saveable', ...)
  c.attention = "auto"  # 'auto' | 'xla' | 'cudnn' | 'splash'
  return c


def _int_if_whole(value):
  return int(value) if value is not None and float(value).is_integer() else value


def _float_or_none(value) -> float | None:
  return None if value is None else float(value)


def _freeze(value: Any) -> Any:
  """Dicts -> sorted tuples of items, so the dataclass stays hashable (a jit static argument)."""
  if isinstance(value, dict):
    return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
  if isinstance(value, list):
    return tuple(_freeze(v) for v in value)
  return value


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture of one decoder. Field names follow the Llama `config.json`."""
  model_type: str
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_hidden_layers: int
  num_attention_heads: int
  num_key_value_heads: int
  head_dim: int
  max_position_embeddings: int = 2048
  hidden_act: str = "silu"
  norm_eps: float = 1e-6
  rope_theta: float = 10000.0
  rope_scaling: tuple | None = None  # frozen dict items, e.g. (('factor', 8.0), ('rope_type', 'llama3'), ...)
  attention_bias: bool = False  # bias on q/k/v (qwen2, llama with attention_bias)
  attention_out_bias: bool = False  # bias on the output projection (llama attention_bias, gpt2)
  mlp_bias: bool = False
  qk_norm: bool = False  # RMSNorm over head_dim on q and k before rotary (qwen3)
  sliding_window: int | None = None  # mistral: a query sees the last `sliding_window` keys
  tie_word_embeddings: bool = False
  bos_token_id: int | None = None
  eos_token_id: int | tuple | None = None
  pad_token_id: int | None = None
  # gemma3: per-layer 'sliding_attention' / 'full_attention'; sliding layers use `sliding_window`
  # and rotary base `rope_local_theta` (default rope), full layers `rope_theta` + `rope_scaling`.
  layer_types: tuple | None = None
  rope_local_theta: float | None = None
  query_pre_attn_scalar: float | None = None  # attention scale = this ** -0.5 (else head_dim)
  attn_logit_softcapping: float | None = None  # scores -> cap * tanh(scores / cap) (no family yet)
  final_logit_softcapping: float | None = None  # logits -> cap * tanh(logits / cap)

  @property
  def family(self) -> str:
    return FAMILIES[self.model_type]

  @property
  def rope_scaling_dict(self) -> dict | None:
    return dict(self.rope_scaling) if self.rope_scaling else None

  @classmethod
  def from_hf_dict(cls, d: dict) -> "ModelConfig":
    d = dict(d)
    model_type = d.get("model_type")
    if model_type not in FAMILIES:
      raise ValueError(f"Unsupported model_type {model_type!r}; jaxift supports: "
                       f"{', '.join(SUPPORTED_MODEL_TYPES)}.")
    if model_type == "gpt2":
      return cls._from_gpt2_dict(d)
    if model_type == "gemma3":  # the multimodal wrapper: its text model only
      if not isinstance(d.get("text_config"), dict):
        raise ValueError("model_type 'gemma3' without a text_config; jaxift reads gemma3's text "
                         "model only (model_type 'gemma3_text')")
      text = dict(d["text_config"], model_type="gemma3_text")
      for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        text.setdefault(key, d.get(key))
      d, model_type = text, "gemma3_text"
    return cls._from_llama_dict(d, model_type)

  @classmethod
  def _from_llama_dict(cls, d: dict, model_type: str) -> "ModelConfig":
    def need(key):
      if d.get(key) is None:
        raise ValueError(f"config.json for model_type {model_type!r} is missing {key!r}")
      return d[key]
    heads = int(need("num_attention_heads"))
    hidden = int(need("hidden_size"))
    gemma = model_type == "gemma3_text"
    # Old configs: rope_theta + rope_scaling; transformers>=5: rope_parameters (theta inside).
    rope = dict(d.get("rope_parameters") or d.get("rope_scaling") or {})
    local_theta = None
    if gemma:  # rope per layer type: {'full_attention': {...}, 'sliding_attention': {...}}
      if FULL in rope or SLIDING in rope:
        local = dict(rope.get(SLIDING) or {})
        local_theta = float(local.get("rope_theta", d.get("rope_local_base_freq", 10000.0)))
        if local.get("rope_type", "default") != "default":
          raise ValueError(f"gemma3 sliding-layer rope type {local['rope_type']!r} is not "
                           f"supported (supported: default)")
        rope = dict(rope.get(FULL) or {})
      else:
        local_theta = float(d.get("rope_local_base_freq", 10000.0))
      rope.setdefault("rope_theta", d.get("rope_theta", 1_000_000.0))
    theta = float(rope.pop("rope_theta", d.get("rope_theta", 10000.0)))
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in SUPPORTED_ROPE_TYPES:
      raise ValueError(f"rope type {rope_type!r} is not supported (supported: "
                       f"{', '.join(SUPPORTED_ROPE_TYPES)})")
    rope.pop("type", None)
    rope["rope_type"] = rope_type
    if rope.get("partial_rotary_factor", 1.0) != 1.0:
      raise ValueError("partial_rotary_factor != 1 is not supported")
    if d.get("use_sliding_window") and model_type in ("qwen2", "qwen3"):
      raise ValueError(f"{model_type} with use_sliding_window=True is not supported")
    if d.get("pretraining_tp", 1) not in (None, 1):
      raise ValueError("pretraining_tp != 1 is not supported")
    if rope_type == "longrope":
      if "original_max_position_embeddings" not in rope:
        rope["original_max_position_embeddings"] = d.get("original_max_position_embeddings")
      if not rope.get("original_max_position_embeddings") or "long_factor" not in rope:
        raise ValueError("rope type 'longrope' needs original_max_position_embeddings, "
                         "short_factor and long_factor")
    if model_type == "phi3" and d.get("partial_rotary_factor", 1.0) != 1.0:
      raise ValueError("phi3 with partial_rotary_factor != 1 (Phi-4-mini) is not supported")
    attention_bias = bool(d.get("attention_bias", False))
    layer_types = None
    if gemma:
      if d.get("use_bidirectional_attention"):
        raise ValueError("gemma3 with use_bidirectional_attention=True is not supported")
      n_layers = int(need("num_hidden_layers"))
      pattern = int(d.get("sliding_window_pattern") or 6)
      layer_types = tuple(d.get("layer_types") or [
          SLIDING if (i + 1) % pattern else FULL for i in range(n_layers)])
      unknown = set(layer_types) - {SLIDING, FULL}
      if unknown or len(layer_types) != n_layers:
        raise ValueError(f"gemma3 layer_types must list {n_layers} of {SLIDING!r}/{FULL!r}; "
                         f"got {sorted(unknown) or len(layer_types)}")
    return cls(
        model_type=model_type, vocab_size=int(need("vocab_size")), hidden_size=hidden,
        intermediate_size=int(need("intermediate_size")),
        num_hidden_layers=int(need("num_hidden_layers")), num_attention_heads=heads,
        num_key_value_heads=int(d.get("num_key_value_heads") or heads),
        head_dim=int(d.get("head_dim") or hidden // heads),
        max_position_embeddings=int(d.get("max_position_embeddings", 2048)),
        hidden_act=(d.get("hidden_activation") or d.get("hidden_act") or "gelu_pytorch_tanh")
        if gemma else d.get("hidden_act", "silu"), norm_eps=float(d.get("rms_norm_eps", 1e-6)),
        rope_theta=theta, rope_scaling=None if rope_type == "default" else _freeze(rope),
        attention_bias=True if model_type == "qwen2" else attention_bias,
        attention_out_bias=attention_bias if model_type == "llama" else False,
        mlp_bias=bool(d.get("mlp_bias", False)) if model_type == "llama" else False,
        qk_norm=model_type in ("qwen3", "gemma3_text"),
        sliding_window=(int(d["sliding_window"]) if model_type in ("mistral", "gemma3_text")
                        and d.get("sliding_window") else None),
        tie_word_embeddings=bool(d.get("tie_word_embeddings", gemma)),
        bos_token_id=d.get("bos_token_id"), eos_token_id=_freeze(d.get("eos_token_id")),
        pad_token_id=d.get("pad_token_id"), layer_types=layer_types,
        rope_local_theta=local_theta,
        query_pre_attn_scalar=(float(d.get("query_pre_attn_scalar") or 256) if gemma else None),
        # Gemma 3 does not soft-cap attention scores (transformers and llama.cpp ignore this
        # field, a leftover of Gemma 2); only the final logits are capped.
        attn_logit_softcapping=None,
        final_logit_softcapping=(_float_or_none(d.get("final_logit_softcapping")) if gemma
                                 else None))

  @classmethod
  def _from_gpt2_dict(cls, d: dict) -> "ModelConfig":
    if d.get("scale_attn_by_inverse_layer_idx"):
      raise ValueError("gpt2 with scale_attn_by_inverse_layer_idx=True is not supported")
    if d.get("scale_attn_weights") is False:
      raise ValueError("gpt2 with scale_attn_weights=False is not supported")
    hidden = int(d.get("n_embd", 768))
    heads = int(d.get("n_head", 12))
    return cls(
        model_type="gpt2", vocab_size=int(d.get("vocab_size", 50257)), hidden_size=hidden,
        intermediate_size=int(d.get("n_inner") or 4 * hidden),
        num_hidden_layers=int(d.get("n_layer", 12)), num_attention_heads=heads,
        num_key_value_heads=heads, head_dim=hidden // heads,
        max_position_embeddings=int(d.get("n_positions", 1024)),
        hidden_act=d.get("activation_function", "gelu_new"),
        norm_eps=float(d.get("layer_norm_epsilon", 1e-5)), attention_bias=True,
        attention_out_bias=True, mlp_bias=True,
        tie_word_embeddings=bool(d.get("tie_word_embeddings", True)),
        bos_token_id=d.get("bos_token_id"), eos_token_id=_freeze(d.get("eos_token_id")),
        pad_token_id=d.get("pad_token_id"))

  def to_hf_dict(self) -> dict:
    """A `config.json` dict that transformers (4.x and 5.x) reads."""
    eos = list(self.eos_token_id) if isinstance(self.eos_token_id, tuple) else self.eos_token_id
    common = dict(model_type=self.model_type, architectures=[_ARCHITECTURES[self.model_type]],
                  vocab_size=self.vocab_size, tie_word_embeddings=self.tie_word_embeddings,
                  bos_token_id=self.bos_token_id, eos_token_id=eos, pad_token_id=self.pad_token_id)
    if self.model_type == "gpt2":
      return dict(common, n_embd=self.hidden_size, n_head=self.num_attention_heads,
                  n_layer=self.num_hidden_layers, n_inner=self.intermediate_size,
                  n_positions=self.max_position_embeddings, activation_function=self.hidden_act,
                  layer_norm_epsilon=self.norm_eps, scale_attn_weights=True)
    d = dict(common, hidden_size=self.hidden_size, intermediate_size=self.intermediate_size,
             num_hidden_layers=self.num_hidden_layers,
             num_attention_heads=self.num_attention_heads,
             num_key_value_heads=self.num_key_value_heads, head_dim=self.head_dim,
             max_position_embeddings=self.max_position_embeddings, hidden_act=self.hidden_act,
             rms_norm_eps=self.norm_eps, rope_theta=self.rope_theta,
             rope_scaling=self.rope_scaling_dict)
    if self.model_type == "llama":
      d.update(attention_bias=self.attention_bias, mlp_bias=self.mlp_bias)
    if self.model_type == "mistral":
      d.update(sliding_window=self.sliding_window)
    if self.model_type in ("qwen2", "qwen3"):
      d.update(use_sliding_window=False)
    if self.model_type == "qwen3":
      d.update(attention_bias=False)
    if self.model_type == "phi3":
      d.update(original_max_position_embeddings=(self.rope_scaling_dict or {}).get(
          "original_max_position_embeddings", self.max_position_embeddings))
    if self.model_type == "gemma3_text":
      full = dict(self.rope_scaling_dict or {"rope_type": "default"}, rope_theta=self.rope_theta)
      d.pop("rope_theta")
      d.pop("rope_scaling")
      d.pop("hidden_act")
      d.update(hidden_activation=self.hidden_act, sliding_window=self.sliding_window,
               layer_types=list(self.layer_types),
               query_pre_attn_scalar=_int_if_whole(self.query_pre_attn_scalar),
               attn_logit_softcapping=self.attn_logit_softcapping,
               final_logit_softcapping=self.final_logit_softcapping,
               rope_parameters={FULL: full, SLIDING: dict(rope_type="default",
                                                          rope_theta=self.rope_local_theta)})
    return d

  @classmethod
  def from_json_file(cls, path) -> "ModelConfig":
    with open(path) as f:
      try:
        d = json.load(f)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    try:
      return cls.from_hf_dict(d)
    except ValueError as e:
      raise ValueError(f"{path}: {e}") from e
