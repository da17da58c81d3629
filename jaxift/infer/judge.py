"""LLM-as-a-judge over HTTP: any Ollama or OpenAI-compatible endpoint scores responses 0-100, or
picks the better of two responses (pairwise, AlpacaEval-style win rate).

The prompt is the seeds' (chapter 7): the judge sees the instruction, the reference and the model's
response and must "Respond with the integer number only". Structured output comes first: the
request carries a JSON schema (`{"score": integer 0..100}`; pairwise `{"winner": "A"|"B"|"tie"}`)
as Ollama's `format` or OpenAI's `response_format` (json_schema), so a server that supports it
answers `{"score": 85}`. A server that refuses the schema (HTTP 400) is asked again without it, and
answers that are not the JSON object fall back to the regex: `parse_score` looks for the number in
a sentence. An answer with no usable number is *unscored* (None) and left out of the average, never
counted as 0. Network failures are retried with exponential backoff; when the judge stays
unreachable, `JudgeUnreachableError` carries the scores obtained so far so callers keep partial
results. `judge_responses(..., concurrency=n)` keeps up to n requests in flight (a bounded thread
pool); results keep the input order, and each request keeps its own retries.

Endpoints (`api="auto"` picks by URL path):
  Ollama  `.../api/chat`      {"model", "messages", "stream": false, "options"} -> message.content
  Ollama  `.../api/generate`  {"model", "prompt", "stream": false, "options"}   -> response
  OpenAI  `.../v1/chat/completions` (or a base URL ending in /v1) -> choices[0].message.content
A bare `http://host:port` means Ollama's `/api/chat`.
"""
import concurrent.futures
import dataclasses
import json
import logging
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence

JUDGE_PROMPT = (
    "Given the input `{instruction}` and correct output `{reference}`, score the model response "
    "`{response}` on a scale from 0 to 100, where 100 is the best score. "
    "Respond with the integer number only.")
SCORE_SCHEMA = {"type": "object", "properties": {"score": {"type": "integer", "minimum": 0,
                                                           "maximum": 100}},
                "required": ["score"], "additionalProperties": False}

# AlpacaEval's question, shortened: which of two outputs better follows the instruction.
PAIRWISE_PROMPT = (
    "You are comparing two responses to the same instruction. Select the response that follows "
    "the instruction better: more helpful, accurate and relevant. Do not let the order of the "
    "responses or their length influence you.\n\n"
    "## Instruction\n{instruction}\n\n## Response A\n{response_a}\n\n"
    "## Response B\n{response_b}\n\n"
    'Which response is better? Answer with "A", "B" or "tie" only.')
PAIRWISE_SCHEMA = {"type": "object", "properties": {"winner": {"type": "string",
                                                               "enum": ["A", "B", "tie"]}},
                   "required": ["winner"], "additionalProperties": False}


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


def _json_field(answer: str, field: str):
  """`answer`'s JSON object's `field` (structured output), or None when it is not one."""
  try:
    obj = json.loads(_THINK.sub(" ", answer or "").strip())
  except (json.JSONDecodeError, TypeError):
    return None
  return obj.get(field) if isinstance(obj, dict) else None


