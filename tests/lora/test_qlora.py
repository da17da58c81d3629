"""QLoRA: LoRA on a frozen base held quantized (config.lora.base_quantization).

References: a model whose frozen weights are the dequantized values (gradients, logits), the
full-precision load quantized afterwards (quantize-while-loading), peft's tensors of the same
adapters on the full-precision base (export), one device (mesh). Resume on an nf4 base:
tests/train/test_trainer.py::test_lora_trains_adapters_only_and_resumes_exactly."""
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from jaxift.infer import sampler
from jaxift.model import lora, peft_export
from jaxift.model import quantize as Q
from jaxift.model.config import default_model_config
from jaxift.model.loading import load_model
from tests.lora.conftest import TOKENS, jax_logits, lora_config, randomize_adapters

ROOT = pathlib.Path(__file__).resolve().parents[2]
BLOCK = 8  # divides every contraction axis of the tiny checkpoints (embed 32, head_dim 8, mlp 48)


def qlora_config(path: str, scheme: str, *, scan: bool = False, block: int = BLOCK,
                 embedding: bool = True, **lora_kw) -> ml_collections.ConfigDict:
  mc = default_model_config()
  mc.path, mc.scan_layers = path, scan
  lc = lora_config(base_quantization=scheme, quantization_block_size=block,
                   quantize_embedding=embedding, **lora_kw)
  return ml_collections.ConfigDict(dict(model=mc, lora=lc, train=dict(seed=0)))


def dequantized_reference(path: str, scheme: str, *, scan: bool = False, embedding: bool = True,
                          **lora_kw):
  """The full-precision model with each frozen weight replaced by dequantize(quantize(w)), then
  the same adapters: what the quantized model must compute."""
  model, cfg = load_model(path, scan_layers=scan)
  settings = Q.BaseQuantization(scheme, BLOCK, embedding)
  for p, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    axis = settings.axis(p)
    if axis is not None:
      q = Q.quantize(np.asarray(var[...]), scheme, BLOCK, axis)
      var.set_value(jnp.asarray(Q.dequantize(q, np.float32)))
  lora.apply_lora(model, lora_config(**lora_kw))
  return model, cfg


def loss_and_adapter_grads(model, key=None):
  graphdef, adapters, frozen = nnx.split(model, lora.LoRAParam, ...)
  tokens = np.asarray(TOKENS, np.int32)
  positions = np.broadcast_to(np.arange(tokens.shape[1], dtype=np.int32), tokens.shape)

  def loss_fn(adapters, frozen):
    with lora.dropout_rng(key):
      logits = nnx.merge(graphdef, adapters, frozen)(tokens[:, :-1], positions[:, :-1],
                                                     np.ones_like(tokens[:, :-1]))
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

  loss, grads = jax.jit(jax.value_and_grad(loss_fn))(adapters, frozen)
  return float(loss), {"/".join(map(str, p)): np.asarray(v[...])
                       for p, v in nnx.to_flat_state(grads)}


@pytest.mark.parametrize("scheme", ["int8", "int4", "nf4"])
def test_adapter_gradients_equal_those_on_the_dequantized_base(base_checkpoint, scheme):
  path = base_checkpoint("llama")
  model, _ = lora.build_model(qlora_config(path, scheme, scan=True, dropout=0.1))
  reference, _ = dequantized_reference(path, scheme, scan=True, dropout=0.1)
  # Every projection and both embedding tables are held quantized; nothing else is.
  quantized = sorted("/".join(map(str, p)) for p, m in nnx.iter_modules(model)
                     if isinstance(m, Q.QuantizedWeight))
  assert quantized == sorted(["embed/embedding", "lm_head"] + [
      f"layers/{part}/{n}_kernel" for part, names in (("attn", "qkvo"), ("mlp", ["gate", "up",
                                                                                 "down"]))
      for n in names])
  randomize_adapters(model, seed=1)
  randomize_adapters(reference, seed=1)
  key = jax.random.key(7)  # dropout on: the same masks on both
  loss, grads = loss_and_adapter_grads(model, key)
  want_loss, want = loss_and_adapter_grads(reference, key)
  assert loss == pytest.approx(want_loss, abs=1e-5)
  assert sorted(grads) == sorted(want) and len(grads) == 14
  for name in want:
    np.testing.assert_allclose(grads[name], want[name], rtol=0, atol=1e-5, err_msg=name)
    assert np.abs(want[name]).max() > 1e-4, name  # gradients that could differ
  # And the base is really quantized: the logits differ from the full-precision model's.
  full, _ = load_model(path, scan_layers=True)
  lora.apply_lora(full, lora_config(dropout=0.1))
  randomize_adapters(full, seed=1)
  assert np.abs(jax_logits(full) - jax_logits(model)).max() > 1e-4


