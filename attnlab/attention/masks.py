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

  def tile_classes(self, q_len: int, kv_len: int, block_q: int, block_kv: int,
                   per_row: bool = False):
    """Tile classes at run time: the static ``block_map`` (numpy) for a static pattern;
    for one with per-position operands (``segments``) a traced int8 ``[nq, nk]`` computed
    from them (``[batch, nq, nk]`` with ``per_row``). Tiled implementations skip what it
    calls EMPTY and do not mask what it calls FULL."""
    return self.block_map(q_len, kv_len, block_q, block_kv)

  def dense(self, q_len: int, kv_len: int) -> jax.Array:
    """The whole mask as booleans, broadcastable to ``[batch, heads, q_len, kv_len]``."""
    return jnp.asarray(self(jnp.arange(q_len)[:, None], jnp.arange(kv_len)[None, :]))

  def validate(self, q_len: int, kv_len: int) -> None:
    """Raise ``ValueError`` if the pattern cannot apply to these lengths (e.g. an index out of range)."""

  def band(self) -> tuple[int | None, int | None] | None:
    """``(left, right)`` when the pattern is exactly the band ``i - left <= j <= i + right``
    (None: that side unbounded), else None. Kernels that only take bands ask this."""
    return None

  def is_static(self) -> bool:
    """True when the pattern holds no traced arrays and no per-position operands (its block
    map can be computed before anything runs)."""
    from attnlab.attention import operands
    return (not operands.has_operands(self)
            and not any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(self)))

  def __and__(self, other: "Mask") -> "Mask":
    return And(self, other)

  def __or__(self, other: "Mask") -> "Mask":
    return Or(self, other)


def _combine(np_op, jnp_op, a, b):
  """Combine two tile-class maps: numpy while both are static, else traced (per-row maps
  broadcast against shared ones)."""
  if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
    return np_op(a, b)
  return jnp_op(jnp.asarray(a, jnp.int8), jnp.asarray(b, jnp.int8))


@pytree_dataclass(data=("left", "right"))
class And(Mask):
  """Intersection of two patterns."""
  left: Mask
  right: Mask

  def __call__(self, q_idx, kv_idx):
    return jnp.logical_and(self.left(q_idx, kv_idx), self.right(q_idx, kv_idx))

  def band(self):
    a, b = self.left.band(), self.right.band()
    if a is None or b is None:
      return None
    tighter = lambda x, y: y if x is None else (x if y is None else min(x, y))  # noqa: E731
    return tighter(a[0], b[0]), tighter(a[1], b[1])

  def block_map(self, q_len, kv_len, block_q, block_kv):
    a = self.left.block_map(q_len, kv_len, block_q, block_kv)
    b = self.right.block_map(q_len, kv_len, block_q, block_kv)
    return np.minimum(a, b)  # EMPTY wins; FULL only if both FULL

  def tile_classes(self, q_len, kv_len, block_q, block_kv, per_row=False):
    a = self.left.tile_classes(q_len, kv_len, block_q, block_kv, per_row)
    b = self.right.tile_classes(q_len, kv_len, block_q, block_kv, per_row)
    return _combine(np.minimum, jnp.minimum, a, b)

  def validate(self, q_len, kv_len):
    self.left.validate(q_len, kv_len)
    self.right.validate(q_len, kv_len)


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

  def tile_classes(self, q_len, kv_len, block_q, block_kv, per_row=False):
    a = self.left.tile_classes(q_len, kv_len, block_q, block_kv, per_row)
    b = self.right.tile_classes(q_len, kv_len, block_q, block_kv, per_row)
    return _combine(np.maximum, jnp.maximum, a, b)

  def validate(self, q_len, kv_len):
    self.left.validate(q_len, kv_len)
    self.right.validate(q_len, kv_len)


@pytree_dataclass
class Full(Mask):
  """Every query sees every key."""

  def __call__(self, q_idx, kv_idx):
    return jnp.ones(jnp.broadcast_shapes(jnp.shape(q_idx), jnp.shape(kv_idx)), bool)

  def band(self):
    return None, None

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

  def band(self):
    return self.left, self.right

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


