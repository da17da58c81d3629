"""The notebook API, exposed lazily at the top level (`jaxift.load_checkpoint` etc.):

  model, tokenizer, config = jaxift.load_checkpoint("runs/qs", step="best")
  jaxift.generate(model, tokenizer, [{"instruction": "Name a prime."}], config=config)
  jaxift.plot_metrics("runs/qs")
"""
from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt

from jaxift import workdir as workdir_lib
from jaxift.data import tokenize
from jaxift.infer import sampler


def load_checkpoint(workdir: str, step: str | int = "best") -> tuple[Any, Any, Any]:
  """(model, tokenizer, config) of a training workdir at 'best', 'latest' or an integer step.

  'best' is the lowest validation loss among kept checkpoints; a run without validation has no
  best, so ask for 'latest' there. Errors name the workdir and the steps it holds.
  """
  resolved = workdir_lib.resolve_checkpoint_step(workdir, step)
  return workdir_lib.load_for_inference(workdir, step=resolved)


def generate(model, tokenizer, prompts: Sequence[str | Sequence[int] | dict], *, config=None,
             max_new_tokens: int = 128, temperature: float = 0.0, top_k: int = 0,
             top_p: float = 1.0, stop_strings: Sequence[str] | None = None, seed: int = 0,
             batch_size: int | None = None) -> list[str]:
  """Responses to `prompts`: records (dicts such as {'instruction', 'input'}, templated exactly as
  in training, needs `config`), token id lists, or already templated strings.

  Stops on EOS, the tokenizer's end-of-turn tokens and, with `config`, the template's end tokens.
  """
  stop_ids = tokenize.stop_token_ids(tokenizer, None if config is None else config.data)
  token_prompts = []
  for i, prompt in enumerate(prompts):
    if isinstance(prompt, dict):
      if config is None:
        raise ValueError(f"prompt {i} is a record; pass config= (from load_checkpoint) so it is "
                         "templated as in training")
      # prompt_tokens needs a (non-empty) response to parse the record; only the prompt is used.
      record = {"output": "-", **prompt} if "instruction" in prompt else prompt
      token_prompts.append(tokenize.prompt_tokens(record, config.data, tokenizer))
    else:
      token_prompts.append(prompt)
  return sampler.generate(model, tokenizer, token_prompts, max_new_tokens=max_new_tokens,
                          temperature=temperature, top_k=top_k, top_p=top_p,
                          stop_token_ids=stop_ids, stop_strings=stop_strings, seed=seed,
                          batch_size=batch_size)


def plot_metrics(workdir: str, metric: str = "loss", ax=None):
  """Train and validation `metric` against the step from `workdir/metrics.jsonl` (as the seeds
  plot their loss curves); returns the matplotlib Figure."""
  rows = workdir_lib.read_metrics(workdir)
  if ax is None:
    fig, ax = plt.subplots(figsize=(6, 3.5))
  else:
    fig = ax.figure
  plotted = 0
  for split, style in (("train", "-"), ("validation", "-.o")):
    points = [(r["step"], r[metric]) for r in rows if r.get("split") == split and metric in r]
    if points:
      steps, values = zip(*points)
      ax.plot(steps, values, style, label=f"{split} {metric}")
      plotted += 1
  if not plotted:
    raise ValueError(f"{workdir}/metrics.jsonl has no {metric!r} for the train or validation split")
  ax.set_xlabel("step")
  ax.set_ylabel(metric)
  ax.legend()
  fig.tight_layout()
  return fig
