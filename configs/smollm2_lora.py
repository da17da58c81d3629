"""SmolLM2-135M-Instruct with LoRA adapters on an Alpaca-format file (configs/smollm2_alpaca.py's
data, schedule and evaluation; only the adapters are trained).

  python -m jaxift.main --config=configs/smollm2_lora.py:data=/path/instruction-data.json \
      --workdir=runs/smollm2_lora

Variants: data=FILE, model=PATH, epochs=N, template=tokenizer|alpaca (as smollm2_alpaca),
rank=R, alpha=A, dropout=P, targets=all|attn|qv (projections adapted), bf16_base, runlocal.
Export: python tools/export_lora.py --workdir=runs/smollm2_lora --peft_dir=... --merged_dir=...
"""
import importlib.util
import pathlib

from jaxift.model import lora
from jaxift.train.config import apply_runlocal, parse_arg

TARGETS = {"all": lora.DEFAULT_TARGET_REGEX, "attn": r"attn/(q|k|v|o)_kernel$",
           "qv": r"attn/(q|v)_kernel$"}


def _sibling(name: str):
  spec = importlib.util.spec_from_file_location(f"_jaxift_config_{name}",
                                                pathlib.Path(__file__).with_name(f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(arg: str | None = None):
  a = parse_arg(arg, data="", model="", epochs=2, template="tokenizer", rank=16, alpha=32.0,
                dropout=0.05, targets="all", bf16_base=False, runlocal=False)
  if a.targets not in TARGETS:
    raise ValueError(f"targets={a.targets!r}: expected one of {sorted(TARGETS)}")
  base_arg = f"data={a.data},model={a.model},epochs={a.epochs},template={a.template}"
  c = _sibling("smollm2_alpaca").get_config(base_arg)
  c.lora.enabled = True
  c.lora.rank, c.lora.alpha, c.lora.dropout = a.rank, a.alpha, a.dropout
  c.lora.target_regex = TARGETS[a.targets]
  c.lora.base_dtype = "bfloat16" if a.bf16_base else ""
  # LoRA's usual learning rate is ~10x full fine-tuning's; no weight decay on the adapters.
  c.optimizer.lr = 2e-4
  c.optimizer.weight_decay = 0.0
  return apply_runlocal(c) if a.runlocal else c
