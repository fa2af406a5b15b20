"""The Sparse Transformer's *strided* pattern (Child et al. 2019, "Generating Long
Sequences with Sparse Transformers", section 4.2), both heads' sets in one mask:

  query i sees key j  iff  j <= i  and  (i - j < stride  or  (i - j) mod stride == 0),

i.e. the last ``stride`` positions (the local head) plus every ``stride``-th earlier
position (the strided head). With ``stride ~ sqrt(N)`` each query sees about
``2 sqrt(N)`` keys.

This module is the worked example of "a new pattern is one file": the mask (predicate
and closed-form block map), and its registration with the field it reads. Config
defaults, validation (``stride=0`` is refused before anything compiles), the flags,
the KV cache (unbounded look-back: a full cache), the Pallas kernel (an index-only
predicate runs in-kernel) and analysis pick it up from the declaration.
"""

from __future__ import annotations

import numpy as np

from attnlab.attention import masks
from attnlab.attention.patterns import PATTERNS, PatternSpec
from attnlab.attention.pytree import pytree_dataclass
from attnlab.registry import Field


@pytree_dataclass
class Strided(masks.Mask):
  """``j <= i and (i - j < stride or (i - j) % stride == 0)``."""
  stride: int

  def __call__(self, q_idx, kv_idx):
    d = q_idx - kv_idx
    return (d >= 0) & ((d < self.stride) | (d % self.stride == 0))

  def block_map(self, q_len, kv_len, block_q, block_kv):
    q0, q1 = masks._tile_bounds(q_len, block_q)
    k0, k1 = masks._tile_bounds(kv_len, block_kv)
    lo = q0[:, None] - k1[None, :]          # a tile holds every difference i - j in [lo, hi]
    hi = q1[:, None] - k0[None, :]
    s = self.stride
    a = np.maximum(lo, 0)                   # the causal part of [lo, hi]
    next_multiple = -(-a // s) * s
    any_true = (a <= hi) & ((a < s) | (next_multiple <= hi))
    all_true = (lo >= 0) & ((hi < s) | (s == 1) | ((lo == hi) & (lo % s == 0)))
    return masks._classify(all_true, any_true)


def strided(stride: int) -> masks.Mask:
  """The strided pattern for ``stride >= 1`` (a causal decoder pattern)."""
  if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or stride < 1:
    raise ValueError(f"strided: stride={stride!r} must be an integer >= 1")
  return Strided(stride=int(stride))


STRIDE = Field("stride", 16, "strided: local span and step of the strided keys (~sqrt(N))",
               minimum=1)

PATTERNS.register("strided")(PatternSpec(
    lambda cfg, layer: strided(cfg.stride), causal=True, fields=(STRIDE,),
    doc="Sparse Transformer: i - j < stride or (i - j) % stride == 0, causal"))
