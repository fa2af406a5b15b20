"""The attention matrices that LSH, Performer and linear attention imply (for analysis).

Oracle: each kind's own sub-quadratic computation. ``weights @ v`` must reproduce the
output of ``lsh_attention`` (sorted chunks, padding, rounds mixed by log-sum-exp),
``performer_attention`` and ``linear_attention`` (chunked prefix sums), which never
build the matrix; plus hand-computed cases and the capture path of whole models.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attnlab import config_lib
from attnlab.analysis import capture, metrics
from attnlab.attention import KINDS, efficient
from attnlab.models import build_lm
from helpers import tiny_config


def _normal(seed, shape):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _apply(weights, v):
  """[B, H, N, N] weights, [B, N, Hkv, Dv] values -> [B, N, H, Dv]."""
  v = np.repeat(np.asarray(v, np.float64), weights.shape[1] // v.shape[2], axis=2)
  return np.einsum("bhqk,bkhd->bqhd", np.asarray(weights, np.float64), v)


@pytest.mark.parametrize("causal,n,chunk,buckets,hashes", [
    (True, 45, 8, 4, 3),      # 6 chunks, the last padded, 3 rounds (the slow tier: the others)
    pytest.param(False, 40, 8, 4, 2, marks=pytest.mark.slow),
    pytest.param(True, 20, 64, 8, 1, marks=pytest.mark.slow),     # one chunk holds everything
])
def test_lsh_weights_reproduce_lsh_attention(causal, n, chunk, buckets, hashes):
  b, h, d, dv = 2, 2, 8, 5
  q, v = _normal(0, (b, n, h, d)), _normal(1, (b, n, h, dv))
  kw = dict(key=jax.random.PRNGKey(3), num_buckets=buckets, num_hashes=hashes,
            chunk_size=chunk, causal=causal)
  w = np.asarray(jax.jit(functools.partial(efficient.lsh_attention_weights, **kw))(q))
  out = np.asarray(jax.jit(functools.partial(efficient.lsh_attention, **kw))(q, v))
  np.testing.assert_allclose(_apply(w, v), out, atol=2e-5)
  np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)
  assert (w >= 0).all()
  if causal:
    assert np.abs(np.triu(w, 1)).max() == 0.0
  # a round shows a query its own chunk and the one before: at most 2 * chunk keys
  seen = (w > 0).sum(-1)
  assert seen.max() <= min(n, hashes * 2 * chunk)
  if hashes * 2 * chunk < n:
    assert seen.max() < n


def test_lsh_weights_single_bucket_by_hand():
  """One bucket, one round, one chunk: causal softmax of q_i . q_j/|q_j| / sqrt(d), a
  query's own logit replaced by -1e5 (so token 0 attends to itself only)."""
  q = _normal(4, (1, 6, 1, 4))
  w = np.asarray(efficient.lsh_attention_weights(q, key=jax.random.PRNGKey(0), num_buckets=1,
                                                 num_hashes=1, chunk_size=8, causal=True))[0, 0]
  qq = np.asarray(q, np.float64)[0, :, 0]
  s = qq @ (qq / np.linalg.norm(qq, axis=-1, keepdims=True)).T / 2.0
  np.fill_diagonal(s, -1e5)
  s[np.triu_indices(6, 1)] = -np.inf
  expected = np.exp(s - s.max(-1, keepdims=True))
  expected /= expected.sum(-1, keepdims=True)
  np.testing.assert_allclose(w, expected, atol=1e-6)
  assert w[0, 0] == pytest.approx(1.0) and w[1, 0] == pytest.approx(1.0)


@pytest.mark.parametrize("causal,heads,kv_heads", [
    (True, 4, 2),   # the other cases run in the slow tier
    pytest.param(False, 4, 4, marks=pytest.mark.slow),
    pytest.param(True, 2, 1, marks=pytest.mark.slow)])
