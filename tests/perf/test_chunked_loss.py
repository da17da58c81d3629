"""The chunked cross entropy gives the plain loss's sums and gradients (within 1e-5) and never
builds float32 [B, T, vocab] logits."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxift.model import loss as chunked_loss
from jaxift.model import loss as loss_lib
from tests.perf.conftest import contract_batch, tiny_decoder

BATCH = contract_batch([[20, 17], [30], [7, 9, 11]], 40, 101, seed=3)


def _objective(params, graphdef, rest, batch, chunk_size, z_loss=1e-3):
  model = nnx.merge(graphdef, params, rest)
  if chunk_size:
    sums = chunked_loss.chunked_forward_sums(model, batch, chunk_size=chunk_size)
  else:
    logits = model(batch["inputs"], batch["positions"], batch["segment_ids"])
    sums = loss_lib.loss_sums(logits, batch["targets"], batch["weights"])
  return loss_lib.objective(sums, sums["weight_sum"], z_loss), sums


@pytest.fixture(scope="module")
def compiled_grads():
  """chunk_size -> (gradients, sums, optimized HLO text); 0 is the plain loss. One compile each."""
  graphdef, params, rest = nnx.split(tiny_decoder(seed=1), nnx.Param, ...)
  batch = {k: jnp.asarray(v) for k, v in BATCH.items()}
  grad = jax.jit(jax.grad(_objective, has_aux=True), static_argnums=(1, 4))
  cache = {}

  def get(chunk_size):
    if chunk_size not in cache:
      compiled = grad.lower(params, graphdef, rest, batch, chunk_size).compile()
      grads, sums = compiled(params, rest, batch)
      cache[chunk_size] = (grads, sums, compiled.as_text())
    return cache[chunk_size]
  return get


@pytest.mark.parametrize("chunk_size", [8, 16])  # 8 divides T=40; 16 does not (padded chunk)
def test_sums_and_gradients_equal_plain_loss(compiled_grads, chunk_size):
  plain_grads, plain_sums, _ = compiled_grads(0)
  grads, sums, _ = compiled_grads(chunk_size)
  for key in chunked_loss.SUM_KEYS:
    np.testing.assert_allclose(sums[key], plain_sums[key], rtol=1e-5, atol=1e-5)
  assert float(sums["weight_sum"]) == float(BATCH["weights"].sum())
  flat, plain_flat = jax.tree.leaves(grads), jax.tree.leaves(plain_grads)
  assert len(flat) == len(plain_flat)
  for g, p in zip(flat, plain_flat):
    np.testing.assert_allclose(g, p, atol=1e-5)
  assert max(float(jnp.abs(g).max()) for g in flat) > 1e-3  # the gradients are not all zero


def test_no_full_vocab_logits_in_the_compiled_step(compiled_grads):
  """No f32[B, T, V] array in the optimized HLO of the gradient (the plain loss has one)."""
  b, t = BATCH["inputs"].shape
  full = f"f32[{b},{t},101]"
  assert full in compiled_grads(0)[2]
  chunked = compiled_grads(8)[2]
  assert full not in chunked and f"f32[{b},8,101]" in chunked


def test_hand_worked_sums_on_one_position():
  """Vocab 3, one trained position: CE = logsumexp(l) - l[target] by hand."""
  class Head(nnx.Module):
    def __init__(self):
      self.w = nnx.Param(jnp.eye(3))

    def logits_from_hidden(self, h):
      return jnp.einsum("BTD,DV->BTV", h, self.w[...])
  hidden = jnp.array([[[1.0, 2.0, 0.0], [0.0, 0.0, 5.0], [3.0, 0.0, 0.0]]])
  sums = chunked_loss.chunked_loss_sums_from_hidden(
      Head(), hidden, jnp.array([[1, 0, 0]]), jnp.array([[1.0, 0.0, 1.0]]), chunk_size=2)
  lse0 = np.log(np.exp(1) + np.exp(2) + 1)
  lse2 = np.log(np.exp(3) + 2)
  np.testing.assert_allclose(sums["ce_sum"], (lse0 - 2) + (lse2 - 3), rtol=1e-6)
  np.testing.assert_allclose(sums["z_sum"], lse0 ** 2 + lse2 ** 2, rtol=1e-6)
  assert float(sums["correct_sum"]) == 2.0 and float(sums["weight_sum"]) == 2.0


def test_bad_chunk_size():
  with pytest.raises(ValueError, match="chunk_size must be > 0"):
    chunked_loss.chunked_loss_sums_from_hidden(None, jnp.zeros((1, 2, 3)), jnp.zeros((1, 2), int),
                                               jnp.zeros((1, 2)), chunk_size=0)
