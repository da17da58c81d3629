"""Entry point: `python -m jaxift.main --config=configs/x.py[:variant] --workdir=DIR [--config.a.b=v]`.

Multi-host: on a Cloud TPU VM slice `jax.distributed.initialize()` finds its peers by itself; on
other clusters pass --coordinator_address/--num_processes/--process_id to every process.
"""
import time

# Taken before the heavy imports below (JAX, the trainer): the "import" phase of the run's timing.
_MODULE_START = time.perf_counter()

import difflib  # pylint: disable=wrong-import-position
import glob  # pylint: disable=wrong-import-position
import importlib.util  # pylint: disable=wrong-import-position
import json  # pylint: disable=wrong-import-position
import os  # pylint: disable=wrong-import-position
import sys  # pylint: disable=wrong-import-position

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from jaxift.data import audit
from jaxift.data.tokenizers import load_tokenizer
from jaxift.train.trainer import train_and_evaluate

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, e.g. configs/quickstart.py or configs/x.py:key=value.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (local or gs://): checkpoints, "
                               "metrics, config; an existing one is resumed.", required=True)
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0 for a multi-process run off Cloud TPU.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")
_VALIDATE_DATA = flags.DEFINE_bool(
    "validate_data", False, "Check the data instead of training: every record of each split is "
    "parsed, templated, tokenized and its masks audited; prints the drop counts by reason and the "
    "first offending file:line per problem; exits 1 on any record error or mask violation.")
_VALIDATE_LIMIT = flags.DEFINE_integer("validate_data_limit", 0,
                                       "With --validate_data: the first N records per split (0: all).")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "auto", ["auto", "on", "off"],
    "auto: initialize jax.distributed when coordinator flags are given or on a Cloud TPU VM; "
    "on: always (cluster auto-detection, e.g. SLURM); off: never.")


def _maybe_initialize_distributed() -> None:
  if _DISTRIBUTED.value == "off":
    return
  if _COORDINATOR.value or _NUM_PROCESSES.value:
    # CPU-only runs (tests, a cluster without accelerators) need gloo for cross-process
    # collectives; the setting does not affect GPU/TPU backends.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
  elif _DISTRIBUTED.value == "on" or _on_cloud_tpu_vm():
    # Cloud TPU VM (one host or a pod slice): JAX reads the peers from the TPU metadata server.
    jax.distributed.initialize()


def _on_cloud_tpu_vm() -> bool:
  """TPU chips are attached (/dev/accel* or /dev/vfio/N) or the TPU runtime set its variables."""
  if any(os.environ.get(v) for v in ("TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS",
                                     "TPU_ACCELERATOR_TYPE")):
    return True
  return bool(glob.glob("/dev/accel[0-9]*") or glob.glob("/dev/vfio/[0-9]*"))


def validate_data(config, limit: int) -> bool:
  """Audits every split of `config.data` (the first `limit` records of each); True when clean."""
  tokenizer = load_tokenizer(config.tokenizer.path or config.model.path)
  clean = True
  for split in ("train", "validation", "test"):
    try:
      report = audit.run_audit(config.data, tokenizer, split=split, limit=limit or None)
    except ValueError as e:  # e.g. an empty split, a missing file: named by the error
      print(f"[{split}] {e}")
      clean = False
      continue
    print(f"[{split}] {report.table()}")
    clean = clean and report.ok
  return clean


def _config_keys(argv: list[str]) -> list[str]:
  """Every dotted key of the config file named by --config= (loaded again: the failed parse left
  no value to read)."""
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if not spec:
    return []
  path, _, variant = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("_jaxift_hint_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(variant or None) if variant else module.get_config()

  def flatten(tree, prefix=""):
    for k, v in tree.items():
      name = f"{prefix}.{k}" if prefix else str(k)
      yield name
      if isinstance(v, dict):
        yield from flatten(v, name)
  return list(flatten(config.to_dict()))


def _override_hint(argv: list[str]) -> str | None:
  """'--config.optimizer.learning_rate is not a key of the config; did you mean optimizer.lr?' for
  the first --config.* override that names no key of the config file."""
  try:
    known = set(_config_keys(argv))
  except Exception:  # pylint: disable=broad-except  (then absl's own error stands)
    return None
  for arg in argv:
    if arg.startswith("--config.") and known:
      key = arg[len("--config."):].split("=", 1)[0]
      if key not in known:
        parent, _, leaf = key.rpartition(".")
        siblings = sorted(k for k in known if k.rpartition(".")[0] == parent)
        initials = "".join(w[:1] for w in leaf.split("_"))  # learning_rate -> lr
        close = ([k for k in siblings if k.rpartition(".")[2] == initials]
                 or difflib.get_close_matches(key, siblings or sorted(known), n=1, cutoff=0.5))
        return (f"--config.{key} is not a key of the config" +
                (f"; did you mean --config.{close[0]}?" if close else ""))
  return None


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's parser, with a misspelt --config.* override reported in one line (not a traceback)."""
  try:
    return flags.FLAGS(argv)
  except flags.Error:
    raise  # absl prints these itself
  except (AttributeError, KeyError, TypeError, ValueError):
    hint = _override_hint(argv)
    if hint is None:
      raise
    print(f"error: {hint}", file=sys.stderr)
    sys.exit(2)


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _VALIDATE_DATA.value:
    sys.exit(0 if validate_data(_CONFIG.value, _VALIDATE_LIMIT.value) else 1)
  if not flags.FLAGS["verbosity"].present:  # Orbax logs every file it writes at INFO
    logging.set_verbosity(logging.WARNING)
  import_s = time.perf_counter() - _MODULE_START
  _maybe_initialize_distributed()
  logging.info("process %d of %d, devices: %s", jax.process_index(), jax.process_count(),
               jax.devices())
  results = train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  results.setdefault("phase_seconds", {})["import"] = round(import_s, 2)
  if jax.process_index() == 0:
    print(json.dumps({"final": results}, default=str), flush=True)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main, flags_parser=_parse_flags)