@pytest.mark.parametrize("scan", [False, True])
def test_quantize_while_loading_equals_quantizing_the_loaded_weights(base_checkpoint, scan):
  path = base_checkpoint("qwen2")  # tied embedding, q/k/v biases
  model, _ = lora.build_model(qlora_config(path, "nf4", scan=scan))
  full, _ = load_model(path, scan_layers=scan)
  done = Q.quantize_model(full, Q.BaseQuantization("nf4", BLOCK, True))
  assert len(done) == (8 if scan else 15)  # 7 kernels (per layer), the embedding
  for p, m in nnx.iter_modules(full):
    if isinstance(m, Q.QuantizedWeight):
      loaded = model
      for part in p:
        loaded = loaded[part] if isinstance(part, int) else getattr(loaded, part)
      np.testing.assert_array_equal(np.asarray(loaded.codes[...]), np.asarray(m.codes[...]))
      np.testing.assert_allclose(np.asarray(loaded.scales[...]), np.asarray(m.scales[...]),
                                 rtol=2.5e-7)
      assert loaded.codes.get_metadata()["out_sharding"] == m.axes
  # The initial QLoRA model (B = 0) computes the dequantized base exactly.
  reference, _ = dequantized_reference(path, "nf4", scan=scan)
  np.testing.assert_allclose(jax_logits(model), jax_logits(reference), rtol=0, atol=1e-5)


def test_greedy_decoding_over_unstacked_quantized_layers_equals_the_scan(base_checkpoint,
                                                                        monkeypatch):
  """The CPU sampler decodes a scanned model over per-layer slices (`unstacked_layers`): with an
  nf4 base and non-zero adapters, the tokens equal those of decoding with the scan itself."""
  model, _ = lora.build_model(qlora_config(base_checkpoint("qwen2"), "nf4", scan=True))
  randomize_adapters(model, 0)
  prompts = [[3, 9, 4, 1], [7, 2]]
  unstacked = sampler.generate_tokens(model, prompts, max_new_tokens=12, cache_bucket=4)
  monkeypatch.setattr(sampler, "_decode_layout", lambda m, batch: (False, False))
  scanned = sampler.generate_tokens(model, prompts, max_new_tokens=12, cache_bucket=4)
  assert unstacked == scanned and all(len(row) == 12 for row in unstacked)


def test_bad_settings_are_named_errors(base_checkpoint):
  path = base_checkpoint("llama")
  with pytest.raises(ValueError, match=r"config.lora.base_quantization='fp4' is unknown"):
    lora.build_model(qlora_config(path, "fp4"))
  # 16 divides embed (32) and mlp (48) but not o_kernel's head_dim (8).
  with pytest.raises(ValueError, match=r"config.lora.quantization_block_size=16 does not divide "
                                       r"axis 1 \(size 8\) of layers/0/attn/o_kernel"):
    lora.build_model(qlora_config(path, "int8", block=16))
  with pytest.raises(ValueError, match=r"config.lora.quantization_block_size: .*even for int4"):
    lora.build_model(qlora_config(path, "int4", block=1))


