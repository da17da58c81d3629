"""LoRA on the jaxift decoder: exact start, only adapters trained, axes, dropout, bf16 base."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxift.model import lora
from jaxift.model.loading import load_model
from tests.lora.conftest import TOKENS, jax_logits, lora_config, randomize_adapters


@pytest.mark.parametrize("scan_layers", [False, True])
def test_initial_model_equals_base_exactly(base_checkpoint, scan_layers):
  model, _ = load_model(base_checkpoint("qwen2"), scan_layers=scan_layers)
  base = jax_logits(model)
  paths = lora.apply_lora(model, lora_config(dropout=0.1))
  assert len(paths) == (7 if scan_layers else 14)
  np.testing.assert_array_equal(jax_logits(model), base)
  # A is random (not a degenerate zero adapter); B is zero, which is what keeps the start exact.
  for path, var in nnx.to_flat_state(nnx.state(model, lora.LoRAParam)):
    if path[-1].endswith("_lora_a"):
      assert float(jnp.std(var[...])) > 0.01, path
    else:
      assert not np.any(np.asarray(var[...])), path


def test_adapter_shapes_and_logical_axes(base_checkpoint):
  model, _ = load_model(base_checkpoint("llama"), scan_layers=True)
  lora.apply_lora(model, lora_config(rank=3))
  flat = {"/".join(map(str, p)): v for p, v in nnx.to_flat_state(nnx.state(model, lora.LoRAParam))}
  L, D, N, K, H, F = 2, 32, 4, 2, 8, 48
  expected = {
      "layers/attn/q_lora_a": ((L, D, 3), ("layers", "embed", "lora_rank")),
      "layers/attn/q_lora_b": ((L, 3, N, H), ("layers", "lora_rank", "heads", "head_dim")),
      "layers/attn/k_lora_b": ((L, 3, K, H), ("layers", "lora_rank", "kv_heads", "head_dim")),
      "layers/attn/o_lora_a": ((L, N, H, 3), ("layers", "heads", "head_dim", "lora_rank")),
      "layers/attn/o_lora_b": ((L, 3, D), ("layers", "lora_rank", "embed")),
      "layers/mlp/down_lora_a": ((L, F, 3), ("layers", "mlp", "lora_rank")),
      "layers/mlp/up_lora_b": ((L, 3, F), ("layers", "lora_rank", "mlp")),
  }
  for name, (shape, axes) in expected.items():
    assert flat[name].shape == shape, name
    assert flat[name].get_metadata()["out_sharding"] == axes, name
  assert len(flat) == 14


def test_target_regex_selects_projections_and_layers(base_checkpoint):
  model, _ = load_model(base_checkpoint("llama"))
  paths = lora.apply_lora(model, lora_config(target_regex=r"layers/1/attn/(q|v)_kernel$"))
  assert paths == ["layers/1/attn/q_kernel", "layers/1/attn/v_kernel"]
  assert lora.lora_settings(model)["targets"] == {1: ["q", "v"]}
  assert type(model.layers[0].attn) is not lora.LoRAAttention
  with pytest.raises(ValueError, match="already has LoRA"):
    lora.apply_lora(model, lora_config())
  fresh, _ = load_model(base_checkpoint("llama"))
  with pytest.raises(ValueError, match=r"matches no projection.*layers/0/attn/q_kernel"):
    lora.apply_lora(fresh, lora_config(target_regex="lm_head"))
  with pytest.raises(ValueError, match="rank must be a positive"):
    lora.apply_lora(fresh, lora_config(rank=0))


def test_only_adapters_receive_updates(base_checkpoint):
  model, _ = load_model(base_checkpoint("llama"), scan_layers=True)
  lora.apply_lora(model, lora_config(dropout=0.1))
  graphdef, adapters, rest = nnx.split(model, lora.LoRAParam, ...)
  base_before = jax.tree.map(np.asarray, nnx.state(model, nnx.All(nnx.Param, nnx.Not(lora.LoRAParam))))
  adapters_before = jax.tree.map(np.asarray, adapters)
  tokens = jnp.asarray(TOKENS, jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
  tx = optax.adam(1e-2)
  opt_state = tx.init(adapters)
  # The optimizer state mirrors the adapters only: no moment for any base parameter.
  assert lora.count_params(opt_state) == 2 * lora.count_params(adapters) + 1

  def loss_fn(adapters, rest, key):
    with lora.dropout_rng(key):
      logits = nnx.merge(graphdef, adapters, rest)(tokens[:, :-1], positions[:, :-1],
                                                   jnp.ones_like(tokens[:, :-1]))
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

  @jax.jit
  def step(adapters, opt_state, rest, key):
    loss, grads = jax.value_and_grad(loss_fn)(adapters, rest, key)
    updates, opt_state = tx.update(grads, opt_state, adapters)
    return optax.apply_updates(adapters, updates), opt_state, loss

  losses = []
  for i in range(4):
    adapters, opt_state, loss = step(adapters, opt_state, rest, jax.random.key(i))
    losses.append(float(loss))
  assert losses[-1] < losses[0]
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, rest.filter(nnx.Param)),
               base_before)
  changed = jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != b)),
                                         adapters, adapters_before))
  assert all(changed)


def test_dropout_only_with_a_key(base_checkpoint):
  model, _ = load_model(base_checkpoint("llama"), scan_layers=True)
  lora.apply_lora(model, lora_config(dropout=0.5))
  randomize_adapters(model, seed=1)
  graphdef, state = nnx.split(model)
  tokens = jnp.asarray(TOKENS, jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)

  @jax.jit
  def forward(state, key):
    with lora.dropout_rng(key):
      return nnx.merge(graphdef, state)(tokens, positions, jnp.ones_like(tokens))

  plain = jax_logits(model)
  no_key = np.asarray(forward(state, None))
  a1, a2 = np.asarray(forward(state, jax.random.key(1))), np.asarray(forward(state, jax.random.key(1)))
  b = np.asarray(forward(state, jax.random.key(2)))
  np.testing.assert_allclose(no_key, plain, atol=1e-6)
  np.testing.assert_array_equal(a1, a2)
  assert np.abs(a1 - plain).max() > 1e-3 and np.abs(a1 - b).max() > 1e-3


def test_bfloat16_base_keeps_float32_adapters(base_checkpoint):
  model, _ = load_model(base_checkpoint("llama"))
  reference = jax_logits(model)
  lora.apply_lora(model, lora_config(base_dtype="bfloat16"))
  dtypes = {type(v).__name__ + ":" + str(v[...].dtype)
            for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  assert dtypes == {"Param:bfloat16", "LoRAParam:float32"}
  # bf16-rounded weights, float32 compute: close to the float32 base, not bitwise equal.
  logits = jax_logits(model)
  assert 0 < np.abs(logits - reference).max() < 0.05


def test_merge_lora_equals_adapted_model(base_checkpoint):
  model, _ = load_model(base_checkpoint("qwen2"), scan_layers=True)
  lora.apply_lora(model, lora_config())
  randomize_adapters(model, seed=2)
  merged = lora.merge_lora(model)
  assert not lora.has_lora(merged) and lora.has_lora(model)
  assert not nnx.state(merged, lora.LoRAParam)
  np.testing.assert_allclose(jax_logits(merged), jax_logits(model), atol=1e-4)


def test_cached_decoding_equals_full_forward(base_checkpoint):
  """Generation path (KV cache, LoRAAttention's own o projection): prefill then one token at a
  time gives the logits of one full forward."""
  model, _ = load_model(base_checkpoint("llama"), scan_layers=True)
  lora.apply_lora(model, lora_config())
  randomize_adapters(model, seed=6)
  full = jax_logits(model)
  graphdef, state = nnx.split(model)

  @jax.jit
  def decode(state, cache, tokens, positions, index):
    return nnx.merge(graphdef, state).forward_with_cache(tokens, positions,
                                                         jnp.ones_like(tokens), cache, index)

  tokens = np.asarray(TOKENS, np.int32)
  cache = model.init_cache(tokens.shape[0], tokens.shape[1])
  prefill = 8
  logits, cache = decode(state, cache, tokens[:, :prefill],
                         np.broadcast_to(np.arange(prefill, dtype=np.int32), (2, prefill)), 0)
  steps = [np.asarray(logits)]
  for t in range(prefill, tokens.shape[1]):
    logits, cache = decode(state, cache, tokens[:, t:t + 1], np.full((2, 1), t, np.int32), t)
    steps.append(np.asarray(logits))
  np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-5)
