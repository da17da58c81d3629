"""jaxift.tools.benchmark's synthetic rows follow the batch contract (both frameworks train on them)
and its shapes are the published architectures."""
import numpy as np
import pytest

from jaxift.tools import benchmark

@pytest.fixture(scope="module")
def bench():
  return benchmark


@pytest.mark.parametrize("packing", [True, False])
def test_rows_follow_the_batch_contract(bench, packing):
  rows = bench.make_rows(4, 64, 1000, packing, seed=1)
  seg, pos, w = rows["segment_ids"], rows["positions"], rows["weights"]
  for r in range(4):
    ids = seg[r][seg[r] > 0]
    assert ids[0] == 1 and np.all(np.diff(ids) >= 0) and np.all(np.diff(np.unique(ids)) == 1)
    for s in np.unique(ids):  # positions restart at 0 and count up inside each segment
      np.testing.assert_array_equal(pos[r][seg[r] == s], np.arange((seg[r] == s).sum()))
    assert np.all(seg[r][len(ids):] == 0)  # padding only at the end
  assert np.all(w[seg == 0] == 0) and np.all(rows["inputs"][seg == 0] == 0)
  assert 0 < w.sum() < (seg > 0).sum()  # prompts untrained, responses trained
  if packing:
    assert seg.max() >= 2 and np.all(seg > 0)  # rows filled with several examples
  else:
    assert seg.max() == 1 and (seg == 0).any()


def test_shapes_match_published_sizes(bench):
  """Parameter counts from the configs: 135M, 1.24B, 8.03B (the model cards' numbers)."""
  def params(h):
    d, f, layers, v = h["hidden_size"], h["intermediate_size"], h["num_hidden_layers"], h["vocab_size"]
    kv = h["num_key_value_heads"] * h["head_dim"]
    per_layer = 2 * d * d + 2 * d * kv + 3 * d * f + 2 * d
    return layers * per_layer + v * d * (1 if h["tie_word_embeddings"] else 2) + d
  assert round(params(bench.SHAPES["smollm2-135m"]) / 1e6) == 135
  assert round(params(bench.SHAPES["llama-3.2-1b"]) / 1e9, 2) == 1.24
  assert round(params(bench.SHAPES["llama-3.1-8b"]) / 1e9, 2) == 8.03
