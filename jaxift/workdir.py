"""The run directory: one module owns its layout, and everyone reads a run through it.

  config.json          the resolved config (written by the trainer at every start)
  model_config.json    the architecture (HF config.json style), to rebuild the model without weights
  tokenizer/           the tokenizer files (save_pretrained)
  checkpoints/<step>/{params,opt_state,meta,data_iter}/   one Orbax CheckpointManager, async saves
  metrics.jsonl        one JSON object per line: step, split, metric names (+ metrics.jsonl.parts/
                       on object stores, which cannot append)
  eval/step_<N>/       what `jaxift.infer.evaluate` writes

The trainer, the evaluation flow, the notebook API and the export tools all use this module; it
imports the model and data layers, never the trainer. Restoring goes through abstract arrays that
carry the TARGET shardings, so a run saved on one mesh restores onto another.
"""
import datetime
import glob
import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
from typing import Any

from etils import epath
from flax import nnx
import grain
import jax
import ml_collections
import orbax.checkpoint as ocp

from jaxift import fileio
from jaxift.data.tokenizers import load_tokenizer
from jaxift.model import lora as lora_lib
from jaxift.model import loading
from jaxift.model.sharding import mesh_rules

CONFIG_FILE = "config.json"
MODEL_CONFIG_FILE = "model_config.json"
TOKENIZER_DIR = "tokenizer"
CHECKPOINT_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"
LOCK_FILE = "lock.json"
IDENTITY_FILE = "run_identity.json"
HISTORY_FILE = "history.jsonl"
VALIDATION_METRIC = "validation_loss"


class _NoMetricWarningFilter(logging.Filter):
  """Checkpoints between evaluations have no validation loss by design; Orbax warns on each."""

  def filter(self, record: logging.LogRecord) -> bool:
    return "did not provide metrics" not in record.getMessage()


logging.getLogger("absl").addFilter(_NoMetricWarningFilter())


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


# ---- side files ---------------------------------------------------------------------------------

def save_config(workdir: str | epath.Path, config: ml_collections.ConfigDict) -> None:
  fileio.write_text(epath.Path(workdir) / CONFIG_FILE,
                    config.to_json_best_effort(indent=2, sort_keys=True))


def load_config(workdir: str | epath.Path) -> ml_collections.ConfigDict:
  path = epath.Path(workdir) / CONFIG_FILE
  if not path.exists():
    raise FileNotFoundError(f"{path} not found: {workdir} is not a jaxift training workdir")
  return ml_collections.ConfigDict(json.loads(path.read_text()))


def save_model_config(workdir: str | epath.Path, hf_dict: dict) -> None:
  fileio.write_text(epath.Path(workdir) / MODEL_CONFIG_FILE, json.dumps(hf_dict, indent=2))


def load_model_config(workdir: str | epath.Path) -> dict | None:
  """The architecture the run trains (HF config.json dict), or None before the first start."""
  path = epath.Path(workdir) / MODEL_CONFIG_FILE
  return json.loads(path.read_text()) if path.exists() else None


def save_tokenizer(workdir: str | epath.Path, tokenizer: Any) -> None:
  """tokenizer.save_pretrained into workdir/tokenizer (via a local temp dir: works for gs://)."""
  target = epath.Path(workdir) / TOKENIZER_DIR
  if target.exists():
    return
  staging = epath.Path(workdir) / f".{TOKENIZER_DIR}.tmp"
  if staging.exists():
    staging.rmtree()
  staging.mkdir(parents=True)
  with tempfile.TemporaryDirectory() as local:
    tokenizer.save_pretrained(local)
    for f in epath.Path(local).iterdir():
      (staging / f.name).write_bytes(f.read_bytes())
  fileio.replace_dir(staging, target)


def metrics_path(workdir: str | epath.Path) -> epath.Path:
  return epath.Path(workdir) / METRICS_FILE


