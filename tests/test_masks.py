"""Attention patterns: dense predicates and block maps against plain numpy."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from attnlab.attention import masks
from attnlab.attention.masks import EMPTY, FULL, PARTIAL

from oracles import BLOCK_MAP_SHAPES as SHAPES  # noqa: E402
from oracles import grid, np_causal, np_full, np_prefix, np_window  # noqa: E402
from oracles import tile_classes as np_block_map  # noqa: E402

# (name, Mask factory, numpy predicate)
CLOSED_FORM = [
    ("causal", masks.causal, np_causal),
    ("full", masks.full, np_full),
    ("window_5_0", lambda: masks.sliding_window(5, 0), np_window(5, 0)),
    ("window_4_3", lambda: masks.sliding_window(4, 3), np_window(4, 3)),
    ("prefix_10", lambda: masks.prefix_lm(10), np_prefix(10)),
    ("window_left_unbounded", lambda: masks.SlidingWindow(left=None, right=2), np_window(None, 2)),
    ("window_right_unbounded", lambda: masks.SlidingWindow(left=3, right=None), np_window(3, None)),
]



# ----------------------------------------------------------------------------- dense predicates


@pytest.mark.parametrize("q_len,kv_len", [(19, 19), (7, 23), (23, 7)])
@pytest.mark.parametrize("name,make,np_fn", CLOSED_FORM, ids=[c[0] for c in CLOSED_FORM])
def test_dense_matches_formula(name, make, np_fn, q_len, kv_len):
  got = np.asarray(make().dense(q_len, kv_len))
  want = np_fn(*grid(q_len, kv_len))
  np.testing.assert_array_equal(np.broadcast_to(got, want.shape), want)


def test_dense_hand_worked_examples():
  # causal on 3x3: lower triangle including the diagonal.
  np.testing.assert_array_equal(np.asarray(masks.causal().dense(3, 3)),
                                [[1, 0, 0], [1, 1, 0], [1, 1, 1]])
  # sliding_window(1, 1): tridiagonal.
  np.testing.assert_array_equal(np.asarray(masks.sliding_window(1, 1).dense(4, 4)),
                                [[1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 1], [0, 0, 1, 1]])
  # prefix_lm(2) on 4x4: first two columns always visible, causal after.
  np.testing.assert_array_equal(np.asarray(masks.prefix_lm(2).dense(4, 4)),
                                [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]])


def test_segments_dense_is_segment_equality():
  q_ids = np.array([[0, 0, 1, 1, 1, 2], [3, 3, 3, 3, 4, 4]], np.int32)
  kv_ids = np.array([[0, 1, 1, 2, 2], [4, 3, 4, 3, 5]], np.int32)
  got = np.asarray(masks.segments(q_ids, kv_ids).dense(6, 5))
  want = q_ids[:, None, :, None] == kv_ids[:, None, None, :]     # [B, 1, q, k]
  np.testing.assert_array_equal(np.broadcast_to(got, want.shape), want)
  # kv_ids defaults to q_ids.
  got = np.asarray(masks.segments(q_ids).dense(6, 6))
  want = q_ids[:, None, :, None] == q_ids[:, None, None, :]
  np.testing.assert_array_equal(np.broadcast_to(got, want.shape), want)


def test_composition_dense_is_logical_and_or():
  i, j = grid(21, 17)
  ids = np.array([[0] * 5 + [1] * 8 + [2] * 8], np.int32)
  seg = ids[:, None, :, None] == ids[:, None, None, :17]
  a = masks.sliding_window(3, 1) | masks.prefix_lm(4)
  np.testing.assert_array_equal(np.asarray(a.dense(21, 17)),
                                np_window(3, 1)(i, j) | np_prefix(4)(i, j))
  b = masks.segments(ids, ids[:, :17]) & masks.causal()
  np.testing.assert_array_equal(np.broadcast_to(np.asarray(b.dense(21, 17)), seg.shape),
                                seg & np_causal(i, j))


def test_dense_mask_and_as_mask():
  arr = np.random.default_rng(0).random((2, 1, 9, 11)) < 0.5
  m = masks.as_mask(arr)
  assert isinstance(m, masks.DenseMask)
  np.testing.assert_array_equal(np.broadcast_to(np.asarray(m.dense(9, 11)), arr.shape), arr)
  with pytest.raises(ValueError, match="boolean"):
    masks.as_mask(arr.astype(np.float32))


# ----------------------------------------------------------------------------- block maps


@pytest.mark.parametrize("shape", SHAPES, ids=[str(s) for s in SHAPES])
@pytest.mark.parametrize("name,make,np_fn", CLOSED_FORM, ids=[c[0] for c in CLOSED_FORM])
def test_closed_form_block_map_is_exact(name, make, np_fn, shape):
  q_len, kv_len, bq, bk = shape
  got = make().block_map(q_len, kv_len, bq, bk)
  want = np_block_map(np_fn(*grid(q_len, kv_len)), bq, bk)
  assert got.shape == want.shape
  np.testing.assert_array_equal(got, want)


def test_block_map_hand_worked():
  # causal 4x4 with 2x2 tiles: diagonal tiles partial, below FULL, above EMPTY.
  np.testing.assert_array_equal(masks.causal().block_map(4, 4, 2, 2), [[PARTIAL, EMPTY],
                                                                        [FULL, PARTIAL]])
  # causal with 1x1 tiles is the mask itself (FULL/EMPTY only).
  np.testing.assert_array_equal(masks.causal().block_map(3, 3, 1, 1),
                                [[FULL, EMPTY, EMPTY], [FULL, FULL, EMPTY], [FULL, FULL, FULL]])


def _pairs():
  for (na, ma, fa), (nb, mb, fb) in itertools.combinations(CLOSED_FORM[:5], 2):
    yield f"{na}&{nb}", (lambda ma=ma, mb=mb: ma() & mb()), (lambda i, j, fa=fa, fb=fb: fa(i, j) & fb(i, j)), "and"
    yield f"{na}|{nb}", (lambda ma=ma, mb=mb: ma() | mb()), (lambda i, j, fa=fa, fb=fb: fa(i, j) | fb(i, j)), "or"


COMPOSED = list(_pairs())


@pytest.mark.parametrize("shape", SHAPES[:5], ids=[str(s) for s in SHAPES[:5]])
@pytest.mark.parametrize("name,make,np_fn,op", COMPOSED, ids=[c[0] for c in COMPOSED])
def test_composed_block_map_is_sound(name, make, np_fn, op, shape):
  q_len, kv_len, bq, bk = shape
  mask = make()
  dense = np_fn(*grid(q_len, kv_len))
  np.testing.assert_array_equal(np.asarray(mask.dense(q_len, kv_len)), dense)
  got = mask.block_map(q_len, kv_len, bq, bk)
  exact = np_block_map(dense, bq, bk)
  assert got.shape == exact.shape
  # Sound: an EMPTY tile holds no visible key, a FULL tile only visible keys.
  assert np.all(exact[got == EMPTY] == EMPTY)
  assert np.all(exact[got == FULL] == FULL)
  # Built from exact parts: an intersection is FULL exactly when both parts are,
  # a union EMPTY exactly when both parts are.
  if op == "and":
    np.testing.assert_array_equal(got == FULL, exact == FULL)
  else:
    np.testing.assert_array_equal(got == EMPTY, exact == EMPTY)


class Stripes(masks.Mask):
  """A pattern without a closed-form block map: the base class's generic one is used."""

  def __call__(self, q_idx, kv_idx):
    return ((kv_idx // 3) % 2 == 0) | (kv_idx <= q_idx - 10)


@pytest.mark.parametrize("shape", [SHAPES[0]] + [pytest.param(s, marks=pytest.mark.slow)
                                                  for s in SHAPES[1:]],
                         ids=[str(s) for s in SHAPES])
def test_generic_block_map_is_exact(shape):
  q_len, kv_len, bq, bk = shape
  rng = np.random.default_rng(q_len * 1000 + kv_len)
  cases = {
      "random": rng.random((q_len, kv_len)) < 0.5,
      "tril": np.tril(np.ones((q_len, kv_len), bool)),
      "all_true": np.ones((q_len, kv_len), bool),
      "all_false": np.zeros((q_len, kv_len), bool),
      # a structured mask with FULL, EMPTY and PARTIAL tiles
      "window": np_window(7, 2)(*grid(q_len, kv_len)),
      # batch/head dims: a tile is FULL only if it is full in every batch row
      "batched": np.stack([np.ones((q_len, kv_len), bool),
                           rng.random((q_len, kv_len)) < 0.95])[:, None],
  }
  for name, arr in cases.items():
    got = masks.DenseMask(array=arr).block_map(q_len, kv_len, bq, bk)
    np.testing.assert_array_equal(got, np_block_map(arr, bq, bk), err_msg=name)
  stripes = Stripes().block_map(q_len, kv_len, bq, bk)
  np.testing.assert_array_equal(stripes, np_block_map(Stripes()(*grid(q_len, kv_len)), bq, bk))


def test_generic_block_map_matches_closed_form():
  # The base class's generic map and the closed forms agree on the closed-form patterns.
  for _, make, np_fn in CLOSED_FORM:
    for q_len, kv_len, bq, bk in SHAPES:
      dense = np_fn(*grid(q_len, kv_len))
      generic = masks.Mask.block_map(masks.DenseMask(array=dense), q_len, kv_len, bq, bk)
      np.testing.assert_array_equal(generic, make().block_map(q_len, kv_len, bq, bk))


def test_segments_block_map_is_all_partial():
  # Data-dependent: no tile may be skipped or treated as unmasked.
  ids = np.array([[0] * 10 + [1] * 10], np.int32)
  bm = masks.segments(ids).block_map(20, 20, 8, 8)
  np.testing.assert_array_equal(bm, np.full((3, 3), PARTIAL))
  # Intersected with causal, the causal EMPTY tiles can still be skipped.
  bm = (masks.segments(ids) & masks.causal()).block_map(20, 20, 8, 8)
  np.testing.assert_array_equal(bm == EMPTY, np.triu(np.ones((3, 3), bool), 1))


# ----------------------------------------------------------------------------- invalid arguments


def test_invalid_arguments_name_the_parameter():
  with pytest.raises(ValueError, match="left"):
    masks.sliding_window(-1)
  with pytest.raises(ValueError, match="right"):
    masks.sliding_window(2, -1)
  with pytest.raises(ValueError, match="left"):
    masks.sliding_window(2.5)
  with pytest.raises(ValueError, match="prefix_len"):
    masks.prefix_lm(-2)
  with pytest.raises(ValueError, match="ids"):
    masks.segments(np.zeros(5, np.int32))
  # Zero-width windows are valid: sliding_window(0, 0) is the diagonal.
  np.testing.assert_array_equal(np.asarray(masks.sliding_window(0, 0).dense(4, 4)), np.eye(4))
