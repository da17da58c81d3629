"""The LLM judge against a real HTTP server on 127.0.0.1 that speaks Ollama and OpenAI."""
import json
import re
import socket

import pytest

from jaxift.infer import judge
from tests.infer.judge_server import judge_server


@pytest.fixture()
def server():
  with judge_server() as running:
    yield running


ENTRIES = [
    {"instruction": "Name the capital of France.", "reference": "Paris", "response": "Paris"},
    {"instruction": "Add 2 and 2.", "reference": "4", "response": "5"},
    {"instruction": "Say hi.", "reference": "Hi", "response": "Hello"},
]


@pytest.mark.parametrize("path,api", [("", "ollama_chat"), ("/api/generate", "ollama_generate"),
                                      ("/v1", "openai")])
def test_scores_in_every_api_shape_and_parses_chatty_answers(server, path, api):
  url, handler = server
  handler.answers = ["90", "Sure! I would rate this response 20 out of 100.", "I cannot judge."]
  client = judge.JudgeClient(url + path, "judge-model", backoff_s=0.0)
  assert client.api == api
  result = judge.judge_responses(client, ENTRIES)
  assert result["scores"] == [90.0, 20.0, None]
  # No number = unscored: averaged over the 2 scored responses, not (90 + 20 + 0) / 3.
  assert result["judge_score"] == pytest.approx(55.0)
  assert (result["judge_scored"], result["judge_unscored"]) == (2, 1)
  sent_path, body = handler.requests[0]
  assert body["model"] == "judge-model"
  prompt = body["prompt"] if api == "ollama_generate" else body["messages"][0]["content"]
  assert "Name the capital of France." in prompt and "`Paris`" in prompt
  assert "Respond with the integer number only." in prompt
  if api.startswith("ollama"):
    assert body["stream"] is False and body["options"]["temperature"] == 0.0


def test_retries_transient_failures(server):
  url, handler = server
  handler.answers, handler.fail_first = ["75"], 2
  sleeps = []
  client = judge.JudgeClient(url + "/v1/chat/completions", "m", retries=3, backoff_s=0.5,
                             sleep=sleeps.append)
  assert client.score("q", "a", "a")[0] == 75.0
  assert len(handler.requests) == 3
  assert sleeps == [0.5, 1.0]  # exponential backoff between attempts


def test_unreachable_judge_keeps_partial_results(server):
  url, handler = server
  handler.answers = ["80"]
  client = judge.JudgeClient(url, "m", retries=2, backoff_s=0.0)
  original = client.complete
  calls = []

  def complete_then_go_down(prompt, *args):
    calls.append(prompt)
    if len(calls) == 2:  # the judge goes away after the first response
      handler.fail_first = 100
    return original(prompt, *args)

  client.complete = complete_then_go_down
  with pytest.raises(judge.JudgeUnreachableError, match=r"unreachable after 3 attempts.*"
                     r"after scoring 1 of 3") as info:
    judge.judge_responses(client, ENTRIES)
  assert info.value.scores == [80.0]


def test_nothing_listening_is_a_clear_error():
  with socket.socket() as s:  # a port that was free a moment ago: nothing listens there now
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  client = judge.JudgeClient(f"http://127.0.0.1:{port}", "m", retries=1, backoff_s=0.0,
                             timeout_s=5)
  with pytest.raises(judge.JudgeUnreachableError, match=f"127.0.0.1:{port}/api/chat.*2 attempts"):
    client.complete("hello")


@pytest.mark.parametrize("answer,expected", [
    ("85", 85.0), (" 85.\n", 85.0), ("**90**", 90.0), ("Score: 85/100", 85.0),
    ("I would rate this 72 out of 100.", 72.0), ("On a scale from 0 to 100, I give it 64.", 64.0),
    ("The response is wrong. Score: 0", 0.0), ("Rating: 7.5", 7.5),
    ("<think>maybe 20? no</think>\n55", 55.0), ("no idea", None), ("", None), ("150", None),
])
def test_parse_score(answer, expected):
  assert judge.parse_score(answer) == expected


def test_bad_urls_are_rejected():
  with pytest.raises(ValueError, match="must look like"):
    judge.JudgeClient("localhost:11434", "m")
  with pytest.raises(ValueError, match="cannot tell the judge API"):
    judge.JudgeClient("http://h:1/some/path", "m")


