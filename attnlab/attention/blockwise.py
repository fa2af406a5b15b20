"""Blockwise attention in pure JAX: tiled online softmax that skips empty tiles.

The algorithm is FlashAttention's, written with ``lax`` loops instead of a fused
kernel. Queries are split into tiles of ``block_q`` rows and keys into tiles of
``block_kv`` columns. The pattern's block map says which (query tile, key
tile) pairs hold any visible key; only those are visited, so time follows the
number of non-empty tiles and memory stays O(N) (one ``[block_q, block_kv]``
score tile at a time, never ``[q_len, kv_len]``). The mask predicate is evaluated
only on PARTIAL tiles (and the padded last key tile); FULL tiles skip it.

The backward pass is a ``custom_vjp``: the forward saves the output and the
row log-sum-exp, and the backward recomputes each tile's probabilities, so the
gradient is O(N) in memory as well. Score-modifier parameters (ALiBi slopes, a
T5 table) receive their gradients tile by tile.

Learned sinks (``sinks``, one logit per query head) start each row's online softmax: the
running max is the sink logit and the running sum 1 (the sink's own term), so the sink
joins every denominator and no value. Their gradient is ``-sum_rows p_sink * delta``
(``delta = rowsum(dO * O)``, ``p_sink = exp(sink - lse)``).

GQA/MQA: query heads are grouped as ``[kv_heads, group]`` (query head ``h``
uses key/value head ``h // group``), and K/V are never copied per head.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from attnlab.attention import masks as masks_lib
from attnlab.attention import operands

_F32 = jnp.float32


@dataclasses.dataclass(frozen=True)
class TilePlan:
  """Static description of which tiles to visit (hashable: a ``custom_vjp`` static arg).

  For query tile ``i``, ``kv_full[i]`` lists the key tiles every query of which sees
  every key (no mask is evaluated there) and ``kv_partial[i]`` the tiles that need
  the mask. ``q_full[j]`` / ``q_partial[j]`` are the same lists seen from key tile ``j``
  (the backward pass). Empty tiles appear nowhere.
  """
  q_len: int
  kv_len: int
  block_q: int
  block_kv: int
  scale: float
  kv_full: tuple[tuple[int, ...], ...]
  kv_partial: tuple[tuple[int, ...], ...]
  q_full: tuple[tuple[int, ...], ...]
  q_partial: tuple[tuple[int, ...], ...]

  @classmethod
  def from_block_map(cls, block_map: np.ndarray, *, q_len, kv_len, block_q, block_kv, scale):
    block_map = np.array(block_map)
    if kv_len % block_kv:   # the padded last key tile always needs masking
      block_map[:, -1] = np.minimum(block_map[:, -1], masks_lib.PARTIAL)
    rows = lambda m: tuple(tuple(int(j) for j in np.flatnonzero(r)) for r in m)  # noqa: E731
    full, partial = block_map == masks_lib.FULL, block_map == masks_lib.PARTIAL
    return cls(q_len, kv_len, block_q, block_kv, float(scale),
               rows(full), rows(partial), rows(full.T), rows(partial.T))

  @property
  def kv_blocks(self) -> tuple[tuple[int, ...], ...]:
    """Every key tile visited by each query tile, ascending."""
    return tuple(tuple(sorted(f + p)) for f, p in zip(self.kv_full, self.kv_partial))

  @property
  def q_blocks(self) -> tuple[tuple[int, ...], ...]:
    """Every query tile visiting each key tile, ascending."""
    return tuple(tuple(sorted(f + p)) for f, p in zip(self.q_full, self.q_partial))

  @property
  def num_tiles(self) -> int:
    """Number of (query tile, key tile) pairs visited."""
    return sum(len(f) + len(p) for f, p in zip(self.kv_full, self.kv_partial))


def _table(lists: tuple[tuple[int, ...], ...]) -> tuple[jax.Array, jax.Array]:
  """Ragged lists -> (int32 [n, max_len] padded with 0, int32 [n] lengths)."""
  width = max([1] + [len(r) for r in lists])
  table = np.zeros((len(lists), width), np.int32)
  for i, r in enumerate(lists):
    table[i, :len(r)] = r
  return jnp.asarray(table), jnp.asarray([len(r) for r in lists], jnp.int32)


def _visits(plan: TilePlan, mask, transpose: bool):
  """The tiles to visit: ``[(table [n, w], start [n], stop [n], masked), ...]``; row ``r``
  visits columns ``table[r, start[r]:stop[r]]`` (query tiles by key tile when ``transpose``).

  A static pattern gives the plan's lists. A pattern with per-position operands
  (``segments``) classifies its tiles at run time (``Mask.tile_classes``, one map for the
  whole batch: a tile is skipped when every row's is empty, so rows with different
  layouts share the union of their tiles), FULL tiles first, then PARTIAL ones.
  """
  if mask is None or mask.is_static():
    lists = ((plan.q_full, plan.q_partial) if transpose else (plan.kv_full, plan.kv_partial))
    out = []
    for rows, masked in zip(lists, (False, True)):
      table, count = _table(rows)
      out.append((table, jnp.zeros_like(count), count, masked))
    return out
  codes = jnp.asarray(mask.tile_classes(plan.q_len, plan.kv_len, plan.block_q, plan.block_kv))
  codes = codes.reshape(codes.shape[-2:])
  if plan.kv_len % plan.block_kv:   # the padded last key tile always needs masking
    codes = codes.at[:, -1].min(masks_lib.PARTIAL)
  if transpose:
    codes = codes.T
  full, partial = codes == masks_lib.FULL, codes == masks_lib.PARTIAL
  order = jnp.argsort(jnp.where(full, 0, jnp.where(partial, 1, 2)), axis=1, stable=True)
  order = order.astype(jnp.int32)
  n_full = full.sum(axis=1).astype(jnp.int32)
  n_all = n_full + partial.sum(axis=1).astype(jnp.int32)
  return [(order, jnp.zeros_like(n_full), n_full, False), (order, n_full, n_all, True)]


def _tile_logits(plan: TilePlan, q_tile, k_tile, q_block, kv_block, mask, score_mod,
                 masked: bool = True):
  """Modified float32 logits of one tile, masked when ``masked``.

  q_tile: [B, Hkv, G, bq, D]; k_tile: [B, Hkv, bk, D] -> [B, Hkv, G, bq, bk].
  When ``masked``, invisible entries (masked, or padding beyond ``kv_len``) are -inf;
  FULL tiles skip that work.
  """
  b, hkv, g, bq, _ = q_tile.shape
  bk = k_tile.shape[2]
  s = jnp.einsum("bhgqd,bhkd->bhgqk", q_tile, k_tile, preferred_element_type=_F32)
  s = (s * plan.scale).reshape(b, hkv * g, bq, bk)
  q_idx = (q_block * bq + jnp.arange(bq))[:, None]
  kv_idx = (kv_block * bk + jnp.arange(bk))[None, :]
  # per-position operands: this tile's slice (aligned with q_idx / kv_idx)
  mask = operands.restrict(mask, q_block * bq, bq, kv_block * bk, bk)
  score_mod = operands.restrict(score_mod, q_block * bq, bq, kv_block * bk, bk)
  if score_mod is not None:
    s = score_mod(s, q_idx, kv_idx)
  if not masked:
    return s.reshape(b, hkv, g, bq, bk)
  visible = kv_idx < plan.kv_len
  if mask is not None:
    visible = jnp.logical_and(visible, mask(q_idx, kv_idx))
  s = jnp.where(visible, s, -jnp.inf)
  return s.reshape(b, hkv, g, bq, bk)


def _forward(plan: TilePlan, q, k, v, mask, score_mod, sinks=None):
  """Returns out [B, Hkv, G, Nq_pad, Dv] (q.dtype) and lse [B, Hkv, G, Nq_pad] (f32).

  A row that sees no key gets out = 0 and lse = +inf (so recomputed p = 0); with sinks
  ([Hkv, G] float32) its lse is the sink logit.
  """
  b, hkv, g, nq_pad, _ = q.shape
  dv = v.shape[-1]
  bq, bk = plan.block_q, plan.block_kv
  visits = _visits(plan, mask, transpose=False)

  def one_query_tile(qb):
    q_tile = lax.dynamic_slice_in_dim(q, qb * bq, bq, axis=3)

    def visitor(kv_table, masked):
      def visit(t, carry):
        m, l, acc = carry
        kb = kv_table[qb, t]
        k_tile = lax.dynamic_slice_in_dim(k, kb * bk, bk, axis=2)
        v_tile = lax.dynamic_slice_in_dim(v, kb * bk, bk, axis=2)
        s = _tile_logits(plan, q_tile, k_tile, qb, kb, mask, score_mod, masked)
        m_new = jnp.maximum(m, s.max(axis=-1))
        m_safe = jnp.where(jnp.isneginf(m_new), 0.0, m_new)
        p = jnp.exp(s - m_safe[..., None])
        correction = jnp.exp(m - m_safe)
        l = l * correction + p.sum(axis=-1)
        pv = jnp.einsum("bhgqk,bhkd->bhgqd", p.astype(v.dtype), v_tile,
                        preferred_element_type=_F32)
        return m_new, l, acc * correction[..., None] + pv
      return visit

    if sinks is None:
      carry = (jnp.full((b, hkv, g, bq), -jnp.inf, _F32), jnp.zeros((b, hkv, g, bq), _F32),
               jnp.zeros((b, hkv, g, bq, dv), _F32))
    else:   # the sink's term: max = its logit, sum = exp(0) = 1, no value
      carry = (jnp.broadcast_to(sinks[None, :, :, None], (b, hkv, g, bq)),
               jnp.ones((b, hkv, g, bq), _F32), jnp.zeros((b, hkv, g, bq, dv), _F32))
    for kv_table, start, stop, masked in visits:   # unmasked tiles, then masked ones
      carry = lax.fori_loop(start[qb], stop[qb], visitor(kv_table, masked), carry)
    m, l, acc = carry
    seen = l > 0
    out = acc / jnp.where(seen, l, 1.0)[..., None]
    lse = jnp.where(seen, m + jnp.log(jnp.where(seen, l, 1.0)), jnp.inf)
    return out.astype(q.dtype), lse

  nqb = len(plan.kv_full)
  outs, lses = lax.map(one_query_tile, jnp.arange(nqb))  # [nqb, B, Hkv, G, bq, ...]
  out = jnp.moveaxis(outs, 0, 3).reshape(b, hkv, g, nq_pad, dv)
  lse = jnp.moveaxis(lses, 0, 3).reshape(b, hkv, g, nq_pad)
  return out, lse


def _split_float_leaves(tree):
  """(float leaves, rebuild(float_leaves) -> tree, zero cotangents for the others)."""
  leaves, treedef = jax.tree_util.tree_flatten(tree)
  is_float = [jnp.issubdtype(jnp.result_type(x), jnp.inexact) for x in leaves]
  floats = [x for x, f in zip(leaves, is_float) if f]

  def rebuild(new_floats, fill=None):
    it = iter(new_floats)
    return treedef.unflatten([next(it) if f else (x if fill is None else fill(x))
                              for x, f in zip(leaves, is_float)])

  return floats, rebuild


def _float0_zeros(x):
  return np.zeros(np.shape(x), jax.dtypes.float0)


def _zero_cotangent(tree):
  """Cotangent of a non-differentiable pytree (masks): zeros, float0 for int/bool leaves."""
  floats, rebuild = _split_float_leaves(tree)
  return rebuild([jnp.zeros_like(x) for x in floats], fill=_float0_zeros)


def _backward(plan: TilePlan, residuals, d_out):
  q, k, v, mask, score_mod, sinks, out, lse = residuals
  # A constant cotangent (the gradient of a sum) would otherwise be sunk into the loops
  # below and rebuilt at full length for every key tile: O(N^2) work for an O(N) input.
  d_out = lax.optimization_barrier(d_out)
  b, hkv, g, nq_pad, d = q.shape
  bq, bk = plan.block_q, plan.block_kv
  visits = _visits(plan, mask, transpose=True)
  delta = jnp.einsum("bhgqd,bhgqd->bhgq", d_out.astype(_F32), out.astype(_F32))
  mod_params, rebuild_mod = _split_float_leaves(score_mod)

  def one_kv_tile(carry, kb):
    k_tile = lax.dynamic_slice_in_dim(k, kb * bk, bk, axis=2)
    v_tile = lax.dynamic_slice_in_dim(v, kb * bk, bk, axis=2)

    def visitor(q_table, masked):
      def visit(t, c):
        dk, dv, dq, d_params = c
        qb = q_table[kb, t]
        rows = functools.partial(lax.dynamic_slice_in_dim, start_index=qb * bq, slice_size=bq,
                                 axis=3)
        q_tile, do_tile, lse_tile, delta_tile = rows(q), rows(d_out), rows(lse), rows(delta)

        def logits(q_t, k_t, params):
          return _tile_logits(plan, q_t, k_t, qb, kb, mask, rebuild_mod(params), masked)

        s, logits_vjp = jax.vjp(logits, q_tile, k_tile, mod_params)
        p = jnp.exp(s - lse_tile[..., None])
        dv = dv + jnp.einsum("bhgqk,bhgqd->bhkd", p, do_tile.astype(_F32))
        dp = jnp.einsum("bhgqd,bhkd->bhgqk", do_tile, v_tile, preferred_element_type=_F32)
        ds = p * (dp - delta_tile[..., None])
        dq_t, dk_t, dparams_t = logits_vjp(ds)
        dq = lax.dynamic_update_slice_in_dim(dq, rows(dq) + dq_t.astype(_F32), qb * bq, axis=3)
        d_params = jax.tree.map(jnp.add, d_params, dparams_t)
        return dk + dk_t.astype(_F32), dv, dq, d_params
      return visit

    dq, d_params = carry
    c = (jnp.zeros((b, hkv, bk, d), _F32), jnp.zeros((b, hkv, bk, v.shape[-1]), _F32), dq,
         d_params)
    for q_table, start, stop, masked in visits:
      c = lax.fori_loop(start[kb], stop[kb], visitor(q_table, masked), c)
    dk, dv, dq, d_params = c
    return (dq, d_params), (dk, dv)

  init = (jnp.zeros(q.shape, _F32), [jnp.zeros_like(x) for x in mod_params])
  (dq, d_params), (dks, dvs) = lax.scan(one_kv_tile, init, jnp.arange(len(plan.q_full)))
  dk = jnp.moveaxis(dks, 0, 2).reshape(k.shape)
  dv = jnp.moveaxis(dvs, 0, 2).reshape(v.shape)
  d_mod = rebuild_mod(d_params, fill=_float0_zeros) if score_mod is not None else None
  d_sinks = None
  if sinks is not None:   # d sink = -sum over rows of p_sink * delta (padded rows: delta 0)
    d_sinks = -(jnp.exp(sinks[None, :, :, None] - lse) * delta).sum(axis=(0, 3))
  return (dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), _zero_cotangent(mask), d_mod,
          d_sinks)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attend(plan, q, k, v, mask, score_mod, sinks):
  return _forward(plan, q, k, v, mask, score_mod, sinks)[0]


def _attend_fwd(plan, q, k, v, mask, score_mod, sinks):
  out, lse = _forward(plan, q, k, v, mask, score_mod, sinks)
  return out, (q, k, v, mask, score_mod, sinks, out, lse)


_attend.defvjp(_attend_fwd, _backward)


def _round_up(x: int, multiple: int) -> int:
  return -(-x // multiple) * multiple


def make_plan(q_len: int, kv_len: int, mask, *, block_q: int, block_kv: int, scale: float):
  """The tile plan for a pattern; tiles are clipped to the (8-rounded) sequence lengths."""
  bq = min(block_q, _round_up(q_len, 8))
  bk = min(block_kv, _round_up(kv_len, 8))
  if mask is None:
    block_map = np.full((-(-q_len // bq), -(-kv_len // bk)), masks_lib.FULL, np.int8)
  else:
    block_map = mask.block_map(q_len, kv_len, bq, bk)
  return TilePlan.from_block_map(block_map, q_len=q_len, kv_len=kv_len, block_q=bq,
                                 block_kv=bk, scale=scale)


def blockwise_attention(q, k, v, *, mask=None, score_mod=None, scale: float,
                        block_q: int = 512, block_kv: int = 512, sinks=None):
  """Memory-efficient attention. q: [B, Nq, H, D]; k: [B, Nk, Hkv, D]; v: [B, Nk, Hkv, Dv];
  sinks: optional float [H], learned sink logits.

  Returns [B, Nq, H, Dv] in q's dtype. Lengths need not be multiples of the blocks.
  """
  b, nq, h, d = q.shape
  nk, hkv = k.shape[1], k.shape[2]
  g = h // hkv
  plan = make_plan(nq, nk, mask, block_q=block_q, block_kv=block_kv, scale=scale)
  nq_pad = _round_up(nq, plan.block_q)
  nk_pad = _round_up(nk, plan.block_kv)
  operands.check_lengths(mask, nq, nk, "blockwise mask")
  operands.check_lengths(score_mod, nq, nk, "blockwise score_mod")
  mask, score_mod = operands.pad(mask, nq_pad, nk_pad), operands.pad(score_mod, nq_pad, nk_pad)
  qg = jnp.pad(q, ((0, 0), (0, nq_pad - nq), (0, 0), (0, 0)))
  qg = qg.reshape(b, nq_pad, hkv, g, d).transpose(0, 2, 3, 1, 4)
  kg = jnp.pad(k, ((0, 0), (0, nk_pad - nk), (0, 0), (0, 0))).transpose(0, 2, 1, 3)
  vg = jnp.pad(v, ((0, 0), (0, nk_pad - nk), (0, 0), (0, 0))).transpose(0, 2, 1, 3)
  if sinks is not None:
    sinks = jnp.asarray(sinks, _F32).reshape(hkv, g)
  out = _attend(plan, qg, kg, vg, mask, score_mod, sinks)
  return out.transpose(0, 3, 1, 2, 4).reshape(b, nq_pad, h, v.shape[-1])[:, :nq]
