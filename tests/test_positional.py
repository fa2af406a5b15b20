"""Position schemes against the papers' formulas (docs/references.md) written in numpy."""

from __future__ import annotations

import ml_collections
import numpy as np
import pytest

import attnlab
from attnlab import positional


def cfg(kind, **extra):
  return ml_collections.ConfigDict({"kind": kind, "theta": 10000.0, "base": 10000.0,
                                    "max_len": 16, **extra})


# ----------------------------------------------------------------------------- ALiBi slopes


def test_alibi_slopes_8_heads():
  np.testing.assert_allclose(positional.alibi_slopes(8), [2.0 ** -(i + 1) for i in range(8)],
                             rtol=1e-7)


def test_alibi_slopes_12_heads():
  want = [2.0 ** -e for e in range(1, 9)] + [2.0 ** -0.5, 2.0 ** -1.5, 2.0 ** -2.5, 2.0 ** -3.5]
  np.testing.assert_allclose(positional.alibi_slopes(12), want, rtol=1e-6)


def test_alibi_slopes_16_heads_geometric():
  s = positional.alibi_slopes(16).astype(np.float64)
  assert s.shape == (16,)
  np.testing.assert_allclose(s[0], 2.0 ** -0.5, rtol=1e-6)          # start = 2^(-8/16)
  np.testing.assert_allclose(s[1:] / s[:-1], 2.0 ** -0.5, rtol=1e-6)
  np.testing.assert_allclose(s[-1], 2.0 ** -8, rtol=1e-6)


def test_alibi_slopes_other_counts():
  # n = 6: p = 4 -> 2^-2, 2^-4, 2^-6, 2^-8, then every second of slopes(8): 2^-1, 2^-3.
  np.testing.assert_allclose(positional.alibi_slopes(6),
                             [2.0 ** -2, 2.0 ** -4, 2.0 ** -6, 2.0 ** -8, 2.0 ** -1, 2.0 ** -3],
                             rtol=1e-6)
  np.testing.assert_allclose(positional.alibi_slopes(1), [2.0 ** -8], rtol=1e-7)
  with pytest.raises(ValueError, match="num_heads"):
    positional.alibi_slopes(0)


def test_alibi_scheme_uses_slopes():
  mod = positional.get_scheme(cfg("alibi")).score_mod(8)
  np.testing.assert_allclose(np.asarray(mod.slopes), [2.0 ** -(i + 1) for i in range(8)])
  i, j = np.arange(5)[:, None], np.arange(7)[None, :]
  want = -np.asarray(positional.alibi_slopes(8))[:, None, None] * np.abs(i - j)
  np.testing.assert_allclose(np.asarray(mod.dense(5, 7))[0], want, rtol=1e-7)


# ----------------------------------------------------------------------------- RoPE


