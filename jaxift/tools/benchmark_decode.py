"""Greedy decode throughput of SmolLM2-135M: jaxift's KV-cache sampler vs transformers `generate`.

  python -m jaxift.tools.benchmark_decode --batch_sizes=1,8 --new_tokens=64 --repeats=3

Both generate exactly `new_tokens` tokens per row (stop tokens disabled, transformers with
min_new_tokens) from the same chat prompt in float32 on the CPU, after one warm-up run (jaxift's
warm-up includes compilation). Tokens/s = batch * new_tokens / median wall time of a whole
generate call (prefill included for both); the timed runs of the two alternate, so both see the
same machine load. Prints a markdown table and a JSON line.
"""
import json
import os
import platform
import statistics
import sys
import time

from absl import flags
import jax

from jaxift import tools
from jaxift.assets import smollm2_gguf_path
from jaxift.data.tokenizers import load_tokenizer
from jaxift.infer import sampler
from jaxift.model.config import default_model_config
from jaxift.model.loading import build_model

_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["1", "8"], "Batch sizes to measure.")
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 64, "Tokens generated per row.")
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
  n = _NEW_TOKENS.value
  rows = []
  for batch in [int(b) for b in _BATCH_SIZES.value]:
    prompts = [prompt] * batch
    jax_out = []

    def run_jax():
      jax_out[:] = sampler.generate_tokens(jax_model, prompts, max_new_tokens=n, stop_token_ids=[])

    input_ids = torch.tensor(prompts)
    hf_out = []

    def run_hf():
      with torch.no_grad():
        out = hf_model.generate(input_ids, attention_mask=torch.ones_like(input_ids),
                                do_sample=False, max_new_tokens=n, min_new_tokens=n,
                                pad_token_id=tokenizer.pad_token_id or 0)
      hf_out[:] = out[:, len(prompt):].tolist()

    t_jax, t_hf = _median_times([run_jax, run_hf], _REPEATS.value)
    print(f"batch {batch}: jaxift {batch * n / t_jax:.1f} tok/s, transformers "
          f"{batch * n / t_hf:.1f} tok/s", file=sys.stderr, flush=True)
    same = sum(a == b for a, b in zip(jax_out, hf_out))
    rows.append({"batch": batch, "prompt_tokens": len(prompt), "new_tokens": n,
                 "jaxift_tok_s": batch * n / t_jax, "transformers_tok_s": batch * n / t_hf,
                 "speedup": t_hf / t_jax, "identical_rows": f"{same}/{batch}"})
  info = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": platform.processor()
          or platform.machine(), "cores": os.cpu_count(), "jax": jax.__version__,
          "torch": torch.__version__, "transformers": transformers.__version__,
          "python": sys.version.split()[0], "scan_layers": _SCAN.value,
          "torch_threads": torch.get_num_threads(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
          "load_average": os.getloadavg(),
          "devices": str(jax.devices())}
  print("| batch | prompt tokens | new tokens | jaxift tok/s | transformers tok/s | ratio | "
        "identical rows |")
  print("|---|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['batch']} | {r['prompt_tokens']} | {r['new_tokens']} | {r['jaxift_tok_s']:.1f} | "
          f"{r['transformers_tok_s']:.1f} | {r['speedup']:.2f}x | {r['identical_rows']} |")
  print(json.dumps({"info": info, "rows": rows}))


if __name__ == "__main__":
  tools.run(main)
