"""GGUF files (llama.cpp) read with the `gguf` package: numpy dequantization, no torch.

Architectures: llama (Llama, SmolLM2, Mistral), qwen2, qwen3, gemma3 (text) and phi3. Tensor names
are mapped through the gguf library's own `TensorNameMap` (the table llama.cpp's converter writes
with), so each GGUF tensor is exposed under its Hugging Face name and the import table of
`weights.py` loads it. Every quantization type `gguf.quants.dequantize` handles is read (F32, F16,
BF16, Q4_0 ... Q8_0, the K-quants, the IQ types, ...). What llama.cpp's converter changed is undone:
the rotary row permutation of llama's q/k, and the +1 on Gemma's norm weights.
"""
import os
import pathlib

import gguf
import numpy as np
from gguf.quants import dequantize

from jaxift.model import weights
from jaxift.model.config import FULL, SLIDING, ModelConfig

# GGUF `general.architecture` -> HF model_type (Mistral GGUFs are written as `llama`).
ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma3": "gemma3_text",
                 "phi3": "phi3"}
SUPPORTED_ARCHITECTURES = tuple(ARCHITECTURES)
# HF model_type -> GGUF architecture (export).
GGUF_ARCHITECTURE = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3",
                     "gemma3_text": "gemma3", "phi3": "phi3"}
_ARCH_ENUM = {name: arch for arch, name in gguf.MODEL_ARCH_NAMES.items()}


def _field(reader, key, default=None):
  field = reader.fields.get(key)
  if field is None:
    return default
  return field.contents()


def unpermute_rotary_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
  """Inverse of llama.cpp's `permute` (convert_hf_to_gguf.py) on a q/k weight [heads*hd, in]."""
  rows = w.shape[0]
  return (w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2)
          .reshape(w.shape))


def permute_rotary_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
  """llama.cpp's `permute`: HF's rotate-half q/k rows -> GGML's interleaved pairs (export)."""
  return (w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2)
          .reshape(w.shape))


def hf_to_gguf_names(cfg: ModelConfig) -> dict[str, str]:
  """HF tensor name -> GGUF tensor name for every tensor `cfg`'s model has, by `TensorNameMap`."""
  arch = GGUF_ARCHITECTURE.get(cfg.model_type)
  if arch is None:
    raise ValueError(f"model_type {cfg.model_type!r} has no GGUF architecture here; supported: "
                     f"{', '.join(GGUF_ARCHITECTURE)}")
  tensor_map = gguf.get_tensor_name_map(_ARCH_ENUM[arch], cfg.num_hidden_layers)
  names = {}
  for rule in weights.rules_for(cfg):
    for i in (range(cfg.num_hidden_layers) if rule.per_layer else [None]):
      hf_name = rule.name(i)
      if hf_name in names:
        continue
      gguf_name = tensor_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
      if gguf_name is None:
        raise KeyError(f"internal: gguf's TensorNameMap has no {arch} name for {hf_name}")
      names[hf_name] = gguf_name
  return names


def to_gguf_layout(cfg: ModelConfig, hf_name: str, w: np.ndarray) -> np.ndarray:
  """What llama.cpp's converter does to an HF tensor (the inverse of `from_gguf_layout`)."""
  if GGUF_ARCHITECTURE[cfg.model_type] == "llama":  # weights and biases, as llama.cpp
    if ".self_attn.q_proj." in hf_name:
      return permute_rotary_rows(w, cfg.num_attention_heads)
    if ".self_attn.k_proj." in hf_name:
      return permute_rotary_rows(w, cfg.num_key_value_heads)
  if cfg.family == "gemma3" and hf_name.endswith("norm.weight"):
    return w + 1
  return w


def from_gguf_layout(cfg: ModelConfig, hf_name: str, w: np.ndarray) -> np.ndarray:
  if GGUF_ARCHITECTURE[cfg.model_type] == "llama":
    if ".self_attn.q_proj." in hf_name:
      return unpermute_rotary_rows(w, cfg.num_attention_heads)
    if ".self_attn.k_proj." in hf_name:
      return unpermute_rotary_rows(w, cfg.num_key_value_heads)
  if cfg.family == "gemma3" and hf_name.endswith("norm.weight"):
    return w - 1
  return w


_CHUNK_ROWS = 8192


