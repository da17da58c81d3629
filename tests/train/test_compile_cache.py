"""The persistent compilation cache: where each setting puts it, and a second process that
compiles the same step loads it from the directory instead of compiling it."""
import os
import subprocess
import sys

import jax
import pytest

from jaxift.train import compile_cache
from jaxift.train.config import base_config


def test_default_is_on_under_the_user_cache():
  assert base_config().train.compilation_cache == "default"
  assert compile_cache.resolve_dir("default", {"HOME": "/h"}) == os.path.join(
      os.path.expanduser("~/.cache"), "jaxift", "jax_cache")
  assert compile_cache.resolve_dir("default", {"XDG_CACHE_HOME": "/x"}) == "/x/jaxift/jax_cache"
  assert compile_cache.resolve_dir("default", {"JAXIFT_CACHE": "/j"}) == "/j/jax_cache"


@pytest.mark.parametrize("setting,environ,expected", [
    ("default", {"JAXIFT_COMPILATION_CACHE": "/env/cache"}, "/env/cache"),
    ("default", {"JAXIFT_COMPILATION_CACHE": "off"}, None),
    ("off", {}, None),
    ("", {}, None),
    ("/my/dir", {"JAXIFT_COMPILATION_CACHE": "off"}, "/my/dir"),  # an explicit path wins
    ("gs://bucket/cache", {}, "gs://bucket/cache"),
])
def test_settings(setting, environ, expected):
  assert compile_cache.resolve_dir(setting, environ) == expected


def test_bad_setting_is_named():
  with pytest.raises(ValueError, match="train.compilation_cache"):
    compile_cache.resolve_dir(3)


_CHILD = """
import sys, jax, jax.numpy as jnp
from jaxift.train import compile_cache
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
compile_cache.enable(sys.argv[1])
f = jax.jit(lambda x: jnp.sin(x) @ x.T + 1)
print(float(f(jnp.ones((64, 64))).sum()))
"""


def test_a_second_process_reads_the_cache(tmp_path):
  cache = tmp_path / "jax_cache"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  first = subprocess.run([sys.executable, "-c", _CHILD, str(cache)], env=env, check=True,
                         capture_output=True, text=True)
  entries = sorted(p.name for p in cache.iterdir())
  assert entries, "the first run wrote nothing to the cache"
  second = subprocess.run([sys.executable, "-c", _CHILD, str(cache)], env=env, check=True,
                          capture_output=True, text=True)
  assert second.stdout == first.stdout
  assert sorted(p.name for p in cache.iterdir()) == entries  # a hit: no new entry


def test_default_keeps_a_cache_configured_before(tmp_path):
  old = jax.config.jax_compilation_cache_dir
  try:
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "theirs"))
    assert compile_cache.enable("default") == str(tmp_path / "theirs")
    assert compile_cache.enable(str(tmp_path / "mine")) == str(tmp_path / "mine")
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "mine")
    assert compile_cache.enable("off") is None
  finally:
    jax.config.update("jax_compilation_cache_dir", old)
