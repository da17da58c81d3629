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
  python -m jaxift.tools.evaluate --workdir=runs/smollm2_dpo --checkpoint=latest  # + preference
  python -m jaxift.tools.evaluate --model_path=SmolLM2-135M-Instruct.gguf --output_dir=base_pref \\
      --test_files=instruction-data-with-preference.json --preference_metrics   # logps/accuracy

Preference metrics (`--preference_metrics`, on by default for a run whose train.objective is not
'sft'): the run's objective, loss and TRL-named metrics (`rewards/chosen`, `rewards/rejected`,
`rewards/margins`, `rewards/accuracies`, `logps/chosen`, `logps/rejected`) over the TEST pairs, plus
`logps/accuracy` (the share of pairs whose chosen response has the higher summed log-prob under
the policy), computed by the trainer's own preference evaluation step with the run's reference
model (LoRA: the base with adapters off; full fine-tuning: the pretrained model of
config.model.path). For a pretrained --model_path, --test_files is read as preference pairs and the
reference is the model itself (its DPO rewards are 0; `logps/accuracy` is the number to read).

Exit status: 0 ok; 1 the judge became unreachable (everything obtained is saved); 2 bad input
(no checkpoints, unknown step, unreadable file).
"""
import os
import sys
from typing import Any

from absl import flags
from etils import epath
import jax
import ml_collections

from jaxift import tools
from jaxift import workdir as workdir_lib
from jaxift.data.tokenizers import load_tokenizer
from jaxift.infer import evaluate as evaluate_lib
from jaxift.infer import judge as judge_lib
from jaxift.model import lora as lora_lib
from jaxift.model import sharding
from jaxift.train import config as train_config
from jaxift.train import evals as evals_lib
from jaxift.train import state as state_lib

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
_PREFERENCE = flags.DEFINE_bool(
    "preference_metrics", None, "Preference metrics of the test pairs (logps/accuracy, "
    "rewards/...). Default: on for a run whose train.objective is not 'sft', off for a "
    "--model_path (on: --test_files is read as preference pairs).")
_PREFERENCE_OBJECTIVE = flags.DEFINE_enum(
    "preference_objective", "dpo", ["dpo", "orpo", "simpo"],
    "With --model_path: the objective whose loss and rewards are reported (beta: "
    "--preference_beta).")
_PREFERENCE_BETA = flags.DEFINE_float("preference_beta", 0.1, "With --model_path: beta.")


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


# ------------------------------------------------------------------------------ preference metrics
def _single_device_mesh() -> jax.sharding.Mesh:
  """One device, as `load_for_inference` places a model: a run trained on a pod evaluates here."""
  return sharding.make_mesh((1,) * len(sharding.MESH_AXES), devices=jax.devices()[:1])


def preference_report(metrics: dict[str, float] | None, objective: str) -> dict[str, Any]:
  """The summary's entries: TRL's names unchanged, the objective's loss as `preference_loss`."""
  if metrics is None:
    raise ValueError("the test split holds no preference pairs: cannot compute preference "
                     "metrics (pass --nopreference_metrics, or give test pairs)")
  out: dict[str, Any] = {"preference_objective": objective,
                         "preference_pairs": int(metrics.pop("pairs")),
                         "preference_loss": metrics.pop("loss")}
  nll = metrics.pop("nll_loss")
  if objective == "orpo":
    out["preference_nll_loss"] = nll
  return {**out, **metrics}


