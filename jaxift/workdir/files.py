"""The run directory's side files: config, architecture, tokenizer, metrics, history."""
import datetime
import json
import os
import socket
import tempfile
from typing import Any

from etils import epath
import ml_collections

from jaxift import fileio

CONFIG_FILE = "config.json"
MODEL_CONFIG_FILE = "model_config.json"
TOKENIZER_DIR = "tokenizer"
CHECKPOINT_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"
LOCK_FILE = "lock.json"
IDENTITY_FILE = "run_identity.json"
HISTORY_FILE = "history.jsonl"


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


def config_changes(workdir: str | epath.Path, config: ml_collections.ConfigDict) -> list[str]:
  """'key: old -> new' for every config value that differs from the run's config.json."""
  try:
    old = flatten(load_config(workdir).to_dict())
  except FileNotFoundError:
    return []
  new = flatten(json.loads(config.to_json_best_effort()))
  return [f"{k}: {json.dumps(old.get(k), default=str)} -> {json.dumps(new.get(k), default=str)}"
          for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


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
