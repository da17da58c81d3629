"""Optimizer: schedule values, weight-decay and freeze masks by path, clipping."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxift.train import optimizer as opt_lib


def _opt_config(**overrides) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict(dict(
      name="adamw", lr=1e-3, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0,
      no_decay_regex=r"(norm|bias|ln_)", schedule="cosine", warmup_steps=0, warmup_ratio=0.0,
      end_lr_ratio=0.0, grad_clip_norm=0.0))
  c.update(overrides)
  return c


def _params():
  return {
      "embed": {"embedding": jnp.ones((4, 2))},
      "layers": {"attn": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))},
                 "input_norm": {"scale": jnp.ones((3, 2))}},  # stacked (scan): 2-D norm
  }


def test_warmup_then_cosine_hand_values():
  sched = opt_lib.make_schedule(_opt_config(warmup_steps=10, schedule="cosine"), total_steps=110)
  assert float(sched(0)) == pytest.approx(0.0)
  assert float(sched(5)) == pytest.approx(0.5e-3)
  assert float(sched(10)) == pytest.approx(1e-3)
  # Halfway through the 100 decay steps, cosine is at half the peak.
  assert float(sched(60)) == pytest.approx(0.5e-3, rel=1e-5)
  assert float(sched(110)) == pytest.approx(0.0, abs=1e-9)


def test_linear_decay_to_end_ratio_and_warmup_ratio():
  sched = opt_lib.make_schedule(
      _opt_config(schedule="linear", warmup_ratio=0.1, end_lr_ratio=0.1), total_steps=100)
  assert float(sched(10)) == pytest.approx(1e-3)
  assert float(sched(55)) == pytest.approx(1e-3 - 0.5 * 0.9e-3, rel=1e-5)
  assert float(sched(100)) == pytest.approx(1e-4, rel=1e-5)


def test_unknown_schedule_is_a_clear_error():
  with pytest.raises(ValueError, match="schedule"):
    opt_lib.make_schedule(_opt_config(schedule="step"), 10)


def test_decay_mask_excludes_norms_and_biases_by_name():
  mask = opt_lib.decay_mask(_params(), r"(norm|bias|ln_)")
  assert mask["embed"]["embedding"] is True
  assert mask["layers"]["attn"]["kernel"] is True
  assert mask["layers"]["attn"]["bias"] is False
  assert mask["layers"]["input_norm"]["scale"] is False


def test_weight_decay_applies_only_to_masked_params():
  params = _params()
  tx, _ = opt_lib.make_optimizer(
      _opt_config(weight_decay=0.5, lr=0.1, schedule="constant"), params, 10)
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero_grads, tx.init(params), params)
  # AdamW with zero gradient: update = -lr * wd * param on decayed params, 0 elsewhere.
  np.testing.assert_allclose(updates["layers"]["attn"]["kernel"], -0.05 * np.ones((2, 2)))
  np.testing.assert_allclose(updates["layers"]["attn"]["bias"], 0.0)
  np.testing.assert_allclose(updates["layers"]["input_norm"]["scale"], 0.0)


def test_frozen_params_get_no_update_and_no_state():
  params = _params()
  tx, _ = opt_lib.make_optimizer(_opt_config(lr=0.1, schedule="constant"), params, 10,
                                 freeze_regex=r"^embed/")
  grads = jax.tree.map(jnp.ones_like, params)
  state = tx.init(params)
  updates, _ = tx.update(grads, state, params)
  np.testing.assert_allclose(updates["embed"]["embedding"], 0.0)
  # Adam's first step moves each trained parameter by -lr * sign(grad).
  np.testing.assert_allclose(updates["layers"]["attn"]["kernel"], -0.1, rtol=1e-5)
  # No Adam moments for frozen parameters: fewer state leaves than 2 per param + counters.
  n_state = sum(x.size for x in jax.tree.leaves(state))
  n_trained = sum(x.size for x in jax.tree.leaves(params)) - 8
  assert n_state < 2 * n_trained + 8


def test_clipping_uses_only_trainable_grads():
  params = {"a": jnp.zeros((1,)), "frozen_b": jnp.zeros((1,))}
  c = _opt_config(name="sgd", b1=0.0, lr=1.0, schedule="constant", grad_clip_norm=1.0)
  tx, _ = opt_lib.make_optimizer(c, params, 10, freeze_regex="frozen")
  grads = {"a": jnp.array([0.5]), "frozen_b": jnp.array([100.0])}
  updates, _ = tx.update(grads, tx.init(params), params)
  # The huge frozen gradient does not shrink the trainable one (norm 0.5 < 1, no clipping).
  np.testing.assert_allclose(updates["a"], [-0.5], rtol=1e-6)
  np.testing.assert_allclose(updates["frozen_b"], [0.0])
  grads = {"a": jnp.array([4.0]), "frozen_b": jnp.array([0.0])}
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates["a"], [-1.0], rtol=1e-6)


def test_freezing_everything_is_an_error():
  with pytest.raises(ValueError, match="freezes every parameter"):
    opt_lib.make_optimizer(_opt_config(), _params(), 10, freeze_regex=".")


def test_param_path_drops_nnx_value_attribute():
  from flax import nnx

  class Tiny(nnx.Module):
    def __init__(self):
      self.input_norm = nnx.Param(jnp.ones((2,)))

  _, state = nnx.split(Tiny(), nnx.Param)
  paths = [opt_lib.param_path(p) for p, _ in jax.tree_util.tree_leaves_with_path(state)]
  assert paths == ["input_norm"]