@pytree_dataclass(data=("q_ids", "kv_ids"), per_query=("q_ids",), per_key=("kv_ids",))
class Segments(Mask):
  """Query i sees key j iff they carry the same segment id (documents packed in one row).

  ``q_ids``: int ``[batch, q_len]``; ``kv_ids``: int ``[batch, kv_len]``: per-position
  operands (``attention.operands``), aligned with the indices ``__call__`` receives.
  Tiles are classified at run time from each tile's smallest and largest ids
  (``tile_classes``): a tile whose query and key id ranges do not meet is empty, one where
  every id is the same is full. That is sound for any ids and tight for non-decreasing
  ones (packed documents), where a row of documents costs sum(length^2), not N^2.
  """
  q_ids: Any
  kv_ids: Any

  def __call__(self, q_idx, kv_idx):
    q_ids, kv_ids = jnp.asarray(self.q_ids), jnp.asarray(self.kv_ids)
    return (q_ids[:, :, None] == kv_ids[:, None, :])[:, None]           # [B, 1, q, k]

  def is_static(self):
    return False  # data-dependent: the static block map is all PARTIAL (see tile_classes)

  def tile_classes(self, q_len, kv_len, block_q, block_kv, per_row=False):
    q_lo, q_hi = _tile_range(self.q_ids, q_len, block_q)                # [B, nq]
    k_lo, k_hi = _tile_range(self.kv_ids, kv_len, block_kv)             # [B, nk]
    meet = (q_lo[:, :, None] <= k_hi[:, None, :]) & (k_lo[:, None, :] <= q_hi[:, :, None])
    one = ((q_lo == q_hi)[:, :, None] & (k_lo == k_hi)[:, None, :]
           & (q_lo[:, :, None] == k_lo[:, None, :]))
    codes = jnp.where(one, FULL, jnp.where(meet, PARTIAL, EMPTY)).astype(jnp.int8)
    return codes if per_row else union_over_rows(codes)


