"""``impl="tokamax"`` (``attnlab/attention/tokamax_impl.py``) on CPU through tokamax's XLA
implementations, against the float64-checked reference: values and gradients for the
patterns and modifiers it takes, its refusals for the ones it cannot express."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attnlab import ConfigError, positional
from attnlab.attention import IMPLS, dot_product_attention, masks, score_mods, tokamax_impl
from attnlab.attention.strided import strided

pytest.importorskip("tokamax")


def _qkv(n=24, heads=4, kv_heads=2, d=16, seed=0):
  rng = np.random.default_rng(seed)
  q = jnp.asarray(rng.standard_normal((2, n, heads, d)), jnp.float32)
  k, v = (jnp.asarray(rng.standard_normal((2, n, kv_heads, d)), jnp.float32) for _ in range(2))
  return q, k, v


CASES = {
    "causal_alibi_softcap": (lambda: masks.causal(),
                             lambda: score_mods.Compose(positional.alibi_bias(4),
                                                        score_mods.soft_cap(5.0))),
    "window": (lambda: masks.sliding_window(5), lambda: None),
    "bidirectional_band": (lambda: masks.sliding_window(3, 2), lambda: None),
    "full_t5": (lambda: masks.full(),
                lambda: positional.T5Bias(table=jnp.linspace(-1, 1, 32 * 4).reshape(32, 4),
                                          bidirectional=True, num_buckets=32,
                                          max_distance=128)),
    "dense_mask_with_empty_rows": (
        lambda: np.tril(np.ones((24, 24), bool), -1), lambda: None),
}


# every case through tokamax's XLA implementation; its other CPU paths on one case (time),
# in the slow tier
RUNS = [(case, "xla") for case in CASES] + [
    pytest.param("causal_alibi_softcap", path, marks=pytest.mark.slow)
    for path in ("xla_chunked", "auto")]


@pytest.mark.parametrize("case,implementation", RUNS)
def test_values_and_gradients_equal_the_reference(case, implementation):
  q, k, v = _qkv()
  make_mask, make_mod = CASES[case]
  w = jnp.asarray(np.random.default_rng(3).standard_normal(q.shape), jnp.float32)

  def loss(q, k, v, impl, **options):
    out = dot_product_attention(q, k, v, mask=make_mask(), bias=make_mod(), impl=impl,
                                **options)
    return jnp.sum(out * w), out

  grad = lambda impl, **o: jax.value_and_grad(  # noqa: E731
      lambda q, k, v: loss(q, k, v, impl, **o), argnums=(0, 1, 2), has_aux=True)(q, k, v)
  (_, want), g_ref = grad("reference")
  (_, got), g = grad("tokamax", tokamax_implementation=implementation)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  for a, b in zip(g, g_ref):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  if case == "dense_mask_with_empty_rows":
    assert np.all(np.asarray(got)[:, 0] == 0)          # row 0 sees no key: 0, not an average


@pytest.mark.parametrize("mask,mod,match", [
    (lambda: strided(4), lambda: None, "needs its block map"),
    (lambda: masks.segments(jnp.zeros((2, 24), jnp.int32)), lambda: None, "traced"),
    (lambda: None, lambda: score_mods.Compose(score_mods.soft_cap(5.0), positional.alibi_bias(4)),
     "additive biases and a final soft-cap"),
])
def test_what_it_cannot_express_is_refused_with_the_reason(mask, mod, match):
  q, k, v = _qkv()
  reason = IMPLS.get("tokamax").unsupported(q, k, v, masks.as_mask(mask()), mod())
  assert match in reason
  with pytest.raises(ConfigError, match=match):
    dot_product_attention(q, k, v, mask=mask(), bias=mod(), impl="tokamax")


def test_without_tokamax_it_names_the_extra(monkeypatch):
  monkeypatch.setattr(tokamax_impl, "_tokamax", lambda: None)
  q, k, v = _qkv()
  with pytest.raises(ConfigError, match=r"needs the tokamax package: pip install -e '.\[gpu\]'"):
    dot_product_attention(q, k, v, mask=masks.causal(), impl="tokamax")
