"""T5 relative position bias (Raffel et al. 2020): a learned scalar per (bucket, head).

Relative position r = j - i (key minus query). Causal: n = max(-r, 0).
Bidirectional: the buckets are halved and keys after the query (r > 0) use the
upper half; n = |r|. With ``max_exact = buckets / 2`` (of the possibly halved
count): bucket = n if n < max_exact, else
min(max_exact + floor(ln(n / max_exact) / ln(max_distance / max_exact) * (buckets - max_exact)), buckets - 1).
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from attnlab.attention.pytree import pytree_dataclass
from attnlab.attention.score_mods import AdditiveBias


def t5_buckets(relative_position, *, bidirectional: bool, num_buckets: int = 32,
               max_distance: int = 128):
  """Bucket index (int32, same shape) of each relative position ``key - query``."""
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


@pytree_dataclass(data=("table",))
class T5Bias(AdditiveBias):
  """``table[bucket(j - i), h]`` added to the logits; ``table``: float ``[num_buckets, heads]``."""
  table: Any
  bidirectional: bool
  num_buckets: int
  max_distance: int

  def bias(self, q_idx, kv_idx):
    buckets = t5_buckets(kv_idx - q_idx, bidirectional=self.bidirectional,
                         num_buckets=self.num_buckets, max_distance=self.max_distance)  # [q, k]
    return jnp.moveaxis(jnp.take(jnp.asarray(self.table, jnp.float32), buckets, axis=0), -1, 0)
