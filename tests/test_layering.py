"""The layering rule of DESIGN.md section 4, read from the imports (module- and function-level):

  data   imports none of model, train, infer (nor the run directory, which loads models)
  model  imports neither train nor infer
  infer  does not import train (it loads runs through jaxift.workdir)
  workdir (the run directory) imports neither train nor infer
and every import sits at the top of its module unless it names its reason on the same line
(an optional dependency, or an environment variable that must be set first)."""
import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "jaxift"
NEVER = {"data": ("model", "train", "infer", "workdir", "tools"),
         "model": ("train", "infer", "workdir", "tools"),
         "infer": ("train", "tools"),
         "workdir": ("train", "infer", "tools"),
         "train": ("tools",)}
# Function-level imports allowed: (module, imported package prefix) -> the reason it is not at the
# top of the module.
LAZY_ALLOWED = {
    ("tools/benchmark.py", "torch"): "optional: the PyTorch comparison ([test] extra)",
    ("tools/profile_step.py", "torch"): "optional: the PyTorch profile ([test] extra)",
    ("tools/profile_step.py", "transformers"): "with torch: transformers' PyTorch model",
    ("tools/benchmark.py", "transformers"): "the PyTorch comparison's model",
    ("tools/benchmark_decode.py", "torch"): "optional: the PyTorch comparison ([test] extra)",
    ("tools/benchmark_decode.py", "transformers"): "the PyTorch comparison's model",
    ("model/hf.py", "huggingface_hub"): "optional: hub downloads ([hf] extra)",
    ("data/sources.py", "datasets"): "optional: saved HF datasets ([hf] extra)",
    ("tools/evaluate.py", "jaxift.infer.lm_eval_adapter"):
        "optional: lm-evaluation-harness ([eval] extra), imported only with --lm_eval_tasks",
    ("infer/metrics.py", "rouge_score"): "measured: nltk takes seconds to import",
    ("model/attention_kernels.py", "jax.experimental.pallas.ops"):
        "backend-specific kernels (Triton / Mosaic), imported only on their backend",
    ("model/attention_kernels.py", "jax._src.lib"): "private CUDA probe, GPU only",
}


def _allowed(rel: str, module: str) -> bool:
  return any(rel == f and (module == m or module.startswith(m + "."))
             for f, m in LAZY_ALLOWED)


def _layer(path: pathlib.Path) -> str:
  rel = path.relative_to(PACKAGE)
  return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(tree: ast.AST):
  """(lineno, module, at_top) for every jaxift-relevant import in a module."""
  top = {id(n) for n in tree.body}
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        yield node.lineno, alias.name, id(node) in top
    elif isinstance(node, ast.ImportFrom) and node.module:
      yield node.lineno, node.module, id(node) in top
      for alias in node.names:  # `from jaxift import workdir`
        yield node.lineno, f"{node.module}.{alias.name}", id(node) in top


def _modules():
  return sorted(p for p in PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_layering_and_top_level_imports(path):
  tree = ast.parse(path.read_text(encoding="utf-8"))
  layer = _layer(path)
  rel = str(path.relative_to(PACKAGE))
  crossing, lazy = [], []
  for lineno, module, at_top in _imports(tree):
    for banned in NEVER.get(layer, ()):
      if module == f"jaxift.{banned}" or module.startswith(f"jaxift.{banned}."):
        crossing.append(f"{rel}:{lineno} imports {module} ({layer} must not import {banned})")
    if not at_top and not _allowed(rel, module):
      lazy.append(f"{rel}:{lineno} imports {module} inside a function")
  assert not crossing, "\n".join(crossing)
  assert not lazy, "\n".join(sorted(set(lazy)))


def test_the_rule_catches_a_crossing(tmp_path):
  """The checker itself: a data module importing the trainer is reported."""
  tree = ast.parse("import os\ndef f():\n  from jaxift.train import trainer\n")
  found = [(m, top) for _, m, top in _imports(tree)]
  assert ("jaxift.train", False) in found and ("jaxift.train.trainer", False) in found
  assert ("os", True) in found
