"""Export of a LoRA model: a merged Hugging Face directory, or a PEFT adapter directory; and
`load_peft`, which puts a PEFT adapter (trained in PyTorch, or exported here) onto a jaxift model.

(1) `export_merged`: W + (alpha/rank) B A folded into each kernel, written by `hf.export_hf`; loads
    with `transformers.AutoModelForCausalLM.from_pretrained(dir)`.
(2) `export_peft`: `adapter_config.json` + `adapter_model.safetensors` in PEFT's own format
    (`base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight` [rank, in],
    `...lora_B.weight` [out, rank]); loads with `peft.PeftModel.from_pretrained(base, dir)` or
    `peft.AutoPeftModelForCausalLM.from_pretrained(dir)` (which reads `base_model_name_or_path`).
The Llama-layout families (llama, mistral, qwen2, qwen3) export adapters; GPT-2 fuses q/k/v into one
`c_attn` module, where separate q/k/v adapters have no PEFT equivalent, so it exports merged only.
"""
import json
import pathlib
import re
import shutil

import jax
import numpy as np
import ml_collections
from safetensors.numpy import load_file, save_file

from jaxift import fileio
from jaxift.model import hf
from jaxift.model import lora
from jaxift.model.config import ModelConfig

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_to_host = hf._to_host  # pylint: disable=protected-access  (gathers shards across processes)
# jaxift projection -> the HF module it adapts (Llama layout)
HF_MODULES = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
              "o": "self_attn.o_proj", "gate": "mlp.gate_proj", "up": "mlp.up_proj",
              "down": "mlp.down_proj"}


def export_merged(model, cfg: ModelConfig, out_dir, *, tokenizer=None, dtype: str | None = None,
                  max_shard_size: int = 2 * 1024**3, progress: bool = False) -> pathlib.Path:
  """A full HF model directory with the adapters merged into the base weights."""
  merged = lora.merge_lora(model) if lora.has_lora(model) else model
  return hf.export_hf(merged, cfg, out_dir, tokenizer=tokenizer, dtype=dtype,
                      max_shard_size=max_shard_size, progress=progress)


def peft_tensors(model, cfg: ModelConfig) -> dict[str, np.ndarray]:
  """PEFT key -> float32 array, lora_A [rank, in_features] and lora_B [out_features, rank]."""
  if cfg.family != "llama":
    raise ValueError(f"PEFT adapter export supports the Llama-layout families (llama, mistral, "
                     f"qwen2, qwen3), not {cfg.model_type!r}; use export_merged instead")
  if not lora.has_lora(model):
    raise ValueError("the model has no LoRA adapters (apply_lora first)")
  out: dict[str, np.ndarray] = {}
  for layer, block in lora.lora_blocks(model):
    for part in ("attn", "mlp"):
      module = getattr(block, part)
      if not isinstance(module, (lora.LoRAAttention, lora.LoRAMlp)):
        continue
      for name in module.lora_targets:
        a = _to_host(getattr(module, f"{name}_lora_a")[...]).astype(np.float32)
        b = _to_host(getattr(module, f"{name}_lora_b")[...]).astype(np.float32)
        stacked = layer is None
        layers = range(cfg.num_hidden_layers) if stacked else [layer]
        for i in layers:
          a_i, b_i = (a[i], b[i]) if stacked else (a, b)
          rank = a_i.shape[-1]
          key = f"base_model.model.model.layers.{i}.{HF_MODULES[name]}"
          # A [in..., r] -> [r, in]; B [r, out...] -> [out, r] (heads flattened as HF does: n*H + h)
          out[f"{key}.lora_A.weight"] = np.ascontiguousarray(a_i.reshape(-1, rank).T)
          out[f"{key}.lora_B.weight"] = np.ascontiguousarray(b_i.reshape(rank, -1).T)
  return out


def adapter_config(model, cfg: ModelConfig, base_model_name_or_path: str | None) -> dict:
  """PEFT LoraConfig fields; unset ones take PEFT's defaults when it loads the file."""
  settings = lora.lora_settings(model)
  targets = settings["targets"]
  names = sorted({n for ns in targets.values() for n in ns})
  uniform = (sorted(targets) == list(range(cfg.num_hidden_layers))
             and all(sorted(ns) == names for ns in targets.values()))
  if uniform:
    target_modules = sorted(HF_MODULES[n].split(".")[1] for n in names)
  else:  # a regex over full module names (PEFT full-matches a string target_modules)
    alternatives = [re.escape(f"model.layers.{i}.{HF_MODULES[n]}")
                    for i, ns in sorted(targets.items()) for n in sorted(ns)]
    target_modules = "(" + "|".join(alternatives) + ")"
  return {
      "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model_name_or_path,
      "r": int(settings["rank"]), "lora_alpha": float(settings["alpha"]),
      "lora_dropout": float(settings["dropout"]), "target_modules": target_modules,
      "bias": "none", "fan_in_fan_out": False, "use_rslora": False, "use_dora": False,
      "init_lora_weights": True, "inference_mode": True, "modules_to_save": None,
      "layers_to_transform": None, "revision": None,
  }