def test_merged_export_dequantizes_and_peft_export_is_unchanged(base_checkpoint, tmp_path):
  path = base_checkpoint("llama")
  model, cfg = lora.build_model(qlora_config(path, "nf4", target_regex=r"attn/(q|v)_kernel$"))
  randomize_adapters(model, seed=2)
  merged = lora.merge_lora(model)
  assert not Q.has_quantized(merged) and not lora.has_lora(merged)
  np.testing.assert_allclose(jax_logits(merged), jax_logits(model), rtol=0, atol=1e-5)
  # Merged weights = dequantized base + delta: they differ from the full-precision merge by the
  # quantization error only (nf4: at most ~0.152 of the block's absmax).
  full, _ = load_model(path)
  lora.apply_lora(full, lora_config(target_regex=r"attn/(q|v)_kernel$"))
  randomize_adapters(full, seed=2)
  full_merged = lora.merge_lora(full)
  w_full = np.asarray(full_merged.layers[0].attn.q_kernel[...])
  w_q = np.asarray(merged.layers[0].attn.q_kernel[...])
  base = np.asarray(full.layers[0].attn.q_kernel[...])
  absmax = np.abs(base.reshape(4, BLOCK, *base.shape[1:])).max(axis=1).repeat(BLOCK, axis=0)
  err = np.abs(w_q - w_full)
  assert 0 < err.max() and np.all(err <= 0.152 * absmax + 1e-7)
  # PEFT adapter export: the same tensors and config as the adapters on the full-precision base
  # (the mlp modules hold the LoRA class for their quantized kernels, but no adapters).
  assert lora.lora_settings(model) == lora.lora_settings(full)
  want, got = peft_export.peft_tensors(full, cfg), peft_export.peft_tensors(model, cfg)
  assert sorted(got) == sorted(want)
  for k in want:
    np.testing.assert_array_equal(got[k], want[k])
  assert (peft_export.adapter_config(model, cfg, "base") ==
          peft_export.adapter_config(full, cfg, "base"))


