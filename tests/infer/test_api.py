"""The notebook API: jaxift.load_checkpoint / generate / plot_metrics."""
import json

import matplotlib
import numpy as np
import pytest

import jaxift

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def loaded(tiny_workdir):
  return jaxift.load_checkpoint(str(tiny_workdir), step="best")


def test_plot_metrics_draws_train_and_validation_from_metrics_jsonl(tiny_workdir):
  rows = [json.loads(l) for l in (tiny_workdir / "metrics.jsonl").read_text().splitlines() if l]
  fig = jaxift.plot_metrics(str(tiny_workdir))
  lines = {line.get_label(): line for line in fig.axes[0].lines}
  assert set(lines) == {"train loss", "validation loss"}
  for split in ("train", "validation"):
    expected = [(r["step"], r["loss"]) for r in rows if r["split"] == split]
    np.testing.assert_allclose(np.column_stack(lines[f"{split} loss"].get_data()), expected)
  with pytest.raises(ValueError, match="no 'nonexistent_metric'"):
    jaxift.plot_metrics(str(tiny_workdir), metric="nonexistent_metric")


def test_generate_templates_records_like_training(loaded):
  from jaxift.data import tokenize
  from jaxift.infer import sampler
  model, tokenizer, config = loaded
  record = {"instruction": "Reverse the order of the words: red blue", "input": ""}
  via_api = jaxift.generate(model, tokenizer, [record], config=config, max_new_tokens=6)
  prompt = tokenize.prompt_tokens({**record, "output": "blue red"}, config.data, tokenizer)
  direct = sampler.generate(model, tokenizer, [prompt], max_new_tokens=6,
                            stop_token_ids=tokenize.end_token_ids(config.data, tokenizer) + [
                                tokenizer.eos_token_id])
  assert via_api == direct
  with pytest.raises(ValueError, match="pass config="):
    jaxift.generate(model, tokenizer, [record], max_new_tokens=2)


def test_load_checkpoint_errors(tiny_workdir, tmp_path):
  with pytest.raises(FileNotFoundError, match=r"no checkpoint at step 3: .*steps \[4\]"):
    jaxift.load_checkpoint(str(tiny_workdir), step=3)
  with pytest.raises(FileNotFoundError, match="no checkpoints in"):
    jaxift.load_checkpoint(str(tmp_path))
