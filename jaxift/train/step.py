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
from jaxift.model import preference as pref_lib

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


def accumulate(grad_and_sums: Callable, params: Any, sum_keys, micro_batches: Batch):
  """Gradients and loss sums added over the leading (micro-batch) axis with a `lax.scan`: each
  micro-step's objective is already divided by the whole batch's denominator, so the sum is the
  one-big-batch gradient."""
  def body(carry, micro):
    grads, sums = grad_and_sums(micro)
    return jax.tree.map(jnp.add, carry, (grads, sums)), None

  zeros = (jax.tree.map(jnp.zeros_like, params),
           {k: jnp.zeros((), jnp.float32) for k in sum_keys})
  (grads, sums), _ = jax.lax.scan(body, zeros, micro_batches)
  return grads, sums


@jax.named_scope("optimizer")  # tags the update's ops for the per-op profile (tools/profile_step)
def apply_update(tx: optax.GradientTransformation, params: Any, opt_state: Any, grads: Any,
                 trainable: Any) -> tuple[Any, Any, Any]:
  """(new params, new optimizer state, the trained part of the gradients for its norm)."""
  trained_grads = jax.tree.map(lambda g, t: g if t else jnp.zeros((), g.dtype), grads, trainable)
  updates, opt_state = tx.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, trained_grads


def update_metrics(opt_state: Any, schedule: optax.Schedule | None, step) -> dict[str, jax.Array]:
  """What both train steps report about the update: skipped non-finite updates
  (`optax.apply_if_finite`) and the learning rate."""
  metrics = {}
  if isinstance(opt_state, optax.ApplyIfFiniteState):
    metrics["consecutive_skips"] = opt_state.notfinite_count.astype(jnp.float32)
    metrics["skipped_updates"] = opt_state.total_notfinite.astype(jnp.float32)
  if schedule is not None:
    metrics["learning_rate"] = schedule(step)
  return metrics


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
      grads, sums = accumulate(lambda micro: grad_fn(params, rest, micro, total_weight), params,
                               ("ce_sum", "z_sum", "correct_sum", "weight_sum"), micro_batches)
    params, opt_state, trained_grads = apply_update(tx, params, opt_state, grads, trainable)
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
    return params, opt_state, {**metrics, **update_metrics(opt_state, schedule, step)}

  return train_step


def make_eval_step(graphdef: nnx.GraphDef, loss_chunk: int = 0) -> Callable:
  """(params, rest, batch) -> loss sums of the batch (the caller adds them over batches and
  divides once)."""

  def eval_step(params, rest, batch: Batch):
    sums = _forward_sums(graphdef, params, rest, batch, loss_chunk)
    sums["non_padding_tokens"] = jnp.sum((batch["segment_ids"] > 0).astype(jnp.float32))
    return sums

  return eval_step


# ---- preference objectives (DPO, ORPO, SimPO): rows [2B, T], row 2i chosen, 2i+1 rejected ---------

