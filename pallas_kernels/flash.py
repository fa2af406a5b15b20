"""Fused block-sparse flash attention in Pallas: forward, backward, score modifiers.

One kernel family, FlashAttention-2's algorithm:

- forward: one program per (batch, head, query tile) keeps a float32 online
  softmax (running max ``m``, sum ``l``, accumulator) over the key tiles its row
  of the block map lists, and writes the output and the row log-sum-exp;
- backward (``jax.custom_vjp``): ``delta = rowsum(dO * O)``, then a dq kernel
  (one program per query tile) and a dk/dv kernel (one program per key tile and
  KV head, looping over the query heads of its GQA group, so K/V are never copied
  per head). Probabilities are recomputed from the saved log-sum-exp; no
  ``[N, N]`` buffer exists anywhere.

Sparsity (``BlockSparsity``): every (query tile, key tile) pair is EMPTY (never
visited), FULL (visited without evaluating any mask) or partial. A partial tile
is masked either by a *predicate* evaluated in-kernel on the tile's indices
(causal, windows, prefix: ``predicate(q_idx [bq, 1], kv_idx [1, bk]) -> bool``),
or by a row of a *tile-mask table* (arbitrary static patterns such as BigBird or
random keys, possibly per head). Each query tile visits its FULL tiles in one
loop and its partial tiles in a second, so full tiles pay nothing for masking.
Segment ids (packed documents) are compared in-kernel on partial tiles, and classify
tiles at run time, per batch row, from each tile's smallest and largest ids: a tile whose
query and key id ranges do not meet is skipped, one holding a single id needs no segment
check. Packed documents then cost sum(length^2), not N^2 (sound for any ids, tight for
non-decreasing ones).

Score modifier (``ScoreFn``, FlexAttention's ``score_mod``): any JAX function
``fn(params, s, q_idx, kv_idx) -> s'`` of one head's scaled logit tile ``s = scale q.k``
(float32 ``[rows, cols]``) and its index vectors, evaluated on every visited tile. The
backward kernels differentiate it (``jax.vjp`` on the tile), so a new modifier needs
no hand-written backward; its float parameters (one slice per head) receive gradients
as per-tile partial sums of the dq kernel, reduced outside. ``fn`` must use operations
Pallas lowers (no gathers: write table lookups as sums of selects). Its per-position
operands (``ScoreFn.q_operands`` / ``kv_operands``) are loaded tile by tile beside q and k;
float ones receive gradients from the dq kernel (query operands) and the dk/dv kernel (key
operands).

Learned sinks (``sinks``, a logit per head, gpt-oss): the forward kernel starts each
row's online softmax at the sink (running max = its logit, running sum = 1), so the sink
joins the denominator with no value and the saved log-sum-exp includes it; the backward
kernels need nothing more, and the sinks' gradient ``-sum_rows exp(sink - lse) * delta``
is a reduction outside them.

Layout ``[batch, seq, heads, head_dim]``; K/V may have ``kv_heads`` dividing
``heads`` (GQA/MQA). Lengths need not be multiples of the tiles (padding is
masked); float32, bfloat16 and float16 inputs, float32 statistics; a query row
that sees no key gives 0. Backends: compiled on GPU (Pallas' Triton lowering,
selected explicitly by its ``CompilerParams``) and interpreted on CPU
(``interpret=True``), the mode the test suite uses.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels.score_fn import Layout, ScoreFn, prepare

_F32 = jnp.float32

# Tile codes in BlockSparsity.codes; codes >= 0 name a row of the tile-mask table.
EMPTY, FULL, PREDICATE = -3, -1, -2


# ----------------------------------------------------------------------------- public specs

@dataclasses.dataclass(frozen=True)
class BlockSparsity:
  """Which tiles to visit and how to mask them.

  ``codes``: int32 ``[Hm, q_tiles, kv_tiles]`` with ``Hm`` 1 (shared by every head)
  or ``heads``: EMPTY, FULL, PREDICATE, or ``r >= 0`` for row ``r`` of ``tile_masks``
  (bool ``[rows, block_q, block_kv]``).
  """
  codes: np.ndarray
  tile_masks: np.ndarray | None = None

  @classmethod
  def dense(cls, q_tiles: int, kv_tiles: int) -> "BlockSparsity":
    return cls(np.full((1, q_tiles, kv_tiles), FULL, np.int32))

  @classmethod
  def from_block_map(cls, block_map) -> "BlockSparsity":
    """From a block map with 0 = empty, 1 = partial (mask by predicate), 2 = full."""
    block_map = np.asarray(block_map)
    codes = np.select([block_map == 0, block_map == 1], [EMPTY, PREDICATE], FULL)
    return cls(codes.reshape((1,) + block_map.shape).astype(np.int32))

  @property
  def num_tiles(self) -> int:
    """Visited (query tile, key tile) pairs."""
    return int((self.codes != EMPTY).any(axis=0).sum())


@dataclasses.dataclass(frozen=True)
class _Static:
  """Everything the kernels need to know at trace time."""
  scale: float
  block_q: int
  block_kv: int
  q_len: int
  kv_len: int
  group: int
  mod: Layout                 # the score modifier (ScoreFn) without its arrays
  predicate: Callable | None
  segments: bool
  tile_masks: bool
  per_head_codes: bool
  per_row_tables: bool        # visit tables per batch row (classified at run time)
  sinks: bool                 # learned sinks start each row's softmax (forward kernel)
  q_ops: tuple                # per query operand: (per_head, is_float)
  kv_ops: tuple               # per key operand: (per_head, is_float)
  interpret: bool
  backend: str

  @property
  def n_params(self) -> int:
    return self.mod.count

  @property
  def n_extra(self) -> int:
    """Parameter and operand refs after the tables."""
    return self.mod.count + len(self.q_ops) + len(self.kv_ops)

  def split_refs(self, refs):
    """(params, q operands, kv operands, the rest) of a kernel's refs after the tables."""
    n, nq = self.n_params, len(self.q_ops)
    return refs[:n], refs[n:n + nq], refs[n + nq:self.n_extra], refs[self.n_extra:]