def test_performer_weights_reproduce_performer_attention(causal, heads, kv_heads):
  b, n, d = 2, 37, 8
  q, k, v = _normal(5, (b, n, heads, d)), _normal(6, (b, n, kv_heads, d)), _normal(7, (b, n, kv_heads, 3))
  key = jax.random.PRNGKey(1)
  w = np.asarray(efficient.performer_attention_weights(q, k, key=key, num_features=32,
                                                       causal=causal))
  out = np.asarray(efficient.performer_attention(q, k, v, key=key, num_features=32,
                                                 causal=causal, chunk_size=8))
  np.testing.assert_allclose(_apply(w, v), out, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)
  if causal:
    assert np.abs(np.triu(w, 1)).max() == 0.0


@pytest.mark.slow
def test_performer_weights_approach_softmax_with_more_features():
  b, n, h, d = 1, 16, 2, 8
  q, k = _normal(8, (b, n, h, d)) * 0.5, _normal(9, (b, n, h, d)) * 0.5
  exact = np.asarray(jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(d), axis=-1))
  errors = [np.abs(np.asarray(efficient.performer_attention_weights(
      q, k, key=jax.random.PRNGKey(2), num_features=m)) - exact).mean() for m in (8, 64, 1024)]
  assert errors[0] > errors[1] > errors[2]
  assert errors[2] < 0.1 * exact.mean()


@pytest.mark.parametrize("causal,heads,kv_heads", [(True, 4, 1), (False, 2, 2)])
def test_linear_weights_reproduce_linear_attention(causal, heads, kv_heads):
  b, n, d = 2, 29, 6
  q, k, v = _normal(10, (b, n, heads, d)), _normal(11, (b, n, kv_heads, d)), _normal(12, (b, n, kv_heads, 4))
  w = np.asarray(efficient.linear_attention_weights(q, k, causal=causal))
  out = np.asarray(efficient.linear_attention(q, k, v, causal=causal, chunk_size=8))
  np.testing.assert_allclose(_apply(w, v), out, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)


