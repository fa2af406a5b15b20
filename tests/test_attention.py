"""Attention implementations against a plain numpy oracle (values and gradients).

Every implementation in ``attnlab.attention`` ("reference", "xla", "blockwise")
must compute the contract of ``core.py``:

  out[b, i, h] = sum_j softmax_j(score_mod(scale * q[b,i,h] . k[b,j,h//G])) v[b,j,h//G]
                 over keys j with mask(i, j) true, and 0 for a row that sees no key.

The oracle below computes that function, and its gradient (the textbook softmax
attention backward pass), in numpy float64 with explicit loops over batch and
head, independently of the library.

Tolerances: values rtol=1e-5, atol=1e-5. Gradients rtol=1e-5 and
atol=1e-5 * max(1, max|oracle gradient|) (absolute error relative to the largest
gradient magnitude of that tensor).
"""

from __future__ import annotations

import functools
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attnlab
from attnlab.attention import dot_product_attention, masks, score_mods
from attnlab.attention.blockwise import make_plan
from attnlab import positional

import test_sparse_patterns as sp

IMPLS = ("reference", "xla", "blockwise")
BLOCK_Q, BLOCK_KV = 8, 16   # small tiles: several tiles per axis and a padded last tile
RTOL = ATOL = 1e-5


# ----------------------------------------------------------------------------- the oracle


def naive_attention(q, k, v, mask_bool=None, bias=None, *, scale=None, cap=None, d_out=None):
  """Softmax attention in numpy float64, one (batch, head) at a time.

  q: [B, Nq, H, D]; k, v: [B, Nk, Hkv, D(v)] with Hkv dividing H (query head h
  uses kv head h // (H // Hkv)). mask_bool, bias: broadcastable to [B, H, Nq, Nk]
  (None = all visible / no bias). ``cap``: soft-capping ``cap * tanh(s / cap)``
  applied to the scaled logits before the bias. A row with no visible key is 0.

  Returns out [B, Nq, H, Dv]; if ``d_out`` (the cotangent of out) is given,
  returns (out, dq, dk, dv, dscores) where dscores [B, H, Nq, Nk] is the gradient
  w.r.t. the logits after soft-capping and bias (i.e. w.r.t. an additive bias).
  """
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  b_, nq, h_, d = q.shape
  nk, hkv = k.shape[1], k.shape[2]
  group = h_ // hkv
  scale = 1.0 / np.sqrt(d) if scale is None else scale
  full_shape = (b_, h_, nq, nk)
  mask_bool = np.ones(full_shape, bool) if mask_bool is None else np.broadcast_to(
      np.asarray(mask_bool, bool), full_shape)
  bias = np.zeros(full_shape) if bias is None else np.broadcast_to(
      np.asarray(bias, np.float64), full_shape)

  out = np.zeros((b_, nq, h_, v.shape[-1]))
  if d_out is not None:
    d_out = np.asarray(d_out, np.float64)
    dq, dk, dv = np.zeros_like(q), np.zeros_like(k), np.zeros_like(v)
    dscores = np.zeros(full_shape)
  for b in range(b_):
    for h in range(h_):
      kh = h // group
      raw = scale * (q[b, :, h] @ k[b, :, kh].T)               # [Nq, Nk]
      s = cap * np.tanh(raw / cap) if cap is not None else raw
      s = s + bias[b, h]
      p = np.zeros((nq, nk))
      for i in range(nq):
        vis = mask_bool[b, h, i]
        if not vis.any():
          continue                                            # sees nothing: p = 0, out = 0
        e = np.exp(s[i, vis] - s[i, vis].max())
        p[i, vis] = e / e.sum()
      out[b, :, h] = p @ v[b, :, kh]
      if d_out is None:
        continue
      do = d_out[b, :, h]                                     # [Nq, Dv]
      dv[b, :, kh] += p.T @ do
      dp = do @ v[b, :, kh].T                                 # [Nq, Nk]
      ds = p * (dp - (dp * p).sum(-1, keepdims=True))         # softmax backward
      dscores[b, h] = ds
      if cap is not None:
        ds = ds * (1.0 - np.tanh(raw / cap) ** 2)
      dq[b, :, h] = scale * ds @ k[b, :, kh]
      dk[b, :, kh] += scale * ds.T @ q[b, :, h]
  if d_out is None:
    return out
  return out, dq, dk, dv, dscores


