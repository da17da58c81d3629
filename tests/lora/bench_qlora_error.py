"""QLoRA quantization error on SmolLM2-135M-Instruct (not collected by pytest), per scheme:

- weights: relative Frobenius error of dequantize(quantize(W)) over every frozen projection;
- logits on a ChatML prompt: the quantized base vs the full-precision base (what a merged QLoRA
  export carries relative to merging the same adapters into the full-precision weights), and the
  merged export vs the QLoRA model it came from (the same function up to float32 rounding).

  flock /tmp/bench.lock python tests/lora/bench_qlora_error.py
"""
import json

import jax
import ml_collections
import numpy as np
from flax import nnx

from jaxift.assets import smollm2_gguf_path
from jaxift.data.tokenizers import load_tokenizer
from jaxift.model import lora
from jaxift.model import quantize as Q
from jaxift.model.config import default_model_config
from jaxift.model.loading import load_model


def logits(model, tokens):
  graphdef, state = nnx.split(model)
  t = np.asarray([tokens], np.int32)
  pos = np.arange(t.shape[1], dtype=np.int32)[None]
  return np.asarray(jax.jit(lambda s: nnx.merge(graphdef, s)(t, pos, np.ones_like(t)))(state))[0]


def main():
  path = str(smollm2_gguf_path())
  tok = load_tokenizer(path)
  tokens = tok.encode("<|im_start|>user\nWhat is the capital of France? Answer in one word."
                      "<|im_end|>\n<|im_start|>assistant\nParis<|im_end|>")
  full, _ = load_model(path, scan_layers=True)
  ref = logits(full, tokens)
  weights = {"/".join(map(str, p)): np.asarray(v[...])
             for p, v in nnx.to_flat_state(nnx.state(full, nnx.Param))}
  rows = []
  for scheme in ("int8", "int4", "nf4"):
    settings = Q.BaseQuantization(scheme, 64)
    num = den = 0.0
    for name, w in weights.items():
      axis = settings.axis(tuple(name.split("/")))
      if axis is not None:
        back = Q.dequantize(Q.quantize(w, scheme, 64, axis))
        num += float(np.sum((back - w) ** 2))
        den += float(np.sum(w ** 2))
    mc = default_model_config()
    mc.path, mc.scan_layers = path, True
    lc = lora.default_lora_config()
    lc.enabled, lc.rank, lc.alpha, lc.base_quantization = True, 16, 32.0, scheme
    model, _ = lora.build_model(ml_collections.ConfigDict(dict(model=mc, lora=lc)))
    rng = np.random.default_rng(0)
    for _, var in nnx.to_flat_state(nnx.state(model, lora.LoRAParam)):  # a trained-looking B
      var.set_value(rng.normal(0, 0.02, var.shape).astype(np.float32))
    qlogits = logits(model, tokens)
    merged = logits(lora.merge_lora(model), tokens)
    rows.append(dict(
        scheme=scheme, weight_rel_error=(num / den) ** 0.5,
        merged_vs_qlora_max_abs_logit=float(np.abs(merged - qlogits).max()),
        quantized_base_vs_full_max_abs_logit=float(np.abs(
            logits(_zero_adapters(model), tokens) - ref).max()),
        greedy_agreement_with_full=float(np.mean(
            logits(_zero_adapters(model), tokens).argmax(-1) == ref.argmax(-1))),
        tokens=len(tokens)))
    print(json.dumps(rows[-1]), flush=True)


def _zero_adapters(model):
  m = nnx.clone(model)
  for _, var in nnx.to_flat_state(nnx.state(m, lora.LoRAParam)):
    var.set_value(np.zeros(var.shape, np.float32))
  return m


if __name__ == "__main__":
  main()
