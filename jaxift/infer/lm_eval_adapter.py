"""lm-evaluation-harness on a loaded jaxift model: `JaxiftLM` implements lm-eval's `LM` interface.

lm-eval (the `[eval]` extra) is imported at the top of this module; only the evaluate tool imports
the module, so jaxift itself never needs lm-eval.

The adapter subclasses lm-eval's `TemplateLM`, so the text side is lm-eval's own code, exactly as
its `hf` backend runs it: `loglikelihood` splits (context, continuation) with
`TemplateLM._encode_pair` (trailing spaces of the context move to the continuation; the whole
string is tokenized and the context's token count cut off), an empty context is conditioned on
`prefix_token_id` (BOS, else EOS), `loglikelihood_rolling` uses `get_rolling_token_windows` +
`make_disjoint_window` with `max_length`, and the tasks compute `acc`/`acc_norm` (log-likelihood
divided by the choice's characters) themselves. What is ours is the model side:

  log-likelihoods  sequences sorted by length (longest first, as the hf backend), right-padded to a
                   length rounded up to `length_bucket` (few compilations), one jitted forward per
                   batch returning each target's log-probability and whether it was the argmax;
                   inputs longer than `max_length + 1` are cut from the left like the hf backend.
  generation       `jaxift.infer.sampler.generate_tokens` (left-padded, KV cache), grouped by
                   generation kwargs, prompts sorted by length; stops at EOS, then lm-eval's
                   `postprocess_generated_text` cuts at the `until` strings.
"""
import functools
import json
from collections.abc import Sequence
from typing import Any

from etils import epath
from flax import nnx
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from lm_eval import evaluator as lm_evaluator
from lm_eval import tasks as lm_tasks
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.models import utils as lm_model_utils
import numpy as np

from jaxift import fileio
from jaxift.infer import sampler


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _target_logprobs(graphdef, state, inputs_BxT, targets_BxT, segments_BxT):
  """(log p(target) [B, T], target == argmax [B, T]) from one uncached forward pass."""
  model = nnx.merge(graphdef, state)
  positions_BxT = jnp.broadcast_to(jnp.arange(inputs_BxT.shape[1], dtype=jnp.int32),
                                   inputs_BxT.shape)
  logits_BxTxV = model(inputs_BxT, positions_BxT, segments_BxT).astype(jnp.float32)
  # log p(target) = logit(target) - logsumexp(logits): no second [B, T, V] array of log-probs.
  target_logit_BxT = jnp.take_along_axis(logits_BxTxV, targets_BxT[..., None], axis=-1)[..., 0]
  target_BxT = target_logit_BxT - jax.nn.logsumexp(logits_BxTxV, axis=-1)
  greedy_BxT = jnp.argmax(logits_BxTxV, axis=-1) == targets_BxT
  return target_BxT, greedy_BxT


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


