"""Per-position operands: arrays a mask or score modifier carries, indexed by query or key
position (document ids, forget-gate sums, per-token temperatures).

A pattern or modifier declares them with ``pytree_dataclass(per_query=..., per_key=...)``:
a per-query leaf is ``[batch or 1, q_len]`` or ``[batch or 1, q_len, heads]`` (position on
axis 1), a per-key leaf the same with ``kv_len``. The contract: when ``__call__`` runs with
index vectors ``q_idx [q, 1]`` and ``kv_idx [1, k]``, row ``r`` of a per-query leaf belongs to
query ``q_idx[r]`` and column ``c`` of a per-key leaf to key ``kv_idx[c]`` (*aligned*). The
whole sequence with ``arange`` indices is aligned (``reference``, ``xla``); tiled
implementations hand the modifier each tile's slice (``restrict``: a slice, never a gather),
and ring attention the slices its devices hold. So an author writes the function of aligned
arrays only, e.g. ``q_ids[:, :, None] == kv_ids[:, None, :]``.

Gradients reach float operands through every implementation (the fused kernel returns
them from its backward kernels); integer ones (ids) get none.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp


def _children(obj):
  """(field name, value) of the pattern / modifier leaves that are patterns or modifiers."""
  if not dataclasses.is_dataclass(obj):
    return []
  return [(f.name, getattr(obj, f.name)) for f in dataclasses.fields(obj)
          if dataclasses.is_dataclass(getattr(obj, f.name))]


def collect(obj) -> list[tuple[str, Any]]:
  """Every operand of ``obj`` and the patterns / modifiers inside it, in a fixed order:
  ``[("q" or "kv", array), ...]``."""
  if obj is None:
    return []
  out = []
  for name in getattr(obj, "per_query", ()):
    if getattr(obj, name) is not None:
      out.append(("q", getattr(obj, name)))
  for name in getattr(obj, "per_key", ()):
    if getattr(obj, name) is not None:
      out.append(("kv", getattr(obj, name)))
  for _, child in _children(obj):
    out.extend(collect(child))
  return out


def has_operands(obj) -> bool:
  return bool(collect(obj))


def replace(obj, arrays: list):
  """``obj`` with its operands (``collect`` order) replaced by ``arrays``."""
  if obj is None:
    return None
  it = iter(arrays)

  def rebuild(o):
    if not dataclasses.is_dataclass(o):
      return o
    changes = {}
    for name in tuple(getattr(o, "per_query", ())) + tuple(getattr(o, "per_key", ())):
      if getattr(o, name) is not None:
        changes[name] = next(it)
    for name, child in _children(o):
      if name not in changes:
        changes[name] = rebuild(child)
    return dataclasses.replace(o, **changes) if changes else o

  out = rebuild(obj)
  leftover = list(it)
  if leftover:
    raise ValueError(f"operands.replace: {len(leftover)} arrays too many")
  return out


def _slice(x, start, size):
  return jax.lax.dynamic_slice_in_dim(jnp.asarray(x), start, size, axis=1)


def restrict(obj, q_start, q_size: int, kv_start, kv_size: int):
  """``obj`` aligned with queries ``q_start .. q_start + q_size - 1`` and keys ``kv_start ..``:
  each operand sliced along its position axis (starts may be traced)."""
  ops = collect(obj)
  if not ops:
    return obj
  return replace(obj, [_slice(x, q_start, q_size) if side == "q" else _slice(x, kv_start, kv_size)
                       for side, x in ops])


def pad(obj, q_len: int, kv_len: int):
  """``obj`` with its operands padded (edge values) to ``q_len`` queries and ``kv_len`` keys,
  so every tile of a padded sequence can be sliced. Edge values keep a tile's minimum and
  maximum, which run-time tile classes read."""
  ops = collect(obj)
  if not ops:
    return obj

  def grow(x, length):
    x = jnp.asarray(x)
    widths = [(0, 0)] * x.ndim
    widths[1] = (0, max(0, length - x.shape[1]))
    return jnp.pad(x, widths, mode="edge")

  return replace(obj, [grow(x, q_len if side == "q" else kv_len) for side, x in ops])


def check_lengths(obj, q_len: int, kv_len: int, what: str) -> None:
  """Raise ``ValueError`` when an operand's position axis does not match the sequence."""
  for side, x in collect(obj):
    want = q_len if side == "q" else kv_len
    shape = jnp.shape(x)
    if len(shape) < 2 or shape[1] != want:
      raise ValueError(f"{what}: a per-{'query' if side == 'q' else 'key'} operand has shape "
                       f"{tuple(shape)}; it must be [batch, {want}] or [batch, {want}, heads] "
                       f"(position on axis 1)")


def _paths(obj, prefix=()) -> list[tuple[tuple[str, ...], str]]:
  """(field path, "q" or "kv") of every operand, in ``collect`` order."""
  if obj is None or not dataclasses.is_dataclass(obj):
    return []
  out = [(prefix + (name,), "q") for name in getattr(obj, "per_query", ())
         if getattr(obj, name) is not None]
  out += [(prefix + (name,), "kv") for name in getattr(obj, "per_key", ())
          if getattr(obj, name) is not None]
  for name, child in _children(obj):
    out.extend(_paths(child, prefix + (name,)))
  return out


def _set(obj, path, value):
  if len(path) == 1:
    return dataclasses.replace(obj, **{path[0]: value})
  return dataclasses.replace(obj, **{path[0]: _set(getattr(obj, path[0]), path[1:], value)})


@dataclasses.dataclass(frozen=True)
class Slots:
  """Where a stripped pattern or modifier's operands go back (``strip`` / ``insert``)."""
  paths: tuple
  sides: tuple


def strip(obj):
  """-> (``obj`` with every operand set to None, its operands, ``Slots`` to put them back)."""
  found = _paths(obj)
  arrays = [x for _, x in collect(obj)]
  for path, _ in found:
    obj = _set(obj, path, None)
  return obj, arrays, Slots(tuple(p for p, _ in found), tuple(s for _, s in found))


def insert(stripped, slots: Slots, arrays):
  """Put operands back into a stripped pattern or modifier."""
  for path, x in zip(slots.paths, arrays):
    stripped = _set(stripped, path, x)
  return stripped
