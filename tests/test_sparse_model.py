"""Sparse patterns and efficient kinds inside TransformerLM, selected by config.

The oracle for a pattern is its own dense mask: in a one-layer model, changing
token j changes the logits at position i exactly when some head lets i see j
(or i == j, through the residual stream).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tiny_config

from attnlab import ConfigError, config_lib
from attnlab.attention import PATTERNS, masks
from attnlab.models import TransformerLM

N = 32
SPARSE = {
    "dilated": dict(window=3, dilation=4),
    "block_local": dict(block=8),
    "global": dict(global_tokens=(0, 9)),
    "random": dict(random_per_row=2, seed=3),
    "bigbird": dict(block=4, window_blocks=3, global_blocks=1, random_blocks=1, seed=1),
    "longformer": dict(window=3, global_tokens=(2,)),
    "streaming": dict(sinks=2, window=4),
    "sliding_window": dict(window=5),
}


def _config(pattern, **overrides):
  fields = {f"model__attention__{k}": v for k, v in SPARSE.get(pattern, {}).items()}
  fields.update(overrides)
  return tiny_config("rope", model__attention__pattern=pattern, **fields)


def _model_and_params(cfg):
  cfg = config_lib.resolve(cfg)
  model = TransformerLM(cfg.model)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, N), jnp.int32))["params"]
  return cfg, model, params


def _influence(model, params, n=N, seed=0):
  """bool [n, n]: does changing token j change the logits at position i?"""
  rng = np.random.default_rng(seed)
  base = rng.integers(0, 256, (1, n)).astype(np.int32)
  batch = np.repeat(base, n + 1, axis=0)
  for j in range(n):
    batch[j + 1, j] = (base[0, j] + 1 + rng.integers(0, 255)) % 256
  logits = np.asarray(model.apply({"params": params}, batch))
  change = np.abs(logits[1:] - logits[:1]).max(-1)     # [j, i]
  return change.T > 1e-6


@pytest.mark.parametrize("pattern", [p if p == "dilated" else pytest.param(p, marks=pytest.mark.slow)
                                     for p in SPARSE])
def test_one_layer_model_sees_exactly_its_pattern(pattern):
  cfg, model, params = _model_and_params(_config(pattern, model__num_layers=1))
  mask = PATTERNS.get(pattern).build(cfg.model.attention, 0)
  dense = np.asarray(mask.dense(N, N), bool)
  dense = dense.reshape((-1, N, N)).any(0) | np.eye(N, dtype=bool)   # union over heads
  np.testing.assert_array_equal(_influence(model, params), dense)
  assert not dense.all()   # the pattern is really sparse at this length


def test_random_patterns_differ_per_layer_and_seed():
  cfg = config_lib.resolve(_config("random"))
  att = cfg.model.attention
  layer0 = np.asarray(PATTERNS.get("random").build(att, 0).dense(64, 64))
  layer1 = np.asarray(PATTERNS.get("random").build(att, 1).dense(64, 64))
  again = np.asarray(PATTERNS.get("random").build(att, 0).dense(64, 64))
  assert (layer0 != layer1).any()
  np.testing.assert_array_equal(layer0, again)
  att = config_lib.resolve(_config("bigbird")).model.attention    # blocks of 4
  bigbird0 = np.asarray(PATTERNS.get("bigbird").build(att, 0).dense(64, 64))
  bigbird1 = np.asarray(PATTERNS.get("bigbird").build(att, 1).dense(64, 64))
  assert (bigbird0 != bigbird1).any()


@pytest.mark.parametrize("overrides,match", [
    (dict(model__attention__pattern="dilated", model__attention__dilation=0),
     r"model.attention.dilation=0 must be an integer >= 1"),
    (dict(model__attention__pattern="streaming", model__attention__window=-1),
     r"model.attention.window=-1 must be an integer >= 1"),
    (dict(model__attention__pattern="block_local", model__attention__block=0),
     r"model.attention.block=0 must be an integer >= 1"),
    (dict(model__attention__pattern="longformer", model__attention__window=4,
          model__attention__global_tokens=(0, 40)),
     r"model.attention.global_tokens=\(0, 40\): \[40\] out of range for data.seq_len=32"),
    (dict(model__attention__pattern="global", model__attention__global_tokens=()),
     r"model.attention.global_tokens=\(\) must be a non-empty tuple"),
    (dict(model__attention__pattern="bigbird", model__attention__window_blocks=2),
     r"model.attention.window_blocks=2 must be odd"),
    (dict(model__attention__kind="lsh", model__attention__lsh_buckets=3),
     r"model.attention.lsh_buckets=3 must be 1 or even"),
    (dict(model__attention__kind="performer", model__attention__pattern="sliding_window",
          model__attention__window=4),
     r"model.attention.kind='performer' takes pattern one of causal, full"),
    (dict(model__attention__kind="linear", model__position__kind="alibi"),
     r"model.attention.kind='linear' .* cannot add the 'alibi' bias"),
    (dict(model__attention__kind="lsh", model__attention__num_kv_heads=2),
     r"num_kv_heads=2 must equal num_heads=4"),
    (dict(model__attention__kind="performer", model__attention__num_features=0),
     r"model.attention.num_features=0 must be an integer >= 1"),
])
def test_bad_pattern_and_kind_parameters_are_config_errors(overrides, match):
  with pytest.raises(ConfigError, match=match):
    config_lib.resolve(tiny_config("rope", **overrides))


def test_sparse_patterns_are_registered_causal():
  for name in list(SPARSE) + ["causal"]:
    spec = PATTERNS.get(name)
    assert spec.causal
    cfg = config_lib.resolve(_config(name))
    dense = np.asarray(spec.build(cfg.model.attention, 0).dense(N, N), bool)
    assert not np.any(dense & ~np.tril(np.ones((N, N), bool))), name
    assert np.all(dense.reshape(-1, N, N).any(-1)), name   # every row sees a key
  assert isinstance(PATTERNS.get("streaming").build(config_lib.resolve(_config("streaming"))
                                                    .model.attention, 0), masks.Mask)


# ----------------------------------------------------------------------------- efficient kinds

KIND_CONFIGS = {
    "performer": dict(model__attention__kind="performer", model__attention__num_features=64,
                      model__attention__scan_chunk=8),
    "linear": dict(model__attention__kind="linear", model__attention__scan_chunk=8),
    "lsh": dict(model__attention__kind="lsh", model__attention__lsh_buckets=4,
                model__attention__lsh_chunk=8),
}


def test_lsh_model_with_one_chunk_and_bucket_is_causal():
  # With a single bucket and a chunk covering the sequence, LSH attention is exactly causal
  # shared-QK attention. (With several chunks it is not strictly causal: a later token's
  # bucket can move the chunk boundaries an earlier query sees, as in the Reformer.)
  cfg = tiny_config("rope", model__attention__kind="lsh", model__attention__lsh_buckets=1,
                    model__attention__lsh_chunk=N, model__attention__lsh_hashes=1)
  _, model, params = _model_and_params(cfg)
  assert "qkv" in params["block_0"]["attention"]
  # shared QK: the projection makes queries and values only (4 + 4 heads of 8)
  assert params["block_0"]["attention"]["qkv"]["kernel"].shape == (32, 64)
  rng = np.random.default_rng(5)
  tokens = rng.integers(0, 256, (1, N)).astype(np.int32)
  changed = tokens.copy()
  changed[:, 20:] = rng.integers(0, 256, (1, N - 20))
  a = np.asarray(model.apply({"params": params}, tokens))
  b = np.asarray(model.apply({"params": params}, changed))
  np.testing.assert_allclose(a[:, :20], b[:, :20], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", [k if k == "performer" else pytest.param(k, marks=pytest.mark.slow)
                                  for k in KIND_CONFIGS])
def test_efficient_kinds_learn(kind):
  """Gradients flow through every kind: 25 Adam steps on one batch cut its loss by a third."""
  import optax
  from attnlab.engine.training import token_loss
  cfg, model, params = _model_and_params(tiny_config("rope", **KIND_CONFIGS[kind]))
  tokens = np.random.default_rng(6).integers(0, 256, (4, N + 1)).astype(np.int32)
  inputs, targets = tokens[:, :-1], tokens[:, 1:]
  tx = optax.adam(1e-2)
  opt = tx.init(params)

  @jax.jit
  def step(params, opt):
    loss, grads = jax.value_and_grad(lambda p: token_loss(model, p, inputs, targets))(params)
    updates, opt = tx.update(grads, opt)
    return optax.apply_updates(params, updates), opt, loss

  losses = []
  for _ in range(25):
    params, opt, loss = step(params, opt)
    losses.append(float(loss))
  assert np.isfinite(losses).all()
  assert losses[-1] < 0.67 * losses[0], losses


def test_performer_feature_redraw_uses_the_features_rng():
  tokens = np.random.default_rng(7).integers(0, 256, (1, N)).astype(np.int32)
  out = {}
  for redraw in (False, True):
    _, model, params = _model_and_params(tiny_config(
        "rope", model__attention__feature_redraw=redraw, **KIND_CONFIGS["performer"]))
    apply = lambda rng: np.asarray(model.apply(  # noqa: E731
        {"params": params}, tokens, rngs={} if rng is None else {"features": rng}))
    out[redraw] = (apply(None), apply(jax.random.PRNGKey(1)), apply(jax.random.PRNGKey(2)))
  fixed, a, b = out[False]
  np.testing.assert_array_equal(fixed, a)              # no redraw: the rng is ignored
  np.testing.assert_array_equal(a, b)
  fixed_r, a_r, b_r = out[True]
  np.testing.assert_array_equal(fixed_r, fixed)        # no rng (evaluation): the fixed features
  assert np.abs(a_r - b_r).max() > 1e-4                # training: new features per key
  assert np.abs(a_r - fixed_r).max() > 1e-4
