"""The trainer with `train.loss_chunk_size` set trains exactly like the plain loss: the same
per-step training losses, token accuracy and gradient norms (tiny config, 3 steps)."""
import numpy as np
import pytest

from jaxift.train.trainer import train_and_evaluate
from tests.train.conftest import make_tiny_config, train_records


@pytest.fixture
def gpt2_dir(shared_data) -> str:
  return str(shared_data / "gpt2")


def test_trainer_losses_equal_with_and_without_chunked_loss(gpt2_dir, tmp_path):
  runs = {}
  for chunk in (0, 24):  # 24 does not divide the 80-token rows: the last chunk is padded
    config = make_tiny_config(gpt2_dir, steps=3)
    config.train.loss_chunk_size = chunk
    config.eval.max_batches = 1
    train_and_evaluate(config, str(tmp_path / f"chunk{chunk}"))
    runs[chunk] = {key: train_records(tmp_path / f"chunk{chunk}", key)
                   for key in ("loss", "token_accuracy", "grad_norm")}
  for key in ("loss", "token_accuracy", "grad_norm"):
    plain, chunked = runs[0][key], runs[24][key]
    assert sorted(plain) == sorted(chunked) == [1, 2, 3]
    np.testing.assert_allclose([chunked[s] for s in plain], list(plain.values()), rtol=1e-5,
                               atol=1e-5, err_msg=key)
  assert runs[0]["loss"][3] < runs[0]["loss"][1]  # it trained
