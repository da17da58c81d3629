"""Evaluates a checkpoint of a training workdir, or a pretrained model (HF directory or GGUF):
test loss/perplexity, responses.jsonl, exact match, ROUGE-L, optionally an LLM judge (scores and/or
a pairwise win rate), multiple choice and lm-evaluation-harness tasks; prints a summary table and
saves it.

  python -m jaxift.tools.evaluate --workdir=runs/qs --checkpoint=best
  python -m jaxift.tools.evaluate --workdir=runs/qs --checkpoint=1200 --max_examples=100 \\
      --judge_url=http://localhost:11434 --judge_model=llama3 --judge_concurrency=8 \\
      --pairwise_judge --multiple_choice=mmlu_sample.jsonl --output_dir=runs/qs/eval_1200
  python -m jaxift.tools.evaluate --model_path=SmolLM2-135M-Instruct.gguf --output_dir=baseline \\
      --lm_eval_tasks=hellaswag,arc_easy --lm_eval_limit=200      # the baseline, no run needed

Exit status: 0 ok; 1 the judge became unreachable (everything obtained is saved); 2 bad input
(no checkpoints, unknown step, unreadable file).
"""
import os
import sys

from absl import flags

from jaxift import tools
from jaxift.infer import evaluate as evaluate_lib
from jaxift.infer import judge as judge_lib

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir (holds checkpoints/).")
_MODEL_PATH = flags.DEFINE_string(
    "model_path", None, "A pretrained model (HF directory or .gguf) instead of a --workdir; "
    "needs --output_dir.")
_TEST_FILES = flags.DEFINE_string("test_files", "", "With --model_path: test records "
                                  "(.json/.jsonl/...) for the loss and responses; '' = none.")
