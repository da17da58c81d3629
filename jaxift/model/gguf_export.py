"""Export a jaxift model to one GGUF file that llama.cpp and Ollama run as is.

`export_gguf(model, cfg, out_path, type='f16', tokenizer=...)` writes, with the `gguf` package
(numpy, no llama.cpp needed):
  - the architecture metadata llama.cpp reads (`{arch}.block_count`, heads, rope, sliding window...),
  - every tensor under its llama.cpp name (gguf's `TensorNameMap`), in the layout llama.cpp's own
    converter writes (llama's rotary row permutation, Gemma's norm weights + 1),
  - the tokenizer (`tokenizer.ggml.*`) and its chat template.

Types: f32, f16, bf16, and the block quantizations gguf's numpy quantizers provide: q8_0, q4_0,
q4_1, q5_0, q5_1. As llama.cpp does, norms, biases and rope factors stay F32, and a matrix whose
rows do not divide into the type's blocks falls back to F16. A LoRA model is merged first.
The file is written to a temporary sibling and renamed at the end (process 0 writes).
"""
import dataclasses
import json
import os
import pathlib
import time
from typing import Any

import gguf
import jax
import numpy as np
from gguf.quants import quantize

from jaxift.model import gguf as gguf_lib
from jaxift.model import hf
from jaxift.model import layers as L
from jaxift.model import lora
from jaxift.model.config import SLIDING, ModelConfig

Q = gguf.GGMLQuantizationType
EXPORT_TYPES = {"f32": Q.F32, "f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0, "q4_0": Q.Q4_0,
                "q4_1": Q.Q4_1, "q5_0": Q.Q5_0, "q5_1": Q.Q5_1}
_FILE_TYPES = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
               "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
               "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0, "q4_1": gguf.LlamaFileType.MOSTLY_Q4_1,
               "q5_0": gguf.LlamaFileType.MOSTLY_Q5_0, "q5_1": gguf.LlamaFileType.MOSTLY_Q5_1}
# Chat templates (Jinja, as `tokenizer.chat_template`) for jaxift's built-in non-chat prompt formats,
# so llama.cpp's server and Ollama prompt an exported model the way it was trained; pass one as
# `chat_template=` when training used `data.template = 'alpaca'` or `'phi3'`.
ALPACA_CHAT_TEMPLATE = (
    "{%- set system = messages | selectattr('role', 'equalto', 'system') | map(attribute='content')"
    " | list -%}"
    "{{- system[0] + '\n\n' if system else 'Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n' -}}"
    "{%- for m in messages if m['role'] == 'user' -%}"
    "{{- '### Instruction:\n' + m['content'] + '\n\n### Response:\n' -}}"
    "{%- endfor -%}")
PHI3_CHAT_TEMPLATE = (
    "{%- for m in messages -%}"
    "{{- '<|' + m['role'] + '|>\n' + m['content'] + '<|end|>\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant|>\n' -}}{%- endif -%}")
CHAT_TEMPLATES = {"alpaca": ALPACA_CHAT_TEMPLATE, "phi3": PHI3_CHAT_TEMPLATE}

# `tokenizer.ggml.pre` for a byte-level BPE tokenizer given as a transformers object, by model_type
# (pass `tokenizer_pre=` for others; llama.cpp picks its split regex by this name).
_DEFAULT_PRE = {"llama": "smollm", "qwen2": "qwen2", "qwen3": "qwen2", "mistral": "llama-bpe"}


