"""Exports a model to a Hugging Face directory that `transformers.AutoModelForCausalLM` loads as is.

From a jaxift training run (its tokenizer is exported alongside):
  python -m jaxift.tools.export_hf --workdir=runs/qs --step=best --out_dir=/tmp/qs_hf
From any model path jaxift reads (HF dir, .gguf, hub id), e.g. a GGUF to safetensors:
  python -m jaxift.tools.export_hf --model_path=model.gguf --out_dir=/tmp/model_hf
Options: --dtype=bfloat16 (default: the parameters' dtype), --max_shard_size_mb=2048.
"""
import sys

from absl import app
from absl import flags

from jaxift import tools
from jaxift import workdir as workdir_lib
from jaxift.data.tokenizers import load_tokenizer
from jaxift.model.hf import export_hf
from jaxift.model.loading import load_model

_WORKDIR = flags.DEFINE_string("workdir", None, "a jaxift training workdir")
_STEP = flags.DEFINE_string("step", "latest", "with --workdir: 'latest', 'best' or a step number")
_MODEL = flags.DEFINE_string("model_path", None, "HF directory, .gguf file or hub id")
_TOKENIZER = flags.DEFINE_string("tokenizer", None,
                                 "tokenizer to export (default: the run's, or --model_path's)")
_OUT = flags.DEFINE_string("out_dir", None, "output directory (replaced if it exists)",
                           required=True)
_DTYPE = flags.DEFINE_enum("dtype", None, ["float32", "bfloat16", "float16"],
                           "dtype of the written tensors (default: as the parameters)")
_SHARD = flags.DEFINE_integer("max_shard_size_mb", 2048, "largest safetensors file, in MiB")


def main(argv):
  del argv
  if bool(_WORKDIR.value) == bool(_MODEL.value):
    raise app.UsageError("give exactly one of --workdir or --model_path")
  tokenizer = None
  if _WORKDIR.value:
    step = int(_STEP.value) if _STEP.value.isdigit() else _STEP.value
    model, tokenizer, _ = workdir_lib.load_for_inference(_WORKDIR.value, step)
  else:
    model, _ = load_model(_MODEL.value)
    try:
      tokenizer = load_tokenizer(_MODEL.value)
    except Exception as e:  # pylint: disable=broad-except  (weights without tokenizer files)
      print(f"no tokenizer exported ({type(e).__name__}: {e})", file=sys.stderr)
  if _TOKENIZER.value:
    tokenizer = load_tokenizer(_TOKENIZER.value)
  out = export_hf(model, model.cfg, _OUT.value, tokenizer=tokenizer, dtype=_DTYPE.value,
                  max_shard_size=_SHARD.value * 1024**2, progress=True)
  print(f"wrote {out}: {', '.join(sorted(p.name for p in out.iterdir()))}")


if __name__ == "__main__":
  tools.run(main)
