"""Sub-quadratic attention kinds (``attnlab.attention.efficient``) against dense oracles.

Each oracle below is written here, independently of the library, and
materialises the full ``[N, N]`` matrix:

- LSH: shared-QK softmax attention (k = q / ||q||, self logit ``SELF_LOGIT``)
  under a per-round visibility mask derived here from the buckets (sorted order
  -> chunk of each token -> same or previous chunk, causal), rounds combined by
  their log-sum-exps.
- Performer / linear: the quadratic form ``A = phi(Q) phi(K)^T`` (lower-triangular
  when causal), ``out = A V / (A 1 + eps)``, on the same features; and, for
  Performer, exact softmax attention (the function FAVOR+ estimates).

Tolerances (float32): values rtol=1e-5 and atol=1e-5 * max(1, max|oracle|);
gradients likewise relative to the largest oracle gradient of that tensor.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from attnlab.attention import efficient

RTOL = 1e-5
HIGHEST = lax.Precision.HIGHEST


def _normal(seed: int, shape, scale: float = 1.0) -> jax.Array:
  return jnp.asarray(scale * np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _assert_close(actual, expected, rtol=RTOL):
  expected = np.asarray(expected)
  atol = rtol * max(1.0, float(np.abs(expected).max()))
  np.testing.assert_allclose(np.asarray(actual), expected, rtol=rtol, atol=atol)


def _value_and_grads(fn, args, seed: int):
  """(fn(*args), gradients of ``sum(fn(*args) * P)`` w.r.t. every arg), one jitted program.

  P is a fixed random projection of the output.
  """
  def run(*a):
    out, vjp = jax.vjp(fn, *a)
    return out, vjp(_normal(seed, out.shape))

  return jax.jit(run)(*args)


def _assert_matches(fn, oracle, args, seed: int, grad_rtol: float = RTOL):
  """fn agrees with oracle in value and in the gradient of a random projection."""
  got, got_grads = _value_and_grads(fn, args, seed)
  want, want_grads = _value_and_grads(oracle, args, seed)
  _assert_close(got, want)
  for g, w in zip(got_grads, want_grads):
    _assert_close(g, w, rtol=grad_rtol)


# ----------------------------------------------------------------------------- LSH oracle


def dense_lsh(q, v, visible, *, scale):
  """Dense shared-QK attention over rounds, combined by row log-sum-exp.

  q: [B, N, H, D]; v: [B, N, H, Dv]; visible: bool [R, B, H, N, N] (row = query;
  must include the diagonal). Returns [B, N, H, Dv] float32.
  """
  k = q / jnp.linalg.norm(q, axis=-1, keepdims=True)
  s = jnp.einsum("bihd,bjhd->bhij", q, k, precision=HIGHEST) * scale   # [B, H, N, N]
  n = q.shape[1]
  s = jnp.where(jnp.eye(n, dtype=bool), efficient.SELF_LOGIT, s)
  s = jnp.where(visible, s[None], -jnp.inf)                            # [R, B, H, N, N]
  lse = jax.nn.logsumexp(s, axis=-1)                                   # [R, B, H, N]
  p = jnp.exp(s - lse[..., None])
  out = jnp.einsum("rbhij,bjhd->rbhid", p, v, precision=HIGHEST)
  w = jax.nn.softmax(lse, axis=0)
  return jnp.einsum("rbhi,rbhid->bihd", w, out, precision=HIGHEST)


def lsh_visibility(buckets, chunk_size: int, causal: bool) -> np.ndarray:
  """bool [R, B, H, N, N] from int buckets [R, B, H, N], one (round, batch, head) at a time.

  Stable sort by (bucket, position); token i's chunk is rank(i) // chunk_size;
  i sees j when chunk(i) - chunk(j) is 0 or 1 (and j <= i if causal).
  """
  buckets = np.asarray(buckets)
  r_, b_, h_, n = buckets.shape
  pos = np.arange(n)
  vis = np.zeros((r_, b_, h_, n, n), bool)
  for r in range(r_):
    for b in range(b_):
      for h in range(h_):
        order = np.lexsort((pos, buckets[r, b, h]))
        rank = np.empty(n, np.int64)
        rank[order] = pos
        chunk = rank // chunk_size
        diff = chunk[:, None] - chunk[None, :]
        m = (diff == 0) | (diff == 1)
        if causal:
          m &= pos[None, :] <= pos[:, None]
        vis[r, b, h] = m
  return vis


# ----------------------------------------------------------------------------- LSH tests


def test_lsh_single_bucket_equals_dense_causal_attention():
  b, n, h, d, dv = 2, 24, 3, 8, 5
  q, v = _normal(0, (b, n, h, d)), _normal(1, (b, n, h, dv))
  fn = functools.partial(efficient.lsh_attention, key=jax.random.PRNGKey(0), num_buckets=1,
                         num_hashes=1, chunk_size=32, causal=True)
  scale = 1.0 / np.sqrt(d)
  causal = np.broadcast_to(np.tril(np.ones((n, n), bool)), (1, b, h, n, n))
  oracle = functools.partial(dense_lsh, visible=causal, scale=scale)
  _assert_matches(fn, oracle, (q, v), seed=2)


@pytest.mark.parametrize("causal,n,chunk_size", [
    (True, 45, 8),    # 6 chunks, the last one padded
    (False, 40, 8),   # 5 full chunks
])
def test_lsh_rounds_buckets_chunks_equal_dense_oracle(causal, n, chunk_size):
  b, h, d, dv, buckets, hashes = 2, 2, 8, 4, 4, 3
  q, v = _normal(3, (b, n, h, d)), _normal(4, (b, n, h, dv))
  key = jax.random.PRNGKey(7)
  fn = functools.partial(efficient.lsh_attention, key=key, num_buckets=buckets,
                         num_hashes=hashes, chunk_size=chunk_size, causal=causal, scale=0.7)
  rot = efficient.lsh_rotations(key, num_hashes=hashes, num_heads=h, dim=d, num_buckets=buckets)
  bucket_ids = np.asarray(jax.jit(efficient.lsh_buckets)(q, rot))
  assert len(np.unique(bucket_ids)) == buckets          # the hash really splits tokens
  visible = lsh_visibility(bucket_ids, chunk_size, causal)
  assert not visible.all()                              # and the chunks really restrict keys
  oracle = functools.partial(dense_lsh, visible=visible, scale=0.7)
  _assert_matches(fn, oracle, (q, v), seed=5)


def test_lsh_query_seeing_only_itself_gets_its_value():
  b, n, h, d = 2, 32, 2, 8
  q, v = _normal(6, (b, n, h, d)), _normal(7, (b, n, h, d))
  out = jax.jit(functools.partial(efficient.lsh_attention, key=jax.random.PRNGKey(1),
                                  num_buckets=4, num_hashes=3, chunk_size=8, causal=True))(q, v)
  np.testing.assert_allclose(np.asarray(out[:, 0]), np.asarray(v[:, 0]), rtol=1e-6, atol=1e-6)


def test_lsh_buckets_are_argmax_of_rotated_projection():
  q = _normal(8, (1, 16, 2, 6))
  rot = efficient.lsh_rotations(jax.random.PRNGKey(2), num_hashes=2, num_heads=2, dim=6,
                                num_buckets=6)
  assert rot.shape == (2, 2, 6, 3)
  proj = np.einsum("bnhd,rhdk->rbhnk", np.asarray(q, np.float64), np.asarray(rot, np.float64))
  want = np.argmax(np.concatenate([proj, -proj], axis=-1), axis=-1)
  np.testing.assert_array_equal(np.asarray(efficient.lsh_buckets(q, rot)), want)


# ----------------------------------------------------------------------------- kernel oracles


def quadratic_kernel_attention(phi_q, phi_k, v, *, causal: bool, eps: float = 0.0):
  """Dense ``A V / (A 1 + eps)`` with ``A = phi_q phi_k^T`` ([N, N], lower-triangular if causal).

  phi_q: [B, N, H, m]; phi_k: [B, N, Hkv, m]; v: [B, N, Hkv, Dv] -> [B, N, H, Dv].
  """
  group = phi_q.shape[2] // phi_k.shape[2]
  phi_k, v = jnp.repeat(phi_k, group, axis=2), jnp.repeat(v, group, axis=2)
  a = jnp.einsum("bihm,bjhm->bhij", phi_q, phi_k, precision=HIGHEST)
  if causal:
    a = a * jnp.tril(jnp.ones(a.shape[-2:], a.dtype))
  num = jnp.einsum("bhij,bjhd->bihd", a, v, precision=HIGHEST)
  den = a.sum(axis=-1).transpose(0, 2, 1)
  return num / (den + eps)[..., None]


def exact_softmax_attention(q, k, v, scale):
  """Bidirectional softmax attention in float64 numpy (equal heads)."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  s = np.einsum("bihd,bjhd->bhij", q, k) * scale
  p = np.exp(s - s.max(axis=-1, keepdims=True))
  p /= p.sum(axis=-1, keepdims=True)
  return np.einsum("bhij,bjhd->bihd", p, v)


