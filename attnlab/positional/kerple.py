"""KERPLE-log (Chi et al. 2022, "KERPLE: Kernelized Relative Positional Embedding for
Length Extrapolation"): a learned, conditionally positive definite distance penalty.

Each head h adds ``-r1_h * log(1 + r2_h * |i - j|)`` to the attention logits, with
learned ``r1, r2 > 0``. With ``r2 -> 0`` it approaches a scaled ALiBi, and the log
makes the penalty grow ever more slowly with distance. As in the authors' code, the
parameters start at ``r1 ~ U(0, 2)`` and ``r2 ~ U(0, 1)`` per head, are held at or
above ``EPS = 0.01`` (here by ``max(r, EPS)`` in the bias, which has the same value as
the authors' in-place clamp) and are not weight-decayed.

This module is the worked example of "a new position scheme is one file": the score
modifier, the scheme with its declarations, and the registration.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from attnlab.attention.pytree import pytree_dataclass
from attnlab.attention.score_mods import SCORE_MODS, AdditiveBias, ScoreModSpec
from attnlab.positional import POSITIONS, ParamSpec, PositionScheme

EPS = 1e-2


@pytree_dataclass(data=("r1", "r2"), per_head=("r1", "r2"))
class KerpleLogBias(AdditiveBias):
  """``-max(r1_h, EPS) * log(1 + max(r2_h, EPS) * |i - j|)``; ``r1``, ``r2``: float ``[heads]``."""
  r1: Any
  r2: Any

  def bias(self, q_idx, kv_idx):
    r1 = jnp.maximum(jnp.asarray(self.r1, jnp.float32), EPS)[:, None, None]
    r2 = jnp.maximum(jnp.asarray(self.r2, jnp.float32), EPS)[:, None, None]
    distance = jnp.abs(q_idx - kv_idx).astype(jnp.float32)                  # [q, k]
    return -r1 * jnp.log1p(r2 * distance)                                    # [H, q, k]


SCORE_MODS.register("kerple")(ScoreModSpec(
    lambda heads, batch, length, key: KerpleLogBias(
        r1=jax.random.uniform(key, (heads,), jnp.float32, 0.1, 2.0),
        r2=jax.random.uniform(jax.random.fold_in(key, 1), (heads,), jnp.float32, 0.1, 1.0)),
    "KERPLE-log: -r1_h log(1 + r2_h |i - j|)"))


def _uniform(high: float):
  """Flax initializer: U(0, high)."""
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, 0.0, high)


@POSITIONS.register("kerple")
class Kerple(PositionScheme):
  """KERPLE-log: a learned logarithmic distance bias per head."""
  biases = True

  def attention_params(self, num_heads):
    return {"kerple_r1": ParamSpec((num_heads,), _uniform(2.0), decay=False),
            "kerple_r2": ParamSpec((num_heads,), _uniform(1.0), decay=False)}

  def score_mod(self, num_heads, params=None, positions=None):
    return KerpleLogBias(r1=params["kerple_r1"], r2=params["kerple_r2"])


__all__ = ["EPS", "Kerple", "KerpleLogBias"]
