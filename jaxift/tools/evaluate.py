"""Evaluates a checkpoint of a training workdir: test loss/perplexity, responses.jsonl, exact
match, ROUGE-L, optionally an LLM judge and multiple choice; prints a summary table and saves it.

  python -m jaxift.tools.evaluate --workdir=runs/qs --checkpoint=best
  python -m jaxift.tools.evaluate --workdir=runs/qs --checkpoint=1200 --max_examples=100 \\
      --judge_url=http://localhost:11434 --judge_model=llama3 \\
      --multiple_choice=mmlu_sample.jsonl --output_dir=runs/qs/eval_1200

Exit status: 0 ok; 1 the judge became unreachable (everything obtained is saved); 2 bad input
(no checkpoints, unknown step, unreadable file).
"""
import os
import sys

from absl import flags

from jaxift import tools
from jaxift.infer import evaluate as evaluate_lib
from jaxift.infer import judge as judge_lib

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir (holds checkpoints/).",
                               required=True)
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
_MC = flags.DEFINE_string("multiple_choice", None,
                          "JSONL of {question, choices, answer} scored by log-likelihood.")
_MC_PROMPT = flags.DEFINE_enum("multiple_choice_prompt", "plain", ["plain", "template"],
                               "plain: 'Question: ...\\nAnswer:'; template: the training template.")


def main(argv):
  del argv
  client = None
  try:
    if _JUDGE_URL.value:
      client = judge_lib.JudgeClient(_JUDGE_URL.value, _JUDGE_MODEL.value, api=_JUDGE_API.value,
                                     api_key=os.environ.get(_JUDGE_KEY_ENV.value) or None,
                                     retries=_JUDGE_RETRIES.value, timeout_s=_JUDGE_TIMEOUT.value)
    step = _CHECKPOINT.value if _CHECKPOINT.value in ("latest", "best") else int(_CHECKPOINT.value)
    evaluate_lib.evaluate(
        _WORKDIR.value, step=step, output_dir=_OUTPUT_DIR.value, max_examples=_MAX_EXAMPLES.value,
        max_new_tokens=_MAX_NEW_TOKENS.value, batch_size=_BATCH_SIZE.value,
        temperature=_TEMPERATURE.value, top_k=_TOP_K.value, top_p=_TOP_P.value, seed=_SEED.value,
        stop_strings=_STOP_STRINGS.value, compute_loss=not _SKIP_LOSS.value, judge=client,
        multiple_choice_file=_MC.value, multiple_choice_prompt=_MC_PROMPT.value)
  except judge_lib.JudgeUnreachableError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  tools.run(lambda argv: sys.exit(main(argv)))
