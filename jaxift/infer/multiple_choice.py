"""Multiple choice by log-likelihood (MMLU-style, as lm-evaluation-harness scores it).

Each question's prompt is followed by each choice as a continuation; the model's summed log
probability of the continuation tokens ranks the choices. Two accuracies:
  accuracy       argmax of the summed log-likelihood;
  accuracy_norm  argmax of the log-likelihood divided by the choice's length in characters (its
                 leading delimiter not counted), lm-evaluation-harness' `acc_norm`, which removes
                 the bias towards short choices.
The plain prompt splits (context, continuation) as lm-eval does (`lm_eval_split`): trailing spaces
of the context move to the continuation, the whole text is tokenized and the context's token count
cut off. The training-template prompt keeps the training boundary instead: the template's prompt
tokens, then the choice tokenized on its own (docs: masking rule 2). For lm-eval's tasks
themselves, use `jaxift.infer.lm_eval_adapter` (tools/evaluate.py --lm_eval_tasks).

Question file: JSONL, one object per line with `question` (str), `choices` (list of >= 2 str) and
`answer`: the 0-based index, a letter ("B"), or the text of the correct choice.
"""
import functools
import json
import pathlib
import string
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxift.infer.sampler import encode_prompt

# (context tokens, continuation tokens) pairs -> summed log-likelihood of each continuation.
LoglikelihoodFn = Callable[[Sequence[tuple[list[int], list[int]]]], list[float]]
# (question, choice text) -> (context tokens, continuation tokens).
PairTokensFn = Callable[[dict, str], tuple[list[int], list[int]]]


