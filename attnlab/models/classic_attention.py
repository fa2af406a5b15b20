"""Classic encoder–decoder attention: Bahdanau (additive) and Luong (multiplicative).

A decoder state ``s`` (the query) scores every encoder state ``h_i`` (the keys), the
scores become weights over the *valid* source positions, and the context is the
weighted sum of the encoder states:

- additive (Bahdanau et al. 2015): ``e_i = v^T tanh(W s + U h_i)``;
- multiplicative (Luong et al. 2015): ``dot`` ``e_i = s^T h_i``, ``general``
  ``e_i = s^T W h_i``, ``concat`` ``e_i = v^T tanh(W [s; h_i])``;
- ``alpha = softmax(e)`` over positions where ``mask`` is true (padding gets 0;
  a query with no valid key gets all zeros, never NaN), ``c = sum_i alpha_i h_i``.

Pure functions first, then thin Flax modules that own the parameters. The
module registry ``SCORES`` is looked up by ``model.rnn.luong_score``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from attnlab.registry import Registry

# ----------------------------------------------------------------------------- functions


def additive_scores(query_proj, key_proj, v) -> jax.Array:
  """``e_i = v^T tanh(W s + U h_i)`` from the projections.

  query_proj: ``W s`` [batch, A]; key_proj: ``U h`` [batch, src, A]; v: [A] -> [batch, src].
  """
  return jnp.tanh(query_proj[:, None, :] + key_proj) @ v


def dot_scores(query, keys) -> jax.Array:
  """``e_i = s^T h_i``. query: [batch, D]; keys: [batch, src, D] -> [batch, src]."""
  return jnp.einsum("bd,bsd->bs", query, keys)


def general_scores(query, keys, w) -> jax.Array:
  """``e_i = s^T W h_i``. query: [batch, Dq]; keys: [batch, src, Dk]; w: [Dq, Dk] -> [batch, src]."""
  return jnp.einsum("be,bse->bs", query @ w, keys)        # (s^T W) h: no [src, D, D] work


def concat_scores(query, keys, w, v) -> jax.Array:
  """``e_i = v^T tanh(W [s; h_i])``. query: [batch, Dq]; keys: [batch, src, Dk];
  w: [Dq + Dk, A]; v: [A] -> [batch, src]."""
  dq = query.shape[-1]
  return additive_scores(query @ w[:dq], keys @ w[dq:], v)


def masked_softmax(scores, mask) -> jax.Array:
  """Softmax over the source axis restricted to ``mask``; float32.

  scores: [batch, src]; mask: bool [batch, src] -> weights [batch, src] that sum to 1
  over valid positions, 0 at padding (all 0 when a row has no valid position).
  """
  scores = jnp.where(mask, scores.astype(jnp.float32), -jnp.inf)
  m = jax.lax.stop_gradient(jnp.max(scores, axis=-1, keepdims=True))
  p = jnp.exp(scores - jnp.where(jnp.isneginf(m), 0.0, m))
  denom = p.sum(axis=-1, keepdims=True)
  return p / jnp.where(denom == 0, 1.0, denom)


def attend(weights, values) -> jax.Array:
  """Context ``c = sum_i alpha_i h_i``. weights: [batch, src]; values: [batch, src, D] -> [batch, D]."""
  return jnp.einsum("bs,bsd->bd", weights, values.astype(jnp.float32))


# ----------------------------------------------------------------------------- modules


class AdditiveAttention(nn.Module):
  """Bahdanau attention with ``attention_dim`` A: ``W`` [Dq, A], ``U`` [Dk, A], ``v`` [A].

  ``project_keys(keys)`` computes ``U h`` once per source; ``__call__(query, keys, mask,
  key_proj)`` returns (context [batch, Dk], weights [batch, src]). A caller that passes
  ``key_proj`` at every step owns ``U`` itself (the RNN decoder projects the keys once,
  outside its scanned step), and this module then creates only ``W`` and ``v``.
  """
  attention_dim: int

  def setup(self):
    self.w = nn.Dense(self.attention_dim, use_bias=False, name="W")
    self.u = nn.Dense(self.attention_dim, use_bias=False, name="U")
    self.v = self.param("v", nn.initializers.normal(1.0 / self.attention_dim ** 0.5),
                        (self.attention_dim,))

  def project_keys(self, keys):
    return self.u(keys)

  def __call__(self, query, keys, mask, key_proj=None):
    key_proj = self.u(keys) if key_proj is None else key_proj
    weights = masked_softmax(additive_scores(self.w(query), key_proj, self.v), mask)
    return attend(weights, keys), weights


class MultiplicativeAttention(nn.Module):
  """Luong attention, ``score`` one of ``SCORES`` (dot, general, concat).

  ``__call__(query [batch, Dq], keys [batch, src, Dk], mask [batch, src])`` returns
  (context [batch, Dk], weights [batch, src]); ``key_proj`` is unused (interface only).
  """
  score: str = "general"
  attention_dim: int = 0      # concat only; 0 means the key width

  @nn.compact
  def __call__(self, query, keys, mask, key_proj=None):
    scores = SCORES.get(self.score)(self, query, keys, key_proj)
    weights = masked_softmax(scores, mask)
    return attend(weights, keys), weights


def _dot(module, query, keys, key_proj):
  if query.shape[-1] != keys.shape[-1]:
    raise ValueError(f"luong dot score needs equal query and key widths; got {query.shape[-1]} "
                     f"and {keys.shape[-1]}")
  return dot_scores(query, keys)


def _general(module, query, keys, key_proj):
  w = module.param("W", nn.initializers.lecun_normal(), (query.shape[-1], keys.shape[-1]))
  return general_scores(query, keys, w)


def _concat(module, query, keys, key_proj):
  dim = module.attention_dim or keys.shape[-1]
  w = module.param("W", nn.initializers.lecun_normal(), (query.shape[-1] + keys.shape[-1], dim))
  v = module.param("v", nn.initializers.normal(1.0 / dim ** 0.5), (dim,))
  return concat_scores(query, keys, w, v)


SCORES: Registry = Registry("model.rnn.luong_score")
SCORES.register("dot")(_dot)
SCORES.register("general")(_general)
SCORES.register("concat")(_concat)

__all__ = ["AdditiveAttention", "MultiplicativeAttention", "SCORES", "additive_scores", "attend",
           "concat_scores", "dot_scores", "general_scores", "masked_softmax"]
