"""FAVOR+ (Performer) at the magnitudes trained models reach, in float32 and bfloat16:
no output depends on a later key or on another batch row, no row is silently zero, and
the output is the float64 estimator written from the paper's definition."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attnlab.attention import efficient

D, M, N = 16, 64, 40


def _inputs(key_scale: float, seed: int = 0, batch: int = 2, heads: int = 2):
  rng = np.random.default_rng(seed)
  q = rng.standard_normal((batch, N, heads, D)).astype(np.float32)
  k = (rng.standard_normal((batch, N, heads, D)) * key_scale).astype(np.float32)
  v = rng.standard_normal((batch, N, heads, D)).astype(np.float32)
  return q, k, v


def _run(q, k, v, causal=True, dtype=jnp.float32, chunk=16):
  return np.asarray(efficient.performer_attention(
      *(jnp.asarray(x, dtype) for x in (q, k, v)), key=jax.random.PRNGKey(7), num_features=M,
      causal=causal, chunk_size=chunk).astype(jnp.float32))


def favor_float64(q, k, v, w, causal: bool, scale: float):
  """The FAVOR+ estimate in float64 from the definition (Choromanski et al. 2021):
  phi(x) = exp(w x' - |x'|^2 / 2) / sqrt(m), x' = sqrt(scale) x; queries add 1e-6 after
  dividing by their own largest feature (a per-query constant that cancels)."""
  w = np.asarray(w, np.float64)

  def logits(x):
    xs = np.asarray(x, np.float64) * np.sqrt(scale)
    return xs @ w.T - 0.5 * np.sum(xs * xs, -1, keepdims=True)

  lq, lk = logits(q), logits(k)                                # [B, N, H, m]
  phi_q = np.exp(lq - lq.max(-1, keepdims=True)) + 1e-6
  out = np.zeros(q.shape, np.float64)
  for b in range(q.shape[0]):
    for h in range(q.shape[2]):
      for i in range(q.shape[1]):
        js = range(i + 1) if causal else range(q.shape[1])
        shift = max(lk[b, j, h].max() for j in js)            # exact in float64
        weights = np.array([phi_q[b, i, h] @ np.exp(lk[b, j, h] - shift) for j in js])
        out[b, i, h] = weights @ np.asarray(v, np.float64)[b, list(js), h] / weights.sum()
  return out


# slow tier; by default: the float64 estimator above, the prefix-loop oracle (test_efficient_kinds)
@pytest.mark.slow
@pytest.mark.parametrize("key_scale,dtype", [
    (8.0, jnp.float32), (30.0, jnp.float32), (10.0, jnp.bfloat16), (1.0, jnp.float32),
    (1.0, jnp.bfloat16)])
def test_causal_outputs_ignore_later_keys_and_other_rows(key_scale, dtype):
  q, k, v = _inputs(key_scale)
  base = _run(q, k, v, dtype=dtype)
  later = k.copy()
  later[:, -1] *= 3.0                                           # only the last key changes
  np.testing.assert_array_equal(_run(q, later, v, dtype=dtype)[:, :-1], base[:, :-1])
  other = k.copy()
  other[1] = other[1] * 2.5 + 1.0                               # only batch row 1 changes
  np.testing.assert_array_equal(_run(q, other, v, dtype=dtype)[0], base[0])


@pytest.mark.parametrize("key_scale,causal", [(10.0, True), (100.0, True), (30.0, False),
                                              pytest.param(1.0, True, marks=pytest.mark.slow),
                                              pytest.param(100.0, False, marks=pytest.mark.slow)])
def test_no_nan_and_no_silent_zero_rows(key_scale, causal):
  q, k, v = _inputs(key_scale, seed=1)
  out = _run(q, k, v, causal=causal)
  assert np.isfinite(out).all()
  # every output is a convex combination of visible values: inside their range, never 0-rows
  assert (np.abs(out).max(axis=-1) > 0).all()
  assert (out <= v.max(axis=1, keepdims=True) + 1e-5).all()
  assert (out >= v.min(axis=1, keepdims=True) - 1e-5).all()


@pytest.mark.parametrize("key_scale", [1.0, 8.0])
@pytest.mark.parametrize("causal", [True, False])
def test_equals_the_float64_estimator(key_scale, causal):
  q, k, v = _inputs(key_scale, seed=2, batch=1)
  w = efficient.orthogonal_random_features(jax.random.PRNGKey(7), M, D)
  want = favor_float64(q, k, v, w, causal, 1.0 / np.sqrt(D))
  np.testing.assert_allclose(_run(q, k, v, causal=causal), want, rtol=2e-4, atol=2e-4)


def test_gqa_and_chunking_change_nothing():
  rng = np.random.default_rng(3)
  q = rng.standard_normal((1, N, 4, D)).astype(np.float32)
  k = (rng.standard_normal((1, N, 2, D)) * 8).astype(np.float32)
  v = rng.standard_normal((1, N, 2, D)).astype(np.float32)
  a, b = _run(q, k, v, chunk=16), _run(q, k, v, chunk=7)
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  w = efficient.orthogonal_random_features(jax.random.PRNGKey(7), M, D)
  want = favor_float64(q, np.repeat(k, 2, axis=2), np.repeat(v, 2, axis=2), w, True,
                       1.0 / np.sqrt(D))
  np.testing.assert_allclose(a, want, rtol=2e-4, atol=2e-4)
