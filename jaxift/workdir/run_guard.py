"""What keeps a run honest across starts: one trainer per run directory (the lock), and the run's
identity (model, tokenizer, data, objective) that a resume may not change silently."""
import datetime
import glob
import hashlib
import json
import logging
import os
import socket
from typing import Any

from etils import epath
import ml_collections

from jaxift import fileio
from jaxift.workdir.files import IDENTITY_FILE, LOCK_FILE, flatten

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


def identity_changes(old: dict, new: dict) -> dict[str, list[str]]:
  """{part: ['key: old -> new', ...]} for every part whose values differ."""
  changes: dict[str, list[str]] = {}
  for part in IDENTITY_PARTS:
    a, b = flatten(old.get(part, {})), flatten(new.get(part, {}))
    # An option the old identity lacks entirely was added by a newer jaxift: the old run ran
    # without it. Anything under an option both know (a file added to a list) is compared.
    known = {k.split(".")[0] for k in a}
    rows = [f"{part}.{k}: {json.dumps(a.get(k))} -> {json.dumps(b.get(k))}"
            for k in sorted(set(a) | {k for k in b if k.split(".")[0] in known})
            if a.get(k) != b.get(k)]
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


def save_identity(workdir: str | epath.Path, identity: dict) -> None:
  fileio.write_text(epath.Path(workdir) / IDENTITY_FILE, json.dumps(identity, indent=1))


