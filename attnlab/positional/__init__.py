"""The *position* axis: how order enters a transformer.

Pure functions (``sinusoidal_embedding``, ``apply_rope``, ``alibi_slopes``,
``alibi_bias``) plus a registry ``POSITIONS`` of schemes selected by
``model.position.kind``. A scheme may act in three places, each a hook of
``PositionScheme`` that defaults to "do nothing":

- ``embed``: an absolute embedding added to the token embeddings (sinusoidal, learned);
- ``rotate``: a transform of queries and keys (RoPE);
- ``score_mod``: a bias on the attention logits (ALiBi).

To add a scheme, subclass ``PositionScheme``, override the hooks it needs and
decorate it with ``@POSITIONS.register("name")``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from attnlab.attention.pytree import pytree_dataclass
from attnlab.attention.score_mods import AdditiveBias
from attnlab.registry import ConfigError, Registry

# ----------------------------------------------------------------------------- functions


def sinusoidal_embedding(positions, dim: int, base: float = 10000.0) -> jax.Array:
  """Vaswani et al. absolute encoding: ``pe[2i] = sin(p / base^(2i/dim))``, ``pe[2i+1] = cos(...)``.

  positions: int or float ``[...]`` -> float32 ``[..., dim]`` (dim must be even).
  """
  if dim % 2:
    raise ValueError(f"sinusoidal_embedding: dim={dim} must be even")
  inv_freq = base ** (-np.arange(0, dim, 2, dtype=np.float64) / dim)           # [dim/2]
  angles = jnp.asarray(positions, jnp.float32)[..., None] * inv_freq.astype(np.float32)
  return jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1).reshape(*angles.shape[:-1], dim)


def rope_frequencies(head_dim: int, theta: float = 10000.0) -> np.ndarray:
  """``theta_i = theta^(-2i/head_dim)`` for i < head_dim/2, float32 ``[head_dim/2]``."""
  return (theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)).astype(np.float32)


def apply_rope(x, positions, theta: float = 10000.0) -> jax.Array:
  """Rotary position embedding (Su et al.), half-split pairing.

  Dimension ``i`` is paired with ``i + head_dim/2`` (GPT-NeoX / LLaMA layout) and
  the pair is rotated by ``positions * theta^(-2i/head_dim)``.

  x: ``[batch, seq, heads, head_dim]``; positions: int ``[seq]`` or ``[batch, seq]``.
  Returns x's shape and dtype; the rotation is computed in float32.
  """
  head_dim = x.shape[-1]
  if head_dim % 2:
    raise ValueError(f"apply_rope: head_dim={head_dim} must be even")
  angles = jnp.asarray(positions, jnp.float32)[..., None] * rope_frequencies(head_dim, theta)
  angles = jnp.broadcast_to(angles, x.shape[:2] + (head_dim // 2,))[:, :, None, :]
  cos, sin = jnp.cos(angles), jnp.sin(angles)
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1).astype(x.dtype)


def alibi_slopes(num_heads: int) -> np.ndarray:
  """ALiBi head slopes (Press et al. 2022), float32 ``[num_heads]``.

  For a power of two n: geometric with start = ratio = 2^(-8/n). Otherwise, with
  p the largest power of two <= n: slopes(p) then every second slope of
  slopes(2p), the first n - p of them.
  """
  if num_heads < 1:
    raise ValueError(f"alibi_slopes: num_heads={num_heads} must be >= 1")

  def power_of_two(n):
    start = 2.0 ** (-8.0 / n)
    return [start ** (i + 1) for i in range(n)]

  p = 2 ** int(math.floor(math.log2(num_heads)))
  slopes = power_of_two(p)
  if p < num_heads:
    slopes += power_of_two(2 * p)[0::2][: num_heads - p]
  return np.asarray(slopes, np.float32)


@pytree_dataclass(data=("slopes",))
class AlibiBias(AdditiveBias):
  """``-slope_h * |i - j|``: for causal attention exactly the paper's ``-m_h (i - j)``."""
  slopes: jax.Array  # [heads]

  def bias(self, q_idx, kv_idx):
    distance = jnp.abs(q_idx - kv_idx).astype(jnp.float32)           # [q, k]
    return -jnp.asarray(self.slopes, jnp.float32)[:, None, None] * distance   # [H, q, k]


def alibi_bias(num_heads: int) -> AlibiBias:
  """The ALiBi score modifier for ``num_heads`` heads (pass as ``bias=`` to attention)."""
  return AlibiBias(slopes=jnp.asarray(alibi_slopes(num_heads)))


# ----------------------------------------------------------------------------- schemes


class PositionScheme:
  """Base scheme: no position information (every hook is the identity).

  ``cfg`` is the ``model.position`` config block.
  """

  def __init__(self, cfg):
    self.cfg = cfg

  def table_size(self) -> int:
    """Rows of a learned position table the model must create (0 = none)."""
    return 0

  def max_length(self) -> int | None:
    """Longest sequence the scheme can encode, or None when unbounded."""
    return None

  def embed(self, positions, d_model: int, table=None):
    """Absolute embedding ``[batch, seq, d_model]`` to add to token embeddings, or None."""
    return None

  def rotate(self, x, positions):
    """Transform queries or keys ``[batch, seq, heads, head_dim]``."""
    return x

  def score_mod(self, num_heads: int):
    """A ``ScoreMod`` on the attention logits, or None."""
    return None


POSITIONS: Registry[type[PositionScheme]] = Registry("model.position.kind")

POSITIONS.register("none")(PositionScheme)


@POSITIONS.register("sinusoidal")
class Sinusoidal(PositionScheme):

  def embed(self, positions, d_model, table=None):
    return sinusoidal_embedding(positions, d_model, self.cfg.get("base", 10000.0))


@POSITIONS.register("learned")
class Learned(PositionScheme):

  def table_size(self):
    return int(self.cfg.max_len)

  def max_length(self):
    return int(self.cfg.max_len)

  def embed(self, positions, d_model, table=None):
    return jnp.take(table, positions, axis=0)


@POSITIONS.register("rope")
class Rope(PositionScheme):

  def rotate(self, x, positions):
    return apply_rope(x, positions, self.cfg.get("theta", 10000.0))


@POSITIONS.register("alibi")
class Alibi(PositionScheme):

  def score_mod(self, num_heads):
    return alibi_bias(num_heads)


def get_scheme(cfg) -> PositionScheme:
  """Instantiate the scheme named by ``cfg.kind`` (``model.position`` block)."""
  return POSITIONS.get(cfg.kind)(cfg)


def check_length(cfg, length: int, what: str = "sequence length") -> None:
  """Raise a ``ConfigError`` if ``length`` exceeds what the scheme can encode."""
  limit = get_scheme(cfg).max_length()
  if limit is not None and length > limit:
    raise ConfigError(
        f"{what}={length} exceeds model.position.max_len={limit}, the size of the "
        f"'{cfg.kind}' position table; use a length <= {limit} or a scheme without a table "
        f"(valid kinds: {', '.join(POSITIONS.names())})")


__all__ = [
    "POSITIONS", "AlibiBias", "PositionScheme", "alibi_bias", "alibi_slopes", "apply_rope",
    "check_length", "get_scheme", "rope_frequencies", "sinusoidal_embedding",
]
