"""``pallas_kernels.decode.flash_decode`` (interpret mode on CPU) against a float64 oracle.

The oracle is independent of the kernel: numpy float64, explicit loops over batch,
query token and head, a dense softmax over exactly the visible cache slots
(``max(0, p - window) <= j <= p``, ``p = length - q_tokens + t``), ALiBi then soft-cap,
or any per-head modifier given as a numpy function. The kernel's modifiers are plain
functions wrapped in ``ScoreFn`` here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels import flash_decode
from pallas_kernels.score_fn import ScoreFn


def modifier(alibi_slopes=None, soft_cap=None):
  """ALiBi then soft-cap as a kernel ScoreFn (written here, independently of attnlab)."""
  if alibi_slopes is None and soft_cap is None:
    return None

  def fn(params, s, q_idx, kv_idx):
    if alibi_slopes is not None:
      s = s - params["slope"] * jnp.abs(q_idx - kv_idx).astype(jnp.float32)
    if soft_cap is not None:
      s = soft_cap * jnp.tanh(s / soft_cap)
    return s

  slopes = jnp.zeros((4,)) if alibi_slopes is None else jnp.asarray(alibi_slopes, jnp.float32)
  return ScoreFn(fn, {"slope": slopes})


def flash_decode_mod(q, k, v, lengths, *, alibi_slopes=None, soft_cap=None, **kw):
  return flash_decode(q, k, v, lengths, score_fn=modifier(alibi_slopes, soft_cap), **kw)


def oracle(q, k, v, lengths, *, scale=None, alibi_slopes=None, soft_cap=None, window=None,
           mod_np=None, sinks=None):
  q, k, v = (np.asarray(jnp.asarray(x, jnp.float32), np.float64) for x in (q, k, v))
  b_, t_, h_, d_ = q.shape
  hkv = k.shape[2]
  group = h_ // hkv
  scale = d_ ** -0.5 if scale is None else scale
  out = np.zeros((b_, t_, h_, d_))
  for b in range(b_):
    length = int(lengths[b])
    for t in range(t_):
      p = length - t_ + t
      lo = 0 if window is None else max(0, p - window)
      j = np.arange(lo, p + 1)
      if j.size == 0:
        continue
      for h in range(h_):
        kh = h // group
        s = scale * (k[b, j, kh] @ q[b, t, h])
        if alibi_slopes is not None:
          s = s - float(alibi_slopes[h]) * (p - j)
        if soft_cap is not None:
          s = soft_cap * np.tanh(s / soft_cap)
        if mod_np is not None:
          s = mod_np(h, s, p, j)
        top = s.max() if sinks is None else max(s.max(), float(sinks[h]))
        w = np.exp(s - top)
        # a learned sink adds exp(sink) to the denominator and nothing to the sum
        denom = w.sum() + (0.0 if sinks is None else np.exp(float(sinks[h]) - top))
        out[b, t, h] = (w / denom) @ v[b, j, kh]
  return out


def make(batch=2, q_tokens=1, heads=4, kv_heads=4, head_dim=16, max_len=40,
         dtype=jnp.float32, seed=0):
  r = np.random.default_rng(seed)
  q = r.standard_normal((batch, q_tokens, heads, head_dim))
  k = r.standard_normal((batch, max_len, kv_heads, head_dim))
  v = r.standard_normal((batch, max_len, kv_heads, head_dim))
  return tuple(jnp.asarray(x, dtype) for x in (q, k, v))


def check(out, ref, tol=1e-4):
  out = np.asarray(jnp.asarray(out, jnp.float32), np.float64)
  atol = tol * max(1.0, np.abs(ref).max())
  np.testing.assert_allclose(out, ref, rtol=tol, atol=atol)


# lengths: 37 (not a multiple of block_kv=8, last tile partial), 5, and max_len
# the default tier runs one query token with MHA, the slow tier the rest of the grid
@pytest.mark.parametrize("q_tokens,heads,kv_heads", [
    pytest.param(t, h, kv, id=f"{t}-{name}",
                 marks=() if (t, name) == (1, "mha") else pytest.mark.slow)
    for t in (1, 4) for name, h, kv in (("mha", 4, 4), ("gqa", 4, 2), ("mqa", 4, 1))])
def test_matches_oracle_heads_and_tokens(heads, kv_heads, q_tokens):
  q, k, v = make(batch=3, q_tokens=q_tokens, heads=heads, kv_heads=kv_heads)
  lengths = np.array([37, 5, 40], np.int32)
  out = flash_decode(q, k, v, jnp.asarray(lengths), block_kv=8, num_splits=2)
  assert out.shape == q.shape and out.dtype == q.dtype
  check(out, oracle(q, k, v, lengths))


@pytest.mark.parametrize("num_splits", [1, 2, 4, 9, None])
def test_num_splits_agree(num_splits):
  # 5 tiles of 8; 9 splits > 5 tiles leaves empty splits; length 4 == q_tokens
  q, k, v = make(batch=3, q_tokens=4, heads=4, kv_heads=2)
  lengths = np.array([37, 4, 17], np.int32)
  out = flash_decode(q, k, v, jnp.asarray(lengths), block_kv=8, num_splits=num_splits)
  check(out, oracle(q, k, v, lengths))


def test_alibi_softcap_window():
  q, k, v = make(batch=2, q_tokens=4, heads=4, kv_heads=2, seed=1)
  lengths = np.array([37, 12], np.int32)
  slopes = np.array([0.5, 0.25, 0.125, 0.0625], np.float32)
  kw = dict(block_kv=8, num_splits=3)
  check(flash_decode_mod(q, k, v, lengths, alibi_slopes=slopes, **kw),
        oracle(q, k, v, lengths, alibi_slopes=slopes))
  check(flash_decode_mod(q, k, v, lengths, soft_cap=2.0, scale=0.7, **kw),
        oracle(q, k, v, lengths, soft_cap=2.0, scale=0.7))
  # window 10 skips the leading tiles of the first batch row; window 0 sees one slot
  for window in (10, 0):
    check(flash_decode(q, k, v, lengths, window=window, **kw),
          oracle(q, k, v, lengths, window=window))
  check(flash_decode_mod(q, k, v, lengths, alibi_slopes=slopes, soft_cap=1.5, window=6, **kw),
        oracle(q, k, v, lengths, alibi_slopes=slopes, soft_cap=1.5, window=6))


@pytest.mark.parametrize("q_tokens,kv_heads,window", [(1, 4, None), (3, 2, 6), (2, 1, None)])
def test_learned_sinks(q_tokens, kv_heads, window):
  """gpt-oss's sinks: one logit per head joins each row's denominator (the merge of the
  splits), including rows' heads interleaved in a GQA group."""
  q, k, v = make(batch=2, q_tokens=q_tokens, heads=4, kv_heads=kv_heads, seed=3)
  lengths = np.array([37, 9], np.int32)
  sinks = np.array([2.5, -1.0, 0.0, 4.0], np.float32)
  out = flash_decode(q, k, v, jnp.asarray(lengths), block_kv=8, num_splits=3, window=window,
                     sinks=jnp.asarray(sinks))
  check(out, oracle(q, k, v, lengths, window=window, sinks=sinks))
  plain = flash_decode(q, k, v, jnp.asarray(lengths), block_kv=8, num_splits=3, window=window)
  assert np.abs(np.asarray(out) - np.asarray(plain)).max() > 1e-2   # the sinks matter


