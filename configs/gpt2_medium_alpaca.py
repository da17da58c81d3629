"""The "Build a Large Language Model (From Scratch)" chapter 7 recipe: GPT-2 medium (355M) on the
1,100-example Alpaca-format instruction-data.json.

  python -m jaxift.main \
      --config=configs/gpt2_medium_alpaca.py:model=/path/gpt2-medium,data=/path/instruction-data.json \
      --workdir=runs/gpt2_medium_alpaca

`model=` is a Hugging Face directory (config.json + model.safetensors + tokenizer files), e.g. a
local copy of `openai-community/gpt2-medium`. As in the book: Alpaca prompt template, the whole
sequence trained (the prompt too; padding masked), split 85/5/10 in file order, AdamW lr 5e-5 with
weight decay 0.1 on every parameter, constant learning rate, no clipping, batch 8, 2 epochs,
seed 123, rows padded per batch (buckets stand in for the book's pad-to-longest collate).
"""
from jaxift.train.config import apply_runlocal, base_config, parse_arg


def get_config(arg: str | None = None):
  a = parse_arg(arg, model="", data="", runlocal=False)
  c = base_config()
  c.model.path = a.model
  c.data.source = "files"
  c.data.train_files = a.data
  c.data.split_fractions = (0.85, 0.05, 0.10)
  c.data.split_seed = None  # file order, like the book
  c.data.format = "alpaca"
  c.data.template = "alpaca"
  c.data.train_on_prompt = True
  c.data.max_seq_length = 1024
  c.data.batching = "bucket"
  c.data.buckets = (128, 192, 256, 384, 512, 1024)

  c.optimizer.name = "adamw"
  c.optimizer.lr = 5e-5
  c.optimizer.weight_decay = 0.1
  c.optimizer.no_decay_regex = ""  # torch.optim.AdamW decays every parameter
  c.optimizer.schedule = "constant"
  c.optimizer.grad_clip_norm = 0.0
  c.train.num_steps = 0
  c.train.num_epochs = 2
  c.train.global_batch_size = 8
  c.train.seed = 123
  c.train.log_every = 5
  c.train.eval_every = 5  # the book evaluates every 5 steps (eval_iter=5 batches)
  c.eval.max_batches = 5
  c.train.save_every = 100
  c.eval.generate_examples = 110  # the test split
  c.eval.max_new_tokens = 256
  return apply_runlocal(c) if a.runlocal else c
