"""Llama 3.1 8B Instruct, full fine-tune on a Cloud TPU v5p/v6e slice (e.g. v5p-32, v6e-16).

  gcloud compute tpus tpu-vm ssh $TPU --zone=$ZONE --worker=all --command="cd jaxift && \
    python -m jaxift.main --config=configs/llama3_8b_tpu.py:model=gs://B/llama-3.1-8b-instruct,data=gs://B/sft.jsonl \
      --workdir=gs://B/runs/llama3_8b"

FSDP over every chip (mesh (1, -1, 1)), bfloat16 compute with float32 master weights, scanned
layers with full remat, packed 4096-token rows, AdamW with cosine decay. Parameters (32 GB f32)
and Adam moments (64 GB) are sharded over the slice, so 16+ chips of 95 GB (v5p) or 32 GB (v6e)
hold them. `model=` is a Hugging Face directory of sharded safetensors, local or on gs://.
"""
from jaxift.train.config import apply_runlocal, base_config, parse_arg


def get_config(arg: str | None = None):
  a = parse_arg(arg, model="", data="", steps=2000, batch=64, seq=4096, tensor=1, runlocal=False)
  c = base_config()
  c.model.path = a.model
  c.model.dtype = "bfloat16"
  c.model.param_dtype = "float32"
  c.model.scan_layers = True
  c.model.remat_policy = "full"
  c.model.attention = "auto"  # splash attention on TPU
  c.mesh.shape = (1, -1, a.tensor)

  c.data.source = "files"
  c.data.train_files = a.data
  c.data.format = "auto"
  c.data.template = "tokenizer"  # Llama 3's own chat template
  c.data.max_seq_length = a.seq
  c.data.batching = "packing"
  c.data.overlong = "truncate_prompt"
  c.data.num_workers = 8
  c.data.split_fractions = (0.98, 0.02, 0.0)

  c.optimizer.lr = 1e-5
  c.optimizer.warmup_ratio = 0.03
  c.optimizer.end_lr_ratio = 0.1
  c.optimizer.weight_decay = 0.0
  c.optimizer.grad_clip_norm = 1.0
  c.train.num_steps = a.steps
  c.train.global_batch_size = a.batch
  c.train.loss_chunk_size = 1024  # 128k-entry vocabulary: never hold [B, 4096, 128256] logits
  c.train.log_every = 10
  c.train.eval_every = 250
  c.train.save_every = 250
  c.checkpoint.keep = 2
  c.checkpoint.keep_best = 1
  c.eval.max_batches = 20
  return apply_runlocal(c) if a.runlocal else c
