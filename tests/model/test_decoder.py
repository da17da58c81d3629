"""Decoder properties: causality, no leaks across segments, KV-cache decoding equals the full
forward (under jit with nnx.split/merge, as the sampler uses it), scan/remat change nothing,
logical axis names, dtype options and clear errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxift.model.config import ModelConfig
from jaxift.model.decoder import Decoder
from jaxift.model.loading import load_model
from tests.model.conftest import random_examples, torch_logits

def _tiny(tiny_checkpoint, **options) -> Decoder:
  return load_model(tiny_checkpoint("llama3_rope_untied")[0], **options)[0]


def _call(model, *args, method="__call__"):
  graphdef, state = nnx.split(model)
  return jax.jit(lambda s, *a: getattr(nnx.merge(graphdef, s), method)(*a))(state, *args)


TINY = dict(model_type="llama", vocab_size=64, hidden_size=32, intermediate_size=48,
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


@pytest.mark.parametrize("case", ["llama3_rope_untied", "gpt2_untied"])
def test_causal_and_segment_isolated(case, tiny_checkpoint):
  """d logits[t] / d embedding(token at t') is zero for t' > t and across packed segments.
  Untied models: the embedding gradient then comes from the inputs only."""
  graphdef, state = nnx.split(load_model(tiny_checkpoint(case)[0])[0])
  tokens = jnp.arange(10, 20)[None]  # distinct tokens: embedding row k belongs to one position
  segments = jnp.array([[1] * 6 + [2] * 4])
  positions = jnp.array([list(range(6)) + list(range(4))])

  @jax.jit
  def grad_rows(t):
    def f(state):
      return nnx.merge(graphdef, state)(tokens, positions, segments)[0, t].sum()
    g = jax.grad(f)(state)["embed"]["embedding"][...]
    return jnp.abs(g[10:20]).sum(-1)  # gradient norm per input position

  for t in range(10):
    g = np.asarray(grad_rows(t))
    seg_start = 0 if t < 6 else 6
    assert np.all(g[t + 1:] == 0), (t, g)  # nothing from the future
    assert np.all(g[:seg_start] == 0), (t, g)  # nothing from an earlier packed example
    assert np.all(g[seg_start:t + 1] > 0), (t, g)  # but everything in its own past


@pytest.mark.parametrize("case,layout", [("llama3_rope_untied", "unrolled"),
                                         ("llama3_rope_untied", "scan"),
                                         ("llama3_rope_untied", "unstacked"),
                                         ("llama3_rope_untied", "fused"), ("qwen2_tied", "fused")])
def test_cached_decoding_equals_full_forward(case, layout, tiny_checkpoint):
  """Left-padded prompts of different lengths, prefill then one token at a time, all jitted.
  'unstacked': scanned weights, decoded over `unstacked_layers()` as the CPU sampler does; the
  prefill's last-column logits (`last_logits_only`) are the full forward's last column. 'fused':
  the same with q/k/v and gate/up concatenated (qwen2: with the q/k/v biases)."""
  directory, torch_model = tiny_checkpoint(case)
  model, _ = load_model(directory, scan_layers=layout != "unrolled")
  graphdef, state = nnx.split(model)
  seqs = random_examples(5, (7, 10))  # prompt = all but the last 4 tokens
  prompt_lens = [len(s) - 4 for s in seqs]
  p = max(prompt_lens)
  tokens = np.zeros((2, p), np.int32)
  positions = np.zeros((2, p), np.int32)
  segments = np.zeros((2, p), np.int32)
  for b, (s, n) in enumerate(zip(seqs, prompt_lens)):
    tokens[b, p - n:], positions[b, p - n:], segments[b, p - n:] = s[:n], np.arange(n), 1

  @jax.jit
  def step(state, cache, tok, pos, seg, index):
    m = nnx.merge(graphdef, state)
    unstacked = layout in ("unstacked", "fused")
    layers = m.unstacked_layers(fuse_projections=layout == "fused") if unstacked else None
    assert layers is None or all((layer["fused"] is not None) == (layout == "fused")
                                 for layer in layers)
    return m.forward_with_cache(tok, pos, seg, cache, index, last_logits_only=unstacked,
                                layers=layers)

  cache = model.init_cache(2, p + 4)
  logits, cache = step(state, cache, tokens, positions, segments, 0)
  assert logits.shape[1] == (1 if layout in ("unstacked", "fused") else p)
  got = [[logits[b, -1]] for b in range(2)]
  for k in range(3):  # feed the known next tokens one by one
    tok = np.array([[s[n + k]] for s, n in zip(seqs, prompt_lens)], np.int32)
    pos = np.array([[n + k] for n in prompt_lens], np.int32)
    logits, cache = step(state, cache, tok, pos, np.ones((2, 1), np.int32), p + k)
    for b in range(2):
      got[b].append(logits[b, 0])
  for b, (s, n) in enumerate(zip(seqs, prompt_lens)):
    ref = torch_logits(torch_model, s)[n - 1:n + 3]
    np.testing.assert_allclose(np.stack(got[b]), ref, atol=1e-4)


def test_scan_and_remat_match_plain(tiny_checkpoint):
  directory, _ = tiny_checkpoint("qwen3")
  ex = random_examples(9, (8,))[0]
  args = (jnp.asarray([ex]), jnp.arange(8)[None], jnp.ones((1, 8), jnp.int32))

  def loss_and_grads(model):
    def loss(m):
      return jax.nn.log_softmax(m(*args)).mean()
    value, grads = jax.jit(nnx.value_and_grad(loss))(model)
    flat = {tuple(k): v[...] for k, v in nnx.to_flat_state(grads)}
    if model.scan_layers:  # unstack to compare with the per-layer list
      flat = {**{k: v for k, v in flat.items() if k[0] != "layers"},
              **{("layers", i) + k[1:]: v[i] for k, v in flat.items() if k[0] == "layers"
                 for i in range(2)}}
    return float(value), flat

  base_value, base_grads = loss_and_grads(load_model(directory)[0])
  for options in (dict(remat_policy="full"), dict(scan_layers=True, remat_policy="dots_saveable")):
    value, grads = loss_and_grads(load_model(directory, **options)[0])
    assert value == pytest.approx(base_value, abs=1e-6), options
    assert grads.keys() == base_grads.keys()
    for k in grads:
      np.testing.assert_allclose(grads[k], base_grads[k], atol=1e-6, err_msg=str((options, k)))


def test_parameters_carry_logical_axes():
  cfg = ModelConfig.from_hf_dict(TINY)
  abstract = nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0), scan_layers=True))
  specs = nnx.get_partition_spec(nnx.state(abstract, nnx.Param))
  flat = {tuple(k): tuple(v.get_value()) for k, v in nnx.to_flat_state(specs)}
  assert flat[("embed", "embedding")] == ("vocab", "embed")
  assert flat[("lm_head",)] == ("embed", "vocab")
  assert flat[("layers", "attn", "q_kernel")] == ("layers", "embed", "heads", "head_dim")
  assert flat[("layers", "attn", "k_kernel")] == ("layers", "embed", "kv_heads", "head_dim")
  assert flat[("layers", "attn", "o_kernel")] == ("layers", "heads", "head_dim", "embed")
  assert flat[("layers", "mlp", "down_kernel")] == ("layers", "mlp", "embed")
  assert all(v for v in flat.values())  # every parameter is named


def test_bfloat16_compute_keeps_float32_logits_and_params(tiny_checkpoint):
  model = _tiny(tiny_checkpoint, dtype="bfloat16", param_dtype="float32")
  args = (jnp.arange(6)[None], jnp.arange(6)[None], jnp.ones((1, 6), jnp.int32))
  out = _call(model, *args)
  assert out.dtype == jnp.float32
  assert model.embed.embedding[...].dtype == jnp.float32
  assert _call(model, *args, method="hidden").dtype == jnp.bfloat16
  np.testing.assert_allclose(out, _call(_tiny(tiny_checkpoint), *args), atol=0.05)  # bf16 rounding only
  half = _tiny(tiny_checkpoint, param_dtype="bfloat16")
  assert half.layers[0].attn.q_kernel[...].dtype == jnp.bfloat16


def test_hidden_then_logits_equals_call(tiny_checkpoint):
  model = _tiny(tiny_checkpoint)
  args = (jnp.arange(5)[None], jnp.arange(5)[None], jnp.ones((1, 5), jnp.int32))
  hidden = _call(model, *args, method="hidden")
  np.testing.assert_allclose(_call(model, hidden, method="logits_from_hidden"),
                             _call(model, *args), atol=1e-6)


def test_option_errors(tiny_checkpoint):
  cfg = ModelConfig.from_hf_dict(TINY)
  with pytest.raises(NotImplementedError, match="splash.*not available.*xla"):
    Decoder(cfg, rngs=nnx.Rngs(0), attention_impl="splash")
  with pytest.raises(ValueError, match="attention 'flash' is unknown"):
    Decoder(cfg, rngs=nnx.Rngs(0), attention_impl="flash")
  with pytest.raises(ValueError, match="remat_policy 'sometimes' is unknown"):
    Decoder(cfg, rngs=nnx.Rngs(0), remat_policy="sometimes")
