"""jaxift.model.quantize against independent numpy references of each scheme (per-block loops,
nearest code-book value by argmin) and the published NF4 code book."""
import jax.numpy as jnp
import numpy as np
import pytest

from jaxift.model import quantize as Q

# QLoRA's NF4 values as printed in bitsandbytes (functional.py, `get_4bit_type('nf4')`).
PUBLISHED_NF4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
                 -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
                 0.07958029955625534, 0.16093020141124725, 0.24611230194568634,
                 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                 0.7229568362236023, 1.0]


def reference_round_trip(w: np.ndarray, scheme: str, block: int, axis: int) -> np.ndarray:
  """Dequantize(quantize(w)) block by block with plain loops (float64 arithmetic)."""
  moved = np.ascontiguousarray(np.moveaxis(w.astype(np.float64), axis, -1))
  out = np.empty_like(moved)  # contiguous: the flat views below write into it
  flat_in, flat_out = moved.reshape(-1, moved.shape[-1]), out.reshape(-1, moved.shape[-1])
  book = np.asarray(PUBLISHED_NF4, np.float64)
  for r in range(flat_in.shape[0]):
    for start in range(0, flat_in.shape[1], block):
      x = flat_in[r, start:start + block]
      absmax = np.abs(x).max()
      if scheme == "nf4":
        scale = absmax
        normed = x / scale if scale else np.zeros_like(x)
        y = book[np.argmin(np.abs(normed[:, None] - book[None, :]), axis=1)] * scale
      else:
        qmax = {"int8": 127, "int4": 7}[scheme]
        scale = np.float32(absmax / qmax)  # stored as float32, as the scales are
        y = np.clip(np.round(x / scale), -qmax, qmax) * scale if scale else np.zeros_like(x)
      flat_out[r, start:start + block] = y
  return np.moveaxis(out, -1, axis)


def test_nf4_code_book_is_the_published_one():
  np.testing.assert_array_equal(Q.NF4_CODEBOOK, np.asarray(PUBLISHED_NF4, np.float32))


@pytest.mark.parametrize("scheme", ["int8", "int4", "nf4"])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_round_trip_equals_numpy_reference(scheme, axis):
  rng = np.random.default_rng(3)
  w = rng.normal(0, 0.02, (32, 16, 24)).astype(np.float32)
  w[:, 0, 0] = 0  # an all-zero block along every axis tried below
  w[5, 3, 7] = 0.5  # an outlier: its block's other values get coarse codes
  block = 8
  q = Q.quantize(w, scheme, block, axis)
  got = Q.dequantize(q)
  want = reference_round_trip(w, scheme, block, axis)
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-7)
  # Storage: codes and float32 scales; 4-bit schemes pack two codes per byte along the axis.
  k = w.shape[axis]
  assert q.scales.dtype == np.float32 and q.scales.shape[axis] == k // block
  assert q.codes.dtype == (np.int8 if scheme == "int8" else np.uint8)
  assert q.codes.shape[axis] == (k if scheme == "int8" else k // 2)
  assert q.shape == w.shape
  # The jax path gives the same codes as the numpy one (the loader uses numpy) and the same
  # scales up to one float32 ulp (XLA divides by a constant as a multiplication by its inverse).
  qj = Q.quantize(jnp.asarray(w), scheme, block, axis)
  np.testing.assert_array_equal(np.asarray(qj.codes), q.codes)
  np.testing.assert_allclose(np.asarray(qj.scales), q.scales, rtol=2.5e-7, atol=0)
  np.testing.assert_allclose(np.asarray(Q.dequantize(qj)), got, rtol=5e-7, atol=0)


@pytest.mark.parametrize("scheme,bound", [("int8", 0.5 / 127), ("int4", 0.5 / 7),
                                          ("nf4", (1.0 - 0.6961928009986877) / 2)])
def test_round_trip_error_within_half_a_step_of_the_block_absmax(scheme, bound):
  """|w - deq(q(w))| <= half the widest gap between codes, times the block's absmax."""
  rng = np.random.default_rng(0)
  w = rng.standard_t(4, (64, 48)).astype(np.float32)
  back = Q.dequantize(Q.quantize(w, scheme, 16, 0))
  absmax = np.repeat(np.abs(w.reshape(4, 16, 48)).max(axis=1), 16, axis=0)
  assert np.all(np.abs(back - w) <= bound * absmax * (1 + 1e-6))


def test_block_maximum_is_exact_and_packing_order():
  w = np.array([[0.1, -0.4, 0.15, 0.0]], np.float32).T  # one block of 4 along axis 0
  q = Q.quantize(w, "int4", 4, 0)
  # scale 0.4/7; codes round(w/scale)+8 = [10, 1, 11, 8] (1.75, -7, 2.625, 0): low nibble first.
  np.testing.assert_array_equal(q.codes[:, 0], [10 | (1 << 4), 11 | (8 << 4)])
  np.testing.assert_allclose(q.scales[:, 0], [0.4 / 7], rtol=1e-7)
  assert Q.dequantize(q)[1, 0] == np.float32(-0.4)


def test_bad_settings_are_named_errors():
  w = np.zeros((48, 8), np.float32)
  with pytest.raises(ValueError, match=r"scheme='fp3' is not a quantization scheme.*nf4"):
    Q.quantize(w, "fp3", 8)
  with pytest.raises(ValueError, match=r"block_size=32 does not divide axis 0 \(size 48\) of "
                                       r"layers/0/mlp/down_kernel"):
    Q.quantize(w, "nf4", 32, 0, name="layers/0/mlp/down_kernel")
  with pytest.raises(ValueError, match=r"block_size=3 must be .*even for nf4"):
    Q.quantize(w, "nf4", 3, 0)
  with pytest.raises(ValueError, match=r"axis=2 is out of range"):
    Q.quantize(w, "int8", 8, 2)
  from jaxift.model import lora
  c = lora.default_lora_config()
  c.base_quantization = "q4_0"
  with pytest.raises(ValueError, match=r"config.lora.base_quantization='q4_0' is unknown"):
    Q.from_config(c)
  c.base_quantization, c.quantization_block_size = "int4", 0
  with pytest.raises(ValueError, match=r"config.lora.quantization_block_size: block_size=0"):
    Q.from_config(c)
  c.base_quantization = "none"
  assert Q.from_config(c) is None
