"""A random tiny Llama (2 layers, width 64) on the built-in synthetic tasks: tests and debugging.

  python -m jaxift.main --config=configs/tiny.py:tokenizer=PATH --workdir=/tmp/tiny

`tokenizer=` is any tokenizer `jaxift.data.tokenizers.load_tokenizer` reads (an HF directory, a
.gguf, or a folder with GPT-2's encoder.json + vocab.bpe); the model's vocabulary follows it.
Variants: data=FILE (an Alpaca-format file instead of the synthetic tasks), steps=N, batch=N,
batching=max_length|bucket|packing, vocab=N (the model's vocabulary size), runlocal.
"""
from jaxift.train.config import apply_runlocal, base_config, parse_arg


def get_config(arg: str | None = None):
  a = parse_arg(arg, tokenizer="", data="", steps=4, batch=8, batching="max_length",
                vocab=50257, runlocal=False)
  c = base_config()
  c.tokenizer.path = a.tokenizer
  c.model.hf_config = dict(
      model_type="llama", vocab_size=a.vocab, hidden_size=64, intermediate_size=128,
      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
      max_position_embeddings=512, rms_norm_eps=1e-5, tie_word_embeddings=True)

  if a.data:
    c.data.source = "files"
    c.data.train_files = a.data
  else:
    c.data.source = "synthetic"
    c.data.synthetic.num_train = 256
    c.data.synthetic.num_validation = 16
    c.data.synthetic.num_test = 16
  c.data.template = "alpaca"
  c.data.max_seq_length = 128
  c.data.batching = a.batching
  c.data.buckets = (64, 96, 128)
  c.data.prefetch_buffer_size = 0

  c.optimizer.lr = 1e-3
  c.optimizer.warmup_steps = 1
  c.train.num_steps = a.steps
  c.train.global_batch_size = a.batch
  c.train.log_every = 1
  c.train.eval_every = 0
  c.train.save_every = 0
  c.train.progress_bar = False
  c.checkpoint.keep = 3
  c.eval.max_batches = 1
  return apply_runlocal(c) if a.runlocal else c