# ----------------------------------------------------------------------------- tables

def _visit_tables(codes: np.ndarray):
  """Per row of tiles: FULL tiles first, then partial ones.

  codes [Hm, n_rows, n_cols] -> (count_full [1, n_rows], count [1, n_rows],
  index [1, n_rows, T], code [1, Hm, n_rows, T]) int32 (one set shared by every batch row);
  ``index[0, r, :count[0, r]]`` are the columns to visit.
  """
  hm, n_rows, _ = codes.shape
  visited = (codes != EMPTY).any(axis=0)
  full = (codes == FULL).all(axis=0)
  lists = [list(np.flatnonzero(full[r])) + list(np.flatnonzero(visited[r] & ~full[r]))
           for r in range(n_rows)]
  width = max(1, max(len(x) for x in lists))
  index = np.zeros((n_rows, width), np.int32)
  code = np.full((hm, n_rows, width), EMPTY, np.int32)
  for r, cols in enumerate(lists):
    index[r, :len(cols)] = cols
    code[:, r, :len(cols)] = codes[:, r, cols]
  count_full = full.sum(axis=1).astype(np.int32)
  count = np.array([len(x) for x in lists], np.int32)
  return count_full[None], count[None], index[None], code[None]


def _visit_tables_traced(codes):
  """``_visit_tables`` at run time, per batch row: codes int32 [B, Hm, n_rows, n_cols] ->
  count_full, count [B, n_rows], index [B, n_rows, n_cols], code [B, Hm, n_rows, n_cols]."""
  visited = (codes != EMPTY).any(axis=1)
  full = (codes == FULL).all(axis=1)
  order = jnp.argsort(jnp.where(full, 0, jnp.where(visited, 1, 2)), axis=-1, stable=True)
  order = order.astype(jnp.int32)
  code = jnp.take_along_axis(codes, jnp.broadcast_to(order[:, None], codes.shape), axis=-1)
  return (full.sum(-1).astype(jnp.int32), visited.sum(-1).astype(jnp.int32), order,
          code.astype(jnp.int32))


def _segment_codes(codes: np.ndarray, q_seg, kv_seg, bq: int, bk: int):
  """Static codes [Hm, nq, nk] refined per batch row by segment ids (padded to whole tiles,
  padding repeating the last id): int32 [B, Hm, nq, nk]. A tile whose id ranges do not
  meet is EMPTY; one holding a single id keeps its static code; any other becomes
  PREDICATE where it was FULL (the segment check then runs)."""
  def ranges(ids, block):
    tiles = ids.reshape(ids.shape[0], -1, block)
    return tiles.min(-1), tiles.max(-1)
  q_lo, q_hi = ranges(q_seg, bq)
  k_lo, k_hi = ranges(kv_seg, bk)
  meet = (q_lo[:, :, None] <= k_hi[:, None, :]) & (k_lo[:, None, :] <= q_hi[:, :, None])
  one = ((q_lo == q_hi)[:, :, None] & (k_lo == k_hi)[:, None, :]
         & (q_lo[:, :, None] == k_lo[:, None, :]))
  static = jnp.asarray(codes)[None]                                      # [1, Hm, nq, nk]
  masked = jnp.where(static == FULL, PREDICATE, static)
  out = jnp.where(one[:, None], static, jnp.where(meet[:, None], masked, EMPTY))
  return out.astype(jnp.int32)


# ----------------------------------------------------------------------------- in-kernel math

def _dot_nt(a, b):
  """a [m, d] . b [n, d]^T -> float32 [m, n]."""
  return lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=_F32)


def _dot_tn(a, b):
  """a [m, n]^T . b [m, d] -> float32 [n, d]."""
  return lax.dot_general(a, b, (((0,), (0,)), ((), ())), preferred_element_type=_F32)


def _dot(a, b):
  return lax.dot_general(a, b, (((1,), (0,)), ((), ())), preferred_element_type=_F32)


def _modify(st: _Static, s, q_idx, kv_idx, params, q_ops, kv_ops):
  return st.mod.apply(s, q_idx, kv_idx, params, q_ops, kv_ops)


def _float_positions(flags) -> list[int]:
  return [n for n, (_, is_float) in enumerate(flags) if is_float]


def _modify_vjp(st: _Static, s, q_idx, kv_idx, params, q_ops, kv_ops, *, wrt: str):
  """(modified logits, backward) where backward(ds) -> (d raw logits, d params, d float q
  operands, d float kv operands); ``wrt``: "q" (the dq kernel: params and query operands)
  or "kv" (the dk/dv kernel: key operands); the others are None."""
  if st.mod.fn is None:
    return s, lambda ds: (ds, None, None, None)
  fq, fkv = _float_positions(st.q_ops), _float_positions(st.kv_ops)

  def with_floats(ops, floats, positions):
    ops = list(ops)
    for n, x in zip(positions, floats):
      ops[n] = x
    return ops

  if wrt == "q":
    def f(s_, p_, qf):
      return _modify(st, s_, q_idx, kv_idx, p_, with_floats(q_ops, qf, fq), kv_ops)
    out, back = jax.vjp(f, s, params, [q_ops[n] for n in fq])
    return out, lambda ds: (*back(ds), None)

  def g(s_, kf):
    return _modify(st, s_, q_idx, kv_idx, params, q_ops, with_floats(kv_ops, kf, fkv))
  out, back = jax.vjp(g, s, [kv_ops[n] for n in fkv])

  def backward(ds):
    d_s, d_kv = back(ds)
    return d_s, None, None, d_kv
  return out, backward


