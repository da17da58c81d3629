"""SmolLM2-135M-Instruct preference tuning (DPO by default) with LoRA on a preference file such as
"LLMs from scratch" chapter 7's instruction-data-with-preference.json (instruction/input/chosen/
rejected records; 85/5/10 split in file order).

  python -m jaxift.main --config=configs/smollm2_dpo.py:data=/path/instruction-data-with-preference.json \
      --workdir=runs/smollm2_dpo

The reference model is the base with the adapters switched off (no second copy of the weights).
Variants: data=FILE, model=PATH, objective=dpo|orpo|simpo, beta=B, lora=True|False (False: full
fine-tuning, with a frozen sharded copy of the initial model as DPO's reference), steps=N
(0 = epochs), epochs=N, template=tokenizer|alpaca, runlocal.
Metrics (TRL's names): rewards/chosen, rewards/rejected, rewards/margins, rewards/accuracies,
logps/chosen, logps/rejected, logps/accuracy; validation before training and every eval_every.
"""
from jaxift.model import lora as lora_lib
from jaxift.train.config import apply_runlocal, load_sibling_config, parse_arg


def get_config(arg: str | None = None):
  a = parse_arg(arg, data="", model="", objective="dpo", beta=0.1, lora=True, steps=0, epochs=1,
                template="tokenizer", runlocal=False)
  base_arg = f"data={a.data},model={a.model},epochs={a.epochs},template={a.template}"
  c = load_sibling_config(__file__, "smollm2_alpaca").get_config(base_arg)
  c.train.objective = a.objective
  c.preference.beta = a.beta
  c.data.pairs = True
  c.data.max_seq_length = 256
  c.data.buckets = (128, 192, 256)
  c.evals.validation = "preference"
  c.evals.generation = ""  # a preference run is judged by its preference metrics
  c.eval.generate_examples = 0
  c.train.global_batch_size = 8  # pairs (16 rows)
  c.train.eval_every = 25
  c.train.save_every = 50
  c.train.early_stopping_patience = 0
  if a.steps:
    c.train.num_steps, c.train.num_epochs = a.steps, 0
  if a.lora:
    lora_lib.enable(c.lora, rank=16, alpha=32.0, dropout=0.0, targets="all")
    c.optimizer.lr = 5e-5
  else:
    c.optimizer.lr = 5e-6
  c.optimizer.weight_decay = 0.0
  c.optimizer.warmup_ratio = 0.1
  return apply_runlocal(c) if a.runlocal else c
