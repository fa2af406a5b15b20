"""Default tiles chosen from the pattern (``masks.choose_tile``) and how
``dot_product_attention`` uses them.

The oracle for the choice evaluates each pattern token by token in numpy (not its
closed-form block map), counts at every candidate size the tiles whose pairs are all
visible (full) and those with some (partial), and takes the cheapest size under the
documented cost, full x (T^2 + overhead) + partial x (2 T^2 + overhead), the larger one
on a tie.
"""

import jax.numpy as jnp
import numpy as np
import pytest

from attnlab.attention import IMPLS, core, dot_product_attention, masks

import oracles


def oracle_tile(dense: np.ndarray, smallest: int, largest: int, overhead: int) -> int:
  """dense: bool [q, k] (or [H, q, k]) -> the cheapest power-of-two tile."""
  dense = dense.reshape((-1,) + dense.shape[-2:]).any(axis=0)
  best, best_cost, t = None, None, largest
  while t >= smallest:
    full = partial = 0
    for i in range(0, dense.shape[0], t):
      for j in range(0, dense.shape[1], t):
        tile = dense[i:i + t, j:j + t]          # the part inside the sequence
        full += bool(tile.all())
        partial += bool(tile.any() and not tile.all())
    cost = full * (t * t + overhead) + partial * (2 * t * t + overhead)
    if best_cost is None or cost < best_cost:
      best, best_cost = t, cost
    t //= 2
  return best


N = 1024
PATTERNS = {
    "causal": (masks.causal(), oracles.dense_np(oracles.np_causal, N, N)),
    "window_24": (masks.sliding_window(24), oracles.dense_np(oracles.np_window(24, 0), N, N)),
    "window_300": (masks.sliding_window(300), oracles.dense_np(oracles.np_window(300, 0), N, N)),
    "dilated": (masks.dilated(8, 4) & masks.causal(),
                oracles.dense_np(lambda i, j: oracles.np_dilated(8, 4)(i, j) & (j <= i), N, N)),
    "longformer": (masks.longformer(40, (0, 500), causal=True),
                   oracles.dense_np(oracles.np_longformer(40, (0, 500), True), N, N)),
    "block_local": (masks.block_local(32), oracles.dense_np(oracles.np_block_local(32), N, N)),
}


@pytest.mark.parametrize("name", sorted(PATTERNS))
@pytest.mark.parametrize("smallest,largest,overhead", [(16, 512, 0), (16, 256, 2**12),
                                                       (128, 256, 2**15)])
def test_choice_is_the_cheapest_tile_counted_token_by_token(name, smallest, largest, overhead):
  mask, dense = PATTERNS[name]
  assert masks.choose_tile(mask, N, N, smallest, largest, overhead) == oracle_tile(
      dense, smallest, largest, overhead)


def test_windows_get_small_tiles_and_dense_patterns_large_ones():
  # without a per-tile overhead a window of 24 gets the smallest tile; with one, causal
  # at 8k gets the largest (hand count: 512 -> 120 full + 16 partial tiles, 44.3M;
  # 256 -> 496 + 32, 54.0M)
  assert masks.choose_tile(masks.sliding_window(24), N, N, 16, 512) == 16
  assert masks.choose_tile(masks.causal(), 8192, 8192, 16, 512, 2**15) == 512
  assert masks.choose_tile(None, N, N, 16, 512) == 512
  # BigBird gets its own block: its tiles are then full, no predicate evaluated
  bigbird = masks.bigbird(64, 3, 1, 2, seed=0, num_heads=4, causal=True)
  assert masks.choose_tile(bigbird, 16384, 16384, 64, 256, 2**15) == 64
  # a dense boolean mask is priced too (its block map costs no more than the array)
  tril = np.tril(np.ones((64, 64), bool))
  assert masks.choose_tile(masks.as_mask(jnp.asarray(tril)), 64, 64, 16, 512) == oracle_tile(
      tril, 16, 512, 0)
  # a predicate without a closed-form block map keeps the largest (no N^2 evaluation)
  from attnlab.attention.pytree import pytree_dataclass

  @pytree_dataclass
  class Parity(masks.Mask):
    def __call__(self, q_idx, kv_idx):
      return (q_idx + kv_idx) % 2 == 0

  assert masks.choose_tile(Parity(), N, N, 16, 512) == 512


def test_dot_product_attention_passes_the_chosen_tile_unless_given(monkeypatch):
  seen = []
  spec = IMPLS.get("blockwise")

  def spy(q, k, v, **kw):
    seen.append((kw["block_q"], kw["block_kv"]))
    return spec.fn(q, k, v, **kw)

  monkeypatch.setitem(IMPLS._entries, "blockwise", core.dataclasses.replace(spec, fn=spy))
  q = jnp.zeros((1, 2048, 1, 8))
  window = masks.sliding_window(16)
  want = masks.choose_tile(window, 2048, 2048, *spec.tiles)
  dot_product_attention(q, q, q, mask=window, impl="blockwise")
  dot_product_attention(q, q, q, mask=window, impl="blockwise", block_q=0, block_kv=0)  # config
  dot_product_attention(q, q, q, mask=window, impl="blockwise", block_q=64, block_kv=32)
  dot_product_attention(q, q, q, mask=window, impl="blockwise", block_kv=32)
  assert seen == [(want, want), (want, want), (64, 32), (want, 32)]


def test_blockwise_backward_loops_build_nothing_the_length_of_the_sequence():
  """The per-tile loops of the blockwise backward may update full-length buffers in place
  (dq) but must not build one: a sum's cotangent is a constant, which XLA would otherwise
  sink into the loop and broadcast at full length for every key tile (O(N^2) work, seen
  as a time exponent above 1 for sliding windows). Read from the compiled HLO: no
  broadcast in any while-loop body has the sequence length in its shape."""
  import re

  import jax
  n = 2048
  q = jnp.ones((1, n, 2, 16))
  grad = jax.jit(jax.grad(lambda q, k, v: dot_product_attention(
      q, k, v, mask=masks.sliding_window(128), impl="blockwise", block_q=128,
      block_kv=128).sum(), argnums=(0, 1, 2)))
  text = grad.lower(q, q, q).compile().as_text()
  bodies = set(re.findall(r"body=%([\w.\-]+)", text))
  assert bodies, "the blockwise backward should loop over tiles"
  found = []
  for computation in re.split(r"\n(?=\S)", text):
    name = re.match(r"%?([\w.\-]+)", computation.strip())
    if name and name.group(1) in bodies:
      found += [line.strip()[:120] for line in computation.splitlines()
                if re.search(rf"= f32\[[\d,]*\b{n}\b[\d,]*\]\S* (fusion|broadcast)\(", line)
                and "broadcast" in line and "dynamic-update-slice" not in line]
  assert not found, found
