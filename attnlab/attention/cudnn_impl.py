"""``impl="cudnn"``: cuDNN's fused flash attention through
``jax.nn.dot_product_attention(implementation="cudnn")``, for the requests it computes
natively. It refuses, with the reason, what it cannot serve: any backend but an NVIDIA
GPU, float32 inputs (cuDNN's kernel is float16/bfloat16), head dims that are not a
multiple of 8 up to 128, patterns other than full / causal / causal sliding window
(``Mask.band``), and score modifiers that are not additive (an additive one, such as
ALiBi or T5, is passed as a dense bias).

This module is the worked example of "a new impl is one file": the function, its
refusals and its registration.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from attnlab.attention import score_mods
from attnlab.attention.core import IMPLS, Implementation

MAX_HEAD_DIM = 128


def _band(mask):
  """(is_causal, local_window_size) for a pattern cuDNN computes, or None."""
  if mask is None:
    return False, None
  band = mask.band()
  if band == (None, None):
    return False, None
  if band is None or band[1] != 0:
    return None
  return True, (None if band[0] is None else (int(band[0]), 0))


def cudnn_unsupported(q, k, v, mask, score_mod) -> str | None:
  """Why cuDNN's fused attention cannot serve this request, or None."""
  backend = jax.default_backend()
  if backend != "gpu":
    return (f"impl='cudnn' runs cuDNN's fused attention on an NVIDIA GPU; the JAX backend here "
            f"is {backend!r}: use impl='auto', 'xla', 'blockwise' or 'reference'")
  if not q.dtype == k.dtype == v.dtype or q.dtype not in (jnp.float16, jnp.bfloat16):
    return (f"impl='cudnn' takes float16 or bfloat16 q, k, v of one dtype; got {q.dtype}, "
            f"{k.dtype}, {v.dtype} (set model.dtype='bfloat16')")
  head_dim = q.shape[-1]
  if head_dim % 8 or head_dim > MAX_HEAD_DIM or v.shape[-1] != head_dim:
    return (f"impl='cudnn' takes equal query/value head dims that are a multiple of 8 and at "
            f"most {MAX_HEAD_DIM}; got {head_dim} and {v.shape[-1]}")
  if mask is not None and (not mask.is_static() or _band(mask) is None):
    return (f"impl='cudnn' computes the full, causal and causal sliding-window patterns; "
            f"{type(mask).__name__} needs impl='pallas', 'blockwise' or 'xla'")
  if score_mod is not None and not isinstance(score_mod, score_mods.AdditiveBias):
    return (f"impl='cudnn' takes additive score modifiers only (as a dense bias); "
            f"{type(score_mod).__name__} is not additive: use impl='pallas' or 'blockwise'")
  return None


def cudnn_attention(q, k, v, *, mask=None, score_mod=None, scale: float, **unused):
  """The impl contract on ``jax.nn.dot_product_attention(implementation="cudnn")``."""
  is_causal, window = _band(mask)
  bias = None
  if score_mod is not None:
    bias = score_mod.dense(q.shape[1], k.shape[1]).astype(q.dtype)
    bias = bias.reshape((1,) * (4 - bias.ndim) + bias.shape)
  return jax.nn.dot_product_attention(q, k, v, bias=bias, scale=scale, is_causal=is_causal,
                                      local_window_size=window, implementation="cudnn")


IMPLS.register("cudnn")(Implementation(
    cudnn_attention, cudnn_unsupported,
    doc="cuDNN fused flash attention (NVIDIA GPU; float16/bfloat16; full, causal or causal "
        "sliding window; additive biases)",
    # designed for NVIDIA GPUs, so first there; it has never run here (no GPU has run any
    # of attnlab). What attnlab adds, the mapping of a request to jax.nn's arguments, is
    # tested against the reference on CPU through jax.nn's XLA path (tests/test_auto.py)
    auto_rank={"gpu": 1}, tested_on={}))
