"""Trainer runs in-process on the tiny config: exact resume, NaN stop, early stopping, loading."""
import re

import pytest

from jaxift import workdir as workdir_lib
from jaxift.train.trainer import NonFiniteLossError, train_and_evaluate
from tests.train.conftest import train_records


def test_resume_is_exact(reference_run, tiny_config, tmp_path):
  straight_dir, straight = reference_run
  c = tiny_config(steps=4)
  c.train.stop_at_step = 2  # saves and stops as a preemption would
  first = train_and_evaluate(c, str(tmp_path))
  assert first["step"] == 2 and first["preempted"]
  second = train_and_evaluate(tiny_config(steps=4), str(tmp_path))
  assert second["start_step"] == 2 and second["step"] == 4
  want, got = train_records(straight_dir), train_records(tmp_path)
  assert sorted(got) == [1, 2, 3, 4]
  for step in want:
    assert got[step] == pytest.approx(want[step], abs=1e-6), step
  # The same batches: identical token counts per step.
  assert train_records(tmp_path, "non_padding_tokens") == train_records(
      straight_dir, "non_padding_tokens")
  assert second["validation_loss"] == pytest.approx(straight["validation_loss"], abs=1e-6)


def test_load_for_inference_latest_and_missing_step(reference_run):
  workdir, results = reference_run
  model, tokenizer, config = workdir_lib.load_for_inference(workdir, "latest")
  assert config.train.num_steps == 4
  assert tokenizer.encode("hello world") == [31373, 995]  # GPT-2's ids
  import jax.numpy as jnp
  logits = model(jnp.array([[31373, 995]]), jnp.array([[0, 1]]), jnp.array([[1, 1]]))
  assert logits.shape == (1, 2, 50257)
  best_model, _, _ = workdir_lib.load_for_inference(workdir, "best")
  assert results["best_step"] == 4  # the only evaluated checkpoint: best == latest
  best_logits = best_model(jnp.array([[31373, 995]]), jnp.array([[0, 1]]), jnp.array([[1, 1]]))
  assert jnp.array_equal(best_logits, logits)
  with pytest.raises(FileNotFoundError, match=r"steps \[4\]"):
    workdir_lib.load_for_inference(workdir, 3)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    workdir_lib.load_for_inference(workdir / "nope", "latest")


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_config, tmp_path):
  c = tiny_config(steps=6)
  c.optimizer.lr = 1e38  # the first update overflows the parameters
  c.optimizer.warmup_steps = 0
  c.optimizer.schedule = "constant"
  c.optimizer.grad_clip_norm = 0.0
  c.train.save_every = 1
  with pytest.raises(NonFiniteLossError) as error:
    train_and_evaluate(c, str(tmp_path))
  match = re.search(r"non-finite since step (\d+) .* up to step (\d+)", str(error.value))
  assert match, str(error.value)
  since, bad = int(match.group(1)), int(match.group(2))
  assert since <= bad
  # Every checkpoint left holds parameters from before the streak: "last good" is true.
  assert all(s < since - 1 for s in workdir_lib.Checkpointer(tmp_path, read_only=True).all_steps())


def test_early_stopping_stops_when_validation_stops_improving(tiny_config, tmp_path):
  c = tiny_config(steps=8)
  c.optimizer.lr = 0.0  # validation loss never improves after the first evaluation
  c.train.eval_every = 1
  c.train.early_stopping_patience = 2
  results = train_and_evaluate(c, str(tmp_path))
  assert results["early_stopped"] and results["step"] == 3
  assert results["best_step"] == 1


def test_epochs_mode_runs_whole_passes(tiny_config, tmp_path):
  c = tiny_config(steps=0)
  c.train.num_epochs = 2
  c.data.synthetic.num_train = 9  # 2 x 9 records in rows of 4: 5 batches (not 2 x 3)
  results = train_and_evaluate(c, str(tmp_path))
  assert results["total_steps"] == 5 and results["step"] == 5
  assert sorted(train_records(tmp_path)) == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("quantization", ["none", "nf4"])
def test_lora_trains_adapters_only_and_resumes_exactly(tiny_config, tmp_path, quantization):
  """LoRA, and QLoRA on an nf4 base: checkpoints hold the adapters and the base reference (with
  its quantization); the resumed run's losses equal an uninterrupted one's, and the run reloads
  onto the same (re-quantized) base."""
  import jax
  import numpy as np
  from flax import nnx

  def lora_config(**kw):
    c = tiny_config(**kw)
    c.lora.enabled = True
    c.lora.rank = 4
    c.lora.dropout = 0.1  # keyed by step: must also resume exactly
    if quantization != "none":
      c.lora.base_quantization, c.lora.quantization_block_size = quantization, 16  # head_dim 16
    c.optimizer.lr = 1e-2
    return c

  train_and_evaluate(lora_config(steps=3), str(tmp_path / "straight"))
  c = lora_config(steps=3)
  c.train.stop_at_step = 1
  train_and_evaluate(c, str(tmp_path / "resumed"))
  resumed = train_and_evaluate(lora_config(steps=3), str(tmp_path / "resumed"))
  assert resumed["start_step"] == 1
  want, got = train_records(tmp_path / "straight"), train_records(tmp_path / "resumed")
  assert sorted(got) == [1, 2, 3]
  for step in want:
    assert got[step] == pytest.approx(want[step], abs=1e-6), step
  assert want[3] < want[1]  # the adapters learn

  model, _, config = workdir_lib.load_for_inference(tmp_path / "straight", "latest")
  from jaxift.model import lora as lora_lib
  from jaxift.model import quantize as Q
  from jaxift.model.loading import build_model
  adapters = nnx.state(model, lora_lib.LoRAParam)
  assert any(float(np.abs(np.asarray(b)).max()) > 0 for b in jax.tree.leaves(adapters))
  assert config.lora.base_quantization == quantization
  if quantization != "none":  # the quantized base equals a fresh quantized build, bit for bit
    fresh, _ = lora_lib.build_model(config, seed=int(config.train.seed))
    frozen = lambda m: [np.asarray(x) for x in jax.tree.leaves(nnx.state(m, Q.QuantizedArray))]
    assert len(frozen(model)) == 28  # 2 layers x 7 kernels x (codes, scales)
    for a, b in zip(frozen(fresh), frozen(model)):
      np.testing.assert_array_equal(a, b)
    return
  # The frozen base equals a fresh build from the same reference (random init, same seed).
  base, _ = build_model(config.model, seed=config.train.seed)
  fresh = nnx.state(base, nnx.Param)
  loaded = nnx.state(model, nnx.Not(lora_lib.LoRAParam))
  fresh_leaves = [np.asarray(x) for x in jax.tree.leaves(fresh)]
  loaded_leaves = [np.asarray(x) for x in jax.tree.leaves(nnx.state(loaded, nnx.Param))]
  assert len(fresh_leaves) == len(loaded_leaves)
  for a, b in zip(fresh_leaves, loaded_leaves):
    np.testing.assert_array_equal(a, b)
