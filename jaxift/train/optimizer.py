"""Optax optimizer from `config.optimizer`: AdamW, warmup + cosine/linear decay, clipping, masks.

Two masks, both from parameter paths such as `layers/0/attn/q_proj/kernel`:
- weight decay applies only to parameters NOT matching `optimizer.no_decay_regex` (norm scales and
  biases by default; stacked scan layers make those 2-D, so the rule is by name, not by rank);
- parameters matching `train.freeze_regex` are frozen: `optax.set_to_zero`, no optimizer state, no
  part in the gradient norm or in clipping (`optax.multi_transform`).
"""
import re
from typing import Any

import jax
import ml_collections
import optax

TRAIN, FROZEN = "train", "frozen"


def param_path(path: tuple[Any, ...]) -> str:
  """`a/b/0/kernel` for a jax tree path; the `.value` attribute of nnx Variables is dropped."""
  parts = []
  for key in path:
    if isinstance(key, jax.tree_util.DictKey):
      parts.append(str(key.key))
    elif isinstance(key, jax.tree_util.SequenceKey):
      parts.append(str(key.idx))
    elif isinstance(key, jax.tree_util.GetAttrKey):
      if key.name != "value":
        parts.append(key.name)
    else:
      parts.append(str(key))
  return "/".join(parts)


def path_mask(params: Any, regex: str) -> Any:
  """A tree of bools like `params`: True where the parameter path matches `regex` ('' -> none)."""
  pattern = re.compile(regex) if regex else None
  return jax.tree_util.tree_map_with_path(
      lambda path, _: bool(pattern and pattern.search(param_path(path))), params)


def trainable_mask(params: Any, freeze_regex: str) -> Any:
  return jax.tree.map(lambda frozen: not frozen, path_mask(params, freeze_regex))


def decay_mask(params: Any, no_decay_regex: str) -> Any:
  return jax.tree.map(lambda exempt: not exempt, path_mask(params, no_decay_regex))


def make_schedule(opt_config: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to `lr`, then `cosine`, `linear` (to `lr * end_lr_ratio`) or `constant`.

  `warmup_steps` wins over `warmup_ratio` (a fraction of `total_steps`) when both are set.
  """
  lr = float(opt_config.lr)
  warmup = int(opt_config.warmup_steps) or int(round(float(opt_config.warmup_ratio) * total_steps))
  warmup = min(warmup, max(total_steps - 1, 0))
  end_lr = lr * float(opt_config.end_lr_ratio)
  decay_steps = max(total_steps - warmup, 1)
  if opt_config.schedule == "cosine":
    decay = optax.cosine_decay_schedule(lr, decay_steps, alpha=float(opt_config.end_lr_ratio))
  elif opt_config.schedule == "linear":
    decay = optax.linear_schedule(lr, end_lr, decay_steps)
  elif opt_config.schedule == "constant":
    decay = optax.constant_schedule(lr)
  else:
    raise ValueError(f"config.optimizer.schedule={opt_config.schedule!r}: expected "
                     "'cosine', 'linear' or 'constant'")
  if warmup == 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), decay], [warmup])


def make_optimizer(opt_config: ml_collections.ConfigDict, params: Any, total_steps: int, *,
                   freeze_regex: str = "", max_consecutive_skips: int = 0
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """(optimizer, schedule) for `params` (a pytree; only its structure and paths are used).

  `max_consecutive_skips > 0`: an update whose gradient holds a NaN or Inf is skipped (parameters
  and moments unchanged) and counted, `optax.apply_if_finite`; past that many in a row it is
  applied, and the trainer stops on the non-finite loss first.
  """
  schedule = make_schedule(opt_config, total_steps)
  if opt_config.name == "adamw":
    core = optax.adamw(schedule, b1=opt_config.b1, b2=opt_config.b2, eps=opt_config.eps,
                       weight_decay=opt_config.weight_decay,
                       mask=decay_mask(params, opt_config.no_decay_regex))
  elif opt_config.name == "sgd":
    core = optax.sgd(schedule, momentum=opt_config.b1 or None)
  else:
    raise ValueError(f"config.optimizer.name={opt_config.name!r}: expected 'adamw' or 'sgd'")
  parts = [core]
  if opt_config.grad_clip_norm and opt_config.grad_clip_norm > 0:
    parts.insert(0, optax.clip_by_global_norm(opt_config.grad_clip_norm))
  trainable = optax.chain(*parts)
  mask = trainable_mask(params, freeze_regex)
  if not any(jax.tree.leaves(mask)):
    raise ValueError(f"train.freeze_regex={freeze_regex!r} freezes every parameter")
  labels = jax.tree.map(lambda t: TRAIN if t else FROZEN, mask)
  tx = optax.multi_transform({TRAIN: trainable, FROZEN: optax.set_to_zero()}, labels)
  if max_consecutive_skips > 0:
    tx = optax.apply_if_finite(tx, max_consecutive_errors=max_consecutive_skips)
  return tx, schedule
