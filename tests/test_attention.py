"""Attention implementations: properties the conformance suite does not cover.

Every implementation's values and gradients for every registered pattern and score
modifier, and a set of standard requests, are checked by the registry-driven conformance
suite (``tests/test_conformance_*.py``) against the float64 oracle of ``tests/oracles.py``.
Here: a static dense array mask under ``jit``, GQA as MHA with repeated K/V (an
identity), a query segment no key carries, ALiBi's slopes, error messages, blockwise
memory and tile skipping, and the closed form for empty rows.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attnlab
from attnlab import positional
from attnlab.attention import dot_product_attention, masks, score_mods
from attnlab.attention.blockwise import make_plan
from oracles import alibi_np, dense_np, make_qkv, naive_attention, np_causal, np_full, np_window

IMPLS = ("reference", "xla", "blockwise")
BLOCK_Q, BLOCK_KV = 8, 16   # small tiles: several tiles per axis and a padded last tile
RTOL = ATOL = 1e-5


def run(impl, q, k, v, w, *, mask=None, bias=None, mode="jit"):
  """Loss = sum(w * attention(q, k, v)) through one impl: (out, (dq, dk, dv), d bias).

  mode: "jit" (mask closed over as a static value) or "traced_mask" (a boolean-array mask
  passed as a jit argument, i.e. as data)."""

  def loss(q, k, v, bias, mask):
    out = dot_product_attention(q, k, v, mask=mask, bias=bias, impl=impl,
                                block_q=BLOCK_Q, block_kv=BLOCK_KV)
    return jnp.sum(out * w), out

  argnums = (0, 1, 2) if bias is None else (0, 1, 2, 3)
  fn = jax.value_and_grad(loss, argnums=argnums, has_aux=True)
  fn = jax.jit(fn) if mode == "traced_mask" else jax.jit(functools.partial(fn, mask=mask))
  args = (q, k, v, bias) + ((mask,) if mode == "traced_mask" else ())
  (_, out), grads = fn(*args)
  dbias = grads[3] if bias is not None else None
  return np.asarray(out), tuple(np.asarray(g) for g in grads[:3]), dbias


def assert_grad(actual, expected, what=""):
  assert np.all(np.isfinite(actual)), f"{what}: non-finite gradient"
  atol = ATOL * max(1.0, float(np.abs(expected).max()))
  np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=atol, err_msg=what)


def check_against_oracle(impl, q, k, v, w, mask_bool, *, mask=None, mode="jit"):
  out, (dq, dk, dv), _ = run(impl, q, k, v, w, mask=mask, mode=mode)
  ref, rdq, rdk, rdv, _ = naive_attention(q, k, v, mask_bool, d_out=w)
  np.testing.assert_allclose(out, ref, rtol=RTOL, atol=ATOL, err_msg=f"{impl} out")
  for got, want, name in ((dq, rdq, "dq"), (dk, rdk, "dk"), (dv, rdv, "dv")):
    assert_grad(got, want, f"{impl} {name}")
  return out, (dq, dk, dv)


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


@pytest.mark.parametrize("impl", IMPLS)
def test_segment_never_seen_by_keys_gives_zero(impl):
  # q ids 5 never occur among kv ids: those rows see no key.
  q, k, v, w = make_qkv(17, 1, 12, 20, 2, 2)
  q_ids = np.array([[0] * 4 + [5] * 4 + [1] * 4], np.int32)
  kv_ids = np.array([[0] * 10 + [1] * 10], np.int32)
  mask_bool = q_ids[:, None, :, None] == kv_ids[:, None, None, :]
  out, (dq, _, _) = check_against_oracle(impl, q, k, v, w, mask_bool,
                                        mask=masks.segments(q_ids, kv_ids), mode="jit")
  np.testing.assert_array_equal(out[:, 4:8], 0.0)
  np.testing.assert_array_equal(dq[:, 4:8], 0.0)


# ----------------------------------------------------------------------------- score modifiers

ALIBI_4_HEADS = [2.0 ** -2, 2.0 ** -4, 2.0 ** -6, 2.0 ** -8]   # start = ratio = 2^(-8/4)


def test_alibi_bias_values():
  # The library's dense ALiBi bias for 4 heads is -slope_h * |i - j| with the paper's slopes.
  got = np.asarray(positional.alibi_bias(4).dense(6, 9))
  np.testing.assert_allclose(got, alibi_np(ALIBI_4_HEADS, 6, 9), rtol=1e-7)


def test_soft_cap_rejected_by_xla():
  q, k, v, _ = make_qkv(0, 1, 8, 8, 2, 2)
  with pytest.raises(attnlab.ConfigError, match="additive"):
    dot_product_attention(q, k, v, bias=score_mods.soft_cap(5.0), impl="xla")


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