def lm_eval_split(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
  """lm-evaluation-harness' causal `_encode_pair`: (context tokens, continuation tokens)."""
  n_spaces = len(context) - len(context.rstrip())
  if n_spaces:
    context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
  whole = encode_prompt(tokenizer, context + continuation)
  context_tokens = encode_prompt(tokenizer, context)
  return context_tokens, whole[len(context_tokens):]


def _answer_index(answer, choices: list[str], where: str) -> int:
  if isinstance(answer, bool):
    raise ValueError(f"{where}: 'answer' must be an index, a letter or a choice text, got {answer!r}")
  if isinstance(answer, int):
    index = answer
  elif isinstance(answer, str) and len(answer.strip()) == 1 and answer.strip().upper() in \
      string.ascii_uppercase and answer not in choices:
    index = string.ascii_uppercase.index(answer.strip().upper())
  elif isinstance(answer, str) and answer in choices:
    index = choices.index(answer)
  else:
    raise ValueError(f"{where}: 'answer' {answer!r} is not an index, a letter or one of the "
                     f"choices {choices}")
  if not 0 <= index < len(choices):
    raise ValueError(f"{where}: 'answer' {answer!r} is out of range for {len(choices)} choices")
  return index


def parse_question(obj, where: str) -> dict:
  """{'question', 'choices', 'answer' (int index)} from one JSON object; errors name `where`."""
  if not isinstance(obj, dict):
    raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
  for key in ("question", "choices", "answer"):
    if key not in obj:
      raise ValueError(f"{where}: missing key {key!r} (need question, choices, answer)")
  question, choices = obj["question"], obj["choices"]
  if not isinstance(question, str):
    raise ValueError(f"{where}: 'question' must be a string")
  if (not isinstance(choices, list) or len(choices) < 2
      or not all(isinstance(c, str) and c for c in choices)):
    raise ValueError(f"{where}: 'choices' must be a list of at least 2 non-empty strings")
  return {"question": question, "choices": choices,
          "answer": _answer_index(obj["answer"], choices, where)}


def load_questions(path: str | pathlib.Path) -> list[dict]:
  questions = []
  with open(path, encoding="utf-8") as f:
    for line_no, line in enumerate(f, 1):
      if not line.strip():
        continue
      where = f"{path}:{line_no}"
      try:
        obj = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not valid JSON ({e})") from e
      questions.append(parse_question(obj, where))
  if not questions:
    raise ValueError(f"{path}: no questions found")
  return questions


def plain_prompt(question: dict) -> str:
  return f"Question: {question['question']}\nAnswer:"


def score_questions(questions: Sequence[dict], pair_tokens_fn: PairTokensFn,
                    loglikelihood_fn: LoglikelihoodFn) -> dict:
  """Accuracies and per-question log-likelihoods; `pair_tokens_fn(question, choice)` gives the
  (context, continuation) tokens of each choice."""
  pairs = [pair_tokens_fn(question, choice) for question in questions
           for choice in question["choices"]]
  loglikelihoods = loglikelihood_fn(pairs)
  per_question, correct, correct_norm = [], 0, 0
  cursor = 0
  for question in questions:
    n = len(question["choices"])
    lls = [float(x) for x in loglikelihoods[cursor:cursor + n]]
    cursor += n
    normed = [ll / max(len(c), 1) for ll, c in zip(lls, question["choices"])]
    pred, pred_norm = int(np.argmax(lls)), int(np.argmax(normed))
    correct += pred == question["answer"]
    correct_norm += pred_norm == question["answer"]
    per_question.append({**question, "loglikelihoods": lls, "prediction": pred,
                         "prediction_norm": pred_norm})
  n_q = max(len(questions), 1)
  return {"accuracy": correct / n_q, "accuracy_norm": correct_norm / n_q,
          "num_questions": len(questions), "per_question": per_question}


# ----------------------------------------------------------------------- model log-likelihoods
@functools.partial(jax.jit, static_argnames=("graphdef",))
def _sequence_loglikelihood(graphdef, state, inputs_BxT, targets_BxT, positions_BxT,
                            segments_BxT, weights_BxT):
  model = nnx.merge(graphdef, state)
  logits_BxTxV = model(inputs_BxT, positions_BxT, segments_BxT).astype(jnp.float32)
  logprobs_BxTxV = jax.nn.log_softmax(logits_BxTxV, axis=-1)
  target_BxT = jnp.take_along_axis(logprobs_BxTxV, targets_BxT[..., None], axis=-1)[..., 0]
  return jnp.sum(target_BxT * weights_BxT, axis=-1)


def model_loglikelihood_fn(model: nnx.Module, *, batch_size: int = 8, length_bucket: int = 32,
                           pad_id: int = 0) -> LoglikelihoodFn:
  """Summed log p(continuation | context) from full forward passes, right-padded in batches.

  Lengths are rounded up to `length_bucket` and the last batch is filled with empty rows, so few
  shapes are compiled.
  """

  def loglikelihood(pairs: Sequence[tuple[list[int], list[int]]]) -> list[float]:
    graphdef, state = nnx.split(model)
    results = []
    for start in range(0, len(pairs), batch_size):
      chunk = pairs[start:start + batch_size]
      seqs = [list(c) + list(x) for c, x in chunk]
      for (context, continuation) in chunk:
        if not context or not continuation:
          raise ValueError("log-likelihood needs a non-empty context and continuation")
      length = -(-max(len(s) - 1 for s in seqs) // length_bucket) * length_bucket
      shape = (batch_size, length)
      inputs, targets = np.full(shape, pad_id, np.int32), np.full(shape, pad_id, np.int32)
      positions, segments = np.zeros(shape, np.int32), np.zeros(shape, np.int32)
      weights = np.zeros(shape, np.float32)
      for b, ((context, continuation), seq) in enumerate(zip(chunk, seqs)):
        n = len(seq) - 1
        inputs[b, :n], targets[b, :n] = seq[:-1], seq[1:]
        positions[b, :n], segments[b, :n] = np.arange(n), 1
        weights[b, n - len(continuation):n] = 1.0  # targets that are continuation tokens
      sums = _sequence_loglikelihood(graphdef, state, inputs, targets, positions, segments,
                                     weights)
      results += np.asarray(sums)[:len(chunk)].tolist()
    return results

  return loglikelihood


def evaluate_multiple_choice(model: nnx.Module, tokenizer, questions_path: str | pathlib.Path, *,
                             prompt_tokens_fn: Callable[[dict], list[int]] | None = None,
                             choice_prefix: str = " ", batch_size: int = 8) -> dict:
  """Accuracy of `model` on a question file. Default prompt: 'Question: ...\\nAnswer:' followed by
  `choice_prefix + choice`, split as lm-eval splits it; with `prompt_tokens_fn` (the training
  template) the choice is tokenized alone after those tokens."""
  questions = load_questions(questions_path)
  if prompt_tokens_fn is None:
    pair_tokens_fn = lambda q, choice: lm_eval_split(tokenizer, plain_prompt(q),
                                                     choice_prefix + choice)
  else:
    pair_tokens_fn = lambda q, choice: (prompt_tokens_fn(q), list(
        tokenizer.encode(choice_prefix + choice, add_special_tokens=False)))
  pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
  return score_questions(questions, pair_tokens_fn,
                         model_loglikelihood_fn(model, batch_size=batch_size, pad_id=pad_id))