def rope_np(x, positions, theta=10000.0):
  """Half-split RoPE in float64: dim i pairs with i + D/2, angle = pos * theta^(-2i/D)."""
  x = np.asarray(x, np.float64)
  d = x.shape[-1]
  freq = theta ** (-2.0 * np.arange(d // 2) / d)
  ang = np.asarray(positions, np.float64)[..., None] * freq        # [..., seq, D/2]
  ang = np.broadcast_to(ang, x.shape[:2] + (d // 2,))[:, :, None, :]
  x1, x2 = x[..., :d // 2], x[..., d // 2:]
  return np.concatenate([x1 * np.cos(ang) - x2 * np.sin(ang),
                         x1 * np.sin(ang) + x2 * np.cos(ang)], axis=-1)


def rope_at(x, pos):
  """apply_rope of one vector x [D] at one position -> float64 [D]."""
  return np.asarray(positional.apply_rope(np.asarray(x, np.float32)[None, None, None, :],
                                          np.array([pos])), np.float64)[0, 0, 0]


def test_rope_two_dim_hand_worked():
  # head_dim = 2: one pair with frequency theta^0 = 1, i.e. rotation by angle m.
  a, b = 0.3, -1.2
  for m in (0, 1, 2, 5, 17):
    want = [a * np.cos(m) - b * np.sin(m), a * np.sin(m) + b * np.cos(m)]
    np.testing.assert_allclose(rope_at([a, b], m), want, rtol=1e-6, atol=1e-6)
  # m = 1 by hand: [cos 1, sin 1] for the unit vector e0.
  np.testing.assert_allclose(rope_at([1.0, 0.0], 1), [0.5403023, 0.8414710], atol=1e-6)


def test_rope_half_split_pairing_and_frequencies():
  d, theta = 8, 10000.0
  for i in range(d // 2):
    for m in (1, 3, 40):
      e = np.zeros(d)
      e[i] = 1.0
      got = rope_at(e, m)
      angle = m * theta ** (-2.0 * i / d)
      want = np.zeros(d)
      want[i], want[i + d // 2] = np.cos(angle), np.sin(angle)   # only dims i and i + D/2 move
      np.testing.assert_allclose(got, want, atol=1e-6)
      e2 = np.zeros(d)
      e2[i + d // 2] = 1.0
      want2 = np.zeros(d)
      want2[i], want2[i + d // 2] = -np.sin(angle), np.cos(angle)
      np.testing.assert_allclose(rope_at(e2, m), want2, atol=1e-6)
  np.testing.assert_allclose(positional.rope_frequencies(d, theta),
                             theta ** (-2.0 * np.arange(d // 2) / d), rtol=1e-6)


def test_rope_matches_numpy_oracle_batched_positions():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 6, 3, 16)).astype(np.float32)
  pos = np.array([[0, 1, 2, 3, 4, 5], [7, 3, 100, 0, 9, 2048]])
  np.testing.assert_allclose(np.asarray(positional.apply_rope(x, pos, theta=500.0)),
                             rope_np(x, pos, theta=500.0), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.asarray(positional.apply_rope(x, pos[0])), rope_np(x, pos[0]),
                             rtol=1e-5, atol=1e-5)


def test_rope_position_zero_is_identity():
  x = np.random.default_rng(1).standard_normal((2, 5, 3, 8)).astype(np.float32)
  np.testing.assert_array_equal(np.asarray(positional.apply_rope(x, np.zeros(5, np.int32))), x)


def test_rope_preserves_norm():
  x = np.random.default_rng(2).standard_normal((1, 50, 2, 32)).astype(np.float32)
  y = np.asarray(positional.apply_rope(x, np.arange(50) * 37))
  np.testing.assert_allclose(np.linalg.norm(y, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-5)


def test_rope_dot_product_depends_only_on_offset():
  rng = np.random.default_rng(3)
  d = 16
  for _ in range(3):
    q, k = rng.standard_normal(d), rng.standard_normal(d)
    tol = 1e-4 * np.linalg.norm(q) * np.linalg.norm(k)
    for m, n in [(5, 2), (0, 9), (13, 13), (30, 1)]:
      base = rope_at(q, m) @ rope_at(k, n)
      # independent value: the float64 oracle
      np.testing.assert_allclose(base, rope_np(q[None, None, None], [m])[0, 0, 0]
                                 @ rope_np(k[None, None, None], [n])[0, 0, 0], atol=tol)
      for c in (1, 7, 100, 1000):
        shifted = rope_at(q, m + c) @ rope_at(k, n + c)
        np.testing.assert_allclose(shifted, base, atol=tol, err_msg=f"m={m} n={n} c={c}")
    # and it does depend on the offset (the test would notice a no-op rotation)
    assert abs(rope_at(q, 0) @ rope_at(k, 0) - rope_at(q, 5) @ rope_at(k, 0)) > 1e-3


def test_rope_scheme_rotates_with_its_theta():
  x = np.random.default_rng(4).standard_normal((1, 4, 2, 8)).astype(np.float32)
  pos = np.arange(4)
  got_q, got_k = positional.get_scheme(cfg("rope", theta=100.0)).rotate_qk(x, x, pos)
  for got in (got_q, got_k):
    np.testing.assert_allclose(np.asarray(got), rope_np(x, pos, theta=100.0), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- sinusoidal


def sinusoidal_np(positions, d, base=10000.0):
  pe = np.zeros((len(positions), d))
  for r, p in enumerate(positions):
    for i in range(d // 2):
      pe[r, 2 * i] = np.sin(p / base ** (2 * i / d))
      pe[r, 2 * i + 1] = np.cos(p / base ** (2 * i / d))
  return pe


def test_sinusoidal_matches_vaswani():
  pos = np.arange(50)
  np.testing.assert_allclose(np.asarray(positional.sinusoidal_embedding(pos, 16)),
                             sinusoidal_np(pos, 16), atol=2e-5)
  # hand-worked: position 0 -> [0, 1, 0, 1, ...]
  np.testing.assert_array_equal(np.asarray(positional.sinusoidal_embedding(np.array([0]), 6)),
                                [[0, 1, 0, 1, 0, 1]])
  with pytest.raises(ValueError, match="dim"):
    positional.sinusoidal_embedding(pos, 7)


def test_sinusoidal_scheme_embed():
  pos = np.arange(12)[None, :]
  # the encoding, rescaled to RMS embed_scale (0.5 / sqrt(2): the raw encoding's scale)
  got = np.asarray(positional.get_scheme(
      cfg("sinusoidal", base=100.0, embed_scale=0.5 ** 0.5)).embed(pos, 8))
  np.testing.assert_allclose(got[0], sinusoidal_np(np.arange(12), 8, base=100.0), atol=2e-6)
  # at the declared default embed_scale (0.02)
  scaled = np.asarray(positional.get_scheme(cfg("sinusoidal")).embed(pos, 64))
  np.testing.assert_allclose(scaled[0], sinusoidal_np(np.arange(12), 64) * 0.02 * np.sqrt(2),
                             atol=2e-8)
  assert np.sqrt(np.mean(scaled ** 2)) == pytest.approx(0.02, rel=1e-6)


# ----------------------------------------------------------------------------- registry


def test_registry_contents():
  names = set(positional.POSITIONS.names())
  assert {"none", "sinusoidal", "learned", "rope", "alibi"} <= names
  for name in ("none", "sinusoidal", "learned", "rope", "alibi"):
    assert name in positional.POSITIONS
    assert isinstance(positional.get_scheme(cfg(name)), positional.PositionScheme)


def test_none_scheme_is_identity():
  scheme = positional.get_scheme(cfg("none"))
  x = np.ones((1, 3, 2, 4), np.float32)
  q, k = scheme.rotate_qk(x, x, np.arange(3))
  assert q is x and k is x
  assert scheme.attention_params(4) == {} and scheme.embedding_params(8) == {}
  assert scheme.embed(np.arange(3), 8) is None and scheme.score_mod(4) is None
  assert scheme.max_length() is None


def test_get_scheme_unknown_kind():
  with pytest.raises(attnlab.ConfigError) as e:
    positional.get_scheme(cfg("bogus"))
  msg = str(e.value)
  assert "bogus" in msg and "model.position.kind" in msg
  for name in ("none", "sinusoidal", "learned", "rope", "alibi"):
    assert name in msg


def test_check_length_learned_table():
  learned = cfg("learned")
  positional.check_length(learned, 16)    # exactly max_len: fine
  with pytest.raises(attnlab.ConfigError) as e:
    positional.check_length(learned, 17)
  msg = str(e.value)
  assert "model.position.max_len" in msg and "16" in msg and "17" in msg
  # Schemes without a table have no limit.
  for kind in ("none", "sinusoidal", "rope", "alibi"):
    positional.check_length(cfg(kind), 10 ** 6)


def test_learned_scheme_embed_is_table_lookup():
  scheme = positional.get_scheme(cfg("learned"))
  assert scheme.table_size() == 16
  table = np.arange(16 * 4, dtype=np.float32).reshape(16, 4)
  pos = np.array([[3, 0, 15]])
  assert scheme.embedding_params(4)["position_table"].shape == (16, 4)
  np.testing.assert_array_equal(np.asarray(scheme.embed(pos, 4, {"position_table": table})),
                                table[pos])
