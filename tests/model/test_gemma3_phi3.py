"""Gemma 3 (text) and Phi-3 beyond the padded/packed parity of test_parity.py: longrope past the
original context, scan/remat, the KV cache over sliding and full layers, export round trips,
refusals."""
import dataclasses

import jax
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from jaxift.model.config import SUPPORTED_ROPE_TYPES, ModelConfig
from jaxift.model.decoder import Decoder
from jaxift.model.hf import export_hf
from jaxift.model.loading import load_model
from tests.model.conftest import jax_logits, random_examples, torch_logits

TOL = 1e-4


def _row(ex):
  n = len(ex)
  return np.array([ex]), np.arange(n)[None], np.ones((1, n), np.int32)


def test_phi3_longrope_past_original_context(tiny_checkpoint):
  """20 tokens > original_max_position_embeddings=16: transformers switches to the long factors."""
  directory, torch_model = tiny_checkpoint("phi3_longrope")
  model, cfg = load_model(directory)
  assert cfg.rope_scaling_dict["rope_type"] == "longrope"
  ex = random_examples(5, (20,))[0]
  diff = np.abs(jax_logits(model, *_row(ex))[0] - torch_logits(torch_model, ex)).max()
  short = np.abs(jax_logits(model, *_row(ex[:12]))[0] - torch_logits(torch_model, ex[:12])).max()
  print(f"phi3 longrope: 20 tokens (long factors) {diff:.2e}, 12 tokens (short) {short:.2e}")
  assert diff <= TOL and short <= TOL


@pytest.mark.parametrize("options", [dict(scan_layers=True), dict(remat_policy="full"),
                                     dict(scan_layers=True, remat_policy="dots_saveable")])
def test_gemma3_scan_and_remat(options, tiny_checkpoint):
  directory, torch_model = tiny_checkpoint("gemma3_text")
  model, _ = load_model(directory, **options)
  ex = random_examples(7, (11,))[0]  # 11 > the sliding window of 4
  diff = np.abs(jax_logits(model, *_row(ex))[0] - torch_logits(torch_model, ex)).max()
  print(f"gemma3 {options}: {diff:.2e}")
  assert diff <= TOL
  # gradients flow through the scanned/rematted layer types
  graphdef, state = nnx.split(model)
  grads = jax.jit(jax.grad(lambda s: nnx.merge(graphdef, s)(*_row(ex)).sum()))(state)
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


def test_gemma3_sliding_window_matters(tiny_checkpoint):
  directory, _ = tiny_checkpoint("gemma3_text")
  model, cfg = load_model(directory)
  abstract = nnx.eval_shape(lambda: Decoder(dataclasses.replace(cfg, sliding_window=1000),
                                            rngs=nnx.Rngs(0)))
  unwindowed = nnx.merge(nnx.split(abstract)[0], nnx.state(model))
  ex = random_examples(3, (9,))[0]
  a, b = jax_logits(model, *_row(ex))[0], jax_logits(unwindowed, *_row(ex))[0]
  np.testing.assert_allclose(a[:4], b[:4], atol=1e-6)
  assert np.abs(a[4:] - b[4:]).max() > 1e-3


@pytest.mark.parametrize("case,layout", [("gemma3_text", "unrolled"), ("gemma3_text", "scan"),
                                         ("gemma3_text", "unstacked"), ("gemma3_text", "fused"),
                                         ("phi3_longrope", "scan")])
