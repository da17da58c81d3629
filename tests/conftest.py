"""Shared test fixtures. JAX runs on the CPU here; tests that need more devices use a subprocess."""
import os
import pathlib

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
  """../shared/data beside the checkout: instruction data and the GPT-2 tokenizer files."""
  assert SHARED_DATA.is_dir(), f"tests need the shared data folder at {SHARED_DATA}"
  return SHARED_DATA


@pytest.fixture(scope="session")
def gpt2_tokenizer(shared_data):
  from jaxift.data.tokenizers import load_tokenizer
  return load_tokenizer(str(shared_data / "gpt2"))


@pytest.fixture(scope="session")
def smollm2_gguf() -> pathlib.Path:
  from jaxift.assets import smollm2_gguf_path
  return smollm2_gguf_path()


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_gguf):
  from jaxift.data.tokenizers import load_tokenizer
  return load_tokenizer(str(smollm2_gguf))
