"""Meshes and shardings: data parallel, FSDP, tensor parallel and sequence (ring) parallel.

The config block ``mesh.{data, fsdp, tensor, sequence}`` names a device mesh
whose axis sizes multiply to the device count (1 everywhere by default: one
device, same code path). JAX's SPMD partitioner does the rest from annotations:

- batches: ``[batch, seq]`` sharded as ``P(("data", "fsdp"), "sequence")``;
- parameters and optimizer state: the input dimension of the matrices that
  read the residual stream (``qkv``, ``up``, ``gate``) and the output dimension
  of those that write it (``out``, ``down``) over ``fsdp``, their head/hidden
  dimension over ``tensor`` (Megatron's column/row split); embeddings ``[vocab,
  d]`` over ``(tensor, fsdp)``; vectors replicated. A dimension an axis does not
  divide stays unsharded on that axis;
- attention: ``impl="ring"`` (chosen by ``auto`` when ``mesh.sequence > 1``)
  passes K/V blocks around the ``sequence`` axis (``attnlab.attention.ring``).

``initialize_distributed`` starts multi-host JAX from the config or the
environment (see ``docs/parallel.md``).
"""

from __future__ import annotations

import os
import re

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from attnlab.attention import IMPLS, KINDS
from attnlab.registry import ConfigError, Declared, Field

AXES = ("data", "fsdp", "tensor", "sequence")

# mesh.*: every default is here and only here.
MESH_FIELDS = (
    Field("data", 1, "data parallel (batch)", minimum=1),
    Field("fsdp", 1, "batch + parameters and optimizer state sharded", minimum=1),
    Field("tensor", 1, "attention heads and MLP hidden units", minimum=1),
    Field("sequence", 1, "ring attention over the sequence (impl auto -> ring)", minimum=1),
    Field("coordinator_address", "", "multi-host: host:port of process 0 (or JAX_* env)"),
    Field("num_processes", 0, "multi-host: processes (0: from the environment)", minimum=0),
    Field("process_id", -1, "multi-host: this process (-1: from the environment)", minimum=-1),
)
BATCH = ("data", "fsdp")

# Parameter name -> role. "in": reads the residual stream [d_model, hidden];
# "out": writes it [hidden, d_model]; "embed": [vocab, d_model].
_ROLES = (("qkv", "in"), ("up", "in"), ("gate", "in"), ("out", "out"), ("down", "out"),
          ("embed", "embed"), ("unembed", "in"), ("position_table", "embed"))


def mesh_shape(cfg) -> tuple[int, ...]:
  return tuple(int(cfg.mesh.get(a, 1)) for a in AXES)


def check_mesh(cfg, device_count: int | None = None) -> None:
  """Raise ``ConfigError`` for a mesh that cannot work, before anything compiles.

  Static checks always; the device-count check when ``device_count`` is given.
  """
  m, a = cfg.mesh, cfg.model.attention
  for axis in AXES:
    value = m.get(axis, 1)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
      raise ConfigError(f"mesh.{axis}={value!r} must be a positive int")
  if a.num_heads % m.tensor:
    divisors = [t for t in range(1, a.num_heads + 1) if a.num_heads % t == 0]
    raise ConfigError(f"mesh.tensor={m.tensor} must divide model.attention.num_heads="
                      f"{a.num_heads} (heads are split across the tensor axis); valid: "
                      f"{', '.join(map(str, divisors))}")
  if cfg.data.seq_len % m.sequence:
    raise ConfigError(f"mesh.sequence={m.sequence} must divide data.seq_len={cfg.data.seq_len}")
  layout = Declared(a, IMPLS.get("ring").options).ring_layout
  if m.sequence > 1 and layout == "zigzag" and cfg.data.seq_len % (2 * m.sequence):
    raise ConfigError(f"model.attention.ring_layout='zigzag' needs data.seq_len="
                      f"{cfg.data.seq_len} divisible by 2 x mesh.sequence = {2 * m.sequence}; "
                      f"use ring_layout='striped' or 'contiguous', or another length")
  sharding = [n for n, spec in IMPLS.items() if spec.shards_sequence]
  if m.sequence > 1 and a.impl != "auto" and a.impl not in sharding:
    raise ConfigError(f"mesh.sequence={m.sequence} shards the sequence, which needs "
                      f"model.attention.impl={' or '.join(map(repr, sharding))} (or 'auto'); "
                      f"got {a.impl!r}")
  if m.sequence > 1 and not KINDS.get(a.kind).uses_impl:
    valid = [n for n, spec in KINDS.items() if spec.uses_impl]
    raise ConfigError(f"mesh.sequence={m.sequence}: a sequence-sharded impl computes "
                      f"{', '.join(valid)} attention; model.attention.kind={a.kind!r} cannot be "
                      f"sequence-sharded")
  batch_shards = m.data * m.fsdp
  if cfg.train.batch_size % batch_shards:
    raise ConfigError(f"train.batch_size={cfg.train.batch_size} must be divisible by "
                      f"mesh.data x mesh.fsdp = {batch_shards}")
  if device_count is not None and int(np.prod(mesh_shape(cfg))) != device_count:
    sizes = " x ".join(f"{axis}={size}" for axis, size in zip(AXES, mesh_shape(cfg)))
    raise ConfigError(f"mesh {sizes} has {int(np.prod(mesh_shape(cfg)))} devices but JAX sees "
                      f"{device_count}; the product of mesh.* must equal the device count")


