"""Greedy decode throughput of SmolLM2-135M: jaxift's KV-cache sampler vs transformers `generate`.

  python -m jaxift.tools.benchmark_decode --batch_sizes=1,8,32 --new_tokens=48,256 --repeats=3
  python -m jaxift.tools.benchmark_decode --mode=eval_split --max_examples=110

mode=throughput: both generate exactly `new_tokens` tokens per row (stop tokens disabled, transformers with
min_new_tokens) from the same chat prompt in float32 on the CPU, after one warm-up run (jaxift's
warm-up includes compilation). Tokens/s = batch * new_tokens / median wall time of a whole
generate call (prefill included for both); the timed runs of the two alternate, so both see the
same machine load. Each row also splits jaxift's time into prefill (a 1-token generate) and
decode (the rest, per step). Prints a markdown table and a JSON line.

mode=eval_split: the wall time of generating the responses of the chapter-7 test split (the last
10% of instruction-data.json, 110 records, chat-template prompts, greedy, stop at <|im_end|>,
`max_new_tokens`), batches of `eval_batch_size`: jaxift with prompts sorted by length
(`sampler.generate_tokens_sorted`, what `tools/evaluate.py` runs), jaxift in file order, and a
plain transformers loop (file order, left padding, `generate`). One timed run each, after jaxift
compiled one batch per prompt-length bucket (that warm-up's wall time is reported too).
`--eval_runs` picks the passes (e.g. `transformers` alone, to time the loop against a separate
`tools/evaluate` run), and `--reference_responses=<evaluate's responses.jsonl>` counts the
transformers responses identical to evaluate's texts:

  python -m jaxift.tools.evaluate --model_path=<gguf> --test_files=<110 test records> \
      --skip_loss --output_dir=/tmp/ch7
  python -m jaxift.tools.benchmark_decode --mode=eval_split --eval_runs=transformers \
      --reference_responses=/tmp/ch7/responses.jsonl
"""
import json
import os
import pathlib
import platform
import statistics
import sys
import time

from absl import flags
import jax

from jaxift import tools
from jaxift.assets import smollm2_gguf_path
from jaxift.data import sources, tokenize
from jaxift.data.config import default_data_config
from jaxift.data.tokenizers import load_tokenizer
from jaxift.infer import sampler
from jaxift.model.config import default_model_config
from jaxift.model.loading import build_model

_MODE = flags.DEFINE_enum("mode", "throughput", ["throughput", "eval_split"], "What to measure.")
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["1", "8"], "Batch sizes to measure.")
_NEW_TOKENS = flags.DEFINE_list("new_tokens", ["64"], "Tokens generated per row (a list).")
_DATA = flags.DEFINE_string("data", str(pathlib.Path(__file__).resolve().parents[2].parent /
                                        "shared" / "data" / "instruction-data.json"),
                            "eval_split: the chapter-7 instruction data.")
