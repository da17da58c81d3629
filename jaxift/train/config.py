"""`base_config()`: every section the trainer reads, with defaults; experiment configs start here.

Variants after ':' in `--config=configs/x.py:key=value,key2=value2` reach `get_config(arg)`;
`parse_arg` turns them into a dict, `apply_runlocal` is big_vision's `runlocal` shrink for a quick
debugging run on one machine.
"""
import importlib.util
import pathlib
from typing import Any

import ml_collections

from jaxift.data.config import default_data_config
from jaxift.model import sharding
from jaxift.model.config import default_model_config
from jaxift.model.lora import default_lora_config
from jaxift.model.preference import check_objective, default_preference_config


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.data = default_data_config()
  c.model = default_model_config()
  c.lora = default_lora_config()  # LoRA adapters instead of full fine-tuning (off by default)

  c.tokenizer = ml_collections.ConfigDict()
  c.tokenizer.path = ""  # '' = the same as config.model.path

  # Mesh ("data", "fsdp", "tensor"); one -1 takes the remaining devices.
  c.mesh = ml_collections.ConfigDict()
  c.mesh.shape = (1, -1, 1)
  # Logical axis name -> mesh axis (or None, replicated); see jaxift/model/sharding.py.
  c.mesh.rules = tuple(sharding.DEFAULT_LOGICAL_RULES)

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adamw"  # 'adamw' | 'sgd'
  c.optimizer.lr = 1e-4
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
  c.optimizer.eps = 1e-8
  c.optimizer.weight_decay = 0.0
  # Parameters whose path matches get no weight decay (norm scales, biases).
  c.optimizer.no_decay_regex = r"(norm|bias|ln_)"
  c.optimizer.schedule = "cosine"  # 'cosine' | 'linear' | 'constant'
  c.optimizer.warmup_steps = 0
  c.optimizer.warmup_ratio = 0.0  # used when warmup_steps == 0
  c.optimizer.end_lr_ratio = 0.0  # final lr = lr * end_lr_ratio
  c.optimizer.grad_clip_norm = 1.0  # 0 = no clipping

  c.train = ml_collections.ConfigDict()
  c.train.num_steps = 100  # > 0 wins; otherwise num_epochs passes over the training split
  c.train.num_epochs = 0
  c.train.global_batch_size = 8  # rows per optimizer step, all processes together
  c.train.grad_accum_steps = 1  # micro-steps per optimizer step (global_batch_size divisible)
  c.train.seed = 0
  # 'sft' (next-token cross entropy) | 'dpo' | 'orpo' | 'simpo' (preference pairs: global_batch_size
  # counts pairs; settings in config.preference; docs/training.md "Preference tuning").
  c.train.objective = "sft"
  c.train.z_loss = 0.0  # weight of PaLM's z-loss: z_loss * mean(logsumexp(logits)^2)
  # Compute logits and loss over slices of this many tokens (0 = whole rows): saves the
  # [batch, seq, vocab] logits memory for large vocabularies (Llama 3: 128k) at a little recompute.
  c.train.loss_chunk_size = 0
  c.train.freeze_regex = ""  # parameters whose path matches are not trained, e.g. 'embed'
  # An update with a non-finite gradient is skipped and counted; this many in a row stop the run
  # (0 = never skip: the first non-finite loss stops it).
  c.train.max_consecutive_skips = 5
  # Steps in a row with a gradient norm of exactly 0, or a loss at ln(vocab) (a uniform
  # prediction), after which the run stops as collapsed; 0 = off.
  c.train.collapse_patience = 20
  c.train.log_every = 10
  c.train.eval_every = 0  # 0 = only at the end
  c.train.save_every = 100  # 0 = only at the end (and on SIGTERM)
  c.train.stop_at_step = 0  # save and stop after this step, as a preemption would; 0 = off
  c.train.early_stopping_patience = 0  # evaluations without improvement; 0 = off
  c.train.early_stopping_min_delta = 0.0
  c.train.progress_bar = True
  c.train.tensorboard = True
  # Peak FLOP/s per device for MFU where jaxift.train.mfu has no entry (0 = look it up / skip).
  c.train.peak_flops_per_device = 0.0
  # JAX's persistent compilation cache: 'default' (~/.cache/jaxift/jax_cache, or
  # $JAXIFT_COMPILATION_CACHE / $JAXIFT_CACHE/jax_cache), 'off', or a directory.
  # See jaxift/train/compile_cache.py.
  c.train.compilation_cache = "default"

  c.preference = default_preference_config()

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.keep = 2  # last N checkpoints
  c.checkpoint.keep_best = 1  # plus the N best by validation loss
  c.checkpoint.async_save = True
  c.checkpoint.save_data_iterator = True  # the Grain iterator state, for exact resume
  # Parts of the run's identity a resume may change (comma-separated: model, tokenizer, data,
  # objective). Anything else that changed is refused with the list of changed keys.
  c.checkpoint.allow_changes = ""

  # Evaluations the trainer runs: name -> registered type (jaxift/train/evals.py); '' = off.
  c.evals = ml_collections.ConfigDict()
  c.evals.validation = "validation_loss"  # every train.eval_every steps and at the end
  c.evals.generation = "exact_match"  # before and after training, when eval.generate_examples > 0

  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 0  # global rows per validation batch; 0 = train.global_batch_size
  c.eval.max_batches = 0  # 0 = the whole validation split
  # Generation check on held-out records (exact match), before and after training; 0 = off.
  c.eval.generate_examples = 0
  # The split the 'preference' evaluator reads (a measurement may point it at 'test').
  c.eval.preference_split = "validation"
  c.eval.generate_split = "test"
  c.eval.max_new_tokens = 32
  c.eval.generate_batch_size = 16
  c.eval.show_generations = 3
  return c


