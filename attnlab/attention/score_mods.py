"""Score modifiers: ``score_mod(scores, q_idx, kv_idx) -> scores``.

``scores`` are float32 logits ``[batch, heads, q, k]`` (already scaled by
``1/sqrt(d)``), ``q_idx`` is ``[q, 1]`` and ``kv_idx`` is ``[1, k]``. Position
biases (ALiBi, T5) are *additive* modifiers: they subclass ``AdditiveBias`` and
define ``bias(q_idx, kv_idx)``, which lets implementations that only accept a
dense bias (``xla``) use them. Other modifiers (``soft_cap``) are general
functions of the score.

Modifiers are JAX pytrees; their float leaves (slopes, bias tables) receive
gradients through every implementation, including ``blockwise``.

Every implementation calls the modifier itself (the fused Pallas kernel on each visited
tile, one head at a time, and differentiates it there), so no implementation switches on
modifier types. A modifier answers for itself the rest:

- ``per_head``: which leaves are indexed by head (declared with
  ``pytree_dataclass(data=..., per_head=...)``); ``select_heads(first, count)``, the
  modifier restricted to a range of heads (the kernel, tensor-parallel ring attention),
  slices them, so a modifier's author writes only its function;
- ``explicit_positions``: whether it reads positions other than the query/key indices.

``SCORE_MODS`` registers every modifier attnlab ships with an example instance, so the
conformance suite (``tests/test_conformance_*.py``) checks each one through every
implementation that serves it, leaf gradients included.

Inside a Pallas kernel a gather (``table[index]`` with traced indices) does not lower:
look small tables up with ``lookup(table, index)``, which is a gather elsewhere and a
sum of selects in a kernel (same values).

ALiBi and T5 live here (not in ``attnlab.positional``, which builds its schemes on them)
so that implementations can use them without depending on the position axis.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import threading
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from attnlab.attention.pytree import pytree_dataclass
from attnlab.registry import Registry


_KERNEL = threading.local()


@contextlib.contextmanager
def in_kernel():
  """While active, modifiers are being traced for a Pallas kernel (see ``lookup``)."""
  depth = getattr(_KERNEL, "depth", 0)
  _KERNEL.depth = depth + 1
  try:
    yield
  finally:
    _KERNEL.depth = depth


def lookup(table, index):
  """``table[index]`` along axis 0: table ``[n, ...]``, int ``index`` of any shape ->
  ``index.shape + table.shape[1:]``; ``index`` must lie in ``[0, n)``.

  A gather, except while traced for a Pallas kernel (``in_kernel``), where gathers do
  not lower: there it is a sum of ``n`` selects (exactly one term is non-zero, so the
  values are the same), whose gradient is a masked sum per row. The choice is made when
  traced: do not share one ``jax.jit``-wrapped caller between kernel and other uses.
  """
  table = jnp.asarray(table)
  if not getattr(_KERNEL, "depth", 0):
    return jnp.take(table, index, axis=0)
  rows = jax.lax.broadcasted_iota(jnp.int32, table.shape, 0)
  index = index.reshape(index.shape + (1,) * (table.ndim - 1))
  out = None
  for r in range(table.shape[0]):
    row = jnp.sum(jnp.where(rows == r, table, 0), axis=0)             # table[r], no slicing
    term = jnp.where(index == r, row, jnp.zeros((), table.dtype))
    out = term if out is None else out + term
  return out


class ScoreMod(abc.ABC):
  """Base class: a function of the attention logits and the positions."""

  # {leaf name: axis} of the leaves indexed by head (pytree_dataclass(per_head=...))
  per_head: dict = {}

  @abc.abstractmethod
  def __call__(self, scores: jax.Array, q_idx: jax.Array, kv_idx: jax.Array) -> jax.Array:
    """Modified float32 scores, same shape as ``scores`` ``[batch, heads, q, k]``."""

  def select_heads(self, first, count: int) -> "ScoreMod":
    """This modifier for heads ``first .. first + count - 1`` only (``first`` may be traced):
    every ``per_head`` leaf sliced along its head axis; the others as they are."""
    if not self.per_head:
      return self
    return dataclasses.replace(self, **{
        name: jax.lax.dynamic_slice_in_dim(jnp.asarray(getattr(self, name)), first, count, axis)
        for name, axis in self.per_head.items() if getattr(self, name) is not None})

  @property
  def explicit_positions(self) -> bool:
    """True when it reads positions other than the (q_idx, kv_idx) indices it is given."""
    return False


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

  def select_heads(self, first, count):
    a = jnp.asarray(self.array)
    a = a.reshape((1,) * (4 - a.ndim) + a.shape)
    if a.shape[1] == 1:             # broadcast over heads: the same for every head
      return self
    return DenseBias(array=jax.lax.dynamic_slice_in_dim(a, first, count, 1))


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

  def select_heads(self, first, count):
    return Compose(self.first.select_heads(first, count), self.second.select_heads(first, count))

  @property
  def explicit_positions(self):
    return self.first.explicit_positions or self.second.explicit_positions


@pytree_dataclass(data=("slopes", "positions"), per_head=("slopes",))
class AlibiBias(AdditiveBias):
  """ALiBi (Press et al. 2022): ``-slope_h * |p_i - p_j|``; for causal attention exactly the
  paper's ``-m_h (i - j)``.

  ``positions`` (int ``[batch, seq]``, optional) replaces the indices i, j by explicit
  positions (randomized positional encodings); computed per tile.
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

  @property
  def explicit_positions(self):
    return self.positions is not None


