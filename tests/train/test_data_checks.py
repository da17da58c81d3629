"""Data problems surface before compute, with their location: `--validate_data`, the trainer's
pre-check of the first records, and drop counts (with a warning) in the metrics."""
import json

import pytest

from jaxift import workdir as workdir_lib
from jaxift.train.trainer import train_and_evaluate
from tests.train.conftest import TINY, REPO_ROOT, subprocess_env

RECORDS = [{"instruction": f"Say {i}", "input": "", "output": str(i)} for i in range(12)]


def _write(path, records, raw_line: bytes | None = None, at: int = -1):
  lines = [json.dumps(r).encode() for r in records]
  if raw_line is not None:
    lines[at] = raw_line
  path.write_bytes(b"\n".join(lines) + b"\n")
  return path


def _empty(path):
  path.write_bytes(b"")
  return path


@pytest.fixture
def bad_files(tmp_path):
  missing = [dict(r) for r in RECORDS]
  del missing[4]["output"]
  return {
      "missing_key": (_write(tmp_path / "missing.jsonl", missing), ":5:", "cannot detect the format"),
      "not_utf8": (_write(tmp_path / "latin.jsonl", RECORDS,
                          json.dumps(RECORDS[6]).encode().replace(b"Say", b"S\xff\xfey"), 6),
                   ":7:", "not UTF-8"),
      "empty": (_empty(tmp_path / "empty.jsonl"), "empty.jsonl", "holds no records"),
  }


@pytest.mark.parametrize("kind", ["missing_key", "not_utf8", "empty"])
def test_validate_data_names_the_file_and_line(bad_files, gpt2_dir, tmp_path, kind):
  import subprocess
  import sys
  path, where, what = bad_files[kind]
  proc = subprocess.run(
      [sys.executable, "-m", "jaxift.main", f"--config={TINY}:tokenizer={gpt2_dir},data={path}",
       f"--workdir={tmp_path / 'unused'}", "--validate_data"],
      cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
  assert (str(path) if kind == "empty" else f"{path.name}{where}") in proc.stdout
  assert what in proc.stdout
  assert "Traceback" not in proc.stderr
  assert not (tmp_path / "unused").exists()  # nothing trained, nothing written


def test_validate_data_passes_clean_data(gpt2_dir, tmp_path, shared_data):
  import subprocess
  import sys
  data = shared_data / "instruction-data.json"
  proc = subprocess.run(
      [sys.executable, "-m", "jaxift.main", f"--config={TINY}:tokenizer={gpt2_dir},data={data}",
       f"--workdir={tmp_path}", "--validate_data", "--validate_data_limit=40"],
      cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
  assert proc.stdout.count("40 examples checked") == 3  # train, validation, test
  assert proc.stdout.count("\nOK\n") == 3


def test_trainer_stops_on_a_bad_record_before_building_the_model(bad_files, tiny_config, tmp_path):
  path, where, _ = bad_files["missing_key"]
  with pytest.raises(ValueError, match=f"{path.name}{where}"):
    train_and_evaluate(tiny_config(steps=2, data=str(path)), str(tmp_path / "run"))
  assert not (tmp_path / "run" / "model_config.json").exists()


def test_overlong_drops_are_counted_in_the_metrics_and_warned(tiny_config, tmp_path, capsys,
                                                              shared_data):
  c = tiny_config(steps=2, data=str(shared_data / "instruction-data.json"))
  c.data.max_seq_length = 64
  train_and_evaluate(c, str(tmp_path))
  rows = workdir_lib.read_metrics(tmp_path, "data")
  assert rows and rows[-1]["dropped/too_long"] > 0 and rows[-1]["kept"] > 0
  out = capsys.readouterr().out
  assert "were dropped as longer than data.max_seq_length=64" in out
