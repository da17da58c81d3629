"""jaxift: instruction fine-tuning of pretrained decoder LLMs in JAX.

The notebook API is imported lazily so that `import jaxift` stays cheap:
  model, tokenizer, config = jaxift.load_checkpoint(workdir, step="best")
  jaxift.generate(model, tokenizer, prompts, max_new_tokens=64)
  jaxift.plot_metrics(workdir)
"""
import importlib
import os

# transformers announces "PyTorch was not found" at import; jaxift needs only its tokenizers, so
# the advice is noise for a jaxift user (set the variable to 0 to see transformers' advice again).
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

__version__ = "0.1.0"

_LAZY = {
    "load_checkpoint": ("jaxift.api", "load_checkpoint"),
    "generate": ("jaxift.api", "generate"),
    "plot_metrics": ("jaxift.api", "plot_metrics"),
    "export_gguf": ("jaxift.model.gguf_export", "export_gguf"),
}


def __getattr__(name):
  if name in _LAZY:
    module, attr = _LAZY[name]
    return getattr(importlib.import_module(module), attr)
  raise AttributeError(f"module 'jaxift' has no attribute {name!r}")
