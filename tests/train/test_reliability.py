"""Failing loudly, early and truthfully: each test reproduces a failure the trainer used to hide.

Run identity on resume, the workdir lock, divergence (SGD lr=1e4, the AdamW collapse, an injected
NaN batch), corrupt checkpoints, unwritable or full disks, failed background saves, and one
metrics row per (step, split) after a resume.
"""
import json
import math
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxift import workdir as workdir_lib
from jaxift.train import trainer
from jaxift.train.trainer import NonFiniteLossError, TrainingCollapsedError, train_and_evaluate


def _diverging(c, name: str):
  c.optimizer.name, c.optimizer.lr = name, 1e4
  c.optimizer.warmup_steps, c.optimizer.schedule, c.optimizer.grad_clip_norm = 0, "constant", 0.0
  c.train.collapse_patience, c.train.max_consecutive_skips, c.train.save_every = 3, 2, 1
  return c


# ---- run identity --------------------------------------------------------------------------------

@pytest.fixture
def stopped_run(tiny_config, tmp_path):
  """A run of 3 steps preempted after step 1 (data from a file, so the file can change)."""
  data = tmp_path / "data.json"
  shutil.copy(pathlib.Path(__file__).resolve().parents[3] / "shared" / "data" /
              "instruction-data.json", data)
  c = tiny_config(steps=3, data=str(data))
  c.train.stop_at_step = 1
  workdir = tmp_path / "run"
  train_and_evaluate(c, str(workdir))
  return workdir, data


def test_resume_refuses_a_changed_model_and_keeps_config_json(stopped_run, tiny_config):
  workdir, data = stopped_run
  before = (workdir / "config.json").read_bytes()
  c = tiny_config(steps=3, data=str(data))
  c.model.hf_config.hidden_size = 128
  with pytest.raises(workdir_lib.RunChangedError) as error:
    train_and_evaluate(c, str(workdir))
  message = str(error.value)
  assert "model.architecture.hidden_size: 64 -> 128" in message
  assert "--config.checkpoint.allow_changes=model" in message
  assert (workdir / "config.json").read_bytes() == before  # never claims a run that did not happen


def test_resume_refuses_a_changed_tokenizer(stopped_run, tiny_config, smollm2_gguf):
  workdir, data = stopped_run
  c = tiny_config(steps=3, data=str(data))
  c.tokenizer.path = str(smollm2_gguf)
  with pytest.raises(workdir_lib.RunChangedError, match=r"tokenizer\.sha256: .* -> "):
    train_and_evaluate(c, str(workdir))


def test_resume_refuses_a_changed_data_file_unless_allowed(stopped_run, tiny_config):
  workdir, data = stopped_run
  records = json.loads(data.read_text())
  data.write_text(json.dumps(records[:-1]))
  with pytest.raises(workdir_lib.RunChangedError, match=r"data\.train_files:stats\.0\.size"):
    train_and_evaluate(tiny_config(steps=3, data=str(data)), str(workdir))
  c = tiny_config(steps=3, data=str(data))
  c.checkpoint.allow_changes = "data"
  c.optimizer.lr = 5e-4  # optimizer changes never need permission
  results = train_and_evaluate(c, str(workdir))
  assert results["start_step"] == 1 and results["step"] == 3
  history = workdir_lib.read_history(workdir)
  assert [h["event"] for h in history] == ["start", "resume"]
  assert "data" in history[1]["identity_changes"]
  assert "optimizer.lr: 0.001 -> 0.0005" in history[1]["config_changes"]
  assert workdir_lib.load_config(workdir).optimizer.lr == 5e-4


# ---- the lock -------------------------------------------------------------------------------------

def test_a_second_trainer_is_refused_and_a_stale_lock_taken_over(tiny_config, tmp_path):
  holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    (tmp_path / "lock.json").write_text(json.dumps(
        {"host": socket.gethostname(), "pid": holder.pid, "started": "earlier"}))
    with pytest.raises(workdir_lib.WorkdirLockedError, match=f"pid {holder.pid}"):
      train_and_evaluate(tiny_config(steps=1), str(tmp_path))
    assert not (tmp_path / "checkpoints").exists()  # refused before anything was written
  finally:
    holder.kill()
    holder.wait()
  results = train_and_evaluate(tiny_config(steps=1), str(tmp_path))  # the holder is gone: stale
  assert results["step"] == 1
  assert not (tmp_path / "lock.json").exists()  # released at the end


