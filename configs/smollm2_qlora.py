"""SmolLM2-135M-Instruct with QLoRA: configs/smollm2_lora.py's adapters, data and schedule, on a
frozen base held quantized (blockwise, quantized while loading; docs/lora.md "QLoRA").

  python -m jaxift.main --config=configs/smollm2_qlora.py:data=/path/instruction-data.json \
      --workdir=runs/smollm2_qlora

Variants: those of smollm2_lora (data, model, epochs, template, rank, alpha, dropout, targets,
runlocal) plus quant=nf4|int4|int8 (default nf4), block=N (block size along each kernel's
contraction axis; default 64, divides SmolLM2's 576/1536/64), embedding (quantize the embedding
table too).
"""
from jaxift.train.config import apply_runlocal, load_sibling_config, parse_arg


def get_config(arg: str | None = None):
  a = parse_arg(arg, data="", model="", epochs=2, template="tokenizer", rank=16, alpha=32.0,
                dropout=0.05, targets="all", quant="nf4", block=64, embedding=False,
                runlocal=False)
  base_arg = (f"data={a.data},model={a.model},epochs={a.epochs},template={a.template},"
              f"rank={a.rank},alpha={a.alpha},dropout={a.dropout},targets={a.targets}")
  c = load_sibling_config(__file__, "smollm2_lora").get_config(base_arg)
  c.lora.base_quantization = a.quant
  c.lora.quantization_block_size = a.block
  c.lora.quantize_embedding = bool(a.embedding)
  return apply_runlocal(c) if a.runlocal else c
