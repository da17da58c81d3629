"""Tiny random checkpoints built and saved by transformers (the reference), one per family case,
and helpers to run jaxift and transformers on the same token rows."""
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