def parse_score(answer: str) -> float | None:
  """The 0-100 score in a judge's answer, or None when it holds no usable number.

  Order of preference: the whole answer is a number; "85/100" or "85 out of 100"; a number shortly
  after "score"/"rating"/"grade"; the first number in 0..100 once scale phrases ("0 to 100") and
  <think> blocks are removed.
  """
  structured = _json_field(answer, "score")
  if isinstance(structured, (int, float)) and not isinstance(structured, bool):
    return float(structured) if 0.0 <= structured <= 100.0 else None
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
  structured: bool = True  # send the JSON schema (turned off when the server answers HTTP 400)
  sleep: Callable[[float], None] = time.sleep

  def __post_init__(self):
    self.api, self.endpoint = resolve_endpoint(self.url, self.api)

  def _payload(self, prompt: str, schema: dict | None) -> dict:
    options = {"seed": self.seed, "temperature": self.temperature}
    if self.api == "ollama_generate":
      body = {"model": self.model, "prompt": prompt, "stream": False, "options": options}
    else:
      messages = [{"role": "user", "content": prompt}]
      if self.api == "ollama_chat":
        body = {"model": self.model, "messages": messages, "stream": False, "options": options}
      else:
        body = {"model": self.model, "messages": messages, **options}
    if schema is not None and self.structured:
      if self.api == "openai":
        body["response_format"] = {"type": "json_schema", "json_schema": {
            "name": "judgement", "schema": schema, "strict": True}}
      else:
        body["format"] = schema
    return body

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

  def complete(self, prompt: str, schema: dict | None = None) -> str:
    """The judge's raw text answer, constrained by the JSON `schema` when the server takes one.

    Retries network errors, timeouts and HTTP 429/5xx. An HTTP 400 to a request with a schema
    turns structured output off for this client (the server does not support it) and asks again.
    """
    headers = {"Content-Type": "application/json"}
    if self.api_key:
      headers["Authorization"] = f"Bearer {self.api_key}"
    last_error: Exception | None = None
    for attempt in range(self.retries + 1):
      if attempt:
        self.sleep(self.backoff_s * 2 ** (attempt - 1))
      with_schema = schema is not None and self.structured
      data = json.dumps(self._payload(prompt, schema)).encode()
      request = urllib.request.Request(self.endpoint, data=data, headers=headers, method="POST")
      try:
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
          return self._content(json.loads(response.read().decode()))
      except urllib.error.HTTPError as e:
        if e.code == 400 and with_schema:
          logging.warning("judge %s refused the JSON schema (HTTP 400): asking without it, "
                          "answers parsed by regex", self.endpoint)
          self.structured = False
          return self.complete(prompt, schema)
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
                                               response=response), SCORE_SCHEMA)
    return parse_score(answer), answer

  def compare(self, instruction: str, response_a: str, response_b: str) -> tuple[str | None, str]:
    """('A' | 'B' | 'tie' | None when unparseable, raw answer)."""
    answer = self.complete(PAIRWISE_PROMPT.format(instruction=instruction, response_a=response_a,
                                                  response_b=response_b), PAIRWISE_SCHEMA)
    return parse_winner(answer), answer


# A capital A/B as a word, or (a)/(b) in either case, or "tie": the article "a" is no answer.
_WINNER = re.compile(r"\b(A|B)\b|\(([abAB])\)|\b([Tt][Ii][Ee])\b")


def parse_winner(answer: str) -> str | None:
  """'A', 'B' or 'tie' from a pairwise answer: the JSON object, else the answer is one of them
  (bare, quoted, 'Response B', 'B is better'), else None. Both letters named = unparseable."""
  structured = _json_field(answer, "winner")
  if isinstance(structured, str) and structured.strip().upper() in ("A", "B", "TIE"):
    return "tie" if structured.strip().upper() == "TIE" else structured.strip().upper()
  text = _THINK.sub(" ", answer or "").strip().strip("*`'\". ")
  found = {"tie" if m.group(3) else (m.group(1) or m.group(2)).upper()
           for m in _WINNER.finditer(text)}
  return found.pop() if len(found) == 1 else None


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


def _run_in_order(fn: Callable[[int], tuple], n: int, concurrency: int,
                  on_result: Callable[..., None] | None, what: str) -> list[tuple]:
  """fn(0..n-1) with up to `concurrency` calls in flight; results in input order.

  On JudgeUnreachableError the pending calls are cancelled and the error is re-raised with the
  results that completed (`done`: {index: result}); `on_result(i, *result)` runs as each completes.
  """
  results: dict[int, tuple] = {}
  lock = threading.Lock()

  def run(i: int) -> None:
    result = fn(i)
    with lock:
      results[i] = result
      if on_result is not None:
        on_result(i, *result)

  with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
    futures = [pool.submit(run, i) for i in range(n)]
    try:
      for future in futures:
        future.result()
    except Exception as e:  # pylint: disable=broad-except
      for future in futures:  # nothing new starts; those already running finish (or fail) first
        future.cancel()
      concurrent.futures.wait(futures)
      if not isinstance(e, JudgeUnreachableError):
        raise
      error = JudgeUnreachableError(f"{e} (after {what} {len(results)} of {n} responses)")
      error.done = dict(results)
      raise error from e
  return [results[i] for i in range(n)]