def _write_metadata(w: gguf.GGUFWriter, cfg: ModelConfig, arch: str, type_name: str, name: str):
  w.add_name(name)
  w.add_file_type(_FILE_TYPES[type_name])
  w.add_block_count(cfg.num_hidden_layers)
  w.add_context_length(cfg.max_position_embeddings)
  w.add_embedding_length(cfg.hidden_size)
  w.add_feed_forward_length(cfg.intermediate_size)
  w.add_head_count(cfg.num_attention_heads)
  w.add_head_count_kv(cfg.num_key_value_heads)
  w.add_key_length(cfg.head_dim)
  w.add_value_length(cfg.head_dim)
  w.add_rope_dimension_count(cfg.head_dim)
  w.add_layer_norm_rms_eps(cfg.norm_eps)
  w.add_rope_freq_base(cfg.rope_theta)
  w.add_vocab_size(cfg.vocab_size)
  scaling = cfg.rope_scaling_dict or {}
  rope_type = scaling.get("rope_type")
  if rope_type == "linear":
    w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
    w.add_rope_scaling_factor(float(scaling["factor"]))
  elif rope_type == "longrope":
    w.add_rope_scaling_orig_ctx_len(int(scaling["original_max_position_embeddings"]))
    _, _, attention_factor = L._longrope(cfg, scaling)  # pylint: disable=protected-access
    w.add_rope_scaling_attn_factors(attention_factor)
  if cfg.sliding_window is not None:
    w.add_sliding_window(cfg.sliding_window)
  if cfg.layer_types is not None:
    # llama.cpp assumes Gemma 3's pattern (5 sliding, 1 full) and local base 10000; the keys
    # below say it explicitly (jaxift reads them back).
    w.add_sliding_window_pattern([t == SLIDING for t in cfg.layer_types])
    w.add_key_value(f"{arch}.rope.freq_base_swa", float(cfg.rope_local_theta),
                    gguf.GGUFValueType.FLOAT32)
  if cfg.final_logit_softcapping is not None:
    w.add_final_logit_softcapping(cfg.final_logit_softcapping)
  if cfg.query_pre_attn_scalar is not None and cfg.query_pre_attn_scalar != cfg.head_dim:
    w.add_key_value(f"{arch}.attention.scale", float(cfg.query_pre_attn_scalar) ** -0.5,
                    gguf.GGUFValueType.FLOAT32)  # jaxift reads it back


def _token_ids(w: gguf.GGUFWriter, cfg: ModelConfig):
  """bos/eos/pad from the model config, when no tokenizer is written."""
  for kind in ("bos", "eos", "pad"):
    token_id = getattr(cfg, f"{kind}_token_id")
    token_id = token_id[0] if isinstance(token_id, tuple) else token_id
    if token_id is not None:
      getattr(w, f"add_{kind}_token_id")(int(token_id))


def _extra_tensors(cfg: ModelConfig) -> dict[str, np.ndarray]:
  """Rope factor tensors llama.cpp reads: phi3 longrope, llama3 `rope_freqs`."""
  scaling = cfg.rope_scaling_dict or {}
  if scaling.get("rope_type") == "longrope":
    return {"rope_factors_long.weight": np.asarray(scaling["long_factor"], np.float32),
            "rope_factors_short.weight": np.asarray(scaling["short_factor"], np.float32)}
  if scaling.get("rope_type") == "llama3":
    plain = L.rope_inv_freq(dataclasses.replace(cfg, rope_scaling=None))
    return {"rope_freqs.weight": (plain / L.rope_inv_freq(cfg)).astype(np.float32)}
  return {}


def _tensor_type(name: str, value: np.ndarray, qtype: Q) -> Q:
  if value.ndim < 2 or name.endswith(".bias") or "norm" in name or qtype == Q.F32:
    return Q.F32
  if qtype in (Q.F16, Q.BF16):
    return qtype
  block, _ = gguf.GGML_QUANT_SIZES[qtype]
  return qtype if value.shape[-1] % block == 0 else Q.F16


def _encode(value: np.ndarray, ttype: Q) -> np.ndarray:
  value = np.ascontiguousarray(value, np.float32)
  if ttype == Q.F32:
    return value
  if ttype == Q.F16:
    return value.astype(np.float16)
  return quantize(value, ttype)


def _copy_gguf_tokenizer(w: gguf.GGUFWriter, path) -> str | None:
  """Copies every `tokenizer.*` key of another GGUF file; returns its chat template."""
  reader = gguf_lib.open_reader(path)
  template = None
  for key, field in reader.fields.items():
    if not key.startswith("tokenizer."):
      continue
    value = field.contents()
    if key == "tokenizer.chat_template":
      template = value
      continue
    vtype = field.types[0]
    sub_type = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
    w.add_key_value(key, value, vtype, sub_type=sub_type)
  return template


