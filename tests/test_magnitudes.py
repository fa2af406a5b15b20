"""Every kind and softmax impl at the magnitudes trained models reach, in float32, bfloat16
and float16: no output depends on a later token or on another batch row, logits up to
about ±1e4 and key norms up to 100 give finite outputs, equal (float32) to a float64 numpy
softmax written from the definition, and fully masked rows are 0, never NaN.

Causality does not hold for Reformer LSH with several chunks (a later token can change
the buckets' sort order; documented in docs/attention.md), so LSH is checked for batch
independence and finiteness only. Performer has its own stress tests
(tests/test_performer_numerics.py); it is included here for the shared properties.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attnlab.attention import dot_product_attention, efficient, masks

B, N, H, D = 2, 40, 2, 16
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def _softmax(impl):
  def fn(q, k, v, causal=True):
    return dot_product_attention(q, k, v, mask=masks.causal() if causal else None, impl=impl,
                                 block_q=16, block_kv=16)
  return fn


KINDS = {
    **{f"softmax/{impl}": _softmax(impl) for impl in ("reference", "xla", "blockwise", "pallas")},
    "linear": lambda q, k, v, causal=True: efficient.linear_attention(q, k, v, causal=causal,
                                                                      chunk_size=16),
    "performer": lambda q, k, v, causal=True: efficient.performer_attention(
        q, k, v, key=jax.random.PRNGKey(3), num_features=64, causal=causal, chunk_size=16),
    "lsh": lambda q, k, v, causal=True: efficient.lsh_attention(
        q, v, key=jax.random.PRNGKey(3), num_buckets=4, num_hashes=2, chunk_size=8,
        causal=causal),
}
CAUSAL = [k for k in KINDS if k != "lsh"]
# the default suite: every kind in float32; bfloat16 and float16 under -m slow
FAST = {(k, "float32") for k in KINDS}


def _cases(kinds):
  return [(k, d) if (k, d) in FAST else pytest.param(k, d, marks=pytest.mark.slow)
          for k in kinds for d in DTYPES]


def _qkv(dtype, q_scale=1.0, k_scale=1.0, seed=0):
  rng = np.random.default_rng(seed)
  q = rng.standard_normal((B, N, H, D)) * q_scale
  k = rng.standard_normal((B, N, H, D)) * k_scale
  v = rng.standard_normal((B, N, H, D))
  return [jnp.asarray(x, DTYPES[dtype]) for x in (q, k, v)]


def _f32(x):
  return np.asarray(jnp.asarray(x, jnp.float32))


@pytest.mark.parametrize("kind,dtype", _cases(CAUSAL))
def test_no_output_depends_on_a_later_token(kind, dtype):
  q, k, v = _qkv(dtype, k_scale=4.0)
  t = 23
  before = _f32(KINDS[kind](q, k, v))
  noise = jnp.asarray(np.random.default_rng(1).standard_normal((B, N - t, H, D)) * 50, q.dtype)
  after = _f32(KINDS[kind](q.at[:, t:].set(noise), k.at[:, t:].set(noise),
                           v.at[:, t:].set(noise)))
  np.testing.assert_array_equal(after[:, :t], before[:, :t])


@pytest.mark.parametrize("kind,dtype", _cases(KINDS))
def test_no_output_depends_on_another_batch_row(kind, dtype):
  q, k, v = _qkv(dtype, k_scale=4.0)
  before = _f32(KINDS[kind](q, k, v))
  noise = jnp.asarray(np.random.default_rng(2).standard_normal((N, H, D)) * 50, q.dtype)
  after = _f32(KINDS[kind](q.at[1].set(noise), k.at[1].set(noise), v.at[1].set(noise)))
  np.testing.assert_array_equal(after[0], before[0])


def _softmax_float64(q, k, v):
  q, k, v = (np.asarray(jnp.asarray(x, jnp.float32), np.float64) for x in (q, k, v))
  logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(D)
  logits = np.where(np.tril(np.ones((N, N), bool)), logits, -np.inf)
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  return np.einsum("bhqk,bkhd->bqhd", p, v), np.abs(logits[np.isfinite(logits)]).max()


@pytest.mark.parametrize("kind,dtype", _cases([k for k in KINDS if k.startswith("softmax")]))
def test_logits_near_1e4_and_key_norms_to_100_stay_exact(kind, dtype):
  """Keys of norm ~100 and queries of norm ~400: |logits| reach ~1e4. float32 equals the
  float64 softmax; bfloat16/float16 stay finite and within their rounding of it."""
  q, k, v = _qkv(dtype, q_scale=100.0, k_scale=25.0, seed=5)
  want, largest = _softmax_float64(q, k, v)
  assert largest > 3e3
  got = _f32(KINDS[kind](q, k, v))
  assert np.isfinite(got).all()
  tol = {"float32": 2e-4, "bfloat16": 3e-2, "float16": 3e-3}[dtype]
  # near-one-hot rows: the output is (almost) one value row, so compare in its scale
  np.testing.assert_allclose(got, want, atol=tol * np.abs(want).max(), rtol=0)


@pytest.mark.parametrize("kind,dtype", _cases(["linear", "performer", "lsh"]))
def test_efficient_kinds_stay_finite_with_large_keys(kind, dtype):
  q, k, v = _qkv(dtype, q_scale=4.0, k_scale=25.0, seed=6)
  got = _f32(KINDS[kind](q, k, v))
  assert np.isfinite(got).all()
  assert (np.abs(got).sum(-1) > 0).all()                  # no silently zeroed row


@pytest.mark.parametrize("impl", ["reference", "xla", "blockwise", "pallas"])
def test_fully_masked_rows_are_zero_at_large_magnitudes(impl):
  q, k, v = _qkv("float32", q_scale=100.0, k_scale=25.0, seed=7)
  mask = np.tril(np.ones((N, N), bool), -1)                  # row 0 sees no key
  out = _f32(dot_product_attention(q, k, v, mask=mask, impl=impl, block_q=16, block_kv=16))
  assert np.isfinite(out).all() and np.all(out[:, 0] == 0)