# ------------------------------------------------------------------- structured output and pool
@pytest.mark.parametrize("path", ["", "/api/generate", "/v1"])
def test_structured_output_sends_the_schema_and_reads_json(server, path):
  url, handler = server
  handler.answers = ['{"score": 85}', '{"score": 101}', "Not JSON, but Score: 30"]
  client = judge.JudgeClient(url + path, "m", backoff_s=0.0)
  result = judge.judge_responses(client, ENTRIES)
  # The JSON object is read; out of range is unscored; plain text falls back to the regex.
  assert result["scores"] == [85.0, None, 30.0]
  _, body = handler.requests[0]
  if client.api == "openai":
    assert body["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "judgement", "schema": judge.SCORE_SCHEMA, "strict": True}}
  else:
    assert body["format"] == judge.SCORE_SCHEMA
  assert judge.SCORE_SCHEMA["properties"]["score"] == {"type": "integer", "minimum": 0,
                                                       "maximum": 100}


def test_a_server_without_structured_output_falls_back_to_the_regex(server):
  url, handler = server
  handler.reject_schema = True
  handler.answers = ["I give it 65 out of 100.", "12"]
  client = judge.JudgeClient(url + "/v1", "m", backoff_s=0.0)
  assert judge.judge_responses(client, ENTRIES[:2])["scores"] == [65.0, 12.0]
  # One refused request (with the schema), then every request without it.
  assert ["response_format" in body for _, body in handler.requests] == [True, False, False]
  assert client.structured is False


def _score_from_prompt(prompt, body):
  """The fake judge scores a response 'answer <n>' with n: any arrival order is checkable."""
  return json.dumps({"score": int(re.search(r"`answer (\d+)`", prompt).group(1))})


MANY = [{"instruction": f"q{i}", "reference": "r", "response": f"answer {i * 7 % 101}"}
        for i in range(16)]


def test_concurrent_judging_keeps_order_and_bounds_requests(server):
  url, handler = server
  handler.answer_fn, handler.delay_s = _score_from_prompt, 0.05
  seen = []
  client = judge.JudgeClient(url, "m", backoff_s=0.0)
  result = judge.judge_responses(client, MANY, on_result=lambda i, s, a: seen.append(i),
                                 concurrency=4)
  assert result["scores"] == [float(i * 7 % 101) for i in range(16)]  # input order
  assert sorted(seen) == list(range(16))
  assert 1 < handler.max_in_flight <= 4  # requests overlapped, never more than the pool


def test_concurrent_judging_retries_each_request(server):
  url, handler = server
  handler.answer_fn, handler.fail_first = _score_from_prompt, 3
  client = judge.JudgeClient(url, "m", retries=3, backoff_s=0.0)
  result = judge.judge_responses(client, MANY[:6], concurrency=3)
  assert result["scores"] == [float(i * 7 % 101) for i in range(6)]
  assert len(handler.requests) == 6 + 3


def test_concurrent_unreachable_judge_keeps_what_was_judged(server):
  url, handler = server
  handler.answer_fn = _score_from_prompt
  client = judge.JudgeClient(url, "m", retries=0, backoff_s=0.0)
  original = client.complete

  def down_after_three(prompt, *args):
    if len(handler.requests) >= 3:
      handler.fail_first = 1000
    return original(prompt, *args)

  client.complete = down_after_three
  with pytest.raises(judge.JudgeUnreachableError, match=r"after scoring \d+ of 16") as info:
    judge.judge_responses(client, MANY, concurrency=2)
  assert 3 <= len(info.value.scores) < 16
  expected = {float(i * 7 % 101) for i in range(16)}
  assert set(info.value.scores) <= expected


# ------------------------------------------------------------------------------------ pairwise
def _prefers(word):
  """A fair judge: the response containing `word` wins, whichever position it is in."""
  def answer(prompt, body):
    a = prompt.split("## Response A\n")[1].split("\n\n## Response B")[0]
    b = prompt.split("## Response B\n")[1].split("\n\nWhich")[0]
    if (word in a) == (word in b):
      return '{"winner": "tie"}'
    return '{"winner": "A"}' if word in a else '{"winner": "B"}'
  return answer


PAIRS = [{"instruction": "i0", "response": "good answer"},   # beats 'bad'      -> 1
         {"instruction": "i1", "response": "bad answer"},    # loses to 'good'  -> 0
         {"instruction": "i2", "response": "good one"},      # ties 'good two'  -> 1/2
         {"instruction": "i3", "response": "good again"}]    # beats 'meh'      -> 1
REFERENCES = ["bad", "good", "good two", "meh"]


def test_pairwise_win_rate_both_orders_ties_half(server):
  url, handler = server
  handler.answer_fn = _prefers("good")
  client = judge.JudgeClient(url + "/v1", "m", backoff_s=0.0)
  result = judge.pairwise_win_rate(client, PAIRS, REFERENCES, concurrency=3)
  assert result["preferences"] == [1.0, 0.0, 0.5, 1.0]
  assert result["win_rate"] == pytest.approx(100 * 2.5 / 4)
  assert (result["wins"], result["ties"], result["losses"]) == (4, 2, 2)
  # Each pair judged twice, once with the model's response as A and once as B.
  prompts = [body["messages"][0]["content"] for _, body in handler.requests]
  assert len(prompts) == 8
  assert sum("## Response A\ngood answer" in p for p in prompts) == 1
  assert sum("## Response B\ngood answer" in p for p in prompts) == 1
  assert handler.requests[0][1]["response_format"]["json_schema"]["schema"] == \
      judge.PAIRWISE_SCHEMA


def test_pairwise_cancels_position_bias_and_skips_unparsed(server):
  url, handler = server
  handler.answer_fn = lambda prompt, body: '{"winner": "A"}'  # always the first position
  client = judge.JudgeClient(url, "m", backoff_s=0.0)
  result = judge.pairwise_win_rate(client, PAIRS, REFERENCES)
  assert result["preferences"] == [0.5] * 4 and result["win_rate"] == pytest.approx(50.0)
  handler.answer_fn = lambda prompt, body: "Both have merits."
  result = judge.pairwise_win_rate(client, PAIRS[:2], REFERENCES[:2])
  assert result["preferences"] == [None, None] and result["win_rate"] is None
  assert result["pairwise_unparsed"] == 2


@pytest.mark.parametrize("answer,expected", [
    ('{"winner": "B"}', "B"), ('{"winner": "tie"}', "tie"), ("A", "A"), ("**B**", "B"),
    ("Response B is better.", "B"), ("Output (a)", "A"), ("It's a tie.", "tie"),
    ("A or B, hard to say", None), ("neither", None),
])
def test_parse_winner(answer, expected):
  assert judge.parse_winner(answer) == expected