# ----------------------------------------------------------------------------- helpers


def np_causal(i, j):
  return j <= i


def np_full(i, j):
  return np.ones(np.broadcast_shapes(i.shape, j.shape), bool)


def np_window(left, right):
  return lambda i, j: (i - left <= j) & (j <= i + right)


def np_prefix(n):
  return lambda i, j: (j < n) | (j <= i)


def dense_np(fn, nq, nk):
  return fn(np.arange(nq)[:, None], np.arange(nk)[None, :])


def make_qkv(seed, b, nq, nk, h, hkv, d=8, q_scale=1.0):
  rng = np.random.default_rng(seed)
  q = (q_scale * rng.standard_normal((b, nq, h, d))).astype(np.float32)
  k = rng.standard_normal((b, nk, hkv, d)).astype(np.float32)
  v = rng.standard_normal((b, nk, hkv, d)).astype(np.float32)
  w = rng.standard_normal((b, nq, h, d)).astype(np.float32)   # random weights of the loss
  return q, k, v, w


def run(impl, q, k, v, w, *, mask=None, bias=None, mode="jit"):
  """Loss = sum(w * attention(q, k, v)) through one impl.

  Returns (out, (dq, dk, dv), dbias): ``dbias`` is the gradient w.r.t. ``bias``
  (an array, or a ScoreMod pytree such as AlibiBias) or None when no bias.

  mode: "jit" (mask closed over as a static value), "eager" (no jit), or
  "traced_mask" (a boolean-array mask passed as a jit argument, i.e. as data).
  A static boolean-array mask with blockwise fails under jit (library bug, see
  test_dense_array_mask_blockwise_under_jit), so array masks use "traced_mask" or "eager".
  """

  def loss(q, k, v, bias, mask):
    out = dot_product_attention(q, k, v, mask=mask, bias=bias, impl=impl,
                                block_q=BLOCK_Q, block_kv=BLOCK_KV)
    return jnp.sum(out * w), out

  argnums = (0, 1, 2) if bias is None else (0, 1, 2, 3)
  fn = jax.value_and_grad(loss, argnums=argnums, has_aux=True)
  if mode == "traced_mask":
    fn = jax.jit(fn)
  elif mode == "jit":
    fn = jax.jit(functools.partial(fn, mask=mask))
  else:
    fn = functools.partial(fn, mask=mask)
  args = (q, k, v, bias) + ((mask,) if mode == "traced_mask" else ())
  (_, out), grads = fn(*args)
  dbias = grads[3] if bias is not None else None
  return np.asarray(out), tuple(np.asarray(g) for g in grads[:3]), dbias


def assert_values(actual, expected, what=""):
  assert np.all(np.isfinite(actual)), f"{what}: non-finite values"
  np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL, err_msg=what)


def assert_grad(actual, expected, what=""):
  assert np.all(np.isfinite(actual)), f"{what}: non-finite gradient"
  atol = ATOL * max(1.0, float(np.abs(expected).max()))
  np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=atol, err_msg=what)