def _tile_range(ids, length: int, block: int):
  """Smallest and largest id of every tile: ids [B, >= length] -> two [B, cdiv(length, block)]
  (the last tile's padding repeats the last id, which changes neither)."""
  ids = jnp.asarray(ids)[:, :length]
  n = -(-length // block)
  ids = jnp.pad(ids, ((0, 0), (0, n * block - length)), mode="edge").reshape(ids.shape[0], n, block)
  return ids.min(axis=-1), ids.max(axis=-1)


def union_over_rows(codes):
  """Tile classes of every batch row [B, nq, nk] -> one map for the whole batch: EMPTY where
  every row is empty, FULL where every row is full, else PARTIAL."""
  return jnp.where(codes.max(axis=0) == EMPTY, EMPTY,
                   jnp.where(codes.min(axis=0) == FULL, FULL, PARTIAL)).astype(jnp.int8)


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


def _block_constant_map(block_matrix: np.ndarray, pattern_block: int, q_len: int, kv_len: int,
                        block_q: int, block_kv: int) -> np.ndarray:
  """Exact tile classes of a pattern that is constant on ``pattern_block``-sized squares.

  block_matrix: bool ``[heads, n_q_blocks, n_kv_blocks]`` (pattern-block I sees block J).
  Each tile is classified from the pattern blocks it overlaps, via a summed-area table.
  """
  sat = np.pad(block_matrix.astype(np.int64).cumsum(1).cumsum(2), ((0, 0), (1, 0), (1, 0)))
  q0, q1 = _tile_bounds(q_len, block_q)
  k0, k1 = _tile_bounds(kv_len, block_kv)
  i0, i1 = (q0 // pattern_block)[:, None], (q1 // pattern_block + 1)[:, None]
  j0, j1 = (k0 // pattern_block)[None, :], (k1 // pattern_block + 1)[None, :]
  count = sat[:, i1, j1] - sat[:, i0, j1] - sat[:, i1, j0] + sat[:, i0, j0]   # [H, nq, nk]
  area = (i1 - i0) * (j1 - j0)
  return _classify((count == area).all(0), (count > 0).any(0))


_U32 = jnp.uint32


def _mix32(x: jax.Array) -> jax.Array:
  """MurmurHash3's 32-bit finaliser: a bijection on uint32 that scrambles every bit."""
  x = x ^ (x >> 16)
  x = x * _U32(0x85EBCA6B)
  x = x ^ (x >> 13)
  x = x * _U32(0xC2B2AE35)
  return x ^ (x >> 16)


def hash_ints(*values) -> jax.Array:
  """A deterministic uint32 hash of integer arrays (broadcast together); counter-based randomness
  that is the same under ``jit``, on every backend and when evaluated tile by tile."""
  h = _U32(0x9E3779B9)
  for v in values:
    h = _mix32(h ^ (jnp.asarray(v).astype(_U32) + _U32(0x7F4A7C15) + (h << 6) + (h >> 2)))
  return h


def distinct_draws(seed: int, head, row, count: int, span) -> jax.Array:
  """``count`` distinct pseudo-random integers from ``[0, span)`` per (head, row), every
  ``count``-subset equally likely (Floyd's algorithm on counter-based hashes); when
  ``span < count`` all ``span`` values are drawn and the other entries are -1.

  head, row, span: int arrays broadcast together -> int32 ``[..., count]``.
  """
  span = jnp.asarray(span, jnp.int32)
  picks = []
  for r in range(count):
    top = span - count + r                         # Floyd: draw j from [0, top]
    j = (hash_ints(seed, head, row, r) % jnp.maximum(top + 1, 1).astype(_U32)).astype(jnp.int32)
    taken = jnp.zeros(jnp.broadcast_shapes(j.shape, top.shape), bool)
    for p in picks:
      taken = taken | (p == j)
    picks.append(jnp.where(top < 0, -1, jnp.where(taken, top, j)))
  return jnp.stack(jnp.broadcast_arrays(*picks), axis=-1)


@pytree_dataclass
class Dilated(Mask):
  """Query i sees key j iff ``|i - j|`` is a multiple of ``dilation`` and ``|i - j| <= window * dilation``."""
  window: int
  dilation: int

  def __call__(self, q_idx, kv_idx):
    d = jnp.abs(q_idx - kv_idx)
    return (d % self.dilation == 0) & (d <= self.window * self.dilation)

  def block_map(self, q_len, kv_len, block_q, block_kv):
    q0, q1 = _tile_bounds(q_len, block_q)
    k0, k1 = _tile_bounds(kv_len, block_kv)
    lo = q0[:, None] - k1[None, :]            # the differences i - j in a tile form [lo, hi]
    hi = q1[:, None] - k0[None, :]
    reach = self.window * self.dilation
    a, b = np.maximum(lo, -reach), np.minimum(hi, reach)   # visible differences lie in [a, b]
    first = -(-a // self.dilation) * self.dilation         # smallest multiple of dilation >= a
    any_true = (a <= b) & (first <= b)
    all_true = (lo >= -reach) & (hi <= reach) & ((self.dilation == 1) | (lo == hi)) & any_true
    return _classify(all_true, any_true)


@pytree_dataclass
class BlockLocal(Mask):
  """Query i sees key j iff both lie in the same block of ``block`` positions (i // block == j // block)."""
  block: int

  def __call__(self, q_idx, kv_idx):
    return q_idx // self.block == kv_idx // self.block

  def block_map(self, q_len, kv_len, block_q, block_kv):
    n_q, n_kv = -(-q_len // self.block), -(-kv_len // self.block)
    eye = np.eye(n_q, n_kv, dtype=bool)[None]
    return _block_constant_map(eye, self.block, q_len, kv_len, block_q, block_kv)


@pytree_dataclass
class GlobalTokens(Mask):
  """Tokens at ``indices`` see every key and are seen by every query: ``i in G or j in G``."""
  indices: tuple[int, ...]

  def __call__(self, q_idx, kv_idx):
    shape = jnp.broadcast_shapes(jnp.shape(q_idx), jnp.shape(kv_idx))
    ok = jnp.zeros(shape, bool)
    for g in self.indices:
      ok = ok | (q_idx == g) | (kv_idx == g)
    return ok

  def validate(self, q_len, kv_len):
    bad = [g for g in self.indices if not 0 <= g < min(q_len, kv_len)]
    if bad:
      raise ValueError(f"global_tokens: indices {bad} are out of range for sequence length "
                       f"{min(q_len, kv_len)}; valid: 0..{min(q_len, kv_len) - 1}")

  def block_map(self, q_len, kv_len, block_q, block_kv):
    def per_tile(length, block):
      is_global = np.zeros(-(-length // block) * block, bool)
      is_global[[g for g in self.indices if g < length]] = True
      is_global[length:] = True          # padding does not count against "all"
      tiles = is_global.reshape(-1, block)
      real = np.arange(tiles.size).reshape(tiles.shape) < length
      return (tiles & real).any(1), tiles.all(1)
    q_any, q_all = per_tile(q_len, block_q)
    k_any, k_all = per_tile(kv_len, block_kv)
    return _classify(q_all[:, None] | k_all[None, :], q_any[:, None] | k_any[None, :])


@pytree_dataclass
class Sinks(Mask):
  """Every query sees the first ``count`` keys (StreamingLLM's attention sinks): ``j < count``."""
  count: int

  def __call__(self, q_idx, kv_idx):
    return jnp.broadcast_to(kv_idx < self.count, jnp.broadcast_shapes(jnp.shape(q_idx),
                                                                      jnp.shape(kv_idx)))

  def block_map(self, q_len, kv_len, block_q, block_kv):
    k0, k1 = _tile_bounds(kv_len, block_kv)
    row = _classify(k1 < self.count, k0 < self.count)
    return np.broadcast_to(row, (-(-q_len // block_q), len(row))).copy()


@pytree_dataclass
class RandomKeys(Mask):
  """Each query sees ``per_row`` distinct keys drawn at random (every subset of that size
  equally likely), fixed by ``seed`` and per head.

  With ``kv_len=None`` the keys of query i come from ``[0, i]`` (a causal pattern; a query
  with fewer than ``per_row`` earlier keys sees all of them); otherwise from
  ``[0, kv_len)``. Shape ``[num_heads, q, k]``.
  """
  per_row: int
  seed: int
  num_heads: int
  kv_len: int | None

  def draws(self, q_idx) -> jax.Array:
    """Key index of every draw, distinct per row: int32 ``[num_heads, q, per_row]`` for
    q_idx ``[q]`` (-1 where a causal row has fewer than ``per_row`` keys)."""
    head = jnp.arange(self.num_heads)[:, None]
    row = jnp.asarray(q_idx).reshape(1, -1)
    span = row + 1 if self.kv_len is None else self.kv_len
    return distinct_draws(self.seed, head, row, self.per_row, span)

  def __call__(self, q_idx, kv_idx):
    keys = self.draws(q_idx[..., 0])
    ok = jnp.zeros((self.num_heads, q_idx.shape[0], kv_idx.shape[-1]), bool)
    for r in range(self.per_row):
      ok = ok | (keys[:, :, r:r + 1] == kv_idx[None])
    return ok

  def block_map(self, q_len, kv_len, block_q, block_kv):
    with jax.ensure_compile_time_eval():
      keys = np.asarray(self.draws(jnp.arange(q_len)))             # [H, q, R]
    head, row = np.indices(keys.shape[:2])
    head, row = (np.repeat(x[..., None], self.per_row, -1) for x in (head, row))
    ok = (keys >= 0) & (keys < kv_len)
    pairs = np.unique(np.stack([head[ok], row[ok], keys[ok]]), axis=1)   # distinct (h, i, j)
    shape = (self.num_heads, -(-q_len // block_q), -(-kv_len // block_kv))
    count = np.zeros(shape, np.int64)
    np.add.at(count, (pairs[0], pairs[1] // block_q, pairs[2] // block_kv), 1)
    q0, q1 = _tile_bounds(q_len, block_q)
    k0, k1 = _tile_bounds(kv_len, block_kv)
    area = (q1 - q0 + 1)[:, None] * (k1 - k0 + 1)[None, :]
    return _classify((count == area).all(0), (count > 0).any(0))


@pytree_dataclass
class BigBird(Mask):
  """BigBird (Zaheer et al. 2020) on blocks of ``block`` tokens: block I sees block J iff
  ``|I - J| <= window_blocks // 2`` (sliding window), ``I < global_blocks or J < global_blocks``
  (global blocks, the ITC form), or J is one of ``random_blocks`` distinct blocks drawn per
  (head, I) (``distinct_draws``; a random block may coincide with a window or global block).

  Random blocks come from ``[0, I]`` when ``kv_len`` is None (causal use), else from all key
  blocks. Shape ``[num_heads, q, k]``.
  """
  block: int
  window_blocks: int
  global_blocks: int
  random_blocks: int
  seed: int
  num_heads: int
  kv_len: int | None

  def _random_blocks(self, q_block) -> jax.Array:
    """int32 ``[num_heads, n, random_blocks]`` for query blocks ``[n]`` (-1: no draw)."""
    head = jnp.arange(self.num_heads)[:, None]
    row = jnp.asarray(q_block).reshape(1, -1)
    span = row + 1 if self.kv_len is None else -(-self.kv_len // self.block)
    return distinct_draws(self.seed, head, row, self.random_blocks, span)

  def _blocks_see(self, q_block, kv_block):
    """q_block ``[q, 1]``, kv_block ``[1, k]`` -> bool ``[num_heads, q, k]``."""
    ok = (jnp.abs(q_block - kv_block) <= self.window_blocks // 2)
    ok = ok | (q_block < self.global_blocks) | (kv_block < self.global_blocks)
    ok = jnp.broadcast_to(ok, (self.num_heads,) + ok.shape)
    rand = self._random_blocks(q_block[..., 0])
    for r in range(self.random_blocks):
      ok = ok | (rand[:, :, r:r + 1] == kv_block[None])
    return ok

  def __call__(self, q_idx, kv_idx):
    return self._blocks_see(q_idx // self.block, kv_idx // self.block)

  def block_map(self, q_len, kv_len, block_q, block_kv):
    n_q, n_kv = -(-q_len // self.block), -(-kv_len // self.block)
    with jax.ensure_compile_time_eval():
      matrix = np.asarray(self._blocks_see(jnp.arange(n_q)[:, None], jnp.arange(n_kv)[None, :]))
    return _block_constant_map(matrix, self.block, q_len, kv_len, block_q, block_kv)


def _closed_form(mask: Mask) -> bool:
  """True when the pattern's block map is computed without evaluating it token by token."""
  if isinstance(mask, (And, Or)):
    return _closed_form(mask.left) and _closed_form(mask.right)
  return type(mask).block_map is not Mask.block_map or isinstance(mask, DenseMask)


def choose_tile(mask: Mask | None, q_len: int, kv_len: int, smallest: int, largest: int,
                overhead: int = 0) -> int:
  """The default square tile for a tiled implementation: a power of two in
  ``[smallest, largest]``.

  A tile size T costs, per visited tile of the block map, its T^2 scores (twice that
  on a PARTIAL tile, which also evaluates the pattern and masks) plus ``overhead``, a
  fixed cost per tile (loop step, slicing) in score entries. The cheapest T wins (the
  larger on a tie), so a window or block pattern gets tiles about its own extent or
  block (larger ones would mostly compute masked entries) and dense patterns get
  ``largest``. No pattern, a traced one, or one whose block map would need the
  predicate on every token pair: ``largest``.
  """
  if mask is None or not mask.is_static() or not _closed_form(mask):
    return largest
  best, best_cost, t = largest, None, largest
  while t >= smallest:
    block_map = mask.block_map(q_len, kv_len, t, t)
    full, partial = int((block_map == FULL).sum()), int((block_map == PARTIAL).sum())
    cost = full * (t * t + overhead) + partial * (2 * t * t + overhead)
    if best_cost is None or cost < best_cost:
      best, best_cost = t, cost
    t //= 2
  return best


def causal() -> Mask:
  """Query i sees key j iff j <= i."""
  return SlidingWindow(left=None, right=0)


causal_mask = causal


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


def _check_int(fn: str, name: str, value, minimum: int) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise ValueError(f"{fn}: {name}={value!r} must be an integer >= {minimum}")
  return int(value)


def dilated(window: int, dilation: int) -> Mask:
  """Query i sees key j iff ``|i - j|`` is a multiple of ``dilation`` and at most
  ``window * dilation`` (both sides; ``& causal()`` for a decoder)."""
  return Dilated(window=_check_int("dilated", "window", window, 0),
                 dilation=_check_int("dilated", "dilation", dilation, 1))


def block_local(block: int) -> Mask:
  """Attention within consecutive blocks of ``block`` tokens; the last block may be shorter."""
  return BlockLocal(block=_check_int("block_local", "block", block, 1))


def global_tokens(indices) -> Mask:
  """The tokens at ``indices`` see all keys and are seen by all queries."""
  indices = tuple(np.atleast_1d(np.asarray(indices)).tolist())
  if not indices or any(not isinstance(g, int) or g < 0 for g in indices):
    raise ValueError(f"global_tokens: indices={indices!r} must be a non-empty list of integers >= 0")
  return GlobalTokens(indices=tuple(sorted(set(indices))))


def random(per_row: int, seed: int = 0, *, num_heads: int = 1, kv_len: int | None = None) -> Mask:
  """Each query sees ``per_row`` random keys, fixed by ``seed`` and different per head.

  ``kv_len=None``: keys drawn from ``[0, i]`` (causal); an int: drawn from ``[0, kv_len)``.
  """
  return RandomKeys(per_row=_check_int("random", "per_row", per_row, 1),
                    seed=_check_int("random", "seed", seed, 0),
                    num_heads=_check_int("random", "num_heads", num_heads, 1),
                    kv_len=None if kv_len is None else _check_int("random", "kv_len", kv_len, 1))


def bigbird(block: int, window_blocks: int = 3, global_blocks: int = 1, random_blocks: int = 1,
            seed: int = 0, *, num_heads: int = 1, causal: bool = False,
            kv_len: int | None = None) -> Mask:
  """BigBird's block-sparse pattern (window + global + random blocks); see ``BigBird``.

  ``causal=True`` draws random blocks from the past and intersects with ``causal()``;
  otherwise ``kv_len`` is required so random blocks can range over all key blocks.
  """
  fn = "bigbird"
  window_blocks = _check_int(fn, "window_blocks", window_blocks, 1)
  if window_blocks % 2 == 0:
    raise ValueError(f"bigbird: window_blocks={window_blocks} must be odd (the block itself "
                     f"plus (window_blocks - 1) / 2 on each side)")
  if not causal and kv_len is None:
    raise ValueError("bigbird: kv_len is required when causal=False (random blocks range over "
                     "all key blocks)")
  mask = BigBird(block=_check_int(fn, "block", block, 1), window_blocks=window_blocks,
                 global_blocks=_check_int(fn, "global_blocks", global_blocks, 0),
                 random_blocks=_check_int(fn, "random_blocks", random_blocks, 0),
                 seed=_check_int(fn, "seed", seed, 0),
                 num_heads=_check_int(fn, "num_heads", num_heads, 1),
                 kv_len=None if causal else _check_int(fn, "kv_len", kv_len, 1))
  return mask & causal_mask() if causal else mask


def longformer(window: int, global_indices=(0,), *, causal: bool = False) -> Mask:
  """Longformer: a sliding window of ``window`` keys on each side (left only if ``causal``)
  plus global tokens at ``global_indices``."""
  window = _check_int("longformer", "window", window, 0)
  local = SlidingWindow(left=window, right=0 if causal else window)
  mask = local | global_tokens(global_indices)
  return mask & causal_mask() if causal else mask


def streaming(sinks: int, window: int) -> Mask:
  """StreamingLLM: each query sees the first ``sinks`` keys and the last ``window`` keys
  before it (and itself); causal."""
  sinks = _check_int("streaming", "sinks", sinks, 0)
  window = _check_int("streaming", "window", window, 0)
  return (Sinks(count=sinks) & causal_mask()) | SlidingWindow(left=window, right=0)


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
