"""Evaluation of a checkpoint (or of a pretrained model): test loss/perplexity, responses.jsonl,
and scores.

Everything lands in one output folder (default `WORKDIR/eval/step_<N>/`; required for a pretrained
model given by path):
  responses.jsonl   one line per test record: instruction, input, reference, response (+ per-example
                    exact_match, rouge_l, judge_score, judge_answer when a judge ran)
  multiple_choice.jsonl   per-question log-likelihoods and predictions (with --multiple_choice)
  summary.json      every number of the summary table (with a preference run: the TRL-named
                    preference metrics of its test pairs, `logps/accuracy`, `rewards/...`)
  lm_eval/results.json    lm-evaluation-harness' results (when the caller passes `lm_eval_fn`)
Files are written to a temporary name, then renamed, so nothing is ever half-written; every path
goes through etils.epath, so a gs:// workdir's results land in the bucket.
"""
import functools
import json
from collections.abc import Callable, Sequence
from typing import Any

from etils import epath
import jax
from flax import nnx
import ml_collections

from jaxift import fileio
from jaxift import workdir as workdir_lib
from jaxift.data import pipeline, preference, sources, tokenize
from jaxift.data.config import default_data_config
from jaxift.data.tokenizers import load_tokenizer
from jaxift.infer import judge as judge_lib
from jaxift.infer import metrics, multiple_choice, sampler
from jaxift.model import loading
from jaxift.model import loss as loss_lib
from jaxift.model.config import default_model_config

# (model, tokenizer, output folder) -> {metric name: value}, e.g. lm-evaluation-harness tasks.
ExtraEvalFn = Callable[[nnx.Module, Any, epath.Path], dict[str, Any]]
# The checkpoint step evaluated (None for a pretrained model) -> {metric name: value}: the
# preference metrics of the test pairs, which need the trainer's state (its reference model), so
# the caller (tools/evaluate.py, which may import the trainer) supplies them.
PreferenceFn = Callable[[int | None], dict[str, Any]]


# ------------------------------------------------------------------------------------------- files
def write_jsonl(path: str | epath.Path, rows: Sequence[dict]) -> None:
  fileio.write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_jsonl(path: str | epath.Path) -> list[dict]:
  return [json.loads(line) for line in epath.Path(path).read_text(encoding="utf-8").splitlines()
          if line.strip()]


# -------------------------------------------------------------------------------------- test loss
@functools.lru_cache(maxsize=8)
def _make_sums_fn(graphdef):
  @jax.jit
  def fn(state, batch):
    return loss_lib.forward_sums(nnx.merge(graphdef, state), batch)
  return fn


def test_loss(model: nnx.Module, tokenizer, config, *, batch_size: int = 8,
              max_batches: int | None = None) -> dict[str, float]:
  """Token-weighted cross entropy over the whole test split: sum(w * CE) / sum(w), and exp of it."""
  iterator = pipeline.make_iterator(config.data, tokenizer, split="test", batch_size=batch_size,
                                    shard_index=0, shard_count=1, seed=0, num_epochs=1)
  graphdef, state = nnx.split(model)
  sums_fn = _make_sums_fn(graphdef)
  totals = None
  for batches, batch in enumerate(iterator, start=1):
    sums = sums_fn(state, dict(batch))
    totals = sums if totals is None else jax.tree.map(lambda a, b: a + b, totals, sums)
    if max_batches and batches >= max_batches:
      break
  if totals is None or float(totals["weight_sum"]) == 0:
    raise ValueError("the test split has no trained tokens: cannot compute a test loss")
  summary = loss_lib.summarize(jax.device_get(totals))
  return {"test_loss": summary["loss"], "test_perplexity": summary["perplexity"],
          "test_tokens": int(summary["trained_tokens"])}


# ------------------------------------------------------------------------------------- responses
def entry_fields(record: dict, config, tokenizer, prompt: list[int]) -> dict[str, str]:
  """instruction/input/reference of a record (Alpaca fields when present, else the prompt text)."""
  if "instruction" in record:
    instruction, input_text = str(record["instruction"]), str(record.get("input", "") or "")
  else:
    instruction, input_text = tokenizer.decode(prompt, skip_special_tokens=True), ""
  return {"instruction": instruction, "input": input_text,
          "reference": tokenize.response_text(record, config.data)}