# ----------------------------------------------------------------------------- Performer tests


def test_performer_error_falls_with_num_features():
  b, n, h, d = 1, 64, 2, 16
  q, k, v = _normal(10, (b, n, h, d), 0.5), _normal(11, (b, n, h, d), 0.5), _normal(12, (b, n, h, d))
  exact = exact_softmax_attention(q, k, v, 1.0 / np.sqrt(d))

  def error(m):
    errs = []
    fn = jax.jit(functools.partial(efficient.performer_attention, num_features=m))
    for seed in range(4):
      out = fn(q, k, v, key=jax.random.PRNGKey(seed))
      errs.append(np.linalg.norm(np.asarray(out, np.float64) - exact) / np.linalg.norm(exact))
    return float(np.mean(errs))

  e16, e64, e256 = error(16), error(64), error(256)
  assert e16 > e64 > e256, (e16, e64, e256)
  assert e256 < 0.5 * e16, (e16, e256)


@pytest.mark.parametrize("causal,n,heads,kv_heads", [
    (True, 45, 4, 2),   # ragged N (chunk 16), GQA; the other cases run in the slow tier
    pytest.param(True, 48, 3, 1, marks=pytest.mark.slow),   # N a multiple of the chunk, MQA
    pytest.param(False, 33, 4, 2, marks=pytest.mark.slow),
])
def test_performer_equals_quadratic_form_of_its_features(causal, n, heads, kv_heads):
  b, d, dv, m, scale = 2, 8, 6, 24, 0.4
  q, k = _normal(13, (b, n, heads, d)), _normal(14, (b, n, kv_heads, d))
  v = _normal(15, (b, n, kv_heads, dv))
  key = jax.random.PRNGKey(3)
  fn = functools.partial(efficient.performer_attention, key=key, num_features=m, causal=causal,
                         chunk_size=16, scale=scale)
  w = efficient.orthogonal_random_features(key, m, d)

  def oracle(q, k, v):
    phi_q = efficient.favor_features(q, w, is_query=True, scale=scale)
    phi_k = efficient.favor_features(k, w, is_query=False, scale=scale)
    return quadratic_kernel_attention(phi_q, phi_k, v, causal=causal)

  _assert_matches(fn, oracle, (q, k, v), seed=16)