def _tile_mask(st: _Static, code, q_idx, kv_idx, q_seg, kv_seg, tile_masks_ref):
  """Boolean [bq, bk] mask of a partial tile (padding keys always masked)."""
  ok = jnp.broadcast_to(kv_idx < st.kv_len, (st.block_q, st.block_kv))
  if st.predicate is not None:
    pred = jnp.broadcast_to(st.predicate(q_idx, kv_idx), ok.shape)
  else:
    pred = jnp.ones(ok.shape, jnp.bool_)
  if st.tile_masks:
    table = tile_masks_ref[jnp.maximum(code, 0)] != 0
    pred = jnp.where(code >= 0, table, pred)
  pred = (pred & (code != EMPTY)) | (code == FULL)
  if st.segments:
    pred = pred & (q_seg[:, None] == kv_seg[None, :])
  return ok & pred


# ----------------------------------------------------------------------------- kernels

def _tables(st: _Static, b, count_full_ref, count_ref, index_ref, code_ref):
  """The visit tables of batch row ``b`` (shared ones have a single row)."""
  bt = b if st.per_row_tables else 0
  return (lambda i: count_full_ref[bt, i], lambda i: count_ref[bt, i],
          lambda i, t: index_ref[bt, i, t], lambda hm, i, t: code_ref[bt, hm, i, t])


def _fwd_kernel(count_full_ref, count_ref, index_ref, code_ref, tile_masks_ref,
                q_seg_ref, kv_seg_ref, *refs, st: _Static):
  param_refs, q_op_refs, kv_op_refs, rest = st.split_refs(refs)
  if st.sinks:
    q_ref, k_ref, v_ref, sink_ref, o_ref, lse_ref = rest
  else:
    q_ref, k_ref, v_ref, o_ref, lse_ref = rest
  b, h, i = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  n_full_of, n_all_of, index, code_of = _tables(st, b, count_full_ref, count_ref, index_ref,
                                                code_ref)
  hm = h if st.per_head_codes else 0
  bq, bk = st.block_q, st.block_kv
  q = q_ref[...]
  params = [ref[...] for ref in param_refs]
  q_ops = [ref[...] for ref in q_op_refs]
  q_idx = i * bq + lax.broadcasted_iota(jnp.int32, (bq, 1), 0)
  q_seg = q_seg_ref[...] if st.segments else None

  def visit(t, carry, masked):
    acc, m, l = carry
    j = index(i, t)
    k = k_ref[pl.ds(j * bk, bk), :]
    v = v_ref[pl.ds(j * bk, bk), :]
    kv_idx = j * bk + lax.broadcasted_iota(jnp.int32, (1, bk), 1)
    kv_ops = [ref[pl.ds(j * bk, bk)] for ref in kv_op_refs]
    s = _modify(st, _dot_nt(q, k) * st.scale, q_idx, kv_idx, params, q_ops, kv_ops)
    if masked:
      kv_seg = kv_seg_ref[pl.ds(j * bk, bk)] if st.segments else None
      s = jnp.where(_tile_mask(st, code_of(hm, i, t), q_idx, kv_idx, q_seg, kv_seg,
                               tile_masks_ref), s, -jnp.inf)
    m_new = jnp.maximum(m, s.max(axis=1))
    m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)
    alpha = jnp.exp(m - m_safe)
    p = jnp.exp(s - m_safe[:, None])
    l = alpha * l + p.sum(axis=1)
    acc = alpha[:, None] * acc + _dot(p.astype(v.dtype), v)
    return acc, m_new, l

  if st.sinks:   # the sink's term: max = its logit (this head's row of sink_ref), sum = 1
    carry = (jnp.zeros((bq, v_ref.shape[-1]), _F32), sink_ref[...].astype(_F32),
             jnp.ones((bq,), _F32))
  else:
    carry = (jnp.zeros((bq, v_ref.shape[-1]), _F32), jnp.full((bq,), -jnp.inf, _F32),
             jnp.zeros((bq,), _F32))
  n_full, n_all = n_full_of(i), n_all_of(i)
  carry = lax.fori_loop(0, n_full, functools.partial(visit, masked=False), carry)
  acc, m, l = lax.fori_loop(n_full, n_all, functools.partial(visit, masked=True), carry)
  empty = l == 0.0
  o_ref[...] = (acc / jnp.where(empty, 1.0, l)[:, None]).astype(o_ref.dtype)
  # +inf for a row that sees nothing: the backward's exp(s - lse) is then 0, not NaN.
  lse_ref[...] = jnp.where(empty, jnp.inf, m + jnp.log(jnp.where(empty, 1.0, l)))


