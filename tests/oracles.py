"""Independent oracles: attention as the papers define it, in numpy float64 with explicit
loops, sharing no code with attnlab's implementations.

- ``attention``: softmax attention of one (batch, head) at a time, with a boolean mask, an
  additive bias array or a general score function, and its textbook backward pass;
- ``tile_classes``: the exact EMPTY / PARTIAL / FULL class of every tile of a dense mask;
- ``directional_derivative``: a central finite difference (Richardson-extrapolated) of
  any function of a pytree of float leaves, for gradients no formula here can give;
- the patterns' definitions as numpy predicates (``np_causal``, ``np_window``,
  ``np_dilated``, ``np_bigbird``, ...), ALiBi's bias (``alibi_np``) and test inputs
  (``make_qkv``), for the tests that check a pattern or a kernel against its paper.

A pattern's predicate, a score modifier's function and a position scheme's bias are the
*definitions* of those entries; the oracles evaluate them on dense index grids and compute
everything else (softmax, the weighted sum, the backward pass, tile classes) themselves.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

EMPTY, PARTIAL, FULL = 0, 1, 2


def attention(q, k, v, *, mask=None, bias=None, score_fn: Callable | None = None,
              score_grad: Callable | None = None, scale: float | None = None, d_out=None):
  """Softmax attention, one (batch, head) at a time, in float64.

  q: [B, Nq, H, D]; k, v: [B, Nk, Hkv, Dv] (query head h reads kv head h // (H // Hkv)).
  mask: bool broadcastable to [B, H, Nq, Nk] (None: every key); bias: float broadcastable
  to [B, H, Nq, Nk], added to the scaled logits; score_fn(s) -> s' (float64 [B, H, Nq, Nk]
  -> same): a general score modifier applied to the scaled logits before ``bias``, with
  its elementwise derivative ``score_grad(s)`` when given, else taken by central
  differences. A row that sees no key is 0.

  Returns out [B, Nq, H, Dv]; with ``d_out`` (the cotangent of out) returns
  (out, dq, dk, dv, dlogits), dlogits [B, H, Nq, Nk] being the gradient with respect to
  the final logits (hence to an additive bias, and to a modifier's output).
  """
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  b_, nq, h_, d = q.shape
  nk, hkv = k.shape[1], k.shape[2]
  group = h_ // hkv
  scale = 1.0 / np.sqrt(d) if scale is None else scale
  shape = (b_, h_, nq, nk)
  mask = np.ones(shape, bool) if mask is None else np.broadcast_to(np.asarray(mask, bool), shape)
  bias = np.zeros(shape) if bias is None else np.broadcast_to(np.asarray(bias, np.float64), shape)
  raw = scaled_logits(q, k, scale)
  if score_fn is None:
    logits, dmod = raw + bias, np.ones(shape)
  else:
    logits = np.asarray(score_fn(raw), np.float64) + bias
    if score_grad is not None:
      dmod = np.asarray(score_grad(raw), np.float64)
    else:
      step = 1e-3 * (1.0 + np.abs(raw))
      dmod = (np.asarray(score_fn(raw + step), np.float64)
              - np.asarray(score_fn(raw - step), np.float64)) / (2 * step)

  out = np.zeros((b_, nq, h_, v.shape[-1]))
  probs = np.zeros(shape)
  for b in range(b_):
    for h in range(h_):
      for i in range(nq):
        seen = mask[b, h, i]
        if not seen.any():
          continue                                   # sees nothing: p = 0, out = 0
        e = np.exp(logits[b, h, i, seen] - logits[b, h, i, seen].max())
        probs[b, h, i, seen] = e / e.sum()
      out[b, :, h] = probs[b, h] @ v[b, :, h // group]
  if d_out is None:
    return out

  d_out = np.asarray(d_out, np.float64)
  dq, dk, dv = np.zeros_like(q), np.zeros_like(k), np.zeros_like(v)
  dlogits = np.zeros(shape)
  for b in range(b_):
    for h in range(h_):
      kh, p, do = h // group, probs[b, h], d_out[b, :, h]
      dv[b, :, kh] += p.T @ do
      dp = do @ v[b, :, kh].T
      dlogits[b, h] = p * (dp - (dp * p).sum(-1, keepdims=True))   # softmax backward
      draw = dlogits[b, h] * dmod[b, h]
      dq[b, :, h] = scale * draw @ k[b, :, kh]
      dk[b, :, kh] += scale * draw.T @ q[b, :, h]
  return out, dq, dk, dv, dlogits


def attention_with_sinks(q, k, v, sinks, *, mask=None, bias=None, scale: float | None = None,
                         d_out=None):
  """Softmax attention with learned sinks (gpt-oss), float64, one row at a time, from the
  definition: the row's logits plus one more, ``sinks[h]``, whose value is zero; the sink's
  probability is dropped after normalisation.

  q: [B, Nq, H, D]; k, v: [B, Nk, Hkv, Dv]; sinks: [H]; mask / bias as for ``attention``.
  Returns out [B, Nq, H, Dv]; with ``d_out``: (out, dq, dk, dv, dsinks [H]).
  """
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  sinks = np.asarray(sinks, np.float64)
  b_, nq, h_, d = q.shape
  nk, group = k.shape[1], h_ // k.shape[2]
  scale = 1.0 / np.sqrt(d) if scale is None else scale
  shape = (b_, h_, nq, nk)
  mask = np.ones(shape, bool) if mask is None else np.broadcast_to(np.asarray(mask, bool), shape)
  bias = np.zeros(shape) if bias is None else np.broadcast_to(np.asarray(bias, np.float64), shape)
  out = np.zeros((b_, nq, h_, v.shape[-1]))
  dq, dk, dv = np.zeros_like(q), np.zeros_like(k), np.zeros_like(v)
  dsinks = np.zeros(h_)
  for b in range(b_):
    for h in range(h_):
      kh = h // group
      for i in range(nq):
        seen = np.flatnonzero(mask[b, h, i])
        logits = np.array([scale * q[b, i, h] @ k[b, j, kh] + bias[b, h, i, j] for j in seen]
                          + [sinks[h]])
        e = np.exp(logits - logits.max())
        p = e / e.sum()                      # the last entry is the sink's probability
        for n, j in enumerate(seen):
          out[b, i, h] += p[n] * v[b, j, kh]
        if d_out is None:
          continue
        do = np.asarray(d_out, np.float64)[b, i, h]
        dp = np.array([do @ v[b, j, kh] for j in seen] + [0.0])   # the sink has no value
        dlogit = p * (dp - (p * dp).sum())
        dsinks[h] += dlogit[-1]
        for n, j in enumerate(seen):
          dv[b, j, kh] += p[n] * do
          dq[b, i, h] += scale * dlogit[n] * k[b, j, kh]
          dk[b, j, kh] += scale * dlogit[n] * q[b, i, h]
  if d_out is None:
    return out
  return out, dq, dk, dv, dsinks


def scaled_logits(q, k, scale: float | None = None) -> np.ndarray:
  """scale * q . k for every (batch, head, query, key): float64 [B, H, Nq, Nk]."""
  q, k = np.asarray(q, np.float64), np.asarray(k, np.float64)
  b_, nq, h_, d = q.shape
  group = h_ // k.shape[2]
  scale = 1.0 / np.sqrt(d) if scale is None else scale
  raw = np.zeros((b_, h_, nq, k.shape[1]))
  for b in range(b_):
    for h in range(h_):
      raw[b, h] = scale * (q[b, :, h] @ k[b, :, h // group].T)
  return raw


# (q_len, kv_len, block_q, block_kv) for block-map tests: divisible, non-divisible,
# q != kv, blocks larger than the lengths.
BLOCK_MAP_SHAPES = [(64, 64, 16, 16), (37, 37, 8, 16), (50, 29, 16, 8), (13, 40, 4, 7),
                    (29, 50, 6, 5), (1, 17, 8, 8), (30, 30, 64, 64), (100, 100, 32, 32)]


def tile_classes(dense, block_q: int, block_kv: int) -> np.ndarray:
  """The class of every (query tile, key tile) of a boolean mask [..., Nq, Nk] (leading axes,
  e.g. heads, are merged: a tile is EMPTY only if empty for all of them and FULL only if full
  for all), from the tiles' entries one by one."""
  dense = np.asarray(dense, bool)
  dense = dense.reshape((-1,) + dense.shape[-2:])
  nq, nk = dense.shape[-2:]
  out = np.zeros((-(-nq // block_q), -(-nk // block_kv)), np.int8)
  for i in range(out.shape[0]):
    for j in range(out.shape[1]):
      tile = dense[:, i * block_q:(i + 1) * block_q, j * block_kv:(j + 1) * block_kv]
      out[i, j] = FULL if tile.all() else (PARTIAL if tile.any() else EMPTY)
  return out


def directional_derivative(f: Callable, leaves: list, direction: list, step: float) -> float:
  """d/dt f(leaves + t * direction) at t = 0 (lists of float arrays), by central differences
  at ``step`` and ``step / 2`` combined by Richardson extrapolation (error O(step^4))."""
  def at(t):
    return float(f([np.asarray(x, np.float64) + t * np.asarray(u, np.float64)
                    for x, u in zip(leaves, direction)]))
  coarse = (at(step) - at(-step)) / (2 * step)
  fine = (at(step / 2) - at(-step / 2)) / step
  return (4 * fine - coarse) / 3


def naive_attention(q, k, v, mask_bool=None, bias=None, *, scale=None, cap=None, d_out=None):
  """``attention`` with an optional soft-cap ``cap * tanh(s / cap)`` (Gemma 2) applied to the
  scaled logits before ``bias``, its derivative exact: (out) or (out, dq, dk, dv, dlogits)."""
  fn = grad = None
  if cap is not None:
    fn = lambda s: cap * np.tanh(s / cap)            # noqa: E731
    grad = lambda s: 1.0 - np.tanh(s / cap) ** 2     # noqa: E731
  return attention(q, k, v, mask=mask_bool, bias=bias, score_fn=fn, score_grad=grad,
                   scale=scale, d_out=d_out)


# ----------------------------------------------------------------------------- test inputs


def make_qkv(seed, b, nq, nk, h, hkv, d=8, q_scale=1.0, dv=None):
  """float32 q [b, nq, h, d], k [b, nk, hkv, d], v [b, nk, hkv, dv] (dv: d by default), and
  w [b, nq, h, dv] (the weights of the loss sum(w * out))."""
  dv = d if dv is None else dv
  rng = np.random.default_rng(seed)
  q = (q_scale * rng.standard_normal((b, nq, h, d))).astype(np.float32)
  k = rng.standard_normal((b, nk, hkv, d)).astype(np.float32)
  v = rng.standard_normal((b, nk, hkv, dv)).astype(np.float32)
  w = rng.standard_normal((b, nq, h, dv)).astype(np.float32)
  return q, k, v, w


def grid(q_len, kv_len):
  """Query indices [q, 1] and key indices [1, k]."""
  return np.arange(q_len)[:, None], np.arange(kv_len)[None, :]


def dense_np(fn, nq, nk):
  """A numpy predicate fn(i, j) on the whole grid."""
  return fn(*grid(nq, nk))


def alibi_np(slopes, nq, nk):
  """ALiBi (Press et al. 2022): -slope_h |i - j|, float64 [1, H, nq, nk]."""
  i, j = grid(nq, nk)
  return -np.asarray(slopes, np.float64)[None, :, None, None] * np.abs(i - j)[None, None]


# ----------------------------------------------------------------------------- patterns


def np_causal(i, j):
  return j <= i


def np_full(i, j):
  return np.ones(np.broadcast_shapes(np.shape(i), np.shape(j)), bool)


def np_window(left, right):
  """i - left <= j <= i + right (None: that side unbounded)."""
  def fn(i, j):
    ok = np_full(i, j)
    if left is not None:
      ok = ok & (i - left <= j)
    if right is not None:
      ok = ok & (j <= i + right)
    return ok
  return fn


def np_prefix(n):
  return lambda i, j: (j < n) | (j <= i)


def np_dilated(window, dilation):
  def fn(i, j):
    d = np.abs(i - j)
    return (d % dilation == 0) & (d <= window * dilation)
  return fn


def np_block_local(block):
  return lambda i, j: i // block == j // block


def np_global(indices):
  return lambda i, j: np.isin(i, indices) | np.isin(j, indices)


def np_longformer(window, indices, causal):
  def fn(i, j):
    local = (j >= i - window) & (j <= i + (0 if causal else window))
    ok = local | np_global(indices)(i, j)
    return ok & np_causal(i, j) if causal else ok
  return fn


def np_streaming(sinks, window):
  return lambda i, j: (j <= i) & ((j < sinks) | (i - j <= window))


def np_random(mask, q_len, kv_len):
  """[H, q, k] of a ``masks.RandomKeys``: row i sees exactly the keys the pattern drew for
  it (its draws are its definition; loops, no broadcasting)."""
  draws = np.asarray(mask.draws(np.arange(q_len)))      # [H, q, R]
  out = np.zeros((mask.num_heads, q_len, kv_len), bool)
  for h in range(mask.num_heads):
    for i in range(q_len):
      for j in draws[h, i]:
        if 0 <= j < kv_len:
          out[h, i, j] = True
  return out


def np_bigbird(mask, q_len, kv_len, causal):
  """[H, q, k] of a ``masks.BigBird`` from the block-level definition, token by token."""
  nqb = -(-q_len // mask.block)
  rand = np.asarray(mask._random_blocks(np.arange(nqb)))   # [H, nqb, R]
  out = np.zeros((mask.num_heads, q_len, kv_len), bool)
  for h in range(mask.num_heads):
    for i in range(q_len):
      bi = i // mask.block
      for j in range(kv_len):
        bj = j // mask.block
        ok = (abs(bi - bj) <= mask.window_blocks // 2 or bi < mask.global_blocks
              or bj < mask.global_blocks or bj in rand[h, bi])
        out[h, i, j] = ok and (j <= i or not causal)
  return out
