"""The run directory: one module owns its layout, and everyone reads a run through it.

  config.json          the resolved config (written by the trainer at every start)
  model_config.json    the architecture (HF config.json style), to rebuild the model without weights
  tokenizer/           the tokenizer files (save_pretrained)
  checkpoints/<step>/{params,opt_state,meta,data_iter}/   one Orbax CheckpointManager, async saves
  metrics.jsonl        one JSON object per line: step, split, metric names (+ metrics.jsonl.parts/
                       on object stores, which cannot append)
  eval/step_<N>/       what `jaxift.infer.evaluate` writes

The trainer, the evaluation flow, the notebook API and the export tools all use this package
(`from jaxift import workdir`); it imports the model and data layers, never the trainer.
  files.py        the side files and their paths; metrics.jsonl reading; history.jsonl
  checkpoints.py  the Orbax Checkpointer, step resolution, write checks
  run_guard.py    the lock and the run identity
  inference.py    load_for_inference Restoring goes through abstract arrays that
carry the TARGET shardings, so a run saved on one mesh restores onto another.
"""
# pylint: disable=unused-import
from jaxift.workdir.checkpoints import (
    VALIDATION_METRIC, CheckpointRestoreError, CheckpointWriteError, Checkpointer, absolute,
    abstract_like, check_free_space, preflight, resolve_checkpoint_step, resolve_step)
from jaxift.workdir.files import (
    CHECKPOINT_DIR, CONFIG_FILE, HISTORY_FILE, IDENTITY_FILE, LOCK_FILE, METRICS_FILE,
    MODEL_CONFIG_FILE, TOKENIZER_DIR, append_history, config_changes, eval_dir, flatten,
    load_config, load_model_config, metrics_parts_dir, metrics_path, read_history, read_metrics,
    save_config, save_model_config, save_tokenizer)
from jaxift.workdir.inference import load_for_inference
from jaxift.workdir.run_guard import (
    IDENTITY_PARTS, RunChangedError, WorkdirLock, WorkdirLockedError, check_identity,
    identity_changes, run_identity, save_identity, tokenizer_fingerprint)
