"""GGUF files (llama.cpp) read with the `gguf` package: numpy dequantization, no torch.

Only the `llama` architecture is read (Llama, SmolLM2, Mistral converted by llama.cpp). Tensors are
exposed under their Hugging Face names, so the same import table (`weights.py`) loads them.
llama.cpp's converter permutes the rows of q and k for its interleaved rotary layout; we undo it.
"""
import pathlib
import re

import numpy as np

from jaxift.model.config import ModelConfig

SUPPORTED_ARCHITECTURES = ("llama",)
_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_TOP_NAMES = {"token_embd.weight": "model.embed_tokens.weight",
              "output_norm.weight": "model.norm.weight", "output.weight": "lm_head.weight"}
_BLOCK = re.compile(r"^blk\.(\d+)\.(.+)$")


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


class GGUFSource:
  """Tensors of a GGUF file under HF names, dequantized to float32 one at a time."""

  def __init__(self, path: pathlib.Path, reader, cfg: ModelConfig):
    self.description = str(path)
    self._cfg = cfg
    self._tensors = {}
    for t in reader.tensors:
      name = self._hf_name(t.name)
      if name is not None:
        self._tensors[name] = t

  @staticmethod
  def _hf_name(gguf_name: str) -> str | None:
    if gguf_name in _TOP_NAMES:
      return _TOP_NAMES[gguf_name]
    m = _BLOCK.match(gguf_name)
    if m and m.group(2) in _LAYER_NAMES:
      return f"model.layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}"
    return None

  def keys(self) -> set[str]:
    return set(self._tensors)

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(int(s) for s in reversed(self._tensors[name].shape))  # GGML order is reversed

  def get(self, name: str) -> np.ndarray:
    from gguf.quants import dequantize  # pylint: disable=import-outside-toplevel
    t = self._tensors[name]
    w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(self.shape(name))
    if name.endswith("self_attn.q_proj.weight"):
      w = unpermute_rotary_rows(w, self._cfg.num_attention_heads)
    elif name.endswith("self_attn.k_proj.weight"):
      w = unpermute_rotary_rows(w, self._cfg.num_key_value_heads)
    return w


def config_from_gguf(path: pathlib.Path, reader) -> ModelConfig:
  arch = _field(reader, "general.architecture")
  if arch not in SUPPORTED_ARCHITECTURES:
    raise ValueError(f"{path}: GGUF architecture {arch!r} is not supported; jaxift reads GGUF "
                     f"files of architecture {', '.join(SUPPORTED_ARCHITECTURES)} (for others, "
                     f"convert to a Hugging Face directory with transformers first)")
  names = {t.name for t in reader.tensors}
  if "rope_freqs.weight" in names:
    raise ValueError(f"{path}: GGUF with rope_freqs (llama3 rope scaling) is not supported; "
                     f"load the Hugging Face directory instead")
  scaling_type = _field(reader, "llama.rope.scaling.type")
  if scaling_type not in (None, "none"):
    raise ValueError(f"{path}: GGUF rope scaling {scaling_type!r} is not supported")

  def need(key):
    value = _field(reader, f"llama.{key}")
    if value is None:
      raise ValueError(f"{path}: GGUF metadata is missing 'llama.{key}'")
    return value

  hidden, heads = int(need("embedding_length")), int(need("attention.head_count"))
  d = dict(
      model_type="llama", hidden_size=hidden, num_attention_heads=heads,
      vocab_size=int(_field(reader, "llama.vocab_size")
                     or len(_field(reader, "tokenizer.ggml.tokens", ()))),
      intermediate_size=int(need("feed_forward_length")),
      num_hidden_layers=int(need("block_count")),
      num_key_value_heads=int(_field(reader, "llama.attention.head_count_kv") or heads),
      head_dim=int(_field(reader, "llama.attention.key_length") or hidden // heads),
      max_position_embeddings=int(_field(reader, "llama.context_length", 2048)),
      rms_norm_eps=float(_field(reader, "llama.attention.layer_norm_rms_epsilon", 1e-5)),
      rope_theta=float(_field(reader, "llama.rope.freq_base", 10000.0)),
      tie_word_embeddings="output.weight" not in names,
      bos_token_id=_field(reader, "tokenizer.ggml.bos_token_id"),
      eos_token_id=_field(reader, "tokenizer.ggml.eos_token_id"),
      pad_token_id=_field(reader, "tokenizer.ggml.padding_token_id"))
  return ModelConfig.from_hf_dict(d)


def open_gguf(path) -> tuple[ModelConfig, GGUFSource]:
  import gguf  # pylint: disable=import-outside-toplevel
  path = pathlib.Path(path)
  try:
    reader = gguf.GGUFReader(str(path))
  except Exception as e:  # pylint: disable=broad-except  (bad magic, truncated file, ...)
    raise ValueError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from e
  cfg = config_from_gguf(path, reader)
  return cfg, GGUFSource(path, reader, cfg)
