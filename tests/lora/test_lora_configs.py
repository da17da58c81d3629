"""The LoRA experiment configs: variants resolve, and the 8B adapter size matches the hand count."""
import importlib.util

import jax
import pytest
from flax import nnx

from jaxift.model import lora
from jaxift.model.config import ModelConfig
from tests.conftest import REPO_ROOT


def _config(name: str, arg: str):
  spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def test_smollm2_lora_variants():
  c = _config("smollm2_lora", "data=/x.json,rank=8,alpha=16,targets=qv,bf16_base,runlocal")
  assert (c.lora.enabled, c.lora.rank, c.lora.alpha, c.lora.base_dtype) == (True, 8, 16.0, "bfloat16")
  assert c.lora.target_regex == r"attn/(q|v)_kernel$"
  assert c.data.train_files == "/x.json" and c.train.num_steps == 5  # runlocal shrink applied
  with pytest.raises(ValueError, match="targets='mlp'"):
    _config("smollm2_lora", "targets=mlp")
  with pytest.raises(ValueError, match="unknown key 'rnak'"):
    _config("smollm2_lora", "rnak=4")


def test_llama3_8b_lora_adapter_count_matches_hand_count():
  c = _config("llama3_8b_lora_tpu", "model=/m,data=/d")
  assert c.model.param_dtype == "bfloat16" and c.lora.param_dtype == "float32"
  cfg = ModelConfig.from_hf_dict(dict(
      model_type="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336,
      num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
      tie_word_embeddings=False))
  model = lora.abstract_lora_model(cfg, c.lora, scan_layers=True, param_dtype="bfloat16")
  # rank * (in + out) per projection: q, o 4096+4096; k, v 4096+1024; gate, up, down 4096+14336.
  per_layer = 16 * (2 * 8192 + 2 * 5120 + 3 * 18432)
  adapters = nnx.state(model, lora.LoRAParam)
  assert lora.count_params(adapters) == 32 * per_layer == 41_943_040
  assert lora.state_bytes(adapters) == 4 * 41_943_040
  frozen = nnx.state(model, nnx.All(nnx.Param, nnx.Not(lora.LoRAParam)))
  assert lora.state_bytes(frozen) == 2 * 8_030_261_248  # the bf16 base


def test_abstract_split_carries_shardings():
  from jaxift.model import sharding
  from jaxift.model.sharding import mesh_rules
  c = _config("llama3_8b_lora_tpu", "model=/m,data=/d")
  mesh = sharding.make_mesh((1, -1, 1))
  hf = dict(model_type="llama", vocab_size=256, hidden_size=64, intermediate_size=128,
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
  _, adapters, frozen, _ = lora.abstract_split(c, hf, mesh, mesh_rules(c))
  assert lora.count_params(adapters) == 2 * 16 * (2 * 128 + 2 * 96 + 3 * 192)
  for leaf in jax.tree.leaves((adapters, frozen)):
    assert leaf.sharding.mesh == mesh
  assert {leaf.dtype.name for leaf in jax.tree.leaves(frozen)} >= {"bfloat16"}
