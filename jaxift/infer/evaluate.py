"""Evaluation of a checkpoint: test loss/perplexity, responses.jsonl, and scores.

Everything lands in one output folder (default `WORKDIR/eval/step_<N>/`):
  responses.jsonl   one line per test record: instruction, input, reference, response (+ per-example
                    exact_match, rouge_l, judge_score, judge_answer when a judge ran)
  multiple_choice.jsonl   per-question log-likelihoods and predictions (with --multiple_choice)
  summary.json      every number of the summary table
Files are written to a temporary name, then renamed, so nothing is ever half-written; every path
goes through etils.epath, so a gs:// workdir's results land in the bucket.
"""
import functools
import json
from collections.abc import Sequence
from typing import Any

from etils import epath
import jax
from flax import nnx

from jaxift import fileio
from jaxift import workdir as workdir_lib
from jaxift.data import pipeline, sources, tokenize
from jaxift.infer import judge as judge_lib
from jaxift.infer import metrics, multiple_choice, sampler
from jaxift.model import loss as loss_lib


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
                               batch_size=min(batch_size, max(len(prompts), 1)))
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


def add_judge_scores(entries: list[dict], client: judge_lib.JudgeClient) -> dict[str, Any]:
  """Adds judge_score/judge_answer per entry; on an unreachable judge the scores so far stay in
  `entries` and the summary gets `judge_error` (the caller decides whether to fail)."""
  def keep(i: int, score, answer: str) -> None:
    entries[i]["judge_score"], entries[i]["judge_answer"] = score, answer

  judged = [{**e, "instruction": judge_instruction(e)} for e in entries]
  try:
    result = judge_lib.judge_responses(client, judged, on_result=keep)
    error = None
  except judge_lib.JudgeUnreachableError as e:
    result = judge_lib.summarize_scores(e.scores, e.answers)
    error = str(e)
  summary = {k: result[k] for k in ("judge_score", "judge_scored", "judge_unscored")}
  summary["judge_model"] = client.model
  if error:
    summary["judge_error"] = error
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


# ------------------------------------------------------------------------------------- the whole
def format_summary(summary: dict[str, Any]) -> str:
  """A two-column table of the scalar results."""
  rows = [(k, v) for k, v in summary.items() if not isinstance(v, (dict, list))]
  width = max((len(k) for k, _ in rows), default=0)
  lines = [f"{'metric'.ljust(width)}  value", f"{'-' * width}  {'-' * 12}"]
  for k, v in rows:
    shown = f"{v:.4f}" if isinstance(v, float) else ("-" if v is None else str(v))
    lines.append(f"{k.ljust(width)}  {shown}")
  return "\n".join(lines)


def evaluate(workdir: str | epath.Path, *, step: str | int = "latest",
             output_dir: str | epath.Path | None = None, max_examples: int | None = None,
             max_new_tokens: int = 256, batch_size: int = 8, temperature: float = 0.0,
             top_k: int = 0, top_p: float = 1.0, seed: int = 0,
             stop_strings: Sequence[str] | None = None, compute_loss: bool = True,
             judge: judge_lib.JudgeClient | None = None,
             multiple_choice_file: str | epath.Path | None = None,
             multiple_choice_prompt: str = "plain", print_fn=print) -> dict[str, Any]:
  """Evaluates one checkpoint of `workdir`; returns the summary (also saved as summary.json).

  Raises judge.JudgeUnreachableError AFTER writing every file when the judge stopped answering
  (responses.jsonl then holds the judge scores obtained so far).
  """
  resolved = workdir_lib.resolve_checkpoint_step(workdir, step)
  model, tokenizer, config = workdir_lib.load_for_inference(workdir, step=resolved)
  out = epath.Path(output_dir) if output_dir else workdir_lib.eval_dir(workdir, resolved)
  summary: dict[str, Any] = {"workdir": str(workdir), "step": resolved}
  if compute_loss:
    summary.update(test_loss(model, tokenizer, config, batch_size=batch_size))
  records = sources.load_records(config.data, "test", limit=max_examples)
  entries = generate_responses(model, tokenizer, config, records, max_new_tokens=max_new_tokens,
                               batch_size=batch_size, temperature=temperature, top_k=top_k,
                               top_p=top_p, seed=seed, stop_strings=stop_strings)
  summary["num_examples"] = len(entries)
  summary.update(add_text_scores(entries))
  write_jsonl(out / "responses.jsonl", entries)  # before the judge: slow, and it may fail
  if judge is not None:
    summary.update(add_judge_scores(entries, judge))
    write_jsonl(out / "responses.jsonl", entries)
  if multiple_choice_file:
    mc = run_multiple_choice(model, tokenizer, config, multiple_choice_file,
                             prompt=multiple_choice_prompt, batch_size=batch_size)
    write_jsonl(out / "multiple_choice.jsonl", mc.pop("per_question"))
    summary.update({f"mc_{k}": v for k, v in mc.items()})
  fileio.write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
  summary["output_dir"] = str(out)
  print_fn(format_summary(summary))
  if summary.get("judge_error"):
    raise judge_lib.JudgeUnreachableError(
        f"{summary['judge_error']}; partial results kept in {out}/responses.jsonl and "
        f"{out}/summary.json")
  return summary
