"""The conformance suite for per-position operands (``attention.operands``): packed documents
(``masks.segments``) and modifiers that read arrays indexed by position, through every
implementation, values and gradients (the operands' too) against the float64 oracle;
and the run-time tile classes that let packed documents skip tiles."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import conformance as C
import oracles
from attnlab.attention import IMPLS, dot_product_attention, masks, operands, score_mods
from attnlab.attention.blockwise import TilePlan, _visits
from attnlab.attention.pytree import pytree_dataclass

IMPL_NAMES = IMPLS.names()
CASES = C.operand_cases()
# the default tier: ragged documents (a document of one token, rows of different layouts)
# with and without FoX's gates, and many short documents bidirectionally; the slow tier
# runs every layout
DEFAULT = {"causal_documents/ragged", "causal_documents_forget_gate/ragged"}


@pytest.mark.parametrize("impl", IMPL_NAMES)
@pytest.mark.parametrize("case", [c if c in DEFAULT else C.slow(c) for c in sorted(CASES)])
def test_operand_case_values_and_gradients(case, impl):
  mask, mod = CASES[case]()
  C.skip_if(C.check_impl(impl, mask, mod, what=f"{case}/{impl}"))


# ----------------------------------------------------------------------------- user operands
# The third kind of user code (docs/score_mods.md): a pattern and a modifier of the user's
# own that read per-position arrays; written once, served by every implementation.

@pytree_dataclass(data=("reach",), per_query=("reach",))
class PerTokenReach(masks.Mask):
  """Query i sees keys i - reach[i] .. i: ``reach`` int [batch, q_len]."""
  reach: Any

  def __call__(self, q_idx, kv_idx):
    reach = jnp.asarray(self.reach)[:, None, :, None]                  # [B, 1, q, 1]
    return (kv_idx <= q_idx) & (q_idx - kv_idx <= reach)


@pytree_dataclass(data=("temperature",), per_query=("temperature",),
                  per_head={"temperature": 2})
class PerTokenTemperature(score_mods.ScoreMod):
  """Scores divided by a per-query, per-head temperature: float [batch, q_len, heads]."""
  temperature: Any

  def __call__(self, scores, q_idx, kv_idx):
    return scores / jnp.moveaxis(jnp.asarray(self.temperature), 2, 1)[..., None]


def _reach(seed=0):
  return np.random.default_rng(seed).integers(0, 9, (C.BATCH, C.LENGTH)).astype(np.int32)


def _temperature(seed=1):
  rng = np.random.default_rng(seed)
  return jnp.asarray(0.5 + rng.random((C.BATCH, C.LENGTH, C.HEADS)), jnp.float32)


@pytest.mark.parametrize("impl", [i if i in ("blockwise", "pallas") else C.slow(i)
                                  for i in IMPL_NAMES])
def test_a_users_operand_pattern_and_modifier_through_every_impl(impl):
  mask = PerTokenReach(_reach()) & masks.segments(C.document_ids("many"))
  C.skip_if(C.check_impl(impl, mask, PerTokenTemperature(_temperature()),
                         what=f"user operands/{impl}"))


def test_operands_follow_the_tile_they_are_restricted_to():
  """``restrict`` hands a tile's slice: the modifier on a tile equals the whole-sequence
  modifier's entries for that tile."""
  mod = PerTokenTemperature(_temperature())
  s = jnp.asarray(np.random.default_rng(2).standard_normal((C.BATCH, C.HEADS, C.LENGTH, C.LENGTH)),
                  jnp.float32)
  i, j = jnp.arange(C.LENGTH)[:, None], jnp.arange(C.LENGTH)[None, :]
  whole = np.asarray(mod(s, i, j))
  tile = operands.restrict(mod, 8, 16, 24, 8)
  part = np.asarray(tile(s[:, :, 8:24, 24:32], i[8:24], j[:, 24:32]))
  np.testing.assert_allclose(part, whole[:, :, 8:24, 24:32], rtol=1e-6)
  with pytest.raises(ValueError, match="per-query operand has shape"):
    dot_product_attention(*(jnp.zeros((2, 16, 4, 8)),) * 3, bias=mod, impl="blockwise")


# ----------------------------------------------------------------------------- tile classes

@pytest.mark.parametrize("layout", C.DOCUMENT_LAYOUTS)
@pytest.mark.parametrize("block", [4, 8, 16])
def test_document_tile_classes_are_sound_and_tight_for_packed_documents(layout, block):
  """Per row, EMPTY tiles hold no visible pair and FULL tiles only visible pairs (the
  oracle's classes of the dense mask); for non-decreasing ids EMPTY is exact, so every tile
  without a visible pair is skipped."""
  ids = C.document_ids(layout)
  mask = masks.segments(ids)
  got = np.asarray(mask.tile_classes(C.LENGTH, C.LENGTH, block, block, per_row=True))
  for row in range(C.BATCH):
    dense = ids[row][:, None] == ids[row][None, :]
    want = oracles.tile_classes(dense[None, None], block, block)
    assert not np.any((got[row] == masks.EMPTY) & (want != oracles.EMPTY)), (layout, row)
    assert not np.any((got[row] == masks.FULL) & (want != oracles.FULL)), (layout, row)
    if layout != "not_monotone":
      np.testing.assert_array_equal(got[row] == masks.EMPTY, want == oracles.EMPTY)
  union = np.asarray(mask.tile_classes(C.LENGTH, C.LENGTH, block, block))
  np.testing.assert_array_equal(union == masks.EMPTY, (got == masks.EMPTY).all(0))
  np.testing.assert_array_equal(union == masks.FULL, (got == masks.FULL).all(0))


def test_packed_documents_visit_only_the_tiles_on_their_diagonal():
  """8 documents of 64 tokens, tiles of 32, causal: blockwise visits 3 tiles per document
  (2 on the diagonal, 1 below it), not the 136 of causal attention over 512 tokens."""
  n, block = 512, 32
  ids = np.repeat(np.arange(8), 64)[None].astype(np.int32)
  mask = masks.causal() & masks.segments(ids)
  plan = TilePlan.from_block_map(mask.block_map(n, n, block, block), q_len=n, kv_len=n,
                                 block_q=block, block_kv=block, scale=1.0)
  visited = 0
  for table, start, stop, _ in _visits(plan, mask, transpose=False):
    visited += int(np.sum(np.asarray(stop) - np.asarray(start)))
  assert visited == 8 * 3
  assert plan.num_tiles == 16 * 17 // 2            # the static plan: all of causal
