"""The lm-evaluation-harness adapter: batched log-likelihoods against an unpadded forward, and on
SmolLM2 the same results as lm-eval's own `hf` backend (transformers loading the same GGUF) on
local multiple-choice, generate-until and rolling-log-likelihood tasks."""
import json
import math
import pathlib

import numpy as np
import pytest

from jaxift.infer import lm_eval_adapter
from tests.infer import lm_eval_tasks
from tests.infer.conftest import full_forward_logits

TASKS = ["jaxift_mc", "jaxift_gen", "jaxift_ppl"]
MAX_LENGTH = 64  # small, so the rolling task's longest document needs several windows


class _ByteTokenizer:
  """Token id = byte value, for the tiny random decoder (vocab 256)."""
  bos_token_id, eos_token_id, pad_token_id = 1, 2, 0


def _logprobs(logits):
  logits = logits.astype(np.float64)
  top = logits.max(-1, keepdims=True)
  return logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))


def test_token_loglikelihoods_match_an_unpadded_forward(tiny_decoder):
  lm = lm_eval_adapter.JaxiftLM(tiny_decoder, _ByteTokenizer(), batch_size=3, max_length=9,
                                length_bucket=8)
  pairs = [([5, 6, 7], [8, 9]), ([1], [2, 3, 4, 5]), ([100, 101, 102, 103, 104], [7]),
           ([3, 3], [3]), (list(range(10, 20)), [20, 21])]  # the last is cut to max_length + 1
  got = lm.token_loglikelihoods(pairs)
  for (context, continuation), (value, greedy) in zip(pairs, got):
    seq = (context + continuation)[-(9 + 1):]
    logprobs = _logprobs(full_forward_logits(tiny_decoder, seq[:-1]))
    steps = range(len(seq) - 1 - len(continuation), len(seq) - 1)
    assert value == pytest.approx(sum(logprobs[t, seq[t + 1]] for t in steps), abs=1e-4)
    assert greedy == all(int(np.argmax(logprobs[t])) == seq[t + 1] for t in steps)


@pytest.fixture(scope="module")
def task_folder(tmp_path_factory):
  return lm_eval_tasks.write_tasks(tmp_path_factory.mktemp("lm_eval_tasks"))


@pytest.fixture(scope="module")
def jaxift_run(smollm2_jax, smollm2_tokenizer, task_folder, tmp_path_factory):
  out = tmp_path_factory.mktemp("lm_eval_out")
  lm = lm_eval_adapter.JaxiftLM(smollm2_jax, smollm2_tokenizer, batch_size=4,
                                max_length=MAX_LENGTH)
  results = lm_eval_adapter.run_tasks(lm, TASKS, include_path=str(task_folder), output_dir=out,
                                      log_samples=True)
  return results, out


@pytest.fixture(scope="module")
def hf_run(smollm2_torch, smollm2_gguf, task_folder):
  from lm_eval.models.huggingface import HFLM
  from transformers import AutoTokenizer
  tokenizer = AutoTokenizer.from_pretrained(str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name)
  lm = HFLM(pretrained=smollm2_torch, tokenizer=tokenizer, batch_size=4, max_length=MAX_LENGTH,
            device="cpu")
  return lm_eval_adapter.run_tasks(lm, TASKS, include_path=str(task_folder), log_samples=True)


def _by_doc(results, task):
  return {s["doc_id"]: s for s in results["samples"][task]}


def test_metrics_equal_the_hf_backend(jaxift_run, hf_run):
  ours, theirs = jaxift_run[0], hf_run
  for task, metric in [("jaxift_mc", "acc"), ("jaxift_mc", "acc_norm"),
                       ("jaxift_gen", "exact_match")]:
    key = f"{metric},none"
    # Counts over 5 and 3 documents: equal exactly.
    assert ours["results"][task][key] == theirs["results"][task][key], (task, metric)
  for metric in ("word_perplexity", "byte_perplexity", "bits_per_byte"):
    key = f"{metric},none"
    assert ours["results"]["jaxift_ppl"][key] == pytest.approx(
        theirs["results"]["jaxift_ppl"][key], rel=1e-4, abs=1e-4)
  # acc_norm really differs from acc on this data, so the character normalization is exercised.
  assert ours["results"]["jaxift_mc"]["acc,none"] != ours["results"]["jaxift_mc"]["acc_norm,none"]


