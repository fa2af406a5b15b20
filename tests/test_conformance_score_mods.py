"""The conformance suite for score modifiers (``SCORE_MODS``): every registered entry is tested
because it is registered (the checks, the oracles and the tiers: ``tests/conformance.py``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import conformance as C
from attnlab.attention import IMPLS, SCORE_MODS, masks, operands

IMPL_NAMES = IMPLS.names()


def _example(name: str, heads=C.HEADS, length=C.LENGTH, seed=0):
  return SCORE_MODS.get(name).example(heads, C.BATCH, length, jax.random.PRNGKey(seed))

# ----------------------------------------------------------------------------- score modifiers


@pytest.mark.parametrize("impl", IMPL_NAMES)
@pytest.mark.parametrize("name", SCORE_MODS.names())
def test_score_mod_values_and_gradients(name, impl):
  C.skip_if(C.check_impl(impl, masks.causal(), _example(name), what=f"{name}/{impl}"))


def test_score_mod_per_head_leaves_are_split_by_their_declaration():
  """``select_heads`` of a modifier that only declares ``per_head`` restricts exactly those
  leaves: heads 1..2 of the modifier give heads 1..2 of its scores."""
  for name in SCORE_MODS.names():
    mod = operands.restrict(_example(name), 0, 8, 0, 8)   # per-position operands: 8 tokens
    scores = jnp.asarray(np.random.default_rng(0).standard_normal((1, C.HEADS, 8, 8)),
                         jnp.float32)
    i, j = jnp.arange(8)[:, None], jnp.arange(8)[None, :]
    whole = np.asarray(jnp.broadcast_to(mod(scores, i, j), (C.BATCH, C.HEADS, 8, 8)))
    part = np.asarray(mod.select_heads(1, 2)(scores[:, 1:3], i, j))
    part = np.broadcast_to(part, (C.BATCH, 2, 8, 8))
    np.testing.assert_allclose(part, whole[:, 1:3], rtol=1e-6, atol=1e-6, err_msg=name)