def test_cached_decoding_matches_transformers(case, layout, tiny_checkpoint):
  """Left-padded prompts, prefill then token by token through the cache, past the window.
  'unstacked': scanned weights decoded over `unstacked_layers()` (the sampler on the CPU), where
  each layer's type (sliding or global) is static instead of selected under the scan; 'fused':
  the same with q/k/v and gate/up as one product each (gemma3: q/k norms after the split)."""
  directory, torch_model = tiny_checkpoint(case)
  model, _ = load_model(directory, scan_layers=layout != "unrolled")
  graphdef, state = nnx.split(model)
  seqs = random_examples(9, (9, 12))
  prompt_lens = [len(s) - 5 for s in seqs]
  p = max(prompt_lens)
  tokens, positions, segments = (np.zeros((2, p), np.int32) for _ in range(3))
  for b, (s, n) in enumerate(zip(seqs, prompt_lens)):
    tokens[b, p - n:], positions[b, p - n:], segments[b, p - n:] = s[:n], np.arange(n), 1

  @jax.jit
  def step(state, cache, tok, pos, seg, index):
    m = nnx.merge(graphdef, state)
    layers = (m.unstacked_layers(fuse_projections=layout == "fused")
              if layout in ("unstacked", "fused") else None)
    return m.forward_with_cache(tok, pos, seg, cache, index, layers=layers)

  cache = model.init_cache(2, p + 5)
  logits, cache = step(state, cache, tokens, positions, segments, 0)
  got = [[logits[b, -1]] for b in range(2)]
  for k in range(4):
    tok = np.array([[s[n + k]] for s, n in zip(seqs, prompt_lens)], np.int32)
    pos = np.array([[n + k] for n in prompt_lens], np.int32)
    logits, cache = step(state, cache, tok, pos, np.ones((2, 1), np.int32), p + k)
    for b in range(2):
      got[b].append(logits[b, 0])
  for b, (s, n) in enumerate(zip(seqs, prompt_lens)):
    ref = torch_logits(torch_model, s[:n + 4])[n - 1:]
    diff = np.abs(np.stack(got[b]) - ref).max()
    assert diff <= TOL, (b, diff)


@pytest.mark.parametrize("case", ["gemma3_text", "phi3_longrope"])
def test_export_hf_round_trip(case, tiny_checkpoint, tmp_path):
  directory, torch_model = tiny_checkpoint(case)
  model, cfg = load_model(directory, scan_layers=True)
  out = export_hf(model, cfg, tmp_path / "export")
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
  ex = random_examples(4, (20,))[0]
  np.testing.assert_allclose(torch_logits(reloaded, ex), torch_logits(torch_model, ex), atol=1e-5)
  assert ModelConfig.from_hf_dict(cfg.to_hf_dict()) == cfg


def test_gemma3_multimodal_config_reads_text_config():
  d = dict(model_type="gemma3", text_config=dict(
      vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, head_dim=16))
  cfg = ModelConfig.from_hf_dict(d)
  assert cfg.model_type == "gemma3_text" and cfg.family == "gemma3" and cfg.tie_word_embeddings
  assert cfg.layer_types == ("sliding_attention",) * 2 and cfg.rope_local_theta == 10000.0


@pytest.mark.parametrize("rope", [dict(rope_type="yarn", factor=4.0), dict(type="dynamic")])
def test_unsupported_rope_type_names_supported(rope):
  d = dict(model_type="phi3", vocab_size=97, hidden_size=32, intermediate_size=48,
           num_hidden_layers=2, num_attention_heads=4, rope_scaling=rope)
  with pytest.raises(ValueError, match="rope type '(yarn|dynamic)' is not supported") as e:
    ModelConfig.from_hf_dict(d)
  assert all(t in str(e.value) for t in SUPPORTED_ROPE_TYPES)


def test_gemma3_multimodal_checkpoint_loads_its_text_model(tiny_checkpoint, tmp_path):
  """A `gemma3` (image-text) directory: config under text_config, tensors under
  model.language_model.*; the vision tower is ignored."""
  import json
  from safetensors.numpy import load_file, save_file
  directory, torch_model = tiny_checkpoint("gemma3_text")
  text = json.loads((directory / "config.json").read_text())
  (tmp_path / "config.json").write_text(json.dumps(dict(
      model_type="gemma3", architectures=["Gemma3ForConditionalGeneration"], text_config=text,
      vision_config=dict(model_type="siglip_vision_model"))))
  tensors = load_file(directory / "model.safetensors")
  renamed = {k.replace("model.", "model.language_model.", 1): v for k, v in tensors.items()}
  renamed["model.vision_tower.dummy.weight"] = np.zeros((2, 2), np.float32)
  save_file(renamed, tmp_path / "model.safetensors", metadata={"format": "pt"})
  model, cfg = load_model(tmp_path)
  assert cfg.model_type == "gemma3_text"
  ex = random_examples(16, (9,))[0]
  np.testing.assert_allclose(jax_logits(model, *_row(ex))[0], torch_logits(torch_model, ex),
                             atol=TOL)
