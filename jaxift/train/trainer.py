"""`train_and_evaluate(config, workdir)`: the whole training run, phase by phase (big_vision style).

Mesh -> tokenizer -> model (born sharded) -> input -> optimizer (sharded like the params) -> steps
-> checkpoint/resume -> loop (metrics one step late, validation, best checkpoint, early stopping,
SIGTERM) -> final evaluation.
"""
import json
import math
import time
from typing import Any

from absl import logging
from etils import epath
from flax import nnx
import jax
from jax.sharding import NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np
import optax

from jaxift.train import checkpoint as ckpt_lib
from jaxift.train import host_batches
from jaxift.train import mfu as mfu_lib
from jaxift.train import optimizer as opt_lib
from jaxift.train import sharding
from jaxift.train import step as step_lib
from jaxift.train.config import mesh_rules
from jaxift.train.early_stopping import EarlyStopping
from jaxift.train.metrics import MetricWriter, StepTimer
from jaxift.train.preemption import PreemptionWatcher

BATCH_AXES = ("data", "fsdp")


class NonFiniteLossError(FloatingPointError):
  """The training loss became NaN or Inf; no checkpoint was written after it."""


def optimizer_shardings(tx: optax.GradientTransformation, params: Any, param_shardings: Any,
                        replicated: NamedSharding) -> Any:
  """Moments like their parameters; counters and other scalars replicated."""
  abstract = jax.eval_shape(tx.init, params)
  return optax.tree_map_params(
      tx, lambda x, s: x if isinstance(x, optax.MaskedNode) else s, abstract, param_shardings,
      transform_non_params=lambda _: replicated, is_leaf=lambda x: isinstance(x, optax.MaskedNode))


