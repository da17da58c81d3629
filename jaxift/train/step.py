"""The pure train and eval steps over `nnx.split` state (jitted by the trainer with shardings).

Gradient accumulation splits the global batch into `accum` micro-batches and sums the gradients
of `sum(weights * CE)` divided by the weight of the WHOLE global batch (known up front: weights are
data), so `accum` micro-steps give the same loss and gradient as one big batch.
"""
from typing import Any, Callable

from flax import nnx
import jax
import jax.numpy as jnp
import optax

from jaxift.model import lora
from jaxift.model import loss as loss_lib

Batch = dict[str, jax.Array]
MODEL_INPUTS = ("inputs", "positions", "segment_ids")


def _forward_sums(graphdef: nnx.GraphDef, params: nnx.State, rest: nnx.State, batch: Batch,
                  loss_chunk: int = 0) -> dict[str, jax.Array]:
  return loss_lib.forward_sums(nnx.merge(graphdef, params, rest), batch, loss_chunk)


def split_micro_batches(batch: Batch, accum: int, batch_spec: Any = None) -> Batch:
  """[B, T] -> [accum, B/accum, T]; micro-batch i takes rows i, i+accum, ... so every device keeps
  contributing its own rows to each micro-step (rows stay sharded along the second axis)."""
  def split(x_BxT):
    b = x_BxT.shape[0]
    if b % accum:
      raise ValueError(f"global batch {b} is not divisible by grad_accum_steps={accum}")
    x = x_BxT.reshape(b // accum, accum, *x_BxT.shape[1:])
    x = jnp.swapaxes(x, 0, 1)
    if batch_spec is not None:
      x = jax.lax.with_sharding_constraint(x, batch_spec)
    return x
  return jax.tree.map(split, batch)


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
                    trainable: Any, *, accum: int = 1, z_loss: float = 0.0,
                    schedule: optax.Schedule | None = None,
                    micro_batch_sharding: Any = None, loss_chunk: int = 0,
                    dropout_seed: int | None = None) -> Callable:
  """(params, opt_state, rest, step, batch) -> (params, opt_state, metrics).

  `params` are the trained variables, `rest` everything else of the model (a frozen LoRA base,
  or nothing): an argument, not a closure, so large frozen weights never become jit constants.
  `trainable` is a bool tree over `params`. With `dropout_seed`, LoRA dropout is on, keyed by step.
  """

  def micro_objective(params, rest, micro: Batch, total_weight):
    sums = _forward_sums(graphdef, params, rest, micro, loss_chunk)
    return loss_lib.objective(sums, total_weight, z_loss), sums

  grad_fn = jax.grad(micro_objective, has_aux=True)

  def train_step(params, opt_state, rest, step, batch: Batch):
    if dropout_seed is None:
      return _train_step(params, opt_state, rest, step, batch)
    with lora.dropout_rng(jax.random.fold_in(jax.random.key(dropout_seed), step)):
      return _train_step(params, opt_state, rest, step, batch)

  def _train_step(params, opt_state, rest, step, batch: Batch):
    total_weight = jnp.sum(batch["weights"].astype(jnp.float32))
    if accum == 1:
      grads, sums = grad_fn(params, rest, batch, total_weight)
    else:
      micro_batches = split_micro_batches(batch, accum, micro_batch_sharding)
      zero_grads = jax.tree.map(jnp.zeros_like, params)
      zero_sums = {k: jnp.zeros((), jnp.float32)
                   for k in ("ce_sum", "z_sum", "correct_sum", "weight_sum")}

      def body(carry, micro):
        grads_acc, sums_acc = carry
        grads, sums = grad_fn(params, rest, micro, total_weight)
        return (jax.tree.map(jnp.add, grads_acc, grads),
                jax.tree.map(jnp.add, sums_acc, sums)), None

      (grads, sums), _ = jax.lax.scan(body, (zero_grads, zero_sums), micro_batches)

    trained_grads = jax.tree.map(lambda g, t: g if t else jnp.zeros((), g.dtype), grads, trainable)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    denominator = loss_lib.safe_denominator(sums["weight_sum"])
    non_padding = jnp.sum((batch["segment_ids"] > 0).astype(jnp.float32))
    metrics = {
        "loss": sums["ce_sum"] / denominator,
        "z_loss": sums["z_sum"] / denominator,
        "token_accuracy": sums["correct_sum"] / denominator,
        "trained_tokens": sums["weight_sum"],
        "non_padding_tokens": non_padding,
        "padding_efficiency": non_padding / batch["segment_ids"].size,
        "grad_norm": optax.global_norm(trained_grads),
    }
    if isinstance(opt_state, optax.ApplyIfFiniteState):  # updates skipped on non-finite gradients
      metrics["consecutive_skips"] = opt_state.notfinite_count.astype(jnp.float32)
      metrics["skipped_updates"] = opt_state.total_notfinite.astype(jnp.float32)
    if schedule is not None:
      metrics["learning_rate"] = schedule(step)
    return params, opt_state, metrics

  return train_step


def make_eval_step(graphdef: nnx.GraphDef, loss_chunk: int = 0) -> Callable:
  """(params, rest, batch) -> loss sums of the batch (the caller adds them over batches and
  divides once)."""

  def eval_step(params, rest, batch: Batch):
    sums = _forward_sums(graphdef, params, rest, batch, loss_chunk)
    sums["non_padding_tokens"] = jnp.sum((batch["segment_ids"] > 0).astype(jnp.float32))
    return sums

  return eval_step