_TEMPLATE = flags.DEFINE_string("template", None, "With --model_path: the prompt template "
                                "(default: the tokenizer's chat template, else alpaca).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "latest", "'latest', 'best' or a step number.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Default: WORKDIR/eval/step_<N>.")
_MAX_EXAMPLES = flags.DEFINE_integer("max_examples", None, "Generate for the first N test records.")
_MAX_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", 256, "Generation length limit.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "Rows per generation / loss batch.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "0 = greedy.")
_TOP_K = flags.DEFINE_integer("top_k", 0, "0 = off.")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "1 = off.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_STOP_STRINGS = flags.DEFINE_list("stop_strings", [], "Cut responses at these strings.")
_SKIP_LOSS = flags.DEFINE_bool("skip_loss", False, "Do not compute the test loss.")
_JUDGE_URL = flags.DEFINE_string(
    "judge_url", None, "Ollama (http://host:11434, .../api/chat, .../api/generate) or "
    "OpenAI-compatible (.../v1) endpoint; no judge when unset.")
_JUDGE_MODEL = flags.DEFINE_string("judge_model", "llama3", "Model name the endpoint serves.")
_JUDGE_API = flags.DEFINE_enum("judge_api", "auto",
                               ["auto", "ollama_chat", "ollama_generate", "openai"],
                               "API shape; auto = from the URL path.")
_JUDGE_KEY_ENV = flags.DEFINE_string("judge_api_key_env", "OPENAI_API_KEY",
                                     "Environment variable holding a bearer token, if any.")
_JUDGE_RETRIES = flags.DEFINE_integer("judge_retries", 3, "Retries per request after the first.")
_JUDGE_TIMEOUT = flags.DEFINE_float("judge_timeout", 120.0, "Seconds per judge request.")
_JUDGE_CONCURRENCY = flags.DEFINE_integer("judge_concurrency", 1,
                                          "Judge requests in flight at once.")
_JUDGE_SCORES = flags.DEFINE_bool("judge_scores", True, "With --judge_url: 0-100 scores.")
_PAIRWISE = flags.DEFINE_bool("pairwise_judge", False, "With --judge_url: AlpacaEval-style win "
                              "rate against --pairwise_against, both orders, ties half.")
_PAIRWISE_AGAINST = flags.DEFINE_string(
    "pairwise_against", "reference", "'reference' (the test answers), another field of the test "
    "records, or another run's responses.jsonl.")
_JUDGE_STRUCTURED = flags.DEFINE_bool("judge_structured", True, "Send a JSON schema (Ollama "
                                      "format / OpenAI response_format).")
_MC = flags.DEFINE_string("multiple_choice", None,
                          "JSONL of {question, choices, answer} scored by log-likelihood.")
_MC_PROMPT = flags.DEFINE_enum("multiple_choice_prompt", "plain", ["plain", "template"],
                               "plain: 'Question: ...\\nAnswer:'; template: the training template.")
_LM_EVAL_TASKS = flags.DEFINE_list("lm_eval_tasks", [], "lm-evaluation-harness task names; "
                                   "results in OUTPUT_DIR/lm_eval/results.json ([eval] extra).")
_LM_EVAL_INCLUDE = flags.DEFINE_string("lm_eval_include_path", None,
                                       "A folder of local lm-eval task YAMLs.")
_LM_EVAL_LIMIT = flags.DEFINE_float("lm_eval_limit", None, "Documents per task (< 1: fraction).")
_LM_EVAL_FEWSHOT = flags.DEFINE_integer("lm_eval_num_fewshot", None, "Few-shot examples.")
_LM_EVAL_MAX_LENGTH = flags.DEFINE_integer("lm_eval_max_length", None, "Context length "
                                           "(default: the model's max_position_embeddings).")
_LM_EVAL_MAX_GEN = flags.DEFINE_integer("lm_eval_max_gen_toks", 256, "generate_until limit.")


def _lm_eval_fn():
  """The lm-eval step, or None. lm-eval is an optional extra: imported only when asked for."""
  if not _LM_EVAL_TASKS.value:
    return None
  import jaxift.infer.lm_eval_adapter as lm_eval_adapter  # pylint: disable=import-outside-toplevel

  def run(model, tokenizer, out):
    lm = lm_eval_adapter.JaxiftLM(model, tokenizer, batch_size=_BATCH_SIZE.value,
                                  max_length=_LM_EVAL_MAX_LENGTH.value,
                                  max_gen_toks=_LM_EVAL_MAX_GEN.value)
    limit = _LM_EVAL_LIMIT.value
    results = lm_eval_adapter.run_tasks(
        lm, _LM_EVAL_TASKS.value, include_path=_LM_EVAL_INCLUDE.value,
        limit=int(limit) if limit is not None and limit >= 1 else limit,
        num_fewshot=_LM_EVAL_FEWSHOT.value, output_dir=out)
    return lm_eval_adapter.metric_table(results)
  return run


def main(argv):
  del argv
  client = None
  try:
    if _JUDGE_URL.value:
      client = judge_lib.JudgeClient(_JUDGE_URL.value, _JUDGE_MODEL.value, api=_JUDGE_API.value,
                                     api_key=os.environ.get(_JUDGE_KEY_ENV.value) or None,
                                     retries=_JUDGE_RETRIES.value, timeout_s=_JUDGE_TIMEOUT.value,
                                     structured=_JUDGE_STRUCTURED.value)
    step = _CHECKPOINT.value if _CHECKPOINT.value in ("latest", "best") else int(_CHECKPOINT.value)
    evaluate_lib.evaluate(
        _WORKDIR.value, step=step, model_path=_MODEL_PATH.value, test_files=_TEST_FILES.value,
        template=_TEMPLATE.value, output_dir=_OUTPUT_DIR.value, max_examples=_MAX_EXAMPLES.value,
        max_new_tokens=_MAX_NEW_TOKENS.value, batch_size=_BATCH_SIZE.value,
        temperature=_TEMPERATURE.value, top_k=_TOP_K.value, top_p=_TOP_P.value, seed=_SEED.value,
        stop_strings=_STOP_STRINGS.value, compute_loss=not _SKIP_LOSS.value,
        judge=client if _JUDGE_SCORES.value else None, judge_concurrency=_JUDGE_CONCURRENCY.value,
        pairwise_judge=client if _PAIRWISE.value else None,
        pairwise_against=_PAIRWISE_AGAINST.value, multiple_choice_file=_MC.value,
        multiple_choice_prompt=_MC_PROMPT.value, lm_eval_fn=_lm_eval_fn())
  except judge_lib.JudgeUnreachableError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  tools.run(lambda argv: sys.exit(main(argv)))
