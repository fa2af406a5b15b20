"""``impl="cudnn"`` (``attnlab/attention/cudnn_impl.py``), added as one file: its refusals
on this machine and for requests cuDNN cannot serve, and, where a GPU is present, its
values and gradients against the reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tiny_config

from attnlab import ConfigError, config_lib, positional
from attnlab.attention import IMPLS, choose_impl, cudnn_impl, dot_product_attention, masks
from attnlab.attention import score_mods
from attnlab.attention.strided import strided
from attnlab.models import TransformerLM

ON_GPU = jax.default_backend() == "gpu"


def _qkv(dtype=jnp.bfloat16, n=64, heads=4, kv_heads=4, d=64, seed=0):
  rng = np.random.default_rng(seed)
  q = jnp.asarray(rng.standard_normal((2, n, heads, d)), dtype)
  k, v = (jnp.asarray(rng.standard_normal((2, n, kv_heads, d)), dtype) for _ in range(2))
  return q, k, v


@pytest.mark.skipif(ON_GPU, reason="checks the refusal off a GPU")
def test_refused_off_a_gpu_with_the_reason():
  q, k, v = _qkv()
  with pytest.raises(ConfigError, match=r"impl='cudnn' runs cuDNN's fused attention on an "
                                        r"NVIDIA GPU; the JAX backend here is 'cpu'"):
    dot_product_attention(q, k, v, mask=masks.causal(), impl="cudnn")
  # a model configured with it fails the same way, naming the impl, before computing
  cfg = config_lib.resolve(tiny_config("rope", model__attention__impl="cudnn"))
  with pytest.raises(ConfigError, match="impl='cudnn'"):
    TransformerLM(cfg.model).init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))
  assert choose_impl(q, k, v, masks.causal(), None)[0] != "cudnn"


@pytest.mark.parametrize("case,match", [
    ("float32", "float16 or bfloat16"),
    ("head_dim", "multiple of 8 and at most 128"),
    ("pattern", "full, causal and causal sliding-window patterns; Strided"),
    ("modifier", "additive score modifiers only"),
])
def test_requests_cudnn_cannot_serve_are_refused_on_a_gpu(case, match, monkeypatch):
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  q, k, v = _qkv()
  mask, mod = masks.causal(), None
  if case == "float32":
    q, k, v = (x.astype(jnp.float32) for x in (q, k, v))
  elif case == "head_dim":
    q, k, v = _qkv(d=12)
  elif case == "pattern":
    mask = strided(4)
  else:
    mod = score_mods.soft_cap(30.0)
  assert match in IMPLS.get("cudnn").unsupported(q, k, v, mask, mod)
  # what it serves: causal, causal windows, full, additive biases (ALiBi), GQA
  q, k, v = _qkv(kv_heads=2)
  for ok_mask in (None, masks.causal(), masks.sliding_window(16)):
    assert IMPLS.get("cudnn").unsupported(q, k, v, ok_mask, positional.alibi_bias(4)) is None


def test_patterns_map_to_cudnns_causal_and_window_arguments():
  assert cudnn_impl._band(None) == (False, None)
  assert cudnn_impl._band(masks.full()) == (False, None)
  assert cudnn_impl._band(masks.causal()) == (True, None)
  assert cudnn_impl._band(masks.sliding_window(7)) == (True, (7, 0))
  assert cudnn_impl._band(masks.sliding_window(7) & masks.causal()) == (True, (7, 0))
  assert cudnn_impl._band(masks.sliding_window(7, 2)) is None      # a right window
  assert cudnn_impl._band(strided(3)) is None


@pytest.mark.skipif(not ON_GPU, reason="needs an NVIDIA GPU (cuDNN)")
@pytest.mark.parametrize("mask,bias,kv_heads", [
    (masks.causal(), None, 4), (masks.sliding_window(16), None, 2),
    (masks.causal(), "alibi", 1), (None, None, 4)])
def test_values_and_gradients_equal_the_reference_on_a_gpu(mask, bias, kv_heads):
  q, k, v = _qkv(kv_heads=kv_heads)
  bias = positional.alibi_bias(4) if bias == "alibi" else None

  def loss(q, k, v, impl):
    out = dot_product_attention(q, k, v, mask=mask, bias=bias, impl=impl)
    return jnp.sum(out.astype(jnp.float32) ** 2), out

  (_, got), g = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v, "cudnn")
  (_, want), g_ref = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v,
                                                                              "reference")
  np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32),
                             rtol=2e-2, atol=2e-2)
  for a, b in zip(g, g_ref):
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                               rtol=5e-2, atol=5e-2)