def test_favor_features_estimate_the_softmax_kernel():
  d, m, scale = 8, 20000, 0.5
  q, k = _normal(17, (d,), 0.5), _normal(18, (d,), 0.5)
  w = efficient.orthogonal_random_features(jax.random.PRNGKey(4), m, d)
  xq, xk = np.sqrt(scale) * np.asarray(q, np.float64), np.sqrt(scale) * np.asarray(k, np.float64)
  wf = np.asarray(w, np.float64)
  # unstabilised features, in float64: exp(w x - |x|^2/2) / sqrt(m)
  phi = lambda x: np.exp(wf @ x - x @ x / 2) / np.sqrt(m)
  estimate = phi(xq) @ phi(xk)
  np.testing.assert_allclose(estimate, np.exp(scale * float(q @ k)), rtol=0.03)
  # the library's features differ from these only by the stabiliser constants and eps
  # (the stabiliser multiplies every feature of a row by one constant: a constant ratio)
  lib = np.asarray(efficient.favor_features(q[None], w, is_query=True, scale=scale)[0], np.float64)
  ratio = (lib - efficient.FEATURE_EPS / np.sqrt(m)) / phi(xq)
  np.testing.assert_allclose(ratio, ratio[0], rtol=1e-4)


def test_causal_performer_equals_a_loop_over_prefixes_of_the_papers_features():
  """Independent of the library's feature code and scan: FAVOR+'s positive features from
  the paper in float64 numpy (on the library's random projection w, an input), and the
  causal output as an explicit loop over each query's prefix of keys."""
  b, n, h, d, m = 2, 19, 2, 8, 64
  scale = 1.0 / np.sqrt(d)
  q, k, v = _normal(40, (b, n, h, d)), _normal(41, (b, n, h, d)), _normal(42, (b, n, h, 5))
  key = jax.random.PRNGKey(7)
  got = np.asarray(efficient.performer_attention(q, k, v, key=key, num_features=m,
                                                 causal=True, chunk_size=8))
  w = np.asarray(efficient.orthogonal_random_features(key, m, d), np.float64)

  def logits(x):                       # w x' - |x'|^2 / 2 with x' = scale^(1/2) x
    x = np.sqrt(scale) * np.asarray(x, np.float64)
    return x @ w.T - 0.5 * (x * x).sum(-1, keepdims=True)

  lq, lk = logits(q), logits(k)
  # queries: the paper's features times a per-query constant (cancels) plus eps, as the
  # docstring defines them; keys: the paper's features, unstabilised (float64)
  phi_q = (np.exp(lq - lq.max(-1, keepdims=True)) + efficient.FEATURE_EPS) / np.sqrt(m)
  phi_k = np.exp(lk) / np.sqrt(m)
  want = np.zeros(got.shape)
  for bi in range(b):
    for hi in range(h):
      for i in range(n):
        weights = np.array([phi_q[bi, i, hi] @ phi_k[bi, j, hi] for j in range(i + 1)])
        want[bi, i, hi] = weights @ np.asarray(v, np.float64)[bi, :i + 1, hi] / weights.sum()
  np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)


