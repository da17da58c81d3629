"""Attention kernels against the xla reference, and which kernel runs when (selection, fallback,
errors). Splash runs on CPU through Pallas interpret mode; cuDNN needs an NVIDIA GPU."""
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxift.model import attention as attention_lib
from jaxift.model import attention_kernels as kernels
from tests.perf.conftest import contract_batch, tiny_decoder


# On TPU the splash tests run the real kernel (not interpret mode), and float32 matmuls there use
# bfloat16 passes by default: a looser tolerance than CPU's exact float32.
ON_CPU = kernels.backend_name() == "cpu"
SPLASH_ATOL = 2e-5 if ON_CPU else 3e-2


@pytest.fixture(autouse=True)
def _exact_matmuls():
  """float32 references stay float32 on GPU (TF32) and TPU (bfloat16 passes) too."""
  with jax.default_matmul_precision("highest"):
    yield


def _reference(q, k, v, seg, window=None):
  return attention_lib.xla_attention(q, k, v, q_segment_ids_BxT=seg, kv_segment_ids_BxS=seg,
                                     sliding_window=window)


def _dense_reference(q, k, v, seg, window=None):
  """Independent of jaxift's mask code: a per-(row, query) loop over the allowed keys in numpy."""
  q, k, v, seg = (np.asarray(x, np.float64) for x in (q, k, v, seg))
  b, t, n, h = q.shape
  g = n // k.shape[2]
  out = np.zeros_like(q)
  for r in range(b):
    for i in range(t):
      if seg[r, i] == 0:
        continue
      keys = [j for j in range(i + 1) if seg[r, j] == seg[r, i]
              and (window is None or i - j < window)]
      for head in range(n):
        s = k[r, keys, head // g] @ q[r, i, head] / np.sqrt(h)
        p = np.exp(s - s.max())
        out[r, i, head] = (p / p.sum()) @ v[r, keys, head // g]
  return out


@pytest.fixture
def splash_interpret(monkeypatch):
  monkeypatch.setattr(kernels, "SPLASH_INTERPRET", True)


def test_xla_reference_matches_dense_loop(qkv):
  q, k, v, seg = qkv(t=24, h=8)
  for window in (None, 5):
    np.testing.assert_allclose(_reference(q, k, v, seg, window),
                               _dense_reference(q, k, v, seg, window), atol=2e-5)


@pytest.mark.parametrize("window", [None, 100])
def test_splash_interpret_equals_xla(qkv, splash_interpret, window):
  q, k, v, seg = qkv(t=256)
  run = jax.jit(lambda q, k, v, s: attention_lib.attention(
      q, k, v, q_segment_ids_BxT=s, kv_segment_ids_BxS=s, sliding_window=window, impl="splash"))
  out = run(q, k, v, seg)
  np.testing.assert_allclose(out, _reference(q, k, v, seg, window), atol=SPLASH_ATOL)
  assert np.all(np.asarray(out)[np.asarray(seg) == 0] == 0)  # padding queries output zeros


def test_splash_interpret_gradients_equal_xla(qkv, splash_interpret):
  q, k, v, seg = qkv(t=128, h=32)
  w = jax.random.normal(jax.random.key(9), q.shape)

  def loss(impl):
    return jax.jit(jax.grad(lambda q, k, v: jnp.sum(w * attention_lib.attention(
        q, k, v, q_segment_ids_BxT=seg, kv_segment_ids_BxS=seg, impl=impl)), argnums=(0, 1, 2)))
  for got, want in zip(loss("splash")(q, k, v), loss("xla")(q, k, v)):
    np.testing.assert_allclose(got, want, atol=5e-5 if ON_CPU else 5e-2)


def test_decoder_with_splash_interpret_equals_xla(splash_interpret):
  batch = contract_batch([[100, 90, 40], [256]], 256, 101)
  args = [jnp.asarray(batch[k]) for k in ("inputs", "positions", "segment_ids")]
  logits = {}
  for impl in ("xla", "splash"):
    model = tiny_decoder(attention_impl=impl, hf=dict(head_dim=64))
    graphdef, state = nnx.split(model)
    logits[impl] = jax.jit(lambda s, *a: nnx.merge(graphdef, s)(*a))(state, *args)
  mask = batch["segment_ids"] > 0
  np.testing.assert_allclose(np.asarray(logits["splash"])[mask], np.asarray(logits["xla"])[mask],
                             atol=1e-4 if ON_CPU else 5e-2)


@pytest.mark.skipif(not kernels.cudnn_available(), reason="cuDNN attention needs an NVIDIA GPU")
@pytest.mark.parametrize("packed", [False, True])
def test_cudnn_equals_xla_on_gpu(qkv, packed):
  q, k, v, seg = qkv(t=256, dtype=jnp.bfloat16)
  if not packed:
    seg = jnp.where(seg > 0, 1, 0)
  out = jax.jit(lambda q, k, v, s: attention_lib.attention(
      q, k, v, q_segment_ids_BxT=s, kv_segment_ids_BxS=s, impl="cudnn"))(q, k, v, seg)
  np.testing.assert_allclose(np.asarray(out, np.float32),
                             np.asarray(_reference(q, k, v, seg), np.float32), atol=2e-2)


def test_right_padded_detection_for_cudnn():
  padded = jnp.array([[1, 1, 1, 0], [1, 1, 1, 1]])
  ok, lengths = kernels._is_right_padded(padded)  # pylint: disable=protected-access
  assert bool(ok) and lengths.tolist() == [3, 4]
  for not_padded in ([[1, 1, 2, 0], [1, 1, 1, 1]], [[0, 1, 1, 1], [1, 1, 1, 1]]):
    assert not bool(kernels._is_right_padded(jnp.array(not_padded))[0])  # pylint: disable=protected-access


def test_explicit_unavailable_kernel_is_an_error():
  if kernels.backend_name() != "cpu":
    pytest.skip("running on a GPU/TPU backend: this checks the CPU backend's refusals")
  for name, needs in (("cudnn", "NVIDIA GPU"), ("splash", "TPU")):
    with pytest.raises(NotImplementedError, match=f"{name}.*not available.*cpu.*{needs}"):
      attention_lib.resolve_impl(name)
    with pytest.raises(NotImplementedError, match=name):
      tiny_decoder(attention_impl=name)
  with pytest.raises(ValueError, match="'flash' is unknown"):
    attention_lib.resolve_impl("flash")


def test_auto_on_cpu_is_xla_and_equal():
  if kernels.backend_name() != "cpu":
    pytest.skip("running on a GPU/TPU backend: this checks the CPU backend's choice")
  assert attention_lib.auto_kernel() == "xla"
  q = jnp.ones((1, 8, 4, 8))
  k = jnp.ones((1, 8, 2, 8))
  assert attention_lib.choose("auto", q, k, 0) == "xla"


def test_explicit_kernel_with_unsupported_shape_errors_auto_falls_back(
    qkv, splash_interpret, monkeypatch, caplog):
  q, k, v, seg = qkv(t=96)  # not a multiple of splash's 128-wide blocks
  with pytest.raises(ValueError, match="splash.*divisible by 128.*auto"):
    attention_lib.choose("splash", q, k, 0)
  monkeypatch.setattr(attention_lib, "auto_kernel", lambda: "splash")
  monkeypatch.setattr(kernels, "_warned", set())
  with caplog.at_level(logging.WARNING):
    assert attention_lib.choose("auto", q, k, 0) == "xla"
    assert attention_lib.choose("auto", q, k, 0) == "xla"
  fallbacks = [r for r in caplog.records if "splash -> xla" in r.getMessage()]
  assert len(fallbacks) == 1  # logged once, not per layer or per call
  # Cached decoding (queries at an offset) uses xla even when the kernel was named explicitly.
  assert attention_lib.choose("splash", q[:, :1], k, 5) == "xla"


def test_cudnn_refuses_float32_with_a_clear_reason():
  q = jnp.ones((1, 8, 4, 64), jnp.float32)
  reason = kernels.unsupported_reason("cudnn", q, q[:, :, :2], 0)
  assert "bfloat16" in reason and "float32" in reason
  assert kernels.unsupported_reason("cudnn", q.astype(jnp.bfloat16), q[:, :, :2], 0) is None


@pytest.mark.parametrize("packed,window", [(False, None), (False, 40), (True, None), (True, 40)])
def test_cudnn_call_arguments_through_jax_xla_implementation(qkv, packed, window):
  """The cudnn path run on CPU: jax.nn.dot_product_attention's XLA implementation gets the very
  arguments cuDNN gets on a GPU (seq lengths, causal, window, zeroed padding); packed batches run
  the Pallas GPU kernel (interpret mode here), or the xla fallback with a sliding window."""
  q, k, v, seg = qkv(t=64, h=16)
  if not packed:
    seg = jnp.where(seg > 0, 1, 0)

  def xla_fallback(q, k, v):
    return 2.0 * _reference(q, k, v, seg, window)  # marks which branch ran

  out = jax.jit(lambda q, k, v: kernels.cudnn_attention(
      q, k, v, segment_ids_BxT=seg, sliding_window=window, xla_fallback=xla_fallback,
      implementation="xla"))(q, k, v)
  want = _dense_reference(q, k, v, seg, window)
  np.testing.assert_allclose(out, 2.0 * want if packed and window else want, atol=2e-5)


def test_pallas_gpu_kernel_gradients_equal_xla(qkv):
  """The packed-batch GPU kernel (interpret mode on CPU): gradients through its custom VJP."""
  q, k, v, seg = qkv(t=64, h=16)
  w = jax.random.normal(jax.random.key(5), q.shape)

  def grads(fn):
    return jax.jit(jax.grad(lambda q, k, v: jnp.sum(w * fn(q, k, v)), argnums=(0, 1, 2)))(q, k, v)
  got = grads(lambda q, k, v: kernels.pallas_gpu_attention(q, k, v, segment_ids_BxT=seg,
                                                           interpret=True))
  for g, want in zip(got, grads(lambda q, k, v: _reference(q, k, v, seg))):
    np.testing.assert_allclose(g, want, atol=5e-5)


@pytest.mark.skipif(kernels.backend_name() != "tpu", reason="splash as the automatic choice needs a TPU")
def test_auto_is_splash_on_tpu():
  assert attention_lib.auto_kernel() == "splash"


@pytest.mark.skipif(not kernels.cudnn_available(), reason="cuDNN as the automatic choice needs an NVIDIA GPU")
def test_auto_is_cudnn_on_gpu_and_decoder_logits_match_xla():
  assert attention_lib.auto_kernel() == "cudnn"
  batch = contract_batch([[100, 90, 40], [200]], 256, 101)
  args = [jnp.asarray(batch[k]) for k in ("inputs", "positions", "segment_ids")]
  logits = {}
  for impl in ("xla", "auto"):
    model = tiny_decoder(attention_impl=impl, dtype="bfloat16", hf=dict(head_dim=64))
    graphdef, state = nnx.split(model)
    logits[impl] = jax.jit(lambda s, *a: nnx.merge(graphdef, s)(*a))(state, *args)
  mask = batch["segment_ids"] > 0
  np.testing.assert_allclose(np.asarray(logits["auto"])[mask], np.asarray(logits["xla"])[mask],
                             atol=5e-2)
