"""JAX's persistent compilation cache, on by default: a second run of the same config (the
quickstart run again, a resume, an evaluation) loads its compiled steps from disk instead of
compiling them again.

`config.train.compilation_cache` chooses the directory:
  'default'  $JAXIFT_COMPILATION_CACHE if set, else $JAXIFT_CACHE/jax_cache, else
             $XDG_CACHE_HOME/jaxift/jax_cache (~/.cache/jaxift/jax_cache);
  'off' / '' jaxift turns no persistent cache on (one JAX itself was given stays);
  a path     that directory (local or gs://).
JAXIFT_COMPILATION_CACHE=off switches the default off without editing a config. Where JAX's cache
is already configured (JAX_COMPILATION_CACHE_DIR, or `jax.config` in a notebook or a test session),
'default' keeps that directory.
Only compilations slower than `jax_persistent_cache_min_compile_time_secs` (JAX's default, 1 s)
are written, so small helper jits do not fill the directory.
"""
import os
from collections.abc import Mapping

from absl import logging
import jax
from jax.experimental.compilation_cache import compilation_cache

ENV = "JAXIFT_COMPILATION_CACHE"
_OFF = ("", "off", "none", "0", "false")


def default_dir(environ: Mapping[str, str] = os.environ) -> str:
  """The cache directory of 'default' when $JAXIFT_COMPILATION_CACHE is unset."""
  root = environ.get("JAXIFT_CACHE") or os.path.join(
      environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "jaxift")
  return os.path.join(root, "jax_cache")


def resolve_dir(setting: str, environ: Mapping[str, str] = os.environ) -> str | None:
  """The directory `setting` (config.train.compilation_cache) names; None: the cache is off."""
  if not isinstance(setting, str):
    raise ValueError(f"train.compilation_cache must be 'default', 'off' or a directory, got "
                     f"{setting!r}")
  setting = setting.strip()
  if setting.lower() in _OFF:
    return None
  if setting.lower() == "default":
    env = environ.get(ENV)
    if env is None:
      return default_dir(environ)
    return None if env.strip().lower() in _OFF else env.strip()
  return setting


def enable(setting: str) -> str | None:
  """Points JAX's persistent compilation cache at the directory of `setting` (before the first
  compile of a run); returns the directory, or None when the cache stays off."""
  directory = resolve_dir(setting)
  if directory is None:
    return None
  configured = jax.config.jax_compilation_cache_dir
  if configured and setting.strip().lower() == "default":
    # JAX's cache was pointed somewhere already (JAX_COMPILATION_CACHE_DIR, a notebook, a test
    # session): 'default' keeps that choice; only an explicit directory replaces it.
    logging.info("persistent compilation cache: %s (already configured)", configured)
    return configured
  if jax.config.jax_compilation_cache_dir != directory:
    if "://" not in directory:
      os.makedirs(directory, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", directory)
    # JAX reads the setting once, at its first compile: a process that already compiled (tests,
    # a notebook) starts the cache again so that the new directory is used.
    compilation_cache.reset_cache()
  logging.info("persistent compilation cache: %s", directory)
  return directory
