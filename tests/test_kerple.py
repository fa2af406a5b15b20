"""KERPLE-log (``attnlab/positional/kerple.py``), added as one file, against the formula
of Chi et al. (2022) in float64 numpy, and through what reads the position axis: model
parameters and their decay, validation against kinds that cannot apply a bias, the
implementations (values and gradients of r1, r2), and the StreamingLLM cache."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from helpers import tiny_config

from attnlab import ConfigError, config_lib, positional
from attnlab.models import TransformerLM, decay_mask, kv_cache
from attnlab.positional.kerple import EPS, KerpleLogBias
from conformance import cached_logits


def kerple_numpy(r1, r2, n):
  """-r1_h log(1 + r2_h |i - j|) with r clamped at EPS: float64 [H, n, n]."""
  r1, r2 = np.maximum(np.asarray(r1, np.float64), EPS), np.maximum(np.asarray(r2, np.float64), EPS)
  i, j = np.arange(n)[:, None], np.arange(n)[None, :]
  return -r1[:, None, None] * np.log(1.0 + r2[:, None, None] * np.abs(i - j))


def test_bias_is_the_formula_with_the_clamp():
  r1, r2 = np.array([0.5, 1.7, 0.001]), np.array([0.2, 0.9, 0.5])   # 0.001 < EPS: clamped
  got = np.asarray(KerpleLogBias(r1=jnp.asarray(r1), r2=jnp.asarray(r2)).dense(9, 9))[0]
  np.testing.assert_allclose(got, kerple_numpy(r1, r2, 9), rtol=1e-6, atol=1e-7)
  assert got[0, 0, 5] == pytest.approx(-0.5 * np.log(1 + 0.2 * 5), rel=1e-6)


def test_model_creates_r1_r2_per_head_as_the_authors_initialise_them():
  cfg = config_lib.resolve(tiny_config("kerple"))
  params = TransformerLM(cfg.model).init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"]
  att = params["block_0"]["attention"]
  r1, r2 = np.asarray(att["kerple_r1"]), np.asarray(att["kerple_r2"])
  assert r1.shape == r2.shape == (4,)
  assert np.all((0 <= r1) & (r1 < 2)) and np.all((0 <= r2) & (r2 < 1))
  assert not np.allclose(r1, r1[0])                  # random per head, not a constant
  mask = decay_mask(cfg.model)(params)
  assert mask["block_0"]["attention"]["kerple_r1"] is False     # declared: not decayed
  assert mask["block_0"]["attention"]["qkv"]["kernel"] is True  # matrices: decayed


def test_linear_attention_cannot_silently_drop_it():
  cfg = tiny_config("kerple", model__attention__kind="linear")
  with pytest.raises(ConfigError, match=r"kind='linear' never forms the score matrix, so it "
                                        r"cannot add the 'kerple' bias"):
    config_lib.resolve(cfg)


@pytest.mark.slow   # StreamingLLM itself: tests/test_kv_cache.py
def test_streaming_cache_positions_keys_by_their_place():
  """StreamingLLM with KERPLE (a bias: it streams). With one layer, token t's output is the
  last position of a full forward pass over exactly the kept tokens (sinks + window), since
  KERPLE reads distances by place and nothing else carries position."""
  cfg = config_lib.resolve(tiny_config("kerple", model__num_layers=1))
  assert positional.POSITIONS.get("kerple").streamable()
  model = TransformerLM(cfg.model)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"]
  params = jax.tree.map(lambda x: x + 0.3 * jax.random.normal(jax.random.PRNGKey(1), x.shape),
                        params)
  params["block_0"]["attention"]["kerple_r1"] = jnp.array([0.5, 1.0, 1.5, 2.0])
  params["block_0"]["attention"]["kerple_r2"] = jnp.array([0.2, 0.4, 0.6, 0.8])
  sinks, window, n = 2, 4, 12
  tokens = np.random.default_rng(3).integers(0, 256, (1, n)).astype(np.int32)
  layout = kv_cache.streaming_layout(sinks, window)
  kv_cache.check_supported(cfg.model, layout)
  got, _ = cached_logits(model, params, tokens, layout, prefill=1)     # [1, n, vocab]
  forward = jax.jit(lambda p, t: model.apply({"params": p}, t))
  for t in range(n):
    kept = [j for j in range(t + 1) if j < sinks or j > t - window]
    want = forward(params, jnp.asarray(tokens[:, kept]))[0, -1]
    np.testing.assert_allclose(got[0, t], want, rtol=2e-5, atol=2e-5)


def test_scheme_is_picked_up_by_presets_and_config_blocks():
  from configs import lm
  assert "kerple" in lm.PRESETS
  assert lm.get_config("kerple").model.position.kind == "kerple"
  block = ml_collections.ConfigDict({"kind": "kerple"})
  assert isinstance(positional.get_scheme(block).score_mod(
      3, {"kerple_r1": jnp.ones(3), "kerple_r2": jnp.ones(3)}), KerpleLogBias)
