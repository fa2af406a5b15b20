"""RoPE scalings, partial rotary, xPos and T5 bias against their papers' formulas."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from attnlab import positional
from attnlab.attention import dot_product_attention, masks
from attnlab.positional import rope as rope_lib

D, L, S = 16, 128, 4.0   # head dim, training length, scale factor


def base_freqs(d, theta=10000.0):
  return np.array([theta ** (-2 * i / d) for i in range(d // 2)])


def scheme(kind="rope", **fields):
  c = {"kind": kind, "theta": 10000.0, "scaling": "none", "scale_factor": S,
       "original_max_len": L, "yarn_alpha": 1.0, "yarn_beta": 32.0, "rotary_fraction": 1.0,
       "xpos_scale_base": 512.0, "num_buckets": 32, "max_distance": 128, "bidirectional": False}
  c.update(fields)
  return positional.get_scheme(ml_collections.ConfigDict(c))


# ----------------------------------------------------------------------------- scalings


def test_linear_scaling_divides_positions_by_s():
  freqs, mult = positional.scaled_frequencies(D, scaling="linear", factor=S)
  np.testing.assert_allclose(freqs, base_freqs(D) / S, rtol=1e-12)
  assert mult == 1.0
  x = np.random.default_rng(0).standard_normal((1, 6, 2, D)).astype(np.float32)
  pos = np.array([0, 3, 10, 50, 300, 511])
  scaled, _ = scheme(scaling="linear").rotate_qk(x, x, pos)
  plain = positional.apply_rope(x, pos / S)
  np.testing.assert_allclose(scaled, plain, rtol=1e-5, atol=1e-5)


def test_ntk_scales_the_base():
  freqs, _ = positional.scaled_frequencies(D, scaling="ntk", factor=S)
  new_base = 10000.0 * S ** (D / (D - 2))
  np.testing.assert_allclose(freqs, base_freqs(D, new_base), rtol=1e-12)
  assert freqs[0] == pytest.approx(1.0, rel=1e-12)              # only low frequencies move
  assert freqs[-1] < base_freqs(D)[-1]


def test_dynamic_ntk_uses_the_current_length():
  for seq_len, s in [(64, 1.0), (128, 1.0), (256, 2.0), (512, 4.0)]:
    freqs, _ = positional.scaled_frequencies(D, scaling="dynamic_ntk", original_max_len=L,
                                             seq_len=seq_len)
    np.testing.assert_allclose(freqs, base_freqs(D, 10000.0 * s ** (D / (D - 2))), rtol=1e-12)


@pytest.mark.parametrize("factor,seq_len,grown", [
    (4.0, 8192, 5.0),      # 4 * 8192/4096 - 3
    (2.0, 4096, 1.0),      # at the training length the base is unchanged
    (2.0, 1000, 1.0),      # shorter lengths count as the training length
    (8.0, 16384, 25.0),    # 8 * 4 - 7
    (32.0, 131072, 993.0)])
def test_dynamic_ntk_scales_the_base_as_the_reference_does(factor, seq_len, grown):
  """Hugging Face's dynamic NTK at LLaMA sizes: base * ((s l / L) - (s - 1))^(d/(d-2)),
  values of the bracket worked by hand."""
  d = 128
  freqs, mult = positional.scaled_frequencies(d, scaling="dynamic_ntk", factor=factor,
                                              original_max_len=4096, seq_len=seq_len)
  np.testing.assert_allclose(freqs, base_freqs(d, 10000.0 * grown ** (128 / 126)), rtol=1e-12)
  assert mult == 1.0


def _yarn_reference(d, theta, s, L, beta_fast=32.0, beta_slow=1.0):
  """YaRN as its authors' code computes it, written out with Python floats and loops."""
  def correction_dim(rotations):
    return d * math.log(L / (rotations * 2 * math.pi)) / (2 * math.log(theta))
  low = max(math.floor(correction_dim(beta_fast)), 0)
  high = min(math.ceil(correction_dim(beta_slow)), d - 1)
  if low == high:
    high += 0.001
  out = []
  for i in range(d // 2):
    extrapolation = theta ** (-2 * i / d)
    interpolation = extrapolation / s
    keep = 1 - min(max((i - low) / (high - low), 0.0), 1.0)   # 1: keep theta, 0: interpolate
    out.append(interpolation * (1 - keep) + extrapolation * keep)
  return np.array(out), (0.1 * math.log(s) + 1.0 if s > 1 else 1.0)


def test_yarn_correction_range_by_hand_at_llama_size():
  # d=128, b=10^4, L=4096: dim(32) = 128 ln(4096/(64 pi)) / (2 ln 10^4) = 20.94 -> 20;
  # dim(1) = 128 ln(4096/(2 pi)) / (2 ln 10^4) = 45.03 -> 46
  assert rope_lib.yarn_correction_range(128, 10000.0, 4096, 1.0, 32.0) == (20, 46)
  freqs, mult = positional.scaled_frequencies(128, scaling="yarn", factor=8.0,
                                              original_max_len=4096)
  base = base_freqs(128)
  # numpy's vectorised power and Python's scalar one may differ in the last bit (AVX-512)
  assert freqs[20] == pytest.approx(base[20], rel=1e-12)
  assert freqs[46] == pytest.approx(base[46] / 8, rel=1e-12)
  assert freqs[33] == pytest.approx(0.5 * base[33] / 8 + 0.5 * base[33], rel=1e-12)  # halfway
  assert mult == pytest.approx(0.1 * math.log(8.0) + 1, rel=1e-12)


@pytest.mark.parametrize("d,L,s", [(128, 4096, 2.0), (128, 4096, 4.0), (128, 4096, 8.0),
                                   (128, 4096, 16.0), (128, 4096, 32.0), (64, 128, 4.0),
                                   (16, 128, 4.0), (64, 2048, 1.0)])
def test_yarn_equals_the_reference_code(d, L, s):
  want, want_mult = _yarn_reference(d, 10000.0, s, L)
  freqs, mult = positional.scaled_frequencies(d, scaling="yarn", factor=s, original_max_len=L)
  np.testing.assert_allclose(freqs, want, rtol=1e-12)
  assert mult == pytest.approx(want_mult, rel=1e-12)


def test_yarn_paper_ramp_and_temperature():
  """The paper's continuous form: a ramp linear in r = L / lambda (``yarn_paper``)."""
  d = 64
  freqs, mult = positional.scaled_frequencies(d, scaling="yarn_paper", factor=S,
                                              original_max_len=L)
  for i, theta in enumerate(base_freqs(d)):
    r = L / (2 * math.pi / theta)
    gamma = 0.0 if r < 1 else 1.0 if r > 32 else (r - 1) / 31
    assert freqs[i] == pytest.approx((1 - gamma) * theta / S + gamma * theta, rel=1e-12)
  # at LLaMA's L=4096 the ramp's ends are reached: fast dims untouched, slow dims interpolated
  llama, _ = positional.scaled_frequencies(d, scaling="yarn_paper", factor=S,
                                           original_max_len=4096)
  assert llama[0] == pytest.approx(base_freqs(d)[0], rel=1e-12)
  assert llama[-1] == pytest.approx(base_freqs(d)[-1] / S, rel=1e-12)
  assert mult == pytest.approx(0.1 * math.log(S) + 1)
  # the two forms differ in the transition band (by dimension index vs by rotations)
  code, _ = positional.scaled_frequencies(d, scaling="yarn", factor=S, original_max_len=L)
  assert np.abs(code - freqs).max() > 0.01 * freqs.max()
  # logits are divided by t: q.k at equal positions (rotation cancels) grows by 1/t
  q = np.random.default_rng(1).standard_normal((1, 1, 1, d)).astype(np.float32)
  k = np.random.default_rng(2).standard_normal((1, 1, 1, d)).astype(np.float32)
  for scaling in ("yarn", "yarn_paper"):
    rq, rk = scheme(scaling=scaling).rotate_qk(q, k, np.array([7]))
    inv_t = (0.1 * math.log(S) + 1) ** 2
    assert float(jnp.sum(rq * rk)) == pytest.approx(inv_t * float(np.sum(q * k)), rel=1e-5)


@pytest.mark.parametrize("scaling", ["none", "linear", "ntk", "dynamic_ntk", "yarn",
                                     "yarn_paper"])
@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_relative_property_under_every_scaling(scaling, fraction):
  """<R(q, m), R(k, n)> depends only on m - n."""
  rng = np.random.default_rng(3)
  q = rng.standard_normal((1, 1, 1, D)).astype(np.float32)
  k = rng.standard_normal((1, 1, 1, D)).astype(np.float32)
  sch = scheme(scaling=scaling, rotary_fraction=fraction)

  def score(m, n):
    rq, _ = sch.rotate_qk(q, q, np.array([m]))
    _, rk = sch.rotate_qk(k, k, np.array([n]))
    return float(jnp.sum(rq * rk))

  for m, n in [(5, 2), (40, 1), (300, 290)]:
    for shift in (7, 100):
      assert score(m + shift, n + shift) == pytest.approx(score(m, n), rel=1e-4, abs=1e-4)
  assert abs(score(9, 2) - score(2, 9)) > 1e-4   # it does depend on the offset


def test_partial_rotary_leaves_the_tail_alone():
  x = np.random.default_rng(4).standard_normal((1, 5, 2, D)).astype(np.float32)
  pos = np.arange(5) * 3
  out, _ = scheme(rotary_fraction=0.5).rotate_qk(x, x, pos)
  np.testing.assert_array_equal(np.asarray(out)[..., 8:], x[..., 8:])
  head = positional.apply_rope(x[..., :8], pos)            # the rotated part is RoPE of dim 8
  np.testing.assert_allclose(np.asarray(out)[..., :8], head, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- xPos


def test_xpos_scales_queries_up_and_keys_down():
  zeta = rope_lib.xpos_zeta(D)
  np.testing.assert_allclose(zeta, [(2 * i + 0.4 * D) / (1.4 * D) for i in range(D // 2)])
  x = np.random.default_rng(5).standard_normal((1, 4, 1, D)).astype(np.float32)
  pos = np.array([0, 1, 100, 1000])
  q, k = scheme("xpos").rotate_qk(x, x, pos)
  plain = np.asarray(positional.apply_rope(x, pos))
  for r, m in enumerate(pos):
    scale = np.concatenate([zeta, zeta]) ** (m / 512)
    np.testing.assert_allclose(np.asarray(q)[0, r, 0], plain[0, r, 0] * scale, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(k)[0, r, 0], plain[0, r, 0] / scale, rtol=1e-5, atol=1e-6)


def test_xpos_scores_depend_only_on_the_offset():
  rng = np.random.default_rng(6)
  q = rng.standard_normal((1, 1, 1, D)).astype(np.float32)
  k = rng.standard_normal((1, 1, 1, D)).astype(np.float32)
  sch = scheme("xpos")

  def score(m, n):
    return float(jnp.sum(sch.rotate_qk(q, q, np.array([m]))[0] * sch.rotate_qk(k, k, np.array([n]))[1]))

  assert score(205, 200) == pytest.approx(score(5, 0), rel=1e-4)
  assert score(12, 2) != pytest.approx(score(2, 2), rel=1e-3)


# ----------------------------------------------------------------------------- T5


def t5_bucket_py(rel, bidirectional, buckets=32, max_distance=128):
  """Plain-Python Raffel et al. bucketing of rel = key - query."""
  offset = 0
  if bidirectional:
    buckets //= 2
    offset = buckets if rel > 0 else 0
    n = abs(rel)
  else:
    n = max(-rel, 0)
  exact = buckets // 2
  if n < exact:
    return offset + n
  return offset + min(exact + int(math.log(n / exact) / math.log(max_distance / exact)
                                  * (buckets - exact)), buckets - 1)


# (key - query, bucket), worked by hand from the formula (32 buckets, max distance 128)
CAUSAL = [(0, 0), (3, 0), (-1, 1), (-15, 15), (-16, 16), (-32, 21), (-64, 26), (-127, 31),
          (-128, 31), (-1000, 31)]
BIDIRECTIONAL = [(0, 0), (-3, 3), (3, 19), (-8, 8), (-20, 10), (20, 26), (-200, 15), (200, 31)]


@pytest.mark.parametrize("bidirectional, table", [(False, CAUSAL), (True, BIDIRECTIONAL)])
def test_t5_buckets_hand_worked(bidirectional, table):
  rel = np.array([r for r, _ in table])
  got = np.asarray(positional.t5_buckets(rel, bidirectional=bidirectional))
  assert got.tolist() == [b for _, b in table]
  assert got.tolist() == [t5_bucket_py(int(r), bidirectional) for r in rel]


def test_t5_buckets_match_the_formula_everywhere():
  rel = np.arange(-600, 601)
  for bidirectional in (False, True):
    got = np.asarray(positional.t5_buckets(rel, bidirectional=bidirectional, num_buckets=16,
                                           max_distance=64))
    assert got.tolist() == [t5_bucket_py(int(r), bidirectional, 16, 64) for r in rel]


@pytest.mark.slow
def test_t5_bias_through_every_impl_with_table_gradients():
  rng = np.random.default_rng(7)
  n, heads = 29, 4
  q, k, v = (jnp.asarray(rng.standard_normal((2, n, heads, 8)), jnp.float32) for _ in range(3))
  table = jnp.asarray(rng.standard_normal((32, heads)), jnp.float32)
  sch = scheme("t5")

  def loss(table, impl):
    out = dot_product_attention(q, k, v, mask=masks.causal(), bias=sch.score_mod(heads, {"position_bias": table}),
                                impl=impl, block_q=16, block_kv=16)
    return jnp.sum(out * jnp.cos(jnp.arange(out.size).reshape(out.shape)))

  # oracle: dense bias built from the plain-Python buckets
  buckets = np.array([[t5_bucket_py(j - i, False) for j in range(n)] for i in range(n)])
  dense = np.moveaxis(np.asarray(table)[buckets], -1, 0)[None]           # [1, H, n, n]
  expected = dot_product_attention(q, k, v, mask=masks.causal(), bias=dense, impl="reference")
  grads = {}
  for impl in ("reference", "xla", "blockwise"):
    out = dot_product_attention(q, k, v, mask=masks.causal(), bias=sch.score_mod(heads, {"position_bias": table}),
                                impl=impl, block_q=16, block_kv=16)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    grads[impl] = jax.grad(loss)(table, impl)
  assert float(jnp.abs(grads["reference"]).max()) > 1e-3
  for impl in ("xla", "blockwise"):
    np.testing.assert_allclose(grads[impl], grads["reference"], rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- randomized


def test_randomized_positions_sorted_distinct_in_range():
  seen = set()
  for i in range(20):
    pos = np.asarray(positional.randomized_positions(jax.random.PRNGKey(i), 40, 2048))
    assert pos.dtype == np.int32 and pos.shape == (40,)
    assert np.all(np.diff(pos) > 0)                       # sorted and distinct
    assert pos.min() >= 0 and pos.max() < 2048
    seen.add(tuple(pos))
  assert len(seen) == 20                                  # a new draw per key
  np.testing.assert_array_equal(positional.randomized_positions(jax.random.PRNGKey(3), 40, 2048),
                                positional.randomized_positions(jax.random.PRNGKey(3), 40, 2048))
  with pytest.raises(ValueError, match="seq_len=50 exceeds max_len=40"):
    positional.randomized_positions(jax.random.PRNGKey(0), 50, 40)


def test_randomized_positions_are_uniform_over_sorted_subsets():
  """Ruoss et al. draw a uniformly random sorted subset: over 6000 independent keys, each
  of the C(6, 3) = 20 subsets of [0, 6) appears about equally often (chi-square, 19
  degrees of freedom, below its 1e-4 critical value 50.80), and each position is in
  about half the draws."""
  import itertools
  keys = jax.random.split(jax.random.PRNGKey(123), 6000)
  draws = np.asarray(jax.vmap(lambda k: positional.randomized_positions(k, 3, 6))(keys))
  assert np.all(np.diff(draws, axis=1) > 0) and draws.min() >= 0 and draws.max() < 6
  subsets = {s: 0 for s in itertools.combinations(range(6), 3)}
  for row in map(tuple, draws):
    subsets[row] += 1
  counts = np.array(list(subsets.values()), np.float64)
  expected = len(draws) / len(subsets)
  assert ((counts - expected) ** 2 / expected).sum() < 50.80, counts
  share = np.bincount(draws.ravel(), minlength=6) / len(draws)
  np.testing.assert_allclose(share, 0.5, atol=0.03)


def test_alibi_with_explicit_positions_uses_their_distances():
  rng = np.random.default_rng(8)
  n, heads = 29, 4
  q, k, v = (jnp.asarray(rng.standard_normal((2, n, heads, 8)), jnp.float32) for _ in range(3))
  pos = np.stack([np.sort(rng.choice(500, n, replace=False)) for _ in range(2)])
  slopes = positional.alibi_slopes(heads)
  dense = -slopes[None, :, None, None] * np.abs(pos[:, None, :, None] - pos[:, None, None, :])
  expected = dot_product_attention(q, k, v, mask=masks.causal(), bias=dense, impl="reference")
  for impl in ("reference", "xla", "blockwise"):
    out = dot_product_attention(q, k, v, mask=masks.causal(), bias=positional.alibi_bias(heads, pos),
                                impl=impl, block_q=8, block_kv=8)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["sinusoidal"] + [   # the other kinds in the slow tier
    pytest.param(kind, marks=pytest.mark.slow) for kind in ("learned", "rope", "alibi")])
def test_training_step_uses_the_randomized_positions(kind):
  """The step's loss equals the loss at the positions drawn from (seed, step), not at 0..n-1."""
  from helpers import tiny_config

  from attnlab import config_lib
  from attnlab.engine import training as train
  from attnlab.models import TransformerLM
  cfg = config_lib.resolve(tiny_config(kind, model__position__randomize=True,
                                       model__position__random_max_len=256))
  if kind == "learned":
    assert cfg.model.position.max_len == 256       # the table covers the sampling range
  model, tx = TransformerLM(cfg.model), train.make_optimizer(cfg.train)
  state = train.init_state(model, tx, cfg)
  # sharpen attention (init weights are tiny) so the loss depends visibly on positions
  state["params"] = jax.tree.map(lambda p: 8 * p, state["params"])
  params = jax.tree.map(jnp.copy, state["params"])   # the step donates (deletes) its input state
  tokens = np.random.default_rng(9).integers(0, 256, (2, 33)).astype(np.int32)
  inputs, targets = tokens[:, :-1], tokens[:, 1:]
  step = train.make_train_step(model, tx, seed=0, dropout=False, random_positions_max=256)
  _, metrics = step(state, inputs, targets)
  key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(0), 0), 1)
  pos = jnp.broadcast_to(positional.randomized_positions(key, 32, 256), inputs.shape)
  expected = train.token_loss(model, params, inputs, targets, positions=pos)
  at_zero = train.token_loss(model, params, inputs, targets)
  assert float(metrics["loss"]) == pytest.approx(float(expected), rel=1e-6)
  assert abs(float(expected) - float(at_zero)) > 1e-5


def test_randomize_is_refused_for_schemes_it_does_not_apply_to():
  from helpers import tiny_config

  from attnlab import ConfigError, config_lib
  with pytest.raises(ConfigError, match=r"model.position.kind \(with model.position.randomize=True\)='t5'"):
    config_lib.resolve(tiny_config("t5", model__position__randomize=True))
  with pytest.raises(ConfigError, match=r"random_max_len=16 must be an integer >= data.seq_len=32"):
    config_lib.resolve(tiny_config("rope", model__position__randomize=True,
                                   model__position__random_max_len=16))
