"""The trainer with preference objectives on the tiny config: TRL-named metrics (validation at
step 0 too), LoRA's reference = the base with adapters off, accumulation x4 == one batch, exact
resume of a full-fine-tuning DPO run (its frozen reference rebuilt)."""
import json

import pytest

from jaxift.train.trainer import train_and_evaluate
from tests.train.conftest import train_records


def _config(tiny_config, pairs_file, objective="dpo", lora=False, **arg):
  c = tiny_config(data=pairs_file, **arg)
  c.train.objective = objective
  c.preference.beta = 0.5
  c.evals.generation = ""
  if lora:
    c.lora.enabled, c.lora.rank, c.lora.alpha, c.lora.dropout = True, 4, 8.0, 0.0
  return c


def _records(workdir, split):
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  return [r for r in map(json.loads, lines) if r["split"] == split]


def test_dpo_lora_metrics_and_reference_is_base(tiny_config, pairs_file, tmp_path):
  c = _config(tiny_config, pairs_file, lora=True, steps=3)
  results = train_and_evaluate(c, str(tmp_path))
  assert results["step"] == 3
  validation = _records(tmp_path, "validation")
  assert [r["step"] for r in validation] == [0, 3]
  before = validation[0]
  # Before training the policy IS the reference (adapters start at B = 0, and the reference is the
  # base with adapters off): every reward is exactly 0, the loss exactly log 2.
  assert before["rewards/chosen"] == 0 and before["rewards/margins"] == 0
  assert before["loss"] == pytest.approx(0.6931472, abs=1e-6)
  assert 0 <= before["logps/accuracy"] <= 1 and before["logps/chosen"] < 0
  train = _records(tmp_path, "train")
  for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
              "logps/chosen", "logps/rejected", "loss", "grad_norm"):
    assert key in train[-1], key
  assert train[0]["pairs"] == 4 and validation[1]["rewards/margins"] != 0
  config = json.loads((tmp_path / "config.json").read_text())
  assert config["data"]["pairs"] and config["evals"]["validation"] == "preference"


@pytest.mark.parametrize("objective", ["orpo", "simpo"])
def test_reference_free_objectives_train(tiny_config, pairs_file, tmp_path, objective):
  c = _config(tiny_config, pairs_file, objective=objective, steps=2)
  train_and_evaluate(c, str(tmp_path))
  losses = train_records(tmp_path)
  assert sorted(losses) == [1, 2] and all(v == v and v > 0 for v in losses.values())


def test_accumulation_x4_equals_one_batch(tiny_config, pairs_file, tmp_path):
  one = _config(tiny_config, pairs_file, objective="orpo", steps=2)
  train_and_evaluate(one, str(tmp_path / "one"))
  four = _config(tiny_config, pairs_file, objective="orpo", steps=2)
  four.train.grad_accum_steps = 4
  train_and_evaluate(four, str(tmp_path / "four"))
  for key in ("loss", "rewards/margins", "grad_norm"):
    want, got = train_records(tmp_path / "one", key), train_records(tmp_path / "four", key)
    for step in want:
      assert got[step] == pytest.approx(want[step], rel=1e-5, abs=1e-6), (key, step)


def test_loss_chunk_size_equals_plain(tiny_config, pairs_file, tmp_path):
  """train.loss_chunk_size=32 on rows of 80 tokens (chunks 32 + 32 + 16): the trainer's DPO step
  (policy and frozen reference chunked) and validation give the plain run's numbers."""
  plain = _config(tiny_config, pairs_file, steps=2)
  train_and_evaluate(plain, str(tmp_path / "plain"))
  chunked = _config(tiny_config, pairs_file, steps=2)
  chunked.train.loss_chunk_size = 32
  train_and_evaluate(chunked, str(tmp_path / "chunked"))
  for key in ("loss", "rewards/margins", "logps/chosen", "grad_norm"):
    want, got = train_records(tmp_path / "plain", key), train_records(tmp_path / "chunked", key)
    assert sorted(got) == [1, 2]
    for step in want:
      assert got[step] == pytest.approx(want[step], rel=1e-5, abs=1e-5), (key, step)
  want, got = _records(tmp_path / "plain", "validation"), _records(tmp_path / "chunked",
                                                                   "validation")
  for key in ("loss", "logps/chosen", "rewards/margins"):
    assert got[-1][key] == pytest.approx(want[-1][key], rel=1e-5, abs=1e-5), key


def test_full_finetune_dpo_resume_is_exact(tiny_config, pairs_file, tmp_path):
  straight = _config(tiny_config, pairs_file, steps=4)
  train_and_evaluate(straight, str(tmp_path / "straight"))
  c = _config(tiny_config, pairs_file, steps=4)
  c.train.stop_at_step = 2
  first = train_and_evaluate(c, str(tmp_path / "resumed"))
  assert first["preempted"]
  second = train_and_evaluate(_config(tiny_config, pairs_file, steps=4), str(tmp_path / "resumed"))
  assert second["start_step"] == 2
  for key in ("loss", "rewards/margins", "non_padding_tokens"):
    want = train_records(tmp_path / "straight", key)
    got = train_records(tmp_path / "resumed", key)
    assert sorted(got) == [1, 2, 3, 4]
    for step in want:
      assert got[step] == pytest.approx(want[step], abs=1e-6), (key, step)
  assert second["validation_loss"] == pytest.approx(
      _records(tmp_path / "straight", "validation")[-1]["loss"], abs=1e-6)


EIGHT_DEVICES = """
import json, sys
sys.path.insert(0, {root!r})
from tests.train.conftest import make_tiny_config
from jaxift.train.trainer import train_and_evaluate
c = make_tiny_config({gpt2!r}, data={data!r}, steps=2, batch=8)
c.train.objective, c.preference.beta, c.evals.generation = "dpo", 0.5, ""
c.train.grad_accum_steps = 2
c.mesh.shape = (1, 2, 4)
train_and_evaluate(c, {workdir!r})
"""


def test_eight_fake_devices_equal_one(tiny_config, pairs_file, gpt2_dir, tmp_path):
  """Full-FT DPO (a frozen reference sharded like the parameters), fsdp=2 x tensor=4, 2 micro-steps
  of 4 pairs: the losses and metrics of one device with one batch of 8 pairs."""
  import sys
  from tests.train.conftest import REPO_ROOT, run
  one = _config(tiny_config, pairs_file, steps=2, batch=8)
  train_and_evaluate(one, str(tmp_path / "one"))
  run([sys.executable, "-c", EIGHT_DEVICES.format(root=str(REPO_ROOT), gpt2=gpt2_dir,
                                                  data=pairs_file, workdir=str(tmp_path / "eight"))],
      XLA_FLAGS="--xla_force_host_platform_device_count=8")
  for key in ("loss", "rewards/margins", "logps/chosen"):
    want, got = train_records(tmp_path / "one", key), train_records(tmp_path / "eight", key)
    assert sorted(got) == [1, 2]
    for step in want:
      assert got[step] == pytest.approx(want[step], rel=1e-5, abs=1e-5), (key, step)