def generate_responses(model: nnx.Module, tokenizer, config, records: Sequence[dict], *,
                       max_new_tokens: int = 256, batch_size: int = 8, temperature: float = 0.0,
                       top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                       stop_strings: Sequence[str] | None = None) -> list[dict]:
  """[{instruction, input, reference, response}] for `records`, prompted exactly as in training."""
  prompts = [tokenize.prompt_tokens(r, config.data, tokenizer) for r in records]
  stop_ids = tokenize.stop_token_ids(tokenizer, config.data)
  responses = sampler.generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                               temperature=temperature, top_k=top_k, top_p=top_p,
                               stop_token_ids=stop_ids, stop_strings=stop_strings, seed=seed,
                               batch_size=min(batch_size, max(len(prompts), 1)), progress=True)
  return [{**entry_fields(r, config, tokenizer, p), "response": resp.strip()}
          for r, p, resp in zip(records, prompts, responses)]


def add_text_scores(entries: list[dict]) -> dict[str, float]:
  """Adds per-entry exact_match and rouge_l; returns their means."""
  for e in entries:
    e["exact_match"] = metrics.exact_match(e["response"], e["reference"])
    e["rouge_l"] = metrics.rouge_l(e["response"], e["reference"])
  n = max(len(entries), 1)
  return {"exact_match": sum(e["exact_match"] for e in entries) / n,
          "rouge_l": sum(e["rouge_l"] for e in entries) / n}


def judge_instruction(entry: dict) -> str:
  return entry["instruction"] + (f"\n\nInput:\n{entry['input']}" if entry.get("input") else "")


def add_judge_scores(entries: list[dict], client: judge_lib.JudgeClient, *,
                     concurrency: int = 1) -> dict[str, Any]:
  """Adds judge_score/judge_answer per entry; on an unreachable judge the scores so far stay in
  `entries` and the summary gets `judge_error` (the caller decides whether to fail)."""
  def keep(i: int, score, answer: str) -> None:
    entries[i]["judge_score"], entries[i]["judge_answer"] = score, answer

  judged = [{**e, "instruction": judge_instruction(e)} for e in entries]
  try:
    result = judge_lib.judge_responses(client, judged, on_result=keep, concurrency=concurrency)
    error = None
  except judge_lib.JudgeUnreachableError as e:
    result = judge_lib.summarize_scores(e.scores, e.answers)
    error = str(e)
  summary = {k: result[k] for k in ("judge_score", "judge_scored", "judge_unscored")}
  summary["judge_model"] = client.model
  if error:
    summary["judge_error"] = error
  return summary


def pairwise_references(entries: Sequence[dict], records: Sequence[dict],
                        against: str = "reference") -> list[str]:
  """What each response is compared with: 'reference' (the test record's answer), another field
  of the test records, or a path to another run's responses.jsonl (matched by instruction and
  input)."""
  if against.endswith(".jsonl"):
    theirs = {(r["instruction"], r.get("input", "")): r["response"] for r in read_jsonl(against)}
    missing = [e["instruction"] for e in entries if (e["instruction"], e["input"]) not in theirs]
    if missing:
      raise ValueError(f"{against} has no response for {len(missing)} of the {len(entries)} "
                       f"instructions, e.g. {missing[0][:80]!r}")
    return [theirs[(e["instruction"], e["input"])] for e in entries]
  if against == "reference":
    return [e["reference"] for e in entries]
  if not all(against in r for r in records):
    raise ValueError(f"pairwise reference field {against!r} is missing from some test records")
  return [str(r[against]) for r in records]


