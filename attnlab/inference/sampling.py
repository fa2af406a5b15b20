"""Next-token sampling: greedy, temperature, top-k and top-p (nucleus), as pure functions.

Order (as in Hugging Face ``generate``): logits / temperature, then top-k, then top-p,
then a draw from the softmax of what is left. ``temperature=0`` is greedy (argmax;
ties go to the lowest token id) and ignores top-k / top-p.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from attnlab.registry import ConfigError


@dataclasses.dataclass(frozen=True)
class Sampling:
  """temperature >= 0 (0 = greedy); top_k >= 0 (0 = off); 0 < top_p <= 1 (1 = off)."""
  temperature: float = 0.0
  top_k: int = 0
  top_p: float = 1.0

  def validate(self, vocab_size: int) -> "Sampling":
    """Raise ``ConfigError`` naming the flag for a bad parameter; returns self."""
    t, k, p = self.temperature, self.top_k, self.top_p
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
      raise ConfigError(f"--temperature={t!r} must be a finite number >= 0 (0 = greedy)")
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= vocab_size:
      raise ConfigError(f"--top_k={k!r} must be an integer in [0, {vocab_size}] "
                        f"(0 = off; the vocabulary has {vocab_size} tokens)")
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1:
      raise ConfigError(f"--top_p={p!r} must be in (0, 1] (1 = off)")
    return self


def top_k_filter(logits, k: int):
  """Keep the ``k`` largest logits of each row (ties at the k-th value are all kept),
  set the rest to -inf. logits: [..., vocab]; ``k=0`` keeps all."""
  if k == 0 or k >= logits.shape[-1]:
    return logits
  kth = jax.lax.top_k(logits, k)[0][..., -1:]
  return jnp.where(logits >= kth, logits, -jnp.inf)


def top_p_filter(logits, p: float):
  """Nucleus: keep the smallest set of most probable tokens whose probability sums to at
  least ``p`` (always the most probable one); the rest -inf. logits: [..., vocab]."""
  if p >= 1.0:
    return logits
  order = jnp.argsort(-logits, axis=-1, stable=True)
  sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
  probs = jax.nn.softmax(sorted_logits, axis=-1)
  before = jnp.cumsum(probs, axis=-1) - probs        # mass of the tokens ranked above
  keep_sorted = before < p                           # the first token always (before = 0)
  keep = _unsort(keep_sorted, order)
  return jnp.where(keep, logits, -jnp.inf)


def _unsort(values, order):
  """Inverse of ``take_along_axis(x, order)`` on the last axis."""
  inverse = jnp.argsort(order, axis=-1)
  return jnp.take_along_axis(values, inverse, axis=-1)


def filtered_logits(logits, sampling: Sampling):
  """The logits a draw is made from: scaled by 1/temperature, then top-k, then top-p."""
  x = logits.astype(jnp.float32) / sampling.temperature
  return top_p_filter(top_k_filter(x, sampling.top_k), sampling.top_p)


def sample(key, logits, sampling: Sampling):
  """Next tokens int32 [batch] from logits [batch, vocab]."""
  if sampling.temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  return jax.random.categorical(key, filtered_logits(logits, sampling), axis=-1).astype(jnp.int32)
