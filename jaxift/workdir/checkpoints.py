"""Orbax checkpoints of a run: one CheckpointManager (last N plus best N), restores onto any mesh
through abstract arrays carrying the target shardings, a fallback past a corrupt checkpoint, and
the write checks that fail a run early (preflight, free space, failed background saves)."""
import json
import logging
import os
import shutil
from typing import Any

from etils import epath
import grain
import jax
import orbax.checkpoint as ocp

from jaxift.workdir.files import CHECKPOINT_DIR

VALIDATION_METRIC = "validation_loss"


# Orbax warnings about things jaxift does on purpose: checkpoints between evaluations carry no
# validation loss, and a run is opened read-only to load it for inference.
_EXPECTED_WARNINGS = ("did not provide metrics", "read_only=True, setting save_interval_steps",
                      "Given directory is read only")


class _ExpectedWarningFilter(logging.Filter):

  def filter(self, record: logging.LogRecord) -> bool:
    return not any(text in record.getMessage() for text in _EXPECTED_WARNINGS)


logging.getLogger("absl").addFilter(_ExpectedWarningFilter())


def _keep_policy(keep: int, keep_best: int):
  policies = [ocp.checkpoint_managers.LatestN(n=max(keep, 1))]
  if keep_best > 0:
    policies.append(ocp.checkpoint_managers.BestN(
        get_metric_fn=lambda m: m[VALIDATION_METRIC], reverse=True, n=keep_best,
        keep_checkpoints_without_metrics=False))
  return ocp.checkpoint_managers.AnyPreservationPolicy(policies)


def absolute(workdir: str | epath.Path) -> epath.Path:
  """A local workdir made absolute (Orbax's TensorStore writer rejects relative paths); remote
  paths such as gs://bucket/run are already absolute."""
  if "://" in str(workdir):
    return epath.Path(workdir)
  return epath.Path(os.path.abspath(os.fspath(workdir)))


class CheckpointWriteError(OSError):
  """A checkpoint could not be written; the partial one was removed."""


class CheckpointRestoreError(RuntimeError):
  """No checkpoint of the run directory restores."""


def preflight(workdir: str | epath.Path) -> None:
  """Before any compute: the run directory and its checkpoints/ can be written (a read-only folder
  used to surface as a 300 s Orbax timeout at the first save)."""
  directory = absolute(workdir) / CHECKPOINT_DIR
  probe = directory / f".preflight-{os.getpid()}"
  try:
    directory.mkdir(parents=True, exist_ok=True)
    probe.write_text("ok")
    probe.unlink()
  except OSError as e:
    raise CheckpointWriteError(f"{directory} is not writable ({type(e).__name__}: {e}): "
                               "checkpoints could not be saved") from e


def check_free_space(workdir: str | epath.Path, needed_bytes: int) -> None:
  """Local disks: free space must hold at least one checkpoint of `needed_bytes`."""
  directory = absolute(workdir)
  if "://" in str(directory):
    return
  free = shutil.disk_usage(os.fspath(directory)).free
  if free < needed_bytes:
    raise CheckpointWriteError(
        f"{directory} has {free / 2**30:.2f} GiB free, less than one checkpoint "
        f"({needed_bytes / 2**30:.2f} GiB of parameters and optimizer state)")