def test_frozen_nf4_8b_base_size_by_hand():
  """`abstract_split` of the Llama-3.1-8B shape: frozen bytes equal a hand count."""
  from jaxift.tools.shapes import SHAPES
  from jaxift.model.sharding import DEFAULT_LOGICAL_RULES
  from jaxift.tools.memory_estimate import leaf_bytes_per_device
  hf = dict(SHAPES["llama-3.1-8b"])
  c = ml_collections.ConfigDict(dict(model=default_model_config(), lora=lora_config(rank=16)))
  c.model.scan_layers, c.model.param_dtype = True, "bfloat16"
  c.lora.base_quantization = "nf4"
  _, adapters, frozen, cfg = lora.abstract_split(c, hf, None, DEFAULT_LOGICAL_RULES)
  d, f, L, V = 4096, 14336, 32, 128256
  qkvo = d * d * 2 + d * 1024 * 2
  projections = L * (qkvo + 3 * d * f)
  norms = (2 * L + 1) * d * 2  # bf16
  layer_ids = 2 * L * 4  # int32 layer numbers of the adapted attn and mlp modules (dropout keys)
  want = projections // 2 + projections // 64 * 4 + 2 * V * d * 2 + norms + layer_ids
  assert leaf_bytes_per_device(frozen) == want
  assert want < 6 * 2 ** 30  # 6.03e9 bytes: 5.61 GiB (embedding and lm_head in bf16)
  c.lora.quantize_embedding = True
  _, _, frozen, _ = lora.abstract_split(c, hf, None, DEFAULT_LOGICAL_RULES)
  table = V * d
  assert leaf_bytes_per_device(frozen) == want - 2 * table * 2 + 2 * (table // 2 + table // 16)


SHARDED = r"""
import sys, json
import jax, numpy as np
from flax import nnx
from jaxift.model import lora, quantize as Q
from jaxift.model.sharding import make_mesh, named_sharding, DEFAULT_LOGICAL_RULES
from tests.lora.test_qlora import qlora_config, loss_and_adapter_grads
from tests.lora.conftest import randomize_adapters
out = {}
for scan in (False, True):
  c = qlora_config(sys.argv[1], "nf4", scan=scan)
  single, _ = lora.build_model(c)
  mesh = make_mesh((1, 2, 4))
  sharded, _ = lora.build_model(c, mesh=mesh)
  specs = {}
  for p, m in nnx.iter_modules(sharded):
    if isinstance(m, Q.QuantizedWeight):
      for leaf in ("codes", "scales"):
        v = getattr(m, leaf)
        want = named_sharding(mesh, m.axes, DEFAULT_LOGICAL_RULES, v.shape)
        assert v[...].sharding.is_equivalent_to(want, v.ndim), (p, leaf, v[...].sharding, want)
        specs["/".join(map(str, p)) + "/" + leaf] = str(v[...].sharding.spec)
  randomize_adapters(single, 3); randomize_adapters(sharded, 3)
  a, ga = loss_and_adapter_grads(single)
  b, gb = loss_and_adapter_grads(sharded)
  diff = max(float(np.abs(ga[k] - gb[k]).max()) for k in ga)
  out[str(scan)] = dict(loss=[a, b], grad_diff=diff, specs=specs)
print("RESULT" + json.dumps(out))
"""


def test_sharded_on_8_devices_equals_one_device(base_checkpoint):
  import json
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
  result = subprocess.run([sys.executable, "-c", SHARDED, base_checkpoint("llama")], env=env,
                          capture_output=True, text=True, timeout=600,
                          cwd=ROOT)
  assert result.returncode == 0, result.stderr[-3000:]
  out = json.loads(result.stdout.split("RESULT")[-1])
  for scan, r in out.items():
    assert r["loss"][1] == pytest.approx(r["loss"][0], abs=1e-5), scan
    assert r["grad_diff"] < 1e-5, scan
  # FSDP on embed (packed codes: 32/2 rows over 2), tensor on heads; the scales of the q kernel
  # ([embed/8, heads, head_dim]) shard the same way.
  specs = out["True"]["specs"]
  assert specs["layers/attn/q_kernel/codes"] == "P(None, 'fsdp', 'tensor', None)"
  assert specs["layers/attn/q_kernel/scales"] == "P(None, 'fsdp', 'tensor', None)"
  assert specs["layers/mlp/down_kernel/codes"] == "P(None, 'tensor', 'fsdp')"
  assert out["False"]["specs"]["layers/0/attn/o_kernel/codes"] == \
      "P('tensor', None, 'fsdp')"


def test_qlora_configs_resolve():
  from tests.lora.test_lora_configs import _config
  c = _config("smollm2_qlora", "data=/x.json,quant=int8,block=32,embedding,rank=8,runlocal")
  assert (c.lora.enabled, c.lora.rank, c.lora.base_quantization, c.lora.quantization_block_size,
          c.lora.quantize_embedding) == (True, 8, "int8", 32, True)
  assert c.data.train_files == "/x.json" and c.train.num_steps == 5  # runlocal shrink applied
  c = _config("llama3_8b_qlora_tpu", "model=/m,data=/d")
  assert (c.lora.base_quantization, c.lora.quantization_block_size, c.lora.quantize_embedding,
          c.lora.rank, c.model.remat_policy, c.train.loss_chunk_size) == ("nf4", 64, False, 16,
                                                                          "full", 1024)
  assert Q.from_config(c.lora) == Q.BaseQuantization("nf4", 64, False)
  with pytest.raises(ValueError, match="unknown key 'qaunt'"):
    _config("smollm2_qlora", "qaunt=nf4")


def test_memory_estimate_reports_the_quantized_frozen_base():
  """`memory_estimate.estimate` of a tiny QLoRA config: the frozen bytes equal a hand count of the
  codes and scales, and are below the same LoRA config's float32 base."""
  from jaxift.tools import memory_estimate
  from tests.lora.test_lora_configs import _config

  def config(quant):
    c = _config("tiny", "vocab=256")
    c.model.scan_layers, c.data.max_seq_length, c.train.global_batch_size = True, 64, 2
    c.lora.enabled, c.lora.rank = True, 4
    c.lora.base_quantization, c.lora.quantization_block_size = quant, 16
    return c

  h = config("none").model.hf_config
  d, f, n, k, hd, L, v = (h.hidden_size, h.intermediate_size, h.num_attention_heads,
                          h.num_key_value_heads, h.head_dim, h.num_hidden_layers, h.vocab_size)
  weights = L * (2 * d * n * hd + 2 * d * k * hd + 3 * d * f)
  rest = 4 * (v * d + (2 * L + 1) * d) + 4 * 2 * L  # f32 tied embedding, norms; layer ids
  full = memory_estimate.estimate(config("none"))
  nf4 = memory_estimate.estimate(config("nf4"))
  assert full["frozen_bytes_per_device"] == 4 * weights + rest
  assert nf4["frozen_bytes_per_device"] == weights // 2 + weights // 16 * 4 + rest
  assert nf4["lora_settings"]["base_quantization"] == "nf4"
  assert nf4["params_bytes_per_device"] == full["params_bytes_per_device"]  # the same adapters
