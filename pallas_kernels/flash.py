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
Segment ids (packed documents) are compared in-kernel on partial tiles.

Score modifier (``ScoreFn``, FlexAttention's ``score_mod``): any JAX function
``fn(params, s, q_idx, kv_idx) -> s'`` of one head's scaled logit tile ``s = scale q.k``
(float32 ``[rows, cols]``) and its index vectors, evaluated on every visited tile. The
backward kernels differentiate it (``jax.vjp`` on the tile), so a new modifier needs
no hand-written backward; its float parameters (one slice per head) receive gradients
as per-tile partial sums of the dq kernel, reduced outside. ``fn`` must use operations
Pallas lowers (no gathers: write table lookups as sums of selects).

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
  interpret: bool
  backend: str

  @property
  def n_params(self) -> int:
    return self.mod.count


# ----------------------------------------------------------------------------- tables

def _visit_tables(codes: np.ndarray):
  """Per row of tiles: FULL tiles first, then partial ones.

  codes [Hm, n_rows, n_cols] -> (count_full [n_rows], count [n_rows], index [n_rows, T],
  code [Hm, n_rows, T]) int32; ``index[r, :count[r]]`` are the columns to visit.
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
  return count_full, count, index, code


# ----------------------------------------------------------------------------- in-kernel math

def _dot_nt(a, b):
  """a [m, d] . b [n, d]^T -> float32 [m, n]."""
  return lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=_F32)


def _dot_tn(a, b):
  """a [m, n]^T . b [m, d] -> float32 [n, d]."""
  return lax.dot_general(a, b, (((0,), (0,)), ((), ())), preferred_element_type=_F32)


def _dot(a, b):
  return lax.dot_general(a, b, (((1,), (0,)), ((), ())), preferred_element_type=_F32)


def _modify_vjp(st: _Static, s, q_idx, kv_idx, params, *, wrt_params: bool):
  """(modified logits, backward) where backward(ds) -> (d raw logits, d params or None)."""
  if st.mod.fn is None:
    return s, lambda ds: (ds, None)
  if wrt_params:
    out, back = jax.vjp(lambda s_, p_: st.mod.apply(s_, q_idx, kv_idx, p_), s, params)
    return out, back
  out, back = jax.vjp(lambda s_: st.mod.apply(s_, q_idx, kv_idx, params), s)
  return out, lambda ds: (back(ds)[0], None)


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

def _fwd_kernel(count_full_ref, count_ref, index_ref, code_ref, tile_masks_ref,
                q_seg_ref, kv_seg_ref, *refs, st: _Static):
  param_refs, (q_ref, k_ref, v_ref, o_ref, lse_ref) = refs[:st.n_params], refs[st.n_params:]
  h, i = pl.program_id(1), pl.program_id(2)
  hm = h if st.per_head_codes else 0
  bq, bk = st.block_q, st.block_kv
  q = q_ref[...]
  params = [ref[...] for ref in param_refs]
  q_idx = i * bq + lax.broadcasted_iota(jnp.int32, (bq, 1), 0)
  q_seg = q_seg_ref[...] if st.segments else None

  def visit(t, carry, masked):
    acc, m, l = carry
    j = index_ref[i, t]
    k = k_ref[pl.ds(j * bk, bk), :]
    v = v_ref[pl.ds(j * bk, bk), :]
    kv_idx = j * bk + lax.broadcasted_iota(jnp.int32, (1, bk), 1)
    s = st.mod.apply(_dot_nt(q, k) * st.scale, q_idx, kv_idx, params)
    if masked:
      kv_seg = kv_seg_ref[pl.ds(j * bk, bk)] if st.segments else None
      s = jnp.where(_tile_mask(st, code_ref[hm, i, t], q_idx, kv_idx, q_seg, kv_seg,
                               tile_masks_ref), s, -jnp.inf)
    m_new = jnp.maximum(m, s.max(axis=1))
    m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)
    alpha = jnp.exp(m - m_safe)
    p = jnp.exp(s - m_safe[:, None])
    l = alpha * l + p.sum(axis=1)
    acc = alpha[:, None] * acc + _dot(p.astype(v.dtype), v)
    return acc, m_new, l

  carry = (jnp.zeros((bq, v_ref.shape[-1]), _F32), jnp.full((bq,), -jnp.inf, _F32),
           jnp.zeros((bq,), _F32))
  n_full, n_all = count_full_ref[i], count_ref[i]
  carry = lax.fori_loop(0, n_full, functools.partial(visit, masked=False), carry)
  acc, m, l = lax.fori_loop(n_full, n_all, functools.partial(visit, masked=True), carry)
  empty = l == 0.0
  o_ref[...] = (acc / jnp.where(empty, 1.0, l)[:, None]).astype(o_ref.dtype)
  # +inf for a row that sees nothing: the backward's exp(s - lse) is then 0, not NaN.
  lse_ref[...] = jnp.where(empty, jnp.inf, m + jnp.log(jnp.where(empty, 1.0, l)))


def _dq_kernel(count_full_ref, count_ref, index_ref, code_ref, tile_masks_ref,
               q_seg_ref, kv_seg_ref, *refs, st: _Static):
  n = st.n_params
  param_refs = refs[:n]
  q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dq_ref = refs[n:n + 7]
  dparam_refs = refs[n + 7:]
  h, i = pl.program_id(1), pl.program_id(2)
  hm = h if st.per_head_codes else 0
  bq, bk = st.block_q, st.block_kv
  q, do = q_ref[...], do_ref[...]
  lse, delta = lse_ref[...], delta_ref[...]
  params = [ref[...] for ref in param_refs]
  q_idx = i * bq + lax.broadcasted_iota(jnp.int32, (bq, 1), 0)
  q_seg = q_seg_ref[...] if st.segments else None

  def visit(t, carry, masked):
    dq, dparams = carry
    j = index_ref[i, t]
    k = k_ref[pl.ds(j * bk, bk), :]
    v = v_ref[pl.ds(j * bk, bk), :]
    kv_idx = j * bk + lax.broadcasted_iota(jnp.int32, (1, bk), 1)
    s, back = _modify_vjp(st, _dot_nt(q, k) * st.scale, q_idx, kv_idx, params, wrt_params=True)
    p = jnp.exp(s - lse[:, None])
    if masked:
      kv_seg = kv_seg_ref[pl.ds(j * bk, bk)] if st.segments else None
      p = jnp.where(_tile_mask(st, code_ref[hm, i, t], q_idx, kv_idx, q_seg, kv_seg,
                               tile_masks_ref), p, 0.0)
    ds, dparams_t = back(p * (_dot_nt(do, v) - delta[:, None]))
    dq = dq + _dot(ds.astype(k.dtype), k)
    if dparams_t is not None:
      dparams = [a + b for a, b in zip(dparams, dparams_t)]
    return dq, dparams

  carry = (jnp.zeros(q.shape, _F32), [jnp.zeros_like(x) for x in params])
  n_full, n_all = count_full_ref[i], count_ref[i]
  carry = lax.fori_loop(0, n_full, functools.partial(visit, masked=False), carry)
  dq, dparams = lax.fori_loop(n_full, n_all, functools.partial(visit, masked=True), carry)
  dq_ref[...] = (dq * st.scale).astype(dq_ref.dtype)
  for ref, grad in zip(dparam_refs, dparams):
    ref[...] = grad


def _dkv_kernel(count_full_ref, count_ref, index_ref, code_ref, tile_masks_ref,
                q_seg_ref, kv_seg_ref, *refs, st: _Static):
  n = st.n_params
  param_refs = refs[:n]
  q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref = refs[n:]
  hkv, j = pl.program_id(1), pl.program_id(2)
  bq, bk = st.block_q, st.block_kv
  k, v = k_ref[...], v_ref[...]
  kv_idx = j * bk + lax.broadcasted_iota(jnp.int32, (1, bk), 1)
  kv_seg = kv_seg_ref[...] if st.segments else None

  def visit(t, carry, g, params, masked):
    dk, dv = carry
    h = hkv * st.group + g
    i = index_ref[j, t]
    rows = pl.ds(i * bq, bq)
    q, do = q_ref[g, rows, :], do_ref[g, rows, :]
    lse, delta = lse_ref[g, rows], delta_ref[g, rows]
    q_idx = i * bq + lax.broadcasted_iota(jnp.int32, (bq, 1), 0)
    s, back = _modify_vjp(st, _dot_nt(q, k) * st.scale, q_idx, kv_idx, params, wrt_params=False)
    p = jnp.exp(s - lse[:, None])
    if masked:
      q_seg = q_seg_ref[rows] if st.segments else None
      code = code_ref[h if st.per_head_codes else 0, j, t]
      p = jnp.where(_tile_mask(st, code, q_idx, kv_idx, q_seg, kv_seg, tile_masks_ref), p, 0.0)
    dv = dv + _dot_tn(p.astype(do.dtype), do)
    ds, _ = back(p * (_dot_nt(do, v) - delta[:, None]))
    dk = dk + _dot_tn(ds.astype(q.dtype), q)
    return dk, dv

  carry = (jnp.zeros(k.shape, _F32), jnp.zeros(v.shape, _F32))
  n_full, n_all = count_full_ref[j], count_ref[j]
  for g in range(st.group):   # the query heads sharing this K/V head
    params = [ref[g] for ref in param_refs]
    carry = lax.fori_loop(0, n_full, functools.partial(visit, g=g, params=params, masked=False),
                          carry)
    carry = lax.fori_loop(n_full, n_all, functools.partial(visit, g=g, params=params,
                                                           masked=True), carry)
  dk, dv = carry
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
  """Tables, tile masks, segment ids and modifier parameters with their BlockSpecs.

  ``q_tile_major``: programs run over query tiles (forward, dq: one head each) rather
  than key tiles (dk/dv: one K/V head and the ``group`` query heads sharing it).
  Parameters are ``[heads, ...]``: each program receives its own head's rows.
  """
  tile_masks, q_seg, kv_seg, params = extras
  bq, bk = st.block_q, st.block_kv
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
  return ([(t, None) for t in tables] + [(tile_masks, None), (q_seg, q_seg_spec),
                                         (kv_seg, kv_seg_spec)] + param_specs)


def _forward(st: _Static, fwd_tables, extras, q, k, v):
  """q [B, H, Nq_pad, D], k/v [B, Hkv, Nk_pad, D] -> out [B, H, Nq_pad, Dv], lse [B, H, Nq_pad]."""
  b, h, nq_pad, d = q.shape
  nk_pad, dv = k.shape[2], v.shape[-1]
  g, bq = st.group, st.block_q
  args = _small_operands(st, fwd_tables, extras, True) + [
      (q, pl.BlockSpec((None, None, bq, d), lambda b_, h_, i: (b_, h_, i, 0))),
      (k, pl.BlockSpec((None, None, nk_pad, d), lambda b_, h_, i: (b_, h_ // g, 0, 0))),
      (v, pl.BlockSpec((None, None, nk_pad, dv), lambda b_, h_, i: (b_, h_ // g, 0, 0)))]
  out_shape = [jax.ShapeDtypeStruct((b, h, nq_pad, dv), q.dtype),
               jax.ShapeDtypeStruct((b, h, nq_pad), _F32)]
  out_specs = [pl.BlockSpec((None, None, bq, dv), lambda b_, h_, i: (b_, h_, i, 0)),
               pl.BlockSpec((None, None, bq), lambda b_, h_, i: (b_, h_, i))]
  return _call(_fwd_kernel, st, (b, h, nq_pad // bq), args, out_shape, out_specs, "flash_fwd",
               d)


def _backward(st: _Static, fwd_tables, bwd_tables, extras, q, k, v, out, lse, do):
  """dq, dk, dv (input dtypes) and the modifier parameters' gradients (float32, [H, ...])."""
  b, h, nq_pad, d = q.shape
  hkv, nk_pad, dv = k.shape[1], k.shape[2], v.shape[-1]
  g, bq, bk = st.group, st.block_q, st.block_kv
  nq_tiles = nq_pad // bq
  params = extras[-1]
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
      jax.ShapeDtypeStruct((b, h, nq_tiles, *x.shape[1:]), _F32) for x in params]
  out_specs = [pl.BlockSpec((None, None, bq, d), lambda b_, h_, i: (b_, h_, i, 0))] + [
      pl.BlockSpec((None, None, None, *x.shape[1:]),
                   lambda b_, h_, i, z=(0,) * (x.ndim - 1): (b_, h_, i, *z)) for x in params]
  dq, *dparams = _call(_dq_kernel, st, (b, h, nq_tiles), args, out_shape, out_specs, "flash_dq",
                      d)

  args = _small_operands(st, bwd_tables, extras, False) + [
      (q, pl.BlockSpec((None, g, nq_pad, d), lambda b_, hk, j: (b_, hk, 0, 0))),
      (k, pl.BlockSpec((None, None, bk, d), lambda b_, hk, j: (b_, hk, j, 0))),
      (v, pl.BlockSpec((None, None, bk, dv), lambda b_, hk, j: (b_, hk, j, 0))),
      (do, pl.BlockSpec((None, g, nq_pad, dv), lambda b_, hk, j: (b_, hk, 0, 0))),
      (lse, pl.BlockSpec((None, g, nq_pad), lambda b_, hk, j: (b_, hk, 0))),
      (delta, pl.BlockSpec((None, g, nq_pad), lambda b_, hk, j: (b_, hk, 0)))]
  out_shape = [jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)]
  out_specs = [pl.BlockSpec((None, None, bk, d), lambda b_, hk, j: (b_, hk, j, 0)),
               pl.BlockSpec((None, None, bk, dv), lambda b_, hk, j: (b_, hk, j, 0))]
  dk, dv_ = _call(_dkv_kernel, st, (b, hkv, nk_pad // bk), args, out_shape, out_specs,
                  "flash_dkv", d)
  return dq, dk, dv_, [x.sum(axis=(0, 2)) for x in dparams]


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
                    interpret: bool | None = None, pad_head_dim: bool | None = None):
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

  Returns [batch, q_len, heads, v_dim] in q's dtype; differentiable in q, k, v and
  the leaves of ``score_fn.params``.
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
  if segment_ids is not None:
    _check(len(segment_ids) == 2 and segment_ids[0].shape == (b, q_len)
           and segment_ids[1].shape == (b, kv_len),
           f"segment_ids must be (q_ids [{b}, {q_len}], kv_ids [{b}, {kv_len}])")

  # Padded keys must be masked: the last key tile is then never FULL.
  if kv_len % bk:
    codes = codes.copy()
    last = codes[:, :, -1]
    codes[:, :, -1] = np.where(last == FULL, PREDICATE, last)
  if segment_ids is not None:   # data-dependent: every visited tile is masked
    codes = np.where(codes == FULL, PREDICATE, codes)
  st = _Static(scale=float(1.0 / math.sqrt(d) if scale is None else scale), block_q=bq,
               block_kv=bk, q_len=q_len, kv_len=kv_len, group=heads // kv_heads,
               mod=mod, predicate=predicate,
               segments=segment_ids is not None, tile_masks=has_tables,
               per_head_codes=codes.shape[0] > 1, interpret=interpret, backend=backend)
  fwd_tables = tuple(jnp.asarray(x) for x in _visit_tables(codes))
  bwd_tables = tuple(jnp.asarray(x) for x in _visit_tables(codes.transpose(0, 2, 1)))
  nq_pad, nk_pad = nq_tiles * bq, nk_tiles * bk
  tile_masks = jnp.asarray(sparsity.tile_masks if has_tables else np.zeros((1, 1, 1)), jnp.int8)
  if segment_ids is not None:
    q_seg = jnp.pad(jnp.asarray(segment_ids[0], jnp.int32), ((0, 0), (0, nq_pad - q_len)))
    kv_seg = jnp.pad(jnp.asarray(segment_ids[1], jnp.int32), ((0, 0), (0, nk_pad - kv_len)),
                     constant_values=-1)
  else:
    q_seg = jnp.zeros((b, nq_pad), jnp.int32)
    kv_seg = jnp.zeros((b, nk_pad), jnp.int32)

  # Triton tiles need power-of-two sizes: other head dims are zero-padded (q.k and
  # the kept output columns are unchanged; the scale uses the true head dim).
  if pad_head_dim is None:
    pad_head_dim = backend == "gpu" and not interpret
  pad_dim = (lambda n: max(16, pl.next_power_of_2(n))) if pad_head_dim else (lambda n: n)
  dv_true = v.shape[-1]

  def to_internal(x, length):   # [B, N, H, D] -> [B, H, N_pad, D_pad]
    return jnp.pad(x, ((0, 0), (0, length - x.shape[1]), (0, 0),
                       (0, pad_dim(x.shape[-1]) - x.shape[-1]))).transpose(0, 2, 1, 3)

  @jax.custom_vjp
  def attend(q, k, v, params):
    return _forward(st, fwd_tables, (tile_masks, q_seg, kv_seg, params), q, k, v)[0]

  def attend_fwd(q, k, v, params):
    out, lse = _forward(st, fwd_tables, (tile_masks, q_seg, kv_seg, params), q, k, v)
    return out, (q, k, v, params, out, lse)

  def attend_bwd(res, do):
    q, k, v, params, out, lse = res
    extras = (tile_masks, q_seg, kv_seg, params)
    dq, dk, dv, dparams = _backward(st, fwd_tables, bwd_tables, extras, q, k, v, out, lse, do)
    return dq, dk, dv, dparams

  attend.defvjp(attend_fwd, attend_bwd)
  # the parameters' cast and reshape (prepare) sit outside the custom_vjp, so
  # autodiff maps their gradients back to the leaves' shapes and dtypes
  out = attend(to_internal(q, nq_pad), to_internal(k, nk_pad), to_internal(v, nk_pad),
               internal)
  return out.transpose(0, 2, 1, 3)[:, :q_len, :, :dv_true]