def test_per_head_modifier_keeps_each_rows_head_under_gqa():
  # rows of one program interleave the group's heads: a per-head temperature and a
  # per-head distance gate (a [heads, 3] leaf) must reach the right rows
  q, k, v = make(batch=2, q_tokens=3, heads=4, kv_heads=2, seed=4)
  lengths = np.array([33, 9], np.int32)
  temp = np.array([0.5, 1.0, 2.0, 3.0], np.float32)
  gate = np.arange(12, dtype=np.float32).reshape(4, 3) / 10.0

  def fn(params, s, q_idx, kv_idx):
    dist = jnp.abs(q_idx - kv_idx).astype(jnp.float32)
    return s * params["temp"] - jnp.sum(params["gate"]) * jnp.log1p(dist)

  score_fn = ScoreFn(fn, {"temp": jnp.asarray(temp), "gate": jnp.asarray(gate)})
  mod_np = lambda h, s, p, j: s * temp[h] - gate[h].sum() * np.log1p(np.abs(p - j))  # noqa: E731
  check(flash_decode(q, k, v, lengths, score_fn=score_fn, block_kv=8, num_splits=2),
        oracle(q, k, v, lengths, mod_np=mod_np))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision(dtype):
  q, k, v = make(batch=2, q_tokens=2, heads=4, kv_heads=2, dtype=dtype, seed=2)
  lengths = np.array([29, 40], np.int32)
  out = flash_decode_mod(q, k, v, lengths, block_kv=8, num_splits=2, soft_cap=3.0)
  assert out.dtype == dtype
  # oracle on the rounded inputs; the kernel feeds p to the p.v matmul in the input dtype
  check(out, oracle(q, k, v, lengths, soft_cap=3.0), tol=2e-2 if dtype == jnp.bfloat16 else 4e-3)


def test_jit_traced_lengths_no_recompile():
  q, k, v = make(batch=2, q_tokens=2, heads=4, kv_heads=2, seed=3)
  f = jax.jit(lambda q, k, v, n: flash_decode(q, k, v, n, block_kv=8, num_splits=2))
  for lengths in ([40, 9], [13, 2], [25, 33]):
    lengths = np.array(lengths, np.int32)
    check(f(q, k, v, jnp.asarray(lengths)), oracle(q, k, v, lengths))
  assert f._cache_size() == 1


def test_bad_inputs_raise():
  q, k, v = make(batch=2, q_tokens=4, heads=4, kv_heads=4, max_len=8)
  n = jnp.array([8, 6], jnp.int32)
  with pytest.raises(ValueError, match="lengths"):
    flash_decode(q, k, v, jnp.array([8, 3], jnp.int32))     # length < q_tokens
  with pytest.raises(ValueError, match="lengths"):
    flash_decode(q, k, v, jnp.array([9, 6], jnp.int32))     # length > max_len
  with pytest.raises(ValueError, match="kv_heads"):
    flash_decode(q, k[:, :, :3], v[:, :, :3], n)
  with pytest.raises(ValueError, match="v_cache"):
    flash_decode(q, k, v[:, :7], n)
  with pytest.raises(ValueError, match="head_dim"):
    flash_decode(q, k[..., :8], v[..., :8], n)
  with pytest.raises(ValueError, match="block_kv"):
    flash_decode(q, k, v, n, block_kv=0)
  with pytest.raises(ValueError, match="window"):
    flash_decode(q, k, v, n, window=-1)
  with pytest.raises(ValueError, match="q_tokens"):
    qq, kk, vv = make(batch=2, q_tokens=4, max_len=3)
    flash_decode(qq, kk, vv, jnp.array([3, 3], jnp.int32))