def split_pair_micro_batches(batch: Batch, accum: int, batch_spec: Any = None) -> Batch:
  """[2B, T] pair rows -> [accum, 2B/accum, T] keeping each pair's two rows together: micro-batch
  i takes pairs i, i+accum, ... (as `split_micro_batches` takes rows)."""
  def split(x):
    rows = x.shape[0]
    if rows % (2 * accum):
      raise ValueError(f"global batch of {rows // 2} pairs is not divisible by "
                       f"grad_accum_steps={accum}")
    x = x.reshape(rows // 2 // accum, accum, 2, *x.shape[1:])
    x = jnp.swapaxes(x, 0, 1).reshape(accum, rows // accum, *x.shape[3:])
    if batch_spec is not None:
      x = jax.lax.with_sharding_constraint(x, batch_spec)
    return x
  return jax.tree.map(split, batch)


def reference_params(params: Any, ref_params: Any) -> Any:
  """The reference model's trained part: the frozen copy (full fine-tuning), or, with LoRA
  (`ref_params is None`), the adapters set to zero: the base with its adapters switched off (a
  zero delta: y + scale * x A 0 == y), with no second copy of the base."""
  if ref_params is not None:
    return ref_params
  return jax.tree.map(jnp.zeros_like, params)


def _pair_forward(graphdef, params, rest, batch, loss_chunk: int = 0):
  return pref_lib.forward_pair_sums(nnx.merge(graphdef, params, rest), batch, loss_chunk)


def make_preference_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
                               trainable: Any, *, objective: str, options: Any, accum: int = 1,
                               schedule: optax.Schedule | None = None,
                               micro_batch_sharding: Any = None, loss_chunk: int = 0,
                               dropout_seed: int | None = None) -> Callable:
  """(params, opt_state, rest, ref_params, step, batch) -> (params, opt_state, metrics) for a
  preference objective. The objective is the mean over the pairs of the GLOBAL batch (and, for
  ORPO, the chosen NLL over its chosen tokens): both denominators come from the whole batch before
  it is split, so `accum` micro-steps give the same loss and gradient as one big batch.
  `ref_params`: the frozen reference copy (full fine-tuning DPO), or None (LoRA, or a
  reference-free objective)."""
  uses_reference = objective in pref_lib.REFERENCE_OBJECTIVES

  def micro_objective(params, rest, ref, micro: Batch, normalizers):
    logps, counts = _pair_forward(graphdef, params, rest, micro, loss_chunk)
    ref_logps = None
    if uses_reference:
      with lora.dropout_rng(None):  # the reference is deterministic
        ref_logps, _ = _pair_forward(graphdef, ref, rest, micro, loss_chunk)
      ref_logps = jax.lax.stop_gradient(ref_logps)
    sums = pref_lib.pair_sums(objective, options, logps, counts, ref_logps)
    return pref_lib.objective_value(sums, normalizers), sums

  grad_fn = jax.grad(micro_objective, has_aux=True)

  def train_step(params, opt_state, rest, ref_params, step, batch: Batch):
    if dropout_seed is None:
      return _train_step(params, opt_state, rest, ref_params, step, batch)
    with lora.dropout_rng(jax.random.fold_in(jax.random.key(dropout_seed), step)):
      return _train_step(params, opt_state, rest, ref_params, step, batch)

  def _train_step(params, opt_state, rest, ref_params, step, batch: Batch):
    normalizers = pref_lib.global_normalizers(batch)
    ref = reference_params(params, ref_params) if uses_reference else None
    if accum == 1:
      grads, sums = grad_fn(params, rest, ref, batch, normalizers)
    else:
      micro_batches = split_pair_micro_batches(batch, accum, micro_batch_sharding)
      grads, sums = accumulate(lambda micro: grad_fn(params, rest, ref, micro, normalizers),
                               params, pref_lib.SUM_KEYS, micro_batches)
    params, opt_state, trained_grads = apply_update(tx, params, opt_state, grads, trainable)
    pairs = jnp.maximum(sums["pairs"], 1.0)
    non_padding = jnp.sum((batch["segment_ids"] > 0).astype(jnp.float32))
    metrics = {k: sums[f"{k}_sum"] / pairs for k in pref_lib.METRIC_KEYS}
    nll = sums["nll_sum"] / jnp.maximum(sums["chosen_tokens"], 1.0)
    metrics.update({
        "loss": sums["loss_sum"] / pairs + nll,
        "nll_loss": nll,
        "pairs": sums["pairs"],
        "trained_tokens": jnp.sum(batch["weights"].astype(jnp.float32)),
        "non_padding_tokens": non_padding,
        "padding_efficiency": non_padding / batch["segment_ids"].size,
        "grad_norm": optax.global_norm(trained_grads),
    })
    return params, opt_state, {**metrics, **update_metrics(opt_state, schedule, step)}

  return train_step


def make_preference_eval_step(graphdef: nnx.GraphDef, *, objective: str, options: Any,
                              loss_chunk: int = 0) -> Callable:
  """(params, rest, ref_params, batch) -> pair sums of the batch (`preference.summarize` them).
  For reference-free objectives the reference (base) log-probs are not computed."""
  uses_reference = objective in pref_lib.REFERENCE_OBJECTIVES

  def eval_step(params, rest, ref_params, batch: Batch):
    logps, counts = _pair_forward(graphdef, params, rest, batch, loss_chunk)
    ref_logps = None
    if uses_reference:
      ref_logps, _ = _pair_forward(graphdef, reference_params(params, ref_params), rest, batch,
                                   loss_chunk)
    return pref_lib.pair_sums(objective, options, logps, counts, ref_logps)

  return eval_step
