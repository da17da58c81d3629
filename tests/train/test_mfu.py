"""MFU formula against a hand calculation, and the peak FLOP/s lookup."""
import pytest

from jaxift.train import mfu


def test_flops_per_token_hand_calculation():
  # L=2, D=4, H=2, G=1, K=2, F=8, V=10, gated MLP, T=16.
  shape = mfu.FlopsShape(num_layers=2, d_model=4, num_heads=2, num_kv_heads=1, head_dim=2,
                         d_ff=8, vocab_size=10, gated_mlp=True)
  # Per layer: q 4*4=16, k 4*2=8, v 8, o 16 -> 48; MLP 3*4*8 = 96 -> 144. Two layers 288, head 40.
  assert mfu.matmul_params(shape) == 328
  # forward = 2*328 + 4*L*H*K*T = 656 + 4*2*2*2*16 = 656 + 512 = 1168; train = 3x.
  assert mfu.train_flops_per_token(shape, seq_len=16) == 3 * 1168


def test_gpt2_shape_from_hf_dict():
  hf = {"model_type": "gpt2", "n_embd": 8, "n_layer": 3, "n_head": 2, "vocab_size": 50}
  s = mfu.flops_shape_from_hf(hf)
  assert (s.d_model, s.num_layers, s.num_heads, s.num_kv_heads, s.head_dim, s.d_ff) == (
      8, 3, 2, 2, 4, 32)
  assert not s.gated_mlp


def test_peak_table_lookup_by_device_kind():
  assert mfu.peak_flops_per_device("TPU v5 lite") == 197e12
  assert mfu.peak_flops_per_device("TPU v5") == 459e12
  assert mfu.peak_flops_per_device("TPU v6 lite") == 918e12
  assert mfu.peak_flops_per_device("TPU v4") == 275e12
  assert mfu.peak_flops_per_device("NVIDIA H100 80GB HBM3") == 989e12
  assert mfu.peak_flops_per_device("NVIDIA A100-SXM4-40GB") == 312e12
  assert mfu.peak_flops_per_device("NVIDIA H200") == 989e12
  assert mfu.peak_flops_per_device("cpu") is None


def test_mfu_value():
  # 1000 tok/s * 1e12 FLOP/tok on 4 devices of 1e15 -> 1e15 / 4e15.
  assert mfu.mfu(1000.0, 1e12, 4, 1e15) == pytest.approx(0.25)
  assert mfu.mfu(1000.0, 1e12, 4, None) is None