class JaxiftLM(TemplateLM):
  """lm-eval `LM` over a jaxift decoder and its tokenizer."""

  def __init__(self, model: nnx.Module, tokenizer, *, batch_size: int = 8,
               max_length: int | None = None, max_gen_toks: int = 256, length_bucket: int = 32,
               add_bos_token: bool | None = None, mesh: Mesh | None = None):
    """`mesh`: the log-likelihood batches are split over its ('data', 'fsdp') axes (the model's
    parameters keep the shardings they were loaded with); `batch_size` must divide evenly."""
    super().__init__()
    self.model, self.tokenizer = model, tokenizer
    self.batch_size = int(batch_size)
    self._max_length = int(max_length or model.cfg.max_position_embeddings)
    self.max_gen_toks, self.length_bucket = int(max_gen_toks), int(length_bucket)
    self.add_bos_token = add_bos_token
    self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    self.batch_sharding = None
    if mesh is not None:
      axes = tuple(a for a in ("data", "fsdp") if a in mesh.axis_names)
      shards = int(np.prod([mesh.shape[a] for a in axes]))
      if self.batch_size % shards:
        raise ValueError(f"batch_size {self.batch_size} is not a multiple of the {shards} "
                         f"batch shards of mesh axes {axes}")
      self.batch_sharding = NamedSharding(mesh, PartitionSpec(axes, None))

  # ------------------------------------------------------------------------ tokenizer (as hf)
  @property
  def eot_token_id(self) -> int:
    return self.tokenizer.eos_token_id

  @property
  def prefix_token_id(self) -> int:
    if self.tokenizer.bos_token_id is not None:
      return self.tokenizer.bos_token_id
    return self.tokenizer.eos_token_id

  @property
  def max_length(self) -> int:
    return self._max_length

  @property
  def tokenizer_name(self) -> str:
    return getattr(self.tokenizer, "name_or_path", "jaxift").replace("/", "__")

  def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
    kwargs = lm_model_utils._add_special_kwargs(add_special_tokens, self.add_bos_token)  # pylint: disable=protected-access
    if add_special_tokens is None and lm_model_utils.has_bos_prefix(
        string, self.tokenizer.decode(self.prefix_token_id)):
      kwargs["add_special_tokens"] = False
    return list(self.tokenizer.encode(string, **kwargs))

  def tok_decode(self, tokens, skip_special_tokens: bool = True) -> str:
    return self.tokenizer.decode(tokens, skip_special_tokens=skip_special_tokens)

  # ------------------------------------------------------------------------- log-likelihoods
  def token_loglikelihoods(self, pairs: Sequence[tuple[list[int], list[int]]]
                           ) -> list[tuple[float, bool]]:
    """(sum log p(continuation | context), continuation is the greedy one) per token pair."""
    order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
    graphdef, state = nnx.split(self.model)
    results: list[Any] = [None] * len(pairs)
    for start in range(0, len(order), self.batch_size):
      chunk = order[start:start + self.batch_size]
      seqs = []
      for i in chunk:
        context, continuation = pairs[i]
        if not context or not continuation:
          raise ValueError("log-likelihood needs a non-empty context and continuation")
        seqs.append((list(context) + list(continuation))[-(self.max_length + 1):])
      length = _round_up(max(len(s) - 1 for s in seqs), self.length_bucket)
      shape = (self.batch_size, length)  # the last chunk keeps the shape: one compilation
      inputs, targets = np.full(shape, self.pad_id, np.int32), np.zeros(shape, np.int32)
      segments = np.zeros(shape, np.int32)
      for b, seq in enumerate(seqs):
        inputs[b, :len(seq) - 1], targets[b, :len(seq) - 1] = seq[:-1], seq[1:]
        segments[b, :len(seq) - 1] = 1
      if self.batch_sharding is not None:  # each device gets its rows: no replicated batch
        inputs, targets, segments = jax.device_put((inputs, targets, segments),
                                                   self.batch_sharding)
      logp_BxT, greedy_BxT = jax.device_get(
          _target_logprobs(graphdef, state, inputs, targets, segments))
      for b, (i, seq) in enumerate(zip(chunk, seqs)):
        end = len(seq) - 1
        cont = slice(end - len(pairs[i][1]), end)
        results[i] = (float(np.sum(logp_BxT[b, cont])), bool(np.all(greedy_BxT[b, cont])))
    return results

  def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
    del disable_tqdm, kwargs
    results = self.token_loglikelihoods([(ctx, cont) for _, ctx, cont in requests])
    for (key, _, _), answer in zip(requests, results):
      if key is not None:
        self.cache_hook.add_partial("loglikelihood", key, answer)
    return results

  def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
    del disable_tqdm
    windows, owners = [], []
    for index, (text,) in enumerate(req.args for req in requests):
      for window in lm_utils.get_rolling_token_windows(
          token_list=self.tok_encode(text), prefix_token=self.prefix_token_id,
          max_seq_len=self.max_length, context_len=1):
        windows.append(lm_utils.make_disjoint_window(window))
        owners.append(index)
    totals = [0.0] * len(requests)
    for owner, (logprob, _) in zip(owners, self.token_loglikelihoods(windows)):
      totals[owner] += logprob
    for req, total in zip(requests, totals):
      self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
    return totals

  # ------------------------------------------------------------------------------ generation
  def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
    del disable_tqdm
    eos_text = self.tok_decode(self.eot_token_id, skip_special_tokens=False)
    groups: dict[str, list[int]] = {}
    for index, req in enumerate(requests):
      groups.setdefault(json.dumps(req.args[1], sort_keys=True, default=str), []).append(index)
    results: list[Any] = [None] * len(requests)
    for indices in groups.values():
      kwargs = lm_model_utils.normalize_gen_kwargs(dict(requests[indices[0]].args[1]),
                                                   self.max_gen_toks)
      until = lm_model_utils.handle_stop_sequences(kwargs.pop("until", None), eos=eos_text)
      max_gen_toks = int(kwargs.pop("max_gen_toks"))
      temperature = float(kwargs.get("temperature", 0.0)) if kwargs.get("do_sample") else 0.0
      max_context = self.max_length - max_gen_toks
      prompts = [self.tok_encode(requests[i].args[0])[-max_context:] for i in indices]
      new_tokens = sampler.generate_tokens_sorted(
          self.model, prompts, max_new_tokens=max_gen_toks, temperature=temperature,
          top_k=int(kwargs.get("top_k", 0) or 0), top_p=float(kwargs.get("top_p", 1.0) or 1.0),
          stop_token_ids=[self.eot_token_id], pad_id=self.pad_id, batch_size=self.batch_size)
      for i, tokens in zip(indices, new_tokens):
        text = lm_model_utils.postprocess_generated_text(self.tok_decode(tokens), until, None)
        results[i] = text
        self.cache_hook.add_partial("generate_until", requests[i].args, text)
    return results


def run_tasks(lm: JaxiftLM, tasks: Sequence[str], *, include_path: str | None = None,
              limit: int | float | None = None, num_fewshot: int | None = None,
              output_dir: str | epath.Path | None = None, log_samples: bool = False,
              random_seed: int = 0) -> dict:
  """lm-eval's `simple_evaluate` on `lm`; writes the results JSON to `<output_dir>/lm_eval/`."""
  task_manager = lm_tasks.TaskManager(include_path=include_path)
  results = lm_evaluator.simple_evaluate(
      model=lm, tasks=list(tasks), num_fewshot=num_fewshot, limit=limit,
      task_manager=task_manager, log_samples=log_samples, random_seed=random_seed,
      numpy_random_seed=random_seed, torch_random_seed=random_seed, fewshot_random_seed=random_seed,
      bootstrap_iters=0)
  if output_dir is not None:
    fileio.write_text(epath.Path(output_dir) / "lm_eval" / "results.json",
                      json.dumps(results, indent=2, default=str, ensure_ascii=False) + "\n")
  return results


def metric_table(results: dict) -> dict[str, float]:
  """{'<task>/<metric>': value} of the numeric metrics in lm-eval's results (stderr left out)."""
  table = {}
  for task, metrics in results.get("results", {}).items():
    for key, value in metrics.items():
      name = key.split(",")[0]
      if isinstance(value, (int, float)) and not isinstance(value, bool) \
          and "stderr" not in name and name != "alias":
        table[f"{task}/{name}"] = float(value)
  return table
