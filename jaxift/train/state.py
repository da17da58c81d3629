"""The sharded train state and its jitted steps, built in one place (nanodo's train-state builder).

The trainer, the throughput benchmark and the ahead-of-time memory estimate all call `build`, so
the figures they report are those of the trainer's own step: the same optimizer, shardings, step
signature and donation, never a copy of the wiring.

State is born sharded (DESIGN.md section 6): the model comes from `lora.build_model` (pretrained
tensors placed straight into their shards, or random init under `jax.jit(out_shardings=...)`), or
abstract -- ShapeDtypeStructs carrying their target shardings -- when a checkpoint will overwrite
it or when the step is only compiled to size it.
"""
import dataclasses
from typing import Any, Callable

from flax import nnx
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxift.model import loading
from jaxift.model import lora as lora_lib
from jaxift.model import preference as pref_lib
from jaxift.model.config import ModelConfig
from jaxift.model.sharding import mesh_rules
from jaxift.train import optimizer as opt_lib
from jaxift.train import host_batches
from jaxift.train import step as step_lib

# Batch rows are split over both data-parallel axes (FSDP shards parameters AND the batch).
BATCH_AXES = ("data", "fsdp")


def optimizer_shardings(tx: optax.GradientTransformation, params: Any, param_shardings: Any,
                        replicated: NamedSharding) -> Any:
  """Moments like their parameters; counters and other scalars replicated."""
  abstract = jax.eval_shape(tx.init, params)
  return optax.tree_map_params(
      tx, lambda x, s: x if isinstance(x, optax.MaskedNode) else s, abstract, param_shardings,
      transform_non_params=lambda _: replicated, is_leaf=lambda x: isinstance(x, optax.MaskedNode))


def _abstract(tree: Any, shardings: Any) -> Any:
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree,
                      shardings)


@dataclasses.dataclass
class TrainState:
  """What one training run holds on its devices, plus the jitted steps over it.

  `params` are the trained variables (all parameters, or the LoRA adapters), `rest` the frozen
  remainder of the model, passed to the steps as an argument. When built abstract, `params` and
  `opt_state` are ShapeDtypeStructs with their target shardings (restore targets, AOT inputs).
  """
  mesh: Mesh
  model_cfg: ModelConfig
  graphdef: nnx.GraphDef
  params: Any
  opt_state: Any
  rest: Any
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  param_shardings: Any
  opt_shardings: Any
  rest_shardings: Any
  batch_sharding: NamedSharding
  replicated: NamedSharding
  # (params, opt_state, rest, step, batch) -> (params, opt_state, metrics); params/opt donated.
  train_step: Callable
  # (params, rest, batch) -> loss sums of the batch.
  eval_step: Callable
  # Preference objectives (train.objective != 'sft'): the frozen reference copy of a full
  # fine-tune's DPO (None with LoRA, whose reference is the base with adapters off, and for the
  # reference-free ORPO/SimPO), and (params, rest, batch) -> pair sums of a pair batch.
  objective: str = "sft"
  ref_params: Any = None
  preference_eval_step: Callable | None = None

  def model(self, params: Any = None) -> nnx.Module:
    """The decoder with `params` (default: the current ones) merged into the frozen rest."""
    return nnx.merge(self.graphdef, self.params if params is None else params, self.rest)

  def device_step(self, step: int) -> jax.Array:
    """The step counter as a replicated device scalar (an explicit transfer, so the train loop can
    run under a transfer guard that forbids implicit ones)."""
    return jax.device_put(np.int32(step), self.replicated)

  def abstract_batch(self, rows: int, seq_len: int) -> dict[str, jax.ShapeDtypeStruct]:
    """The batch contract as ShapeDtypeStructs with the batch sharding (for an AOT compile)."""
    return {k: jax.ShapeDtypeStruct((rows, seq_len), np.float32 if k == "weights" else np.int32,
                                    sharding=self.batch_sharding)
            for k in host_batches.BATCH_KEYS}


class _WithReference:
  """A jitted preference step with the frozen reference bound as its argument after `rest` (an
  argument, never a jit constant), called with the SFT step's signature (and `.lower` for AOT)."""

  def __init__(self, jitted: Callable, ref_params: Any, ref_at: int):
    self.jitted, self.ref_params, self.ref_at = jitted, ref_params, ref_at

  def _args(self, args):
    return (*args[:self.ref_at], self.ref_params, *args[self.ref_at:])

  def __call__(self, *args):
    return self.jitted(*self._args(args))

  def lower(self, *args):
    return self.jitted.lower(*self._args(args))


def needs_frozen_reference(config: ml_collections.ConfigDict) -> bool:
  """A full fine-tune with a reference objective (DPO) holds a frozen copy of the initial model."""
  objective = pref_lib.check_objective(str(config.train.get("objective", "sft")))
  return objective in pref_lib.REFERENCE_OBJECTIVES and not lora_lib.enabled(config)


