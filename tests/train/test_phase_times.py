"""The trainer's time by phase: every phase of a run is reported, the phases never add up to more
than the run's wall time, and the compilation cache setting reaches JAX."""
import jax
import pytest

from jaxift.train.trainer import train_and_evaluate
from tests.train.conftest import make_tiny_config


@pytest.fixture
def gpt2_dir(shared_data) -> str:
  return str(shared_data / "gpt2")


def test_phase_seconds_cover_the_run(gpt2_dir, tmp_path, capsys):
  config = make_tiny_config(gpt2_dir, steps=3)
  config.eval.max_batches = 1
  config.train.compilation_cache = str(tmp_path / "jax_cache")
  config.train.progress_bar = False
  results = train_and_evaluate(config, str(tmp_path / "run"))
  phases = results["phase_seconds"]
  assert {"load", "compile", "steps", "save"} <= set(phases), phases
  assert all(v >= 0 for v in phases.values()), phases
  assert sum(phases.values()) <= results["wall_time_s"] + 0.05
  assert phases["compile"] > 0.0
  assert "time by phase: load" in capsys.readouterr().out
  assert jax.config.jax_compilation_cache_dir == str(tmp_path / "jax_cache")
