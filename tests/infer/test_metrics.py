"""Exact match normalization and ROUGE-L against hand-worked values."""
import pytest

from jaxift.infer import metrics


@pytest.mark.parametrize("response,reference,expected", [
    ("The Eiffel Tower.", "eiffel   tower", 1.0),     # case, article, punctuation, spaces
    ("  Paris!\n", "paris", 1.0),
    ("42", "42.5", 0.0),                              # punctuation removal is not number rounding
    ("A cat", "the dog", 0.0),
    ("Ｐａｒｉｓ", "paris", 1.0),                       # NFKC folds full-width letters
    ("theater", "ater", 0.0),                          # articles only as whole words
])
def test_exact_match(response, reference, expected):
  assert metrics.exact_match(response, reference) == expected


def test_rouge_l_hand_worked():
  # LCS of "the cat sat on the mat" / "the cat is on the mat" = the cat on the mat (5 of 6 each).
  assert metrics.rouge_l("the cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)
  # Stemming: "running" and "runs" both stem to "run"; LCS = 2 of 2.
  assert metrics.rouge_l("dogs running", "dog runs") == pytest.approx(1.0)
  assert metrics.rouge_l("completely different", "nothing shared") == 0.0
  # P = 1/1, R = 1/4 -> F = 2PR/(P+R) = 0.4
  assert metrics.rouge_l("alpha", "alpha beta gamma delta") == pytest.approx(0.4)


def test_score_responses_averages_and_mean_skips_unscored():
  scores = metrics.score_responses(["Paris.", "blue sky"], ["paris", "red sky"])
  assert scores["exact_match"] == pytest.approx(0.5)
  assert scores["rouge_l"] == pytest.approx((1.0 + 0.5) / 2)
  assert metrics.mean([None, 50.0, 100.0]) == pytest.approx(75.0)
  assert metrics.mean([None]) is None
  with pytest.raises(ValueError, match="2 responses but 1 references"):
    metrics.score_responses(["a", "b"], ["a"])
