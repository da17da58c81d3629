"""Text metrics for generated responses: exact match and ROUGE-L.

Exact match compares normalized strings. The normalization is SQuAD's (the common convention for
short-answer exact match), applied to both sides:
  1. Unicode NFKC, then lower case;
  2. punctuation removed (every Unicode character whose category starts with "P");
  3. the English articles "a", "an", "the" removed as whole words;
  4. runs of whitespace collapsed to one space, leading/trailing whitespace stripped.
So "The Eiffel Tower." matches "eiffel tower", but "42" does not match "42.5".

ROUGE-L is the F-measure of Google's `rouge-score` package (longest common subsequence over its
tokenizer: lower-cased alphanumeric words, Porter stemming on), the package the seeds use.
"""
import functools
import re
import unicodedata
from collections.abc import Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_WHITESPACE = re.compile(r"\s+")


def normalize_answer(text: str) -> str:
  text = unicodedata.normalize("NFKC", text).lower()
  text = "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in text)
  text = _ARTICLES.sub(" ", text)
  return _WHITESPACE.sub(" ", text).strip()


def exact_match(response: str, reference: str) -> float:
  """1.0 when the normalized strings are equal, else 0.0."""
  return float(normalize_answer(response) == normalize_answer(reference))


@functools.lru_cache(maxsize=1)
def _scorer():
  from rouge_score import rouge_scorer  # imported lazily: nltk is slow to import
  return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(response: str, reference: str) -> float:
  """ROUGE-L F-measure in [0, 1] (rouge-score's `RougeScorer(['rougeL'], use_stemmer=True)`)."""
  return float(_scorer().score(reference, response)["rougeL"].fmeasure)


def mean(values: Sequence[float | None]) -> float | None:
  """Mean over the values that are not None; None when nothing was scored."""
  scored = [v for v in values if v is not None]
  return sum(scored) / len(scored) if scored else None


def score_responses(responses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
  """Averages over all examples: {'exact_match': ..., 'rouge_l': ...} (0 when there are none)."""
  if len(responses) != len(references):
    raise ValueError(f"{len(responses)} responses but {len(references)} references")
  n = max(len(responses), 1)
  return {
      "exact_match": sum(exact_match(r, t) for r, t in zip(responses, references)) / n,
      "rouge_l": sum(rouge_l(r, t) for r, t in zip(responses, references)) / n,
  }
