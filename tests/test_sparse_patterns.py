"""Sparse patterns (dilated, block-local, global, random, BigBird, Longformer, streaming):
dense predicates against plain-numpy definitions, block maps against the exact tile
classification of the dense mask, and bad parameters."""

from __future__ import annotations

import numpy as np
import pytest

from attnlab.attention import masks
from attnlab.attention.masks import EMPTY, FULL, PARTIAL

from oracles import (BLOCK_MAP_SHAPES as SHAPES, grid, np_bigbird, np_block_local,
                     np_causal, np_dilated, np_global, np_longformer, np_random, np_streaming)
from oracles import tile_classes as np_block_map

# (name, factory, numpy predicate)
CLOSED = [
    ("dilated_3x2", lambda: masks.dilated(3, 2), np_dilated(3, 2)),
    ("dilated_2x1", lambda: masks.dilated(2, 1), np_dilated(2, 1)),
    ("dilated_0x4", lambda: masks.dilated(0, 4), np_dilated(0, 4)),
    ("dilated_4x3_causal", lambda: masks.dilated(4, 3) & masks.causal(),
     lambda i, j: np_dilated(4, 3)(i, j) & np_causal(i, j)),
    ("block_local_5", lambda: masks.block_local(5), np_block_local(5)),
    ("block_local_8_causal", lambda: masks.block_local(8) & masks.causal(),
     lambda i, j: np_block_local(8)(i, j) & np_causal(i, j)),
    ("global_0_5", lambda: masks.global_tokens([0, 5]), np_global([0, 5])),
    ("global_run", lambda: masks.global_tokens(range(4)), np_global(list(range(4)))),
    ("sinks_3", lambda: masks.Sinks(count=3), lambda i, j: np.broadcast_to(j < 3, np.broadcast_shapes(i.shape, j.shape))),
]
COMPOSED = [
    ("longformer_3", lambda: masks.longformer(3, [0, 4]), np_longformer(3, [0, 4], False)),
    ("longformer_2_causal", lambda: masks.longformer(2, [1], causal=True),
     np_longformer(2, [1], True)),
    ("streaming_2_3", lambda: masks.streaming(2, 3), np_streaming(2, 3)),
    ("streaming_0_4", lambda: masks.streaming(0, 4), np_streaming(0, 4)),
]


def _full(got, shape):
  return np.broadcast_to(np.asarray(got), shape)


@pytest.mark.parametrize("q_len,kv_len", [(19, 19), (7, 23), (23, 7)])
@pytest.mark.parametrize("name,make,np_fn", CLOSED + COMPOSED, ids=[c[0] for c in CLOSED + COMPOSED])
def test_dense_matches_definition(name, make, np_fn, q_len, kv_len):
  want = np_fn(*grid(q_len, kv_len))
  np.testing.assert_array_equal(_full(make().dense(q_len, kv_len), want.shape), want)


def test_hand_worked_examples():
  # dilated(2, 2) on 6x6: |i-j| in {0, 2, 4}.
  np.testing.assert_array_equal(np.asarray(masks.dilated(2, 2).dense(6, 6)).astype(int), [
      [1, 0, 1, 0, 1, 0], [0, 1, 0, 1, 0, 1], [1, 0, 1, 0, 1, 0],
      [0, 1, 0, 1, 0, 1], [1, 0, 1, 0, 1, 0], [0, 1, 0, 1, 0, 1]])
  # block_local(2) on 5x5: diagonal 2x2 blocks and a 1x1 last block.
  np.testing.assert_array_equal(np.asarray(masks.block_local(2).dense(5, 5)).astype(int), [
      [1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 1, 0], [0, 0, 1, 1, 0], [0, 0, 0, 0, 1]])
  # streaming(1, 1) on 5x5: the sink, the previous token and itself.
  np.testing.assert_array_equal(np.asarray(masks.streaming(1, 1).dense(5, 5)).astype(int), [
      [1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 0, 1, 1, 0], [1, 0, 0, 1, 1]])
  # global_tokens([2]) on 4x4: row 2 and column 2.
  np.testing.assert_array_equal(np.asarray(masks.global_tokens([2]).dense(4, 4)).astype(int), [
      [0, 0, 1, 0], [0, 0, 1, 0], [1, 1, 1, 1], [0, 0, 1, 0]])


@pytest.mark.parametrize("shape", SHAPES, ids=[str(s) for s in SHAPES])
@pytest.mark.parametrize("name,make,np_fn", CLOSED, ids=[c[0] for c in CLOSED])
def test_block_map_is_exact(name, make, np_fn, shape):
  q_len, kv_len, bq, bk = shape
  want = np_block_map(np_fn(*grid(q_len, kv_len)), bq, bk)
  np.testing.assert_array_equal(make().block_map(q_len, kv_len, bq, bk), want)


