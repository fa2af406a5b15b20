"""The Sparse Transformer's strided pattern (``attnlab/attention/strided.py``), added as
one file, against a double loop written from Child et al. (2019), and through every part
of attnlab that reads the pattern axis: validation, the impls, the KV cache, analysis."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import perturbed_model, tiny_config

from attnlab import ConfigError, config_lib
from attnlab.analysis import capture
from attnlab.attention import PATTERNS, dot_product_attention, masks
from attnlab.attention.strided import strided
from attnlab.engine import training
from attnlab.models import kv_cache
from conformance import cached_and_full_logits


def loop_mask(n: int, stride: int) -> np.ndarray:
  """i sees j iff j <= i and (i - j < stride or (i - j) mod stride == 0), by a double loop."""
  out = np.zeros((n, n), bool)
  for i in range(n):
    for j in range(n):
      out[i, j] = j <= i and (i - j < stride or (i - j) % stride == 0)
  return out


@pytest.mark.parametrize("stride", [1, 3, 7])
def test_predicate_is_the_papers_definition(stride):
  np.testing.assert_array_equal(np.asarray(strided(stride).dense(40, 40)), loop_mask(40, stride))


@pytest.mark.parametrize("stride,n,block_q,block_kv", [
    (3, 40, 8, 8), (7, 50, 16, 8), (4, 33, 8, 16), (16, 64, 8, 8), (1, 20, 4, 4), (5, 37, 37, 1)])
def test_block_map_classifies_every_tile_exactly(stride, n, block_q, block_kv):
  dense = loop_mask(n, stride)
  got = strided(stride).block_map(n, n, block_q, block_kv)
  for a in range(got.shape[0]):
    for b in range(got.shape[1]):
      tile = dense[a * block_q:(a + 1) * block_q, b * block_kv:(b + 1) * block_kv]
      want = masks.FULL if tile.all() else masks.PARTIAL if tile.any() else masks.EMPTY
      assert got[a, b] == want, (a, b)


@pytest.mark.slow   # the registered pattern through every impl: tests/test_conformance_patterns.py
@pytest.mark.parametrize("impl", ["xla", "blockwise", "pallas"])
def test_impls_equal_the_reference_with_the_loop_mask(impl):
  rng = np.random.default_rng(0)
  n, stride = 48, 5
  q, k, v = (jnp.asarray(rng.standard_normal((2, n, 4, 16)), jnp.float32) for _ in range(3))
  weights = jnp.asarray(rng.standard_normal((2, n, 4, 16)), jnp.float32)

  def loss(q, k, v, mask, impl):
    out = dot_product_attention(q, k, v, mask=mask, impl=impl, block_q=16, block_kv=16)
    return jnp.sum(out * weights), out

  (_, expected), g_ref = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(
      q, k, v, loop_mask(n, stride), "reference")
  (_, got), g = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(
      q, k, v, strided(stride), impl)
  np.testing.assert_allclose(got, expected, rtol=2e-5, atol=2e-5)
  for a, b in zip(g, g_ref):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)


def test_stride_zero_is_refused_before_anything_is_written(tmp_path):
  cfg = tiny_config("rope", model__attention__pattern="strided", model__attention__stride=0)
  with pytest.raises(ConfigError, match=r"model.attention.stride=0 must be an integer >= 1 "
                                        r"\(pattern 'strided'\)"):
    training.train_and_evaluate(cfg, tmp_path / "run", progress=False)
  assert not (tmp_path / "run").exists()


def test_its_field_comes_from_its_declaration():
  from configs import lm
  assert lm.get_config("rope").model.attention.stride == 16
  assert [f.name for f in PATTERNS.get("strided").fields] == ["stride"]
  assert PATTERNS.get("strided").lookback(lm.get_config().model.attention) is None


def test_cached_decoding_is_exact_with_a_full_cache():
  cfg, model, params = perturbed_model("rope", model__attention__pattern="strided",
                                       model__attention__stride=3)
  layout = kv_cache.layout_for(cfg.model, 24)
  assert layout.capacity == 24 and layout.lookback is None     # unbounded look-back
  tokens = np.random.default_rng(1).integers(0, 256, (2, 24)).astype(np.int32)
  cached, _, full = cached_and_full_logits(model, params, tokens, layout, prefill=5)
  np.testing.assert_allclose(cached, full, rtol=2e-5, atol=2e-5)
  # and the pattern matters: the same weights with causal attention differ
  causal = config_lib.resolve(tiny_config("rope"))
  other = type(model)(causal.model).apply({"params": params}, jnp.asarray(tokens))
  assert np.abs(np.asarray(other) - np.asarray(full)).max() > 1e-2


def test_captured_maps_are_zero_exactly_outside_the_pattern():
  cfg, model, params = perturbed_model("alibi", model__attention__pattern="strided",
                                       model__attention__stride=4)
  tokens = np.random.default_rng(2).integers(0, 256, (1, 20)).astype(np.int32)
  _, maps = capture.capture_attention(model, params, tokens)      # [L, B, H, n, n]
  allowed = loop_mask(20, 4)
  assert np.all(maps[..., ~allowed] == 0)
  assert np.all(maps[..., allowed] > 0)
  np.testing.assert_allclose(maps.sum(-1), 1.0, rtol=1e-5)
