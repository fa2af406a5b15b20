"""Attention patterns: which query may see which key.

A pattern is a predicate ``mask(q_idx, kv_idx) -> bool`` in the style of
FlexAttention's ``mask_mod``. ``q_idx`` has shape ``[q, 1]`` and ``kv_idx``
shape ``[1, k]`` (absolute positions); the result broadcasts to
``[batch, heads, q, k]``. Patterns compose with ``&`` and ``|``.

Every pattern also yields a *block map*: for each (query tile, key tile) pair,
``EMPTY`` (no query sees any key: skip the tile), ``FULL`` (every query sees
every key: no masking needed) or ``PARTIAL``. The block map is what lets the
blockwise and Pallas implementations skip work.

Patterns are JAX pytrees: data-dependent ones (``segments``) carry their arrays
as leaves, so they can be passed through ``jit`` and ``custom_vjp``.
"""

from __future__ import annotations

import abc
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from attnlab.attention.pytree import pytree_dataclass

EMPTY, PARTIAL, FULL = 0, 1, 2


def _tile_bounds(length: int, block: int) -> tuple[np.ndarray, np.ndarray]:
  """First and last index (inclusive) of every tile: two int64 arrays [num_tiles]."""
  starts = np.arange(0, length, block, dtype=np.int64)
  ends = np.minimum(starts + block, length) - 1
  return starts, ends


def _classify(all_true: np.ndarray, any_true: np.ndarray) -> np.ndarray:
  return np.where(all_true, FULL, np.where(any_true, PARTIAL, EMPTY)).astype(np.int8)