def metrics_parts_dir(workdir: str | epath.Path) -> epath.Path:
  """Where a remote (object store) run writes its metric lines, one new object per flush."""
  return epath.Path(workdir) / f"{METRICS_FILE}.parts"


def read_metrics(workdir: str | epath.Path, split: str | None = None) -> list[dict[str, Any]]:
  """The metric records of a workdir (optionally one split), in the order they were written."""
  path, parts = metrics_path(workdir), metrics_parts_dir(workdir)
  files = [path] if path.exists() else []
  if parts.exists():
    files += sorted(parts.glob("*.jsonl"), key=lambda p: p.name)
  if not files:
    raise FileNotFoundError(f"{path} does not exist: no metrics were written in this workdir")
  records = [json.loads(line) for f in files for line in f.read_text().splitlines()
             if line.strip()]
  # A run killed after writing a row and resumed from an earlier checkpoint writes that step's row
  # again: the later row is the one of the run that went on.
  latest = {(r.get("step"), r.get("split")): i for i, r in enumerate(records)}
  return [r for i, r in enumerate(records) if latest[(r.get("step"), r.get("split"))] == i
          and (split is None or r.get("split") == split)]


def eval_dir(workdir: str | epath.Path, step: int) -> epath.Path:
  return epath.Path(workdir) / "eval" / f"step_{step}"


# ---- the lock: one trainer per run directory -------------------------------------------------------

class WorkdirLockedError(RuntimeError):
  """Another live trainer holds the run directory."""


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # alive, owned by someone else
    return True
  return True


