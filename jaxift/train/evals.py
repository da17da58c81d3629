"""Evaluations plugged into the trainer from config (big_vision's `evals`).

`config.evals` maps a name to a registered evaluator type:

    c.evals.validation = "validation_loss"     # every train.eval_every steps and at the end
    c.evals.generation = "exact_match"         # before and after training (eval.generate_examples)

Each evaluator is a small object with a `name`, a period (`due(step, ...)`) and
`run(params) -> metrics | None`; the trainer writes what `run` returns under the split
`metrics_split(label)` and never changes for a new one. A new kind (preference metrics, lm-eval
tasks) is a class decorated with `@register("type")` reading its own settings from the config.

One evaluator may `select_best`: its `loss` picks the best checkpoint and drives early stopping.
"""
import dataclasses
from typing import Any, Callable

from absl import logging
import jax
import ml_collections

from jaxift.data import mixture
from jaxift.data.pipeline import make_iterator
from jaxift.infer import generation_check
from jaxift.model import loss as loss_lib
from jaxift.model import preference as pref_lib
from jaxift.train import host_batches
from jaxift.train.state import TrainState


@dataclasses.dataclass
class Context:
  """What an evaluator may use: the run's config, tokenizer and train state."""
  config: ml_collections.ConfigDict
  tokenizer: Any
  state: TrainState


_REGISTRY: dict[str, Callable[[str, Context], Any]] = {}


def register(type_name: str):
  def wrap(cls):
    _REGISTRY[type_name] = cls
    return cls
  return wrap


def from_config(config: ml_collections.ConfigDict, context: Context) -> list[Any]:
  """The evaluators `config.evals` names, in config order; an unknown type names the known ones."""
  evaluators = []
  for name, type_name in config.get("evals", {}).items():
    if not type_name:  # '' switches an evaluator of a base config off
      continue
    if type_name not in _REGISTRY:
      raise ValueError(f"config.evals.{name}={type_name!r} is not a known evaluator type; "
                       f"known: {sorted(_REGISTRY)}")
    evaluators.append(_REGISTRY[type_name](name, context))
  if sum(bool(getattr(e, "select_best", False)) for e in evaluators) > 1:
    raise ValueError("config.evals: at most one evaluator may select the best checkpoint")
  return evaluators


def sum_over_batches(eval_fn: Callable, state: TrainState, batches, rows: int,
                     max_batches: int = 0) -> dict | None:
  """Loss sums of `eval_fn` added over a pass of host batches (every process in lockstep, the
  first `max_batches` only when > 0), fetched to the host once; None without a batch."""
  totals = None
  for i, host_batch in enumerate(host_batches.lockstep(batches, rows)):
    if max_batches and i >= max_batches:
      break
    sums = eval_fn(host_batches.to_global(host_batches.same_length(host_batch),
                                          state.batch_sharding))
    totals = sums if totals is None else jax.tree.map(lambda a, b: a + b, totals, sums)
  return None if totals is None else jax.device_get(totals)


@register("validation_loss")
class ValidationLoss:
  """Token-weighted loss, perplexity and accuracy over the validation split (or its first
  `eval.max_batches` batches), every `train.eval_every` steps and at the end. With a weighted
  mixture, each component's own validation loss too (`<component>/loss`, ...)."""
  select_best = True

  def __init__(self, name: str, context: Context):
    self.name, self.context = name, context
    config = context.config
    self.every = int(config.train.eval_every)
    self.rows = int(config.eval.batch_size or config.train.global_batch_size)
    batch_shards = context.state.mesh.shape["data"] * context.state.mesh.shape["fsdp"]
    if self.rows % (jax.process_count() * batch_shards):
      raise ValueError(f"eval.batch_size={self.rows} must be a multiple of {batch_shards} "
                       f"(data*fsdp) times {jax.process_count()} processes")

  def due(self, step: int, *, first: bool, last: bool) -> bool:
    return not first and (last or (self.every > 0 and step % self.every == 0))

  def metrics_split(self, label: str) -> str:
    del label
    return "validation"

  def run(self, params: Any) -> dict[str, float] | None:
    metrics = self._loss(params, component=None)
    components = mixture.components(self.context.config.data)
    if metrics is not None and len(components) > 1:
      for c in components:
        part = self._loss(params, component=c.name)
        if part is not None:
          metrics.update({f"{c.name}/{k}": v for k, v in part.items()})
    return metrics

  def _loss(self, params: Any, component: str | None) -> dict[str, float] | None:
    config, state = self.context.config, self.context.state
    per_process = self.rows // jax.process_count()
    try:
      batches = make_iterator(config.data, self.context.tokenizer, split="validation",
                              batch_size=per_process, shard_index=jax.process_index(),
                              shard_count=jax.process_count(), seed=config.train.seed,
                              num_epochs=1, component=component)
    except ValueError as e:  # e.g. an empty validation split
      logging.warning("no validation%s: %s", f" for {component}" if component else "", e)
      return None
    totals = sum_over_batches(lambda batch: state.eval_step(params, state.rest, batch), state,
                              batches, per_process, config.eval.max_batches)
    return None if totals is None else loss_lib.summarize(totals)