def workdir_preference_metrics(workdir: str | epath.Path, step: int, *,
                               batch_size: int = 8) -> dict[str, Any]:
  """The preference metrics of checkpoint `step` of a preference run over its TEST pairs.

  The state is the trainer's (`state.build`), so the reference is the one the run trained
  against: LoRA rebuilds the base (the reference is it with adapters off); a full-fine-tuning DPO
  run rebuilds its initial model from config.model.path as its frozen reference (and, as `build`
  does, the optimizer moments: about 4x the parameters at the peak); a full-fine-tuning ORPO/SimPO
  run reads nothing but the checkpoint. `batch_size` counts pairs."""
  config = train_config.apply_objective(workdir_lib.load_config(workdir))
  objective = str(config.train.objective)
  if objective == "sft":
    raise ValueError(f"{workdir} is an SFT run (train.objective='sft'): it has no preference "
                     "metrics; pass --nopreference_metrics")
  rebuild = lora_lib.enabled(config) or state_lib.needs_frozen_reference(config)
  state = state_lib.build(config, _single_device_mesh(), total_steps=1, abstract_hf=(
      None if rebuild else workdir_lib.load_model_config(workdir)))
  checkpointer = workdir_lib.Checkpointer(workdir, read_only=True, async_save=False)
  try:
    restored = checkpointer.restore(step, abstract_params=workdir_lib.abstract_like(state.params))
  finally:
    checkpointer.close()
  state.params, state.opt_state = restored["params"], None  # evaluation needs no moments
  tokenizer = load_tokenizer(str(epath.Path(workdir) / workdir_lib.TOKENIZER_DIR))
  metrics = evals_lib.preference_metrics(config, tokenizer, state, state.params, split="test",
                                         rows=batch_size, max_batches=0)
  return preference_report(metrics, objective)


def pretrained_preference_config(model_path: str, test_files: str, *, template: str | None,
                                 objective: str = "dpo",
                                 beta: float = 0.1) -> ml_collections.ConfigDict:
  """A trainer config reading `test_files` as the test pairs of the pretrained `model_path`.

  The policy is the model itself. It is held once: a rank-1 LoRA whose B starts at 0 leaves the
  model unchanged, and the reference of a LoRA run is the base with adapters off, so policy and
  reference are the same function (DPO rewards 0, loss log 2) without a second copy."""
  if not test_files:
    raise ValueError("--preference_metrics with --model_path needs --test_files (preference "
                     "records with chosen and rejected)")
  config = train_config.base_config()
  config.model.path = str(model_path)
  config.data.test_files = test_files
  config.data.template = template or ("tokenizer" if getattr(
      load_tokenizer(str(model_path)), "chat_template", None) else "alpaca")
  config.train.objective = objective
  config.preference.beta = beta
  lora_lib.enable(config.lora, rank=1, alpha=1.0, dropout=0.0, targets="all")
  return train_config.apply_objective(config)


def model_path_preference_metrics(config: ml_collections.ConfigDict, *,
                                  batch_size: int = 8) -> dict[str, Any]:
  """The preference metrics of a pretrained model (`pretrained_preference_config`) on its test
  pairs."""
  state = state_lib.build(config, _single_device_mesh(), total_steps=1)
  state.opt_state = None
  tokenizer = load_tokenizer(str(config.model.path))
  metrics = evals_lib.preference_metrics(config, tokenizer, state, state.params, split="test",
                                         rows=batch_size, max_batches=0)
  return preference_report(metrics, str(config.train.objective))


def _preference_fn():
  """The preference step for `evaluate_lib.evaluate`, or None (see --preference_metrics)."""
  wanted = _PREFERENCE.value
  if _MODEL_PATH.value:
    if not wanted:
      return None
    config = pretrained_preference_config(
        _MODEL_PATH.value, _TEST_FILES.value, template=_TEMPLATE.value,
        objective=_PREFERENCE_OBJECTIVE.value, beta=_PREFERENCE_BETA.value)
    return lambda step: model_path_preference_metrics(config, batch_size=_BATCH_SIZE.value)
  if not _WORKDIR.value:
    return None
  if wanted is None:
    config = workdir_lib.load_config(_WORKDIR.value)
    wanted = str(config.train.get("objective", "sft")) != "sft"
  if not wanted:
    return None
  return lambda step: workdir_preference_metrics(_WORKDIR.value, step,
                                                 batch_size=_BATCH_SIZE.value)


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
        multiple_choice_prompt=_MC_PROMPT.value, lm_eval_fn=_lm_eval_fn(),
        preference_fn=_preference_fn())
  except judge_lib.JudgeUnreachableError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  tools.run(lambda argv: sys.exit(main(argv)))
