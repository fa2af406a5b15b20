"""KV-cache decoding with ``impl="pallas"``: the split-K decode kernel
(``pallas_kernels.decode.flash_decode``) on qualifying decode steps, against independent
oracles: the full forward pass of the same weights (dense XLA; for the sliding-window
model also the model's own Pallas forward, the fused flash kernel).

CPU only: Pallas runs in interpret mode here.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import perturbed_model, tiny_config
from conformance import TOL, _tokens, cached_and_full_logits, cached_logits, full_logits

import pallas_kernels.decode
from attnlab import config_lib
from attnlab.models import kv_cache
from attnlab.models import TransformerLM

# block_kv=4: the decode kernel cuts a 24-slot cache into 6 tiles in 2 splits, so the
# split-K combine and the dynamic tile bounds are exercised.
PALLAS = dict(model__attention__impl="pallas", model__attention__block_q=4,
              model__attention__block_kv=4)


def _models(position, **overrides):
  """(cfg, pallas model, xla model, params): the same architecture and parameters with
  impl='pallas' and impl='xla' (the dense oracle). Parameters are initialised through the
  xla model (an eager interpret-mode init would be slow) and perturbed as in
  test_kv_cache (sharp attention)."""
  overrides = {**overrides, **PALLAS}
  _, xla, params = perturbed_model(position, **{**overrides, "model__attention__impl": "xla"})
  cfg = config_lib.resolve(tiny_config(position, **overrides))
  return cfg, TransformerLM(cfg.model), xla, params


@functools.partial(jax.jit, static_argnames=("model", "layout", "prefill"))
def _decode(params, tokens, *, model, layout, prefill):
  """Prefill, then one token at a time (as test_kv_cache does, without compiling the
  model's Pallas forward pass alongside): logits [B, N, V]."""
  cache = kv_cache.init_cache(model.cfg, tokens.shape[0], layout)
  logits, cache = model.apply({"params": params}, tokens[:, :prefill], cache=cache, prefill=True)

  def step(cache, tok):
    step_logits, cache = model.apply({"params": params}, tok[:, None], cache=cache)
    return cache, step_logits[:, 0]

  cache, steps = jax.lax.scan(step, cache, tokens[:, prefill:].T)
  return jnp.concatenate([logits, steps.transpose(1, 0, 2)], axis=1), cache.length


class _Calls(list):
  """The decode kernel's keyword arguments per call (at trace time), and ``leaves``: the
  values of each call's first score-modifier leaf as they reach the kernel at run time."""

  def __init__(self):
    super().__init__()
    self.leaves = []


@pytest.fixture
def decode_calls(monkeypatch):
  """Counts calls to the decode kernel (at trace time), delegating to the real one."""
  calls = _Calls()
  real = pallas_kernels.decode.flash_decode

  def counting(*args, **kwargs):
    calls.append(kwargs)
    if kwargs.get("score_fn") is not None:   # traced under jit: read the value when it runs
      jax.debug.callback(lambda leaf: calls.leaves.append(np.asarray(leaf)),
                         kwargs["score_fn"].params[0])
    return real(*args, **kwargs)

  monkeypatch.setattr(pallas_kernels.decode, "flash_decode", counting)
  return calls


# MHA with RoPE in the default tier; the other head layouts and ALiBi in the slow tier
@pytest.mark.parametrize("kv_heads,position", [
    pytest.param(kv, pos, id=f"{name}-{pos}",
                 marks=() if (name, pos) == ("mha", "rope") else pytest.mark.slow)
    for pos in ("rope", "alibi") for kv, name in ((4, "mha"), (2, "gqa"), (1, "mqa"))])
def test_pallas_cached_decoding_equals_full_forward(position, kv_heads, decode_calls):
  cfg, model, xla, params = _models(position, model__attention__num_kv_heads=kv_heads)
  tokens = _tokens()
  layout = kv_cache.layout_for(cfg.model, tokens.shape[1])
  assert layout.capacity == 24 and layout.lookback is None
  got, length = _decode(params, jnp.asarray(tokens), model=model, layout=layout, prefill=9)
  np.testing.assert_allclose(got, full_logits(xla, params, tokens), **TOL)   # dense XLA forward
  assert int(length) == 24
  # traced by this test (its model is used by no other): the kernel ran once per layer
  assert len(decode_calls) == cfg.model.num_layers
  assert all((c["score_fn"] is not None) == (position == "alibi") for c in decode_calls)
  if position == "alibi":   # ALiBi's slopes, per head, reach the kernel: 2^(-8 (h + 1) / H)
    heads = cfg.model.attention.num_heads
    want = 2.0 ** (-8.0 * np.arange(1, heads + 1) / heads)
    assert decode_calls.leaves
    for leaf in decode_calls.leaves:
      np.testing.assert_allclose(np.ravel(leaf), want, rtol=1e-6)


def test_pallas_sliding_window_on_a_full_cache(decode_calls):
  """A full cache (slot = position) for a sliding-window ALiBi GQA model: the kernel's
  ``window`` argument does the masking; the window matters (dense causal logits differ)."""
  position, kv_heads = "alibi", 2
  window = dict(model__attention__pattern="sliding_window", model__attention__window=5)
  cfg, model, xla, params = _models(position, model__attention__num_kv_heads=kv_heads, **window)
  tokens = _tokens(length=30)
  layout = kv_cache.CacheLayout(capacity=30)   # layout_for would give a rolling cache of 6
  got, _, full = cached_and_full_logits(model, params, tokens, layout, prefill=7)
  np.testing.assert_allclose(got, full, **TOL)
  np.testing.assert_allclose(got, full_logits(xla, params, tokens), **TOL)
  _, _, causal, _ = _models(position, model__attention__num_kv_heads=kv_heads)
  assert np.abs(full_logits(causal, params, tokens) - full).max() > 1e-2
  assert len(decode_calls) == cfg.model.num_layers
  assert {c["window"] for c in decode_calls} == {5}


def test_pallas_cached_decoding_with_learned_sinks(decode_calls):
  """gpt-oss's learned sinks (GQA, a sliding window on a full cache): the decode kernel
  receives each layer's sink logits and the cached logits equal the dense XLA forward's
  (which adds the sink as an extra key); the sinks matter."""
  sinks = dict(model__attention__sink_logit="learned", model__attention__num_kv_heads=2,
               model__attention__pattern="sliding_window", model__attention__window=5)
  cfg, model, xla, params = _models("rope", **sinks)
  tokens = _tokens(length=30)
  layout = kv_cache.CacheLayout(capacity=30)
  got, _, full = cached_and_full_logits(model, params, tokens, layout, prefill=7)
  np.testing.assert_allclose(got, full, **TOL)
  np.testing.assert_allclose(got, full_logits(xla, params, tokens), **TOL)
  assert len(decode_calls) == cfg.model.num_layers
  assert all(c.get("sinks") is not None for c in decode_calls)
  far = jax.tree_util.tree_map_with_path(
      lambda path, x: x + 5.0 if "sinks" in jax.tree_util.keystr(path) else x, params)
  assert np.abs(full_logits(xla, far, tokens) - full).max() > 1e-2


def _step(model, params, cache, tokens, prefill=False):
  return model.apply({"params": params}, jnp.asarray(tokens), cache=cache, prefill=prefill)


@pytest.mark.slow
def test_decode_kernel_is_not_called_on_non_qualifying_steps(decode_calls):
  """The matrix above shows the kernel runs once per layer for a qualifying program
  (prefill + decode steps, so not at the prefill). Here it does not run: a rolling cache
  (slot != position) under impl='pallas', eagerly and under jit (where the decode mask
  is traced, so the step falls back to impl='auto')."""
  tokens = _tokens(length=10)
  window = dict(model__attention__pattern="sliding_window", model__attention__window=1,
                model__num_layers=1)
  cfg, model, _, params = _models("rope", **window)
  layout = kv_cache.layout_for(cfg.model, 10)
  assert (layout.capacity, layout.lookback) == (2, 1)
  full = full_logits(model, params, tokens)
  cache = kv_cache.init_cache(cfg.model, 2, layout)
  logits, cache = _step(model, params, cache, tokens[:, :2], prefill=True)
  logits, cache = _step(model, params, cache, tokens[:, 2:3])   # position 2 -> slot 0
  np.testing.assert_allclose(logits[:, 0], full[:, 2], **TOL)
  assert decode_calls == []
  # under jit the decode mask is traced: the step falls back to impl='auto' (same result)
  jitted = cached_logits(model, params, tokens, layout, prefill=2)[0]
  np.testing.assert_allclose(jitted[:, 2:], np.asarray(full)[:, 2:], **TOL)
  assert decode_calls == []