class Checkpointer:
  """One CheckpointManager for `workdir/checkpoints`: last `keep` plus `keep_best` best."""

  def __init__(self, workdir: str | epath.Path, *, keep: int = 2, keep_best: int = 1,
               async_save: bool = True, read_only: bool = False):
    self.directory = absolute(workdir) / CHECKPOINT_DIR
    options = ocp.CheckpointManagerOptions(
        preservation_policy=_keep_policy(keep, keep_best),
        best_fn=lambda m: m[VALIDATION_METRIC], best_mode="min",
        enable_async_checkpointing=async_save, create=not read_only, read_only=read_only)
    self.manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={
            "params": ocp.StandardCheckpointHandler(),
            "opt_state": ocp.StandardCheckpointHandler(),
            "meta": ocp.JsonCheckpointHandler(),
            "data_iter": grain.checkpoint.CheckpointHandler(),
        })

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def best_step(self) -> int | None:
    """The step with the lowest validation loss (the earliest on a tie); else the latest."""
    best = None
    for step in self.all_steps():
      path = self.directory / str(step) / "metrics" / "metrics"
      if path.exists():
        loss = json.loads(path.read_text()).get(VALIDATION_METRIC)
        if loss is not None and (best is None or (loss, step) < best):
          best = (loss, step)
    return best[1] if best else self.latest_step()

  def save(self, step: int, *, params: Any, opt_state: Any, meta: dict,
           data_iter: Any = None, validation_loss: float | None = None) -> None:
    items = {"params": ocp.args.StandardSave(params),
             "opt_state": ocp.args.StandardSave(opt_state),
             "meta": ocp.args.JsonSave(meta)}
    if data_iter is not None:
      items["data_iter"] = grain.checkpoint.CheckpointSave(data_iter)
    metrics = None if validation_loss is None else {VALIDATION_METRIC: float(validation_loss)}
    self.manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)

  def restore(self, step: int, *, abstract_params: Any, abstract_opt_state: Any = None,
              data_iter: Any = None) -> dict[str, Any]:
    """Restores into the shardings of the abstract trees (jax.ShapeDtypeStruct with .sharding)."""
    items = {"params": ocp.args.StandardRestore(abstract_params), "meta": ocp.args.JsonRestore()}
    if abstract_opt_state is not None:
      items["opt_state"] = ocp.args.StandardRestore(abstract_opt_state)
    step_dir = self.directory / str(step)
    if data_iter is not None and (step_dir / "data_iter").exists():
      items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
    return dict(self.manager.restore(step, args=ocp.args.Composite(**items)).items())

  def restore_latest(self, *, abstract_params: Any, abstract_opt_state: Any = None,
                     data_iter_fn: Any = None, warn=logging.warning) -> tuple[int, dict[str, Any]]:
    """(step, restored items) of the newest checkpoint that restores, newest first.

    A checkpoint that fails (truncated or corrupt files) is reported in one line -- step, error --
    and the previous one is tried. `data_iter_fn()` makes a fresh iterator for each attempt (a
    failed restore may leave one half-set). With none restoring: one-line CheckpointRestoreError.
    """
    failures = []
    for step in sorted(self.all_steps(), reverse=True):
      data_iter = data_iter_fn() if data_iter_fn is not None else None
      try:
        items = self.restore(step, abstract_params=abstract_params,
                             abstract_opt_state=abstract_opt_state, data_iter=data_iter)
      except Exception as e:  # pylint: disable=broad-except  (any broken file: try the older one)
        if "process_" in str(e):  # written by another process count: the caller handles it
          raise
        reason = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        failures.append(f"step {step} ({reason})")
        warn(f"checkpoint {self.directory / str(step)} does not restore ({reason}); "
             "trying the previous one")
        continue
      items["data_iter"] = data_iter
      return step, items
    raise CheckpointRestoreError(f"no checkpoint in {self.directory} restores: "
                                 + "; ".join(failures))

  def check_for_errors(self) -> None:
    """Raises CheckpointWriteError at once when a background save failed (disk full, permissions),
    after removing the partial checkpoint it left."""
    try:
      self.manager.check_for_errors()
    except Exception as e:  # pylint: disable=broad-except  (Orbax re-raises the writer's error)
      self._remove_partial()
      raise CheckpointWriteError(f"writing a checkpoint to {self.directory} failed: "
                                 f"{type(e).__name__}: {e}") from e

  def _remove_partial(self) -> None:
    for partial in self.directory.glob("*.orbax-checkpoint-tmp*"):
      partial.rmtree(missing_ok=True) if partial.is_dir() else partial.unlink(missing_ok=True)

  def wait(self) -> None:
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      self._remove_partial()
      raise CheckpointWriteError(f"writing a checkpoint to {self.directory} failed: "
                                 f"{type(e).__name__}: {e}") from e

  def delete(self, step: int) -> None:
    self.manager.wait_until_finished()
    self.manager.delete(step)

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs with the shardings of a tree of (sharded) arrays."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)


def _describe(workdir: epath.Path) -> str:
  if not workdir.exists():
    return f"{workdir} does not exist"
  ckpt = workdir / CHECKPOINT_DIR
  steps = sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit()) if ckpt.exists() else []
  return f"{workdir} holds checkpoint steps {steps or 'none'}"


def resolve_step(checkpointer: Checkpointer, step: str | int, workdir: epath.Path) -> int:
  if step == "latest":
    resolved = checkpointer.latest_step()
  elif step == "best":
    resolved = checkpointer.best_step()
  else:
    resolved = int(step)
    if resolved not in checkpointer.all_steps():
      raise FileNotFoundError(f"no checkpoint at step {resolved}: {_describe(workdir)}")
  if resolved is None:
    raise FileNotFoundError(f"no checkpoint to load ({step!r}): {_describe(workdir)}")
  return resolved


def resolve_checkpoint_step(workdir: str | epath.Path, step: str | int) -> int:
  """The integer step 'latest'/'best'/N names; FileNotFoundError naming what the workdir holds."""
  workdir = epath.Path(workdir)
  if not (workdir / CHECKPOINT_DIR).exists():
    raise FileNotFoundError(f"no checkpoints in {workdir} (expected {workdir}/{CHECKPOINT_DIR}/"
                            "<step>/ written by training)")
  checkpointer = Checkpointer(workdir, read_only=True, async_save=False)
  try:
    return resolve_step(checkpointer, step, workdir)
  finally:
    checkpointer.close()
