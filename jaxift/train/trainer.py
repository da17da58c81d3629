"""`train_and_evaluate(config, workdir)`: the whole training run, phase by phase (big_vision style).

Mesh -> tokenizer and input -> train state (born sharded, or abstract when a checkpoint will
overwrite it; `jaxift.train.state`) -> resume -> evaluators from config -> loop (metrics one step
late, evaluations, best checkpoint, early stopping, SIGTERM) -> final evaluations.
"""
import math
import time
from typing import Any

from absl import logging
from etils import epath
import jax
import ml_collections
import numpy as np

from jaxift import workdir as workdir_lib
from jaxift.data import audit
from jaxift.data import elastic
from jaxift.data import steps as data_steps
from jaxift.data.pipeline import make_iterator
from jaxift.data.tokenizers import load_tokenizer
from jaxift.model import loading
from jaxift.model import lora as lora_lib
from jaxift.model import sharding
from jaxift.train import evals as evals_lib
from jaxift.train import guards
from jaxift.train import host_batches
from jaxift.train import compile_cache
from jaxift.train import mfu as mfu_lib
from jaxift.train import phases as phases_lib
from jaxift.train import state as state_lib
from jaxift.train.config import apply_objective
from jaxift.train.early_stopping import EarlyStopping
from jaxift.train.metrics import MetricWriter, StepTimer
from jaxift.train.guards import NonFiniteLossError, TrainingCollapsedError  # noqa: F401  (API)
from jaxift.train.preemption import PreemptionWatcher

# Over-long drops above this share of the examples get a warning naming the settings.
OVERLONG_WARNING_SHARE = 0.01


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (or resumes) the run of `config` in `workdir`; returns the final metrics."""
  workdir = epath.Path(workdir)
  apply_objective(config)  # a preference objective reads pairs and validates preference metrics
  lock = workdir_lib.WorkdirLock(workdir)
  if jax.process_index() == 0:  # one trainer per run directory; process 0 speaks for the run
    workdir.mkdir(parents=True, exist_ok=True)
    lock.acquire()
  try:
    return _train_and_evaluate(config, workdir)
  finally:
    lock.release()


def _saved_process_count(workdir: epath.Path) -> int | None:
  """The process count that saved the data state of the run's latest checkpoint (None: none)."""
  steps = [int(p.name) for p in (workdir / workdir_lib.CHECKPOINT_DIR).glob("*") if p.name.isdigit()]
  if not steps:
    return None
  return elastic.saved_process_count(workdir / workdir_lib.CHECKPOINT_DIR / str(max(steps))
                                     / "data_iter")