class WorkdirLock:
  """`workdir/lock.json` with host, pid and start time, held for the life of a training run.

  A second trainer on the same workdir refuses to start and names the holder. A lock left by a
  process that is gone (same host, pid not running) is taken over with a warning. On a local disk
  the file is created with O_EXCL, so two trainers started together cannot both win; on an object
  store the check-then-write leaves a small race, which the message names.
  """

  def __init__(self, workdir: str | epath.Path):
    self.path = epath.Path(workdir) / LOCK_FILE
    self.held = False

  def _holder(self) -> dict:
    try:
      return json.loads(self.path.read_text())
    except (OSError, ValueError):
      return {}

  def acquire(self) -> None:
    me = {"host": socket.gethostname(), "pid": os.getpid(),
          "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    for _ in range(2):
      if self._create(json.dumps(me)):
        self.held = True
        return
      holder = self._holder()
      if (holder.get("host") == me["host"] and isinstance(holder.get("pid"), int)
          and not _pid_alive(holder["pid"])):
        logging.warning("taking over the stale lock %s of process %s (no longer running)",
                        self.path, holder.get("pid"))
        self.path.unlink(missing_ok=True)
        continue
      raise WorkdirLockedError(
          f"{self.path.parent} is in use by another trainer (host {holder.get('host', '?')}, pid "
          f"{holder.get('pid', '?')}, started {holder.get('started', '?')}): two runs on one "
          f"workdir would overwrite each other's checkpoints. Use another --workdir, or remove "
          f"{self.path} if that process is gone.")
    raise WorkdirLockedError(f"could not take the lock {self.path}")

  def _create(self, text: str) -> bool:
    if "://" in str(self.path):  # object stores have no O_EXCL: check, then write
      if self.path.exists():
        return False
      fileio.write_text(self.path, text)
      return True
    try:
      fd = os.open(os.fspath(self.path), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, "w") as f:
      f.write(text)
    return True

  def release(self) -> None:
    if self.held and self._holder().get("pid") == os.getpid():
      self.path.unlink(missing_ok=True)
    self.held = False


# ---- run identity: what a resume may not change silently --------------------------------------------

# Parts of the identity a resume may change with config.checkpoint.allow_changes.
IDENTITY_PARTS = ("model", "tokenizer", "data", "objective")
# Data options that change only speed, never which tokens are trained.
_DATA_SPEED_KEYS = ("num_workers", "worker_buffer_size", "prefetch_buffer_size")


def tokenizer_fingerprint(tokenizer: Any) -> str:
  """sha256 of what decides the token ids: the vocabulary and merges (the tokenizers JSON), the
  special tokens and the chat template."""
  h = hashlib.sha256()
  backend = getattr(tokenizer, "backend_tokenizer", None)
  if backend is not None:
    h.update(backend.to_str().encode())
  else:
    h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
  h.update(json.dumps([tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id,
                       getattr(tokenizer, "chat_template", None)], default=str).encode())
  return h.hexdigest()


def _file_stats(spec: Any) -> list[dict]:
  """[{path, size, mtime}] of every local file a data files option names (remote: the path)."""
  if not spec:
    return []
  paths = spec.split(",") if isinstance(spec, str) else list(spec)
  out = []
  for path in (p.strip() for p in paths if str(p).strip()):
    if "://" in path:
      out.append({"path": path})
      continue
    for match in sorted(glob.glob(path)) or [path]:
      entry = {"path": os.path.abspath(match)}
      if os.path.isfile(match):
        st = os.stat(match)
        entry.update(size=st.st_size, mtime=int(st.st_mtime))
      out.append(entry)
  return out


def _plain(value: Any) -> Any:
  if hasattr(value, "to_dict"):
    value = value.to_dict()
  return json.loads(json.dumps(value, default=str))


def run_identity(config: ml_collections.ConfigDict, tokenizer: Any, model_hf: dict) -> dict:
  """What defines a run, by part: a resume that changes any of it trains something else."""
  data = {k: _plain(v) for k, v in config.data.items() if k not in _DATA_SPEED_KEYS}
  for key in ("train_files", "validation_files", "test_files"):
    data[f"{key}:stats"] = _file_stats(config.data.get(key))
  return {
      "model": {"path": str(config.model.get("path", "")), "architecture": _plain(model_hf)},
      "tokenizer": {"path": str(config.tokenizer.path or config.model.get("path", "")),
                    "sha256": tokenizer_fingerprint(tokenizer)},
      "data": data,
      "objective": {"objective": str(config.train.get("objective", "sft")),
                    "lora": _plain(config.lora) if config.get("lora") else None},
  }


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  """{'a.b.0.c': leaf}: dicts by key, lists by index, so a diff names the exact entry."""
  items = (tree.items() if isinstance(tree, dict) else
           enumerate(tree) if isinstance(tree, (list, tuple)) and tree else None)
  if items is None:
    return {prefix: tree}
  out = {}
  for k, v in items:
    out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
  return out


def identity_changes(old: dict, new: dict) -> dict[str, list[str]]:
  """{part: ['key: old -> new', ...]} for every part whose values differ."""
  changes: dict[str, list[str]] = {}
  for part in IDENTITY_PARTS:
    a, b = flatten(old.get(part, {})), flatten(new.get(part, {}))
    rows = [f"{part}.{k}: {json.dumps(a.get(k))} -> {json.dumps(b.get(k))}"
            for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    if rows:
      changes[part] = rows
  return changes


class RunChangedError(ValueError):
  """A resume whose config changes what the run trains (model, tokenizer, data, objective)."""


def check_identity(workdir: str | epath.Path, identity: dict, allow: str = "") -> dict:
  """Compares `identity` with the one the run was started with; raises RunChangedError listing
  every changed key unless its part is in `allow` (comma-separated parts). Returns the changes."""
  path = epath.Path(workdir) / IDENTITY_FILE
  if not path.exists():  # a run from before identities were recorded: nothing to compare
    return {}
  changes = identity_changes(json.loads(path.read_text()), identity)
  allowed = {a.strip() for a in str(allow or "").split(",") if a.strip()}
  unknown = allowed - set(IDENTITY_PARTS)
  if unknown:
    raise ValueError(f"config.checkpoint.allow_changes names {sorted(unknown)}; the parts are "
                     f"{list(IDENTITY_PARTS)}")
  refused = {part: rows for part, rows in changes.items() if part not in allowed}
  if refused:
    lines = [row for rows in refused.values() for row in rows]
    shown = "\n  ".join(lines[:20]) + (f"\n  ... and {len(lines) - 20} more" if len(lines) > 20
                                        else "")
    raise RunChangedError(
        f"{epath.Path(workdir)} was trained with a different {', '.join(refused)}; resuming would "
        f"silently train something else. Changed:\n  {shown}\nUse a new --workdir, or allow it "
        f"deliberately with --config.checkpoint.allow_changes={','.join(refused)}")
  return changes


def config_changes(workdir: str | epath.Path, config: ml_collections.ConfigDict) -> list[str]:
  """'key: old -> new' for every config value that differs from the run's config.json."""
  try:
    old = flatten(load_config(workdir).to_dict())
  except FileNotFoundError:
    return []
  new = flatten(json.loads(config.to_json_best_effort()))
  return [f"{k}: {json.dumps(old.get(k), default=str)} -> {json.dumps(new.get(k), default=str)}"
          for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def save_identity(workdir: str | epath.Path, identity: dict) -> None:
  fileio.write_text(epath.Path(workdir) / IDENTITY_FILE, json.dumps(identity, indent=1))


def append_history(workdir: str | epath.Path, event: dict) -> None:
  """One line per start or resume of the run (history.jsonl): when, where, from which step, and
  what changed. Small and rare, so it is rewritten whole (object stores cannot append)."""
  path = epath.Path(workdir) / HISTORY_FILE
  old = path.read_text() if path.exists() else ""
  event = {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "host": socket.gethostname(), "pid": os.getpid(), **event}
  fileio.write_text(path, old + json.dumps(event, default=str) + "\n")


def read_history(workdir: str | epath.Path) -> list[dict]:
  path = epath.Path(workdir) / HISTORY_FILE
  return [json.loads(l) for l in path.read_text().splitlines() if l.strip()] if path.exists() else []


# ---- steps --------------------------------------------------------------------------------------

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


# ---- loading a run ------------------------------------------------------------------------------

def load_for_inference(workdir: str | epath.Path, step: str | int = "latest", *,
                       mesh: jax.sharding.Mesh | None = None) -> tuple[Any, Any, ml_collections.ConfigDict]:
  """(model, tokenizer, config) of a training workdir at step 'latest', 'best' or an int.

  Full fine-tunes: the model is rebuilt from `model_config.json` (no pretrained weights are read)
  and the trained parameters restored into it. LoRA runs: the frozen base is rebuilt from its
  reference (`config.model.path`, or random init with `config.train.seed`) and the adapters
  restored. Onto `mesh` when given (else the default device).
  """
  workdir = epath.Path(workdir)
  if not (workdir / CONFIG_FILE).exists():
    raise FileNotFoundError(f"not a jaxift workdir (no config.json): {_describe(workdir)}")
  config = load_config(workdir)
  checkpointer = Checkpointer(workdir, read_only=True, async_save=False)
  try:
    resolved = resolve_step(checkpointer, step, workdir)
    if lora_lib.enabled(config):  # the frozen base comes from its reference, the adapters from here
      model, _ = lora_lib.build_model(config, mesh=mesh, rules=mesh_rules(config),
                                      seed=int(config.train.seed))
      graphdef, adapters, rest = nnx.split(model, lora_lib.trainable_filter(config), ...)
      abstract_params = abstract_like(adapters)
      del model, adapters
    else:
      graphdef, abstract_params, rest, _ = loading.abstract_model(
          config.model, load_model_config(workdir), mesh, mesh_rules(config))
    restored = checkpointer.restore(resolved, abstract_params=abstract_params)
  finally:
    checkpointer.close()
  model = nnx.merge(graphdef, restored["params"], rest)
  tokenizer = load_tokenizer(str(workdir / TOKENIZER_DIR))
  return model, tokenizer, config