class Mask(abc.ABC):
  """Base class of every pattern."""

  @abc.abstractmethod
  def __call__(self, q_idx: jax.Array, kv_idx: jax.Array) -> jax.Array:
    """Boolean ``[..., q, k]`` (broadcastable to ``[batch, heads, q, k]``): may query q see key k?"""

  def block_map(self, q_len: int, kv_len: int, block_q: int, block_kv: int) -> np.ndarray:
    """Tile classification, int8 ``[cdiv(q_len, block_q), cdiv(kv_len, block_kv)]``.

    The default evaluates the predicate on the dense grid, tile row by tile row,
    when the pattern is static (no traced leaves); otherwise every tile is
    PARTIAL, which is always safe. Patterns override this with closed forms.
    """
    if not self.is_static():
      return np.full((-(-q_len // block_q), -(-kv_len // block_kv)), PARTIAL, np.int8)
    rows = []
    kv_idx = np.arange(kv_len)[None, :]
    pad = (-kv_len) % block_kv
    for q0 in range(0, q_len, block_q):
      q_idx = np.arange(q0, min(q0 + block_q, q_len))[:, None]
      with jax.ensure_compile_time_eval():  # concrete even while an outer jit traces
        m = np.asarray(self(q_idx, kv_idx), dtype=bool)
      m = np.broadcast_to(m, m.shape[:-2] + (q_idx.shape[0], kv_len))
      m = m.reshape(-1, q_idx.shape[0], kv_len)
      m = np.pad(m, ((0, 0), (0, 0), (0, pad)), constant_values=False)
      tiles = m.reshape(m.shape[0], q_idx.shape[0], -1, block_kv)
      any_true = tiles.any(axis=(0, 1, 3))
      all_true = tiles.all(axis=(0, 1, 3))
      if pad:  # the last tile's padding is not part of the pattern
        last = m[:, :, kv_len - (kv_len % block_kv or block_kv):kv_len]
        all_true[-1] = last.all()
      rows.append(_classify(all_true, any_true))
    return np.stack(rows)

  def dense(self, q_len: int, kv_len: int) -> jax.Array:
    """The whole mask as booleans, broadcastable to ``[batch, heads, q_len, kv_len]``."""
    return jnp.asarray(self(jnp.arange(q_len)[:, None], jnp.arange(kv_len)[None, :]))

  def is_static(self) -> bool:
    """True when the pattern holds no traced arrays (its block map can be computed)."""
    return not any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(self))

  def __and__(self, other: "Mask") -> "Mask":
    return And(self, other)

  def __or__(self, other: "Mask") -> "Mask":
    return Or(self, other)


@pytree_dataclass(data=("left", "right"))
class And(Mask):
  """Intersection of two patterns."""
  left: Mask
  right: Mask

  def __call__(self, q_idx, kv_idx):
    return jnp.logical_and(self.left(q_idx, kv_idx), self.right(q_idx, kv_idx))

  def block_map(self, q_len, kv_len, block_q, block_kv):
    a = self.left.block_map(q_len, kv_len, block_q, block_kv)
    b = self.right.block_map(q_len, kv_len, block_q, block_kv)
    return np.minimum(a, b)  # EMPTY wins; FULL only if both FULL


@pytree_dataclass(data=("left", "right"))
class Or(Mask):
  """Union of two patterns."""
  left: Mask
  right: Mask

  def __call__(self, q_idx, kv_idx):
    return jnp.logical_or(self.left(q_idx, kv_idx), self.right(q_idx, kv_idx))

  def block_map(self, q_len, kv_len, block_q, block_kv):
    a = self.left.block_map(q_len, kv_len, block_q, block_kv)
    b = self.right.block_map(q_len, kv_len, block_q, block_kv)
    return np.maximum(a, b)  # FULL wins; EMPTY only if both EMPTY


@pytree_dataclass
class Full(Mask):
  """Every query sees every key."""

  def __call__(self, q_idx, kv_idx):
    return jnp.ones(jnp.broadcast_shapes(jnp.shape(q_idx), jnp.shape(kv_idx)), bool)

  def block_map(self, q_len, kv_len, block_q, block_kv):
    return np.full((-(-q_len // block_q), -(-kv_len // block_kv)), FULL, np.int8)


@pytree_dataclass
class SlidingWindow(Mask):
  """Query i sees key j iff ``i - left <= j <= i + right`` (either side may be None = unbounded)."""
  left: int | None
  right: int | None

  def __call__(self, q_idx, kv_idx):
    ok = jnp.ones(jnp.broadcast_shapes(jnp.shape(q_idx), jnp.shape(kv_idx)), bool)
    if self.left is not None:
      ok = ok & (kv_idx >= q_idx - self.left)
    if self.right is not None:
      ok = ok & (kv_idx <= q_idx + self.right)
    return ok

  def block_map(self, q_len, kv_len, block_q, block_kv):
    q0, q1 = _tile_bounds(q_len, block_q)
    k0, k1 = _tile_bounds(kv_len, block_kv)
    q0, q1, k0, k1 = q0[:, None], q1[:, None], k0[None, :], k1[None, :]
    lo_any = lo_all = hi_any = hi_all = True
    if self.left is not None:   # need j >= i - left
      lo_any = k1 >= q0 - self.left
      lo_all = k0 >= q1 - self.left
    if self.right is not None:  # need j <= i + right
      hi_any = k0 <= q1 + self.right
      hi_all = k1 <= q0 + self.right
    shape = (len(q0), k0.shape[1])
    any_true = np.broadcast_to(np.logical_and(lo_any, hi_any), shape)
    all_true = np.broadcast_to(np.logical_and(lo_all, hi_all), shape)
    return _classify(all_true, any_true)


@pytree_dataclass
class PrefixLM(Mask):
  """Keys before ``prefix_len`` are visible to all queries; after that, causal."""
  prefix_len: int

  def __call__(self, q_idx, kv_idx):
    return (kv_idx < self.prefix_len) | (kv_idx <= q_idx)

  def block_map(self, q_len, kv_len, block_q, block_kv):
    k0, k1 = _tile_bounds(kv_len, block_kv)
    prefix = _classify(k1 < self.prefix_len, k0 < self.prefix_len)[None, :]
    return np.maximum(prefix, causal().block_map(q_len, kv_len, block_q, block_kv))


@pytree_dataclass(data=("q_ids", "kv_ids"))
class Segments(Mask):
  """Query i sees key j iff they carry the same segment id (documents packed in one row).

  ``q_ids``: int ``[batch, q_len]``; ``kv_ids``: int ``[batch, kv_len]``.
  """
  q_ids: Any
  kv_ids: Any

  def __call__(self, q_idx, kv_idx):
    q_ids = jnp.take(self.q_ids, q_idx[..., 0], axis=1, mode="clip")   # [B, q]
    kv_ids = jnp.take(self.kv_ids, kv_idx[0], axis=1, mode="clip")     # [B, k]
    return (q_ids[:, :, None] == kv_ids[:, None, :])[:, None]           # [B, 1, q, k]

  def is_static(self):
    return False  # data-dependent: the block map is all PARTIAL


@pytree_dataclass(data=("array",))
class DenseMask(Mask):
  """An explicit boolean mask broadcastable to ``[batch, heads, q_len, kv_len]``."""
  array: Any

  def __call__(self, q_idx, kv_idx):
    a = jnp.asarray(self.array)
    a = a.reshape((1,) * (4 - a.ndim) + a.shape)
    rows = jnp.clip(q_idx[..., 0], 0, a.shape[2] - 1)
    cols = jnp.clip(kv_idx[0], 0, a.shape[3] - 1)
    return a[:, :, rows][:, :, :, cols]

  def is_static(self):
    return not isinstance(self.array, jax.core.Tracer)


def causal() -> Mask:
  """Query i sees key j iff j <= i."""
  return SlidingWindow(left=None, right=0)


def full() -> Mask:
  """Every query sees every key (bidirectional attention)."""
  return Full()


def sliding_window(left: int, right: int = 0) -> Mask:
  """Query i sees key j iff ``i - left <= j <= i + right``; ``right=0`` is causal local attention."""
  for name, value in (("left", left), ("right", right)):
    if not isinstance(value, (int, np.integer)) or value < 0:
      raise ValueError(f"sliding_window: {name}={value!r} must be an integer >= 0")
  return SlidingWindow(left=int(left), right=int(right))


def prefix_lm(prefix_len: int) -> Mask:
  """Bidirectional over the first ``prefix_len`` keys, causal afterwards."""
  if not isinstance(prefix_len, (int, np.integer)) or prefix_len < 0:
    raise ValueError(f"prefix_lm: prefix_len={prefix_len!r} must be an integer >= 0")
  return PrefixLM(prefix_len=int(prefix_len))


def segments(q_ids, kv_ids=None) -> Mask:
  """Attention only within a segment. ``q_ids`` int ``[batch, q_len]``; ``kv_ids`` defaults to ``q_ids``."""
  q_ids = jnp.asarray(q_ids)
  kv_ids = q_ids if kv_ids is None else jnp.asarray(kv_ids)
  if q_ids.ndim != 2 or kv_ids.ndim != 2:
    raise ValueError(f"segments: ids must be [batch, seq]; got {q_ids.shape} and {kv_ids.shape}")
  return Segments(q_ids=q_ids, kv_ids=kv_ids)


def as_mask(mask) -> Mask | None:
  """Accept a ``Mask``, a boolean array (-> ``DenseMask``) or None."""
  if mask is None or isinstance(mask, Mask):
    return mask
  array = jnp.asarray(mask) if isinstance(mask, jax.core.Tracer) else np.asarray(mask)
  if array.dtype != bool or not 2 <= array.ndim <= 4:
    raise ValueError(
        f"mask must be a Mask or a boolean array of rank 2-4 broadcastable to "
        f"[batch, heads, q_len, kv_len]; got dtype {array.dtype}, shape {array.shape}")
  return DenseMask(array=array)