def add_pairwise_judgements(entries: list[dict], client: judge_lib.JudgeClient,
                            references: Sequence[str], *, concurrency: int = 1) -> dict[str, Any]:
  """Adds pairwise_preference (1 win, 1/2 tie, 0 loss, averaged over both orders) and
  pairwise_answers per entry; returns the win rate and counts."""
  def keep(i: int, preference, answers) -> None:
    entries[i]["pairwise_preference"], entries[i]["pairwise_answers"] = preference, answers

  judged = [{**e, "instruction": judge_instruction(e)} for e in entries]
  try:
    result = judge_lib.pairwise_win_rate(client, judged, references, on_result=keep,
                                         concurrency=concurrency)
  except judge_lib.JudgeUnreachableError as e:  # keep what was judged, as add_judge_scores does
    clear = [x["pairwise_preference"] for x in entries
             if x.get("pairwise_preference") is not None]
    return {"pairwise_win_rate": 100.0 * sum(clear) / len(clear) if clear else None,
            "pairwise_judged": len(clear), "pairwise_judge_model": client.model,
            "judge_error": str(e)}
  summary = {f"pairwise_{k}" if not k.startswith("pairwise") else k: result[k]
             for k in ("win_rate", "pairwise_judged", "pairwise_unparsed", "wins", "ties",
                       "losses")}
  summary["pairwise_judge_model"] = client.model
  return summary


def run_multiple_choice(model, tokenizer, config, path, *, prompt: str = "plain",
                        batch_size: int = 8) -> dict[str, Any]:
  """prompt='plain': 'Question: ...\\nAnswer:' + ' <choice>' (lm-eval style, for base models);
  'template': the question as the instruction of the training template + '<choice>'."""
  if prompt == "plain":
    return multiple_choice.evaluate_multiple_choice(model, tokenizer, path, batch_size=batch_size)
  if prompt != "template":
    raise ValueError(f"multiple_choice_prompt={prompt!r}; expected 'plain' or 'template'")
  to_tokens = lambda q: tokenize.prompt_tokens(
      {"instruction": q["question"], "input": "", "output": q["choices"][0]}, config.data,
      tokenizer)
  return multiple_choice.evaluate_multiple_choice(model, tokenizer, path, prompt_tokens_fn=to_tokens,
                                                  choice_prefix="", batch_size=batch_size)


def format_summary(summary: dict[str, Any]) -> str:
  """A two-column table of the scalar results."""
  rows = [(k, v) for k, v in summary.items() if not isinstance(v, (dict, list))]
  width = max((len(k) for k, _ in rows), default=0)
  lines = [f"{'metric'.ljust(width)}  value", f"{'-' * width}  {'-' * 12}"]
  for k, v in rows:
    shown = f"{v:.4f}" if isinstance(v, float) else ("-" if v is None else str(v))
    lines.append(f"{k.ljust(width)}  {shown}")
  return "\n".join(lines)


# ---------------------------------------------------------------------------- pretrained models
def load_pretrained(path: str, *, dtype: str = "float32", scan_layers: bool = True,
                    mesh: jax.sharding.Mesh | None = None) -> tuple[nnx.Module, Any]:
  """(model, tokenizer) of an HF directory or a .gguf file, without a training workdir."""
  model_config = default_model_config()
  model_config.path, model_config.dtype, model_config.scan_layers = str(path), dtype, scan_layers
  model, _ = loading.build_model(model_config, mesh=mesh)
  return model, load_tokenizer(str(path))


def pretrained_config(tokenizer, *, test_files: str = "",
                      template: str | None = None) -> ml_collections.ConfigDict:
  """A config whose `data` section reads `test_files` as the test split, prompted with `template`
  (default: the tokenizer's chat template when it has one, else Alpaca)."""
  config = ml_collections.ConfigDict()
  config.data = default_data_config()
  config.data.test_files = test_files
  config.data.template = template or ("tokenizer" if getattr(tokenizer, "chat_template", None)
                                      else "alpaca")
  return config


