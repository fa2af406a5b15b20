"""TransformerLM: a window's reach, learned tables, untied outputs, block variants, dtypes and
dropout. (Causality and cached decoding for every registered pattern, position scheme and
kind, and values through every impl: tests/test_conformance_*.py.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tiny_config

from attnlab import config_lib
from attnlab.models import TransformerLM

def _model_and_params(cfg):
  cfg = config_lib.resolve(cfg)
  model = TransformerLM(cfg.model)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, cfg.data.seq_len), jnp.int32))["params"]
  return model, params


def test_sliding_window_model_ignores_tokens_beyond_the_window():
  """With one layer and window w, position i depends only on tokens i-w..i."""
  cfg = tiny_config("rope", model__num_layers=1, model__attention__pattern="sliding_window",
                    model__attention__window=4)
  model, params = _model_and_params(cfg)
  rng = np.random.default_rng(2)
  tokens = rng.integers(0, 256, (1, 32)).astype(np.int32)
  changed = tokens.copy()
  changed[:, :10] = rng.integers(0, 256, (1, 10))   # tokens 0..9 change
  a = np.asarray(model.apply({"params": params}, tokens))
  b = np.asarray(model.apply({"params": params}, changed))
  np.testing.assert_allclose(a[:, 14:], b[:, 14:], rtol=1e-5, atol=1e-5)   # 14-4 = 10: unseen
  assert np.abs(a[:, 10:14] - b[:, 10:14]).max() > 1e-3


def test_learned_positions_reject_inputs_beyond_the_table():
  from attnlab import ConfigError
  model, params = _model_and_params(tiny_config("learned"))   # table of 32 rows
  with pytest.raises(ConfigError, match=r"model.position.max_len=32"):
    model.apply({"params": params}, jnp.zeros((1, 33), jnp.int32))


def test_untied_model_has_its_own_output_matrix():
  model, params = _model_and_params(tiny_config("rope", model__tie_embeddings=False))
  assert params["unembed"]["kernel"].shape == (32, 256)
  tied_model, tied_params = _model_and_params(tiny_config("rope"))
  assert "unembed" not in tied_params
  # with the output matrix set to the transposed embedding, untied == tied
  params = dict(params, embed=tied_params["embed"],
                unembed={"kernel": tied_params["embed"]["embedding"].T})
  for k in tied_params:
    if k not in ("embed",):
      params[k] = tied_params[k]
  tokens = np.arange(24, dtype=np.int32)[None]
  np.testing.assert_allclose(model.apply({"params": params}, tokens),
                             tied_model.apply({"params": tied_params}, tokens), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", [
    {"model__mlp": "swiglu", "model__norm": "rmsnorm", "model__tie_embeddings": False},
    {"model__use_bias": True, "model__attention__num_kv_heads": 1},
])
def test_other_block_variants_are_causal(variant):
  model, params = _model_and_params(tiny_config("rope", **variant))
  tokens = np.random.default_rng(3).integers(0, 256, (1, 32)).astype(np.int32)
  changed = tokens.copy()
  changed[:, 20:] = (changed[:, 20:] + 1) % 256
  a = np.asarray(model.apply({"params": params}, tokens))
  b = np.asarray(model.apply({"params": params}, changed))
  np.testing.assert_allclose(a[:, :20], b[:, :20], rtol=1e-5, atol=1e-5)
  assert np.abs(a[:, 20:] - b[:, 20:]).max() > 1e-3


@pytest.mark.slow
def test_bfloat16_compute_tracks_float32():
  model32, params = _model_and_params(tiny_config("alibi"))
  model16, _ = _model_and_params(tiny_config("alibi", model__dtype="bfloat16"))
  tokens = np.random.default_rng(4).integers(0, 256, (2, 32)).astype(np.int32)
  p32 = jax.nn.softmax(model32.apply({"params": params}, tokens), -1)
  p16 = jax.nn.softmax(model16.apply({"params": params}, tokens), -1)
  assert model16.apply({"params": params}, tokens).dtype == jnp.float32
  assert 0 < np.abs(np.asarray(p32 - p16)).max() < 2e-2   # bf16 rounding, not a different model


def test_dropout_is_active_in_training_only():
  model, params = _model_and_params(tiny_config("rope", model__dropout=0.5))
  tokens = np.arange(32, dtype=np.int32)[None]
  eval_a = model.apply({"params": params}, tokens)
  eval_b = model.apply({"params": params}, tokens, deterministic=True)
  np.testing.assert_array_equal(eval_a, eval_b)
  train_a = model.apply({"params": params}, tokens, deterministic=False,
                        rngs={"dropout": jax.random.PRNGKey(1)})
  train_b = model.apply({"params": params}, tokens, deterministic=False,
                        rngs={"dropout": jax.random.PRNGKey(1)})
  train_c = model.apply({"params": params}, tokens, deterministic=False,
                        rngs={"dropout": jax.random.PRNGKey(2)})
  np.testing.assert_array_equal(train_a, train_b)              # same key, same mask
  assert np.abs(np.asarray(train_a - eval_a)).max() > 1e-3     # dropout did something
  assert np.abs(np.asarray(train_a - train_c)).max() > 1e-3    # and depends on the key