def apply_objective(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Makes a config consistent with `train.objective` (called by the trainer before anything
  reads it): a preference objective reads pairs (`data.pairs`) and validates with the
  `preference` evaluator, which replaces `validation_loss` (the SFT loss of a pair batch means
  nothing) and selects the best checkpoint by the preference loss."""
  objective = check_objective(str(c.train.get("objective", "sft")))
  if objective == "sft":
    return c
  with c.unlocked():
    c.data.pairs = True
    # The elastic data order (jaxift/data/elastic.py) deals single examples; pairs go through the
    # per-host pipeline, so a preference run resumed on another process count restarts its data
    # order (with a warning) instead of continuing it.
    c.data.elastic = False
    if "preference" not in c:
      c.preference = default_preference_config()
    names = [n for n, t in c.evals.items() if t == "validation_loss"]
    for n in names:
      c.evals[n] = "preference"
    if not names and "preference" not in c.evals.values():
      c.evals.preference = "preference"
  return c


def load_sibling_config(config_file: str, name: str):
  """The module of `configs/<name>.py` beside `config_file`, for configs that extend another one
  (config files are loaded by path, not as a package)."""
  path = pathlib.Path(config_file).with_name(f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"_jaxift_config_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """'a=1,b=x,runlocal' -> ConfigDict(a=1, b='x', runlocal=True), typed like `defaults`."""
  result = ml_collections.ConfigDict(dict(defaults))
  for item in (arg or "").split(","):
    item = item.strip()
    if not item:
      continue
    key, sep, value = item.partition("=")
    key = key.strip()
    if key not in result:
      raise ValueError(f"config variant {arg!r}: unknown key {key!r}; "
                       f"known: {sorted(result.keys())}")
    if not sep:
      result[key] = True
      continue
    default = defaults[key]
    if isinstance(default, bool):
      result[key] = value.lower() in ("1", "true", "yes")
    elif isinstance(default, int):
      result[key] = int(value)
    elif isinstance(default, float):
      result[key] = float(value)
    else:
      result[key] = value
  return result


def apply_runlocal(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks a config to a few small steps on whatever devices are here (for debugging)."""
  c.mesh.shape = (1, -1, 1)
  c.train.num_steps = min(c.train.num_steps, 5) if c.train.num_steps > 0 else 5
  c.train.num_epochs = 0
  c.train.global_batch_size = min(c.train.global_batch_size, 4)
  c.train.grad_accum_steps = 1
  c.train.log_every = 1
  c.train.eval_every = 0
  c.train.save_every = 0
  c.eval.max_batches = 2
  c.eval.generate_examples = min(c.eval.generate_examples, 4)
  return c
