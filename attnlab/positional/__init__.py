"""The *position* axis: how order enters a transformer.

Pure functions (``sinusoidal_embedding``, ``apply_rope``, ``alibi_slopes``,
``alibi_bias``) plus a registry ``POSITIONS`` of schemes selected by
``model.position.kind``. A scheme may act in three places, each a hook of
``PositionScheme`` that defaults to "do nothing":

- ``embed``: an absolute embedding added to the token embeddings (sinusoidal, learned);
- ``rotate_qk``: a transform of queries and keys (RoPE and its scalings, xPos);
- ``score_mod``: a bias on the attention logits (ALiBi, T5), optionally with a
  learned table the model creates (``bias_table_shape``).

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
from attnlab.positional import rope
from attnlab.positional.rope import ROPE_SCALINGS, scaled_frequencies
from attnlab.positional.t5 import T5Bias, t5_buckets
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


def apply_rope(x, positions, theta: float = 10000.0, *, frequencies=None) -> jax.Array:
  """Rotary position embedding (Su et al.), half-split pairing.

  Dimension ``i`` is paired with ``i + r/2`` (GPT-NeoX / LLaMA layout) and the pair
  is rotated by ``positions * theta_i`` with ``theta_i = theta^(-2i/r)``, where
  ``r = head_dim`` (or ``2 * len(frequencies)`` when given: partial rotary, the
  remaining dims pass through).

  x: ``[batch, seq, heads, head_dim]``; positions: int ``[seq]`` or ``[batch, seq]``.
  Returns x's shape and dtype; the rotation is computed in float32.
  """
  if frequencies is None:
    if x.shape[-1] % 2:
      raise ValueError(f"apply_rope: head_dim={x.shape[-1]} must be even")
    frequencies = rope_frequencies(x.shape[-1], theta)
  angles = jnp.asarray(positions, jnp.float32)[..., None] * jnp.asarray(frequencies, jnp.float32)
  angles = jnp.broadcast_to(angles, x.shape[:2] + angles.shape[-1:])
  return rope.rotate_half_split(x, angles)


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


@pytree_dataclass(data=("slopes", "positions"))
class AlibiBias(AdditiveBias):
  """``-slope_h * |p_i - p_j|``: for causal attention exactly the paper's ``-m_h (i - j)``.

  ``positions`` (int ``[batch, seq]``, optional) replaces the indices i, j by
  explicit positions (randomized positional encodings); computed per tile.
  """
  slopes: jax.Array  # [heads]
  positions: jax.Array | None = None

  def bias(self, q_idx, kv_idx):
    slopes = jnp.asarray(self.slopes, jnp.float32)
    if self.positions is None:
      distance = jnp.abs(q_idx - kv_idx).astype(jnp.float32)                 # [q, k]
      return -slopes[:, None, None] * distance                                # [H, q, k]
    pos = jnp.asarray(self.positions)
    p_q = jnp.take(pos, q_idx[:, 0], axis=1, mode="clip")                    # [B, q]
    p_k = jnp.take(pos, kv_idx[0], axis=1, mode="clip")                      # [B, k]
    distance = jnp.abs(p_q[:, :, None] - p_k[:, None, :]).astype(jnp.float32)
    return -slopes[None, :, None, None] * distance[:, None]                   # [B, H, q, k]


def alibi_bias(num_heads: int, positions=None) -> AlibiBias:
  """The ALiBi score modifier for ``num_heads`` heads (pass as ``bias=`` to attention)."""
  return AlibiBias(slopes=jnp.asarray(alibi_slopes(num_heads)), positions=positions)


def randomized_positions(key, seq_len: int, max_len: int) -> jax.Array:
  """Ruoss et al. (2023): ``seq_len`` distinct positions drawn from ``[0, max_len)``, sorted.

  Returns int32 ``[seq_len]``; used in place of ``0..seq_len-1`` during training.
  """
  if seq_len > max_len:
    raise ValueError(f"randomized positions: seq_len={seq_len} exceeds max_len={max_len}")
  return jnp.sort(jax.random.choice(key, max_len, (seq_len,), replace=False)).astype(jnp.int32)


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

  def rotate_qk(self, q, k, positions):
    """Transform queries and keys ``[batch, seq, heads, head_dim]`` -> (q, k)."""
    return q, k

  def bias_table_shape(self, num_heads: int) -> tuple[int, ...] | None:
    """Shape of a learned bias table the attention layer must create and pass to
    ``score_mod`` (None = no table)."""
    return None

  def score_mod(self, num_heads: int, table=None, positions=None):
    """A ``ScoreMod`` on the attention logits, or None. ``positions``: int [batch, seq]."""
    return None


POSITIONS: Registry[type[PositionScheme]] = Registry("model.position.kind")

POSITIONS.register("none")(PositionScheme)


@POSITIONS.register("sinusoidal")
class Sinusoidal(PositionScheme):
  """Vaswani et al.'s encoding, scaled to RMS ``embed_scale`` (when set).

  The raw encoding has RMS 1/sqrt(2), far above token embeddings initialised at
  std 0.02, and would drown them; Vaswani et al. balance the two by multiplying
  tokens by sqrt(d). ``model.position.embed_scale`` (default 0.02, the token init
  std) strikes the same balance without changing the residual stream's scale.
  """

  def embed(self, positions, d_model, table=None):
    pe = sinusoidal_embedding(positions, d_model, self.cfg.get("base", 10000.0))
    rms = self.cfg.get("embed_scale", None)
    return pe if rms is None else pe * (rms * math.sqrt(2.0))


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
  """RoPE with ``model.position.scaling`` (none | linear | ntk | dynamic_ntk | yarn),
  ``scale_factor`` s, ``original_max_len`` and ``rotary_fraction``."""

  def frequencies(self, head_dim: int, seq_len: int) -> tuple[np.ndarray, float]:
    c = self.cfg
    return scaled_frequencies(
        rope.rotary_dim(head_dim, c.get("rotary_fraction", 1.0)), c.get("theta", 10000.0),
        c.get("scaling", "none"), c.get("scale_factor", 1.0), c.get("original_max_len", 0),
        seq_len, c.get("yarn_alpha", 1.0), c.get("yarn_beta", 32.0))

  def rotate_qk(self, q, k, positions):
    freqs, multiplier = self.frequencies(q.shape[-1], q.shape[1])
    q, k = apply_rope(q, positions, frequencies=freqs), apply_rope(k, positions, frequencies=freqs)
    if multiplier != 1.0:  # YaRN temperature: logits / t with sqrt(1/t) on each of q and k
      q, k = q * jnp.asarray(multiplier, q.dtype), k * jnp.asarray(multiplier, k.dtype)
    return q, k


@POSITIONS.register("xpos")
class XPos(PositionScheme):
  """RoPE whose pairs decay with distance: q * zeta^(m/B), k * zeta^(-m/B), B = ``xpos_scale_base``."""

  def rotate_qk(self, q, k, positions):
    head_dim = q.shape[-1]
    freqs = rope_frequencies(head_dim, self.cfg.get("theta", 10000.0))
    angles = jnp.broadcast_to(jnp.asarray(positions, jnp.float32)[..., None] * freqs,
                              q.shape[:2] + (head_dim // 2,))
    base = self.cfg.get("xpos_scale_base", 512.0)
    up = jnp.broadcast_to(rope.xpos_scale(positions, head_dim, base, +1.0), angles.shape)
    down = jnp.broadcast_to(rope.xpos_scale(positions, head_dim, base, -1.0), angles.shape)
    return rope.rotate_half_split(q, angles, up), rope.rotate_half_split(k, angles, down)


@POSITIONS.register("alibi")
class Alibi(PositionScheme):

  def score_mod(self, num_heads, table=None, positions=None):
    return alibi_bias(num_heads, positions if self.cfg.get("randomize", False) else None)


@POSITIONS.register("t5")
class T5(PositionScheme):
  """Learned bias per (bucket, head), ``num_buckets`` / ``max_distance`` / ``bidirectional``."""

  def bias_table_shape(self, num_heads):
    return (self.cfg.get("num_buckets", 32), num_heads)

  def score_mod(self, num_heads, table=None, positions=None):
    return T5Bias(table=table, bidirectional=bool(self.cfg.get("bidirectional", False)),
                  num_buckets=int(self.cfg.get("num_buckets", 32)),
                  max_distance=int(self.cfg.get("max_distance", 128)))


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
    "POSITIONS", "ROPE_SCALINGS", "AlibiBias", "PositionScheme", "T5Bias", "alibi_bias",
    "alibi_slopes", "apply_rope", "check_length", "randomized_positions", "get_scheme", "rope_frequencies",
    "scaled_frequencies", "sinusoidal_embedding", "t5_buckets",
]
