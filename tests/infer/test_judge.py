"""The LLM judge against a real HTTP server on 127.0.0.1 that speaks Ollama and OpenAI."""
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

  def complete_then_go_down(prompt):
    calls.append(prompt)
    if len(calls) == 2:  # the judge goes away after the first response
      handler.fail_first = 100
    return original(prompt)

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
