"""Atomic writes for local and remote (gs://) paths: the one way jaxift writes a file.

A reader never sees a half-written file: the bytes go to a temporary sibling that is renamed over
the target. On a local disk the rename is atomic (POSIX). On object stores (gs://) etils.epath's
rename is a copy then delete; a crash in between leaves the old file or the new one, never a torn
one, because object writes are themselves all-or-nothing.
"""
import os
import uuid

from etils import epath

PathLike = str | os.PathLike | epath.Path


def _tmp_sibling(path: epath.Path) -> epath.Path:
  # A unique suffix: two processes writing the same target never share a temp file.
  return path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"


def write_bytes(path: PathLike, data: bytes) -> epath.Path:
  """Writes `data` to `path` atomically, creating the parent folder. Returns the path."""
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = _tmp_sibling(path)
  try:
    tmp.write_bytes(data)
    tmp.replace(path)
  finally:
    if tmp.exists():
      tmp.unlink()
  return path


def write_text(path: PathLike, text: str) -> epath.Path:
  """Writes `text` (UTF-8) to `path` atomically, creating the parent folder. Returns the path."""
  return write_bytes(path, text.encode("utf-8"))


def staging_dir(target: PathLike) -> epath.Path:
  """A new, empty sibling folder of `target` to fill before `replace_dir(staging, target)`.

  Made with a plain mkdir, so it gets the permissions of any new folder (umask), not the private
  0700 of `tempfile.mkdtemp`: an export is readable by whoever may read its parent.
  """
  target = epath.Path(target)
  target.parent.mkdir(parents=True, exist_ok=True)
  staging = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
  staging.mkdir()
  return staging


def replace_dir(staging: PathLike, target: PathLike) -> epath.Path:
  """Moves a fully written folder `staging` to `target`, replacing an old one.

  The old folder is moved aside first and removed only after the new one is in place, so a crash
  leaves either the old folder or the new one at `target` (plus at most a `.old` sibling).
  """
  staging, target = epath.Path(staging), epath.Path(target)
  old = target.parent / f".{target.name}.old"
  if old.exists():
    old.rmtree()
  if target.exists():
    target.rename(old)
  staging.rename(target)
  if old.exists():
    old.rmtree()
  return target