def make_mesh(cfg) -> jax.sharding.Mesh:
  """The training mesh over every device (checks the device count first)."""
  check_mesh(cfg, jax.device_count())
  auto = (jax.sharding.AxisType.Auto,) * len(AXES)
  return jax.make_mesh(mesh_shape(cfg), AXES, axis_types=auto)


def _fits(size: int, mesh, axes) -> bool:
  axes = axes if isinstance(axes, tuple) else (axes,)
  return size % int(np.prod([mesh.shape[a] for a in axes])) == 0


def param_spec(path: str, shape: tuple[int, ...], mesh) -> P:
  """PartitionSpec of a parameter (or its optimizer moments) from its path and shape."""
  if len(shape) != 2:
    return P()
  name = next((role for key, role in _ROLES
               if re.search(rf"(^|/){key}(/|$)", path)), None)
  if name == "in":
    dims = ("fsdp", "tensor")
  elif name == "out":
    dims = ("tensor", "fsdp")
  elif name == "embed":
    dims = ("tensor", "fsdp")
  else:
    dims = ("fsdp", None)
  return P(*(axis if axis and _fits(size, mesh, axis) else None
             for axis, size in zip(dims, shape)))


def _path(key_path) -> str:
  parts = []
  for k in key_path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
  return "/".join(parts)


def state_shardings(state, mesh):
  """NamedSharding for every leaf of the training state (params, optimizer state, step)."""
  def spec(key_path, leaf):
    return NamedSharding(mesh, param_spec(_path(key_path), np.shape(leaf), mesh))
  return jax.tree_util.tree_map_with_path(spec, state)


def batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH, "sequence"))


def put_batch(arrays, mesh):
  """Host batches -> global arrays sharded over (data, fsdp) x sequence.

  Each process passes its own rows (multi-host); with one process that is the whole batch.
  A None entry (an absent optional part) stays None.
  """
  sharding = batch_sharding(mesh)
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if any(np.shape(a)[0] % shards or np.shape(a)[1] % mesh.shape["sequence"]
         for a in arrays if a is not None):
    sharding = NamedSharding(mesh, P())           # an odd-sized batch: replicated
  if jax.process_count() == 1:
    put = lambda a: jax.device_put(np.asarray(a), sharding)  # noqa: E731
  else:
    put = lambda a: jax.make_array_from_process_local_data(sharding, np.asarray(a))  # noqa: E731
  return tuple(None if a is None else put(a) for a in arrays)


def initialize_distributed(cfg=None) -> bool:
  """``jax.distributed.initialize`` from ``mesh.coordinator_address`` / ``num_processes`` /
  ``process_id``, or from ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``,
  ``JAX_PROCESS_ID``. Returns True when it initialized; single-host runs do nothing."""
  mesh = Declared(cfg.mesh if cfg is not None else {}, MESH_FIELDS)
  address = mesh.coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS", "")
  if not address:
    return False
  num = int(mesh.num_processes or os.environ.get("JAX_NUM_PROCESSES", 0))
  pid = mesh.process_id
  pid = int(pid if pid is not None and pid >= 0 else os.environ.get("JAX_PROCESS_ID", -1))
  if num < 1 or pid < 0:
    raise ConfigError(f"multi-host: coordinator_address={address!r} needs num_processes >= 1 "
                      f"and process_id >= 0 (config mesh.* or JAX_NUM_PROCESSES / "
                      f"JAX_PROCESS_ID); got num_processes={num}, process_id={pid}")
  jax.distributed.initialize(coordinator_address=address, num_processes=num, process_id=pid)
  return True