def test_two_trainers_started_together_one_wins(gpt2_dir, tmp_path):
  from tests.train.conftest import subprocess_env, tiny_cli_args
  procs = [subprocess.Popen(tiny_cli_args(gpt2_dir, tmp_path, steps=2), env=subprocess_env(),
                            cwd=pathlib.Path(__file__).resolve().parents[2],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for _ in range(2)]
  outs = [p.communicate(timeout=300) for p in procs]
  codes = sorted(p.returncode for p in procs)
  assert codes[0] == 0 and codes[1] != 0, outs
  loser = outs[[p.returncode for p in procs].index(codes[1])][1]
  assert "is in use by another trainer" in loser


def _children(pid: int) -> set[int]:
  """Pids whose parent is `pid` (from Linux's /proc: no psutil dependency)."""
  out = set()
  for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
    try:
      fields = stat.read_text().rsplit(")", 1)[1].split()
    except OSError:  # the process ended while we looked
      continue
    if int(fields[1]) == pid:
      out.add(int(stat.parent.name))
  return out


def _alive(pid: int) -> bool:
  try:
    state = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
  except OSError:
    return False
  return state != "Z"  # a zombie has exited; only its parent's wait is missing


def test_kill_9_with_grain_workers_leaves_no_orphans(gpt2_dir, tmp_path):
  """Grain's worker processes outlive a trainer killed by SIGKILL (or the OOM killer) unless they
  watch their parent (pipeline.exit_with_parent): without it they stay alive, re-parented to init."""
  from tests.train.conftest import subprocess_env, tiny_cli_args
  trainer_proc = subprocess.Popen(
      tiny_cli_args(gpt2_dir, tmp_path, "--config.data.num_workers=2", steps=100_000),
      env=subprocess_env(), cwd=pathlib.Path(__file__).resolve().parents[2],
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  metrics = tmp_path / "metrics.jsonl"
  workers: set[int] = set()
  try:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:  # training has started: the workers are feeding it
      assert trainer_proc.poll() is None, "the trainer ended before it was killed"
      workers = _children(trainer_proc.pid)
      if metrics.exists() and '"train"' in metrics.read_text() and len(workers) >= 2:
        break
      time.sleep(0.5)
    assert len(workers) >= 2, f"expected 2 Grain workers, saw child pids {workers}"
    trainer_proc.kill()  # SIGKILL: nothing runs in the trainer
    trainer_proc.wait()
    deadline = time.monotonic() + 20
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
      time.sleep(0.2)
    orphans = [w for w in workers if _alive(w)]
    assert not orphans, f"processes {orphans} outlived the killed trainer"
  finally:
    for pid in workers | {trainer_proc.pid}:
      try:
        os.kill(pid, signal.SIGKILL)
      except OSError:
        pass


# ---- divergence -----------------------------------------------------------------------------------

def test_sgd_at_lr_1e4_stops_and_leaves_only_good_checkpoints(tiny_config, tmp_path):
  with pytest.raises(NonFiniteLossError) as error:
    train_and_evaluate(_diverging(tiny_config(steps=12), "sgd"), str(tmp_path))
  message = str(error.value)
  bad_from = int(message.split("the parameters after step ")[1].split()[0])
  steps = workdir_lib.Checkpointer(tmp_path, read_only=True).all_steps()
  assert all(s < bad_from for s in steps), (steps, message)
  if steps:  # the one named as good restores to parameters with a finite loss
    assert f"the last good checkpoint is step {max(steps)}" in message
  else:
    assert "no earlier checkpoint exists" in message


def test_adamw_at_lr_1e4_collapse_is_reported(tiny_config, tmp_path):
  with pytest.raises(TrainingCollapsedError, match=r"gradient norm has been exactly 0|ln\(vocab\)"):
    train_and_evaluate(_diverging(tiny_config(steps=12), "adamw"), str(tmp_path))


def test_an_injected_nan_batch_is_skipped_and_counted(tiny_config, tmp_path, monkeypatch):
  real = trainer.make_iterator

  def with_nan_at_third(*args, **kwargs):
    it = real(*args, **kwargs)
    if kwargs.get("split") != "train":
      return it

    class Poisoned:
      stats, count = it.stats, 0

      def __next__(self):
        batch = dict(next(it))
        Poisoned.count += 1
        if Poisoned.count == 3:
          batch["weights"] = np.full_like(batch["weights"], np.nan)
        return batch
    return Poisoned()

  monkeypatch.setattr(trainer, "make_iterator", with_nan_at_third)
  c = tiny_config(steps=5)
  c.checkpoint.save_data_iterator = False  # the wrapper is not a Grain iterator
  c.data.elastic = False  # the training iterator comes from pipeline.make_iterator, patched above
  results = train_and_evaluate(c, str(tmp_path))
  assert results["step"] == 5 and math.isfinite(results["train_loss"])
  rows = {r["step"]: r for r in workdir_lib.read_metrics(tmp_path, "train")}
  assert math.isnan(rows[3]["loss"]) and rows[3]["consecutive_skips"] == 1
  assert rows[5]["skipped_updates"] == 1 and rows[5]["consecutive_skips"] == 0


# ---- checkpoints and disks ------------------------------------------------------------------------

def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous(tiny_config, tmp_path, caplog):
  c = tiny_config(steps=3)
  c.train.save_every = 1
  train_and_evaluate(c, str(tmp_path))
  params_dir = tmp_path / "checkpoints" / "3" / "params"
  for f in params_dir.rglob("*"):
    if f.is_file() and f.stat().st_size > 0:
      f.write_bytes(b"\0" * 7)  # truncated garbage
  results = train_and_evaluate(tiny_config(steps=4), str(tmp_path))
  assert results["start_step"] == 2 and results["step"] == 4
  assert any("checkpoints/3 does not restore" in r.getMessage() for r in caplog.records)


def test_unwritable_checkpoints_fail_before_any_compute(tiny_config, tmp_path):
  (tmp_path / "checkpoints").write_text("a file where the folder should be")
  with pytest.raises(workdir_lib.CheckpointWriteError, match="checkpoints is not writable"):
    train_and_evaluate(tiny_config(steps=1), str(tmp_path))


def test_a_full_disk_is_refused_at_start(tiny_config, tmp_path, monkeypatch):
  usage = shutil.disk_usage(tmp_path)
  monkeypatch.setattr(workdir_lib.checkpoints.shutil, "disk_usage",
                      lambda _: usage._replace(free=1024))
  with pytest.raises(workdir_lib.CheckpointWriteError, match="less than one checkpoint"):
    train_and_evaluate(tiny_config(steps=1), str(tmp_path))


def test_a_failed_background_save_stops_the_run_and_removes_the_partial(tiny_config, tmp_path,
                                                                         monkeypatch):
  c = tiny_config(steps=4)
  c.train.save_every = 1
  partial = tmp_path / "checkpoints" / "1.orbax-checkpoint-tmp-123"

  def failing(self):
    if self.latest_step() is not None:
      partial.mkdir(parents=True, exist_ok=True)
      raise OSError(28, "No space left on device")

  monkeypatch.setattr(ocp.CheckpointManager, "check_for_errors", failing)
  with pytest.raises(workdir_lib.CheckpointWriteError, match="No space left on device"):
    train_and_evaluate(c, str(tmp_path))
  assert not partial.exists()


# ---- metrics --------------------------------------------------------------------------------------

def test_rows_past_the_restored_step_are_truncated(tiny_config, tmp_path):
  c = tiny_config(steps=4)
  c.train.save_every = 2
  train_and_evaluate(c, str(tmp_path))
  workdir_lib.Checkpointer(tmp_path).delete(4)  # as if the run died before step 4 was saved
  results = train_and_evaluate(tiny_config(steps=4), str(tmp_path))
  assert results["start_step"] == 2
  lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  keys = [(r["step"], r["split"]) for r in lines]
  assert len(keys) == len(set(keys)), keys
  assert [r["step"] for r in lines if r["split"] == "train"] == [1, 2, 3, 4]
  again = train_and_evaluate(tiny_config(steps=4), str(tmp_path))
  assert again["already_complete"] and again["step"] == 4
