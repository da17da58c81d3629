"""Model FLOPs utilization: achieved model FLOP/s over the hardware's peak.

FLOPs per trained token (the PaLM appendix B formula, as in nanoGPT and MaxText), counting a
multiply-add as 2 FLOPs and the backward pass as twice the forward:

  forward matmul FLOPs per token = 2 * N_matmul
    N_matmul = L * (D*H*K + 2*D*G*K + H*K*D + M*D*F) + D*V
      L layers, D model width, H query heads, G kv heads, K head dim, F MLP width,
      M = 3 MLP matrices (gated: gate, up, down) or 2 (GPT-2), V vocabulary (the LM head; the
      embedding lookup costs no FLOPs)
  forward attention FLOPs per token = 2 * 2 * L * H * K * T   (QK^T and AV over a row of length T;
      the causal half is counted in full, as PaLM does)
  train FLOPs per token = 3 * (forward matmul + forward attention)

Remat recomputation is NOT counted (that would be hardware FLOPs, not model FLOPs). Tokens are all
non-padding tokens the model processed. Frozen parameters still count (their activations' gradients
are needed), a small overestimate when whole groups are frozen.
"""
import dataclasses
from typing import Any

import jax

# Peak dense bf16 FLOP/s per chip (per device JAX sees), from the vendors' spec sheets.
PEAK_FLOPS_PER_DEVICE: dict[str, float] = {
    "tpu v4": 275e12,
    "tpu v5 lite": 197e12,  # v5e
    "tpu v5e": 197e12,
    "tpu v5p": 459e12,
    "tpu v5": 459e12,  # v5p reports device_kind "TPU v5"
    "tpu v6 lite": 918e12,  # v6e (Trillium)
    "tpu v6e": 918e12,
    "a100": 312e12,
    "h100": 989e12,  # SXM, dense
    "h200": 989e12,
}


@dataclasses.dataclass(frozen=True)
class FlopsShape:
  num_layers: int
  d_model: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  d_ff: int
  vocab_size: int
  gated_mlp: bool = True


def matmul_params(s: FlopsShape) -> int:
  """N_matmul of the module docstring."""
  attn = s.d_model * s.num_heads * s.head_dim * 2 + 2 * s.d_model * s.num_kv_heads * s.head_dim
  mlp = (3 if s.gated_mlp else 2) * s.d_model * s.d_ff
  return s.num_layers * (attn + mlp) + s.d_model * s.vocab_size


def train_flops_per_token(s: FlopsShape, seq_len: int) -> float:
  forward = 2 * matmul_params(s) + 4 * s.num_layers * s.num_heads * s.head_dim * seq_len
  return 3.0 * forward


def flops_shape_from_hf(hf: dict[str, Any]) -> FlopsShape:
  """From an HF config dict (llama/qwen2/qwen3/mistral names, or GPT-2's n_embd/n_layer/n_head)."""
  d = hf.get("hidden_size", hf.get("n_embd"))
  heads = hf.get("num_attention_heads", hf.get("n_head"))
  head_dim = hf.get("head_dim") or d // heads
  gpt2 = hf.get("model_type") == "gpt2"
  return FlopsShape(
      num_layers=hf.get("num_hidden_layers", hf.get("n_layer")),
      d_model=d,
      num_heads=heads,
      num_kv_heads=hf.get("num_key_value_heads") or heads,
      head_dim=head_dim,
      d_ff=hf.get("intermediate_size") or hf.get("n_inner") or 4 * d,
      vocab_size=hf["vocab_size"],
      gated_mlp=not gpt2)


def peak_flops_per_device(device_kind: str | None = None) -> float | None:
  """Peak FLOP/s of one device from its `device_kind`, or None (CPU, unknown chips)."""
  kind = (device_kind if device_kind is not None else jax.devices()[0].device_kind).lower()
  for name in sorted(PEAK_FLOPS_PER_DEVICE, key=len, reverse=True):  # 'tpu v5 lite' before 'tpu v5'
    if name in kind:
      return PEAK_FLOPS_PER_DEVICE[name]
  return None


def mfu(tokens_per_second: float, flops_per_token: float, num_devices: int,
        peak_per_device: float | None) -> float | None:
  if not peak_per_device:
    return None
  return tokens_per_second * flops_per_token / (num_devices * peak_per_device)
