"""python -m jaxift.tools.evaluate and jaxift.infer.evaluate on a checkpoint trained by configs/tiny.py."""
import json
import pathlib
import subprocess
import sys

import pytest

from jaxift.data import sources
from jaxift.infer import evaluate as ev
from jaxift.infer import judge, metrics
from tests.infer.judge_server import judge_server

MC_ROWS = [{"question": "2 + 2 =", "choices": ["4", "5", "22"], "answer": 0},
           {"question": "Opposite of up?", "choices": ["down", "left"], "answer": "A"}]


@pytest.fixture(scope="module")
def loaded(tiny_workdir):
  from jaxift.workdir import load_for_inference
  return load_for_inference(tiny_workdir, step="latest")


@pytest.fixture(scope="module")
def evaluated(tiny_workdir, tmp_path_factory):
  """One full evaluation: loss, 4 responses, an HTTP judge (OpenAI shape), multiple choice."""
  out = tmp_path_factory.mktemp("eval")
  mc_file = out / "mc.jsonl"
  mc_file.write_text("".join(json.dumps(r) + "\n" for r in MC_ROWS))
  with judge_server() as (url, handler):
    handler.answers = ["Score: 40/100", "I can't tell.", "70", "The score is 10."]
    client = judge.JudgeClient(url + "/v1", "judge", backoff_s=0.0)
    printed = []
    summary = ev.evaluate(tiny_workdir, step="best", output_dir=out, max_examples=4,
                          max_new_tokens=6, batch_size=3, judge=client,
                          multiple_choice_file=mc_file, print_fn=printed.append)
  return summary, out, printed


def test_responses_file_holds_every_test_record(evaluated, loaded):
  summary, out, _ = evaluated
  _, _, config = loaded
  records = sources.load_records(config.data, "test")[:4]
  rows = ev.read_jsonl(out / "responses.jsonl")
  assert [r["instruction"] for r in rows] == [r["instruction"] for r in records]
  assert [r["input"] for r in rows] == [r.get("input", "") for r in records]
  assert [r["reference"] for r in rows] == [r["output"] for r in records]
  assert all(isinstance(r["response"], str) for r in rows)
  # Per-row scores recomputed from the saved text, and averaged into the summary.
  assert [r["rouge_l"] for r in rows] == [metrics.rouge_l(r["response"], r["reference"])
                                          for r in rows]
  assert summary["exact_match"] == pytest.approx(sum(r["exact_match"] for r in rows) / 4)
  assert summary["num_examples"] == 4 and summary["step"] == 4


def test_judge_average_skips_unscored(evaluated):
  summary, out, _ = evaluated
  rows = ev.read_jsonl(out / "responses.jsonl")
  assert [r["judge_score"] for r in rows] == [40.0, None, 70.0, 10.0]
  assert summary["judge_score"] == pytest.approx(40.0)  # (40 + 70 + 10) / 3, not / 4
  assert (summary["judge_scored"], summary["judge_unscored"]) == (3, 1)


def test_summary_saved_and_printed(evaluated):
  summary, out, printed = evaluated
  saved = json.loads((out / "summary.json").read_text())
  for key in ("test_loss", "test_perplexity", "exact_match", "rouge_l", "judge_score",
              "mc_accuracy", "mc_accuracy_norm"):
    assert saved[key] == pytest.approx(summary[key]), key
  assert saved["test_perplexity"] == pytest.approx(2.718281828 ** saved["test_loss"], rel=1e-6)
  assert saved["mc_num_questions"] == 2
  assert len(ev.read_jsonl(out / "multiple_choice.jsonl")) == 2
  assert "test_loss" in printed[0] and "judge_score" in printed[0]


def test_test_loss_does_not_depend_on_batching(loaded):
  model, tokenizer, config = loaded
  small = ev.test_loss(model, tokenizer, config, batch_size=3)
  one_batch = ev.test_loss(model, tokenizer, config, batch_size=16)  # the whole test split
  assert small["test_tokens"] == one_batch["test_tokens"] > 0
  assert small["test_loss"] == pytest.approx(one_batch["test_loss"], rel=1e-5)


def test_unreachable_judge_keeps_partial_results(tiny_workdir, tmp_path):
  with judge_server() as (url, handler):
    handler.answers = ["55"]
    client = judge.JudgeClient(url, "judge", retries=1, backoff_s=0.0)
    original = client.complete

    def down_after_first(prompt, *args):
      if handler.requests:
        handler.fail_first = 100
      return original(prompt, *args)

    client.complete = down_after_first
    with pytest.raises(judge.JudgeUnreachableError, match="partial results kept in"):
      ev.evaluate(tiny_workdir, step="latest", output_dir=tmp_path, max_examples=3,
                  max_new_tokens=4, batch_size=3, compute_loss=False, judge=client,
                  print_fn=lambda _: None)
  rows = ev.read_jsonl(tmp_path / "responses.jsonl")
  assert len(rows) == 3 and rows[0]["judge_score"] == 55.0 and "judge_score" not in rows[1]
  saved = json.loads((tmp_path / "summary.json").read_text())
  assert saved["judge_scored"] == 1 and "unreachable after 2 attempts" in saved["judge_error"]