def dequantized(tensor) -> np.ndarray:
  """float32 array in HF (row-major, reversed GGML) shape. Large matrices are dequantized in
  chunks of rows into one output, so the peak is one float32 copy plus a chunk's temporaries."""
  shape = tuple(int(s) for s in reversed(tensor.shape))
  data = tensor.data
  if len(shape) != 2 or data.ndim != 2 or shape[0] <= _CHUNK_ROWS:
    return np.asarray(dequantize(data, tensor.tensor_type), dtype=np.float32).reshape(shape)
  out = np.empty(shape, np.float32)
  for start in range(0, shape[0], _CHUNK_ROWS):
    out[start:start + _CHUNK_ROWS] = dequantize(data[start:start + _CHUNK_ROWS],
                                                tensor.tensor_type)
  return out


class GGUFSource:
  """Tensors of a GGUF file under HF names, dequantized to float32 one at a time."""

  def __init__(self, path: pathlib.Path, reader, cfg: ModelConfig):
    self.description = str(path)
    self._cfg = cfg
    by_name = {t.name: t for t in reader.tensors}
    self._tensors = {hf: by_name[g] for hf, g in hf_to_gguf_names(cfg).items() if g in by_name}

  def keys(self) -> set[str]:
    return set(self._tensors)

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(int(s) for s in reversed(self._tensors[name].shape))  # GGML order is reversed

  def tensor_type(self, name: str) -> str:
    return self._tensors[name].tensor_type.name

  def get(self, name: str) -> np.ndarray:
    return from_gguf_layout(self._cfg, name, dequantized(self._tensors[name]))


def _rope_scaling(path, reader, arch: str, tensors: dict) -> dict | None:
  if "rope_freqs.weight" in tensors:
    raise ValueError(f"{path}: GGUF with rope_freqs (llama3 rope scaling) is not supported; "
                     f"load the Hugging Face directory instead")
  scaling_type = _field(reader, f"{arch}.rope.scaling.type")
  if arch == "phi3" and "rope_factors_long.weight" in tensors:
    original = _field(reader, f"{arch}.rope.scaling.original_context_length")
    if original is None:
      raise ValueError(f"{path}: phi3 GGUF with rope factors but no "
                       f"'{arch}.rope.scaling.original_context_length'")
    scaling = dict(rope_type="longrope", original_max_position_embeddings=int(original),
                   long_factor=dequantized(tensors["rope_factors_long.weight"]).tolist(),
                   short_factor=dequantized(tensors["rope_factors_short.weight"]).tolist())
    attn_factor = _field(reader, f"{arch}.rope.scaling.attn_factor")
    if attn_factor is not None:
      scaling["attention_factor"] = float(attn_factor)
    return scaling
  if scaling_type in (None, "none"):
    return None
  if scaling_type == "linear":
    return dict(rope_type="linear", factor=float(_field(reader, f"{arch}.rope.scaling.factor")))
  raise ValueError(f"{path}: GGUF rope scaling {scaling_type!r} is not supported (supported: "
                   f"none, linear, and phi3's longrope factors)")


