"""Llama 3.1 8B Instruct with QLoRA on a Cloud TPU slice or one accelerator: configs/
llama3_8b_lora_tpu.py's adapters (rank 16, every projection), data and schedule, with the frozen
projections held in NF4 (blocks of 64 along the contraction axis, float32 scales), quantized
tensor by tensor while loading.

  python -m jaxift.main --config=configs/llama3_8b_qlora_tpu.py:model=gs://B/llama-3.1-8b-instruct,data=gs://B/sft.jsonl \
      --workdir=gs://B/runs/llama3_8b_qlora

The frozen base is 6.03e9 bytes (5.61 GiB: projections 3.93 GB at 4.5 bits per weight, the bf16
embedding and lm_head 2.10 GB) instead of 16.1 GB in bf16; `embedding` quantizes those two tables
too (4.52 GB in all). Remat (`full`) and the chunked loss keep the step's activations small;
sizes per device: docs/benchmarks.md "QLoRA (issue 16)".
Variants: as llama3_8b_lora_tpu (model, data, steps, batch, seq, tensor, rank, alpha, dropout,
targets, runlocal) plus quant=nf4|int4|int8, block=N, embedding.
"""
from jaxift.train.config import apply_runlocal, load_sibling_config, parse_arg


def get_config(arg: str | None = None):
  a = parse_arg(arg, model="", data="", steps=2000, batch=64, seq=4096, tensor=1, rank=16,
                alpha=32.0, dropout=0.05, targets="all", quant="nf4", block=64, embedding=False,
                runlocal=False)
  base_arg = (f"model={a.model},data={a.data},steps={a.steps},batch={a.batch},seq={a.seq},"
              f"tensor={a.tensor},rank={a.rank},alpha={a.alpha},dropout={a.dropout},"
              f"targets={a.targets}")
  c = load_sibling_config(__file__, "llama3_8b_lora_tpu").get_config(base_arg)
  c.lora.base_quantization = a.quant
  c.lora.quantization_block_size = a.block
  c.lora.quantize_embedding = bool(a.embedding)
  return apply_runlocal(c) if a.runlocal else c