@pytest.mark.parametrize("shape", SHAPES, ids=[str(s) for s in SHAPES])
@pytest.mark.parametrize("name,make,np_fn", COMPOSED, ids=[c[0] for c in COMPOSED])
def test_composed_block_map_is_sound(name, make, np_fn, shape):
  q_len, kv_len, bq, bk = shape
  exact = np_block_map(np_fn(*grid(q_len, kv_len)), bq, bk)
  got = make().block_map(q_len, kv_len, bq, bk)
  assert np.all(exact[got == EMPTY] == EMPTY)   # never skips a visible key
  assert np.all(exact[got == FULL] == FULL)     # never leaves a hidden key unmasked


def test_window_patterns_skip_far_tiles():
  # Streaming at length 4096 with 64-wide tiles: sink column plus a diagonal band only.
  n, block = 4096, 64
  got = masks.streaming(4, 128).block_map(n, n, block, block)
  exact = np_block_map(np_streaming(4, 128)(*grid(n, n)), block, block)
  np.testing.assert_array_equal(got == EMPTY, exact == EMPTY)
  nonempty = (got != EMPTY).sum()
  assert nonempty <= 4 * (n // block)     # O(N / block) tiles, not O((N / block)^2)
  # Dilated (window 8, dilation 16) reaches 128 back: a band of three tiles per row.
  got = (masks.dilated(8, 16) & masks.causal()).block_map(n, n, block, block)
  assert (got != EMPTY).sum() <= 3 * (n // block)


# ----------------------------------------------------------------------------- random patterns


@pytest.mark.parametrize("kv_len", [None, 29])
def test_random_pattern_matches_its_draws_and_block_map(kv_len):
  q_len = 29
  mask = masks.random(3, seed=7, num_heads=4, kv_len=kv_len)
  want = np_random(mask, q_len, 29)
  np.testing.assert_array_equal(np.asarray(mask.dense(q_len, 29)), want)
  # Each row sees between 1 and 3 keys; causal draws never look ahead.
  per_row = want.sum(-1)
  assert per_row.min() >= 1 and per_row.max() <= 3
  if kv_len is None:
    assert not np.any(want & ~np_causal(*grid(q_len, 29)))
  for shape in SHAPES:
    q, k, bq, bk = shape
    if q <= 29 and k <= 29:
      np.testing.assert_array_equal(mask.block_map(q, k, bq, bk),
                                    np_block_map(np_random(mask, q, k), bq, bk))


def test_random_pattern_fixed_by_seed_and_differs_per_head():
  a = np.asarray(masks.random(2, seed=1, num_heads=4, kv_len=64).dense(64, 64))
  b = np.asarray(masks.random(2, seed=1, num_heads=4, kv_len=64).dense(64, 64))
  c = np.asarray(masks.random(2, seed=2, num_heads=4, kv_len=64).dense(64, 64))
  np.testing.assert_array_equal(a, b)
  assert (a != c).any()
  assert all((a[h] != a[0]).any() for h in range(1, 4))
  # The same pattern evaluated tile by tile (as blockwise does) agrees with the dense one.
  mask = masks.random(2, seed=1, num_heads=4, kv_len=64)
  tiles = np.block([[np.asarray(mask(np.arange(r, r + 16)[:, None], np.arange(c, c + 16)[None]))
                     for c in range(0, 64, 16)] for r in range(0, 64, 16)])
  np.testing.assert_array_equal(tiles, a)


def test_random_draws_are_uniform():
  # Keys drawn for row i are uniform on [0, i]: the mean of j / i over many rows is ~1/2.
  mask = masks.random(4, seed=0, num_heads=8)
  rows = np.arange(100, 2100)
  draws = np.asarray(mask.draws(rows)).astype(np.float64)    # [H, rows, R]
  frac = draws / rows[None, :, None]
  assert abs(frac.mean() - 0.5) < 0.01
  hist, _ = np.histogram(frac, bins=10, range=(0, 1.0001))
  assert hist.min() > 0.9 * hist.mean()


@pytest.mark.parametrize("causal", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_bigbird_matches_block_definition(causal):
  n = 37
  mask = masks.bigbird(4, window_blocks=3, global_blocks=1, random_blocks=2, seed=3,
                       num_heads=3, causal=causal, kv_len=None if causal else n)
  inner = mask.left if causal else mask
  want = np_bigbird(inner, n, n, causal)
  np.testing.assert_array_equal(_full(mask.dense(n, n), want.shape), want)
  for bq, bk in [(4, 4), (8, 16), (5, 7)]:
    exact = np_block_map(want, bq, bk)
    got = mask.block_map(n, n, bq, bk)
    if causal:   # intersection with causal: sound, and FULL exactly when exact
      assert np.all(exact[got == EMPTY] == EMPTY)
      np.testing.assert_array_equal(got == FULL, exact == FULL)
    else:
      np.testing.assert_array_equal(got, exact)


def test_bigbird_tile_count_is_linear():
  # Tiles equal to BigBird blocks: window (3) + global (1 column + 1 row) + random (2) per row.
  block, n = 64, 4096
  mask = masks.bigbird(block, 3, 1, 2, seed=0, num_heads=4, causal=False, kv_len=n)
  bm = mask.block_map(n, n, block, block)
  rows = n // block
  per_row = (bm != EMPTY).sum(1)
  assert per_row[0] == rows                      # the global query block sees everything
  # every other row: at most 3 window + 1 global + 2 random blocks per head, union over 4 heads
  assert per_row[1:].max() <= 3 + 1 + 2 * 4
  # One head, tiles aligned with BigBird blocks: every tile is all-or-nothing.
  one_head = masks.bigbird(block, 3, 1, 2, seed=0, num_heads=1, causal=False, kv_len=n)
  assert not np.any(one_head.block_map(n, n, block, block) == PARTIAL)


# ----------------------------------------------------------------------------- bad parameters


def test_bad_parameters_name_the_field():
  cases = [
      (lambda: masks.dilated(-1, 2), "window"),
      (lambda: masks.dilated(2, 0), "dilation"),
      (lambda: masks.block_local(0), "block"),
      (lambda: masks.global_tokens([]), "indices"),
      (lambda: masks.global_tokens([-1]), "indices"),
      (lambda: masks.random(0), "per_row"),
      (lambda: masks.bigbird(0), "block"),
      (lambda: masks.bigbird(4, window_blocks=2, causal=True), "window_blocks"),
      (lambda: masks.bigbird(4), "kv_len"),
      (lambda: masks.longformer(-3, [0]), "window"),
      (lambda: masks.streaming(-1, 4), "sinks"),
      (lambda: masks.streaming(2, -4), "window"),
  ]
  for make, field in cases:
    with pytest.raises(ValueError, match=field):
      make()


def test_global_index_out_of_range_is_reported():
  mask = masks.longformer(2, [0, 40], causal=True)
  with pytest.raises(ValueError, match=r"indices \[40\] are out of range"):
    mask.validate(32, 32)
  mask.validate(41, 41)   # in range: no error


# ----------------------------------------------------------------------------- random draws: semantics


def test_random_rows_see_exactly_per_row_distinct_keys():
  """``random(k)``: k distinct keys per row (all earlier keys when a row has fewer)."""
  k, n = 3, 40
  mask = masks.random(k, seed=4, num_heads=5)
  draws = np.asarray(mask.draws(np.arange(n)))
  dense = np.asarray(mask.dense(n, n))
  for h in range(5):
    for i in range(n):
      picked = [int(j) for j in draws[h, i] if j >= 0]
      assert len(picked) == len(set(picked)) == min(k, i + 1)
      assert all(0 <= j <= i for j in picked)
      assert dense[h, i].sum() == min(k, i + 1)          # counted in the mask itself
  # the model's pattern adds the query itself: k or k + 1 keys per row
  from attnlab.attention import PATTERNS
  import ml_collections
  att = ml_collections.ConfigDict({"random_per_row": k, "seed": 0, "num_heads": 2})
  model_mask = np.asarray(PATTERNS.get("random").build(att, 0).dense(n, n))
  counts = model_mask.sum(-1)
  assert set(np.unique(counts[:, k:])) <= {k, k + 1} and (counts[:, :k] == np.arange(1, k + 1)).all()


def test_random_subsets_are_uniform():
  """Every 2-subset of 6 keys is drawn equally often (Floyd's algorithm), by counting."""
  from itertools import combinations
  heads, rows = 64, 512
  draws = np.asarray(masks.random(2, seed=9, num_heads=heads, kv_len=6).draws(np.arange(rows)))
  counts = {pair: 0 for pair in combinations(range(6), 2)}
  for pair in draws.reshape(-1, 2):
    counts[tuple(sorted(int(x) for x in pair))] += 1
  total = heads * rows
  expected = total / 15
  sigma = np.sqrt(expected * (1 - 1 / 15))
  assert sum(counts.values()) == total
  assert all(abs(c - expected) < 6 * sigma for c in counts.values()), counts


def test_bigbird_random_blocks_are_distinct():
  mask = masks.bigbird(4, 3, 1, 3, seed=2, num_heads=3, causal=True).left   # the BigBird part
  rand = np.asarray(mask._random_blocks(np.arange(16)))                    # [H, blocks, 3]
  for h in range(3):
    for b in range(16):
      picked = [int(j) for j in rand[h, b] if j >= 0]
      assert len(picked) == len(set(picked)) == min(3, b + 1)
      assert all(0 <= j <= b for j in picked)
