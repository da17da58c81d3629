"""Multiple choice by log-likelihood: file parsing, scoring rule, and batched model likelihoods."""
import json

import numpy as np
import pytest

from jaxift.infer import multiple_choice as mc
from tests.infer.conftest import full_forward_logits


def test_scoring_raw_and_length_normalized_by_characters():
  questions = [
      # raw argmax picks "a" (-2 > -6); per character: "a" -2/1, "bbbbbb" -6/6 = -1 -> picks 1
      {"question": "q1", "choices": ["a", "bbbbbb"], "answer": 1},
      {"question": "q2", "choices": ["yes", "no", "maybe"], "answer": 2},
      # characters, not UTF-8 bytes: "ééé" -3/3 = -1 < "abcd" -3.2/4 = -0.8 -> picks 1; per byte
      # it would be -3/6 = -0.5 and pick 0.
      {"question": "q3", "choices": ["ééé", "abcd"], "answer": 1},
  ]
  table = {("q1", "a"): -2.0, ("q1", "bbbbbb"): -6.0,
           ("q2", "yes"): -9.0, ("q2", "no"): -8.0, ("q2", "maybe"): -1.0,
           ("q3", "ééé"): -3.0, ("q3", "abcd"): -3.2}
  # Tokens carry the text so the stub can look the likelihood up: context = question chars.
  pair = lambda q, choice: ([ord(c) for c in q["question"]], [ord(c) for c in choice])
  fn = lambda pairs: [table[("".join(map(chr, c)), "".join(map(chr, x)))] for c, x in pairs]
  result = mc.score_questions(questions, pair, fn)
  assert result["accuracy"] == pytest.approx(1 / 3)  # q1 wrong, q2 right, q3 wrong (-3 > -3.2)
  assert result["accuracy_norm"] == pytest.approx(1.0)
  assert [q["prediction"] for q in result["per_question"]] == [0, 2, 0]
  assert [q["prediction_norm"] for q in result["per_question"]] == [1, 2, 1]


def test_lm_eval_split_matches_lm_eval(gpt2_tokenizer):
  """The plain prompt's boundary is lm-eval's TemplateLM._encode_pair (its own code, run here on a
  minimal TemplateLM over the same tokenizer)."""
  from lm_eval.api.model import TemplateLM

  class Reference(TemplateLM):
    eot_token_id = gpt2_tokenizer.eos_token_id
    tok_encode = lambda self, s, add_special_tokens=None, **_: gpt2_tokenizer.encode(s)
    _loglikelihood_tokens = loglikelihood_rolling = generate_until = None

  for context, continuation in [("Question: 2+2?\nAnswer:", " 4"), ("Answer: ", "yes"),
                                ("The cat sat on the", " mat."), ("x  ", " y"),
                                ("Name:", "Jean-Luc Picard")]:
    got = mc.lm_eval_split(gpt2_tokenizer, context, continuation)
    assert got == Reference()._encode_pair(context, continuation), (context, continuation)
  # Trailing spaces move to the continuation: 'Answer:' + ' yes', never 'Answer: ' + 'yes'.
  context_tokens, continuation_tokens = mc.lm_eval_split(gpt2_tokenizer, "Answer: ", "yes")
  assert context_tokens == gpt2_tokenizer.encode("Answer:")
  assert continuation_tokens == gpt2_tokenizer.encode(" yes")


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
