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
import json
import logging
import os
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

  def wait(self) -> None:
    self.manager.wait_until_finished()

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
  return [r for r in records if split is None or r.get("split") == split]


def eval_dir(workdir: str | epath.Path, step: int) -> epath.Path:
  return epath.Path(workdir) / "eval" / f"step_{step}"


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