def _hf_tokenizer_metadata(w: gguf.GGUFWriter, tokenizer, cfg: ModelConfig, pre: str | None):
  """A byte-level BPE transformers tokenizer (GPT-2, SmolLM2, Llama 3, Qwen) as `tokenizer.ggml`."""
  state = json.loads(tokenizer.backend_tokenizer.to_str())
  model = state.get("model", {})
  if model.get("type") != "BPE" or not _is_byte_level(state):
    raise ValueError("export_gguf writes transformers tokenizers of the byte-level BPE kind "
                     "(GPT-2, SmolLM2, Llama 3, Qwen); for others pass tokenizer='model.gguf' "
                     "(the GGUF the model came from) to copy its tokenizer")
  vocab = tokenizer.get_vocab()
  size = max(cfg.vocab_size, max(vocab.values()) + 1)
  tokens = [f"[PAD{i}]" for i in range(size)]
  types = [gguf.TokenType.UNUSED] * size
  for token, i in vocab.items():
    tokens[i], types[i] = token, gguf.TokenType.NORMAL
  for added in state.get("added_tokens", []):
    i = added["id"]
    tokens[i] = added["content"]
    types[i] = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
  merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
  w.add_tokenizer_model("gpt2")
  w.add_tokenizer_pre(pre or _DEFAULT_PRE.get(cfg.model_type, "gpt2"))
  w.add_token_list(tokens)
  w.add_token_types(types)
  w.add_token_merges(merges)
  for kind in ("bos", "eos", "unk", "pad"):
    token_id = getattr(tokenizer, f"{kind}_token_id", None)
    if token_id is None and kind in ("bos", "eos", "pad"):
      token_id = getattr(cfg, f"{kind}_token_id", None)
      token_id = token_id[0] if isinstance(token_id, tuple) else token_id
    if token_id is not None:
      getattr(w, f"add_{kind}_token_id")(int(token_id))
  w.add_add_bos_token(False)
  return getattr(tokenizer, "chat_template", None)


def _is_byte_level(state: dict) -> bool:
  text = json.dumps(state.get("pre_tokenizer")) + json.dumps(state.get("decoder"))
  return "ByteLevel" in text


def export_gguf(model, cfg: ModelConfig, out_path, *, type: str = "f16",  # pylint: disable=redefined-builtin
                tokenizer: Any = None, chat_template: str | None = None,
                tokenizer_pre: str | None = None, name: str = "jaxift export",
                progress: bool = False) -> dict:
  """Writes `model` as a GGUF file; returns {path, type, bytes, seconds, tensor_types}.

  `tokenizer`: a `.gguf` path (its `tokenizer.*` keys are copied, e.g. the file the model was
  loaded from), a byte-level BPE transformers tokenizer, or None (no tokenizer: llama.cpp then
  cannot run the file). `chat_template` (Jinja) overrides the tokenizer's own. `progress`: bars
  over the tensors as they are gathered and encoded, then as they are written (process 0)."""
  if type not in EXPORT_TYPES:
    raise ValueError(f"GGUF export type {type!r} is not supported (supported: "
                     f"{', '.join(EXPORT_TYPES)})")
  arch = gguf_lib.GGUF_ARCHITECTURE.get(cfg.model_type)
  if arch is None:
    raise ValueError(f"model_type {cfg.model_type!r} cannot be exported to GGUF (supported: "
                     f"{', '.join(gguf_lib.GGUF_ARCHITECTURE)})")
  start = time.perf_counter()
  if lora.has_lora(model):
    model = lora.merge_lora(model)
  out_path = pathlib.Path(out_path)
  writer_process = jax.process_index() == 0
  names = gguf_lib.hf_to_gguf_names(cfg)
  tmp = out_path.with_name(f".{out_path.name}.tmp-{os.getpid()}")
  w = None
  if writer_process:
    out_path.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(tmp), arch, use_temp_file=True)
  counts: dict[str, int] = {}
  try:
    if w is not None:
      _write_metadata(w, cfg, arch, type, name)
      template = None
      if isinstance(tokenizer, (str, os.PathLike)):
        template = _copy_gguf_tokenizer(w, tokenizer)
      elif tokenizer is not None:
        template = _hf_tokenizer_metadata(w, tokenizer, cfg, tokenizer_pre)
      else:
        _token_ids(w, cfg)
      template = chat_template or template
      if template:
        w.add_chat_template(template)
      for tensor_name, value in _extra_tensors(cfg).items():
        w.add_tensor(tensor_name, value)
        counts["F32"] = counts.get("F32", 0) + 1
    # Every process gathers; process 0 encodes and writes.
    for hf_name, value in hf.hf_tensors(model, cfg, progress=progress, desc=f"encode {type}"):
      if w is None:
        continue
      value = gguf_lib.to_gguf_layout(cfg, hf_name, np.asarray(value, np.float32))
      ttype = _tensor_type(names[hf_name], value, EXPORT_TYPES[type])
      w.add_tensor(names[hf_name], _encode(value, ttype), raw_dtype=ttype)
      counts[ttype.name] = counts.get(ttype.name, 0) + 1
    if w is not None:
      w.write_header_to_file()
      w.write_kv_data_to_file()
      w.write_tensors_to_file(progress=progress)
      w.close()
      w = None
      os.replace(tmp, out_path)
  finally:
    if w is not None:
      w.close()
    if tmp.exists():
      tmp.unlink()
  size = out_path.stat().st_size if writer_process else 0
  return dict(path=str(out_path), type=type, bytes=size,
              seconds=time.perf_counter() - start, tensor_types=counts)
