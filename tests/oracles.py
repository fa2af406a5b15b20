"""Independent oracles: attention as the papers define it, in numpy float64 with explicit
loops, sharing no code with attnlab's implementations.

- ``attention``: softmax attention of one (batch, head) at a time, with a boolean mask, an
  additive bias array or a general score function, and its textbook backward pass;
- ``tile_classes``: the exact EMPTY / PARTIAL / FULL class of every tile of a dense mask;
- ``directional_derivative``: a central finite difference (Richardson-extrapolated) of
  any function of a pytree of float leaves, for gradients no formula here can give.

A pattern's predicate, a score modifier's function and a position scheme's bias are the
*definitions* of those entries; the oracles evaluate them on dense index grids and compute
everything else (softmax, the weighted sum, the backward pass, tile classes) themselves.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

EMPTY, PARTIAL, FULL = 0, 1, 2


def attention(q, k, v, *, mask=None, bias=None, score_fn: Callable | None = None,
              scale: float | None = None, d_out=None):
  """Softmax attention, one (batch, head) at a time, in float64.

  q: [B, Nq, H, D]; k, v: [B, Nk, Hkv, Dv] (query head h reads kv head h // (H // Hkv)).
  mask: bool broadcastable to [B, H, Nq, Nk] (None: every key); bias: float broadcastable
  to [B, H, Nq, Nk], added to the scaled logits; score_fn(s) -> s' (float64 [B, H, Nq, Nk]
  -> same): a general score modifier applied to the scaled logits before ``bias``, with
  its elementwise derivative taken by central differences. A row that sees no key is 0.

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