def _dq_kernel(count_full_ref, count_ref, index_ref, code_ref, tile_masks_ref,
               q_seg_ref, kv_seg_ref, *refs, st: _Static):
  param_refs, q_op_refs, kv_op_refs, rest = st.split_refs(refs)
  q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dq_ref = rest[:7]
  dparam_refs = rest[7:7 + st.n_params]
  dq_op_refs = rest[7 + st.n_params:]
  b, h, i = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  n_full_of, n_all_of, index, code_of = _tables(st, b, count_full_ref, count_ref, index_ref,
                                                code_ref)
  hm = h if st.per_head_codes else 0
  bq, bk = st.block_q, st.block_kv
  q, do = q_ref[...], do_ref[...]
  lse, delta = lse_ref[...], delta_ref[...]
  params = [ref[...] for ref in param_refs]
  q_ops = [ref[...] for ref in q_op_refs]
  q_idx = i * bq + lax.broadcasted_iota(jnp.int32, (bq, 1), 0)
  q_seg = q_seg_ref[...] if st.segments else None

  def visit(t, carry, masked):
    dq, dparams, dq_ops = carry
    j = index(i, t)
    k = k_ref[pl.ds(j * bk, bk), :]
    v = v_ref[pl.ds(j * bk, bk), :]
    kv_idx = j * bk + lax.broadcasted_iota(jnp.int32, (1, bk), 1)
    kv_ops = [ref[pl.ds(j * bk, bk)] for ref in kv_op_refs]
    s, back = _modify_vjp(st, _dot_nt(q, k) * st.scale, q_idx, kv_idx, params, q_ops, kv_ops,
                          wrt="q")
    p = jnp.exp(s - lse[:, None])
    if masked:
      kv_seg = kv_seg_ref[pl.ds(j * bk, bk)] if st.segments else None
      p = jnp.where(_tile_mask(st, code_of(hm, i, t), q_idx, kv_idx, q_seg, kv_seg,
                               tile_masks_ref), p, 0.0)
    ds, dparams_t, dq_ops_t, _ = back(p * (_dot_nt(do, v) - delta[:, None]))
    dq = dq + _dot(ds.astype(k.dtype), k)
    if dparams_t is not None:
      dparams = [a + b_ for a, b_ in zip(dparams, dparams_t)]
      dq_ops = [a + b_.astype(_F32) for a, b_ in zip(dq_ops, dq_ops_t)]
    return dq, dparams, dq_ops

  carry = (jnp.zeros(q.shape, _F32), [jnp.zeros_like(x) for x in params],
           [jnp.zeros((bq,), _F32) for _ in dq_op_refs])
  n_full, n_all = n_full_of(i), n_all_of(i)
  carry = lax.fori_loop(0, n_full, functools.partial(visit, masked=False), carry)
  dq, dparams, dq_ops = lax.fori_loop(n_full, n_all, functools.partial(visit, masked=True),
                                      carry)
  dq_ref[...] = (dq * st.scale).astype(dq_ref.dtype)
  for ref, grad in zip(dparam_refs, dparams):
    ref[...] = grad
  for ref, grad in zip(dq_op_refs, dq_ops):
    ref[...] = grad


def _dkv_kernel(count_full_ref, count_ref, index_ref, code_ref, tile_masks_ref,
                q_seg_ref, kv_seg_ref, *refs, st: _Static):
  param_refs, q_op_refs, kv_op_refs, rest = st.split_refs(refs)
  q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref = rest[:8]
  dkv_op_refs = rest[8:]
  b, hkv, j = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  n_full_of, n_all_of, index, code_of = _tables(st, b, count_full_ref, count_ref, index_ref,
                                                code_ref)
  bq, bk = st.block_q, st.block_kv
  k, v = k_ref[...], v_ref[...]
  kv_idx = j * bk + lax.broadcasted_iota(jnp.int32, (1, bk), 1)
  kv_seg = kv_seg_ref[...] if st.segments else None

  def head_rows(ref, g, per_head, rows=None):
    row = g if per_head else 0
    return ref[row] if rows is None else ref[row, rows]

  def visit(t, carry, g, params, kv_ops, masked):
    dk, dv, dkv_ops = carry
    h = hkv * st.group + g
    i = index(j, t)
    rows = pl.ds(i * bq, bq)
    q, do = q_ref[g, rows, :], do_ref[g, rows, :]
    lse, delta = lse_ref[g, rows], delta_ref[g, rows]
    q_idx = i * bq + lax.broadcasted_iota(jnp.int32, (bq, 1), 0)
    q_ops = [head_rows(ref, g, per_head, rows) for ref, (per_head, _) in zip(q_op_refs, st.q_ops)]
    s, back = _modify_vjp(st, _dot_nt(q, k) * st.scale, q_idx, kv_idx, params, q_ops, kv_ops,
                          wrt="kv")
    p = jnp.exp(s - lse[:, None])
    if masked:
      q_seg = q_seg_ref[rows] if st.segments else None
      code = code_of(h if st.per_head_codes else 0, j, t)
      p = jnp.where(_tile_mask(st, code, q_idx, kv_idx, q_seg, kv_seg, tile_masks_ref), p, 0.0)
    dv = dv + _dot_tn(p.astype(do.dtype), do)
    ds, _, _, dkv_ops_t = back(p * (_dot_nt(do, v) - delta[:, None]))
    dk = dk + _dot_tn(ds.astype(q.dtype), q)
    if dkv_ops_t is not None:
      dkv_ops = [a + b_.astype(_F32) for a, b_ in zip(dkv_ops, dkv_ops_t)]
    return dk, dv, dkv_ops

  dk, dv = jnp.zeros(k.shape, _F32), jnp.zeros(v.shape, _F32)
  n_full, n_all = n_full_of(j), n_all_of(j)
  for g in range(st.group):   # the query heads sharing this K/V head
    params = [ref[g] for ref in param_refs]
    kv_ops = [head_rows(ref, g, per_head) for ref, (per_head, _) in zip(kv_op_refs, st.kv_ops)]
    carry = (dk, dv, [jnp.zeros((bk,), _F32) for _ in dkv_op_refs])
    carry = lax.fori_loop(0, n_full, functools.partial(visit, g=g, params=params,
                                                       kv_ops=kv_ops, masked=False), carry)
    dk, dv, dkv_ops = lax.fori_loop(n_full, n_all, functools.partial(
        visit, g=g, params=params, kv_ops=kv_ops, masked=True), carry)
    for ref, grad in zip(dkv_op_refs, dkv_ops):   # this query head's key-operand gradients
      ref[g] = grad
  dk_ref[...] = (dk * st.scale).astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


