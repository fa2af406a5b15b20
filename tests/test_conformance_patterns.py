"""The conformance suite for patterns (``PATTERNS``): every registered entry is tested
because it is registered (the checks, the oracles and the tiers: ``tests/conformance.py``)."""

from __future__ import annotations

import pytest

import conformance as C
from attnlab.attention import PATTERNS, SCORE_MODS, IMPLS
from attnlab.models import kv_cache

IMPL_NAMES = IMPLS.names()
# block-map shapes: (q_len, kv_len, block_q, block_kv), padded last tiles included
TILINGS = [(40, 40, 8, 8), (40, 40, 8, 16), (37, 45, 16, 8), (29, 29, 5, 7), (40, 40, 64, 64)]


def _causal(pattern: str) -> bool:
  return PATTERNS.get(pattern).causal


def _example(name: str, heads=C.HEADS, length=C.LENGTH, seed=0):
  import jax
  return SCORE_MODS.get(name).example(heads, C.BATCH, length, jax.random.PRNGKey(seed))

# ----------------------------------------------------------------------------- patterns


@pytest.mark.parametrize("pattern", PATTERNS.names())
def test_pattern_block_map_is_sound(pattern):
  mask, _ = C.pattern_mask(pattern)
  for nq, nk, bq, bk in TILINGS:
    C.check_block_map(mask, nq, nk, bq, bk, f"{pattern}")


@pytest.mark.parametrize("pattern", PATTERNS.names())
def test_pattern_band_and_look_back_match_its_predicate(pattern):
  mask, att = C.pattern_mask(pattern)
  C.check_band(mask, 40, 40, pattern)
  C.check_lookback(PATTERNS.get(pattern), att, 64, pattern)


@pytest.mark.parametrize("impl", IMPL_NAMES)
@pytest.mark.parametrize("pattern", PATTERNS.names())
def test_pattern_values_and_gradients(pattern, impl):
  mask, _ = C.pattern_mask(pattern)
  C.skip_if(C.check_impl(impl, mask, what=f"{pattern}/{impl}"))


@pytest.mark.parametrize("pattern", PATTERNS.names())
def test_pattern_in_a_language_model(pattern):
  C.skip_if(None if _causal(pattern) else
           f"pattern {pattern!r} is not causal: a language model cannot use it")
  config = C.model_config(pattern, "rope")
  C.check_causal(config, pattern)
  C.skip_if(C.check_cached_decoding(config, pattern))
  C.skip_if(C.check_generation(config, pattern))


@pytest.mark.parametrize("pattern", PATTERNS.names())
def test_pattern_fields_are_validated(pattern, tmp_path):
  att = C.attention_block(pattern)
  C.check_field_validation(att, "model.attention", PATTERNS.get(pattern).fields,
                           C.attention_validator(), pattern)
  if _causal(pattern):
    C.check_round_trip(C.model_config(pattern, "rope"), tmp_path, pattern)



def test_layouts_follow_the_declared_look_back():
  """A pattern with a bounded look-back gets a rolling cache of pinned + look-back + 1
  slots once the text is longer than that; the others keep every position."""
  for name, spec in PATTERNS.items():
    att = C.attention_block(name)
    config = C.model_config(name if spec.causal else "causal")
    config.model.attention = att
    bounded = spec.lookback(att)
    layout = kv_cache.layout_for(config.model, 200)
    if bounded is None:
      assert layout.capacity == 200 and layout.lookback is None, name
    else:
      pinned, lookback = bounded
      assert (layout.capacity, layout.pinned, layout.lookback) == (
          pinned + lookback + 1, pinned, lookback), name



# ----------------------------------------------------------------------------- slow tier: cross products

@pytest.mark.parametrize("pattern,name,impl", [
    C.slow(p, m, i) for p in PATTERNS.names() for m in SCORE_MODS.names() for i in IMPL_NAMES])
def test_pattern_with_score_mod(pattern, name, impl):
  mask, _ = C.pattern_mask(pattern, heads=C.HEADS)
  C.skip_if(C.check_impl(impl, mask, _example(name), kv_heads=1, what=f"{pattern}/{name}/{impl}"))


@pytest.mark.parametrize("pattern,impl", [
    C.slow(p, i) for p in PATTERNS.names() if PATTERNS.get(p).causal for i in ("blockwise", "pallas")])
def test_pattern_model_through_an_impl_decodes_from_its_cache(pattern, impl):
  """The cached step through the impl's own decode path (the Pallas split-K kernel for
  bands), against the same model's full forward."""
  C.skip_if(C.check_cached_decoding(C.model_config(pattern, "alibi", impl=impl),
                                   f"{pattern}/{impl}"))
