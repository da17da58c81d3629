"""jaxift.fileio: the one atomic writer. No reader sees a half-written file, a failed write leaves
the old file and no temp file, and staged folders get ordinary (umask) permissions."""
import os
import stat

import pytest

from jaxift import fileio


def test_write_text_replaces_whole_and_leaves_no_temp(tmp_path):
  target = tmp_path / "sub" / "a.json"
  fileio.write_text(target, "old")
  fileio.write_text(target, "new")
  assert target.read_text() == "new"
  assert sorted(p.name for p in target.parent.iterdir()) == ["a.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
  target = tmp_path / "a.txt"
  fileio.write_text(target, "old")

  def broken_replace(self, other):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(type(fileio.epath.Path(target)), "replace", broken_replace)
  with pytest.raises(OSError, match="No space"):
    fileio.write_text(target, "new")
  assert target.read_text() == "old"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_staged_folder_replaces_the_old_one_with_normal_permissions(tmp_path):
  target = tmp_path / "export"
  target.mkdir()
  (target / "stale.bin").write_text("x")
  staging = fileio.staging_dir(target)
  (staging / "model.safetensors").write_text("y")
  fileio.replace_dir(staging, target)
  assert sorted(p.name for p in target.iterdir()) == ["model.safetensors"]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no .tmp or .old left
  umask = os.umask(0)
  os.umask(umask)
  assert stat.S_IMODE(target.stat().st_mode) == 0o777 & ~umask  # not mkdtemp's 0700
