"""LLM-as-a-judge over HTTP: any Ollama or OpenAI-compatible endpoint scores responses 0-100.

The prompt is the seeds' (chapter 7): the judge sees the instruction, the reference and the model's
response and must "Respond with the integer number only". Judges are chatty anyway, so
`parse_score` looks for the number in a sentence. An answer with no usable number is *unscored*
(None) and left out of the average, never counted as 0. Network failures are retried with
exponential backoff; when the judge stays unreachable, `JudgeUnreachableError` carries the scores
obtained so far so callers keep partial results.

Endpoints (`api="auto"` picks by URL path):
  Ollama  `.../api/chat`      {"model", "messages", "stream": false, "options"} -> message.content
  Ollama  `.../api/generate`  {"model", "prompt", "stream": false, "options"}   -> response
  OpenAI  `.../v1/chat/completions` (or a base URL ending in /v1) -> choices[0].message.content
A bare `http://host:port` means Ollama's `/api/chat`.
"""
import dataclasses
import json
import logging
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence

JUDGE_PROMPT = (
    "Given the input `{instruction}` and correct output `{reference}`, score the model response "
    "`{response}` on a scale from 0 to 100, where 100 is the best score. "
    "Respond with the integer number only.")


class JudgeUnreachableError(RuntimeError):
  """The judge did not answer after all retries. `scores`/`answers` hold what was obtained."""

  def __init__(self, message: str, scores: list | None = None, answers: list | None = None):
    super().__init__(message)
    self.scores = scores or []
    self.answers = answers or []


# ---------------------------------------------------------------------------------------- parsing
_NUMBER = r"(\d{1,3}(?:\.\d+)?)"
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_SCALE = re.compile(r"(?:from\s+)?\b0\s*(?:-|–|to)\s*100\b", re.IGNORECASE)
_OUT_OF_100 = re.compile(_NUMBER + r"\s*(?:/|out\s+of)\s*100\b", re.IGNORECASE)
_AFTER_WORD = re.compile(r"\b(?:score|rating|rate|grade)\b\D{0,30}?" + _NUMBER, re.IGNORECASE)
_ANY = re.compile(r"(?<![\d.])" + _NUMBER + r"(?![\d.]*\d)")


def parse_score(answer: str) -> float | None:
  """The 0-100 score in a judge's answer, or None when it holds no usable number.

  Order of preference: the whole answer is a number; "85/100" or "85 out of 100"; a number shortly
  after "score"/"rating"/"grade"; the first number in 0..100 once scale phrases ("0 to 100") and
  <think> blocks are removed.
  """
  text = _THINK.sub(" ", answer or "").strip().strip("*`'\". ")
  candidates = []
  if re.fullmatch(_NUMBER, text):
    candidates.append(text)
  candidates += _OUT_OF_100.findall(text)
  without_scale = _SCALE.sub(" ", text)
  candidates += _AFTER_WORD.findall(without_scale)
  candidates += _ANY.findall(without_scale)
  for candidate in candidates:
    value = float(candidate)
    if 0.0 <= value <= 100.0:
      return value
  return None


