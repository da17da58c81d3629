"""Llama 3.1 8B Instruct with LoRA adapters on a Cloud TPU slice (e.g. v5e-8, v6e-8, v5p-8).

  gcloud compute tpus tpu-vm ssh $TPU --zone=$ZONE --worker=all --command="cd jaxift && \
    python -m jaxift.main --config=configs/llama3_8b_lora_tpu.py:model=gs://B/llama-3.1-8b-instruct,data=gs://B/sft.jsonl \
      --workdir=gs://B/runs/llama3_8b_lora"

configs/llama3_8b_tpu.py's data, mesh and remat, but the base is frozen and held in bfloat16
(16 GB instead of 32 GB, read straight into bf16: param_dtype), and only rank-16 adapters on every
projection are trained: 42M parameters, 336 MB of f32 Adam moments instead of 64 GB (see
docs/benchmarks.md), so a slice of 8 chips with 16 GB each holds the run.
Variants: as llama3_8b_tpu (model, data, steps, batch, seq, tensor) plus rank, alpha, dropout,
targets=all|attn|qv, runlocal.
"""
from jaxift.model import lora
from jaxift.train.config import apply_runlocal, load_sibling_config, parse_arg


def get_config(arg: str | None = None):
  a = parse_arg(arg, model="", data="", steps=2000, batch=64, seq=4096, tensor=1, rank=16,
                alpha=32.0, dropout=0.05, targets="all", runlocal=False)
  base_arg = (f"model={a.model},data={a.data},steps={a.steps},batch={a.batch},seq={a.seq},"
              f"tensor={a.tensor}")
  c = load_sibling_config(__file__, "llama3_8b_tpu").get_config(base_arg)
  c.model.param_dtype = "bfloat16"  # the frozen base: read straight into bf16
  lora.enable(c.lora, rank=a.rank, alpha=a.alpha, dropout=a.dropout, targets=a.targets)
  c.lora.base_dtype = "bfloat16"
  c.lora.param_dtype = "float32"  # adapters and their Adam moments stay float32
  c.optimizer.lr = 1e-4
  c.optimizer.weight_decay = 0.0
  return apply_runlocal(c) if a.runlocal else c
