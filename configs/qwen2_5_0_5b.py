"""Qwen2.5-0.5B-Instruct on a chat-format (messages) or Alpaca-format file, on one GPU or a small TPU.

  python -m jaxift.main \
      --config=configs/qwen2_5_0_5b.py:model=/path/Qwen2.5-0.5B-Instruct,data=/path/train.jsonl \
      --workdir=runs/qwen2_5_0_5b

bfloat16 compute, float32 master weights, packed 2048-token rows, the tokenizer's ChatML template.
"""
from jaxift.train.config import apply_runlocal, base_config, parse_arg


def get_config(arg: str | None = None):
  a = parse_arg(arg, model="", data="", steps=1000, batch=32, runlocal=False)
  c = base_config()
  c.model.path = a.model
  c.model.dtype = "bfloat16"
  c.model.remat_policy = "dots_saveable"
  c.data.source = "files"
  c.data.train_files = a.data
  c.data.template = "tokenizer"
  c.data.max_seq_length = 2048
  c.data.batching = "packing"
  c.optimizer.lr = 2e-5
  c.optimizer.warmup_ratio = 0.03
  c.optimizer.weight_decay = 0.0
  c.train.num_steps = a.steps
  c.train.global_batch_size = a.batch
  c.train.eval_every = 100
  c.train.save_every = 200
  c.eval.max_batches = 10
  c.eval.generate_examples = 32
  c.eval.max_new_tokens = 128
  return apply_runlocal(c) if a.runlocal else c
