"""Split-K flash-decoding: a few new query tokens against a long KV cache.

``flash_decode(q, k_cache, v_cache, lengths)`` computes softmax attention of
``q [batch, q_tokens, heads, head_dim]`` over the valid prefix of a preallocated
cache ``[batch, max_len, kv_heads, head_dim]`` (issue 5, build point 4).

Semantics
---------
* The query tokens are the LAST ``q_tokens`` entries of the valid cache: query ``t``
  of batch ``b`` sits at absolute position ``p = lengths[b] - q_tokens + t`` and sees
  slots ``j <= p`` (so causal among the new tokens; slots ``>= lengths[b]`` are never
  seen). ``window`` (int >= 0) further restricts to ``j >= p - window``.
* Logits ``s = scale * q.k``, then the optional score modifier ``score_fn``
  (``pallas_kernels.score_fn.ScoreFn``: any JAX function of one head's logits, the
  rows' query positions ``p`` and the slot indices ``j``), then a plain softmax over
  the visible slots.
* GQA/MQA: query head ``h`` uses kv head ``h // (heads // kv_heads)``; K/V are never
  repeated. ``lengths`` must be ``>= q_tokens`` (checked when concrete; with traced
  lengths a query at a negative position simply sees no key). A row that sees no
  key gives 0. Softmax statistics and accumulators are float32; output dtype = q's.

Algorithm
---------
The grid is ``(batch, kv_heads, num_splits)``. The cache is cut into ``num_splits``
contiguous ranges of ``split_len`` slots (a multiple of ``block_kv``). One program
takes every query head of one kv-head group, stacked as rows ``[q_tokens * group,
head_dim]`` (row ``r`` = token ``r // group``, head ``kvh * group + r % group``), so
one tile matmul serves the group (the modifier is evaluated once per head of the group
and each row keeps its own head's result), and loops with an online softmax over the
``block_kv`` tiles of its range that can hold a visible slot: the loop bounds are
dynamic (from ``lengths[b]`` and ``window``), so nothing recompiles per length and
tiles past the length are not read. Each split writes its un-normalised output,
running max and running sum; a small jnp step merges the splits, weighting each by
``exp(m_split - m_max)`` (log-sum-exp combine). Learned sinks (``sinks``, a logit per
head) join that merge as one more split with running max = the sink logit, sum 1 and no
value.

Padding (copies): if ``max_len`` is not ``num_splits * split_len`` the caches are
zero-padded along the slot axis; padded slots lie past every length and are never
visible. On a compiled GPU run (Pallas' Triton lowering) ``head_dim`` is zero-padded
to a power of two >= 16 (no change to ``q.k``; padded output columns are dropped),
``block_kv`` is rounded up to a power of two >= 16, and the stacked query rows are
padded to a power of two >= 16. In interpret mode nothing is rounded.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels.score_fn import ScoreFn, prepare

__all__ = ["flash_decode", "default_num_splits"]

_NEG_INF = float("-inf")


def _next_pow2(n: int, minimum: int = 16) -> int:
  return max(minimum, 1 << max(0, int(n) - 1).bit_length())


def default_num_splits(max_len: int, block_kv: int) -> int:
  """About four tiles per split, at most 16 splits, at least 1."""
  n_tiles = -(-max_len // block_kv)
  return int(min(16, max(1, -(-n_tiles // 4))))


def _decode_kernel(len_ref, q_ref, k_ref, v_ref, *rest, scale, block_kv, split_len,
                   q_tokens, group, window, mod):
  param_refs, (o_ref, m_ref, l_ref) = rest[:mod.count], rest[mod.count:]
  split = pl.program_id(2)
  length = len_ref[0]
  start = split * split_len                     # first cache slot of this split
  rows, head_dim = q_ref.shape

  q = q_ref[...]
  row = lax.broadcasted_iota(jnp.int32, (rows, block_kv), 0)
  pos_q = length - q_tokens + row // group      # absolute position of each row
  head_params = [[ref[g] for ref in param_refs] for g in range(group)]
  q_idx = length - q_tokens + lax.broadcasted_iota(jnp.int32, (rows, 1), 0) // group

  def modify(s, off):
    """Each row's own head's modifier (rows interleave the group's heads)."""
    if mod.fn is None:
      return s
    kv_idx = start + off + lax.broadcasted_iota(jnp.int32, (1, block_kv), 1)
    out = s
    for g in range(group):
      mod_g = mod.apply(s, q_idx, kv_idx, head_params[g])
      out = mod_g if group == 1 else jnp.where(row % group == g, mod_g, out)
    return out

  # tiles [lo, hi) of this split can hold a visible slot: j < length, j >= min_pos - window
  hi_slot = jnp.clip(length - start, 0, split_len)
  hi = (hi_slot + block_kv - 1) // block_kv
  if window is None:
    lo = jnp.int32(0)
  else:
    lo_slot = length - q_tokens - window - start
    lo = jnp.clip(lo_slot // block_kv, 0, hi)

  def body(i, carry):
    acc, m, l = carry
    off = pl.multiple_of(i * block_kv, block_kv)
    k = k_ref[pl.ds(off, block_kv), :]
    v = v_ref[pl.ds(off, block_kv), :]
    s = lax.dot_general(q, k, (((1,), (1,)), ((), ())),
                        preferred_element_type=jnp.float32) * scale
    j = start + off + lax.broadcasted_iota(jnp.int32, (rows, block_kv), 1)
    s = modify(s, off)
    visible = (j <= pos_q) & (j < length)
    if window is not None:
      visible &= j >= pos_q - window
    s = jnp.where(visible, s, _NEG_INF)
    m_new = jnp.maximum(m, jnp.max(s, axis=1))
    m_safe = jnp.where(m_new == _NEG_INF, 0.0, m_new)
    alpha = jnp.exp(m - m_safe)               # m == -inf -> 0
    p = jnp.exp(s - m_safe[:, None])          # invisible -> 0
    l = alpha * l + jnp.sum(p, axis=1)
    acc = alpha[:, None] * acc + lax.dot_general(
        p.astype(v.dtype), v, (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32)
    return acc, m_new, l

  init = (jnp.zeros((rows, head_dim), jnp.float32),
          jnp.full((rows,), _NEG_INF, jnp.float32),
          jnp.zeros((rows,), jnp.float32))
  acc, m, l = lax.fori_loop(lo, hi, body, init)
  o_ref[...] = acc
  m_ref[...] = m
  l_ref[...] = l


def _concrete(x):
  if isinstance(x, jax.core.Tracer):
    return None
  try:
    return np.asarray(x)
  except Exception:  # noqa: BLE001
    return None


def flash_decode(q, k_cache, v_cache, lengths, *, scale=None, score_fn: ScoreFn | None = None,
                 window=None, num_splits=None, block_kv=128, interpret=None, sinks=None):
  """Split-K flash-decoding attention (see the module docstring for semantics).

  Args:
    q: ``[batch, q_tokens, heads, head_dim]``, float32/bfloat16/float16.
    k_cache, v_cache: ``[batch, max_len, kv_heads, head_dim]``; ``kv_heads`` divides ``heads``.
    lengths: int ``[batch]`` valid slots per batch (may be traced), ``q_tokens <= lengths <= max_len``.
    scale: logit scale, default ``head_dim ** -0.5``.
    score_fn: optional ``ScoreFn`` applied to the scaled logits (query positions
      ``pos_q``, slot indices ``j``); forward only.
    window: optional int ``>= 0``; query at ``p`` sees ``p - window <= j <= p``.
    num_splits: number of contiguous cache ranges (programs per (batch, kv head));
      None -> ``default_num_splits(max_len, block_kv)``.
    block_kv: cache slots per inner tile (clamped to ``max_len``).
    interpret: None -> interpret on CPU, compiled on GPU/TPU.
    sinks: optional float ``[heads]`` learned sink logits (each row's denominator gains
      ``exp(sink)``).

  Returns:
    ``[batch, q_tokens, heads, head_dim]`` in q's dtype.
  """
  q, k_cache, v_cache = jnp.asarray(q), jnp.asarray(k_cache), jnp.asarray(v_cache)
  if q.ndim != 4:
    raise ValueError(f"flash_decode: q must be [batch, q_tokens, heads, head_dim]; got shape {q.shape}")
  for name, c in (("k_cache", k_cache), ("v_cache", v_cache)):
    if c.ndim != 4:
      raise ValueError(f"flash_decode: {name} must be [batch, max_len, kv_heads, head_dim]; "
                       f"got shape {c.shape}")
  if k_cache.shape != v_cache.shape:
    raise ValueError(f"flash_decode: k_cache {k_cache.shape} and v_cache {v_cache.shape} differ")
  batch, q_tokens, heads, head_dim = q.shape
  kb, max_len, kv_heads, kd = k_cache.shape
  if kb != batch:
    raise ValueError(f"flash_decode: k_cache batch {kb} != q batch {batch}")
  if kd != head_dim:
    raise ValueError(f"flash_decode: k_cache head_dim {kd} != q head_dim {head_dim}")
  if kv_heads < 1 or heads % kv_heads:
    raise ValueError(f"flash_decode: kv_heads={kv_heads} (k_cache) must divide heads={heads} (q)")
  if q_tokens < 1 or q_tokens > max_len:
    raise ValueError(f"flash_decode: q_tokens={q_tokens} must be in [1, max_len={max_len}]")
  lengths = jnp.asarray(lengths)
  if lengths.shape != (batch,) or not jnp.issubdtype(lengths.dtype, jnp.integer):
    raise ValueError(f"flash_decode: lengths must be an integer array of shape ({batch},); "
                     f"got {lengths.dtype} {lengths.shape}")
  lv = _concrete(lengths)
  if lv is not None and (np.any(lv < q_tokens) or np.any(lv > max_len)):
    raise ValueError(f"flash_decode: lengths={lv.tolist()} must lie in "
                     f"[q_tokens={q_tokens}, max_len={max_len}]")
  if isinstance(block_kv, bool) or not isinstance(block_kv, (int, np.integer)) or block_kv < 1:
    raise ValueError(f"flash_decode: block_kv={block_kv!r} must be an int >= 1")
  if window is not None and (not isinstance(window, (int, np.integer)) or window < 0):
    raise ValueError(f"flash_decode: window={window!r} must be None or an int >= 0")
  if num_splits is not None and (not isinstance(num_splits, (int, np.integer)) or num_splits < 1):
    raise ValueError(f"flash_decode: num_splits={num_splits!r} must be None or an int >= 1")
  mod, params = prepare(score_fn, heads, "flash_decode")
  if sinks is not None:
    sinks = jnp.asarray(sinks)
    if sinks.shape != (heads,) or not jnp.issubdtype(sinks.dtype, jnp.floating):
      raise ValueError(f"flash_decode: sinks must be float [{heads}]; got {sinks.dtype} "
                       f"{sinks.shape}")

  interpret = jax.default_backend() not in ("gpu", "tpu") if interpret is None else interpret
  gpu_compiled = (not interpret) and jax.default_backend() == "gpu"
  scale = float(head_dim ** -0.5 if scale is None else scale)
  group = heads // kv_heads
  rows = q_tokens * group

  block_kv = int(min(block_kv, max_len))
  d_pad, rows_pad = head_dim, rows
  if gpu_compiled:
    block_kv = _next_pow2(block_kv)
    d_pad, rows_pad = _next_pow2(head_dim), _next_pow2(rows)
  n_tiles = -(-max_len // block_kv)
  num_splits = default_num_splits(max_len, block_kv) if num_splits is None else int(num_splits)
  split_len = -(-n_tiles // num_splits) * block_kv
  total = num_splits * split_len

  # q: [B, T, Hkv*G, D] -> [B, Hkv, T*G, D] (row r = token r // G, head kvh*G + r % G)
  qr = q.reshape(batch, q_tokens, kv_heads, group, head_dim).transpose(0, 2, 1, 3, 4)
  qr = qr.reshape(batch, kv_heads, rows, head_dim)
  qr = jnp.pad(qr, ((0, 0), (0, 0), (0, rows_pad - rows), (0, d_pad - head_dim)))
  if total != max_len or d_pad != head_dim:
    pad = ((0, 0), (0, total - max_len), (0, 0), (0, d_pad - head_dim))
    k_cache, v_cache = jnp.pad(k_cache, pad), jnp.pad(v_cache, pad)
  len2 = lengths.astype(jnp.int32)

  kv_spec = pl.BlockSpec((None, split_len, None, d_pad), lambda b, h, s: (b, s, h, 0))
  in_specs = [pl.BlockSpec((1,), lambda b, h, s: (b,)),
              pl.BlockSpec((None, None, rows_pad, d_pad), lambda b, h, s: (b, h, 0, 0)),
              kv_spec, kv_spec]
  args = [len2, qr, k_cache, v_cache]
  for x in params:   # [heads, ...]: the group of kv head h is rows h * group ...
    zeros = (0,) * (x.ndim - 1)
    in_specs.append(pl.BlockSpec((group, *x.shape[1:]), lambda b, h, s, z=zeros: (h, *z)))
    args.append(x)

  compiler_params = None
  if gpu_compiled:
    from jax.experimental.pallas import triton as pl_triton
    compiler_params = pl_triton.CompilerParams(num_warps=4 if d_pad <= 64 else 8, num_stages=2)

  kernel = functools.partial(
      _decode_kernel, scale=scale, block_kv=block_kv, split_len=split_len,
      q_tokens=q_tokens, group=group, window=None if window is None else int(window),
      mod=mod)
  f32 = jnp.float32
  o, m, l = pl.pallas_call(
      kernel,
      grid=(batch, kv_heads, num_splits),
      in_specs=in_specs,
      out_specs=[
          pl.BlockSpec((None, None, None, rows_pad, d_pad), lambda b, h, s: (b, h, s, 0, 0)),
          pl.BlockSpec((None, None, None, rows_pad), lambda b, h, s: (b, h, s, 0)),
          pl.BlockSpec((None, None, None, rows_pad), lambda b, h, s: (b, h, s, 0)),
      ],
      out_shape=[
          jax.ShapeDtypeStruct((batch, kv_heads, num_splits, rows_pad, d_pad), f32),
          jax.ShapeDtypeStruct((batch, kv_heads, num_splits, rows_pad), f32),
          jax.ShapeDtypeStruct((batch, kv_heads, num_splits, rows_pad), f32),
      ],
      interpret=interpret,
      compiler_params=compiler_params,
      name="flash_decode",
  )(*args)

  if sinks is not None:   # the sink as one more split: max = its logit, sum = 1, no value
    sink_rows = jnp.tile(sinks.astype(f32).reshape(kv_heads, group), (1, q_tokens))
    sink_rows = jnp.pad(sink_rows, ((0, 0), (0, rows_pad - rows)))         # [Hkv, R]
    sink_m = jnp.broadcast_to(sink_rows[None, :, None], (batch, kv_heads, 1, rows_pad))
    m = jnp.concatenate([m, sink_m], axis=2)
    l = jnp.concatenate([l, jnp.ones_like(sink_m)], axis=2)
    o = jnp.concatenate([o, jnp.zeros(o.shape[:2] + (1,) + o.shape[3:], f32)], axis=2)
  # log-sum-exp combine of the splits
  m_max = jnp.max(m, axis=2, keepdims=True)
  m_max = jnp.where(m_max == _NEG_INF, 0.0, m_max)
  w = jnp.exp(m - m_max)                                  # empty split -> 0
  l_tot = jnp.sum(w * l, axis=2)                          # [B, Hkv, R]
  acc = jnp.sum(w[..., None] * o, axis=2)                 # [B, Hkv, R, D]
  out = jnp.where(l_tot[..., None] > 0, acc / jnp.where(l_tot > 0, l_tot, 1.0)[..., None], 0.0)
  out = out[:, :, :rows, :head_dim].reshape(batch, kv_heads, q_tokens, group, head_dim)
  out = out.transpose(0, 2, 1, 3, 4).reshape(batch, q_tokens, heads, head_dim)
  return out.astype(q.dtype)