def test_per_request_values_equal_the_hf_backend(jaxift_run, hf_run):
  ours, theirs = jaxift_run[0], hf_run
  for task in TASKS:
    mine, ref = _by_doc(ours, task), _by_doc(theirs, task)
    assert mine.keys() == ref.keys()
    for doc_id, sample in mine.items():
      for got, want in zip(sample["resps"], ref[doc_id]["resps"]):
        if task == "jaxift_gen":
          assert got == want, doc_id  # the same generated text
        elif task == "jaxift_mc":
          (ll, greedy), (ll_ref, greedy_ref) = got[0], want[0]
          assert float(ll) == pytest.approx(float(ll_ref), abs=1e-4)
          assert greedy == greedy_ref
        else:
          # A document's summed log-likelihood over ~100 tokens: float32 sums differ in the 6th digit.
          assert float(got[0]) == pytest.approx(float(want[0]), rel=1e-5, abs=1e-4)


def test_acc_norm_divides_by_characters(jaxift_run):
  """lm-eval's acc_norm: argmax of log-likelihood / characters of the choice (its delimiter not
  counted)."""
  for doc_id, sample in _by_doc(jaxift_run[0], "jaxift_mc").items():
    doc = lm_eval_tasks.MC_DOCS[doc_id]
    lls = [float(r[0][0]) for r in sample["resps"]]
    normed = [ll / len(c) for ll, c in zip(lls, doc["choices"])]
    assert sample["acc_norm"] == float(int(np.argmax(normed)) == doc["answer"])
    assert sample["acc"] == float(int(np.argmax(lls)) == doc["answer"])


def test_results_json_is_written(jaxift_run):
  results, out = jaxift_run
  saved = json.loads((out / "lm_eval" / "results.json").read_text())
  assert saved["results"]["jaxift_mc"]["acc,none"] == results["results"]["jaxift_mc"]["acc,none"]
  table = lm_eval_adapter.metric_table(saved)
  assert math.isfinite(table["jaxift_ppl/word_perplexity"]) and table["jaxift_ppl/word_perplexity"] > 1


def test_own_multiple_choice_scorer_equals_the_hf_backend(smollm2_jax, smollm2_tokenizer, hf_run,
                                                          tmp_path):
  """jaxift.infer.multiple_choice with the plain prompt scores the same questions as the lm-eval
  task (same prompt, ' ' + choice): the same log-likelihoods, acc and acc_norm as lm-eval's hf."""
  from jaxift.infer import multiple_choice
  path = tmp_path / "mc.jsonl"
  path.write_text("".join(json.dumps(d) + "\n" for d in lm_eval_tasks.MC_DOCS))
  ours = multiple_choice.evaluate_multiple_choice(smollm2_jax, smollm2_tokenizer, path,
                                                  batch_size=4)
  ref = _by_doc(hf_run, "jaxift_mc")
  for doc_id, question in enumerate(ours["per_question"]):
    want = [float(r[0][0]) for r in ref[doc_id]["resps"]]
    assert question["loglikelihoods"] == pytest.approx(want, abs=1e-4)
  assert ours["accuracy"] == hf_run["results"]["jaxift_mc"]["acc,none"]
  assert ours["accuracy_norm"] == hf_run["results"]["jaxift_mc"]["acc_norm,none"]