def build_model_state(config: ml_collections.ConfigDict, mesh: Mesh, *,
                      abstract_hf: dict | None = None) -> tuple[Any, Any, Any, ModelConfig]:
  """(graphdef, trained params, frozen rest, ModelConfig) of `config`, born sharded on `mesh`.

  With `abstract_hf` (an HF config dict), nothing is read or allocated: the parameters are
  ShapeDtypeStructs (a full fine-tune about to restore its checkpoint, or an AOT estimate; a LoRA
  run resuming must build its real frozen base instead, which its checkpoints do not hold).
  """
  rules = mesh_rules(config)
  if abstract_hf is not None and lora_lib.enabled(config):  # adapters and frozen base as shapes
    return lora_lib.abstract_split(config, abstract_hf, mesh, rules)
  if abstract_hf is not None:
    return loading.abstract_model(config.model, abstract_hf, mesh, rules)
  model, model_cfg = lora_lib.build_model(config, mesh=mesh, rules=rules,
                                          seed=int(config.train.seed))
  graphdef, params, rest = nnx.split(model, lora_lib.trainable_filter(config), ...)
  return graphdef, params, rest, model_cfg


def build(config: ml_collections.ConfigDict, mesh: Mesh, total_steps: int, *,
          abstract_hf: dict | None = None) -> TrainState:
  """The train state of `config` on `mesh` and its jitted train/eval steps.

  `total_steps` sets the learning-rate schedule. `abstract_hf`: see `build_model_state`; the
  optimizer state is then abstract too.
  """
  graphdef, params, rest, model_cfg = build_model_state(config, mesh, abstract_hf=abstract_hf)
  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P(BATCH_AXES))
  tx, schedule = opt_lib.make_optimizer(
      config.optimizer, params, total_steps, freeze_regex=config.train.freeze_regex,
      max_consecutive_skips=int(config.train.max_consecutive_skips))
  param_shardings = jax.tree.map(lambda x: x.sharding, params)
  rest_shardings = jax.tree.map(lambda x: x.sharding, rest)
  opt_shardings = optimizer_shardings(tx, params, param_shardings, replicated)
  if abstract_hf is not None:
    opt_state = _abstract(jax.eval_shape(tx.init, params), opt_shardings)
  else:
    opt_state = jax.jit(tx.init, out_shardings=opt_shardings)(params)

  loss_chunk = int(config.train.loss_chunk_size)
  use_dropout = lora_lib.enabled(config) and float(config.lora.dropout) > 0
  train_step = jax.jit(
      step_lib.make_train_step(
          graphdef, tx, opt_lib.trainable_mask(params, config.train.freeze_regex),
          accum=int(config.train.grad_accum_steps), z_loss=float(config.train.z_loss),
          schedule=schedule, micro_batch_sharding=NamedSharding(mesh, P(None, BATCH_AXES)),
          loss_chunk=loss_chunk, dropout_seed=int(config.train.seed) if use_dropout else None),
      in_shardings=(param_shardings, opt_shardings, rest_shardings, replicated, batch_sharding),
      out_shardings=(param_shardings, opt_shardings, replicated),
      donate_argnums=(0, 1))
  eval_step = jax.jit(step_lib.make_eval_step(graphdef, loss_chunk),
                      in_shardings=(param_shardings, rest_shardings, batch_sharding),
                      out_shardings=replicated)
  objective = pref_lib.check_objective(str(config.train.get("objective", "sft")))
  ref_params, preference_eval_step = None, None
  if objective != "sft":
    if needs_frozen_reference(config):  # a frozen, sharded copy of the initial parameters
      ref_params = (_abstract(params, param_shardings) if abstract_hf is not None else
                    jax.jit(lambda p: jax.tree.map(jnp.copy, p),
                            out_shardings=param_shardings)(params))
    ref_shardings = param_shardings if ref_params is not None else None
    options = config.preference
    train_step = _WithReference(jax.jit(
        step_lib.make_preference_train_step(
            graphdef, tx, opt_lib.trainable_mask(params, config.train.freeze_regex),
            objective=objective, options=options, accum=int(config.train.grad_accum_steps),
            schedule=schedule, micro_batch_sharding=NamedSharding(mesh, P(None, BATCH_AXES)),
            loss_chunk=loss_chunk, dropout_seed=int(config.train.seed) if use_dropout else None),
        in_shardings=(param_shardings, opt_shardings, rest_shardings, ref_shardings, replicated,
                      batch_sharding),
        out_shardings=(param_shardings, opt_shardings, replicated),
        donate_argnums=(0, 1)), ref_params, ref_at=3)
    preference_eval_step = _WithReference(jax.jit(
        step_lib.make_preference_eval_step(graphdef, objective=objective, options=options,
                                           loss_chunk=loss_chunk),
        in_shardings=(param_shardings, rest_shardings, ref_shardings, batch_sharding),
        out_shardings=replicated), ref_params, ref_at=2)
  return TrainState(mesh=mesh, model_cfg=model_cfg, graphdef=graphdef, params=params,
                    opt_state=opt_state, rest=rest, tx=tx, schedule=schedule,
                    param_shardings=param_shardings, opt_shardings=opt_shardings,
                    rest_shardings=rest_shardings, batch_sharding=batch_sharding,
                    replicated=replicated, train_step=train_step, eval_step=eval_step,
                    objective=objective, ref_params=ref_params,
                    preference_eval_step=preference_eval_step)
