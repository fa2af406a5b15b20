"""Attention capture (``SelfAttention`` sows ``attention_weights``) and ``model.mlp='none'``.

Oracle: the q, k, v, mask and bias that the layer hands to ``dot_product_attention``
are recorded, and the softmax weights are recomputed from them in float64 numpy.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attnlab import config_lib
from attnlab.attention import kinds, score_mods
from attnlab.models import build_lm
from attnlab.registry import ConfigError
from helpers import tiny_config


def _numpy_softmax_weights(q, k, mask, bias):
  """float64 softmax(q k^T / sqrt(d) + bias) over visible keys: [batch, heads, q, k]."""
  q, k = np.asarray(q, np.float64), np.asarray(k, np.float64)
  k = np.repeat(k, q.shape[2] // k.shape[2], axis=2)
  s = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
  nq, nk = q.shape[1], k.shape[1]
  if bias is not None:
    assert isinstance(bias, score_mods.AdditiveBias)
    s = s + np.asarray(bias.dense(nq, nk), np.float64)
  visible = np.broadcast_to(np.asarray(mask.dense(nq, nk)), s.shape)
  s = np.where(visible, s, -np.inf)
  p = np.exp(s - s.max(-1, keepdims=True))
  return p / p.sum(-1, keepdims=True)


def _record_attention_calls(monkeypatch):
  """Wrap the softmax kind's ``dot_product_attention``; returns the list of recorded calls."""
  calls, original = [], kinds.dot_product_attention

  def recording(q, k, v, *, mask=None, bias=None, **kw):
    out = original(q, k, v, mask=mask, bias=bias, **kw)
    calls.append({"q": q, "k": k, "v": v, "mask": mask, "bias": bias, "out": out})
    return out

  monkeypatch.setattr(kinds, "dot_product_attention", recording)
  return calls


