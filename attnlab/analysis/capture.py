"""Attention maps of a trained ``TransformerLM``, captured without changing its outputs.

Each ``SelfAttention`` layer sows ``attention_weights`` into the ``intermediates``
collection when that collection is mutable: the matrix its kind applies
(``KindSpec.weights``), built densely from the layer's own q and k (after RoPE/xPos).
For softmax it is the reference formula with the layer's pattern mask and position
bias, so it is the same map whichever ``impl`` (xla, blockwise, pallas) computes the
output; for ``lsh``, ``performer`` and ``linear`` it is the matrix their sub-quadratic
computation implies (Reformer's chunk-and-round mixture, the random-feature or elu+1
kernel, normalised), so ``weights @ v`` is the layer's attention output.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np

from attnlab.attention import KINDS
from attnlab.models import build_lm, model_settings
from attnlab.registry import ConfigError
from attnlab.runtime import compiled_cache
from attnlab.workdir import restore_params


class CaptureUnavailable(ConfigError):
  """The model has no attention matrix to show (recurrent models, kinds without weights)."""


def check_capturable(model_cfg) -> None:
  """Raise ``CaptureUnavailable`` unless every layer is attention whose kind has weights."""
  arch = model_settings(model_cfg).arch
  if arch != "transformer":
    raise CaptureUnavailable(f"model.arch={arch!r} has no attention layers to analyse; "
                             f"attention maps need model.arch='transformer'")
  kind = model_cfg.attention.kind
  if KINDS.get(kind).weights is None:
    with_weights = ", ".join(n for n in KINDS.names() if KINDS.get(n).weights is not None)
    raise CaptureUnavailable(
        f"model.attention.kind={kind!r} registers no weights function (KindSpec.weights), so "
        f"its attention maps cannot be captured; kinds with maps: {with_weights}")


@compiled_cache(maxsize=8)
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
  cfg, params, step = restore_params(workdir)
  return cfg, build_lm(cfg.model), params, step