def t5_buckets(relative_position, *, bidirectional: bool, num_buckets: int = 32,
               max_distance: int = 128):
  """T5's bucket (int32, same shape) of each relative position ``key - query``.

  Causal: n = max(-r, 0). Bidirectional: the buckets are halved and keys after the
  query (r > 0) use the upper half; n = |r|. With ``max_exact = buckets / 2`` (of the
  possibly halved count): bucket = n if n < max_exact, else
  min(max_exact + floor(ln(n / max_exact) / ln(max_distance / max_exact) * (buckets - max_exact)),
  buckets - 1).
  """
  r = jnp.asarray(relative_position, jnp.int32)
  offset = jnp.zeros_like(r)
  if bidirectional:
    num_buckets //= 2
    offset = jnp.where(r > 0, num_buckets, 0)
    n = jnp.abs(r)
  else:
    n = jnp.maximum(-r, 0)
  max_exact = num_buckets // 2
  safe_n = jnp.maximum(n, 1).astype(jnp.float32)
  large = max_exact + (jnp.log(safe_n / max_exact) / np.log(max_distance / max_exact)
                       * (num_buckets - max_exact)).astype(jnp.int32)
  large = jnp.minimum(large, num_buckets - 1)
  return offset + jnp.where(n < max_exact, n, large)


@pytree_dataclass(data=("table",), per_head={"table": 1})
class T5Bias(AdditiveBias):
  """T5 relative bias (Raffel et al. 2020): ``table[bucket(j - i), h]`` added to the logits;
  ``table``: float ``[num_buckets, heads]``."""
  table: Any
  bidirectional: bool
  num_buckets: int
  max_distance: int

  def bias(self, q_idx, kv_idx):
    buckets = t5_buckets(kv_idx - q_idx, bidirectional=self.bidirectional,
                         num_buckets=self.num_buckets, max_distance=self.max_distance)  # [q, k]
    return jnp.moveaxis(lookup(jnp.asarray(self.table, jnp.float32), buckets), -1, 0)


@pytree_dataclass(data=("q_cum", "kv_cum"), per_head={"q_cum": 2, "kv_cum": 2},
                  per_query=("q_cum",), per_key=("kv_cum",))
