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
Per-position operands (``attention.operands``: document ids, forget-gate sums) are laid
out and sharded like the tokens: a device holds its queries' slices, and the key-side
slices travel round the ring with the K/V block they belong to.

Learned sinks (``sinks``, a logit per query head) start every query's online softmax
(running max = the sink logit, running sum = 1): queries stay on their device, so each
row counts its sink once; JAX differentiates the ring, sinks included.

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
from attnlab.attention import operands
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


def _ring_shard(q, k, v, q_pos, kv_pos, mod_leaves, q_ops, kv_ops, sinks, *, mask, mod_def,
                scale, shards, kv_sharded, heads_per_shard, group, slots):
  """Per-device body. q [b, n, h, D], k/v [b, n, hkv, D], positions [n] (global);
  mod_leaves: the score modifier's leaves (replicated), rebuilt with ``mod_def``;
  q_ops / kv_ops: the mask's and modifier's per-position operands (``slots``: where they
  go back), this device's slices [b, n, ...]."""
  score_mod = None if mod_def is None else jax.tree_util.tree_unflatten(mod_def, mod_leaves)
  mask_slots, mod_slots = slots

  def with_operands(blk_ops):
    """The mask and modifier aligned with this device's queries and the keys it holds."""
    q_it, kv_it = iter(q_ops), iter(blk_ops)
    def take(slot):
      return [next(q_it) if side == "q" else next(kv_it) for side in slot.sides]
    m = operands.insert(mask, mask_slots, take(mask_slots)) if mask is not None else None
    mod = (operands.insert(score_mod, mod_slots, take(mod_slots))
           if score_mod is not None else None)
    if heads_per_shard and mod is not None:
      mod = mod.select_heads(lax.axis_index(HEAD_AXIS) * heads_per_shard, heads_per_shard)
    return m, mod

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
    acc, m, l, k_blk, v_blk, pos_blk, ops_blk = carry
    s = jnp.einsum("bqkgd,bnkd->bkgqn", qg, k_blk.astype(_F32)) * scale     # [b, hkv, g, q, n]
    s = s.reshape(b, h, n, n)
    q_idx, kv_idx = q_pos[:, None], pos_blk[None, :]
    mask_here, mod_here = with_operands(ops_blk)
    if mod_here is not None:
      s = mod_here(s, q_idx, kv_idx)
    if mask_here is not None:
      s = jnp.where(mask_here(q_idx, kv_idx), s, -jnp.inf)
    m_new = jnp.maximum(m, s.max(axis=-1))
    m_safe = jnp.where(jnp.isneginf(m_new), 0.0, m_new)
    alpha = jnp.exp(m - m_safe)
    p = jnp.exp(s - m_safe[..., None])
    l = alpha * l + p.sum(axis=-1)
    pv = jnp.einsum("bkgqn,bnkd->bkgqd", p.reshape(b, k_blk.shape[2], -1, n, n),
                    v_blk.astype(_F32)).reshape(b, h, n, -1)
    acc = alpha[..., None] * acc + pv
    k_blk, v_blk, pos_blk = (lax.ppermute(x, SEQUENCE_AXIS, perm) for x in (k_blk, v_blk, pos_blk))
    ops_blk = [lax.ppermute(x, SEQUENCE_AXIS, perm) for x in ops_blk]
    return (acc, m_new, l, k_blk, v_blk, pos_blk, ops_blk), None

  sinks = sinks[0] if sinks else None    # [] or [float32 [heads]]
  if sinks is None:
    m0, l0 = jnp.full((b, h, n), -jnp.inf, _F32), jnp.zeros((b, h, n), _F32)
  else:   # the sink's term: this device's query heads' logits, sum exp(0) = 1
    if heads_per_shard:
      sinks = lax.dynamic_slice_in_dim(sinks, lax.axis_index(HEAD_AXIS) * heads_per_shard,
                                       heads_per_shard)
    m0, l0 = jnp.broadcast_to(sinks[None, :, None], (b, h, n)), jnp.ones((b, h, n), _F32)
  init = (jnp.zeros((b, h, n, v.shape[-1]), _F32), m0, l0, k, v, kv_pos, list(kv_ops))
  (acc, _, l, *_), _ = lax.scan(step, init, None, length=shards)
  out = acc / jnp.where(l == 0.0, 1.0, l)[..., None]
  return out.transpose(0, 2, 1, 3).astype(q.dtype)


