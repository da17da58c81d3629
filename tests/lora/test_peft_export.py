"""Exports read by the PyTorch world: PEFT adapter dirs (peft + transformers on CPU) and merged HF
dirs (transformers), each compared on logits with jaxift's LoRA model (float32, <= 1e-4)."""
import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from jaxift.model import lora, peft_export
from jaxift.model.loading import load_model
from tests.lora.conftest import ALL_TARGETS, jax_logits, lora_config, randomize_adapters, torch_logits

ATOL = 1e-4


def _lora_model(directory, scan_layers, **overrides):
  model, cfg = load_model(directory, scan_layers=scan_layers)
  lora.apply_lora(model, lora_config(**overrides), seed=3)
  randomize_adapters(model, seed=4)
  return model, cfg


def _torch_base(directory):
  import torch
  import transformers
  return transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()


def test_adapter_files_match_peft_own_save(base_checkpoint, tmp_path):
  """Same tensor names, shapes and dtypes as peft's save_pretrained of the same LoraConfig."""
  import peft
  directory = base_checkpoint("llama")
  reference = peft.get_peft_model(_torch_base(directory), peft.LoraConfig(
      r=4, lora_alpha=8, target_modules=ALL_TARGETS, task_type="CAUSAL_LM"))
  reference.save_pretrained(tmp_path / "peft")
  model, cfg = _lora_model(directory, scan_layers=False)
  peft_export.export_peft(model, cfg, tmp_path / "ours", base_model_name_or_path=directory)
  theirs = load_file(tmp_path / "peft" / "adapter_model.safetensors")
  ours = load_file(tmp_path / "ours" / "adapter_model.safetensors")
  assert {k: (v.shape, v.dtype) for k, v in ours.items()} == \
      {k: (v.shape, v.dtype) for k, v in theirs.items()}
  config = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
  loaded = peft.PeftConfig.from_pretrained(tmp_path / "ours")
  assert (loaded.r, loaded.lora_alpha, set(loaded.target_modules)) == (4, 8.0, set(ALL_TARGETS))
  assert config["base_model_name_or_path"] == directory
  assert not list(tmp_path.glob(".ours.tmp-*"))  # the temp dir was renamed, nothing left behind


@pytest.mark.parametrize("case,scan_layers,targets", [
    ("llama", True, lora.DEFAULT_TARGET_REGEX),
    ("qwen2", False, r"layers/1/attn/(q|v)_kernel$|layers/0/mlp/down_kernel$"),
])
def test_peft_loaded_model_matches_jaxift(base_checkpoint, tmp_path, case, scan_layers, targets):
  import peft
  directory = base_checkpoint(case)
  model, cfg = _lora_model(directory, scan_layers, target_regex=targets, dropout=0.05)
  expected = jax_logits(model)
  out = peft_export.export_peft(model, cfg, tmp_path / "adapter", base_model_name_or_path=directory)
  torch_model = peft.PeftModel.from_pretrained(_torch_base(directory), str(out)).eval()
  np.testing.assert_allclose(torch_logits(torch_model), expected, atol=ATOL, rtol=0)
  if case == "llama":  # the adapter dir alone: AutoPeft finds the base through adapter_config.json
    auto = peft.AutoPeftModelForCausalLM.from_pretrained(str(out)).eval()
    np.testing.assert_allclose(torch_logits(auto), expected, atol=ATOL, rtol=0)


def test_merged_export_matches_through_transformers(base_checkpoint, tmp_path):
  directory = base_checkpoint("qwen2")
  model, cfg = _lora_model(directory, scan_layers=True)
  expected = jax_logits(model)
  base = torch_logits(_torch_base(directory))
  assert np.abs(base - expected).max() > 1e-2  # the adapters matter, so the test could fail
  out = peft_export.export_merged(model, cfg, tmp_path / "merged")
  np.testing.assert_allclose(torch_logits(_torch_base(str(out))), expected, atol=ATOL, rtol=0)


def test_gpt2_refuses_peft_export(tmp_path):
  from flax import nnx
  from jaxift.model.config import ModelConfig
  from jaxift.model.decoder import Decoder
  cfg = ModelConfig.from_hf_dict(dict(model_type="gpt2", vocab_size=50, n_embd=16, n_layer=1,
                                      n_head=2, n_positions=16))

  def build():
    model = Decoder(cfg, rngs=nnx.Rngs(0))
    lora.apply_lora(model, lora_config())
    return model
  model = nnx.eval_shape(build)  # shapes only: the refusal comes before any tensor is read
  assert lora.has_lora(model)
  with pytest.raises(ValueError, match="not 'gpt2'; use export_merged"):
    peft_export.export_peft(model, cfg, tmp_path / "adapter")
  assert not (tmp_path / "adapter").exists()


def test_load_peft_adapter_trained_in_pytorch(base_checkpoint, tmp_path):
  """An adapter made by peft itself (random, non-zero B) loads onto jaxift with PEFT's logits;
  exporting it again gives back the same tensors."""
  import peft
  import torch
  directory = base_checkpoint("llama")
  torch.manual_seed(5)
  reference = peft.get_peft_model(_torch_base(directory), peft.LoraConfig(
      r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"],
      init_lora_weights=False, task_type="CAUSAL_LM")).eval()
  reference.save_pretrained(tmp_path / "peft")
  model, cfg = load_model(directory, scan_layers=True)
  assert peft_export.load_peft(model, cfg, tmp_path / "peft") == [
      "layers/attn/q_kernel", "layers/attn/v_kernel", "layers/mlp/down_kernel"]
  np.testing.assert_allclose(jax_logits(model), torch_logits(reference), atol=ATOL, rtol=0)
  peft_export.export_peft(model, cfg, tmp_path / "again")
  theirs = load_file(tmp_path / "peft" / "adapter_model.safetensors")
  ours = load_file(tmp_path / "again" / "adapter_model.safetensors")
  assert sorted(ours) == sorted(theirs)
  for k in theirs:
    np.testing.assert_array_equal(ours[k], theirs[k])
  # jaxift.tools.export_lora merges the same adapter into a full HF directory: peft's logits again.
  import os
  import subprocess
  import sys
  from tests.conftest import REPO_ROOT
  result = subprocess.run(
      [sys.executable, "-m", "jaxift.tools.export_lora", f"--model_path={directory}",
       f"--adapter={tmp_path / 'peft'}", f"--merged_dir={tmp_path / 'merged'}"],
      env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  np.testing.assert_allclose(torch_logits(_torch_base(str(tmp_path / "merged"))),
                             torch_logits(reference), atol=ATOL, rtol=0)