class ForgetGateBias(AdditiveBias):
  """The Forgetting Transformer's bias (Lin et al. 2025): ``log prod_{l=j+1}^{i} f_l =
  F_i - F_j`` with ``F`` the cumulative sum of the log forget gates along the sequence.

  Per-position operands (``attention.operands``): ``q_cum`` float ``[batch, q_len, heads]``
  (``F`` at each query) and ``kv_cum`` ``[batch, kv_len, heads]`` (``F`` at each key); in
  self-attention both are the same ``F``. Defined for keys at or before the query (causal).
  """
  q_cum: Any
  kv_cum: Any

  def bias(self, q_idx, kv_idx):
    f_q = jnp.moveaxis(jnp.asarray(self.q_cum, jnp.float32), 2, 1)[..., :, None]   # [B, H, q, 1]
    f_k = jnp.moveaxis(jnp.asarray(self.kv_cum, jnp.float32), 2, 1)[..., None, :]  # [B, H, 1, k]
    return f_q - f_k


# ----------------------------------------------------------------------------- the registry


@dataclasses.dataclass(frozen=True)
class ScoreModSpec:
  """An entry of ``SCORE_MODS``: a modifier attnlab ships, and how to make one to test it by.

  ``example(heads, batch, length, key) -> ScoreMod``: an instance for ``heads`` heads
  (self-attention over ``length`` tokens, ``batch`` rows), its learned leaves at random
  values of the scale training gives them. The conformance suite runs every entry through
  every implementation that serves it, values and gradients (leaves included).
  """
  example: Any
  doc: str = ""


SCORE_MODS: Registry[ScoreModSpec] = Registry("score modifier")


def _normal(key, shape, scale=1.0):
  return scale * jax.random.normal(key, shape, jnp.float32)


SCORE_MODS.register("soft_cap")(ScoreModSpec(
    lambda heads, batch, length, key: SoftCap(cap=1.5),
    "cap * tanh(s / cap) (Gemma 2)"))
SCORE_MODS.register("alibi")(ScoreModSpec(
    lambda heads, batch, length, key: AlibiBias(
        slopes=jnp.abs(_normal(key, (heads,), 0.3)) + 0.05),
    "-slope_h |i - j| (learnable slopes)"))
SCORE_MODS.register("alibi_positions")(ScoreModSpec(
    lambda heads, batch, length, key: AlibiBias(
        slopes=jnp.abs(_normal(key, (heads,), 0.3)) + 0.05,
        positions=jnp.sort(jax.random.choice(jax.random.fold_in(key, 1), 4 * length,
                                             (batch, length), replace=False), axis=-1)),
    "ALiBi at explicit (randomized) positions"))
SCORE_MODS.register("t5")(ScoreModSpec(
    lambda heads, batch, length, key: T5Bias(table=_normal(key, (8, heads)),
                                             bidirectional=False, num_buckets=8, max_distance=20),
    "T5's causal bucket table"))
SCORE_MODS.register("t5_bidirectional")(ScoreModSpec(
    lambda heads, batch, length, key: T5Bias(table=_normal(key, (8, heads)),
                                             bidirectional=True, num_buckets=8, max_distance=20),
    "T5's bidirectional bucket table"))
SCORE_MODS.register("dense_bias")(ScoreModSpec(
    lambda heads, batch, length, key: DenseBias(array=_normal(key, (1, heads, length, length))),
    "an explicit bias array [1, H, N, N]"))
def _forget_example(heads, batch, length, key):
  # log forget gates as a trained FoX model has them: mostly near 0 (f ~ 0.9), some lower
  log_f = jax.nn.log_sigmoid(2.0 + _normal(key, (batch, length, heads)))
  cum = jnp.cumsum(log_f, axis=1)
  return ForgetGateBias(q_cum=cum, kv_cum=cum)


SCORE_MODS.register("forget_gate")(ScoreModSpec(
    _forget_example, "FoX: F_i - F_j, cumulative log forget gates (per-position operands)"))
SCORE_MODS.register("alibi_then_soft_cap")(ScoreModSpec(
    lambda heads, batch, length, key: Compose(
        AlibiBias(slopes=jnp.abs(_normal(key, (heads,), 0.3)) + 0.05), SoftCap(cap=2.0)),
    "Compose(ALiBi, soft-cap)"))


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