def ring_attention(q, k, v, *, mask=None, score_mod=None, scale: float, mesh=None,
                   layout: str = "zigzag", sinks=None):
  """Softmax attention with the sequence sharded over the mesh axis ``sequence``.

  q: [batch, N, heads, D]; k, v: [batch, N, kv_heads, D]; sinks: optional float [heads]
  learned sink logits; returns [batch, N, heads, Dv].
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
  # per-position operands leave the mask and modifier; they are laid out and sharded like q
  mask, mask_ops, mask_slots = operands.strip(mask) if mask is not None else (None, [], None)
  score_mod, mod_ops, mod_slots = (operands.strip(score_mod) if score_mod is not None
                                   else (None, [], None))
  sides = (mask_slots.sides if mask_slots else ()) + (mod_slots.sides if mod_slots else ())
  ops = [jnp.broadcast_to(jnp.asarray(x), (q.shape[0],) + jnp.shape(x)[1:])
         for x in mask_ops + mod_ops]
  if layout != "contiguous":
    q, k, v = (jnp.take(x, order, axis=1) for x in (q, k, v))
    ops = [jnp.take(x, order, axis=1) for x in ops]
  pos = jnp.asarray(order, jnp.int32)
  q_ops = [x for x, side in zip(ops, sides) if side == "q"]
  kv_ops = [x for x, side in zip(ops, sides) if side == "kv"]

  # the modifier's leaves (learned slopes, tables) enter the map as replicated inputs: a
  # closed-over array carries the outer mesh's sharding, which the per-device body rejects
  mod_leaves, mod_def = (jax.tree_util.tree_flatten(score_mod) if score_mod is not None
                         else ([], None))
  body = functools.partial(
      _ring_shard, mask=mask, mod_def=mod_def, scale=scale, shards=shards,
      kv_sharded=kv_sharded, heads_per_shard=heads // tensor if head_spec else 0,
      group=heads // kv_heads, slots=(mask_slots, mod_slots))
  op_spec = lambda x: P(batch_spec, SEQUENCE_AXIS, *([None] * (x.ndim - 2)))  # noqa: E731
  out = jax.shard_map(
      body, mesh=mesh,
      in_specs=(P(batch_spec, SEQUENCE_AXIS, head_spec, None),
                P(batch_spec, SEQUENCE_AXIS, kv_head_spec, None),
                P(batch_spec, SEQUENCE_AXIS, kv_head_spec, None),
                P(SEQUENCE_AXIS), P(SEQUENCE_AXIS), [P()] * len(mod_leaves),
                [op_spec(x) for x in q_ops], [op_spec(x) for x in kv_ops],
                [P()] * (sinks is not None)),
      out_specs=P(batch_spec, SEQUENCE_AXIS, head_spec, None), check_vma=False,
  )(q, k, v, pos, pos, list(mod_leaves), q_ops, kv_ops,
    [] if sinks is None else [jnp.asarray(sinks, _F32)])
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
    stripped, arrays, _ = operands.strip(mask)
    if any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(stripped)):
      return ("impl='ring' takes patterns of token positions and per-position operands "
              "(segments), not traced dense masks")
    if not arrays:
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
               sinks=None, **unused):
  return ring_attention(q, k, v, mask=mask, score_mod=score_mod, scale=scale,
                        layout=ring_layout, sinks=sinks)


IMPLS.register("ring")(Implementation(
    _ring_impl, ring_unsupported,
    doc="sequence sharded over the mesh axis 'sequence': shard_map + ppermute ring with "
        "the blockwise online softmax",
    shards_sequence=True, sinks=True,
    tested_on={"cpu": "compiled by XLA on virtual CPU devices (one host split into several): "
                      "the test suite"},
    options=(Field("ring_layout", "zigzag", "impl=ring: token layout over the sequence shards",
                   choices=LAYOUTS),)))