def check_against_oracle(impl, q, k, v, w, mask_bool, bias_np=None, cap=None, *,
                         mask=None, bias=None, mode=None):
  """Runs one impl and compares out, dq, dk, dv (and d bias for an array bias) with the oracle."""
  if mode is None:
    mode = "traced_mask" if isinstance(mask, np.ndarray) else "jit"
  out, (dq, dk, dv), dbias = run(impl, q, k, v, w, mask=mask, bias=bias, mode=mode)
  ref_out, ref_dq, ref_dk, ref_dv, ref_ds = naive_attention(q, k, v, mask_bool, bias_np, cap=cap,
                                                            d_out=w)
  assert_values(out, ref_out, f"{impl} out")
  assert_grad(dq, ref_dq, f"{impl} dq")
  assert_grad(dk, ref_dk, f"{impl} dk")
  assert_grad(dv, ref_dv, f"{impl} dv")
  if isinstance(bias, np.ndarray):  # d loss / d bias = dscores summed over broadcast dims
    ref_db = ref_ds.sum(axis=tuple(i for i in range(4 - bias.ndim)))
    ref_db = ref_db.sum(axis=tuple(i for i in range(bias.ndim) if bias.shape[i] == 1),
                        keepdims=True)
    assert_grad(np.asarray(dbias), ref_db.reshape(bias.shape), f"{impl} dbias")
  return out, (dq, dk, dv), dbias


# ----------------------------------------------------------------------------- the oracle itself


def test_oracle_hand_worked_example():
  # One query, two keys, D = 1, scale 1: scores [0, ln 3] -> softmax [1/4, 3/4].
  q = np.ones((1, 1, 1, 1))
  k = np.array([0.0, np.log(3.0)]).reshape(1, 2, 1, 1)
  v = np.array([2.0, 6.0]).reshape(1, 2, 1, 1)
  out = naive_attention(q, k, v, scale=1.0)
  np.testing.assert_allclose(out.ravel(), [0.25 * 2 + 0.75 * 6])
  # Masking the second key leaves only the first.
  out = naive_attention(q, k, v, np.array([[True, False]]), scale=1.0)
  np.testing.assert_allclose(out.ravel(), [2.0])
  # A fully masked row is 0.
  out = naive_attention(q, k, v, np.array([[False, False]]), scale=1.0)
  np.testing.assert_array_equal(out.ravel(), [0.0])


