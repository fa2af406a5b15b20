"""Score modifiers inside the kernels (FlexAttention's ``score_mod``), shared by
``flash`` and ``decode``.

A ``ScoreFn`` is any JAX function of one head's tile of scaled logits and its
indices, with float parameters stacked by head. The kernels receive each leaf as an
input ``[heads, *internal_shape]`` (float32; scalars become ``[1]``) whose BlockSpec
selects the running head, and ``Layout.apply`` calls the function on a tile.

It may also read *per-position operands*: arrays indexed by query position
(``q_operands``) or key position (``kv_operands``), each ``[batch, len]`` or
``[batch, len, heads]``, integer or float. The kernels load each tile's slice beside the
q and k tiles (no gather) and pass ``fn`` one head's and one row's vectors; float operands
receive gradients.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

_F32 = jnp.float32


@dataclasses.dataclass(frozen=True)
class ScoreFn:
  """A score modifier evaluated in-kernel on every visited tile.

  ``fn(params, s, q_idx, kv_idx) -> s'``: ``s`` float32 ``[rows, cols]`` scaled logits
  of one head, ``q_idx`` int32 ``[rows, 1]`` (each row's query position), ``kv_idx``
  int32 ``[1, cols]``; the result must broadcast to ``s``'s shape. ``params``: a pytree
  of float arrays, each ``[heads, ...]``; ``fn`` receives the running head's slices
  (head axis removed) in their own dtypes. Differentiable in every leaf of ``params``.

  With operands, ``fn(params, s, q_idx, kv_idx, q_ops, kv_ops)``: ``q_ops`` lists one
  ``[rows]`` vector per ``q_operands`` entry (float32 or int32; the running batch row and
  head), ``kv_ops`` one ``[cols]`` vector per ``kv_operands`` entry.
  """
  fn: Callable
  params: Any = ()
  q_operands: tuple = ()     # each [batch, q_len] or [batch, q_len, heads]
  kv_operands: tuple = ()    # each [batch, kv_len] or [batch, kv_len, heads]


def internal_shape(shape: tuple) -> tuple:
  """A leaf's per-head shape inside the kernels (scalars become [1])."""
  return tuple(shape) or (1,)


@dataclasses.dataclass(frozen=True)
class Layout:
  """What the kernels know of a ``ScoreFn`` at trace time (no arrays)."""
  fn: Callable | None
  tree: Any
  shapes: tuple       # per-head shape of each leaf
  dtypes: tuple
  operands: bool = False   # fn reads per-position operands

  @property
  def count(self) -> int:
    return len(self.shapes)

  def apply(self, s, q_idx, kv_idx, params, q_ops=(), kv_ops=()):
    """Scaled logits [rows, cols] -> modified float32 logits; ``params``: one head's
    float32 leaves in their internal shapes (cast back to the leaves' dtypes for ``fn``);
    ``q_ops`` / ``kv_ops``: the tile's operand vectors ([rows] / [cols])."""
    if self.fn is None:
      return s
    leaves = [x.reshape(shape).astype(dtype)
              for x, shape, dtype in zip(params, self.shapes, self.dtypes)]
    tree = jax.tree_util.tree_unflatten(self.tree, leaves)
    if self.operands:
      out = self.fn(tree, s, q_idx, kv_idx, list(q_ops), list(kv_ops))
    else:
      out = self.fn(tree, s, q_idx, kv_idx)
    return jnp.broadcast_to(out, s.shape).astype(_F32)


def prepare(score_fn: ScoreFn | None, heads: int, where: str):
  """-> (Layout, float32 leaves [heads, *internal_shape]); checks the leaves."""
  params, tree = jax.tree_util.tree_flatten(() if score_fn is None else score_fn.params)
  for x in params:
    if not (hasattr(x, "shape") and x.ndim >= 1 and x.shape[0] == heads
            and jnp.issubdtype(x.dtype, jnp.floating)):
      raise ValueError(f"{where}: score_fn.params leaves must be float arrays [heads={heads}, "
                       f"...]; got {getattr(x, 'dtype', type(x).__name__)}"
                       f"{tuple(getattr(x, 'shape', ()))}")
  operands = score_fn is not None and bool(score_fn.q_operands or score_fn.kv_operands)
  layout = Layout(None if score_fn is None else score_fn.fn, tree,
                  tuple(x.shape[1:] for x in params), tuple(x.dtype for x in params), operands)
  internal = [jnp.asarray(x, _F32).reshape((heads,) + internal_shape(x.shape[1:]))
              for x in params]
  return layout, internal