def _count_batches(config, tokenizer, per_process: int, num_epochs: int) -> int:
  """Batches in `num_epochs` passes (batches run across epoch boundaries, so not epochs * one
  pass). One dry pass of the pipeline: for very large data sets set train.num_steps instead."""
  from jaxift.data.pipeline import make_iterator  # pylint: disable=g-import-not-at-top
  it = make_iterator(config.data, tokenizer, split="train", batch_size=per_process,
                     shard_index=jax.process_index(), shard_count=jax.process_count(),
                     seed=config.train.seed, num_epochs=num_epochs)
  count = sum(1 for _ in it)
  if jax.process_count() > 1:  # every process must run the same number of steps
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    count = int(np.min(multihost_utils.process_allgather(np.int32(count))))
  return count


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  from jaxift.data.pipeline import make_iterator  # pylint: disable=g-import-not-at-top
  from jaxift.data.tokenizers import load_tokenizer  # pylint: disable=g-import-not-at-top
  from jaxift.train import generation_eval  # pylint: disable=g-import-not-at-top
  from jaxift.model import lora as lora_lib  # pylint: disable=g-import-not-at-top

  workdir = epath.Path(workdir)
  is_main = jax.process_index() == 0
  if is_main:
    workdir.mkdir(parents=True, exist_ok=True)
  t_start = time.perf_counter()

  # ---- Mesh ---------------------------------------------------------------------------------------
  mesh = sharding.make_mesh(tuple(config.mesh.shape))
  rules = mesh_rules(config)
  batch_sharding = NamedSharding(mesh, P(BATCH_AXES))
  replicated = NamedSharding(mesh, P())
  batch_shards = mesh.shape["data"] * mesh.shape["fsdp"]
  logging.info("mesh %s over %d devices, %d processes", dict(mesh.shape), mesh.size,
               jax.process_count())

  # ---- Tokenizer and model: born sharded, or abstract when a checkpoint will overwrite it ----------
  checkpointer = ckpt_lib.Checkpointer(workdir, keep=config.checkpoint.keep,
                                       keep_best=config.checkpoint.keep_best,
                                       async_save=config.checkpoint.async_save)
  latest = checkpointer.latest_step()
  resuming = latest is not None and (workdir / "model_config.json").exists()
  use_lora = lora_lib.enabled(config)
  tokenizer = load_tokenizer(config.tokenizer.path or config.model.path)
  if resuming and not use_lora:  # no weights read: the checkpoint's parameters land in their shards
    model_hf = json.loads((workdir / "model_config.json").read_text())
    graphdef, params, rest, model_cfg = ckpt_lib.abstract_model(config.model, model_hf, mesh, rules)
  else:  # LoRA always rebuilds its frozen base; its checkpoints hold only the adapters
    model, model_cfg = lora_lib.build_model(config, mesh=mesh, rules=rules, seed=config.train.seed)
    graphdef, params, rest = nnx.split(model, lora_lib.trainable_filter(config), ...)
    del model
    model_hf = model_cfg.to_hf_dict()
  rest_shardings = jax.tree.map(lambda x: x.sharding, rest)

  # ---- Input --------------------------------------------------------------------------------------
  global_batch, accum = int(config.train.global_batch_size), int(config.train.grad_accum_steps)
  if global_batch % jax.process_count():
    raise ValueError(f"train.global_batch_size={global_batch} is not divisible by "
                     f"{jax.process_count()} processes")
  if global_batch % accum or (global_batch // accum) % batch_shards:
    raise ValueError(f"train.global_batch_size={global_batch} / grad_accum_steps={accum} must be "
                     f"a multiple of the data*fsdp mesh size {batch_shards}")
  per_process = global_batch // jax.process_count()
  if config.train.num_steps > 0:
    total_steps, num_epochs = int(config.train.num_steps), None
  elif config.train.num_epochs > 0:
    num_epochs = int(config.train.num_epochs)
    total_steps = _count_batches(config, tokenizer, per_process, num_epochs)
  else:
    raise ValueError("set train.num_steps or train.num_epochs to a positive number")

  def make_train_iter():
    return make_iterator(config.data, tokenizer, split="train", batch_size=per_process,
                         shard_index=jax.process_index(), shard_count=jax.process_count(),
                         seed=config.train.seed, num_epochs=num_epochs)

  train_iter = make_train_iter()

  def to_global(host_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    return host_batches.to_global(host_batches.same_length(host_batch), batch_sharding)

  # ---- Optimizer, state sharded like the parameters -----------------------------------------------
  tx, schedule = opt_lib.make_optimizer(config.optimizer, params, total_steps,
                                        freeze_regex=config.train.freeze_regex)
  param_shardings = jax.tree.map(lambda x: x.sharding, params)
  opt_shardings = optimizer_shardings(tx, params, param_shardings, replicated)
  if resuming:
    opt_state = jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
                             jax.eval_shape(tx.init, params), opt_shardings)
  else:
    opt_state = jax.jit(tx.init, out_shardings=opt_shardings)(params)
  trainable = opt_lib.trainable_mask(params, config.train.freeze_regex)

  # ---- Train and eval steps: pure, jitted, explicit shardings, donated state ----------------------
  train_step = jax.jit(
      step_lib.make_train_step(graphdef, tx, trainable, accum=accum,
                               z_loss=float(config.train.z_loss), schedule=schedule,
                               micro_batch_sharding=NamedSharding(mesh, P(None, BATCH_AXES)),
                               loss_chunk=int(config.train.loss_chunk_size),
                               dropout_seed=(int(config.train.seed) if use_lora
                                             and config.lora.dropout > 0 else None)),
      in_shardings=(param_shardings, opt_shardings, rest_shardings, replicated, batch_sharding),
      out_shardings=(param_shardings, opt_shardings, replicated),
      donate_argnums=(0, 1))
  eval_step = jax.jit(step_lib.make_eval_step(graphdef, int(config.train.loss_chunk_size)),
                      in_shardings=(param_shardings, rest_shardings, batch_sharding),
                      out_shardings=replicated)

  eval_rows = int(config.eval.batch_size or global_batch)
  if eval_rows % (jax.process_count() * batch_shards):
    raise ValueError(f"eval.batch_size={eval_rows} must be a multiple of {batch_shards} "
                     f"(data*fsdp) times {jax.process_count()} processes")

  def evaluate(params) -> dict[str, float] | None:
    """Validation loss and perplexity over the validation split (or its first max_batches)."""
    try:
      it = make_iterator(config.data, tokenizer, split="validation",
                         batch_size=eval_rows // jax.process_count(),
                         shard_index=jax.process_index(), shard_count=jax.process_count(),
                         seed=config.train.seed, num_epochs=1)
    except ValueError as e:  # e.g. an empty validation split
      logging.warning("no validation: %s", e)
      return None
    totals = None
    for i, host_batch in enumerate(host_batches.lockstep(it, eval_rows // jax.process_count())):
      if config.eval.max_batches and i >= config.eval.max_batches:
        break
      sums = eval_step(params, rest, to_global(host_batch))
      totals = sums if totals is None else jax.tree.map(lambda a, b: a + b, totals, sums)
    if totals is None:
      return None
    totals = jax.device_get(totals)
    loss = float(totals["ce_sum"] / max(float(totals["weight_sum"]), 1e-9))
    return {"loss": loss, "perplexity": math.exp(min(loss, 80.0)),
            "token_accuracy": float(totals["correct_sum"] / max(float(totals["weight_sum"]), 1e-9)),
            "trained_tokens": float(totals["weight_sum"])}

  # ---- Resume from the latest checkpoint (params, optimizer, step, data iterator) -----------------
  early = EarlyStopping(patience=int(config.train.early_stopping_patience),
                        min_delta=float(config.train.early_stopping_min_delta))
  start_step = 0
  if resuming:
    try:
      restored = checkpointer.restore(
          latest, abstract_params=params, abstract_opt_state=opt_state,
          data_iter=train_iter if config.checkpoint.save_data_iterator else None)
    except ValueError as e:
      if "process_" not in str(e):
        raise
      # The data iterator was saved by a different number of processes: its state cannot be
      # mapped onto this run's shards. Parameters and optimizer state still resume.
      logging.warning("data iterator state not restorable (%s); restarting the data order", e)
      train_iter = make_train_iter()
      restored = checkpointer.restore(latest, abstract_params=params, abstract_opt_state=opt_state)
    params, opt_state = restored["params"], restored["opt_state"]
    start_step = int(restored["meta"]["step"])
    early.load_state_dict(restored["meta"].get("early_stopping", {}))
    logging.info("resumed from %s at step %d", checkpointer.directory, start_step)
  if is_main:
    ckpt_lib.save_config(workdir, config)
    ckpt_lib.write_text_atomic(workdir / "model_config.json", json.dumps(model_hf, indent=2))
    ckpt_lib.save_tokenizer(workdir, tokenizer)

  results: dict[str, Any] = {"start_step": start_step, "total_steps": total_steps}
  writer = MetricWriter(workdir, total_steps=total_steps, initial_step=start_step,
                        tensorboard=config.train.tensorboard, progress_bar=config.train.progress_bar)

  def generation_check(params, label: str) -> None:
    n = int(config.eval.generate_examples)
    model = nnx.merge(graphdef, params, rest)
    out = generation_eval.exact_match_eval(model, tokenizer, config, n)
    results[f"exact_match_{label}"] = out["exact_match"]
    writer.write(step, f"generation_{label}", {"exact_match": out["exact_match"], "examples": n})
    writer.message(f"exact match {label} fine-tuning: {out['exact_match']:.3f} on {n} held-out "
                   f"examples\n" + generation_eval.format_examples(out["examples"],
                                                                  config.eval.show_generations))

  step = start_step
  if config.eval.generate_examples and start_step == 0:
    generation_check(params, "before")

  # ---- Training loop ------------------------------------------------------------------------------
  flops_shape = mfu_lib.flops_shape_from_hf(model_hf)
  peak = float(config.train.peak_flops_per_device) or mfu_lib.peak_flops_per_device()
  timer = StepTimer()
  watcher = PreemptionWatcher(checkpointer)
  pending: tuple[int, Any, int] | None = None  # (step, device metrics, row length T)
  last_saved = start_step if resuming else -1
  step_times: list[float] = []

  def finish(pending) -> None:
    """Fetches a dispatched step's metrics (one step late), checks them, logs them."""
    done_step, metrics, seq_len = pending
    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
    if not math.isfinite(metrics["loss"]):
      raise NonFiniteLossError(
          f"training loss is {metrics['loss']} at step {done_step}: stopping. No checkpoint was "
          f"written after it; the last good one is step {checkpointer.latest_step()} in "
          f"{checkpointer.directory}. Lower optimizer.lr, add warmup, or check the data.")
    elapsed = timer.lap()
    if elapsed is not None and done_step > start_step + 1:  # the first step includes compilation
      step_times.append(elapsed)
      tokens_per_s = metrics["non_padding_tokens"] / elapsed
      metrics.update(step_time=elapsed, tokens_per_second=tokens_per_s,
                     mfu=mfu_lib.mfu(tokens_per_s, mfu_lib.train_flops_per_token(
                         flops_shape, seq_len), mesh.size, peak))
    results["train_loss"] = metrics["loss"]
    if done_step % config.train.log_every == 0 or done_step == total_steps:
      writer.write(done_step, "train", metrics)
    writer.advance(done_step)

  def save(step: int, validation_loss: float | None = None) -> None:
    nonlocal last_saved
    if step == last_saved:
      return
    meta = {"step": step, "seed": int(config.train.seed), "early_stopping": early.state_dict(),
            "time": time.time()}
    if use_lora:
      meta["lora_base"] = lora_lib.base_reference(config)
    checkpointer.save(step, params=params, opt_state=opt_state, meta=meta,
                      data_iter=train_iter if config.checkpoint.save_data_iterator else None,
                      validation_loss=validation_loss)
    last_saved = step

  data_exhausted = False
  try:
    timer.lap()
    while step < total_steps:
      try:
        host_batch = next(train_iter)
      except StopIteration:  # num_epochs ran out before total_steps (a partial last epoch)
        data_exhausted = True
        break
      batch = to_global(host_batch)
      params, opt_state, metrics = train_step(params, opt_state, rest, np.int32(step), batch)
      step += 1
      if pending is not None:
        finish(pending)
      pending = (step, metrics, int(host_batch["inputs"].shape[1]))

      is_last = step == total_steps
      do_eval = is_last or (config.train.eval_every and step % config.train.eval_every == 0)
      do_save = is_last or (config.train.save_every and step % config.train.save_every == 0)
      preempted = watcher.reached(step) or step == config.train.stop_at_step
      if do_eval or do_save or preempted:
        finish(pending)  # never evaluate or save state whose loss was not checked
        pending = None
      validation_loss = None
      if do_eval:
        val = evaluate(params)
        if val is not None:
          validation_loss = val["loss"]
          writer.write(step, "validation", val)
          if early.update(val["loss"], step) and config.checkpoint.keep_best > 0:
            do_save = True  # a new best must exist on disk
          results.update(validation_loss=val["loss"], validation_perplexity=val["perplexity"])
      if do_save or preempted or early.should_stop:
        save(step, validation_loss)
      if preempted:
        writer.message(f"preemption signal: saved step {step} to {checkpointer.directory}; exiting")
        results["preempted"] = True
        break
      if early.should_stop:
        writer.message(f"early stopping at step {step}: validation loss has not improved for "
                       f"{early.patience} evaluations (best {early.best:.4f} at {early.best_step})")
        results["early_stopped"] = True
        break
    if pending is not None:
      finish(pending)
      pending = None
    if data_exhausted and step > start_step and step != last_saved:
      val = evaluate(params)
      if val is not None:
        writer.write(step, "validation", val)
        early.update(val["loss"], step)
        results.update(validation_loss=val["loss"], validation_perplexity=val["perplexity"])
      save(step, None if val is None else val["loss"])
    checkpointer.wait()
    results["best_step"] = checkpointer.best_step()
  finally:
    watcher.close()
    checkpointer.close()
    writer.close()

  if config.eval.generate_examples and not results.get("preempted"):
    generation_check(params, "after")
  results.update(step=step, best_validation_loss=None if math.isinf(early.best) else early.best,
                 wall_time_s=time.perf_counter() - t_start)
  if step_times:
    results["steps_per_second"] = 1.0 / float(np.median(step_times))
  if is_main:
    writer.message("final: " + json.dumps({k: v for k, v in results.items()}, default=str))
  return results