def test_oracle_gradient_matches_finite_differences():
  q, k, v, w = (x.astype(np.float64) for x in make_qkv(0, 1, 5, 6, 2, 1, d=3))
  mask = dense_np(np_window(2, 1), 5, 6)
  bias = np.random.default_rng(1).standard_normal((1, 2, 5, 6))
  _, dq, dk, dv, dbias = naive_attention(q, k, v, mask, bias, cap=2.0, d_out=w)

  def loss(q_, k_, v_, bias_):
    return float((naive_attention(q_, k_, v_, mask, bias_, cap=2.0) * w).sum())

  eps = 1e-6
  for idx, (x, g) in enumerate(((q, dq), (k, dk), (v, dv), (bias, dbias))):
    num = np.zeros_like(x)
    for pos in np.ndindex(x.shape):
      args = [q, k, v, bias]
      xp, xm = x.copy(), x.copy()
      xp[pos] += eps
      xm[pos] -= eps
      args[idx] = xp
      lp = loss(*args)
      args[idx] = xm
      num[pos] = (lp - loss(*args)) / (2 * eps)
    np.testing.assert_allclose(g, num, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- patterns x heads x impls

PATTERNS = {
    "causal": (masks.causal, np_causal),
    "full": (masks.full, np_full),
    "window_left5": (lambda: masks.sliding_window(left=5), np_window(5, 0)),
    "window_3_2": (lambda: masks.sliding_window(3, 2), np_window(3, 2)),
    "prefix_lm7": (lambda: masks.prefix_lm(7), np_prefix(7)),
}
# Sparse patterns (issue: sparse and efficient attention); numpy definitions in test_sparse_patterns.
SPARSE_PATTERNS = {
    "dilated_3x2_causal": (lambda: masks.dilated(3, 2) & masks.causal(),
                           lambda i, j: sp.np_dilated(3, 2)(i, j) & np_causal(i, j)),
    "dilated_2x3": (lambda: masks.dilated(2, 3), sp.np_dilated(2, 3)),
    "block_local_6": (lambda: masks.block_local(6), sp.np_block_local(6)),
    "global_0_20": (lambda: masks.global_tokens([0, 20]), sp.np_global([0, 20])),
    "random_causal": (lambda: masks.random(3, seed=5, num_heads=4),
                      lambda i, j: sp.np_random(masks.random(3, seed=5, num_heads=4),
                                                i.shape[0], j.shape[1])),
    "random_bidirectional": (lambda: masks.random(2, seed=1, num_heads=4, kv_len=37),
                             lambda i, j: sp.np_random(masks.random(2, seed=1, num_heads=4,
                                                                    kv_len=37),
                                                       i.shape[0], j.shape[1])),
    "bigbird_causal": (lambda: masks.bigbird(4, 3, 1, 1, seed=2, num_heads=4, causal=True),
                       lambda i, j: sp.np_bigbird(masks.bigbird(4, 3, 1, 1, seed=2, num_heads=4,
                                                                causal=True).left,
                                                  i.shape[0], j.shape[1], True)),
    "bigbird": (lambda: masks.bigbird(8, 3, 1, 2, seed=0, num_heads=4, kv_len=37),
                lambda i, j: sp.np_bigbird(masks.bigbird(8, 3, 1, 2, seed=0, num_heads=4, kv_len=37),
                                           i.shape[0], j.shape[1], False)),
    "longformer_4": (lambda: masks.longformer(4, [0, 17]), sp.np_longformer(4, [0, 17], False)),
    "longformer_5_causal": (lambda: masks.longformer(5, [3], causal=True),
                            sp.np_longformer(5, [3], True)),
    "streaming_2_5": (lambda: masks.streaming(2, 5), sp.np_streaming(2, 5)),
}
PATTERNS.update(SPARSE_PATTERNS)
HEADS = {"mha": (4, 4), "gqa": (4, 2), "mqa": (4, 1)}


# Sparse patterns run with GQA and MQA (per-head patterns across head groups); MHA is
# covered by the dense ones.
PATTERN_HEADS = [(p, h) for p in PATTERNS for h in HEADS
                 if not (p in SPARSE_PATTERNS and h == "mha")]


@pytest.mark.parametrize("pattern,heads", PATTERN_HEADS)
def test_impls_match_oracle(pattern, heads):
  make_mask, np_fn = PATTERNS[pattern]
  h, hkv = HEADS[heads]
  n = 37   # not a multiple of block_q=8 nor block_kv=16
  q, k, v, w = make_qkv(zlib.crc32(f"{pattern}/{heads}".encode()), 2, n, n, h, hkv)
  mask_bool = dense_np(np_fn, n, n)
  for impl in IMPLS:
    check_against_oracle(impl, q, k, v, w, mask_bool, mask=make_mask())


COMPOSITIONS = {
    "window3_or_prefix4": (lambda ids: masks.sliding_window(3) | masks.prefix_lm(4),
                           lambda ids, i, j: np_window(3, 0)(i, j) | np_prefix(4)(i, j)),
    "segments_and_causal": (lambda ids: masks.segments(ids) & masks.causal(),
                            lambda ids, i, j: (ids[:, None, :, None] == ids[:, None, None, :])
                            & np_causal(i, j)),
}


@pytest.mark.parametrize("name", list(COMPOSITIONS))
def test_composed_patterns_match_oracle(name):
  make_mask, np_fn = COMPOSITIONS[name]
  n = 37
  ids = np.array([[0] * 10 + [1] * 15 + [2] * 12,
                  [0] * 3 + [1] * 20 + [2] * 7 + [3] * 7], np.int32)
  mask_bool = np_fn(ids, np.arange(n)[:, None], np.arange(n)[None, :])
  q, k, v, w = make_qkv(7, 2, n, n, 4, 2)
  for impl in IMPLS:
    check_against_oracle(impl, q, k, v, w, mask_bool, mask=make_mask(ids))


def test_q_len_differs_from_kv_len():
  nq, nk = 13, 29
  q, k, v, w = make_qkv(11, 2, nq, nk, 4, 2)
  dense = np.random.default_rng(3).random((nq, nk)) < 0.6
  for impl in IMPLS:
    check_against_oracle(impl, q, k, v, w, None, mask=masks.full())
    check_against_oracle(impl, q, k, v, w, dense, mask=dense)   # passed to jit as data


def test_dense_array_mask_blockwise_under_jit():
  # dot_product_attention documents a boolean array as a valid mask; closing over
  # it inside jax.jit (a static mask, the way Mask patterns are used) must work
  # for blockwise as it does for reference and xla.
  nq, nk = 13, 29
  q, k, v, w = make_qkv(37, 1, nq, nk, 2, 2)
  dense = np.random.default_rng(4).random((nq, nk)) < 0.6
  for impl in IMPLS:
    check_against_oracle(impl, q, k, v, w, dense, mask=dense, mode="jit")


# ----------------------------------------------------------------------------- GQA / MQA


@pytest.mark.parametrize("impl", IMPLS)
def test_gqa_equals_mha_with_repeated_kv(impl):
  # (MHA itself, num_kv_heads == num_heads, is checked against the per-head
  # oracle in test_impls_match_oracle[*-mha].)
  h, hkv = 4, 2
  group = h // hkv
  q, k, v, w = make_qkv(9, 2, 23, 23, h, hkv)
  k_rep, v_rep = np.repeat(k, group, axis=2), np.repeat(v, group, axis=2)
  mask = masks.sliding_window(6, 1)
  out, (dq, dk, dv), _ = run(impl, q, k, v, w, mask=mask)
  out_r, (dq_r, dk_r, dv_r), _ = run(impl, q, k_rep, v_rep, w, mask=mask)
  np.testing.assert_allclose(out, out_r, rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(dq, dq_r, rtol=RTOL, atol=ATOL)
  # d(repeated kv head) summed over each group = d(the shared kv head).
  b, n, _, d = dk_r.shape
  np.testing.assert_allclose(dk, dk_r.reshape(b, n, hkv, group, d).sum(3), rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(dv, dv_r.reshape(b, n, hkv, group, d).sum(3), rtol=RTOL, atol=ATOL)


# ----------------------------------------------------------------------------- fully masked rows


@pytest.mark.parametrize("impl", IMPLS)
def test_fully_masked_rows_are_zero_without_nan(impl):
  n = 37
  q, k, v, w = make_qkv(13, 2, n, n, 4, 2)
  dense = dense_np(np_causal, n, n).copy()
  dense[0:8] = False    # a whole query tile (block_q=8) sees nothing: no tile visited
  dense[20] = False     # a single empty row inside a tile that has visible keys
  # "eager": static mask, so blockwise skips the empty tiles; "traced_mask": mask as data.
  for mode in ("eager", "traced_mask") if impl == "blockwise" else ("traced_mask",):
    out, (dq, dk, dv), _ = check_against_oracle(impl, q, k, v, w, dense, mask=dense, mode=mode)
    for x in (out, dq, dk, dv):
      assert not np.isnan(x).any()
    for rows in (slice(0, 8), slice(20, 21)):
      np.testing.assert_array_equal(out[:, rows], 0.0)
      np.testing.assert_array_equal(dq[:, rows], 0.0)


@pytest.mark.parametrize("impl", IMPLS)
def test_segment_never_seen_by_keys_gives_zero(impl):
  # q ids 5 never occur among kv ids: those rows see no key.
  q, k, v, w = make_qkv(17, 1, 12, 20, 2, 2)
  q_ids = np.array([[0] * 4 + [5] * 4 + [1] * 4], np.int32)
  kv_ids = np.array([[0] * 10 + [1] * 10], np.int32)
  mask_bool = q_ids[:, None, :, None] == kv_ids[:, None, None, :]
  out, (dq, _, _), _ = check_against_oracle(impl, q, k, v, w, mask_bool,
                                            mask=masks.segments(q_ids, kv_ids))
  np.testing.assert_array_equal(out[:, 4:8], 0.0)
  np.testing.assert_array_equal(dq[:, 4:8], 0.0)


# ----------------------------------------------------------------------------- score modifiers

ALIBI_4_HEADS = [2.0 ** -2, 2.0 ** -4, 2.0 ** -6, 2.0 ** -8]   # start = ratio = 2^(-8/4)


def alibi_np(slopes, nq, nk):
  i, j = np.arange(nq)[:, None], np.arange(nk)[None, :]
  return -np.asarray(slopes, np.float64)[None, :, None, None] * np.abs(i - j)[None, None]


@pytest.mark.parametrize("pattern", ["causal", "full"])
def test_alibi_matches_oracle(pattern):
  make_mask, np_fn = PATTERNS[pattern]
  n, h = 37, 4
  q, k, v, w = make_qkv(19, 2, n, n, h, 2)
  bias_np = alibi_np(ALIBI_4_HEADS, n, n)
  mask_bool = dense_np(np_fn, n, n)
  _, _, _, _, dscores = naive_attention(q, k, v, mask_bool, bias_np, d_out=w)
  # d loss / d slope_h = sum_{b,i,j} dscores[b,h,i,j] * (-|i-j|)
  ref_dslopes = (dscores * alibi_np(np.ones(h), n, n)).sum(axis=(0, 2, 3))

  dslopes = {}
  for impl in IMPLS:
    _, _, g = check_against_oracle(impl, q, k, v, w, mask_bool, bias_np, mask=make_mask(),
                                   bias=positional.alibi_bias(h))
    assert isinstance(g, positional.AlibiBias)   # gradient w.r.t. the AlibiBias pytree
    dslopes[impl] = np.asarray(g.slopes)
    assert_grad(dslopes[impl], ref_dslopes, f"{impl} d slopes")
  np.testing.assert_allclose(dslopes["blockwise"], dslopes["reference"], rtol=1e-5,
                             atol=1e-5 * np.abs(dslopes["reference"]).max())


def test_alibi_bias_values():
  # The library's dense ALiBi bias for 4 heads is -slope_h * |i - j| with the paper's slopes.
  got = np.asarray(positional.alibi_bias(4).dense(6, 9))
  np.testing.assert_allclose(got, alibi_np(ALIBI_4_HEADS, 6, 9), rtol=1e-7)


def test_soft_cap_matches_oracle():
  n = 37
  # Large logits (q scaled by 4) so that the cap of 5 changes the result.
  q, k, v, w = make_qkv(23, 2, n, n, 4, 2, q_scale=4.0)
  mask_bool = dense_np(np_window(3, 2), n, n)
  capped = naive_attention(q, k, v, mask_bool, cap=5.0)
  uncapped = naive_attention(q, k, v, mask_bool)
  assert np.abs(capped - uncapped).max() > 1e-2   # the cap matters at this scale
  for impl in ("reference", "blockwise"):
    check_against_oracle(impl, q, k, v, w, mask_bool, cap=5.0, mask=masks.sliding_window(3, 2),
                         bias=score_mods.soft_cap(5.0))


def test_soft_cap_rejected_by_xla():
  q, k, v, _ = make_qkv(0, 1, 8, 8, 2, 2)
  with pytest.raises(attnlab.ConfigError, match="additive"):
    dot_product_attention(q, k, v, bias=score_mods.soft_cap(5.0), impl="xla")


def test_dense_float_bias_matches_oracle():
  # Values, d q/k/v and d bias (oracle: dscores summed over the broadcast batch dim).
  n, h = 37, 4
  q, k, v, w = make_qkv(29, 2, n, n, h, 2)
  bias = (2.0 * np.random.default_rng(31).standard_normal((1, h, n, n))).astype(np.float32)
  mask_bool = dense_np(np_causal, n, n)
  for impl in IMPLS:
    check_against_oracle(impl, q, k, v, w, mask_bool, bias, mask=masks.causal(), bias=bias)


# ----------------------------------------------------------------------------- errors


def test_unknown_impl_raises_config_error():
  q, k, v, _ = make_qkv(0, 1, 8, 8, 2, 2)
  with pytest.raises(attnlab.ConfigError) as e:
    dot_product_attention(q, k, v, impl="flashy")
  for name in ("flashy", "blockwise", "reference", "xla"):
    assert name in str(e.value)


def test_kv_heads_not_dividing_heads_raises():
  q, _, _, _ = make_qkv(0, 1, 8, 8, 4, 4)
  _, k, v, _ = make_qkv(0, 1, 8, 8, 3, 3)
  for impl in IMPLS:
    with pytest.raises(ValueError, match="divide"):
      dot_product_attention(q, k, v, impl=impl)


# ----------------------------------------------------------------------------- memory and tile skipping


def _temp_bytes(fn, *args):
  return jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes


def test_blockwise_memory_is_subquadratic():
  """Far below one [N, N] float32 matrix at N=16384, and growing ~linearly with N."""
  def fwd(impl):
    return lambda q, k, v: dot_product_attention(q, k, v, mask=masks.causal(), impl=impl)

  def bwd(impl):
    return jax.grad(lambda q, k, v: fwd(impl)(q, k, v).sum(), argnums=(0, 1, 2))

  def temp(fn, n):
    spec = jax.ShapeDtypeStruct((1, n, 2, 64), jnp.float32)
    return _temp_bytes(fn, spec, spec, spec)

  n = 16384
  one_score_matrix = n * n * 4
  for fn in (fwd("blockwise"), bwd("blockwise")):
    big, half = temp(fn, n), temp(fn, n // 2)
    assert big < one_score_matrix / 10
    assert big < 2.5 * half          # doubling N at most ~doubles it (quadratic would be 4x)
  # The same measure catches a dense implementation.
  assert temp(fwd("reference"), n) > one_score_matrix
  assert temp(bwd("reference"), n) > one_score_matrix


def _nonempty_tiles_np(np_fn, n, block):
  dense = dense_np(np_fn, n, n)
  t = n // block
  return dense.reshape(t, block, t, block).any(axis=(1, 3))


@pytest.mark.parametrize("name,mask,np_fn,expected", [
    ("window64", masks.sliding_window(64), np_window(64, 0), None),
    ("causal", masks.causal(), np_causal, 136),
    ("full", masks.full(), np_full, 256),
])
def test_block_skipping(name, mask, np_fn, expected):
  n, block = 1024, 64
  plan = make_plan(n, n, mask, block_q=block, block_kv=block, scale=1.0)
  visited = np.zeros((16, 16), bool)
  for qi, row in enumerate(plan.kv_blocks):
    visited[qi, list(row)] = True
  assert plan.num_tiles == visited.sum()
  # Exactly the tiles holding a visible key are visited.
  np.testing.assert_array_equal(visited, _nonempty_tiles_np(np_fn, n, block))
  # The key-tile view (backward pass) is the transpose of the query-tile view.
  for kj, col in enumerate(plan.q_blocks):
    assert tuple(np.flatnonzero(visited[:, kj])) == col
  if expected is None:   # window of 64 keys: the diagonal tile and the one before it
    assert 2 * 16 - 1 <= plan.num_tiles <= 3 * 16
  else:
    assert plan.num_tiles == expected


@pytest.mark.parametrize("left,right", [(None, 0), (3, 0), (0, 0), (None, None), (2, 5),
                                        (None, -1), (1, -1), (-2, 4), (4, -6)])
@pytest.mark.parametrize("q_len,kv_len", [(8, 8), (12, 5), (5, 12), (1, 1)])
def test_empty_row_check_of_a_band_matches_the_dense_definition(left, right, q_len, kv_len):
  """The closed form the xla path uses to decide whether to zero empty rows, against the
  band's definition ``i - left <= j <= i + right`` evaluated on the dense grid."""
  from attnlab.attention.core import _may_have_empty_rows
  i, j = np.arange(q_len)[:, None], np.arange(kv_len)[None, :]
  sees = np.ones((q_len, kv_len), bool)
  if left is not None:
    sees &= j >= i - left
  if right is not None:
    sees &= j <= i + right
  expected = not sees.any(axis=1).all()
  assert _may_have_empty_rows(masks.SlidingWindow(left=left, right=right), q_len, kv_len) == expected
