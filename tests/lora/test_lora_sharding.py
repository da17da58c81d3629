"""Adapters on a mesh of 8 fake CPU devices (a subprocess: XLA_FLAGS must precede JAX): born in
the shardings their logical axes ask for, and the same logits as on one device."""
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
    from jaxift.model import lora
    from jaxift.model.loading import load_model
    from jaxift.model.sharding import make_mesh
    assert len(jax.devices()) == 8
    mesh = make_mesh((2, 2, 2))  # data, fsdp, tensor
    c = lora.default_lora_config()
    c.rank, c.alpha = 4, 8.0
    ex = np.array([[3, 14, 15, 92, 65, 35, 8, 9]], np.int32)
    args = (ex, np.arange(8)[None], np.ones((1, 8), np.int32))

    def forward(model):
      g, s = nnx.split(model)
      return np.asarray(jax.jit(lambda s: nnx.merge(g, s)(*args))(s))

    def nonzero_b(model):
      for path, var in nnx.to_flat_state(nnx.state(model, lora.LoRAParam)):
        if path[-1].endswith("_lora_b"):
          var.set_value(jax.device_put(np.full(var.shape, 0.05, np.float32), var[...].sharding))

    plain, _ = load_model(sys.argv[1], scan_layers=True)
    sharded, _ = load_model(sys.argv[1], scan_layers=True, mesh=mesh)
    lora.apply_lora(plain, c, seed=1)
    lora.apply_lora(sharded, c, seed=1, mesh=mesh)
    flat = {"/".join(map(str, p)): v[...]
            for p, v in nnx.to_flat_state(nnx.state(sharded, lora.LoRAParam))}
    want = {"layers/attn/q_lora_a": P(None, "fsdp", None),
            "layers/attn/q_lora_b": P(None, None, "tensor", None),
            "layers/attn/o_lora_a": P(None, "tensor", None, None),
            "layers/attn/o_lora_b": P(None, None, "fsdp"),
            "layers/mlp/up_lora_b": P(None, None, "tensor"),
            "layers/mlp/down_lora_a": P(None, "tensor", None)}
    for name, spec in want.items():
      assert flat[name].sharding.spec == spec, (name, flat[name].sharding.spec, spec)
    assert flat["layers/attn/q_lora_a"].addressable_shards[0].data.shape == (2, 16, 4)
    nonzero_b(plain)
    nonzero_b(sharded)
    # As the trainer jits: explicit in_shardings taken from every array of the split model.
    graphdef, adapters, rest = nnx.split(sharded, lora.LoRAParam, ...)
    shardings = jax.tree.map(lambda x: x.sharding, (adapters, rest))
    assert all(s.mesh == mesh for s in jax.tree.leaves(shardings)), "an array is off the mesh"
    step = jax.jit(lambda a, r: nnx.merge(graphdef, a, r)(*args), in_shardings=shardings)
    np.testing.assert_allclose(np.asarray(step(adapters, rest)), forward(plain), atol=1e-5)
    print("OK")
""")


def test_adapters_sharded_by_logical_axes_on_8_devices(base_checkpoint):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO_ROOT))
  result = subprocess.run([sys.executable, "-c", SCRIPT, base_checkpoint("llama")], env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0 and result.stdout.strip().endswith("OK"), result.stderr[-3000:]
