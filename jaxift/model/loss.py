"""Weighted next-token cross entropy as SUMS, so a loss is exact over devices and micro-steps.

The loss of a global batch is `sum(weights * CE) / sum(weights)`. Per-device or per-micro-batch
means would weight short and long examples differently, so the pieces here return numerators and
the denominator; the step divides once by the weight of the whole global batch.

The training step, validation and the test loss of `jaxift.infer.evaluate` all go through
`forward_sums` and `summarize`: one loss, one perplexity.

Chunked cross entropy (`train.loss_chunk_size`): with a 128k vocabulary the float32 logits of one
8 x 4096 batch are 16 GiB -- more than the model. The final hidden states [B, T, D] are cut into
chunks of `chunk_size` positions; a `lax.scan` computes each chunk's logits
(`Decoder.logits_from_hidden`) and adds its loss sums, and `jax.checkpoint` on the scan body makes
the backward pass recompute a chunk's logits instead of storing them. Peak logits memory:
B * chunk_size * vocab * 4 bytes. It returns the same sums as `loss_sums`.
"""
import math

from flax import nnx
import jax
import jax.numpy as jnp

# exp() of a loss above this overflows float64; a perplexity that large only says "diverged".
MAX_LOSS_FOR_PERPLEXITY = 700.0


@jax.named_scope("loss")
def loss_sums(logits_BxTxV: jax.Array, targets_BxT: jax.Array,
              weights_BxT: jax.Array) -> dict[str, jax.Array]:
  """Sums over the batch, all float32.

  ce_sum: sum(w * -log p(target)); z_sum: sum(w * logsumexp(logits)^2) (PaLM's z-loss);
  correct_sum: sum(w * [target has the highest logit]) (a tie for the highest counts as correct);
  weight_sum: sum(w).
  """
  logits_BxTxV = logits_BxTxV.astype(jnp.float32)
  weights_BxT = weights_BxT.astype(jnp.float32)
  log_z_BxT = jax.nn.logsumexp(logits_BxTxV, axis=-1)
  target_logit_BxT = jnp.take_along_axis(logits_BxTxV, targets_BxT[..., None], axis=-1)[..., 0]
  ce_BxT = log_z_BxT - target_logit_BxT
  # "The target has the highest logit" rather than argmax == target: the max is the one that
  # logsumexp already computes (the compiler shares the reduction), while an argmax is a second,
  # (value, index) reduction over [B, T, V] -- on XLA:CPU 5% of a SmolLM2 step at 4 layers.
  max_logit_BxT = jnp.max(logits_BxTxV, axis=-1)
  correct_BxT = (target_logit_BxT >= max_logit_BxT).astype(jnp.float32)
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


def summarize(sums) -> dict[str, float]:
  """Host-side loss, perplexity and token accuracy from summed (fetched) `loss_sums` values."""
  weight = float(sums["weight_sum"])
  loss = float(sums["ce_sum"]) / weight if weight > 0 else 0.0
  return {"loss": loss, "perplexity": math.exp(min(loss, MAX_LOSS_FOR_PERPLEXITY)),
          "token_accuracy": float(sums["correct_sum"]) / weight if weight > 0 else 0.0,
          "trained_tokens": weight}


def forward_sums(model: nnx.Module, batch: dict[str, jax.Array],
                 loss_chunk: int = 0) -> dict[str, jax.Array]:
  """The forward pass and loss sums of a batch-contract dict; chunked past `loss_chunk` tokens."""
  if not loss_chunk or batch["inputs"].shape[1] <= loss_chunk:
    logits_BxTxV = model(batch["inputs"], batch["positions"], batch["segment_ids"])
    return loss_sums(logits_BxTxV, batch["targets"], batch["weights"])
  return chunked_forward_sums(model, batch, chunk_size=loss_chunk)


# ---- chunked cross entropy -----------------------------------------------------------------------

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
    return loss_sums(logits_BxKxV, targets_BxK, weights_BxK)

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
