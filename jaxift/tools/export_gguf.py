"""Exports a model to one GGUF file that llama.cpp and Ollama run as is (architecture metadata,
tokenizer, chat template; a LoRA run is merged first).

From a jaxift training run:
  python -m jaxift.tools.export_gguf --workdir=runs/qs --step=best --out=/tmp/qs.gguf --type=q8_0
From any model path jaxift reads (HF dir, .gguf, hub id):
  python -m jaxift.tools.export_gguf --model_path=model.gguf --out=/tmp/model-f16.gguf --type=f16

--type: f32, f16 (default), bf16, q8_0, q4_0, q4_1, q5_0, q5_1 (gguf-py's numpy quantizers).
The tokenizer defaults to the run's own (or --model_path's); a run trained with the `alpaca` or
`phi3` template gets that template as the file's chat template (docs/model.md shows the Ollama
Modelfile), a chat-template run keeps the tokenizer's.
"""
import json
import pathlib

from absl import app
from absl import flags

from jaxift import tools
from jaxift import workdir as workdir_lib
from jaxift.data import templates
from jaxift.data.tokenizers import load_tokenizer
from jaxift.model import gguf_export
from jaxift.model.loading import load_model

_WORKDIR = flags.DEFINE_string("workdir", None, "a jaxift training workdir")
_STEP = flags.DEFINE_string("step", "latest", "with --workdir: 'latest', 'best' or a step number")
_MODEL = flags.DEFINE_string("model_path", None, "HF directory, .gguf file or hub id")
_OUT = flags.DEFINE_string("out", None, "the .gguf file to write (replaced atomically)",
                           required=True)
_TYPE = flags.DEFINE_enum("type", "f16", list(gguf_export.EXPORT_TYPES), "tensor type")
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "tokenizer to write (default: the run's, or "
                                 "--model_path's; a .gguf path copies its tokenizer keys)")
_TOKENIZER_PRE = flags.DEFINE_string("tokenizer_pre", None, "llama.cpp pre-tokenizer name "
                                     "(default: detected)")
_CHAT_TEMPLATE = flags.DEFINE_string("chat_template", None, "a Jinja file, or 'alpaca'/'phi3' "
                                     "(default: from the run's data.template)")


def _tokenizer_arg(path: str):
  """A .gguf path is passed as is (its tokenizer keys are copied); anything else is loaded."""
  return path if path.endswith(".gguf") else load_tokenizer(path)


def _chat_template(config) -> str | None:
  if _CHAT_TEMPLATE.value:
    if _CHAT_TEMPLATE.value in gguf_export.CHAT_TEMPLATES:
      return gguf_export.CHAT_TEMPLATES[_CHAT_TEMPLATE.value]
    return pathlib.Path(_CHAT_TEMPLATE.value).read_text()
  if config is not None:
    specs = templates.parse_template(config.data.template)
    if len(specs) == 1 and specs[0] in gguf_export.CHAT_TEMPLATES:
      return gguf_export.CHAT_TEMPLATES[specs[0]]
  return None


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if bool(_WORKDIR.value) == bool(_MODEL.value):
    raise app.UsageError("give exactly one of --workdir or --model_path")
  config = None
  if _WORKDIR.value:
    step = int(_STEP.value) if _STEP.value.isdigit() else _STEP.value
    model, _, config = workdir_lib.load_for_inference(_WORKDIR.value, step)
    tokenizer_path = config.tokenizer.path or config.model.get("path", "")
  else:
    model, _ = load_model(_MODEL.value)
    tokenizer_path = _MODEL.value
  tokenizer_path = _TOKENIZER.value or tokenizer_path
  if not tokenizer_path and _WORKDIR.value:
    tokenizer_path = str(pathlib.Path(_WORKDIR.value) / workdir_lib.TOKENIZER_DIR)
  result = gguf_export.export_gguf(
      model, model.cfg, _OUT.value, type=_TYPE.value,
      tokenizer=_tokenizer_arg(tokenizer_path) if tokenizer_path else None,
      chat_template=_chat_template(config), tokenizer_pre=_TOKENIZER_PRE.value,
      progress=True)
  print(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
  tools.run(main)