# ------------------------------------------------------------------------------------- the whole
def evaluate(workdir: str | epath.Path | None = None, *, step: str | int = "latest",
             model_path: str | None = None, test_files: str = "", template: str | None = None,
             output_dir: str | epath.Path | None = None, max_examples: int | None = None,
             max_new_tokens: int = 256, batch_size: int = 8, temperature: float = 0.0,
             top_k: int = 0, top_p: float = 1.0, seed: int = 0,
             stop_strings: Sequence[str] | None = None, compute_loss: bool = True,
             judge: judge_lib.JudgeClient | None = None,
             judge_concurrency: int = 1,
             pairwise_judge: judge_lib.JudgeClient | None = None,
             pairwise_against: str = "reference",
             multiple_choice_file: str | epath.Path | None = None,
             multiple_choice_prompt: str = "plain", lm_eval_fn: ExtraEvalFn | None = None,
             preference_fn: PreferenceFn | None = None, print_fn=print) -> dict[str, Any]:
  """Evaluates one checkpoint of `workdir`, or the pretrained model at `model_path` (an HF
  directory or a .gguf; its test data, if any, from `test_files`); returns the summary (also saved
  as summary.json).

  `pairwise_judge` compares each response with what `pairwise_against` names (see
  `pairwise_references`) in both orders (`judge.pairwise_win_rate`). `preference_fn(step)`'s
  metrics (the test pairs' `logps/accuracy`, `rewards/...`) join the summary when given. With
  preference pairs (`data.pairs`) the SFT test loss is not computed (the objective's loss is the
  preference metrics' `preference_loss`) and responses are scored against the chosen response.
  Raises judge.JudgeUnreachableError AFTER writing every file when the judge stopped answering
  (responses.jsonl then holds the judge scores obtained so far).
  """
  if (workdir is None) == (model_path is None):
    raise ValueError("pass exactly one of a training workdir or a pretrained model_path")
  if model_path is not None:
    if output_dir is None:
      raise ValueError("a pretrained model_path needs an output_dir")
    model, tokenizer = load_pretrained(model_path)
    config = pretrained_config(tokenizer, test_files=test_files, template=template)
    config.data.pairs = preference_fn is not None  # preference metrics read the test files as pairs
    out = epath.Path(output_dir)
    summary: dict[str, Any] = {"model_path": str(model_path)}
    has_test_data = bool(test_files)
  else:
    resolved = workdir_lib.resolve_checkpoint_step(workdir, step)
    model, tokenizer, config = workdir_lib.load_for_inference(workdir, step=resolved)
    out = epath.Path(output_dir) if output_dir else workdir_lib.eval_dir(workdir, resolved)
    summary = {"workdir": str(workdir), "step": resolved}
    has_test_data = True
  if preference_fn is not None:
    summary.update(preference_fn(None if model_path is not None else summary["step"]))
  pairs = bool(config.data.get("pairs", False))
  if has_test_data:
    if compute_loss and not pairs:  # a preference run's loss is preference_fn's preference_loss
      summary.update(test_loss(model, tokenizer, config, batch_size=batch_size))
    records = sources.load_records(config.data, "test", limit=max_examples)
    if pairs:  # generate for each pair's prompt; the reference answer is the chosen response
      records = [preference.split_pair(r, f"test record {i}")[0] for i, r in enumerate(records)]
    entries = generate_responses(model, tokenizer, config, records,
                                 max_new_tokens=max_new_tokens, batch_size=batch_size,
                                 temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                                 stop_strings=stop_strings)
    summary["num_examples"] = len(entries)
    summary.update(add_text_scores(entries))
    write_jsonl(out / "responses.jsonl", entries)  # before the judge: slow, and it may fail
    if judge is not None:
      summary.update(add_judge_scores(entries, judge, concurrency=judge_concurrency))
      write_jsonl(out / "responses.jsonl", entries)
    if pairwise_judge is not None and not summary.get("judge_error"):
      references = pairwise_references(entries, records, pairwise_against)
      summary.update(add_pairwise_judgements(entries, pairwise_judge, references,
                                             concurrency=judge_concurrency))
      write_jsonl(out / "responses.jsonl", entries)
  if multiple_choice_file:
    mc = run_multiple_choice(model, tokenizer, config, multiple_choice_file,
                             prompt=multiple_choice_prompt, batch_size=batch_size)
    write_jsonl(out / "multiple_choice.jsonl", mc.pop("per_question"))
    summary.update({f"mc_{k}": v for k, v in mc.items()})
  if lm_eval_fn is not None:
    summary.update({f"lm_eval/{k}": v for k, v in lm_eval_fn(model, tokenizer, out).items()})
  fileio.write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
  summary["output_dir"] = str(out)
  print_fn(format_summary(summary))
  if summary.get("judge_error"):
    raise judge_lib.JudgeUnreachableError(
        f"{summary['judge_error']}; partial results kept in {out}/responses.jsonl and "
        f"{out}/summary.json")
  return summary