def test_performer_kernel_estimate_is_unbiased_over_independent_draws():
  """The mean over independent projections of phi(q) . phi(k) is exp(q . k / sqrt(d)):
  checked on the library's projections with the paper's features (float64), for a spread
  of q . k, with the standard error of the mean as the tolerance."""
  d, m, draws = 8, 16, 3000
  rng = np.random.default_rng(5)
  q, k = 0.6 * rng.standard_normal((4, d)), 0.6 * rng.standard_normal((4, d))
  exact = np.exp(np.sum(q * k, -1) / np.sqrt(d))
  keys = jax.random.split(jax.random.PRNGKey(11), draws)
  ws = np.asarray(jax.vmap(lambda key: efficient.orthogonal_random_features(key, m, d))(keys),
                  np.float64)                                         # [draws, m, d]
  x_q, x_k = q / d ** 0.25, k / d ** 0.25
  phi = lambda x: np.exp(np.einsum("rmd,pd->rpm", ws, x) - 0.5 * (x * x).sum(-1)[None, :, None])
  estimates = (phi(x_q) * phi(x_k)).sum(-1) / m                       # [draws, pairs]
  mean, sem = estimates.mean(0), estimates.std(0) / np.sqrt(draws)
  assert np.all(np.abs(mean - exact) < 4 * sem + 1e-3 * exact), (mean, exact, sem)


def test_orthogonal_random_features_blocks_are_orthogonal():
  d, m = 16, 40                                          # 3 blocks, the last one partial
  features = jax.jit(efficient.orthogonal_random_features, static_argnums=(1, 2))
  w = np.asarray(features(jax.random.PRNGKey(5), m, d), np.float64)
  assert w.shape == (m, d)
  for start in range(0, m, d):
    block = w[start:start + d]
    unit = block / np.linalg.norm(block, axis=-1, keepdims=True)
    np.testing.assert_allclose(unit @ unit.T, np.eye(len(block)), atol=1e-5)
  big = np.asarray(features(jax.random.PRNGKey(6), 4096, d))
  sq_norms = (big.astype(np.float64) ** 2).sum(-1)
  assert abs(sq_norms.mean() / d - 1) < 0.05           # chi^2_d marginal: mean d
  assert sq_norms.std() > 1.0                          # norms are random, not all sqrt(d)


# ----------------------------------------------------------------------------- linear tests


