"""Logical axis names -> mesh axes -> shardings (DESIGN.md section 6).

Parameters carry logical names (`vocab`, `embed`, `heads`, `kv_heads`, `head_dim`, `mlp`, `layers`);
a config maps each name to a mesh axis (or None = replicated). Model loading and the trainer both go
through these helpers so a tensor lands in the same sharding whichever way it is born.
"""
from typing import Iterable, Sequence

import jax
from jax.experimental import mesh_utils
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# Default rules: FSDP shards the embedding dimension, tensor parallelism heads and MLP.
DEFAULT_LOGICAL_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("layers", None),
    ("norm", None),
    ("lora_rank", None),
)

Rules = Sequence[tuple[str, str | tuple[str, ...] | None]]


def make_mesh(shape: Sequence[int], axis_names: Sequence[str] = MESH_AXES,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A mesh over all (or the given) devices; one entry of `shape` may be -1 to take the rest."""
  devices = list(devices if devices is not None else jax.devices())
  shape = list(shape)
  if len(shape) != len(axis_names):
    raise ValueError(f"mesh shape {shape} does not match axis names {tuple(axis_names)}")
  if shape.count(-1) > 1:
    raise ValueError(f"mesh shape {shape}: at most one axis may be -1")
  known = int(np.prod([s for s in shape if s != -1]))
  if -1 in shape:
    if len(devices) % known:
      raise ValueError(f"mesh shape {shape} does not divide {len(devices)} devices")
    shape[shape.index(-1)] = len(devices) // known
  if int(np.prod(shape)) != len(devices):
    raise ValueError(f"mesh shape {shape} needs {int(np.prod(shape))} devices, have {len(devices)}")
  device_array = np.asarray(devices).reshape(shape)
  try:  # Topology-aware ordering on TPU/GPU; falls back to plain order on CPU.
    device_array = mesh_utils.create_device_mesh(shape, devices=devices)
  except Exception:  # pylint: disable=broad-except
    pass
  return Mesh(device_array, tuple(axis_names))


def logical_to_spec(logical_axes: Iterable[str | None] | None, rules: Rules) -> PartitionSpec:
  """Maps logical axis names to a PartitionSpec; unknown names and None are replicated.

  A mesh axis is used at most once per tensor (the first logical axis that claims it wins).
  """
  if logical_axes is None:
    return PartitionSpec()
  table = dict(rules)
  used: set[str] = set()
  spec = []
  for name in logical_axes:
    target = table.get(name) if name is not None else None
    targets = (target,) if isinstance(target, str) else tuple(target or ())
    targets = tuple(t for t in targets if t not in used)
    used.update(targets)
    spec.append(None if not targets else targets[0] if len(targets) == 1 else targets)
  return PartitionSpec(*spec)


def named_sharding(mesh: Mesh, logical_axes: Iterable[str | None] | None, rules: Rules,
                   shape: Sequence[int] | None = None) -> NamedSharding:
  """NamedSharding for a tensor with these logical axes.

  With `shape`, a dimension whose size the mesh axes do not divide is replicated instead of failing
  (e.g. 3 kv heads on a tensor axis of 2).
  """
  spec = logical_to_spec(logical_axes, rules)
  if shape is not None:
    fixed = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
      names = (axes,) if isinstance(axes, str) else tuple(axes or ())
      size = int(np.prod([mesh.shape[a] for a in names])) if names else 1
      fixed.append(axes if dim % size == 0 else None)
    spec = PartitionSpec(*fixed)
  return NamedSharding(mesh, spec)


def mesh_rules(config) -> tuple:
  """config.mesh.rules as hashable tuples (a JSON round trip turns them into lists)."""
  return tuple((name, tuple(t) if isinstance(t, (list, tuple)) else t)
               for name, t in config.mesh.rules)
