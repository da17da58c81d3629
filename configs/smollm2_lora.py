"""SmolLM2-135M-Instruct with LoRA adapters on an Alpaca-format file (configs/smollm2_alpaca.py's
data, schedule and evaluation; only the adapters are trained).

  python -m jaxift.main --config=configs/smollm2_lora.py:data=/path/instruction-data.json \
      --workdir=runs/smollm2_lora

Variants: data=FILE, model=PATH, epochs=N, template=tokenizer|alpaca (as smollm2_alpaca),
rank=R, alpha=A, dropout=P, targets=all|attn|qv (projections adapted), bf16_base, runlocal.
Export: python -m jaxift.tools.export_lora --workdir=runs/smollm2_lora --peft_dir=... --merged_dir=...
"""
from jaxift.model import lora
from jaxift.train.config import apply_runlocal, load_sibling_config, parse_arg


def get_config(arg: str | None = None):
  a = parse_arg(arg, data="", model="", epochs=2, template="tokenizer", rank=16, alpha=32.0,
                dropout=0.05, targets="all", bf16_base=False, runlocal=False)
  base_arg = f"data={a.data},model={a.model},epochs={a.epochs},template={a.template}"
  c = load_sibling_config(__file__, "smollm2_alpaca").get_config(base_arg)
  lora.enable(c.lora, rank=a.rank, alpha=a.alpha, dropout=a.dropout, targets=a.targets)
  c.lora.base_dtype = "bfloat16" if a.bf16_base else ""
  # LoRA's usual learning rate is ~10x full fine-tuning's; no weight decay on the adapters.
  c.optimizer.lr = 2e-4
  c.optimizer.weight_decay = 0.0
  return apply_runlocal(c) if a.runlocal else c