@pytest.mark.slow
@pytest.mark.parametrize("position,overrides", [
    ("rope", {}),
    ("alibi", {"model__attention__num_kv_heads": 2}),          # GQA + additive bias
    ("t5", {"model__attention__pattern": "sliding_window", "model__attention__window": 5}),
    ("xpos", {"model__attention__num_kv_heads": 1}),            # MQA
])
def test_captured_maps_equal_reference_softmax(monkeypatch, position, overrides):
  cfg = config_lib.resolve(tiny_config(position, **overrides))
  model = build_lm(cfg.model)
  tokens = jnp.asarray(np.random.RandomState(0).randint(0, 256, (2, 12)))
  params = model.init(jax.random.PRNGKey(1), tokens)["params"]
  calls = _record_attention_calls(monkeypatch)
  logits_plain = model.apply({"params": params}, tokens)
  calls.clear()
  logits_capture, state = model.apply({"params": params}, tokens, mutable=["intermediates"])
  # capture leaves the logits bit-identical: run eagerly, both applies dispatch the same
  # operations on the same inputs (sowing only keeps a reference to the weights)
  np.testing.assert_array_equal(np.asarray(logits_plain), np.asarray(logits_capture))
  assert len(calls) == cfg.model.num_layers
  for layer, call in enumerate(calls):
    (weights,) = state["intermediates"][f"block_{layer}"]["attention"]["attention_weights"]
    weights = np.asarray(weights)
    expected = _numpy_softmax_weights(call["q"], call["k"], call["mask"], call["bias"])
    assert weights.shape == (2, 4, 12, 12)
    np.testing.assert_allclose(weights, expected, atol=2e-6)
    np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)
    # the weights reproduce the layer's attention output: out = P v
    v = np.repeat(np.asarray(call["v"], np.float64), 4 // call["v"].shape[2], axis=2)
    out = np.einsum("bhqk,bkhd->bqhd", weights, v)
    np.testing.assert_allclose(out, np.asarray(call["out"]), atol=2e-5)


def test_capture_under_jit_leaves_logits_unchanged():
  cfg = config_lib.resolve(tiny_config("rope"))
  model = build_lm(cfg.model)
  tokens = jnp.asarray(np.random.RandomState(2).randint(0, 256, (1, 16)))
  params = model.init(jax.random.PRNGKey(0), tokens)["params"]
  plain = jax.jit(lambda p, t: model.apply({"params": p}, t))(params, tokens)
  captured, _ = jax.jit(lambda p, t: model.apply({"params": p}, t, mutable=["intermediates"]))(
      params, tokens)
  # two programs (one also returns the maps) that XLA may fuse differently: equal to rounding
  np.testing.assert_allclose(np.asarray(plain), np.asarray(captured), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("impl", ["blockwise", "pallas"])
def test_capture_is_the_same_for_impls_that_never_form_probabilities(impl):
  """blockwise and pallas never materialise softmax weights: the captured maps are
  recomputed with the reference formula, so they equal the maps of an impl='reference'
  model with the same parameters, and the impl's own logits are unchanged by capture."""
  cfg = config_lib.resolve(tiny_config("alibi", model__attention__impl=impl,
                                       model__attention__num_kv_heads=2,
                                       model__attention__pattern="sliding_window",
                                       model__attention__window=6))
  ref_cfg = config_lib.resolve(tiny_config("alibi", model__attention__impl="reference",
                                           model__attention__num_kv_heads=2,
                                           model__attention__pattern="sliding_window",
                                           model__attention__window=6))
  model, reference = build_lm(cfg.model), build_lm(ref_cfg.model)
  tokens = jnp.asarray(np.random.RandomState(4).randint(0, 256, (2, 20)))
  params = reference.init(jax.random.PRNGKey(5), tokens)["params"]
  plain = model.apply({"params": params}, tokens)
  captured, state = model.apply({"params": params}, tokens, mutable=["intermediates"])
  _, ref_state = reference.apply({"params": params}, tokens, mutable=["intermediates"])
  _, layers = model.apply({"params": params}, tokens, capture_intermediates=True,
                          mutable=["intermediates"])
  inter = layers["intermediates"]
  np.testing.assert_array_equal(np.asarray(plain), np.asarray(captured))   # eager: same ops
  for layer in range(cfg.model.num_layers):
    (maps,) = state["intermediates"][f"block_{layer}"]["attention"]["attention_weights"]
    (ref_maps,) = ref_state["intermediates"][f"block_{layer}"]["attention"]["attention_weights"]
    np.testing.assert_allclose(np.asarray(maps), np.asarray(ref_maps), atol=1e-6)
    # the window is respected: nothing beyond 6 keys back
    i, j = np.indices((20, 20))
    assert np.asarray(maps)[..., (i - j > 6) | (j > i)].max() == 0.0
    # and the maps are what the impl applied: maps @ v, through the output projection,
    # equals the impl's own output projection (numpy, float64, from the layer's values)
    attn = inter[f"block_{layer}"]["attention"]
    (qkv,), (out,) = attn["qkv"]["__call__"], attn["out"]["__call__"]
    v = np.asarray(qkv, np.float64).reshape(2, 20, 4 + 2 + 2, 8)[:, :, 6:]   # [b, k, kv, d]
    v = np.repeat(v, 2, axis=2)                                              # GQA: 2 per kv
    heads_out = np.einsum("bhqk,bkhd->bqhd", np.asarray(maps, np.float64), v)
    kernel = np.asarray(params[f"block_{layer}"]["attention"]["out"]["kernel"], np.float64)
    np.testing.assert_allclose(heads_out.reshape(40, 32) @ kernel,
                               np.asarray(out).reshape(40, 32), atol=2e-6)


def test_mlp_none_is_attention_only():
  """mlp='none' drops the MLP: no MLP parameters, and the block is x + attn(norm(x))."""
  cfg = config_lib.resolve(tiny_config("rope", model__mlp="none"))
  model = build_lm(cfg.model)
  tokens = jnp.asarray(np.random.RandomState(3).randint(0, 256, (1, 8)))
  params = model.init(jax.random.PRNGKey(0), tokens)["params"]
  assert set(params["block_0"]) == {"attention", "norm_attention"}
  with_mlp = config_lib.resolve(tiny_config("rope"))
  with_params = build_lm(with_mlp.model).init(jax.random.PRNGKey(0), tokens)["params"]
  # zero MLP output weights make the full block equal the attention-only block
  for i in range(cfg.model.num_layers):
    block = dict(with_params[f"block_{i}"])
    block["mlp"] = jax.tree.map(jnp.zeros_like, block["mlp"])
    block["attention"], block["norm_attention"] = (params[f"block_{i}"]["attention"],
                                                   params[f"block_{i}"]["norm_attention"])
    with_params[f"block_{i}"] = block
  for name in ("embed", "norm_final"):
    with_params[name] = params[name]
  np.testing.assert_allclose(np.asarray(model.apply({"params": params}, tokens)),
                             np.asarray(build_lm(with_mlp.model).apply(
                                 {"params": with_params}, tokens)), atol=1e-6)


def test_mlp_unknown_name_is_rejected():
  with pytest.raises(ConfigError,   # the registry lists its names sorted
                     match=r"model.mlp='relu' is not valid; valid: geglu, gelu, gelu_exact, moe, none, "
                           r"swiglu"):
    config_lib.resolve(tiny_config("rope", model__mlp="relu"))
