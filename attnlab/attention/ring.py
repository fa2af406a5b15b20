"""Ring attention (Liu et al. 2023): sequence-sharded softmax attention over a device ring.

Each of the ``S`` devices on the mesh axis ``sequence`` holds ``N / S`` tokens of
q, k and v. In ``S`` steps every device attends its queries to the key/value
block it holds, with the blockwise online softmax (float32 max, sum and
accumulator), then passes that block to its neighbour with ``lax.ppermute``.
After ``S`` steps each query has seen every key; no device ever holds more than
two blocks of K/V or an ``[N, N]`` score matrix. The backward pass is JAX's
transpose of the same ring (``ppermute`` reversed), with each step rematerialised
(``jax.checkpoint``) so only the carries are stored.

Masks and score modifiers are evaluated on *global token positions*, so any
pattern that is a function of (query position, key position) and is the same
for every head (causal, windows, prefix, dilated, ...) and score modifiers of
(query position, key position) compose with the ring exactly as with the other impls.

Layouts (which global tokens a shard holds; ``c = N / (2S)``):

- ``contiguous``: shard r holds ``[r N/S, (r+1) N/S)``. Causal work is unbalanced:
  the last shard does S times the work of the first.
- ``zigzag``: shard r holds chunks ``r`` and ``2S-1-r`` of size ``c`` (balanced causal work).
- ``striped``: shard r holds tokens ``r, r+S, r+2S, ...`` (balanced causal work).

q, k, v arrive in natural token order (sharded or not); a non-contiguous layout
permutes the sequence before the ring and un-permutes the output after it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import PartitionSpec as P

from attnlab.attention import masks as masks_lib
from attnlab.attention.core import IMPLS, Implementation
from attnlab.registry import Field

_F32 = jnp.float32
LAYOUTS = ("contiguous", "zigzag", "striped")
SEQUENCE_AXIS = "sequence"
BATCH_AXES = ("data", "fsdp")
HEAD_AXIS = "tensor"


def layout_positions(n: int, shards: int, layout: str) -> np.ndarray:
  """Global positions held by each shard, in shard order: int ``[shards, n // shards]``."""
  if layout == "contiguous":
    return np.arange(n).reshape(shards, -1)
  if layout == "striped":
    return np.arange(n).reshape(-1, shards).T.copy()
  if layout == "zigzag":
    chunks = np.arange(n).reshape(2 * shards, -1)
    return np.stack([np.concatenate([chunks[r], chunks[2 * shards - 1 - r]])
                     for r in range(shards)])
  raise ValueError(f"ring layout={layout!r} is not valid; valid: {', '.join(LAYOUTS)}")


def check_layout(n: int, shards: int, layout: str) -> str | None:
  """Why ``n`` tokens cannot be laid out on ``shards`` devices, or None."""
  if layout not in LAYOUTS:
    return f"ring layout={layout!r} is not valid; valid: {', '.join(LAYOUTS)}"
  unit = 2 * shards if layout == "zigzag" else shards
  if n % unit:
    return (f"impl='ring' with layout {layout!r} needs a sequence length divisible by "
            f"{unit} ({'2 x ' if layout == 'zigzag' else ''}mesh.sequence={shards}); got {n}")
  return None


def _axis_size(mesh, name: str) -> int:
  return dict(zip(mesh.axis_names, mesh.axis_sizes)).get(name, 1)


def _ring_shard(q, k, v, q_pos, kv_pos, mod_leaves, *, mask, mod_def, scale, shards,
                kv_sharded, heads_per_shard, group):
  """Per-device body. q [b, n, h, D], k/v [b, n, hkv, D], positions [n] (global);
  mod_leaves: the score modifier's leaves (replicated), rebuilt with ``mod_def``."""
  score_mod = None if mod_def is None else jax.tree_util.tree_unflatten(mod_def, mod_leaves)
  if heads_per_shard and score_mod is not None:
    score_mod = score_mod.select_heads(lax.axis_index(HEAD_AXIS) * heads_per_shard,
                                       heads_per_shard)
  if not kv_sharded and group > 1:
    # K/V heads replicated (e.g. MQA under tensor parallelism): pick each local query
    # head's K/V head by its global index.
    first = lax.axis_index(HEAD_AXIS) * heads_per_shard if heads_per_shard else 0
    kv_index = (first + jnp.arange(q.shape[2])) // group
    k, v = jnp.take(k, kv_index, axis=2), jnp.take(v, kv_index, axis=2)
  local_group = q.shape[2] // k.shape[2]
  b, n, h, d = q.shape
  qg = q.reshape(b, n, k.shape[2], local_group, d).astype(_F32)
  perm = [(i, (i + 1) % shards) for i in range(shards)]

  @jax.checkpoint
  def step(carry, _):
    acc, m, l, k_blk, v_blk, pos_blk = carry
    s = jnp.einsum("bqkgd,bnkd->bkgqn", qg, k_blk.astype(_F32)) * scale     # [b, hkv, g, q, n]
    s = s.reshape(b, h, n, n)
    q_idx, kv_idx = q_pos[:, None], pos_blk[None, :]
    if score_mod is not None:
      s = score_mod(s, q_idx, kv_idx)
    if mask is not None:
      s = jnp.where(mask(q_idx, kv_idx), s, -jnp.inf)
    m_new = jnp.maximum(m, s.max(axis=-1))
    m_safe = jnp.where(jnp.isneginf(m_new), 0.0, m_new)
    alpha = jnp.exp(m - m_safe)
    p = jnp.exp(s - m_safe[..., None])
    l = alpha * l + p.sum(axis=-1)
    pv = jnp.einsum("bkgqn,bnkd->bkgqd", p.reshape(b, k_blk.shape[2], -1, n, n),
                    v_blk.astype(_F32)).reshape(b, h, n, -1)
    acc = alpha[..., None] * acc + pv
    k_blk, v_blk, pos_blk = (lax.ppermute(x, SEQUENCE_AXIS, perm) for x in (k_blk, v_blk, pos_blk))
    return (acc, m_new, l, k_blk, v_blk, pos_blk), None

  init = (jnp.zeros((b, h, n, v.shape[-1]), _F32), jnp.full((b, h, n), -jnp.inf, _F32),
          jnp.zeros((b, h, n), _F32), k, v, kv_pos)
  (acc, _, l, *_), _ = lax.scan(step, init, None, length=shards)
  out = acc / jnp.where(l == 0.0, 1.0, l)[..., None]
  return out.transpose(0, 2, 1, 3).astype(q.dtype)


def ring_attention(q, k, v, *, mask=None, score_mod=None, scale: float, mesh=None,
                   layout: str = "zigzag"):
  """Softmax attention with the sequence sharded over the mesh axis ``sequence``.

  q: [batch, N, heads, D]; k, v: [batch, N, kv_heads, D]; returns [batch, N, heads, Dv].
  ``mesh``: a Mesh or AbstractMesh with a ``sequence`` axis (default: the mesh set by
  ``jax.set_mesh``). Batch is sharded over ``data``/``fsdp`` and heads over ``tensor``
  where those axes exist and divide the sizes.
  """
  mesh = mesh if mesh is not None else jax.sharding.get_abstract_mesh()
  shards = _axis_size(mesh, SEQUENCE_AXIS)
  n = q.shape[1]
  reason = check_layout(n, shards, layout)
  if reason:
    raise ValueError(reason)
  batch_axes = tuple(a for a in BATCH_AXES if _axis_size(mesh, a) > 1)
  batch_size = int(np.prod([_axis_size(mesh, a) for a in batch_axes])) if batch_axes else 1
  batch_spec = batch_axes if batch_axes and q.shape[0] % batch_size == 0 else None
  tensor = _axis_size(mesh, HEAD_AXIS)
  heads, kv_heads = q.shape[2], k.shape[2]
  head_spec = HEAD_AXIS if tensor > 1 and heads % tensor == 0 else None
  kv_sharded = head_spec is not None and kv_heads % tensor == 0
  kv_head_spec = HEAD_AXIS if kv_sharded else None

  positions = layout_positions(n, shards, layout)                  # [S, n / S]
  order = positions.reshape(-1)
  if layout != "contiguous":
    q, k, v = (jnp.take(x, order, axis=1) for x in (q, k, v))
  pos = jnp.asarray(order, jnp.int32)

  # the modifier's leaves (learned slopes, tables) enter the map as replicated inputs: a
  # closed-over array carries the outer mesh's sharding, which the per-device body rejects
  mod_leaves, mod_def = (jax.tree_util.tree_flatten(score_mod) if score_mod is not None
                         else ([], None))
  body = functools.partial(
      _ring_shard, mask=mask, mod_def=mod_def, scale=scale, shards=shards,
      kv_sharded=kv_sharded, heads_per_shard=heads // tensor if head_spec else 0,
      group=heads // kv_heads)
  out = jax.shard_map(
      body, mesh=mesh,
      in_specs=(P(batch_spec, SEQUENCE_AXIS, head_spec, None),
                P(batch_spec, SEQUENCE_AXIS, kv_head_spec, None),
                P(batch_spec, SEQUENCE_AXIS, kv_head_spec, None),
                P(SEQUENCE_AXIS), P(SEQUENCE_AXIS), [P()] * len(mod_leaves)),
      out_specs=P(batch_spec, SEQUENCE_AXIS, head_spec, None), check_vma=False,
  )(q, k, v, pos, pos, list(mod_leaves))
  if layout != "contiguous":
    out = jnp.take(out, np.argsort(order), axis=1)
  return out


# ----------------------------------------------------------------------------- the impl

def ring_unsupported(q, k, v, mask, score_mod) -> str | None:
  """Why ring attention cannot serve this request under the current mesh, or None."""
  mesh = jax.sharding.get_abstract_mesh()
  if SEQUENCE_AXIS not in (mesh.axis_names or ()):
    return ("impl='ring' needs a mesh with a 'sequence' axis (set mesh.sequence > 1 in the "
            "config, or call inside jax.set_mesh(mesh))")
  if q.shape[1] != k.shape[1]:
    return f"impl='ring' is self-attention: q_len {q.shape[1]} != kv_len {k.shape[1]}"
  if mask is not None:
    if isinstance(mask, masks_lib.Segments) or any(
        isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(mask)):
      return "impl='ring' takes patterns of token positions only (no segments or traced masks)"
    n = 8
    shape = jax.eval_shape(lambda: mask(jnp.zeros((n, 1), jnp.int32),
                                        jnp.zeros((1, n), jnp.int32))).shape
    if int(np.prod(shape[:-2])) != 1:
      return "impl='ring' takes patterns that are the same for every head and batch row"
  if score_mod is not None and score_mod.explicit_positions:
    return ("impl='ring' evaluates score modifiers at global token positions; modifiers with "
            "explicit positions are not supported")
  return None


def _ring_impl(q, k, v, *, mask=None, score_mod=None, scale: float, ring_layout="zigzag",
               **unused):
  return ring_attention(q, k, v, mask=mask, score_mod=score_mod, scale=scale,
                        layout=ring_layout)


IMPLS.register("ring")(Implementation(
    _ring_impl, ring_unsupported,
    doc="sequence sharded over the mesh axis 'sequence': shard_map + ppermute ring with "
        "the blockwise online softmax",
    shards_sequence=True,
    tested_on={"cpu": "compiled by XLA on virtual CPU devices (one host split into several): "
                      "the test suite"},
    options=(Field("ring_layout", "zigzag", "impl=ring: token layout over the sequence shards",
                   choices=LAYOUTS),)))