@register("exact_match")
class ExactMatch:
  """Greedy generations on `eval.generate_examples` held-out records, scored by exact match:
  before training (a fresh run) and after it."""
  select_best = False

  def __init__(self, name: str, context: Context):
    self.name, self.context = name, context
    self.examples = int(context.config.eval.generate_examples)
    self.last_examples: list[dict[str, Any]] = []

  def due(self, step: int, *, first: bool, last: bool) -> bool:
    del step
    return self.examples > 0 and (first or last)

  def metrics_split(self, label: str) -> str:
    return f"generation_{label}"

  def run(self, params: Any) -> dict[str, float]:
    out = generation_check.exact_match_eval(self.context.state.model(params),
                                            self.context.tokenizer, self.context.config,
                                            self.examples)
    self.last_examples = out["examples"]
    return {"exact_match": out["exact_match"],
            "exact_match_normalized": out["exact_match_normalized"], "examples": self.examples}

  def report(self, label: str, metrics: dict[str, float]) -> str:
    """The console lines for one run: the score and a few generations."""
    config = self.context.config
    return (f"exact match {label} fine-tuning: {metrics['exact_match']:.3f} on {self.examples} "
            f"held-out examples (normalized for case and punctuation: "
            f"{metrics['exact_match_normalized']:.3f})\n" + generation_check.format_examples(
                self.last_examples, config.eval.show_generations))


@register("preference")
class PreferenceMetrics(ValidationLoss):
  """The preference objective's loss and TRL-named metrics (`rewards/chosen`, `rewards/rejected`,
  `rewards/margins`, `rewards/accuracies`, `logps/chosen`, `logps/rejected`, and `logps/accuracy`:
  the share of pairs whose chosen response has the higher policy log-prob) over the validation
  pairs, at step 0 too (before any update), every `train.eval_every` steps and at the end.
  `eval.batch_size` counts pairs. Its `loss` selects the best checkpoint."""
  select_best = True

  def __init__(self, name: str, context: Context):
    super().__init__(name, context)
    if context.state.preference_eval_step is None:
      raise ValueError(f"config.evals.{name}='preference' needs a preference objective "
                       "(train.objective = 'dpo', 'orpo' or 'simpo')")

  def due(self, step: int, *, first: bool, last: bool) -> bool:
    return first or last or (self.every > 0 and step % self.every == 0)

  def run(self, params: Any) -> dict[str, float] | None:
    split = str(self.context.config.eval.get("preference_split", "validation"))
    return preference_metrics(self.context.config, self.context.tokenizer, self.context.state,
                              params, split=split, rows=self.rows)


def preference_metrics(config: ml_collections.ConfigDict, tokenizer: Any, state: TrainState,
                       params: Any, *, split: str, rows: int,
                       max_batches: int | None = None) -> dict[str, float] | None:
  """Preference loss and metrics of `params` over a split's pairs (`rows` pairs per global
  batch); what `tools/evaluate.py` can call on the test split with a trainer-built state."""
  per_process = rows // jax.process_count()
  max_batches = config.eval.max_batches if max_batches is None else max_batches
  try:
    batches = make_iterator(config.data, tokenizer, split=split, batch_size=per_process,
                            shard_index=jax.process_index(), shard_count=jax.process_count(),
                            seed=config.train.seed, num_epochs=1)
  except ValueError as e:
    logging.warning("no %s pairs: %s", split, e)
    return None
  totals = sum_over_batches(lambda batch: state.preference_eval_step(params, state.rest, batch),
                            state, batches, 2 * per_process, max_batches)
  return None if totals is None else pref_lib.summarize(totals)