# ------------------------------------------------------------------------------------------ client
@dataclasses.dataclass
class JudgeClient:
  url: str
  model: str
  api: str = "auto"  # "auto" | "ollama_chat" | "ollama_generate" | "openai"
  api_key: str | None = None
  timeout_s: float = 120.0
  retries: int = 3  # attempts after the first one
  backoff_s: float = 1.0  # doubled after each failed attempt
  seed: int = 123
  temperature: float = 0.0
  sleep: Callable[[float], None] = time.sleep

  def __post_init__(self):
    self.api, self.endpoint = resolve_endpoint(self.url, self.api)

  def _payload(self, prompt: str) -> dict:
    options = {"seed": self.seed, "temperature": self.temperature}
    if self.api == "ollama_generate":
      return {"model": self.model, "prompt": prompt, "stream": False, "options": options}
    messages = [{"role": "user", "content": prompt}]
    if self.api == "ollama_chat":
      return {"model": self.model, "messages": messages, "stream": False, "options": options}
    return {"model": self.model, "messages": messages, **options}

  def _content(self, body: dict) -> str:
    try:
      if self.api == "ollama_generate":
        return body["response"]
      if self.api == "ollama_chat":
        return body["message"]["content"]
      return body["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError) as e:
      raise ValueError(f"judge at {self.endpoint} answered without the expected field for the "
                       f"{self.api} API: {json.dumps(body)[:300]}") from e

  def complete(self, prompt: str) -> str:
    """The judge's raw text answer. Retries network errors, timeouts and HTTP 429/5xx."""
    data = json.dumps(self._payload(prompt)).encode()
    headers = {"Content-Type": "application/json"}
    if self.api_key:
      headers["Authorization"] = f"Bearer {self.api_key}"
    last_error: Exception | None = None
    for attempt in range(self.retries + 1):
      if attempt:
        self.sleep(self.backoff_s * 2 ** (attempt - 1))
      request = urllib.request.Request(self.endpoint, data=data, headers=headers, method="POST")
      try:
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
          return self._content(json.loads(response.read().decode()))
      except urllib.error.HTTPError as e:
        if e.code != 429 and e.code < 500:  # a client error will not heal by retrying
          raise ValueError(f"judge at {self.endpoint} refused the request: HTTP {e.code} "
                           f"{e.read()[:300]!r}") from e
        last_error = e
      except (urllib.error.URLError, TimeoutError, ConnectionError, json.JSONDecodeError) as e:
        last_error = e
      logging.warning("judge %s attempt %d/%d failed: %s", self.endpoint, attempt + 1,
                      self.retries + 1, last_error)
    raise JudgeUnreachableError(
        f"LLM judge at {self.endpoint} (model {self.model!r}) unreachable after "
        f"{self.retries + 1} attempts: {last_error}")

  def score(self, instruction: str, reference: str, response: str) -> tuple[float | None, str]:
    answer = self.complete(JUDGE_PROMPT.format(instruction=instruction, reference=reference,
                                               response=response))
    return parse_score(answer), answer


def resolve_endpoint(url: str, api: str = "auto") -> tuple[str, str]:
  """(api, full endpoint URL) from a base or full URL."""
  parsed = urllib.parse.urlparse(url)
  if parsed.scheme not in ("http", "https") or not parsed.netloc:
    raise ValueError(f"judge URL {url!r} must look like http://host:port[/path]")
  path = parsed.path.rstrip("/")
  base = url.rstrip("/")
  if api == "auto":
    if path.endswith("/api/generate"):
      api = "ollama_generate"
    elif path.endswith("/chat/completions") or path.endswith("/v1"):
      api = "openai"
    elif path in ("", "/api", "/api/chat"):
      api = "ollama_chat"
    else:
      raise ValueError(f"cannot tell the judge API from {url!r}; pass api= one of "
                       "ollama_chat, ollama_generate, openai")
  suffixes = {"ollama_chat": "/api/chat", "ollama_generate": "/api/generate",
              "openai": "/chat/completions"}
  if api not in suffixes:
    raise ValueError(f"unknown judge api {api!r}; expected one of {sorted(suffixes)} or 'auto'")
  if api == "openai":
    if not path.endswith("/chat/completions"):
      base += "/chat/completions" if path.endswith("/v1") else "/v1/chat/completions"
  elif not path.endswith(suffixes[api]):
    base = base[: -len("/api")] if path.endswith("/api") else base
    base += suffixes[api]
  return api, base


def judge_responses(client: JudgeClient, entries: Sequence[dict],
                    on_result: Callable[[int, float | None, str], None] | None = None) -> dict:
  """Scores entries with `instruction`, `reference`, `response`.

  Returns {'scores': [float|None], 'answers': [str], 'judge_score': mean over scored,
  'judge_scored': n, 'judge_unscored': n}. Raises JudgeUnreachableError (with the partial scores)
  when the judge stops answering.
  """
  scores, answers = [], []
  for i, entry in enumerate(entries):
    try:
      score, answer = client.score(entry["instruction"], entry["reference"], entry["response"])
    except JudgeUnreachableError as e:
      raise JudgeUnreachableError(f"{e} (after scoring {i} of {len(entries)} responses)",
                                  scores, answers) from e
    scores.append(score)
    answers.append(answer)
    if on_result is not None:
      on_result(i, score, answer)
  return summarize_scores(scores, answers)


def summarize_scores(scores: Sequence[float | None], answers: Sequence[str]) -> dict:
  scored = [s for s in scores if s is not None]
  return {"scores": list(scores), "answers": list(answers),
          "judge_score": sum(scored) / len(scored) if scored else None,
          "judge_scored": len(scored), "judge_unscored": len(scores) - len(scored)}
