"""Multiple choice by log-likelihood: file parsing, scoring rule, and batched model likelihoods."""
import json

import numpy as np
import pytest

from jaxift.infer import multiple_choice as mc
from tests.infer.conftest import full_forward_logits


def test_scoring_raw_and_length_normalized():
  questions = [
      # raw argmax picks "a" (-2 > -6); per byte: "a" -2/1, "bbbbbb" -6/6 = -1 -> picks index 1
      {"question": "q1", "choices": ["a", "bbbbbb"], "answer": 1},
      {"question": "q2", "choices": ["yes", "no", "maybe"], "answer": 2},
  ]
  table = {("q1", "a"): -2.0, ("q1", "bbbbbb"): -6.0,
           ("q2", "yes"): -9.0, ("q2", "no"): -8.0, ("q2", "maybe"): -1.0}
  # Tokens carry the text so the stub can look the likelihood up: context = question chars.
  prompt = lambda q: [ord(c) for c in q["question"]]
  cont = lambda text: [ord(c) for c in text]
  fn = lambda pairs: [table[("".join(map(chr, c)), "".join(map(chr, x)))] for c, x in pairs]
  result = mc.score_questions(questions, prompt, cont, fn)
  assert result["accuracy"] == pytest.approx(0.5)  # q1 wrong, q2 right
  assert result["accuracy_norm"] == pytest.approx(1.0)
  assert [q["prediction"] for q in result["per_question"]] == [0, 2]
  assert [q["prediction_norm"] for q in result["per_question"]] == [1, 2]


def test_load_questions_answer_forms_and_errors(tmp_path):
  path = tmp_path / "mc.jsonl"
  rows = [{"question": "a", "choices": ["x", "y", "z"], "answer": 2},
          {"question": "b", "choices": ["x", "y"], "answer": "B"},
          {"question": "c", "choices": ["red", "blue"], "answer": "blue"}]
  path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
  assert [q["answer"] for q in mc.load_questions(path)] == [2, 1, 1]
  bad = tmp_path / "bad.jsonl"
  bad.write_text(json.dumps(rows[0]) + "\n" + json.dumps({"question": "q", "choices": ["x"],
                                                          "answer": 0}) + "\n")
  with pytest.raises(ValueError, match=r"bad.jsonl:2: 'choices' must be a list of at least 2"):
    mc.load_questions(bad)
  bad.write_text('{"question": "q", "choices": ["x", "y"]}\n')
  with pytest.raises(ValueError, match=r"bad.jsonl:1: missing key 'answer'"):
    mc.load_questions(bad)
  bad.write_text('{"question": "q", "choices": ["x", "y"], "answer": 5}\n')
  with pytest.raises(ValueError, match=r"bad.jsonl:1: 'answer' 5 is out of range"):
    mc.load_questions(bad)
  bad.write_text('not json\n')
  with pytest.raises(ValueError, match=r"bad.jsonl:1: not valid JSON"):
    mc.load_questions(bad)


def test_batched_loglikelihood_matches_unpadded_forward(tiny_decoder):
  pairs = [([5, 6, 7], [8, 9]), ([1], [2, 3, 4, 5]), ([100, 101, 102, 103, 104], [7]),
           ([3, 3], [3])]
  ours = mc.model_loglikelihood_fn(tiny_decoder, batch_size=3, length_bucket=8)(pairs)
  for (context, continuation), value in zip(pairs, ours):
    seq = context + continuation
    n = len(seq) - 1
    logits = full_forward_logits(tiny_decoder, seq[:-1]).astype(np.float64)
    logprobs = logits - np.log(np.sum(np.exp(logits - logits.max(-1, keepdims=True)), -1,
                                      keepdims=True)) - logits.max(-1, keepdims=True)
    expected = sum(logprobs[t, seq[t + 1]] for t in range(len(context) - 1, n))
    assert value == pytest.approx(float(expected), abs=1e-4)