def test_command_line_on_a_pretrained_gguf(smollm2_gguf, smollm2_jax, smollm2_tokenizer,
                                           task_folder, jaxift_run, shared_data, tmp_path):
  """`tools/evaluate.py --model_path=X.gguf`: no run directory; lm-eval results in
  OUTPUT_DIR/lm_eval/results.json equal to the in-process adapter's, and responses to test
  records prompted with the tokenizer's chat template."""
  import subprocess
  import sys
  from jaxift.infer import evaluate as ev
  records = json.loads((shared_data / "instruction-data.json").read_text())[:2]
  test_file = tmp_path / "test.json"
  test_file.write_text(json.dumps(records))
  out = tmp_path / "out"
  done = subprocess.run(
      [sys.executable, "-m", "jaxift.tools.evaluate", f"--model_path={smollm2_gguf}",
       f"--output_dir={out}", "--lm_eval_tasks=jaxift_mc", f"--lm_eval_include_path={task_folder}",
       "--lm_eval_limit=3", "--lm_eval_max_length=64", f"--test_files={test_file}",
       "--max_new_tokens=8", "--batch_size=2"],
      capture_output=True, text=True, timeout=600,
      cwd=pathlib.Path(__file__).resolve().parents[2])
  assert done.returncode == 0, done.stderr[-3000:]
  saved = json.loads((out / "lm_eval" / "results.json").read_text())
  in_process = _by_doc(jaxift_run[0], "jaxift_mc")
  expected_acc = sum(in_process[i]["acc"] for i in range(3)) / 3
  assert saved["results"]["jaxift_mc"]["acc,none"] == pytest.approx(expected_acc)
  summary = json.loads((out / "summary.json").read_text())
  assert summary["lm_eval/jaxift_mc/acc"] == pytest.approx(expected_acc)
  assert summary["num_examples"] == 2 and math.isfinite(summary["test_loss"])
  config = ev.pretrained_config(smollm2_tokenizer, test_files=str(test_file))
  assert config.data.template == "tokenizer"
  expected = ev.generate_responses(smollm2_jax, smollm2_tokenizer, config, records,
                                   max_new_tokens=8, batch_size=2)
  rows = ev.read_jsonl(out / "responses.jsonl")
  assert [r["response"] for r in rows] == [e["response"] for e in expected]
  assert [r["reference"] for r in rows] == [r["output"] for r in records]


MESH_SCRIPT = """
import jax, numpy as np
from jaxift.infer import lm_eval_adapter
from jaxift.model.config import default_model_config
from jaxift.model.loading import build_model
from jaxift.model.sharding import make_mesh

class Tok:
  bos_token_id, eos_token_id, pad_token_id = 1, 2, 0

assert len(jax.devices()) == 8
mesh = make_mesh((2, 2, 2))  # data, fsdp, tensor
c = default_model_config()
c.hf_config = dict(model_type="llama", vocab_size=64, hidden_size=32, intermediate_size=48,
                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
sharded, _ = build_model(c, mesh=mesh, seed=3)
plain, _ = build_model(c, seed=3)
pairs = [([5, 6, 7], [8, 9]), ([1], [2, 3, 4, 5]), ([10, 11, 12, 13, 14], [7]), ([3, 3], [3]),
         ([20, 21], [22, 23, 24])]
lm = lm_eval_adapter.JaxiftLM(sharded, Tok(), batch_size=4, length_bucket=8, mesh=mesh)
assert lm.batch_sharding.spec == jax.sharding.PartitionSpec(("data", "fsdp"), None)
got = lm.token_loglikelihoods(pairs)
want = lm_eval_adapter.JaxiftLM(plain, Tok(), batch_size=4, length_bucket=8).token_loglikelihoods(pairs)
np.testing.assert_allclose([g for g, _ in got], [w for w, _ in want], atol=1e-5)
assert [g for _, g in got] == [w for _, w in want]
try:
  lm_eval_adapter.JaxiftLM(sharded, Tok(), batch_size=6, mesh=mesh)
  raise AssertionError("batch 6 over 4 shards must be refused")
except ValueError as e:
  assert "not a multiple of the 4 batch shards" in str(e)
print("OK")
"""


def test_loglikelihood_batches_sharded_over_an_8_device_mesh():
  """On 8 fake CPU devices (a subprocess: XLA_FLAGS must precede JAX), batches split over
  ('data', 'fsdp') give the single-device log-likelihoods."""
  import os
  import subprocess
  import sys
  root = pathlib.Path(__file__).resolve().parents[2]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu", PYTHONPATH=str(root))
  done = subprocess.run([sys.executable, "-c", MESH_SCRIPT], env=env, capture_output=True,
                        text=True, timeout=600, cwd=root)
  assert done.returncode == 0 and "OK" in done.stdout, done.stderr[-3000:]
