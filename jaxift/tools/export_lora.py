"""Exports a LoRA model: a PEFT adapter directory and/or a merged Hugging Face directory.

From a jaxift LoRA training run (the base path comes from the run's config):
  python -m jaxift.tools.export_lora --workdir=runs/smollm2_lora --step=best \
      --peft_dir=/tmp/adapter --merged_dir=/tmp/merged
From a base model plus a PEFT adapter (e.g. to merge one trained in PyTorch, or re-export it):
  python -m jaxift.tools.export_lora --model_path=BASE_DIR --adapter=ADAPTER_DIR --merged_dir=/tmp/merged
The adapter directory loads with `peft.PeftModel.from_pretrained(base, dir)` or
`peft.AutoPeftModelForCausalLM.from_pretrained(dir)`; the merged one with
`transformers.AutoModelForCausalLM.from_pretrained(dir)`. Options: --dtype for the merged tensors.
"""
import sys

from absl import app
from absl import flags

from jaxift import tools
from jaxift import workdir as workdir_lib
from jaxift.data.tokenizers import load_tokenizer
from jaxift.model import lora, peft_export
from jaxift.model.loading import load_model

_WORKDIR = flags.DEFINE_string("workdir", None, "a jaxift LoRA training workdir")
_STEP = flags.DEFINE_string("step", "latest", "with --workdir: 'latest', 'best' or a step number")
_MODEL = flags.DEFINE_string("model_path", None, "base model: HF directory, .gguf file or hub id")
_ADAPTER = flags.DEFINE_string("adapter", None, "with --model_path: a PEFT adapter directory")
_PEFT_DIR = flags.DEFINE_string("peft_dir", None, "write a PEFT adapter directory here")
_MERGED_DIR = flags.DEFINE_string("merged_dir", None, "write a merged HF model directory here")
_BASE_NAME = flags.DEFINE_string("base_model_name_or_path", None,
                                 "base_model_name_or_path in adapter_config.json (default: the "
                                 "base path used here)")
_DTYPE = flags.DEFINE_enum("dtype", None, ["float32", "bfloat16", "float16"],
                           "dtype of the merged tensors (default: the base parameters' dtype)")


def main(argv):
  del argv
  if bool(_WORKDIR.value) == bool(_MODEL.value):
    raise app.UsageError("give exactly one of --workdir or --model_path (with --adapter)")
  if not (_PEFT_DIR.value or _MERGED_DIR.value):
    raise app.UsageError("give --peft_dir and/or --merged_dir")
  tokenizer = None
  if _WORKDIR.value:
    step = int(_STEP.value) if _STEP.value.isdigit() else _STEP.value
    model, tokenizer, config = workdir_lib.load_for_inference(_WORKDIR.value, step)
    base = config.model.get("path", "")
  else:
    if not _ADAPTER.value:
      raise app.UsageError("--model_path needs --adapter (a PEFT adapter directory)")
    model, cfg = load_model(_MODEL.value)
    peft_export.load_peft(model, cfg, _ADAPTER.value)
    base = _MODEL.value
    try:
      tokenizer = load_tokenizer(_MODEL.value)
    except Exception as e:  # pylint: disable=broad-except  (weights without tokenizer files)
      print(f"no tokenizer exported ({type(e).__name__}: {e})", file=sys.stderr)
  if not lora.has_lora(model):
    raise app.UsageError(f"{_WORKDIR.value}: the run has no LoRA adapters (config.lora.enabled "
                         f"was off); use `python -m jaxift.tools.export_hf` for a full fine-tune")
  if _PEFT_DIR.value:
    out = peft_export.export_peft(model, model.cfg, _PEFT_DIR.value, tokenizer=tokenizer,
                                  base_model_name_or_path=_BASE_NAME.value or base or None)
    print(f"wrote {out}: {', '.join(sorted(p.name for p in out.iterdir()))}")
  if _MERGED_DIR.value:
    out = peft_export.export_merged(model, model.cfg, _MERGED_DIR.value, tokenizer=tokenizer,
                                    dtype=_DTYPE.value, progress=True)
    print(f"wrote {out}: {', '.join(sorted(p.name for p in out.iterdir()))}")


if __name__ == "__main__":
  tools.run(main)