_MAX_EXAMPLES = flags.DEFINE_integer("max_examples", 110, "eval_split: test records.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 256, "eval_split: generation limit.")
_EVAL_BATCH = flags.DEFINE_integer("eval_batch_size", 8, "eval_split: rows per batch.")
_EVAL_RUNS = flags.DEFINE_list("eval_runs", ["sorted", "file_order", "transformers"],
                                "eval_split: which passes to time (sorted = what evaluate runs).")
_REFERENCE = flags.DEFINE_string(
    "reference_responses", None, "eval_split: a responses.jsonl of `tools/evaluate` on the same "
    "records; counts the transformers loop's responses identical to its `response` texts.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed runs per setting (median reported).")
_SCAN = flags.DEFINE_bool("scan_layers", True, "jaxift: lax.scan over layers.")
_THREADS = flags.DEFINE_integer("torch_threads", 0, "torch.set_num_threads (0 = all cores).")
# For single-threaded XLA, run with
# XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1".


def _median_times(fns, repeats: int) -> list[float]:
  """Median wall time of each fn; runs are interleaved so both see the same machine load."""
  for fn in fns:
    fn()  # warm-up (and compilation for jax)
  times = [[] for _ in fns]
  for _ in range(repeats):
    for fn, fn_times in zip(fns, times):
      start = time.perf_counter()
      fn()
      fn_times.append(time.perf_counter() - start)
  return [statistics.median(t) for t in times]


def _throughput(jax_model, hf_model, tokenizer, torch, prompt, batch: int, n: int) -> dict:
  prompts = [prompt] * batch
  jax_out = []

  def run_jax(new_tokens=n):
    jax_out[:] = sampler.generate_tokens(jax_model, prompts, max_new_tokens=new_tokens,
                                         stop_token_ids=[])

  input_ids = torch.tensor(prompts)
  hf_out = []

  def run_hf():
    with torch.no_grad():
      out = hf_model.generate(input_ids, attention_mask=torch.ones_like(input_ids),
                              do_sample=False, max_new_tokens=n, min_new_tokens=n,
                              pad_token_id=tokenizer.pad_token_id or 0)
    hf_out[:] = out[:, len(prompt):].tolist()

  t_prefill, t_jax, t_hf = _median_times([lambda: run_jax(1), run_jax, run_hf], _REPEATS.value)
  print(f"batch {batch}, {n} tokens: jaxift {batch * n / t_jax:.1f} tok/s, transformers "
        f"{batch * n / t_hf:.1f} tok/s", file=sys.stderr, flush=True)
  same = sum(a == b for a, b in zip(jax_out, hf_out))
  return {"batch": batch, "prompt_tokens": len(prompt), "new_tokens": n,
          "jaxift_tok_s": batch * n / t_jax, "transformers_tok_s": batch * n / t_hf,
          "speedup": t_hf / t_jax, "jaxift_prefill_s": t_prefill,
          "jaxift_decode_ms_per_step": 1000 * (t_jax - t_prefill) / max(n - 1, 1),
          "identical_rows": f"{same}/{batch}"}


def _eval_split(jax_model, hf_model, tokenizer, torch) -> list[dict]:
  data = default_data_config()
  data.train_files, data.template = _DATA.value, "tokenizer"
  records = sources.load_records(data, "test")[:_MAX_EXAMPLES.value]
  prompts = [tokenize.prompt_tokens(r, data, tokenizer) for r in records]
  stop_ids = tokenize.stop_token_ids(tokenizer, data)
  n, bs, pad = _MAX_NEW.value, _EVAL_BATCH.value, tokenizer.pad_token_id or 0

  def jax_sorted(ps):
    return sampler.generate_tokens_sorted(jax_model, ps, batch_size=bs, max_new_tokens=n,
                                          stop_token_ids=stop_ids, pad_id=pad)

  def jax_file_order(ps):
    out = []
    for start in range(0, len(ps), bs):
      chunk = ps[start:start + bs]
      chunk = chunk + [chunk[-1]] * (bs - len(chunk))
      out += sampler.generate_tokens(jax_model, chunk, max_new_tokens=n, stop_token_ids=stop_ids,
                                     pad_id=pad)[:len(ps[start:start + bs])]
    return out

  def hf_loop(ps):
    out = []
    for start in range(0, len(ps), bs):
      chunk = ps[start:start + bs]
      width = max(len(p) for p in chunk)
      ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk])
      mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
      with torch.no_grad():
        gen = hf_model.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=n,
                                eos_token_id=stop_ids, pad_token_id=pad)
      for row in gen[:, width:].tolist():
        cut = next((i for i, t in enumerate(row) if t in stop_ids), len(row))
        out.append(row[:cut])
    return out

  rows, outputs = [], {}
  runs = [(name, fn) for key, name, fn in [
      ("sorted", "jaxift, sorted by length", jax_sorted),
      ("file_order", "jaxift, file order", jax_file_order),
      ("transformers", "transformers loop", hf_loop)] if key in _EVAL_RUNS.value]
  # Warm-up: compile each prompt-length bucket once (one batch of copies of a prompt from it).
  # Both jaxift runs then use compiled code; the compile time is reported on its own.
  start = time.perf_counter()
  by_bucket = {-(-len(p) // 32): p for p in prompts}
  rows, outputs = [], {}
  if {"sorted", "file_order"} & set(_EVAL_RUNS.value):
    for p in by_bucket.values():
      sampler.generate_tokens(jax_model, [p] * bs, max_new_tokens=n, stop_token_ids=stop_ids,
                              pad_id=pad)
    rows.append({"run": f"jaxift warm-up: {len(by_bucket)} prompt buckets compiled",
                 "responses": len(by_bucket) * bs, "new_tokens": 0,
                 "wall_s": time.perf_counter() - start})
  for name, fn in runs:
    start = time.perf_counter()
    outputs[name] = fn(prompts)
    wall = time.perf_counter() - start
    rows.append({"run": name, "responses": len(prompts),
                 "new_tokens": sum(len(t) for t in outputs[name]), "wall_s": wall})
    print(f"{name}: {wall:.1f} s", file=sys.stderr, flush=True)
  ref = outputs.get("transformers loop", [])
  for row in rows:
    if row["run"] in outputs and ref:
      row["identical_to_transformers"] = sum(a == b for a, b in zip(outputs[row["run"]], ref))
  if _REFERENCE.value and ref:
    # The same text evaluate stores: decoded without special tokens, stripped.
    theirs = [json.loads(line)["response"]
              for line in pathlib.Path(_REFERENCE.value).read_text().splitlines() if line.strip()]
    ours = [tokenizer.decode(t, skip_special_tokens=True).strip() for t in ref]
    rows.append({"run": f"transformers loop vs {_REFERENCE.value}", "responses": len(theirs),
                 "new_tokens": 0, "wall_s": float("nan"),
                 "identical_to_transformers": sum(a == b for a, b in zip(ours, theirs))})
  return rows


def main(argv):
  del argv
  # torch is the comparison, not a dependency of jaxift (it comes with the [test] extra).
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  from transformers import AutoModelForCausalLM  # pylint: disable=import-outside-toplevel

  torch.set_num_threads(_THREADS.value or os.cpu_count())
  gguf = smollm2_gguf_path()
  tokenizer = load_tokenizer(str(gguf))
  model_config = default_model_config()
  model_config.path, model_config.dtype, model_config.scan_layers = str(gguf), "float32", _SCAN.value
  jax_model, _ = build_model(model_config)
  hf_model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                  dtype=torch.float32).eval()
  text = tokenizer.apply_chat_template(
      [{"role": "user", "content": "Write a short story about a robot who learns to paint."}],
      tokenize=False, add_generation_prompt=True)
  prompt = list(tokenizer.encode(text, add_special_tokens=False))
  if _MODE.value == "eval_split":
    rows = _eval_split(jax_model, hf_model, tokenizer, torch)
  else:
    rows = [_throughput(jax_model, hf_model, tokenizer, torch, prompt, int(b), int(n))
            for n in _NEW_TOKENS.value for b in _BATCH_SIZES.value]
  info = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": platform.processor()
          or platform.machine(), "cores": os.cpu_count(), "jax": jax.__version__,
          "torch": torch.__version__, "transformers": transformers.__version__,
          "python": sys.version.split()[0], "scan_layers": _SCAN.value,
          "torch_threads": torch.get_num_threads(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
          "load_average": os.getloadavg(),
          "devices": str(jax.devices())}
  if _MODE.value == "throughput":
    print("| batch | prompt tokens | new tokens | jaxift tok/s | transformers tok/s | ratio | "
          "jaxift prefill s | jaxift decode ms/step | identical rows |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
      print(f"| {r['batch']} | {r['prompt_tokens']} | {r['new_tokens']} | "
            f"{r['jaxift_tok_s']:.1f} | {r['transformers_tok_s']:.1f} | {r['speedup']:.2f}x | "
            f"{r['jaxift_prefill_s']:.3f} | {r['jaxift_decode_ms_per_step']:.1f} | "
            f"{r['identical_rows']} |")
  else:
    print("| run | responses | new tokens | wall s | tokens/s | identical to transformers |")
    print("|---|---|---|---|---|---|")
    for r in rows:
      print(f"| {r['run']} | {r['responses']} | {r['new_tokens']} | {r['wall_s']:.1f} | "
            f"{r['new_tokens'] / r['wall_s']:.1f} | {r.get('identical_to_transformers', '')} |")
  print(json.dumps({"info": info, "rows": rows}))


if __name__ == "__main__":
  tools.run(main)
