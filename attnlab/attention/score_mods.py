"""Score modifiers: ``score_mod(scores, q_idx, kv_idx) -> scores``.

``scores`` are float32 logits ``[batch, heads, q, k]`` (already scaled by
``1/sqrt(d)``), ``q_idx`` is ``[q, 1]`` and ``kv_idx`` is ``[1, k]``. Position
biases (ALiBi, T5) are *additive* modifiers: they subclass ``AdditiveBias`` and
define ``bias(q_idx, kv_idx)``, which lets implementations that only accept a
dense bias (``xla``) use them. Other modifiers (``soft_cap``) are general
functions of the score.

Modifiers are JAX pytrees; their float leaves (slopes, bias tables) receive
gradients through every implementation, including ``blockwise``.
"""

from __future__ import annotations

import abc
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from attnlab.attention.pytree import pytree_dataclass


class ScoreMod(abc.ABC):
  """Base class: a function of the attention logits and the positions."""

  @abc.abstractmethod
  def __call__(self, scores: jax.Array, q_idx: jax.Array, kv_idx: jax.Array) -> jax.Array:
    """Modified float32 scores, same shape as ``scores`` ``[batch, heads, q, k]``."""


class AdditiveBias(ScoreMod):
  """A modifier of the form ``scores + bias(q_idx, kv_idx)``."""

  @abc.abstractmethod
  def bias(self, q_idx: jax.Array, kv_idx: jax.Array) -> jax.Array:
    """Float32 bias broadcastable to ``[batch, heads, q, k]``."""

  def __call__(self, scores, q_idx, kv_idx):
    return scores + self.bias(q_idx, kv_idx)

  def dense(self, q_len: int, kv_len: int) -> jax.Array:
    """The whole bias, broadcastable to ``[batch, heads, q_len, kv_len]``."""
    b = self.bias(jnp.arange(q_len)[:, None], jnp.arange(kv_len)[None, :])
    return jnp.reshape(b, (1,) * (4 - b.ndim) + b.shape)


@pytree_dataclass(data=("array",))
class DenseBias(AdditiveBias):
  """An explicit bias array broadcastable to ``[batch, heads, q_len, kv_len]``."""
  array: Any

  def bias(self, q_idx, kv_idx):
    a = jnp.asarray(self.array, jnp.float32)
    a = a.reshape((1,) * (4 - a.ndim) + a.shape)
    rows = jnp.clip(q_idx[..., 0], 0, a.shape[2] - 1)
    cols = jnp.clip(kv_idx[0], 0, a.shape[3] - 1)
    return a[:, :, rows][:, :, :, cols]


@pytree_dataclass
class SoftCap(ScoreMod):
  """Logit soft-capping ``cap * tanh(score / cap)`` (Gemma 2). Not additive."""
  cap: float

  def __call__(self, scores, q_idx, kv_idx):
    return self.cap * jnp.tanh(scores / self.cap)


@pytree_dataclass(data=("first", "second"))
class Compose(ScoreMod):
  """Apply ``first`` then ``second``."""
  first: ScoreMod
  second: ScoreMod

  def __call__(self, scores, q_idx, kv_idx):
    return self.second(self.first(scores, q_idx, kv_idx), q_idx, kv_idx)


def soft_cap(cap: float) -> ScoreMod:
  if not cap > 0:
    raise ValueError(f"soft_cap: cap={cap!r} must be > 0")
  return SoftCap(cap=float(cap))


def as_score_mod(bias) -> ScoreMod | None:
  """Accept a ``ScoreMod``, a float array (-> ``DenseBias``) or None."""
  if bias is None or isinstance(bias, ScoreMod):
    return bias
  if callable(bias):
    raise TypeError("bias must be a ScoreMod instance or an array; wrap plain functions "
                    "in a ScoreMod subclass so implementations can inspect them")
  array = bias if isinstance(bias, jax.core.Tracer) else np.asarray(bias)
  if not 2 <= array.ndim <= 4:
    raise ValueError(f"bias array must have rank 2-4 (broadcastable to [batch, heads, q, k]); "
                     f"got shape {array.shape}")
  return DenseBias(array=array)
