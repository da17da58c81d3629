"""The train/eval steps: accumulation equals one big batch; batching layout does not change loss."""
import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx

from jaxift.train import optimizer as opt_lib
from jaxift.train import step as step_lib

TINY_HF = dict(model_type="llama", vocab_size=97, hidden_size=32, intermediate_size=64,
               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8)


def _tiny_model():
  from jaxift.model.config import default_model_config
  from jaxift.model.loading import build_model
  mc = default_model_config()
  mc.hf_config = TINY_HF
  model, _ = build_model(mc, seed=0)
  return nnx.split(model, nnx.Param, ...)


def _batch(rows: int, length: int, seed: int = 0) -> dict[str, np.ndarray]:
  """Rows of different lengths (padding at the end, weight 0) and different trained spans."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, 97, size=(rows, length + 1))
  lengths = rng.integers(length // 3, length + 1, size=rows)
  segment_ids = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
  weights = segment_ids * (np.arange(length)[None] >= rng.integers(1, length // 3, size=(rows, 1)))
  return {"inputs": tokens[:, :-1].astype(np.int32), "targets": tokens[:, 1:].astype(np.int32),
          "weights": weights.astype(np.float32), "segment_ids": segment_ids,
          "positions": np.broadcast_to(np.arange(length, dtype=np.int32), (rows, length)) * segment_ids}


def _sgd():
  return ml_collections.ConfigDict(dict(
      name="sgd", lr=1.0, b1=0.0, b2=0.0, eps=0.0, weight_decay=0.0, no_decay_regex="",
      schedule="constant", warmup_steps=0, warmup_ratio=0.0, end_lr_ratio=0.0, grad_clip_norm=0.0))


@pytest.mark.parametrize("z_loss", [0.0, 1e-3])
def test_grad_accumulation_x4_equals_one_big_batch(z_loss):
  graphdef, params, rest = _tiny_model()
  tx, _ = opt_lib.make_optimizer(_sgd(), params, 10)
  trainable = opt_lib.trainable_mask(params, "")
  batch = _batch(8, 12)
  outs = []
  for accum in (1, 4):
    step = jax.jit(step_lib.make_train_step(graphdef, tx, trainable, accum=accum,
                                            z_loss=z_loss))
    outs.append(step(params, tx.init(params), rest, np.int32(0), batch))
  (p1, _, m1), (p4, _, m4) = outs
  for key in ("loss", "z_loss", "token_accuracy", "trained_tokens", "grad_norm"):
    assert float(m4[key]) == pytest.approx(float(m1[key]), rel=1e-5, abs=1e-6), key
  # SGD with lr 1: the parameter change IS the gradient.
  for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p4)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-6, rtol=1e-5)
  # Independent reference: the plain global-batch loss, sum(w * CE) / sum(w).
  model = nnx.merge(graphdef, params, rest)
  logp = jax.nn.log_softmax(model(batch["inputs"], batch["positions"], batch["segment_ids"]))
  ce = -np.take_along_axis(np.asarray(logp), batch["targets"][..., None], -1)[..., 0]
  want = float((ce * batch["weights"]).sum() / batch["weights"].sum())
  assert float(m1["loss"]) == pytest.approx(want, rel=1e-5)


def test_chunked_loss_equals_whole_rows():
  graphdef, params, rest = _tiny_model()
  tx, _ = opt_lib.make_optimizer(_sgd(), params, 10)
  trainable = opt_lib.trainable_mask(params, "")
  batch = _batch(4, 12, seed=1)
  outs = [jax.jit(step_lib.make_train_step(graphdef, tx, trainable, z_loss=1e-3,
                                           loss_chunk=chunk))(params, tx.init(params), rest, np.int32(0),
                                                              batch)
          for chunk in (0, 5)]  # 5 does not divide 12: the last slice is padded
  (p_whole, _, m_whole), (p_chunk, _, m_chunk) = outs
  for key in ("loss", "z_loss", "token_accuracy", "trained_tokens"):
    assert float(m_chunk[key]) == pytest.approx(float(m_whole[key]), rel=1e-5), key
  for a, b in zip(jax.tree.leaves(p_whole), jax.tree.leaves(p_chunk)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-6, rtol=1e-5)


def test_frozen_parameters_do_not_move():
  graphdef, params, rest = _tiny_model()
  tx, _ = opt_lib.make_optimizer(_sgd(), params, 10, freeze_regex=r"^embed/")
  trainable = opt_lib.trainable_mask(params, r"^embed/")
  step = jax.jit(step_lib.make_train_step(graphdef, tx, trainable))
  new_params, _, _ = step(params, tx.init(params), rest, np.int32(0), _batch(4, 10))
  np.testing.assert_array_equal(np.asarray(new_params["embed"]["embedding"][...]),
                                np.asarray(params["embed"]["embedding"][...]))
  moved = [not np.array_equal(a, b) for a, b in
           zip(jax.tree.leaves(new_params["layers"]), jax.tree.leaves(params["layers"]))]
  assert all(moved)


def test_padded_bucketed_packed_batches_give_the_same_loss(gpt2_dir):
  from jaxift.data.pipeline import make_iterator
  from jaxift.data.tokenizers import load_tokenizer
  from jaxift.model.loading import build_model
  from tests.train.conftest import make_tiny_config

  tokenizer = load_tokenizer(gpt2_dir)
  c = make_tiny_config(gpt2_dir)
  c.data.synthetic.num_validation = 12
  c.data.buckets = (48, 64, 80)
  model, _ = build_model(c.model, seed=0)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  eval_step = jax.jit(step_lib.make_eval_step(graphdef))
  totals = {}
  for batching in ("max_length", "bucket", "packing"):
    c.data.batching = batching
    it = make_iterator(c.data, tokenizer, split="validation", batch_size=4, shard_index=0,
                       shard_count=1, seed=0, num_epochs=1)
    sums = [jax.device_get(eval_step(params, rest, b)) for b in it]
    totals[batching] = {k: sum(float(s[k]) for s in sums) for k in ("ce_sum", "weight_sum")}
  assert totals["packing"]["weight_sum"] == totals["max_length"]["weight_sum"] > 0
  losses = {k: v["ce_sum"] / v["weight_sum"] for k, v in totals.items()}
  assert losses["bucket"] == pytest.approx(losses["max_length"], rel=1e-5)
  assert losses["packing"] == pytest.approx(losses["max_length"], rel=1e-5)
