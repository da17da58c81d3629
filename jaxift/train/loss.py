"""Weighted next-token cross entropy as SUMS, so a loss is exact over devices and micro-steps.

The loss of a global batch is `sum(weights * CE) / sum(weights)`. Per-device or per-micro-batch
means would weight short and long examples differently, so the pieces here return numerators and
the denominator; the step divides once by the weight of the whole global batch.
"""
import jax
import jax.numpy as jnp


def loss_sums(logits_BxTxV: jax.Array, targets_BxT: jax.Array,
              weights_BxT: jax.Array) -> dict[str, jax.Array]:
  """Sums over the batch, all float32.

  ce_sum: sum(w * -log p(target)); z_sum: sum(w * logsumexp(logits)^2) (PaLM's z-loss);
  correct_sum: sum(w * [argmax == target]); weight_sum: sum(w).
  """
  logits_BxTxV = logits_BxTxV.astype(jnp.float32)
  weights_BxT = weights_BxT.astype(jnp.float32)
  log_z_BxT = jax.nn.logsumexp(logits_BxTxV, axis=-1)
  target_logit_BxT = jnp.take_along_axis(logits_BxTxV, targets_BxT[..., None], axis=-1)[..., 0]
  ce_BxT = log_z_BxT - target_logit_BxT
  correct_BxT = (jnp.argmax(logits_BxTxV, axis=-1) == targets_BxT).astype(jnp.float32)
  return {
      "ce_sum": jnp.sum(weights_BxT * ce_BxT),
      "z_sum": jnp.sum(weights_BxT * jnp.square(log_z_BxT)),
      "correct_sum": jnp.sum(weights_BxT * correct_BxT),
      "weight_sum": jnp.sum(weights_BxT),
  }


def safe_denominator(weight_sum: jax.Array) -> jax.Array:
  """A batch without trained tokens gives loss 0, never 0/0."""
  return jnp.where(weight_sum > 0, weight_sum, 1.0)


def objective(sums: dict[str, jax.Array], total_weight: jax.Array, z_loss: float) -> jax.Array:
  """The part of the global-batch objective contributed by `sums` (divide by the GLOBAL weight)."""
  numerator = sums["ce_sum"]
  if z_loss:
    numerator = numerator + z_loss * sums["z_sum"]
  return numerator / safe_denominator(total_weight)