@pytest.mark.parametrize("causal,n,heads,kv_heads,chunk_size", [
    (True, 45, 4, 2, 16),     # ragged N, GQA
    (True, 32, 2, 2, 128),    # one chunk larger than N
    (False, 37, 2, 1, 8),     # MQA
])
def test_linear_equals_quadratic_form(causal, n, heads, kv_heads, chunk_size):
  b, d, dv, eps = 2, 8, 6, 1e-6
  q, k = _normal(20, (b, n, heads, d)), _normal(21, (b, n, kv_heads, d))
  v = _normal(22, (b, n, kv_heads, dv))
  fn = functools.partial(efficient.linear_attention, causal=causal, chunk_size=chunk_size, eps=eps)

  def oracle(q, k, v):
    phi = lambda x: jnp.where(x > 0, x + 1.0, jnp.exp(x))   # elu(x) + 1, written out
    return quadratic_kernel_attention(phi(q), phi(k), v, causal=causal, eps=eps)

  _assert_matches(fn, oracle, (q, k, v), seed=23)


def test_output_dtype_follows_q():
  q = _normal(24, (1, 20, 2, 8)).astype(jnp.bfloat16)
  v = _normal(25, (1, 20, 2, 8)).astype(jnp.bfloat16)
  key = jax.random.PRNGKey(0)
  outs = [jax.jit(functools.partial(efficient.linear_attention, chunk_size=8))(q, q, v),
          jax.jit(functools.partial(efficient.performer_attention, key=key, num_features=16,
                                    causal=True, chunk_size=8))(q, q, v),
          jax.jit(functools.partial(efficient.lsh_attention, key=key, num_buckets=2,
                                    chunk_size=8))(q, v)]
  for out in outs:
    assert out.dtype == jnp.bfloat16 and bool(jnp.isfinite(out.astype(jnp.float32)).all())


# ----------------------------------------------------------------------------- validation


_Q = jnp.zeros((1, 8, 2, 4))
_KEY = jax.random.PRNGKey(0)


@pytest.mark.parametrize("call,match", [
    (lambda: efficient.lsh_attention(_Q, _Q, key=_KEY, num_buckets=3), "num_buckets"),
    (lambda: efficient.lsh_attention(_Q, _Q, key=_KEY, num_buckets=0), "num_buckets"),
    (lambda: efficient.lsh_attention(_Q, _Q, key=_KEY, num_hashes=0), "num_hashes"),
    (lambda: efficient.lsh_attention(_Q, _Q, key=_KEY, chunk_size=0), "chunk_size"),
    (lambda: efficient.lsh_attention(_Q, _Q[:, :4], key=_KEY), "q and v"),
    (lambda: efficient.performer_attention(_Q, _Q, _Q, key=_KEY, num_features=0), "num_features"),
    (lambda: efficient.performer_attention(_Q, _Q, _Q, key=_KEY, chunk_size=-1), "chunk_size"),
    (lambda: efficient.performer_attention(_Q, _Q, _Q, key=_KEY, scale=-1.0), "scale"),
    (lambda: efficient.performer_attention(_Q, jnp.zeros((1, 8, 3, 4)), jnp.zeros((1, 8, 3, 4)),
                                           key=_KEY), "kv heads"),
    (lambda: efficient.linear_attention(_Q, _Q, _Q, chunk_size=0), "chunk_size"),
    (lambda: efficient.linear_attention(_Q, _Q, _Q, eps=-1.0), "eps"),
    (lambda: efficient.linear_attention(_Q[0], _Q, _Q), "batch, seq, heads"),
])
def test_bad_parameters_raise(call, match):
  with pytest.raises(ValueError, match=match):
    call()


# ----------------------------------------------------------------------------- linear memory


def _temp_bytes(fn, n: int) -> int:
  x = jax.ShapeDtypeStruct((1, n, 2, 32), jnp.float32)
  analysis = jax.jit(fn).lower(x, x, x).compile().memory_analysis()
  if analysis is None or getattr(analysis, "temp_size_in_bytes", None) is None:
    pytest.skip(f"memory_analysis() gives no temp size on backend {jax.default_backend()!r}")
  return analysis.temp_size_in_bytes


@pytest.mark.parametrize("name", ["performer", "linear"])
def test_causal_temp_memory_is_linear_in_length(name):
  fn = {
      "performer": functools.partial(efficient.performer_attention, key=_KEY, num_features=64,
                                     causal=True, chunk_size=64),
      "linear": functools.partial(efficient.linear_attention, causal=True, chunk_size=64),
  }[name]
  small, large = _temp_bytes(fn, 2048), _temp_bytes(fn, 4096)
  assert large < 2.5 * small, (small, large)