def _elastic_resume(config, data_dir: epath.Path, make_train_iter, error: Exception):
  """The training iterator that goes on from the data states that another process count saved
  in `data_dir`: the examples they had in flight or not yet reached, then the rest of the global
  order (jaxift/data/elastic.py). A non-elastic state restarts the data order, with a warning."""
  if not config.data.get("elastic", False):
    logging.warning("data iterator state not restorable (%s); restarting the data order "
                    "(data.elastic=False)", error)
    return make_train_iter()
  try:
    saved_count, states = elastic.read_states(data_dir)
    stream = elastic.resume_stream(states)
  except ValueError as e:
    logging.warning("data iterator state of %s cannot move to %d processes (%s); restarting the "
                    "data order", data_dir, jax.process_count(), e)
    return make_train_iter()
  # The counters of all saved processes go on in process 0 (the one that writes the metrics).
  counts = (elastic.add_stats([s["elastic"]["counts"] for s in states])
            if jax.process_index() == 0 else {})
  logging.info("data order resumed from %d processes on %d: %d examples re-dealt, then the global "
               "order from index %d", saved_count, jax.process_count(), len(stream.explicit),
               stream.start)
  return make_train_iter(stream, counts)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: epath.Path) -> dict[str, Any]:
  is_main = jax.process_index() == 0
  if is_main:
    workdir_lib.preflight(workdir)  # a read-only checkpoints/ fails here, not at the first save
  t_start = time.perf_counter()
  # Before the first compile: a run of a config compiled before loads its steps from disk.
  compile_cache.enable(str(config.train.get("compilation_cache", "default")))
  phases = phases_lib.PhaseTimes()

  # ---- Mesh ---------------------------------------------------------------------------------------
  mesh = sharding.make_mesh(tuple(config.mesh.shape))
  batch_shards = mesh.shape["data"] * mesh.shape["fsdp"]
  logging.info("mesh %s over %d devices, %d processes", dict(mesh.shape), mesh.size,
               jax.process_count())

  # ---- Tokenizer and input ------------------------------------------------------------------------
  tokenizer = load_tokenizer(config.tokenizer.path or config.model.path)

  # A bounded sample of the data is checked before anything is built: a bad record or template
  # fails here in seconds, naming its file:line, instead of at step N.
  if int(config.data.get("precheck_records", 0)) > 0:
    report = audit.run_audit(config.data, tokenizer, split="train",
                             limit=int(config.data.precheck_records))
    errors = {k: v for k, v in report.first.items() if k.startswith("record_error/")}
    if errors:
      raise ValueError("the training data has errors (first of each kind): "
                       + "; ".join(errors.values()))
    if not report.ok:
      logging.warning("mask audit of the first %d training records:\n%s",
                      config.data.precheck_records, report.table())

  global_batch, accum = int(config.train.global_batch_size), int(config.train.grad_accum_steps)
  if global_batch % jax.process_count():
    saved = _saved_process_count(workdir)
    raise ValueError(
        f"train.global_batch_size={global_batch} is not divisible by {jax.process_count()} "
        "processes" + (f" (the checkpoint to resume was saved by {saved} processes)"
                       if saved is not None and saved != jax.process_count() else "")
        + f": set train.global_batch_size to a multiple of {jax.process_count()}, or run on a "
        f"number of processes that divides {global_batch}")
  if global_batch % accum or (global_batch // accum) % batch_shards:
    raise ValueError(f"train.global_batch_size={global_batch} / grad_accum_steps={accum} must be "
                     f"a multiple of the data*fsdp mesh size {batch_shards}")
  per_process = global_batch // jax.process_count()
  plan = None
  if config.train.num_steps > 0:
    total_steps = int(config.train.num_steps)
  elif config.train.num_epochs > 0:
    # Steps from record counts (packing: a sampled estimate, cached in the workdir), never a dry
    # pass over the data. Every process computes the same figure and runs exactly that many steps
    # on a repeating iterator, so none stops early; the end-of-run log says how far off it was.
    plan = data_steps.plan_steps(
        config.data, tokenizer, batch_size=per_process, shard_count=jax.process_count(),
        num_epochs=int(config.train.num_epochs), seed=int(config.train.seed),
        cache_file=str(workdir / "data_plan.json"))
    total_steps = plan.steps
    logging.info("data: %s", plan.describe())
  else:
    raise ValueError("set train.num_steps or train.num_epochs to a positive number")

  def make_train_iter(stream=None, counts=None):
    if config.data.get("elastic", False):  # one global order, a process-count-free state
      return elastic.make_iterator(config.data, tokenizer, batch_size=per_process,
                                   shard_index=jax.process_index(),
                                   shard_count=jax.process_count(), seed=config.train.seed,
                                   stream=stream, counts=counts)
    return make_iterator(config.data, tokenizer, split="train", batch_size=per_process,
                         shard_index=jax.process_index(), shard_count=jax.process_count(),
                         seed=config.train.seed, num_epochs=None)

  train_iter = make_train_iter()

  # ---- Run identity: a resume may not silently train another model, tokenizer or data -------------
  checkpointer = workdir_lib.Checkpointer(workdir, keep=config.checkpoint.keep,
                                          keep_best=config.checkpoint.keep_best,
                                          async_save=config.checkpoint.async_save)
  saved_model_hf = workdir_lib.load_model_config(workdir)
  resuming = checkpointer.latest_step() is not None and saved_model_hf is not None
  identity = workdir_lib.run_identity(config, tokenizer, loading.architecture(config.model))
  identity_changes = (workdir_lib.check_identity(workdir, identity,
                                                 config.checkpoint.allow_changes)
                      if resuming else {})

  # ---- Train state: born sharded, or abstract when a checkpoint will overwrite it ------------------
  use_lora = lora_lib.enabled(config)
  # A full fine-tune resumes without reading pretrained weights: the checkpoint's parameters land
  # in their shards. LoRA always rebuilds its frozen base; its checkpoints hold only the adapters.
  # A full-fine-tuning DPO run builds its real initial model either way: its frozen reference.
  abstract_hf = (saved_model_hf if resuming and not use_lora
                 and not state_lib.needs_frozen_reference(config) else None)
  state = state_lib.build(config, mesh, total_steps, abstract_hf=abstract_hf)
  model_hf = abstract_hf or state.model_cfg.to_hf_dict()
  if is_main:  # one checkpoint (parameters + optimizer state) must fit
    workdir_lib.check_free_space(workdir, sum(
        int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
        for x in jax.tree.leaves((state.params, state.opt_state))))

  # ---- Resume from the latest checkpoint (params, optimizer, step, data iterator) -----------------
  early = EarlyStopping(patience=int(config.train.early_stopping_patience),
                        min_delta=float(config.train.early_stopping_min_delta))
  start_step = 0
  if resuming:
    make_iter = make_train_iter if config.checkpoint.save_data_iterator else None
    try:  # the newest checkpoint that restores; a corrupt one is reported and skipped
      _, restored = checkpointer.restore_latest(
          abstract_params=state.params, abstract_opt_state=state.opt_state, data_iter_fn=make_iter)
      train_iter = restored["data_iter"] or train_iter
    except ValueError as e:
      if "process_" not in str(e):
        raise
      # The data iterator was saved by a different number of processes. Parameters and
      # optimizer state resume; an elastic data state moves to this process count.
      saved_step, restored = checkpointer.restore_latest(abstract_params=state.params,
                                                         abstract_opt_state=state.opt_state)
      train_iter = _elastic_resume(config, checkpointer.directory / str(saved_step) / "data_iter",
                                   make_train_iter, e)
    state.params, state.opt_state = restored["params"], restored["opt_state"]
    start_step = int(restored["meta"]["step"])
    early.load_state_dict(restored["meta"].get("early_stopping", {}))
  if is_main:
    # config.json describes the run as it goes on from here; history.jsonl keeps every start and
    # resume with what changed, so no earlier configuration is lost.
    workdir_lib.append_history(workdir, {
        "event": "resume" if resuming else "start", "step": start_step,
        "identity_changes": identity_changes,
        "config_changes": workdir_lib.config_changes(workdir, config) if resuming else []})
    workdir_lib.save_config(workdir, config)
    workdir_lib.save_identity(workdir, identity)
    workdir_lib.save_model_config(workdir, model_hf)
    workdir_lib.save_tokenizer(workdir, tokenizer)

  results: dict[str, Any] = {"start_step": start_step, "total_steps": total_steps}
  writer = MetricWriter(workdir, total_steps=total_steps, initial_step=start_step,
                        tensorboard=config.train.tensorboard, progress_bar=config.train.progress_bar,
                        truncate_after=start_step if resuming else None)
  if resuming:
    writer.message(f"resumed from step {start_step} (of {total_steps}) in {workdir}")
    if start_step >= total_steps:
      writer.message(f"run already complete: step {start_step} of {total_steps}; nothing to train")
      writer.close()
      checkpointer.close()
      return {**results, "step": start_step, "best_step": None, "already_complete": True}

  # ---- Evaluations, from config.evals -------------------------------------------------------------
  evaluators = evals_lib.from_config(config, evals_lib.Context(config, tokenizer, state))
  evaluated_at: dict[str, int] = {}

  def run_evals(step: int, *, first: bool = False, last: bool = False) -> float | None:
    """Runs the evaluators due now; returns the best-selecting one's loss (None if it did not run)."""
    selected = None
    for ev in evaluators:
      if evaluated_at.get(ev.name) == step or not ev.due(step, first=first, last=last):
        continue
      evaluated_at[ev.name] = step
      label = "before" if first else "after"
      metrics = ev.run(state.params)
      if metrics is None:
        continue
      writer.write(step, ev.metrics_split(label), metrics)
      if hasattr(ev, "report"):
        writer.message(ev.report(label, metrics))
      if ev.select_best:
        selected = metrics["loss"]
        results.update(validation_loss=metrics["loss"],
                       validation_perplexity=metrics.get("perplexity"))
        if "rewards/accuracies" in metrics:
          results["validation_preference"] = dict(metrics)
      elif "exact_match" in metrics:
        results[f"exact_match_{label}"] = metrics["exact_match"]
    return selected

  step = start_step
  phases.add("load", time.perf_counter() - t_start)  # tokenizer, data, model, resume
  if start_step == 0:
    with phases.phase("evals_before"):
      run_evals(step, first=True)

  # ---- Training loop ------------------------------------------------------------------------------
  flops_shape = mfu_lib.flops_shape_from_hf(model_hf)
  peak = float(config.train.peak_flops_per_device) or mfu_lib.peak_flops_per_device()
  timer = StepTimer()
  watcher = PreemptionWatcher(checkpointer)
  pending: tuple[int, Any, int] | None = None  # (step, device metrics, row length T)
  last_saved = start_step if resuming else -1
  step_times: list[float] = []
  guard = guards.DivergenceGuard(int(config.train.max_consecutive_skips),
                                 int(config.train.collapse_patience), state.model_cfg.vocab_size)
  overlong_warned = False

  def stop_on_bad_parameters(done_step: int, metrics: dict[str, float], bad_from: int) -> None:
    """Removes the checkpoints that hold the parameters giving non-finite losses, then raises."""
    checkpointer.wait()
    removed = [s for s in checkpointer.all_steps() if s >= bad_from]
    for s in removed:
      checkpointer.delete(s)
    good = checkpointer.latest_step()
    where = (f"the last good checkpoint is step {good} in {checkpointer.directory}"
             if good is not None else "no earlier checkpoint exists")
    raise NonFiniteLossError(
        f"training is non-finite since step {bad_from + 1} (a NaN/Inf loss or gradient on every "
        f"step up to step {done_step}, whose loss is {metrics['loss']}; "
        f"train.max_consecutive_skips={guard.max_consecutive_skips}): the parameters after step "
        f"{bad_from} give non-finite results"
        + (f", so checkpoints {removed} were removed" if removed else "")
        + f"; {where}. Lower optimizer.lr, add warmup, or check the data.")

  def log_drops(done_step: int) -> None:
    """Drop counts by reason into the metrics; one warning when over-long drops are many."""
    nonlocal overlong_warned
    counts = train_iter.stats.as_dict()
    writer.write(done_step, "data", counts)
    seen = sum(counts.values())
    too_long = sum(v for k, v in counts.items() if k.startswith("dropped/too_long"))
    if not overlong_warned and seen and too_long / seen > OVERLONG_WARNING_SHARE:
      overlong_warned = True
      writer.message(
          f"warning: {too_long} of {seen} training examples ({too_long / seen:.1%}) were dropped "
          f"as longer than data.max_seq_length={config.data.max_seq_length} "
          f"(data.overlong={config.data.overlong!r}); raise max_seq_length or set "
          "data.overlong='truncate_prompt' to keep them")

  def finish(pending) -> None:
    """Fetches a dispatched step's metrics (one step late), checks them, logs them."""
    done_step, metrics, seq_len = pending
    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
    verdict = guard.update(done_step, metrics)  # raises TrainingCollapsedError on a collapse
    if verdict.stop_from_step is not None:
      stop_on_bad_parameters(done_step, metrics, verdict.stop_from_step)
    if verdict.skipped:
      writer.message(guard.message_for_skip(done_step, metrics))
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
      log_drops(done_step)
    writer.advance(done_step)

  def save(step: int, validation_loss: float | None = None) -> None:
    nonlocal last_saved
    if step == last_saved:
      return
    meta = {"step": step, "seed": int(config.train.seed), "early_stopping": early.state_dict(),
            "time": time.time()}
    if use_lora:
      meta["lora_base"] = lora_lib.base_reference(config)
    checkpointer.save(step, params=state.params, opt_state=state.opt_state, meta=meta,
                      data_iter=train_iter if config.checkpoint.save_data_iterator else None,
                      validation_loss=validation_loss)
    last_saved = step

  def train_one_step(step: int, host_batch: dict[str, np.ndarray]) -> Any:
    batch = host_batches.to_global(host_batches.same_length(host_batch), state.batch_sharding)
    step_scalar = state.device_step(step)
    # Implicit host<->device transfers are errors inside the step call (big_vision's guard): a
    # NumPy scalar or a Python float slipped into its arguments would otherwise become a silent
    # copy and sync on every step. The batch and the step counter went to the devices above.
    with jax.transfer_guard("disallow"):
      state.params, state.opt_state, metrics = state.train_step(
          state.params, state.opt_state, state.rest, step_scalar, batch)
    return metrics

  preempted = False
  loop_start = time.perf_counter()
  try:
    timer.lap()
    while step < total_steps:
      host_batch = next(train_iter)  # repeats: the step count, not the data, ends training
      if step == start_step:  # the first call traces and compiles the step (dispatch is async)
        with phases.phase("compile"):
          metrics = train_one_step(step, host_batch)
      else:
        metrics = train_one_step(step, host_batch)
      checkpointer.check_for_errors()  # a failed background save stops the run now, not later
      step += 1
      if pending is not None:
        finish(pending)
      pending = (step, metrics, int(host_batch["inputs"].shape[1]))

      is_last = step == total_steps
      do_eval = any(ev.due(step, first=False, last=is_last) for ev in evaluators)
      do_save = is_last or (config.train.save_every and step % config.train.save_every == 0)
      preempted = watcher.reached(step) or step == config.train.stop_at_step
      if do_eval or do_save or preempted:
        finish(pending)  # never evaluate or save state whose loss was not checked
        pending = None
      with phases.phase("evals"):
        validation_loss = run_evals(step, last=is_last) if do_eval else None
      if validation_loss is not None and early.update(validation_loss, step):
        do_save = do_save or config.checkpoint.keep_best > 0  # a new best must exist on disk
      if guard.streak_start is not None:  # parameters that give non-finite losses: never saved
        do_save = False
      if do_save or preempted or early.should_stop:
        with phases.phase("save"):
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
    phases.add("steps", time.perf_counter() - loop_start - sum(
        phases.seconds.get(k, 0.0) for k in ("compile", "evals", "save")))
    if guard.streak_start is not None:  # the run ends inside a non-finite streak: never "done"
      stop_on_bad_parameters(step, {"loss": guard.last_loss}, guard.streak_start - 1)
    if not preempted and step > start_step:
      # The end of training (the last step, or early stopping before it): evaluations not yet
      # run at this step run now, and the final state is saved.
      with phases.phase("evals"):  # those not already run at the last step
        validation_loss = run_evals(step, last=True)
      if validation_loss is not None:
        early.update(validation_loss, step)
      with phases.phase("save"):
        save(step, validation_loss)
    with phases.phase("save"):
      checkpointer.wait()
    results["best_step"] = checkpointer.best_step()
    if plan is not None:
      results["data_coverage"] = data_steps.coverage(plan, train_iter.stats)
      writer.message(results["data_coverage"]["message"])
    results["phase_seconds"] = phases.as_dict()
    writer.message(phases.summary(time.perf_counter() - t_start))
  finally:
    watcher.close()
    checkpointer.close()
    writer.close()

  results.update(step=step, best_validation_loss=None if math.isinf(early.best) else early.best,
                 wall_time_s=time.perf_counter() - t_start)
  if step_times:
    results["steps_per_second"] = 1.0 / float(np.median(step_times))
  return results
