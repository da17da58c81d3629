"""Executes notebooks/evaluate_checkpoint.ipynb with a real Jupyter kernel and checks its outputs."""
import json
import math
import pathlib
import sys

import nbclient
import nbformat
import pytest

from jaxift.data import sources

REPO = pathlib.Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "notebooks" / "evaluate_checkpoint.ipynb"


@pytest.fixture(scope="module")
def kernel_name(tmp_path_factory, monkeypatch_module):
  """A kernelspec for THIS interpreter (the system 'python3' spec may name another python)."""
  from ipykernel.kernelspec import install
  prefix = tmp_path_factory.mktemp("kernels")
  install(kernel_name="jaxift-test", prefix=str(prefix))
  spec = json.loads((prefix / "share/jupyter/kernels/jaxift-test/kernel.json").read_text())
  assert spec["argv"][0] == sys.executable
  monkeypatch_module.setenv("JUPYTER_PATH", str(prefix / "share" / "jupyter"))
  return "jaxift-test"


@pytest.fixture(scope="module")
def monkeypatch_module():
  with pytest.MonkeyPatch.context() as mp:
    yield mp


def _outputs(nb, tag):
  cells = [c for c in nb.cells if tag in c.get("metadata", {}).get("tags", [])]
  assert cells, f"no cell tagged {tag!r}"
  return cells[0].outputs


def test_notebook_runs_and_shows_curves_examples_and_scores(tiny_workdir, kernel_name,
                                                            monkeypatch_module):
  monkeypatch_module.setenv("JAXIFT_WORKDIR", str(tiny_workdir))
  monkeypatch_module.setenv("JAXIFT_STEP", "best")
  monkeypatch_module.setenv("JAXIFT_NUM_EXAMPLES", "3")
  monkeypatch_module.setenv("JAXIFT_MAX_NEW_TOKENS", "8")
  monkeypatch_module.setenv("JAX_PLATFORMS", "cpu")
  nb = nbformat.read(NOTEBOOK, as_version=4)
  assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), \
      "commit the notebook without outputs"
  nbclient.NotebookClient(nb, kernel_name=kernel_name, timeout=300,
                          resources={"metadata": {"path": str(REPO)}}).execute()
  code = [c for c in nb.cells if c.cell_type == "code"]
  errors = [o for c in code for o in c.outputs if o.output_type == "error"]
  assert not errors, errors
  # The loss-curve cell drew a figure.
  assert any("image/png" in o.get("data", {}) for c in code for o in c.outputs), "no figure"
  # Side by side: the references of the first 3 test records, read here independently.
  from jaxift.workdir import load_config
  records = sources.load_records(load_config(tiny_workdir).data, "test")[:3]
  tables = [o["data"]["text/html"] for c in code for o in c.outputs
            if "text/html" in o.get("data", {})]
  assert tables and all(r["output"] in tables[0] for r in records)
  assert tables[0].count("<tr>") == 1 + 3
  # The scores cell printed numbers.
  text = "".join(o.get("text", "") for o in _outputs(nb, "scores") if o.output_type == "stream")
  line = next(l for l in text.splitlines() if l.startswith("SCORES_JSON "))
  scores = json.loads(line[len("SCORES_JSON "):])
  assert math.isfinite(scores["test_loss"]) and scores["test_loss"] > 0
  assert scores["test_perplexity"] == pytest.approx(math.exp(scores["test_loss"]))
  assert 0.0 <= scores["exact_match"] <= 1.0 and 0.0 <= scores["rouge_l"] <= 1.0
  assert "test_perplexity" in text.split("SCORES_JSON")[0]  # the human-readable table
