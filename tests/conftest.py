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


class FakeBucket:
  """gs://<bucket>/... paths served from a local folder through etils.epath's test backend.

  `opened_for_write` lists every remote path opened for writing, in order, so a test can check
  how often each object was (re)written.
  """

  def __init__(self, root: pathlib.Path):
    self.root = root
    self.opened_for_write: list[str] = []

  def local(self, path) -> str:
    text = os.fspath(path)
    return str(self.root / text[len("gs://"):]) if text.startswith("gs://") else text

  def redirect(self, name: str):
    def fn(original, path, *args, **kwargs):
      if name == "open" and any(m in str(args[0] if args else kwargs.get("mode", "r"))
                                for m in "wax"):
        self.opened_for_write.append(os.fspath(path))
      args = tuple(self.local(a) if isinstance(a, (str, os.PathLike)) else a for a in args)
      return original(self.local(path), *args, **kwargs)
    return fn


@pytest.fixture
def fake_gcs(tmp_path, monkeypatch):
  """Routes every gs:// path that goes through etils.epath to tmp_path/bucket-root; the working
  directory is an empty folder, so a path that bypassed epath (pathlib on 'gs://...') shows up
  there as a local 'gs:' folder."""
  from etils.epath import testing as epath_testing
  bucket = FakeBucket(tmp_path / "bucket-root")
  bucket.root.mkdir()
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  names = ("copy", "exists", "glob", "isdir", "listdir", "makedirs", "mkdir", "open", "remove",
           "rename", "replace", "rmtree", "stat", "walk")
  with epath_testing.mock_epath(**{n: bucket.redirect(n) for n in names}):
    yield bucket
  assert not (cwd / "gs:").exists(), "a gs:// path was written through the local filesystem"
