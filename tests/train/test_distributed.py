"""Subprocess runs: the entry point end to end, SIGTERM, 8 fake devices, two processes (gloo)."""
import json
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from tests.train.conftest import (REPO_ROOT, run, subprocess_env, tiny_cli_args, train_records)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _final(stdout: str) -> dict:
  lines = [l for l in stdout.splitlines() if l.startswith('{"final"')]
  assert lines, f"no final line in:\n{stdout[-2000:]}"
  return json.loads(lines[-1])["final"]


def test_main_one_step_end_to_end(gpt2_dir, tmp_path):
  # A relative --workdir, as the README types it (Orbax itself wants absolute paths).
  proc = run(tiny_cli_args(gpt2_dir, "runs/one", steps=1), cwd=tmp_path)
  tmp_path = tmp_path / "runs" / "one"
  final = _final(proc.stdout)
  assert final["step"] == 1
  assert 0 < train_records(tmp_path)[1] < 20
  assert (tmp_path / "checkpoints" / "1" / "params").is_dir()
  config = json.loads((tmp_path / "config.json").read_text())
  assert config["train"]["num_steps"] == 1 and config["data"]["max_seq_length"] == 80
  assert (tmp_path / "tokenizer" / "tokenizer.json").exists()


def test_misspelt_override_fails(gpt2_dir, tmp_path):
  cmd = tiny_cli_args(gpt2_dir, tmp_path, "--config.optimizer.learning_rat=1e-3", steps=1)
  proc = subprocess.run(cmd, cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 2, proc.stderr[-2000:]
  # One line naming the closest key, not a 57-line traceback.
  assert proc.stderr.strip().splitlines()[-1] == (
      "error: --config.optimizer.learning_rat is not a key of the config; did you mean "
      "--config.optimizer.lr?")
  assert "Traceback" not in proc.stderr


def test_sigterm_saves_and_next_run_resumes(gpt2_dir, tmp_path):
  cmd = tiny_cli_args(gpt2_dir, tmp_path, steps=500)
  proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=subprocess_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  metrics = tmp_path / "metrics.jsonl"
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
      break
    time.sleep(0.2)
  assert proc.poll() is None, proc.communicate()[1][-3000:]
  proc.send_signal(signal.SIGTERM)
  stdout, stderr = proc.communicate(timeout=120)
  assert proc.returncode == 0, stderr[-3000:]
  saved = _final(stdout)["step"]
  assert _final(stdout)["preempted"] and 2 <= saved < 500
  assert (tmp_path / "checkpoints" / str(saved) / "params").is_dir()
  proc = run(tiny_cli_args(gpt2_dir, tmp_path, f"--config.train.stop_at_step={saved + 1}",
                           steps=500))
  final = _final(proc.stdout)
  assert final["start_step"] == saved and final["step"] == saved + 1
  assert sorted(train_records(tmp_path)) == list(range(1, saved + 2))


FAKE_DEVICES_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax
    assert len(jax.devices()) == 8, jax.devices()
    sys.path.insert(0, {root!r})
    from tests.train.conftest import make_tiny_config
    from jaxift.train.trainer import train_and_evaluate
    c = make_tiny_config({gpt2!r}, steps=4)
    c.mesh.shape = (1, 4, 2)
    straight = train_and_evaluate(c, {straight!r})
    c = make_tiny_config({gpt2!r}, steps=4)
    c.mesh.shape = (1, 2, 4)
    resumed = train_and_evaluate(c, {resumed!r})
    print(json.dumps({{"straight": straight, "resumed": resumed}}, default=str))
""")


def test_eight_fake_devices_and_restore_onto_another_mesh(gpt2_dir, reference_run, tiny_config,
                                                           tmp_path):
  from jaxift.train.trainer import train_and_evaluate
  ref_dir, ref = reference_run
  # Two steps on ONE device, stopped; the 8-device run resumes that checkpoint (fsdp=2, tensor=4).
  half = tiny_config(steps=4)
  half.train.stop_at_step = 2
  train_and_evaluate(half, str(tmp_path / "resumed"))
  script = FAKE_DEVICES_SCRIPT.format(root=str(REPO_ROOT), gpt2=gpt2_dir,
                                      straight=str(tmp_path / "straight"),
                                      resumed=str(tmp_path / "resumed"))
  proc = run([sys.executable, "-c", script],
             XLA_FLAGS="--xla_force_host_platform_device_count=8")
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  want = train_records(ref_dir)
  straight = train_records(tmp_path / "straight")
  resumed = train_records(tmp_path / "resumed")
  for step in range(1, 5):
    assert straight[step] == pytest.approx(want[step], abs=1e-5), step
    assert resumed[step] == pytest.approx(want[step], abs=1e-5), step
  assert out["resumed"]["start_step"] == 2
  assert out["straight"]["validation_loss"] == pytest.approx(ref["validation_loss"], abs=1e-5)


def test_two_processes_match_one_process(gpt2_dir, reference_run, tmp_path):
  ref_dir, ref = reference_run
  port = _free_port()
  procs = [subprocess.Popen(
      tiny_cli_args(gpt2_dir, tmp_path, f"--coordinator_address=127.0.0.1:{port}",
                    "--num_processes=2", f"--process_id={i}", steps=4),
      cwd=REPO_ROOT, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True) for i in range(2)]
  outputs = [p.communicate(timeout=300) for p in procs]
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-4000:]
  final = _final(outputs[0][0])
  want, got = train_records(ref_dir), train_records(tmp_path)
  assert sorted(got) == [1, 2, 3, 4]
  for step in want:
    assert got[step] == pytest.approx(want[step], abs=1e-5), step
  assert final["validation_loss"] == pytest.approx(ref["validation_loss"], abs=1e-5)
  assert (tmp_path / "checkpoints" / "4" / "data_iter" / "process_1-of-2.json").exists()
