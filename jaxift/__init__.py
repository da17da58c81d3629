"""jaxift: instruction fine-tuning of pretrained decoder LLMs in JAX.

The notebook API is imported lazily so that `import jaxift` stays cheap:
  model, tokenizer, config = jaxift.load_checkpoint(workdir, step="best")
  jaxift.generate(model, tokenizer, prompts, max_new_tokens=64)
  jaxift.plot_metrics(workdir)
"""
import importlib

__version__ = "0.1.0"

_LAZY = {
    "load_checkpoint": ("jaxift.api", "load_checkpoint"),
    "generate": ("jaxift.api", "generate"),
    "plot_metrics": ("jaxift.api", "plot_metrics"),
}


def __getattr__(name):
  if name in _LAZY:
    module, attr = _LAZY[name]
    return getattr(importlib.import_module(module), attr)
  raise AttributeError(f"module 'jaxift' has no attribute {name!r}")
