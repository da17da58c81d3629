"""Loading onto a mesh of 8 fake CPU devices (in a subprocess: XLA_FLAGS must precede JAX):
pretrained tensors land in the shardings their logical axes ask for, random init is born
sharded, and the logits equal the single-device ones."""
import os
import subprocess
import sys
import textwrap

from tests.conftest import REPO_ROOT

SCRIPT = textwrap.dedent("""
    import sys
    import jax, numpy as np
    from jax.sharding import PartitionSpec as P
    from flax import nnx
    from jaxift.model.config import default_model_config
    from jaxift.model.loading import build_model, load_model
    from jaxift.model.sharding import make_mesh
    assert len(jax.devices()) == 8
    mesh = make_mesh((2, 2, 2))  # data, fsdp, tensor
    directory = sys.argv[1]
    ex = np.array([[3, 14, 15, 92, 65, 35, 8, 9]], np.int32)
    args = (ex, np.arange(8)[None], np.ones((1, 8), np.int32))

    def forward(model):
      g, s = nnx.split(model)
      return np.asarray(jax.jit(lambda s: nnx.merge(g, s)(*args))(s))

    for scan in (False, True):
      plain, _ = load_model(directory, scan_layers=scan)
      sharded, _ = load_model(directory, scan_layers=scan, mesh=mesh)
      params = dict(nnx.to_flat_state(nnx.state(sharded, nnx.Param)))
      q = params[("layers", "attn", "q_kernel") if scan else ("layers", 0, "attn", "q_kernel")][...]
      want = P(None, "fsdp", "tensor", None) if scan else P("fsdp", "tensor", None)
      assert q.sharding.spec == want, (q.sharding.spec, want)
      # 2 kv heads on a tensor axis of 2 shard; embedding [vocab=97, embed=32]: 97 is not
      # divisible by 2, so vocab stays replicated while embed is sharded over fsdp
      emb = params[("embed", "embedding")][...]
      assert emb.sharding.spec == P(None, "fsdp"), emb.sharding.spec
      assert len(emb.addressable_shards) == 8 and emb.addressable_shards[0].data.shape == (97, 16)
      np.testing.assert_allclose(forward(sharded), forward(plain), atol=1e-5)

    c = default_model_config()
    c.hf_config = dict(model_type="llama", vocab_size=64, hidden_size=32, intermediate_size=48,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    born, _ = build_model(c, mesh=mesh, seed=5)
    plain, _ = build_model(c, seed=5)
    k = dict(nnx.to_flat_state(nnx.state(born, nnx.Param)))[("layers", 1, "mlp", "up_kernel")][...]
    assert k.sharding.spec == P("fsdp", "tensor"), k.sharding.spec
    np.testing.assert_allclose(forward(born), forward(plain), atol=1e-5)
    print("OK")
""")


def test_load_and_init_onto_8_device_mesh(tiny_checkpoint):
  directory, _ = tiny_checkpoint("llama3_rope_untied")
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO_ROOT))
  result = subprocess.run([sys.executable, "-c", SCRIPT, str(directory)], env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-4000:]