def export_peft(model, cfg: ModelConfig, out_dir, *, base_model_name_or_path: str | None = None,
                tokenizer=None) -> pathlib.Path:
  """Writes adapter_config.json + adapter_model.safetensors (temp dir renamed at the end)."""
  tensors = peft_tensors(model, cfg)
  config = adapter_config(model, cfg, base_model_name_or_path)
  out_dir = pathlib.Path(out_dir)
  if jax.process_index() != 0:
    return out_dir
  tmp = pathlib.Path(fileio.staging_dir(out_dir))
  try:
    save_file(tensors, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    with open(tmp / ADAPTER_CONFIG, "w") as f:
      json.dump(config, f, indent=2)
    if tokenizer is not None:
      tokenizer.save_pretrained(str(tmp))
    fileio.replace_dir(tmp, out_dir)
    tmp = None
  finally:
    if tmp is not None and tmp.exists():
      shutil.rmtree(tmp, ignore_errors=True)
  return out_dir


# ---- import: a PEFT adapter directory onto a jaxift model --------------------------------------------

_PEFT_KEY = re.compile(r"^(?:base_model\.model\.)?model\.layers\.(\d+)\.(self_attn|mlp)\."
                       r"(q|k|v|o|gate|up|down)_proj\.lora_(A|B)(?:\.default)?\.weight$")
_UNSUPPORTED = {"use_dora": False, "use_rslora": False, "fan_in_fan_out": False, "bias": "none",
                "modules_to_save": None, "rank_pattern": {}, "alpha_pattern": {}}


def load_peft(model, cfg: ModelConfig, adapter_dir, *, mesh=None, rules=None) -> list[str]:
  """Adds the adapters of a PEFT LoRA directory to `model` (in place); returns the target paths."""
  adapter_dir = pathlib.Path(adapter_dir)
  config_file, weights_file = adapter_dir / ADAPTER_CONFIG, adapter_dir / ADAPTER_WEIGHTS
  for f in (config_file, weights_file):
    if not f.exists():
      raise FileNotFoundError(f"{adapter_dir}: no {f.name} (expected a PEFT LoRA adapter directory)")
  config = json.loads(config_file.read_text())
  if config.get("peft_type") != "LORA":
    raise ValueError(f"{config_file}: peft_type {config.get('peft_type')!r}, expected 'LORA'")
  for key, plain in _UNSUPPORTED.items():
    if config.get(key) is not None and config[key] != plain:
      raise ValueError(f"{config_file}: {key}={config[key]!r} is not supported (only {plain!r})")
  if cfg.family != "llama":
    raise ValueError(f"PEFT adapters load onto the Llama-layout families, not {cfg.model_type!r}")
  tensors: dict[tuple[int, str], dict[str, np.ndarray]] = {}
  for key, value in load_file(str(weights_file)).items():
    m = _PEFT_KEY.match(key)
    if m is None:
      raise ValueError(f"{weights_file}: tensor {key!r} is not a LoRA A/B weight of a Llama-layout "
                       f"projection")
    tensors.setdefault((int(m.group(1)), m.group(3)), {})[m.group(4)] = value
  per_layer: dict[int, set[str]] = {}
  for layer, name in tensors:
    per_layer.setdefault(layer, set()).add(name)
  if model.scan_layers:
    names = set.union(*per_layer.values())
    if sorted(per_layer) != list(range(cfg.num_hidden_layers)) or any(
        v != names for v in per_layer.values()):
      raise ValueError(f"{weights_file}: adapters differ between layers; load with "
                       f"scan_layers=False")
    regex = rf"layers/(attn|mlp)/({'|'.join(sorted(names))})_kernel$"
  else:
    regex = "|".join(rf"^layers/{i}/(attn|mlp)/({'|'.join(sorted(ns))})_kernel$"
                     for i, ns in sorted(per_layer.items()))
  lora_config = ml_collections.ConfigDict(dict(
      rank=int(config["r"]), alpha=float(config["lora_alpha"]),
      dropout=float(config.get("lora_dropout", 0.0)), target_regex=regex))
  paths = lora.apply_lora(model, lora_config, mesh=mesh, rules=rules)
  for layer, block in lora.lora_blocks(model):
    for part in ("attn", "mlp"):
      module = getattr(block, part)
      for name in getattr(module, "lora_targets", ()):
        for which, var in (("A", getattr(module, f"{name}_lora_a")),
                           ("B", getattr(module, f"{name}_lora_b"))):
          layers = range(cfg.num_hidden_layers) if layer is None else [layer]
          pieces = []
          for i in layers:
            w = tensors[(i, name)].get(which)
            if w is None:
              raise KeyError(f"{weights_file}: layer {i} {name}_proj has no lora_{which}")
            shape = var.shape[1:] if layer is None else var.shape
            # lora_A [r, in] -> [in..., r]; lora_B [out, r] -> [r, out...]
            pieces.append(np.asarray(w, np.float32).T.reshape(shape))
          value = np.stack(pieces) if layer is None else pieces[0]
          var.set_value(jax.device_put(value.astype(var[...].dtype), var[...].sharding))
  return paths
