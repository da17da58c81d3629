"""The per-op profile's attribution: HLO op names -> (phase, part) as JAX's transforms and the
model's named scopes write them, and self times of nested trace events."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxift.model import loss as loss_lib
from jaxift.tools import profile_step
from tests.perf.conftest import contract_batch, tiny_decoder


@pytest.mark.parametrize("op_name,expected", [
    ("jit(train_step)/jvp(logits)/BTD,VD->BTV/dot_general", ("forward", "logits")),
    ("jit(train_step)/transpose(jvp(logits))/BTD,VD->BTV/dot_general", ("backward", "logits")),
    ("jit(train_step)/transpose(jvp())/while/body/closed_call/mlp/jit(silu)", ("backward", "mlp")),
    ("jit(train_step)/jvp()/while/body/closed_call/attention/norm/mul", ("forward", "norm")),
    ("jit(train_step)/jvp(loss)/exp", ("forward", "loss")),
    ("jit(train_step)/transpose(jvp(embed))/scatter-add", ("backward", "embed")),
    ("jit(train_step)/optimizer/cond/branch_1_fun/mul", ("optimizer", "other")),
    ("jit(train_step)/optimizer/is_finite", ("optimizer", "other")),
    ("jit(train_step)/attention/and", ("forward", "attention")),  # the mask: no gradient
    ("jit(train_step)/jvp()/while/body/closed_call/mlpx/add", ("forward", "other")),  # no scope
])
def test_classify_jax_op(op_name, expected):
  assert profile_step.classify_jax_op(op_name) == expected


def test_self_times_subtract_nested_events_on_the_same_thread():
  events = [  # a while loop (0-100) holding two body ops; another thread runs in parallel
      {"ph": "X", "pid": 1, "tid": 1, "ts": 0, "dur": 100, "name": "while"},
      {"ph": "X", "pid": 1, "tid": 1, "ts": 10, "dur": 30, "name": "dot"},
      {"ph": "X", "pid": 1, "tid": 1, "ts": 50, "dur": 20, "name": "add"},
      {"ph": "X", "pid": 1, "tid": 2, "ts": 0, "dur": 60, "name": "dot"},
      {"ph": "X", "pid": 1, "tid": 1, "ts": 200, "dur": 5, "name": "add"},
  ]
  assert profile_step.self_times_us(events) == {"while": 50, "dot": 90, "add": 25}


def test_every_op_of_a_compiled_train_gradient_is_attributed_to_a_scope():
  """The tiny decoder's gradient: the named scopes reach the compiled HLO's metadata, so the
  forward and backward dots of the attention, MLP and logits are found by name."""
  graphdef, params, rest = nnx.split(tiny_decoder(seed=1), nnx.Param, ...)
  batch = {k: jnp.asarray(v) for k, v in contract_batch([[20, 17], [30]], 40, 101, seed=3).items()}

  def loss(params):
    model = nnx.merge(graphdef, params, rest)
    return loss_lib.forward_sums(model, batch)["ce_sum"]

  text = jax.jit(jax.grad(loss)).lower(params).compile().as_text()
  names = profile_step.hlo_op_names(text)
  classes = {profile_step.classify_jax_op(n) for n in names.values()}
  for phase in ("forward", "backward"):
    for part in ("attention", "mlp", "logits", "loss", "norm"):
      assert (phase, part) in classes, (phase, part, sorted(classes))


def test_table_and_markdown_keep_every_phase():
  table = profile_step.table_from_ops({("forward", "mlp"): 3.0, ("backward", "mlp"): 6.0,
                                       ("optimizer", "other"): 1.0})
  assert table["forward"]["mlp"] == 3.0 and table["backward"]["logits"] == 0.0
  result = {"jaxift": {"table_ms": table, "step_wall_s": 1.0, "step_cpu_s": 2.0}}
  md = profile_step.markdown(result)
  assert "| backward | mlp | 6 | 60.0 |" in md and "| **optimizer** | all | **1** | **10.0** |" in md
  assert np.isclose(sum(sum(p.values()) for p in table.values()), 10.0)
