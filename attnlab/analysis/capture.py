"""Attention maps of a trained ``TransformerLM``, captured without changing its outputs.

Each softmax ``SelfAttention`` layer sows ``attention_weights`` into the
``intermediates`` collection when that collection is mutable; the weights are
computed with the reference formula from the layer's own q, k (after RoPE/xPos),
pattern mask and position bias, so they are the same map whichever ``impl``
(xla, blockwise, pallas) computes the layer's output.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from attnlab.registry import ConfigError


class CaptureUnavailable(ConfigError):
  """The model never forms softmax attention probabilities (recurrent or sub-quadratic kinds)."""


def check_capturable(model_cfg) -> None:
  """Raise ``CaptureUnavailable`` unless every layer is softmax attention of a TransformerLM."""
  arch = model_cfg.get("arch", "transformer")
  if arch != "transformer":
    raise CaptureUnavailable(f"model.arch={arch!r} has no attention layers to analyse; "
                             f"attention maps need model.arch='transformer'")
  kind = model_cfg.attention.kind
  if kind != "softmax":
    raise CaptureUnavailable(
        f"model.attention.kind={kind!r} never forms a softmax attention matrix (its weights are "
        f"implicit in features or hashed buckets), so attention maps are unavailable; maps "
        f"need model.attention.kind='softmax'")


@functools.lru_cache(maxsize=8)
def _capture_fn(model):
  """Jitted (params, tokens) -> (logits, tuple of per-layer weights)."""

  def run(params, tokens):
    logits, state = model.apply({"params": params}, tokens, mutable=["intermediates"])
    inter = state["intermediates"]
    layers = tuple(inter[f"block_{i}"]["attention"]["attention_weights"][0]
                   for i in range(model.cfg.num_layers))
    return logits, layers

  return jax.jit(run)


def capture_attention(model, params, tokens) -> tuple[np.ndarray, np.ndarray]:
  """Logits and attention maps of ``model`` on ``tokens``.

  tokens: int [batch, seq] -> (logits float32 [batch, seq, vocab],
  weights float32 [layers, batch, heads, seq, seq]; rows of visible keys sum to 1).
  """
  check_capturable(model.cfg)
  tokens = jnp.asarray(tokens, jnp.int32)
  if tokens.ndim != 2:
    raise ValueError(f"tokens must be int [batch, seq]; got shape {tokens.shape}")
  logits, layers = _capture_fn(model)(params, tokens)
  return np.asarray(logits), np.stack([np.asarray(w) for w in layers])


def restore_model(workdir):
  """(resolved config, model, params, step) of the latest checkpoint in a training workdir."""
  from attnlab.evaluate import restore_params
  from attnlab.models import build_lm
  cfg, params, step = restore_params(workdir)
  return cfg, build_lm(cfg.model), params, step