def judge_responses(client: JudgeClient, entries: Sequence[dict],
                    on_result: Callable[[int, float | None, str], None] | None = None, *,
                    concurrency: int = 1) -> dict:
  """Scores entries with `instruction`, `reference`, `response`, `concurrency` requests at a time.

  Returns {'scores': [float|None], 'answers': [str], 'judge_score': mean over scored,
  'judge_scored': n, 'judge_unscored': n}. Raises JudgeUnreachableError (with the partial scores
  of the entries that were judged, in input order) when the judge stops answering.
  """
  score = lambda i: client.score(entries[i]["instruction"], entries[i]["reference"],
                                 entries[i]["response"])
  try:
    results = _run_in_order(score, len(entries), concurrency, on_result, "scoring")
  except JudgeUnreachableError as e:
    done = [e.done[i] for i in sorted(e.done)]
    e.scores, e.answers = [s for s, _ in done], [a for _, a in done]
    raise
  return summarize_scores([s for s, _ in results], [a for _, a in results])


def pairwise_win_rate(client: JudgeClient, entries: Sequence[dict], references: Sequence[str],
                      on_result: Callable[[int, float | None, list[str]], None] | None = None, *,
                      concurrency: int = 1) -> dict:
  """AlpacaEval-style win rate of each entry's `response` against `references[i]`.

  Each pair is judged twice, the response first as A, then as B, to cancel the judge's position
  bias. A win counts 1, a tie 1/2, a loss 0; an entry's preference is the mean over the orders the
  judge answered clearly (None when neither was). Win rate = 100 * mean preference over the
  entries with one. Returns {'preferences': [...], 'answers': [[first, second], ...],
  'win_rate', 'pairwise_judged', 'pairwise_unparsed', 'wins', 'ties', 'losses'} (the counts are
  over single orders).
  """
  def judge_pair(i: int) -> tuple[float | None, list[str], list[str | None]]:
    instruction, ours, theirs = entries[i]["instruction"], entries[i]["response"], references[i]
    first, first_answer = client.compare(instruction, ours, theirs)  # ours is A
    second, second_answer = client.compare(instruction, theirs, ours)  # ours is B
    outcomes = [{"A": 1.0, "B": 0.0, "tie": 0.5}.get(first),
                {"B": 1.0, "A": 0.0, "tie": 0.5}.get(second)]
    clear = [o for o in outcomes if o is not None]
    return (sum(clear) / len(clear) if clear else None, [first_answer, second_answer],
            outcomes)

  results = _run_in_order(judge_pair, len(entries), concurrency,
                          (lambda i, p, a, _: on_result(i, p, a)) if on_result else None,
                          "comparing")
  preferences = [p for p, _, _ in results]
  outcomes = [o for _, _, pair in results for o in pair]
  judged = [p for p in preferences if p is not None]
  return {"preferences": preferences, "answers": [a for _, a, _ in results],
          "win_rate": 100.0 * sum(judged) / len(judged) if judged else None,
          "pairwise_judged": len(judged), "pairwise_unparsed": len(preferences) - len(judged),
          "wins": outcomes.count(1.0), "ties": outcomes.count(0.5),
          "losses": outcomes.count(0.0)}


def summarize_scores(scores: Sequence[float | None], answers: Sequence[str]) -> dict:
  scored = [s for s in scores if s is not None]
  return {"scores": list(scores), "answers": list(answers),
          "judge_score": sum(scored) / len(scored) if scored else None,
          "judge_scored": len(scored), "judge_unscored": len(scores) - len(scored)}
