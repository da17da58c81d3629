"""Models shared by the inference tests: a tiny random decoder, and SmolLM2 in JAX and PyTorch
(each loaded once per session)."""
import pytest


@pytest.fixture(scope="session")
def tiny_decoder():
  from flax import nnx
  from jaxift.model.config import ModelConfig
  from jaxift.model.decoder import Decoder
  cfg = ModelConfig.from_hf_dict(dict(model_type="llama", vocab_size=256, hidden_size=64,
                                      intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2))
  return Decoder(cfg, rngs=nnx.Rngs(0))


@pytest.fixture(scope="session")
def smollm2_jax(smollm2_gguf):
  from jaxift.model.config import default_model_config
  from jaxift.model.loading import build_model
  model_config = default_model_config()
  model_config.path = str(smollm2_gguf)
  model_config.dtype = "float32"
  model_config.scan_layers = True  # compiles in seconds instead of ~20 s for 30 unrolled layers
  model, _ = build_model(model_config)
  return model


@pytest.fixture(scope="session")
def smollm2_torch(smollm2_gguf):
  import torch
  from transformers import AutoModelForCausalLM
  torch.set_num_threads(1)  # on a shared 2-core machine, 2 torch threads thrash (10x slower)
  model = AutoModelForCausalLM.from_pretrained(str(smollm2_gguf.parent),
                                               gguf_file=smollm2_gguf.name,
                                               dtype=torch.float32)
  return model.eval()


def full_forward_logits(model, seq: list[int], length: int = 32):
  """Uncached logits [len(seq), V] of one sequence (right-padded with segment 0 to `length`, so
  one jitted compilation serves every call): the reference the cached paths are checked against."""
  import numpy as np
  from flax import nnx
  assert len(seq) <= length
  graphdef, state = nnx.split(model)
  tokens = np.zeros((1, length), np.int32)
  tokens[0, :len(seq)] = seq
  segments = (np.arange(length) < len(seq)).astype(np.int32)[None]
  logits = _jitted_forward(graphdef, state, tokens, np.arange(length, dtype=np.int32)[None],
                           segments)
  return np.asarray(logits[0, :len(seq)])


def _jitted_forward(graphdef, state, tokens, positions, segments):
  import jax
  from flax import nnx
  global _FORWARD
  if "_FORWARD" not in globals():
    _FORWARD = jax.jit(lambda g, s, t, p, seg: nnx.merge(g, s)(t, p, seg), static_argnums=0)
  return _FORWARD(graphdef, state, tokens, positions, segments)


@pytest.fixture(scope="session")
def tiny_workdir(tmp_path_factory, shared_data):
  """A workdir trained for 4 steps by configs/tiny.py (GPT-2 tokenizer, synthetic tasks)."""
  import importlib.util
  import pathlib
  from jaxift.train.trainer import train_and_evaluate
  path = pathlib.Path(__file__).resolve().parents[2] / "configs" / "tiny.py"
  spec = importlib.util.spec_from_file_location("tiny_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(f"tokenizer={shared_data / 'gpt2'}")
  workdir = tmp_path_factory.mktemp("tiny_run")
  train_and_evaluate(config, str(workdir))
  return workdir