def test_bad_workdirs_and_steps(tiny_workdir, tmp_path):
  with pytest.raises(FileNotFoundError, match="no checkpoints in"):
    ev.evaluate(tmp_path, print_fn=lambda _: None)
  with pytest.raises(FileNotFoundError, match=r"no checkpoint at step 999: .* holds checkpoint "
                     r"steps \[4\]"):
    ev.evaluate(tiny_workdir, step=999, print_fn=lambda _: None)
  with pytest.raises(ValueError, match="exactly one of a training workdir or a pretrained"):
    ev.evaluate(print_fn=lambda _: None)
  with pytest.raises(ValueError, match="exactly one of"):
    ev.evaluate(tiny_workdir, model_path="model.gguf", print_fn=lambda _: None)
  with pytest.raises(ValueError, match="a pretrained model_path needs an output_dir"):
    ev.evaluate(model_path="model.gguf", print_fn=lambda _: None)


def test_command_line(tiny_workdir, tmp_path):
  out = tmp_path / "cli"
  done = subprocess.run([sys.executable, "-m", "jaxift.tools.evaluate", f"--workdir={tiny_workdir}",
                         "--checkpoint=4", f"--output_dir={out}", "--max_examples=2",
                         "--max_new_tokens=4", "--skip_loss"],
                        capture_output=True, text=True, timeout=300,
                        cwd=pathlib.Path(__file__).resolve().parents[2])
  assert done.returncode == 0, done.stderr[-2000:]
  assert "rouge_l" in done.stdout
  assert len(ev.read_jsonl(out / "responses.jsonl")) == 2
  bad = subprocess.run([sys.executable, "-m", "jaxift.tools.evaluate", f"--workdir={tiny_workdir}",
                        "--checkpoint=7"], capture_output=True, text=True, timeout=300,
                       cwd=pathlib.Path(__file__).resolve().parents[2])
  assert bad.returncode == 2 and "no checkpoint at step 7" in bad.stderr


def test_results_of_a_gs_output_dir_land_in_the_bucket(tiny_workdir, fake_gcs):
  """A gs:// output folder goes through etils.epath: the files land in the bucket, never in a
  local folder named 'gs:' (the fixture checks that on exit)."""
  summary = ev.evaluate(tiny_workdir, step="latest", output_dir="gs://bucket/eval/run1",
                        max_examples=2, max_new_tokens=4, compute_loss=False,
                        print_fn=lambda _: None)
  written = fake_gcs.root / "bucket" / "eval" / "run1"
  assert sorted(p.name for p in written.iterdir()) == ["responses.jsonl", "summary.json"]
  assert json.loads((written / "summary.json").read_text())["num_examples"] == 2
  assert summary["output_dir"] == "gs://bucket/eval/run1"
  assert len(ev.read_jsonl("gs://bucket/eval/run1/responses.jsonl")) == 2


def test_concurrent_judge_and_pairwise_win_rate(tiny_workdir, tmp_path):
  """Scores through a pool of 4, then the pairwise win rate against the test references (a judge
  that always picks position A: both orders cancel it to 1/2) and against another run's
  responses.jsonl (a judge that always prefers that run's text: 0)."""
  other_run = tmp_path / "other" / "responses.jsonl"
  with judge_server() as (url, handler):
    handler.answer_fn = lambda prompt, body: (
        '{"winner": "A"}' if "## Response A" in prompt else '{"score": 50}')
    client = judge.JudgeClient(url, "judge", backoff_s=0.0)
    summary = ev.evaluate(tiny_workdir, step="latest", output_dir=tmp_path / "a", max_examples=3,
                          max_new_tokens=4, batch_size=3, compute_loss=False, judge=client,
                          judge_concurrency=4, pairwise_judge=client, print_fn=lambda _: None)
    rows = ev.read_jsonl(tmp_path / "a" / "responses.jsonl")
    assert [r["judge_score"] for r in rows] == [50.0] * 3 and summary["judge_score"] == 50.0
    assert [r["pairwise_preference"] for r in rows] == [0.5] * 3
    assert all(len(r["pairwise_answers"]) == 2 for r in rows)
    assert summary["pairwise_win_rate"] == pytest.approx(50.0)
    assert (summary["pairwise_judged"], summary["pairwise_wins"], summary["pairwise_losses"]) == \
        (3, 3, 3)
    # Another run's responses, matched by instruction and input; the judge prefers them.
    ev.write_jsonl(other_run, [{**r, "response": f"OTHER RUN {i}"} for i, r in
                               enumerate(reversed(rows))])

    def prefer_other(prompt, body):
      a = prompt.split("## Response A\n")[1].split("\n\n## Response B")[0]
      return '{"winner": "A"}' if a.startswith("OTHER RUN") else '{"winner": "B"}'

    handler.answer_fn, handler.requests = prefer_other, []
    summary = ev.evaluate(tiny_workdir, step="latest", output_dir=tmp_path / "b", max_examples=3,
                          max_new_tokens=4, batch_size=3, compute_loss=False,
                          pairwise_judge=client, pairwise_against=str(other_run),
                          print_fn=lambda _: None)
  assert summary["pairwise_win_rate"] == 0.0 and summary["pairwise_losses"] == 6
  prompts = [body["messages"][0]["content"] for _, body in handler.requests]
  for i, row in enumerate(rows):  # row i was compared with the other run's answer to it
    assert any(row["instruction"] in p and f"OTHER RUN {2 - i}" in p for p in prompts)