# ----------------------------------------------------------------------------- pallas_call plumbing
# Internal layout [batch, heads, seq, head_dim]; lse and delta [batch, heads, q_len].

def _whole(x, st: _Static):
  """The whole (small) array for every program; scalar tables go to SMEM on TPU."""
  if st.backend == "tpu" and _tpu_semantics(st.interpret) and x.dtype == jnp.int32:
    from jax.experimental.pallas import tpu as pltpu
    return pl.BlockSpec(memory_space=pltpu.SMEM)
  zeros = (0,) * x.ndim
  return pl.BlockSpec(x.shape, lambda *_: zeros)


def _tpu_semantics(interpret) -> bool:
  """Compiled for TPU, or run by the TPU interpreter (``pltpu.InterpretParams``)."""
  return interpret is False or type(interpret).__name__ == "InterpretParams"


def _compiler_params(st: _Static, head_dim: int):
  if st.interpret:
    return None
  if st.backend == "gpu":   # Pallas' Triton lowering, chosen explicitly
    from jax.experimental.pallas import triton as pl_triton
    return pl_triton.CompilerParams(num_warps=4 if head_dim <= 64 else 8, num_stages=2)
  return None


def _call(kernel, st: _Static, grid, args_and_specs, out_shape, out_specs, name, head_dim):
  arrays = [a for a, _ in args_and_specs]
  specs = [_whole(a, st) if spec is None else spec for a, spec in args_and_specs]
  return pl.pallas_call(
      functools.partial(kernel, st=st), grid=grid, in_specs=specs,
      out_specs=out_specs, out_shape=out_shape, interpret=st.interpret,
      compiler_params=_compiler_params(st, head_dim), name=name,
  )(*arrays)


def _small_operands(st: _Static, tables, extras, q_tile_major: bool):
  """Tables, tile masks, segment ids, modifier parameters and per-position operands with
  their BlockSpecs.

  ``q_tile_major``: programs run over query tiles (forward, dq: one head each) rather
  than key tiles (dk/dv: one K/V head and the ``group`` query heads sharing it).
  Parameters are ``[heads, ...]``: each program receives its own head's rows. Operands
  are ``[batch, heads or 1, len_pad]``: a program receives its row, its head(s) and its
  tile (the forward's key operands: the whole row, sliced per visited tile in-kernel).
  """
  tile_masks, q_seg, kv_seg, params, q_ops, kv_ops = extras
  bq, bk, g = st.block_q, st.block_kv, st.group
  if q_tile_major:
    q_seg_spec = pl.BlockSpec((None, bq), lambda b, h, i: (b, i))
    kv_seg_spec = pl.BlockSpec((None, kv_seg.shape[1]), lambda b, h, i: (b, 0))
  else:
    q_seg_spec = pl.BlockSpec((None, q_seg.shape[1]), lambda b, h, j: (b, 0))
    kv_seg_spec = pl.BlockSpec((None, bk), lambda b, h, j: (b, j))
  param_specs = []
  for x in params:
    zeros = (0,) * (x.ndim - 1)
    if q_tile_major:
      spec = pl.BlockSpec((None, *x.shape[1:]), lambda b, h, i, z=zeros: (h, *z))
    else:
      spec = pl.BlockSpec((st.group, *x.shape[1:]), lambda b, hk, j, z=zeros: (hk, *z))
    param_specs.append((x, spec))
  op_specs = []
  for ops, flags, is_q in ((q_ops, st.q_ops, True), (kv_ops, st.kv_ops, False)):
    for x, (per_head, _) in zip(ops, flags):
      n = x.shape[-1]
      if q_tile_major:
        size, tile = (bq, True) if is_q else (n, False)
        if per_head:
          spec = pl.BlockSpec((None, None, size),
                              lambda b, h, i, t=tile: (b, h, i if t else 0))
        else:
          spec = pl.BlockSpec((None, None, size), lambda b, h, i, t=tile: (b, 0, i if t else 0))
      else:
        size, tile = (n, False) if is_q else (bk, True)
        if per_head:
          spec = pl.BlockSpec((None, g, size), lambda b, hk, j, t=tile: (b, hk, j if t else 0))
        else:
          spec = pl.BlockSpec((None, 1, size), lambda b, hk, j, t=tile: (b, 0, j if t else 0))
      op_specs.append((x, spec))
  return ([(t, None) for t in tables] + [(tile_masks, None), (q_seg, q_seg_spec),
                                         (kv_seg, kv_seg_spec)] + param_specs + op_specs)


