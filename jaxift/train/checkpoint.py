"""Orbax checkpoints of a training run, and loading a run for inference.

Layout of a workdir:
  checkpoints/<step>/{params,opt_state,meta,data_iter}/   one Orbax CheckpointManager, async saves
  config.json          the resolved config (written once by the trainer)
  model_config.json    the architecture (HF config.json style), to rebuild the model without weights
  tokenizer/           the tokenizer files (save_pretrained)

Restoring goes through abstract arrays that carry the TARGET shardings, so a run saved on one mesh
restores onto another (a different device count or fsdp/tensor split).
"""
import json
import logging
import os
import tempfile
from typing import Any

from etils import epath
import grain
import jax
import ml_collections
import orbax.checkpoint as ocp

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
    self.directory = absolute(workdir) / "checkpoints"
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


# ---- workdir side files --------------------------------------------------------------------------

def write_text_atomic(path: epath.Path, text: str) -> None:
  tmp = path.parent / (path.name + ".tmp")
  tmp.write_text(text)
  tmp.replace(path)


def save_config(workdir: str | epath.Path, config: ml_collections.ConfigDict) -> None:
  path = epath.Path(workdir) / "config.json"
  write_text_atomic(path, config.to_json_best_effort(indent=2, sort_keys=True))


def load_config(workdir: str | epath.Path) -> ml_collections.ConfigDict:
  path = epath.Path(workdir) / "config.json"
  if not path.exists():
    raise FileNotFoundError(f"{path} not found: {workdir} is not a jaxift training workdir")
  return ml_collections.ConfigDict(json.loads(path.read_text()))


def save_tokenizer(workdir: str | epath.Path, tokenizer: Any) -> None:
  """tokenizer.save_pretrained into workdir/tokenizer (via a local temp dir: works for gs://)."""
  target = epath.Path(workdir) / "tokenizer"
  if target.exists():
    return
  staging = epath.Path(workdir) / "tokenizer.tmp"
  if staging.exists():
    staging.rmtree()
  staging.mkdir(parents=True)
  with tempfile.TemporaryDirectory() as local:
    tokenizer.save_pretrained(local)
    for f in epath.Path(local).iterdir():
      (staging / f.name).write_bytes(f.read_bytes())
  staging.rename(target)


def _describe(workdir: epath.Path) -> str:
  if not workdir.exists():
    return f"{workdir} does not exist"
  ckpt = workdir / "checkpoints"
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


def abstract_model(model_config: ml_collections.ConfigDict, hf_dict: dict, mesh: Any, rules: Any):
  """(graphdef, abstract params with target shardings, rest, ModelConfig), reading no weights."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from jaxift.model.config import ModelConfig  # pylint: disable=g-import-not-at-top
  from jaxift.model.decoder import Decoder  # pylint: disable=g-import-not-at-top
  from jaxift.model.loading import module_options, state_shardings  # pylint: disable=g-import-not-at-top

  cfg = ModelConfig.from_hf_dict(hf_dict)
  options = module_options(model_config)
  abstract = nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0), **options))
  graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
  if jax.tree.leaves(rest):
    raise ValueError("the decoder holds non-parameter state; it cannot be rebuilt abstractly")
  if mesh is not None:
    shardings = jax.tree.leaves(state_shardings(params, mesh, rules))
  else:
    shardings = [jax.sharding.SingleDeviceSharding(jax.devices()[0])] * len(jax.tree.leaves(params))
  leaves, treedef = jax.tree.flatten(params)
  params = jax.tree.unflatten(treedef, [
      jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s) for x, s in zip(leaves, shardings)])
  return graphdef, params, rest, cfg


def load_for_inference(workdir: str | epath.Path, step: str | int = "latest", *,
                       mesh: jax.sharding.Mesh | None = None) -> tuple[Any, Any, ml_collections.ConfigDict]:
  """(model, tokenizer, config) of a training workdir at step 'latest', 'best' or an int.

  Full fine-tunes: the model is rebuilt from `model_config.json` (no pretrained weights are read)
  and the trained parameters restored into it. LoRA runs: the frozen base is rebuilt from its
  reference (`config.model.path`, or random init with `config.train.seed`) and the adapters
  restored. Onto `mesh` when given (else the default device).
  """
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from jaxift.data.tokenizers import load_tokenizer  # pylint: disable=g-import-not-at-top

  workdir = epath.Path(workdir)
  if not (workdir / "config.json").exists():
    raise FileNotFoundError(f"not a jaxift workdir (no config.json): {_describe(workdir)}")
  config = load_config(workdir)
  checkpointer = Checkpointer(workdir, read_only=True, async_save=False)
  try:
    resolved = resolve_step(checkpointer, step, workdir)
    from jaxift.model import lora as lora_lib  # pylint: disable=g-import-not-at-top
    from jaxift.train.config import mesh_rules  # pylint: disable=g-import-not-at-top
    if lora_lib.enabled(config):  # the frozen base comes from its reference, the adapters from here
      model, _ = lora_lib.build_model(config, mesh=mesh, rules=mesh_rules(config),
                                      seed=int(config.train.seed))
      graphdef, adapters, rest = nnx.split(model, lora_lib.trainable_filter(config), ...)
      abstract_params = abstract_like(adapters)
      del model, adapters
    else:
      hf_dict = json.loads((workdir / "model_config.json").read_text())
      graphdef, abstract_params, rest, _ = abstract_model(config.model, hf_dict, mesh,
                                                          mesh_rules(config))
    restored = checkpointer.restore(resolved, abstract_params=abstract_params)
  finally:
    checkpointer.close()
  model = nnx.merge(graphdef, restored["params"], rest)
  tokenizer = load_tokenizer(str(workdir / "tokenizer"))
  return model, tokenizer, config