def config_from_gguf(path: pathlib.Path, reader) -> ModelConfig:
  arch = _field(reader, "general.architecture")
  if arch not in ARCHITECTURES:
    raise ValueError(f"{path}: GGUF architecture {arch!r} is not supported; jaxift reads GGUF "
                     f"files of architecture {', '.join(SUPPORTED_ARCHITECTURES)} (for others, "
                     f"convert to a Hugging Face directory with transformers first)")
  tensors = {t.name: t for t in reader.tensors}

  def need(key):
    value = _field(reader, f"{arch}.{key}")
    if value is None:
      raise ValueError(f"{path}: GGUF metadata is missing '{arch}.{key}'")
    return value

  def get(key, default=None):
    return _field(reader, f"{arch}.{key}", default)

  hidden, heads = int(need("embedding_length")), int(need("attention.head_count"))
  n_layers = int(need("block_count"))
  head_dim = int(get("attention.key_length") or hidden // heads)
  rope_dim = get("rope.dimension_count")
  if rope_dim is not None and int(rope_dim) != head_dim:
    raise ValueError(f"{path}: partial rotary ({arch}.rope.dimension_count={rope_dim} < head_dim "
                     f"{head_dim}) is not supported")
  vocab = get("vocab_size")
  if vocab is None:
    vocab = (int(tensors["token_embd.weight"].shape[-1]) if "token_embd.weight" in tensors
             else len(_field(reader, "tokenizer.ggml.tokens", ())))
  d = dict(
      model_type=ARCHITECTURES[arch], hidden_size=hidden, num_attention_heads=heads,
      vocab_size=int(vocab), intermediate_size=int(need("feed_forward_length")),
      num_hidden_layers=n_layers,
      num_key_value_heads=int(get("attention.head_count_kv") or heads), head_dim=head_dim,
      max_position_embeddings=int(get("context_length", 2048)),
      rms_norm_eps=float(get("attention.layer_norm_rms_epsilon", 1e-5)),
      rope_theta=float(get("rope.freq_base", 10000.0)),
      rope_scaling=_rope_scaling(path, reader, arch, tensors),
      tie_word_embeddings="output.weight" not in tensors,
      bos_token_id=_field(reader, "tokenizer.ggml.bos_token_id"),
      eos_token_id=_field(reader, "tokenizer.ggml.eos_token_id"),
      pad_token_id=_field(reader, "tokenizer.ggml.padding_token_id"))
  if arch == "llama" and "blk.0.attn_q.bias" in tensors:
    d["attention_bias"] = True
  if arch == "llama" and "blk.0.ffn_up.bias" in tensors:
    d["mlp_bias"] = True
  if arch == "llama" and get("attention.sliding_window"):  # Mistral with its window (jaxift export)
    d.update(model_type="mistral", sliding_window=int(get("attention.sliding_window")))
  if arch == "gemma3":
    d.pop("rope_theta")
    d["rope_parameters"] = {
        FULL: dict(d.pop("rope_scaling") or {"rope_type": "default"},
                   rope_theta=float(get("rope.freq_base", 1_000_000.0))),
        SLIDING: dict(rope_type="default", rope_theta=float(get("rope.freq_base_swa", 10000.0)))}
    d["sliding_window"] = int(need("attention.sliding_window"))
    pattern = get("attention.sliding_window_pattern")
    if isinstance(pattern, list):  # per layer: True = sliding
      d["layer_types"] = [SLIDING if p else FULL for p in pattern]
    elif pattern is not None:
      d["sliding_window_pattern"] = int(pattern)
    # llama.cpp's scale: 1/sqrt(head_dim), except Gemma 3 27B (62 layers): 1/sqrt(hidden/heads).
    d["query_pre_attn_scalar"] = hidden // heads if n_layers == 62 else head_dim
    scale = get("attention.scale")  # written by jaxift's export when it differs
    if scale:
      d["query_pre_attn_scalar"] = round(float(scale) ** -2, 3)
    d["final_logit_softcapping"] = get("final_logit_softcapping")
  try:
    return ModelConfig.from_hf_dict(d)
  except ValueError as e:
    raise ValueError(f"{path}: {e}") from e


class TruncatedGGUF(ValueError):
  pass


class _CheckedReader(gguf.GGUFReader):
  """`GGUFReader` that first checks the tensor data the header promises lies inside the file."""

  def _build_tensors(self, start_offs: int, fields) -> None:
    size = len(self.data)
    for field in fields:
      _, name_data, _, dims, raw_dtype, offset = field.parts
      qtype = gguf.GGMLQuantizationType(raw_dtype[0])
      block, type_size = gguf.GGML_QUANT_SIZES[qtype]
      n_bytes = int(np.prod(dims)) * type_size // block
      end = int(start_offs + offset[0]) + n_bytes
      if end > size:
        name = bytes(name_data).decode("utf-8", "replace")
        raise TruncatedGGUF(f"truncated GGUF: tensor {name!r} ({qtype.name}, {n_bytes} bytes) "
                            f"should end at byte {end}, but the file has {size} bytes")
    super()._build_tensors(start_offs, fields)


def open_reader(path) -> "gguf.GGUFReader":
  path = pathlib.Path(path)
  try:
    return _CheckedReader(str(path))
  except TruncatedGGUF as e:
    raise ValueError(f"{path}: {e}") from e
  except Exception as e:  # pylint: disable=broad-except  (bad magic, cut header, ...)
    size = os.path.getsize(path) if path.exists() else 0
    raise ValueError(f"{path}: not a readable GGUF file ({size} bytes; expected the GGUF magic, "
                     f"a header, metadata and tensor data: {type(e).__name__}: {e})") from e


def open_gguf(path) -> tuple[ModelConfig, GGUFSource]:
  path = pathlib.Path(path)
  reader = open_reader(path)
  cfg = config_from_gguf(path, reader)
  return cfg, GGUFSource(path, reader, cfg)