def _forward(st: _Static, fwd_tables, extras, q, k, v, sinks=None):
  """q [B, H, Nq_pad, D], k/v [B, Hkv, Nk_pad, D], sinks float32 [H] (``st.sinks``)
  -> out [B, H, Nq_pad, Dv], lse [B, H, Nq_pad]."""
  b, h, nq_pad, d = q.shape
  nk_pad, dv = k.shape[2], v.shape[-1]
  g, bq = st.group, st.block_q
  args = _small_operands(st, fwd_tables, extras, True) + [
      (q, pl.BlockSpec((None, None, bq, d), lambda b_, h_, i: (b_, h_, i, 0))),
      (k, pl.BlockSpec((None, None, nk_pad, d), lambda b_, h_, i: (b_, h_ // g, 0, 0))),
      (v, pl.BlockSpec((None, None, nk_pad, dv), lambda b_, h_, i: (b_, h_ // g, 0, 0)))]
  if st.sinks:   # each head's logit repeated along its rows: a [bq] block per program
    rows = jnp.broadcast_to(sinks.astype(_F32)[:, None], (h, nq_pad))
    args.append((rows, pl.BlockSpec((None, bq), lambda b_, h_, i: (h_, i))))
  out_shape = [jax.ShapeDtypeStruct((b, h, nq_pad, dv), q.dtype),
               jax.ShapeDtypeStruct((b, h, nq_pad), _F32)]
  out_specs = [pl.BlockSpec((None, None, bq, dv), lambda b_, h_, i: (b_, h_, i, 0)),
               pl.BlockSpec((None, None, bq), lambda b_, h_, i: (b_, h_, i))]
  return _call(_fwd_kernel, st, (b, h, nq_pad // bq), args, out_shape, out_specs, "flash_fwd",
               d)


def _backward(st: _Static, fwd_tables, bwd_tables, extras, q, k, v, out, lse, do):
  """dq, dk, dv (input dtypes), the modifier parameters' gradients (float32, [H, ...]) and
  the float operands' gradients (float32 [B, H, len_pad] per operand)."""
  b, h, nq_pad, d = q.shape
  hkv, nk_pad, dv = k.shape[1], k.shape[2], v.shape[-1]
  g, bq, bk = st.group, st.block_q, st.block_kv
  nq_tiles = nq_pad // bq
  params = extras[3]
  n_fq = len(_float_positions(st.q_ops))
  n_fkv = len(_float_positions(st.kv_ops))
  delta = jnp.einsum("bhqd,bhqd->bhq", out.astype(_F32), do.astype(_F32))

  args = _small_operands(st, fwd_tables, extras, True) + [
      (q, pl.BlockSpec((None, None, bq, d), lambda b_, h_, i: (b_, h_, i, 0))),
      (k, pl.BlockSpec((None, None, nk_pad, d), lambda b_, h_, i: (b_, h_ // g, 0, 0))),
      (v, pl.BlockSpec((None, None, nk_pad, dv), lambda b_, h_, i: (b_, h_ // g, 0, 0))),
      (do, pl.BlockSpec((None, None, bq, dv), lambda b_, h_, i: (b_, h_, i, 0))),
      (lse, pl.BlockSpec((None, None, bq), lambda b_, h_, i: (b_, h_, i))),
      (delta, pl.BlockSpec((None, None, bq), lambda b_, h_, i: (b_, h_, i)))]
  # one partial gradient per (batch, head, query tile), summed below
  out_shape = [jax.ShapeDtypeStruct(q.shape, q.dtype)] + [
      jax.ShapeDtypeStruct((b, h, nq_tiles, *x.shape[1:]), _F32) for x in params] + [
      jax.ShapeDtypeStruct((b, h, nq_pad), _F32)] * n_fq
  out_specs = [pl.BlockSpec((None, None, bq, d), lambda b_, h_, i: (b_, h_, i, 0))] + [
      pl.BlockSpec((None, None, None, *x.shape[1:]),
                   lambda b_, h_, i, z=(0,) * (x.ndim - 1): (b_, h_, i, *z)) for x in params] + [
      pl.BlockSpec((None, None, bq), lambda b_, h_, i: (b_, h_, i))] * n_fq
  dq, *rest = _call(_dq_kernel, st, (b, h, nq_tiles), args, out_shape, out_specs, "flash_dq", d)
  dparams, dq_ops = rest[:len(params)], rest[len(params):]

  args = _small_operands(st, bwd_tables, extras, False) + [
      (q, pl.BlockSpec((None, g, nq_pad, d), lambda b_, hk, j: (b_, hk, 0, 0))),
      (k, pl.BlockSpec((None, None, bk, d), lambda b_, hk, j: (b_, hk, j, 0))),
      (v, pl.BlockSpec((None, None, bk, dv), lambda b_, hk, j: (b_, hk, j, 0))),
      (do, pl.BlockSpec((None, g, nq_pad, dv), lambda b_, hk, j: (b_, hk, 0, 0))),
      (lse, pl.BlockSpec((None, g, nq_pad), lambda b_, hk, j: (b_, hk, 0))),
      (delta, pl.BlockSpec((None, g, nq_pad), lambda b_, hk, j: (b_, hk, 0)))]
  out_shape = [jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)] + [
      jax.ShapeDtypeStruct((b, h, nk_pad), _F32)] * n_fkv
  out_specs = [pl.BlockSpec((None, None, bk, d), lambda b_, hk, j: (b_, hk, j, 0)),
               pl.BlockSpec((None, None, bk, dv), lambda b_, hk, j: (b_, hk, j, 0))] + [
      pl.BlockSpec((None, g, bk), lambda b_, hk, j: (b_, hk, j))] * n_fkv
  dk, dv_, *dkv_ops = _call(_dkv_kernel, st, (b, hkv, nk_pad // bk), args, out_shape, out_specs,
                            "flash_dkv", d)
  return dq, dk, dv_, [x.sum(axis=(0, 2)) for x in dparams], dq_ops, dkv_ops


# ----------------------------------------------------------------------------- public entry

def _round_up(x: int, multiple: int) -> int:
  return -(-x // multiple) * multiple


def _check(cond: bool, message: str) -> None:
  if not cond:
    raise ValueError(f"flash_attention: {message}")


def default_interpret() -> bool:
  """Interpret everywhere but GPU and TPU (the CPU test mode)."""
  return jax.default_backend() not in ("gpu", "tpu")


def flash_attention(q, k, v, *, sparsity: BlockSparsity | None = None,
                    predicate: Callable | None = None, segment_ids=None,
                    score_fn: ScoreFn | None = None,
                    scale: float | None = None, block_q: int = 128, block_kv: int = 128,
                    interpret: bool | None = None, pad_head_dim: bool | None = None,
                    sinks=None):
  """Fused block-sparse attention.

  Args:
    q: [batch, q_len, heads, head_dim]; k: [batch, kv_len, kv_heads, head_dim];
      v: [batch, kv_len, kv_heads, v_dim]; ``kv_heads`` divides ``heads``.
    sparsity: tile classes for tiles of ``block_q x block_kv`` (None: all FULL).
    predicate: ``(q_idx [bq, 1], kv_idx [1, bk]) -> bool`` for PREDICATE tiles.
    segment_ids: optional ``(q_ids [batch, q_len], kv_ids [batch, kv_len])`` ints;
      a query sees only keys of its segment (every visited tile is then masked).
    score_fn: optional ``ScoreFn``, evaluated on every visited tile of every head.
    scale: logit scale, default ``1 / sqrt(head_dim)``.
    interpret: None picks compiled kernels on GPU/TPU and interpret mode elsewhere;
      ``pltpu.InterpretParams()`` with a TPU backend runs the TPU path in JAX's TPU
      interpreter (SMEM tables, TPU memory semantics) on any machine.
    pad_head_dim: zero-pad head dims to a power of two >= 16 (None: when compiling for GPU).
    sinks: optional float ``[heads]``: learned sink logits joining every row's softmax
      denominator (the module docstring).

  Returns [batch, q_len, heads, v_dim] in q's dtype; differentiable in q, k, v, the
  leaves of ``score_fn.params`` and ``sinks``.
  """
  _check(q.ndim == k.ndim == v.ndim == 4, f"q, k, v must be [batch, seq, heads, dim]; got "
         f"{q.shape}, {k.shape}, {v.shape}")
  b, q_len, heads, d = q.shape
  _, kv_len, kv_heads, _ = k.shape
  _check(k.shape[:3] == v.shape[:3] and k.shape[-1] == d and k.shape[0] == b,
         f"k {k.shape} and v {v.shape} must match q {q.shape} in batch and k in head_dim")
  _check(heads % kv_heads == 0, f"kv_heads={kv_heads} must divide heads={heads}")
  for name, val in (("block_q", block_q), ("block_kv", block_kv)):
    _check(isinstance(val, int) and val >= 1, f"{name}={val!r} must be a positive int")
  # a bool, or pltpu.InterpretParams() to run the TPU code path in the TPU interpreter
  interpret = default_interpret() if interpret is None else interpret
  if isinstance(interpret, (np.bool_, int)):
    interpret = bool(interpret)
  backend = jax.default_backend()
  if not interpret and backend == "gpu":
    for name, val in (("block_q", block_q), ("block_kv", block_kv)):
      _check(val >= 16 and val & (val - 1) == 0,
             f"{name}={val} must be a power of two >= 16 for the GPU kernel")
  bq, bk = block_q, block_kv
  nq_tiles, nk_tiles = -(-q_len // bq), -(-kv_len // bk)
  sparsity = sparsity or BlockSparsity.dense(nq_tiles, nk_tiles)
  codes = np.asarray(sparsity.codes, np.int32)
  _check(codes.ndim == 3 and codes.shape[1:] == (nq_tiles, nk_tiles)
         and codes.shape[0] in (1, heads),
         f"sparsity.codes has shape {codes.shape}; expected (1 or {heads}, {nq_tiles}, "
         f"{nk_tiles}) for tiles of {bq} x {bk}")
  has_tables = sparsity.tile_masks is not None
  if has_tables:
    _check(sparsity.tile_masks.shape[1:] == (bq, bk),
           f"sparsity.tile_masks must be [rows, {bq}, {bk}]; got {sparsity.tile_masks.shape}")
    _check(codes.max() < len(sparsity.tile_masks), "a code names a missing tile-mask row")
  _check(has_tables or codes.max() < 0, "codes >= 0 need sparsity.tile_masks")
  mod, internal = prepare(score_fn, heads, "flash_attention")
  if sinks is not None:
    sinks = jnp.asarray(sinks)
    _check(sinks.shape == (heads,) and jnp.issubdtype(sinks.dtype, jnp.floating),
           f"sinks must be float [{heads}] (one logit per head); got {sinks.dtype} {sinks.shape}")
  if segment_ids is not None:
    _check(len(segment_ids) == 2 and segment_ids[0].shape == (b, q_len)
           and segment_ids[1].shape == (b, kv_len),
           f"segment_ids must be (q_ids [{b}, {q_len}], kv_ids [{b}, {kv_len}])")

  # Padded keys must be masked: the last key tile is then never FULL.
  if kv_len % bk:
    codes = codes.copy()
    last = codes[:, :, -1]
    codes[:, :, -1] = np.where(last == FULL, PREDICATE, last)
  nq_pad, nk_pad = nq_tiles * bq, nk_tiles * bk
  q_ops, q_flags = _internal_operands(score_fn.q_operands if score_fn else (), b, q_len, nq_pad,
                                      heads, "q_operands")
  kv_ops, kv_flags = _internal_operands(score_fn.kv_operands if score_fn else (), b, kv_len,
                                        nk_pad, heads, "kv_operands")
  st = _Static(scale=float(1.0 / math.sqrt(d) if scale is None else scale), block_q=bq,
               block_kv=bk, q_len=q_len, kv_len=kv_len, group=heads // kv_heads,
               mod=mod, predicate=predicate,
               segments=segment_ids is not None, tile_masks=has_tables,
               per_head_codes=codes.shape[0] > 1, per_row_tables=segment_ids is not None,
               sinks=sinks is not None, q_ops=q_flags, kv_ops=kv_flags, interpret=interpret, backend=backend)
  tile_masks = jnp.asarray(sparsity.tile_masks if has_tables else np.zeros((1, 1, 1)), jnp.int8)
  if segment_ids is not None:
    # padding repeats the last id (a tile's id range is unchanged); padded keys are masked
    # by position, never by id
    q_seg = jnp.pad(jnp.asarray(segment_ids[0], jnp.int32), ((0, 0), (0, nq_pad - q_len)),
                    mode="edge")
    kv_seg = jnp.pad(jnp.asarray(segment_ids[1], jnp.int32), ((0, 0), (0, nk_pad - kv_len)),
                     mode="edge")
    row_codes = _segment_codes(codes, q_seg, kv_seg, bq, bk)            # [B, Hm, nq, nk]
    fwd_tables = _visit_tables_traced(row_codes)
    bwd_tables = _visit_tables_traced(row_codes.transpose(0, 1, 3, 2))
  else:
    q_seg = jnp.zeros((b, nq_pad), jnp.int32)
    kv_seg = jnp.zeros((b, nk_pad), jnp.int32)
    fwd_tables = tuple(jnp.asarray(x) for x in _visit_tables(codes))
    bwd_tables = tuple(jnp.asarray(x) for x in _visit_tables(codes.transpose(0, 2, 1)))

  # Triton tiles need power-of-two sizes: other head dims are zero-padded (q.k and
  # the kept output columns are unchanged; the scale uses the true head dim).
  if pad_head_dim is None:
    pad_head_dim = backend == "gpu" and not interpret
  pad_dim = (lambda n: max(16, pl.next_power_of_2(n))) if pad_head_dim else (lambda n: n)
  dv_true = v.shape[-1]

  def to_internal(x, length):   # [B, N, H, D] -> [B, H, N_pad, D_pad]
    return jnp.pad(x, ((0, 0), (0, length - x.shape[1]), (0, 0),
                       (0, pad_dim(x.shape[-1]) - x.shape[-1]))).transpose(0, 2, 1, 3)

  fq, fkv = _float_positions(q_flags), _float_positions(kv_flags)

  def merged(ops, floats, positions):
    ops = list(ops)
    for n, x in zip(positions, floats):
      ops[n] = x
    return ops

  def extras_of(params, q_f, kv_f):
    return (tile_masks, q_seg, kv_seg, params, merged(q_ops, q_f, fq), merged(kv_ops, kv_f, fkv))

  @jax.custom_vjp
  def attend(q, k, v, params, q_f, kv_f, sinks):
    return _forward(st, fwd_tables, extras_of(params, q_f, kv_f), q, k, v, sinks)[0]

  def attend_fwd(q, k, v, params, q_f, kv_f, sinks):
    out, lse = _forward(st, fwd_tables, extras_of(params, q_f, kv_f), q, k, v, sinks)
    return out, (q, k, v, params, q_f, kv_f, sinks, out, lse)

  def attend_bwd(res, do):
    q, k, v, params, q_f, kv_f, sinks, out, lse = res
    dq, dk, dv, dparams, dq_ops, dkv_ops = _backward(
        st, fwd_tables, bwd_tables, extras_of(params, q_f, kv_f), q, k, v, out, lse, do)
    # an operand shared by every head ([B, 1, N]) collects the sum over heads
    dq_f = [grad if q_flags[n][0] else grad.sum(axis=1, keepdims=True)
            for n, grad in zip(fq, dq_ops)]
    dkv_f = [grad if kv_flags[n][0] else grad.sum(axis=1, keepdims=True)
             for n, grad in zip(fkv, dkv_ops)]
    d_sinks = None
    if sinks is not None:   # -sum over rows of p_sink * rowsum(dO * O); padded rows: dO = 0
      delta = jnp.einsum("bhqd,bhqd->bhq", out.astype(_F32), do.astype(_F32))
      d_sinks = -(jnp.exp(sinks.astype(_F32)[None, :, None] - lse) * delta).sum(axis=(0, 2))
      d_sinks = d_sinks.astype(sinks.dtype)
    return dq, dk, dv, dparams, dq_f, dkv_f, d_sinks

  attend.defvjp(attend_fwd, attend_bwd)
  # the parameters' cast and reshape (prepare) and the operands' layout sit outside the
  # custom_vjp, so autodiff maps their gradients back to the leaves' shapes and dtypes
  out = attend(to_internal(q, nq_pad), to_internal(k, nk_pad), to_internal(v, nk_pad),
               internal, [q_ops[n] for n in fq], [kv_ops[n] for n in fkv], sinks)
  return out.transpose(0, 2, 1, 3)[:, :q_len, :, :dv_true]


def _internal_operands(arrays, batch: int, length: int, padded: int, heads: int, what: str):
  """Per-position operands [batch or 1, length] or [batch or 1, length, heads or 1] ->
  (internal [batch, heads or 1, padded] (float32 or int32, padding repeats the last value),
  ((per_head, is_float), ...))."""
  out, flags = [], []
  for x in arrays:
    x = jnp.asarray(x)
    _check(x.ndim in (2, 3) and x.shape[0] in (1, batch) and x.shape[1] == length
           and (x.ndim == 2 or x.shape[2] in (1, heads)),
           f"score_fn.{what} entries must be [batch, {length}] or [batch, {length}, heads]; "
           f"got {x.shape}")
    is_float = bool(jnp.issubdtype(x.dtype, jnp.floating))
    x = x.astype(_F32 if is_float else jnp.int32)
    x = x[:, :, None] if x.ndim == 2 else x
    per_head = x.shape[2] > 1
    x = jnp.broadcast_to(x, (batch, length, x.shape[2])).transpose(0, 2, 1)
    out.append(jnp.pad(x, ((0, 0), (0, 0), (0, padded - length)), mode="edge"))
    flags.append((per_head, is_float))
  return out, tuple(flags)
