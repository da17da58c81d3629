"""Tiny random checkpoints saved by transformers (the reference) and jaxift LoRA models on them."""
import numpy as np
import pytest

VOCAB = 97
LLAMA = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
QWEN2 = dict(LLAMA, tie_word_embeddings=True)  # q/k/v biases, tied embedding
ALL_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="session")
def base_checkpoint(tmp_path_factory):
  """name -> HF directory of a tiny random model ('llama' or 'qwen2'), saved once."""
  import torch
  import transformers
  torch.set_num_threads(2)
  made = {}

  def get(name: str):
    if name not in made:
      config = (transformers.LlamaConfig(**LLAMA) if name == "llama"
                else transformers.Qwen2Config(**QWEN2))
      torch.manual_seed(0)
      model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
      with torch.no_grad():  # norms at 1 and biases at 0 would hide layout bugs in them
        for _, p in model.named_parameters():
          if p.ndim == 1:
            p.add_(torch.randn_like(p) * 0.2)
      directory = tmp_path_factory.mktemp(f"base_{name}")
      model.save_pretrained(directory)
      made[name] = str(directory)
    return made[name]
  return get


def lora_config(**overrides):
  from jaxift.model import lora
  c = lora.default_lora_config()
  c.enabled, c.rank, c.alpha = True, 4, 8.0
  c.update(overrides)
  return c


def randomize_adapters(model, seed: int) -> None:
  """Non-zero B (and A) so the adapters change the logits."""
  import jax.numpy as jnp
  from flax import nnx
  from jaxift.model import lora
  rng = np.random.default_rng(seed)
  for _, var in nnx.to_flat_state(nnx.state(model, lora.LoRAParam)):
    var.set_value(jnp.asarray(rng.normal(0, 0.3, var.shape), jnp.float32))


TOKENS = [[3, 17, 42, 8, 91, 5, 60, 2, 33, 71, 12], [9, 4, 88, 21, 56, 7, 30, 64, 1, 77, 45]]


def jax_logits(model, tokens=TOKENS) -> np.ndarray:
  """[B, T, V] logits of a jitted forward on unpadded rows."""
  import jax
  from flax import nnx
  graphdef, state = nnx.split(model)
  tokens = np.asarray(tokens, np.int32)
  positions = np.broadcast_to(np.arange(tokens.shape[1], dtype=np.int32), tokens.shape)
  forward = jax.jit(lambda s, *a: nnx.merge(graphdef, s)(*a))
  return np.asarray(forward(state, tokens, positions, np.ones_like(tokens)))


def torch_logits(model, tokens=TOKENS) -> np.ndarray:
  import torch
  with torch.no_grad():
    return model(torch.tensor(tokens)).logits.float().numpy()
