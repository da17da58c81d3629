"""Cross entropy over sequence chunks, so float32 [B, T, vocab] logits never exist at once.

With a 128k vocabulary the logits of one 8 x 4096 batch are 16 GiB in float32 -- more than the
model. Here the final hidden states [B, T, D] are cut into chunks of `chunk_size` positions; a
`lax.scan` computes each chunk's logits (`Decoder.logits_from_hidden`) and adds its loss sums, and
`jax.checkpoint` on the scan body makes the backward pass recompute a chunk's logits instead of
storing them. Peak logits memory: B * chunk_size * vocab * 4 bytes.

Returns the same sums as `jaxift.train.loss.loss_sums` (ce_sum, z_sum, correct_sum, weight_sum),
so `loss.objective` and the step's metrics use them unchanged.
"""
from flax import nnx
import jax
import jax.numpy as jnp

from jaxift.train import loss as loss_lib

SUM_KEYS = ("ce_sum", "z_sum", "correct_sum", "weight_sum")


def _pad_to_chunks(x_BxT: jax.Array, chunk_size: int) -> jax.Array:
  """[B, T, ...] -> [C, B, chunk_size, ...], padded with zeros (weight 0 never counts)."""
  b, t = x_BxT.shape[:2]
  chunks = -(-t // chunk_size)
  pad = chunks * chunk_size - t
  if pad:
    x_BxT = jnp.pad(x_BxT, [(0, 0), (0, pad)] + [(0, 0)] * (x_BxT.ndim - 2))
  x = x_BxT.reshape(b, chunks, chunk_size, *x_BxT.shape[2:])
  return jnp.swapaxes(x, 0, 1)


def chunked_loss_sums_from_hidden(model: nnx.Module, hidden_BxTxD: jax.Array,
                                  targets_BxT: jax.Array, weights_BxT: jax.Array, *,
                                  chunk_size: int) -> dict[str, jax.Array]:
  """`loss_sums(model.logits_from_hidden(hidden), targets, weights)`, chunk by chunk."""
  if chunk_size <= 0:
    raise ValueError(f"loss chunk_size must be > 0, got {chunk_size}")
  graphdef, state = nnx.split(model)
  hidden_CxBxKxD = _pad_to_chunks(hidden_BxTxD, chunk_size)
  targets_CxBxK = _pad_to_chunks(targets_BxT, chunk_size)
  weights_CxBxK = _pad_to_chunks(weights_BxT.astype(jnp.float32), chunk_size)

  # The model state is an explicit argument (not a closure) so checkpoint/scan see it as an input
  # whose gradient (the LM head's) they accumulate over chunks.
  @jax.checkpoint
  def chunk_sums(state, hidden_BxKxD, targets_BxK, weights_BxK):
    logits_BxKxV = nnx.merge(graphdef, state).logits_from_hidden(hidden_BxKxD)
    return loss_lib.loss_sums(logits_BxKxV, targets_BxK, weights_BxK)

  def body(acc, xs):
    sums = chunk_sums(state, *xs)
    return {k: acc[k] + sums[k] for k in SUM_KEYS}, None

  zeros = {k: jnp.zeros((), jnp.float32) for k in SUM_KEYS}
  sums, _ = jax.lax.scan(body, zeros, (hidden_CxBxKxD, targets_CxBxK, weights_CxBxK))
  return sums


def chunked_forward_sums(model: nnx.Module, batch: dict[str, jax.Array], *,
                         chunk_size: int) -> dict[str, jax.Array]:
  """The train step's forward + loss sums on a batch-contract dict, without full logits."""
  hidden_BxTxD = model.hidden(batch["inputs"], batch["positions"], batch["segment_ids"])
  return chunked_loss_sums_from_hidden(model, hidden_BxTxD, batch["targets"], batch["weights"],
                                       chunk_size=chunk_size)
