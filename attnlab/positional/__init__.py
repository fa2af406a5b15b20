"""The *position* axis: how order enters a transformer.

Pure functions (``sinusoidal_embedding``, ``apply_rope``, ``alibi_slopes``,
``alibi_bias``) plus a registry ``POSITIONS`` of schemes selected by
``model.position.kind``. A scheme may act in three places, each a hook of
``PositionScheme`` that defaults to "do nothing":

- ``embed``: an absolute embedding added to the token embeddings (sinusoidal, learned);
- ``rotate_qk``: a transform of queries and keys (RoPE and its scalings, xPos);
- ``score_mod``: a score modifier on the attention logits (ALiBi, T5, KERPLE), with
  learned parameters the attention layer creates (``attention_params``).

A scheme also declares what the rest of attnlab needs to know (class attributes and
small methods, read by config defaults and validation, models, the KV cache, the
optimizer and the task trainer): its config ``fields``, whether it ``embeds``,
``rotates`` or ``biases``, whether it is ``randomizable`` and ``streamable``, how its
parameters are initialised and whether they are weight-decayed (``ParamSpec``), its
cross-field checks (``validate``) and why a KV cache cannot decode it
(``cache_refusal``).

To add a scheme: a module of its own under ``attnlab/positional/`` (``kerple.py`` is the
worked example) that subclasses ``PositionScheme``, overrides the hooks it needs and
decorates it with ``@POSITIONS.register("name")``, imported at the end of this file.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from attnlab.attention.score_mods import AlibiBias, T5Bias, t5_buckets
from attnlab.positional import rope
from attnlab.positional.rope import ROPE_SCALINGS, RopeScaling, scaled_frequencies
from attnlab.registry import ConfigError, Declared, Field, Registry

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


@dataclasses.dataclass(frozen=True)
class ParamSpec:
  """A learned parameter a scheme asks the model to create.

  ``init``: a Flax initializer ``(key, shape, dtype) -> array``; ``decay``: whether AdamW's
  weight decay applies to it.
  """
  shape: tuple[int, ...]
  init: Callable
  decay: bool


def _positive(value, context):
  return None if value > 0 else "must be > 0"


# Fields every scheme has (Ruoss et al.'s randomized positions apply to any randomizable one).
COMMON_FIELDS = (
    Field("randomize", False, "Ruoss et al.: train on sorted random positions ..."),
    Field("random_max_len", 2048, "... drawn from [0, random_max_len)", minimum=1,
          applies=lambda block: block["randomize"]),
)


class computed_fields:
  """A class attribute computed on access: ``fields`` of a scheme whose fields come from
  another registry (RoPE's scalings), so an entry registered later is included."""

  def __init__(self, fn):
    self.fn = fn

  def __get__(self, obj, cls):
    return self.fn(cls)


class PositionScheme:
  """Base scheme: no position information (every hook is the identity).

  ``cfg`` is the ``model.position`` config block, read through the declarations
  (``registry.Declared``): a declared field the block lacks reads as its default.
  """
  fields: tuple[Field, ...] = ()   # model.position fields it reads (besides kind)
  embeds = False                   # adds an absolute embedding to the token embeddings
  rotates = False                  # transforms queries and keys
  biases = False                   # adds a score modifier to the attention logits
  randomizable = False             # can train on randomized positions (Ruoss et al.)
  symmetric_qk = True              # transforms q and k alike (needed when keys are queries)
  reads_input = False              # its modifier reads the attention layer's input (FoX's
                                   # gates): score_mod(..., inputs=x), cached_score_mod

  def __init__(self, cfg):
    self.cfg = Declared(cfg, COMMON_FIELDS + tuple(type(self).fields))

  @classmethod
  def streamable(cls) -> bool:
    """Whether its positions act inside attention, so StreamingLLM can re-position cached
    keys (an absolute embedding enters at the input: every key would be stale)."""
    return not cls.embeds

  @classmethod
  def resolve(cls, block, length: int) -> None:
    """Fill derived defaults in the (mutable) ``model.position`` block for a model that sees
    sequences up to ``length`` tokens (e.g. a learned table's size)."""

  def validate(self, head_dim: int, d_model: int, seq_len: int) -> None:
    """Raise ``ConfigError`` for problems across fields (field ranges are checked from
    ``fields`` before this runs)."""

  def cache_refusal(self) -> str | None:
    """Why a KV cache cannot decode this scheme exactly, or None."""
    return None

  def reencode_position(self) -> int | None:
    """A text position p at which cached generation must re-encode every cached key: the
    encoding of a call changes once it holds p (LongRoPE's switch to its long factors), and
    transformers' ``generate`` recomputes the whole text there. None: never."""
    return None

  def table_size(self) -> int:
    """Rows of a learned position table the model must create (0 = none)."""
    return 0

  def max_length(self) -> int | None:
    """Longest sequence the scheme can encode, or None when unbounded."""
    return None

  def embedding_params(self, d_model: int) -> dict[str, ParamSpec]:
    """Parameters the model creates beside its token embedding, passed to ``embed``."""
    return {}

  def attention_params(self, num_heads: int) -> dict[str, ParamSpec]:
    """Parameters each attention layer creates, passed to ``score_mod`` (a ``reads_input``
    scheme's take ``d_model`` too: ``layer_params``)."""
    return {}

  def layer_params(self, num_heads: int, d_model: int) -> dict[str, ParamSpec]:
    """``attention_params``, given the model width where the scheme reads the layer input."""
    if self.reads_input:
      return self.attention_params(num_heads, d_model)
    return self.attention_params(num_heads)

  def cache_state(self, batch: int, capacity: int, num_heads: int) -> tuple:
    """Arrays a KV cache keeps per layer beside K and V (``reads_input`` schemes)."""
    return ()

  def embed(self, positions, d_model: int, params=None):
    """Absolute embedding ``[batch, seq, d_model]`` to add to token embeddings, or None."""
    return None

  def rotate_qk(self, q, k, positions):
    """Transform queries and keys ``[batch, seq, heads, head_dim]`` -> (q, k)."""
    return q, k

  def score_mod(self, num_heads: int, params=None, positions=None):
    """A ``ScoreMod`` on the attention logits, or None. ``params``: the layer's
    ``attention_params`` by name; ``positions``: int [batch, seq] (randomized positions)."""
    return None


POSITIONS: Registry[type[PositionScheme]] = Registry("model.position.kind")

POSITIONS.register("none")(PositionScheme)


def _even_head_dim(kind: str, head_dim: int) -> None:
  if head_dim % 2:
    raise ConfigError(f"model.position.kind={kind!r} needs an even head dim; "
                      f"model.d_model / num_heads = {head_dim}")


@POSITIONS.register("sinusoidal")
class Sinusoidal(PositionScheme):
  """Vaswani et al.'s encoding, scaled to RMS ``embed_scale``.

  The raw encoding has RMS 1/sqrt(2), far above token embeddings initialised at
  std 0.02, and would drown them; Vaswani et al. balance the two by multiplying
  tokens by sqrt(d). ``model.position.embed_scale`` (default 0.02, the token init
  std) strikes the same balance without changing the residual stream's scale.
  """
  fields = (Field("base", 10000.0, "sinusoidal base", check=_positive),
            Field("embed_scale", 0.02, "sinusoidal: RMS of the encoding (= token init std)",
                  minimum=0.0))
  embeds = True
  randomizable = True

  def validate(self, head_dim, d_model, seq_len):
    if d_model % 2:
      raise ConfigError(f"model.position.kind='sinusoidal' needs an even model.d_model; "
                        f"got {d_model}")

  def embed(self, positions, d_model, params=None):
    pe = sinusoidal_embedding(positions, d_model, self.cfg.base)
    return pe * (self.cfg.embed_scale * math.sqrt(2.0))


@POSITIONS.register("learned")
class Learned(PositionScheme):
  """A learned table of ``max_len`` absolute position embeddings (GPT-2)."""
  fields = (Field("max_len", 0, "learned table rows; 0 means the training length", minimum=0),)
  embeds = True
  randomizable = True

  @classmethod
  def resolve(cls, block, length):
    if block.max_len == 0:
      block.max_len = block.random_max_len if block.randomize else length

  def validate(self, head_dim, d_model, seq_len):
    if self.cfg.max_len < 1:
      raise ConfigError(f"model.position.max_len={self.cfg.max_len!r} must be an integer >= 1")
    check_length(self.cfg, seq_len, "data.seq_len")

  def table_size(self):
    return int(self.cfg.max_len)

  def max_length(self):
    return int(self.cfg.max_len)

  def embedding_params(self, d_model):
    return {"position_table": ParamSpec((self.table_size(), d_model),
                                        nn.initializers.normal(0.02), decay=True)}

  def embed(self, positions, d_model, params=None):
    return jnp.take(params["position_table"], positions, axis=0)


def _rotary_fraction_problem(value, context):
  return None if 0.0 < value <= 1.0 else "must be in (0, 1]"


THETA = Field("theta", 10000.0, "rope / xpos base", check=_positive)


@POSITIONS.register("rope")
class Rope(PositionScheme):
  """RoPE with ``model.position.scaling`` (an entry of ``ROPE_SCALINGS``: none, linear, ntk,
  dynamic_ntk, yarn, yarn_paper, llama3, ...), its fields and ``rotary_fraction``."""
  rotates = True
  randomizable = True

  @computed_fields
  def fields(cls):
    return (THETA,
            Field("scaling", "none", "rope: frequency scaling for longer contexts "
                  "(ROPE_SCALINGS)", choices=tuple(ROPE_SCALINGS.names())),
            *rope.scaling_fields(),
            Field("rotary_fraction", 1.0, "rope: fraction of head dims rotated",
                  check=_rotary_fraction_problem),
            Field("partial_rotary", "neox", "rope: how rotary_fraction < 1 rotates: neox (the "
                  "first fraction of dims, with a frequency ladder of their own) | p_rope (every "
                  "pair keeps full RoPE's frequency; the lowest 1 - rotary_fraction of the "
                  "frequencies become 0, their pairs unrotated: Barbero et al. 2024)",
                  choices=("neox", "p_rope")))

  @classmethod
  def resolve(cls, block, length):
    if "original_max_len" in block and block.original_max_len == 0:
      block.original_max_len = length

  def scaling(self) -> RopeScaling:
    return ROPE_SCALINGS.get(self.cfg.scaling)

  def validate(self, head_dim, d_model, seq_len):
    c, scaling = self.cfg, self.scaling()
    _even_head_dim("rope", head_dim)
    if scaling.needs_original_len and c.original_max_len < 1:
      raise ConfigError(f"model.position.original_max_len={c.original_max_len!r} must be an "
                        f"integer >= 1 with scaling={c.scaling!r}")
    problem = scaling.check(c)
    if problem:
      raise ConfigError(problem)
    if int(head_dim * c.rotary_fraction) < 2:
      raise ConfigError(f"model.position.rotary_fraction={c.rotary_fraction!r} must be in (0, 1] "
                        f"and rotate at least 2 of the {head_dim} head dims")
    problem = scaling.check_dims(c, self.rotary_dims(head_dim))
    if problem:
      raise ConfigError(problem)

  def cache_refusal(self):
    refusal = self.scaling().cache_refusal
    if refusal:
      valid = [n for n, entry in ROPE_SCALINGS.items() if entry.cache_refusal is None]
      return (f"{refusal}; KV-cache decoding supports scalings {', '.join(valid)} "
              f"(or use --nocache)")
    return None

  def reencode_position(self):
    if self.scaling().switches_at_original_len:
      return int(self.cfg.original_max_len)
    return None

  def rotary_dims(self, head_dim: int) -> int:
    """Dims the frequency ladder spans: the neox fraction, or every dim with p-RoPE."""
    if self.cfg.partial_rotary == "p_rope":
      return head_dim
    return rope.rotary_dim(head_dim, self.cfg.rotary_fraction)

  def frequencies(self, head_dim: int, seq_len: int) -> tuple[np.ndarray, float]:
    c = self.cfg
    rotary = self.rotary_dims(head_dim)
    freqs, multiplier = self.scaling().frequencies(rope.unscaled_frequencies(rotary, c.theta),
                                                   rotary, c.theta, c, seq_len)
    if c.partial_rotary == "p_rope":   # keep the highest fraction of frequencies
      freqs = np.where(np.arange(rotary // 2) < rope.p_rope_kept(rotary, c.rotary_fraction),
                       freqs, 0.0)
    return freqs, multiplier

  def rotate_qk(self, q, k, positions):
    if self.scaling().switches_at_original_len:
      # LongRoPE: the set is chosen by this call's longest position (as transformers does)
      original = int(self.cfg.original_max_len)
      short, multiplier = self.frequencies(q.shape[-1], original)
      long, _ = self.frequencies(q.shape[-1], original + 1)
      longest = jnp.max(jnp.asarray(positions)) + 1
      freqs = jnp.where(longest > original, long.astype(np.float32), short.astype(np.float32))
    else:
      freqs, multiplier = self.frequencies(q.shape[-1], q.shape[1])
    q, k = apply_rope(q, positions, frequencies=freqs), apply_rope(k, positions, frequencies=freqs)
    if multiplier != 1.0:  # YaRN temperature: logits / t with sqrt(1/t) on each of q and k
      q, k = q * jnp.asarray(multiplier, q.dtype), k * jnp.asarray(multiplier, k.dtype)
    return q, k


@POSITIONS.register("xpos")
class XPos(PositionScheme):
  """RoPE whose pairs decay with distance: q * zeta^(m/B), k * zeta^(-m/B), B = ``xpos_scale_base``."""
  fields = (THETA, Field("xpos_scale_base", 512.0, "xpos: decay scale B", check=_positive))
  rotates = True
  symmetric_qk = False   # q and k are scaled in opposite directions

  def validate(self, head_dim, d_model, seq_len):
    _even_head_dim("xpos", head_dim)

  def rotate_qk(self, q, k, positions):
    head_dim = q.shape[-1]
    freqs = rope_frequencies(head_dim, self.cfg.theta)
    angles = jnp.broadcast_to(jnp.asarray(positions, jnp.float32)[..., None] * freqs,
                              q.shape[:2] + (head_dim // 2,))
    base = self.cfg.xpos_scale_base
    up = jnp.broadcast_to(rope.xpos_scale(positions, head_dim, base, +1.0), angles.shape)
    down = jnp.broadcast_to(rope.xpos_scale(positions, head_dim, base, -1.0), angles.shape)
    return rope.rotate_half_split(q, angles, up), rope.rotate_half_split(k, angles, down)


@POSITIONS.register("alibi")
class Alibi(PositionScheme):
  """ALiBi (Press et al. 2022): a fixed linear distance penalty per head."""
  biases = True
  randomizable = True

  def score_mod(self, num_heads, params=None, positions=None):
    return alibi_bias(num_heads, positions if self.cfg.randomize else None)


@POSITIONS.register("t5")
class T5(PositionScheme):
  """Learned bias per (bucket, head), ``num_buckets`` / ``max_distance`` / ``bidirectional``."""
  fields = (Field("num_buckets", 32, "t5: relative-position buckets", minimum=1),
            Field("max_distance", 128, "t5: distance of the last bucket", minimum=1),
            Field("bidirectional", False, "t5: buckets split by sign (encoders)"))
  biases = True

  def validate(self, head_dim, d_model, seq_len):
    c = self.cfg
    exact = c.num_buckets // (4 if c.bidirectional else 2)
    if c.num_buckets < (4 if c.bidirectional else 2) or c.max_distance <= exact:
      raise ConfigError(f"model.position.max_distance={c.max_distance!r} must exceed the exact "
                        f"buckets (num_buckets={c.num_buckets}, bidirectional={c.bidirectional})")

  def attention_params(self, num_heads):
    # zeros: every head starts without a position preference (T5's table is learned)
    return {"position_bias": ParamSpec((self.cfg.num_buckets, num_heads),
                                       nn.initializers.zeros, decay=True)}

  def score_mod(self, num_heads, params=None, positions=None):
    return T5Bias(table=params["position_bias"],
                  bidirectional=bool(self.cfg.bidirectional),
                  num_buckets=int(self.cfg.num_buckets),
                  max_distance=int(self.cfg.max_distance))


def get_scheme(cfg) -> PositionScheme:
  """Instantiate the scheme named by ``cfg.kind`` (``model.position`` block)."""
  return POSITIONS.get(cfg.kind)(cfg)


def check_length(cfg, length: int, what: str = "sequence length") -> None:
  """Raise a ``ConfigError`` if ``length`` exceeds what the scheme can encode."""
  limit = get_scheme(cfg).max_length()
  if limit is not None and length > limit:
    unbounded = [n for n, cls in POSITIONS.items() if cls(cfg).max_length() is None]
    raise ConfigError(
        f"{what}={length} exceeds model.position.max_len={limit}, the size of the "
        f"'{cfg.kind}' position table; use a length <= {limit} or a scheme without a table "
        f"(valid kinds: {', '.join(unbounded)})")


from attnlab.positional import kerple  # noqa: E402,F401  (registers 'kerple')
from attnlab.positional import fox  # noqa: E402,F401  (registers 'fox')

__all__ = [
    "COMMON_FIELDS", "POSITIONS", "ROPE_SCALINGS", "RopeScaling", "AlibiBias", "ParamSpec", "PositionScheme",
    "T5Bias", "alibi_bias", "alibi_slopes", "apply_rope", "check_length", "get_scheme",
    "randomized_positions", "rope_frequencies", "scaled_frequencies", "sinusoidal_embedding",
    "t5_buckets",
]
