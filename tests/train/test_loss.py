"""Loss sums against hand-computed values."""
import math

import jax.numpy as jnp
import numpy as np
import pytest

from jaxift.model import loss as loss_lib


def test_loss_sums_hand_example():
  # One row, two positions, vocab 2. Position 0: logits (0, log 3) -> p = (1/4, 3/4), target 1.
  # Position 1: logits (0, 0) -> p = 1/2 each, target 0, weight 0 (padding: must not count).
  logits = jnp.array([[[0.0, math.log(3.0)], [0.0, 0.0]]])
  sums = loss_lib.loss_sums(logits, jnp.array([[1, 0]]), jnp.array([[1.0, 0.0]]))
  assert float(sums["ce_sum"]) == pytest.approx(-math.log(0.75), rel=1e-6)
  assert float(sums["weight_sum"]) == 1.0
  assert float(sums["correct_sum"]) == 1.0
  assert float(sums["z_sum"]) == pytest.approx(math.log(4.0) ** 2, rel=1e-6)


def test_token_accuracy_counts_a_target_with_the_highest_logit():
  # Position 0: target 2 is the strict maximum; 1: target 0 is below logit 1; 2: a tie between
  # targets 0 and 1 at the highest logit counts as correct (documented in loss_sums).
  logits = jnp.array([[[0.0, 1.0, 2.0], [0.5, 3.0, 0.0], [4.0, 4.0, 1.0]]])
  sums = loss_lib.loss_sums(logits, jnp.array([[2, 0, 1]]), jnp.ones((1, 3)))
  assert float(sums["correct_sum"]) == 2.0


def test_objective_adds_z_loss_and_divides_by_global_weight():
  sums = {"ce_sum": jnp.array(3.0), "z_sum": jnp.array(10.0)}
  assert float(loss_lib.objective(sums, jnp.array(6.0), 0.0)) == pytest.approx(0.5)
  assert float(loss_lib.objective(sums, jnp.array(6.0), 1e-2)) == pytest.approx(3.1 / 6.0)


def test_no_trained_token_gives_zero_not_nan():
  logits = jnp.zeros((1, 3, 5))
  sums = loss_lib.loss_sums(logits, jnp.zeros((1, 3), jnp.int32), jnp.zeros((1, 3)))
  value = loss_lib.objective(sums, sums["weight_sum"], 1e-4)
  assert np.isfinite(float(value)) and float(value) == 0.0