def test_linear_weights_by_hand():
  """phi = elu + 1: for q = [0, -1], keys [1, 0] and [-2, 3] (causal, query 1)."""
  q = jnp.asarray([[[[0.0, 0.0]], [[0.0, -1.0]]]])          # [1, 2, 1, 2]
  k = jnp.asarray([[[[1.0, 0.0]], [[-2.0, 3.0]]]])
  w = np.asarray(efficient.linear_attention_weights(q, k, causal=True, eps=0.0))[0, 0]
  phi = lambda x: np.where(x > 0, x + 1, np.exp(x))         # noqa: E731
  a = [phi(np.array([0.0, -1.0])) @ phi(np.array(kk)) for kk in ([1.0, 0.0], [-2.0, 3.0])]
  np.testing.assert_allclose(w[1], np.array(a) / sum(a), rtol=1e-6)
  np.testing.assert_allclose(w[0], [1.0, 0.0], rtol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("kind,extra", [
    ("lsh", {"model__attention__lsh_chunk": 8, "model__attention__lsh_buckets": 4}),
    ("performer", {"model__attention__num_features": 16, "model__attention__num_kv_heads": 2}),
    ("linear", {}),
])
def test_capture_of_efficient_kinds(kind, extra):
  """Whole models: capture leaves logits unchanged, maps are causal distributions, and
  the metrics read them (a map that is all on the diagonal would score diagonal 1)."""
  cfg = config_lib.resolve(tiny_config("rope", model__attention__kind=kind, **extra))
  model = build_lm(cfg.model)
  tokens = jnp.asarray(np.random.RandomState(0).randint(0, 256, (2, 24)))
  params = model.init(jax.random.PRNGKey(0), tokens)["params"]
  plain = jax.jit(lambda p, t: model.apply({"params": p}, t))(params, tokens)
  logits, maps = capture.capture_attention(model, params, tokens)
  # capture's program also computes the maps, so XLA may fuse it differently: equal to rounding
  np.testing.assert_allclose(np.asarray(plain), logits, rtol=1e-6, atol=1e-6)
  assert maps.shape == (cfg.model.num_layers, 2, 4, 24, 24)
  np.testing.assert_allclose(maps.sum(-1), 1.0, atol=1e-5)
  assert np.abs(np.triu(maps, 1)).max() == 0.0
  np.testing.assert_allclose(metrics.diagonal_score(maps),
                             np.trace(maps, axis1=-2, axis2=-1) / 24, rtol=1e-6)


def test_a_kind_without_weights_cannot_be_captured(monkeypatch):
  monkeypatch.setitem(KINDS._entries, "linear",
                      dataclasses.replace(KINDS.get("linear"), weights=None))
  cfg = config_lib.resolve(tiny_config("rope", model__attention__kind="linear"))
  with pytest.raises(capture.CaptureUnavailable,
                     match=r"kind='linear' registers no weights function .* kinds with maps: "
                           r"lsh, performer, softmax"):
    capture.check_capturable(cfg.model)


def lsh_float64(q, v, rotations, *, chunk: int, causal: bool):
  """Reformer LSH attention written from its definition with Python loops (float64):
  hash (argmax over [xR, -xR]), stable sort by (bucket, position), cut into chunks, attend
  to the own and the previous chunk with k_j = q_j / |q_j| and a -1e5 self logit, then mix
  the rounds by their log-sum-exps. q: [B, N, H, D]; rotations: [R, H, D, nb/2]."""
  q, v, rot = (np.asarray(x, np.float64) for x in (q, v, rotations))
  b_, n, h_, d = q.shape
  out = np.zeros(v.shape)
  for b in range(b_):
    for h in range(h_):
      rounds = []
      for r in range(rot.shape[0]):
        proj = q[b, :, h] @ rot[r, h]
        bucket = np.argmax(np.concatenate([proj, -proj], -1), -1) if proj.shape[-1] else \
            np.zeros(n, int)
        order = sorted(range(n), key=lambda i: (bucket[i], i))
        place = {tok: p for p, tok in enumerate(order)}
        results = {}
        for i in range(n):
          ci = place[i] // chunk
          keys = [order[p] for p in range(max(0, (ci - 1) * chunk), min(n, (ci + 1) * chunk))]
          if causal:
            keys = [j for j in keys if j <= i]
          logits = np.array([-1e5 if j == i else q[b, i, h] @ q[b, j, h]
                             / np.linalg.norm(q[b, j, h]) / np.sqrt(d) for j in keys])
          lse = logits.max() + np.log(np.exp(logits - logits.max()).sum())
          results[i] = (np.exp(logits - lse) @ v[b, keys, h], lse)
        rounds.append(results)
      for i in range(n):
        lses = np.array([rd[i][1] for rd in rounds])
        mix = np.exp(lses - lses.max())
        mix /= mix.sum()
        out[b, i, h] = sum(m * rd[i][0] for m, rd in zip(mix, rounds))
  return out


@pytest.mark.parametrize("causal,n,chunk,buckets,hashes", [
    (True, 21, 4, 4, 2), pytest.param(False, 16, 4, 2, 3, marks=pytest.mark.slow),
    pytest.param(True, 12, 16, 8, 1, marks=pytest.mark.slow)])
def test_lsh_attention_equals_a_loop_from_the_definition(causal, n, chunk, buckets, hashes):
  q, v = _normal(5, (1, n, 2, 8)), _normal(6, (1, n, 2, 3))
  key = jax.random.PRNGKey(11)
  rotations = efficient.lsh_rotations(key, num_hashes=hashes, num_heads=2, dim=8,
                                      num_buckets=buckets)
  want = lsh_float64(q, v, rotations, chunk=chunk, causal=causal)
  got = efficient.lsh_attention(q, v, key=key, num_buckets=buckets, num_hashes=hashes,
                                chunk_size=chunk, causal=causal)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5)
