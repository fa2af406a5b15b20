"""The conformance suite for position schemes (``POSITIONS``) and RoPE scalings (``ROPE_SCALINGS``): every registered entry is tested
because it is registered (the checks, the oracles and the tiers: ``tests/conformance.py``)."""

from __future__ import annotations

import numpy as np
import pytest

import conformance as C
from attnlab import config_lib, positional
from attnlab.attention import IMPLS, PATTERNS, SCORE_MODS, masks

IMPL_NAMES = IMPLS.names()
POSITION_NAMES = positional.POSITIONS.names()
SCALING_NAMES = positional.ROPE_SCALINGS.names()


def _registered_modifier(mod) -> str | None:
  """The SCORE_MODS entry whose example has this modifier's class (tested there)."""
  import jax
  for name, spec in SCORE_MODS.items():
    if type(spec.example(C.HEADS, C.BATCH, C.LENGTH, jax.random.PRNGKey(0))) is type(mod):
      return name
  return None


# ----------------------------------------------------------------------------- positions


@pytest.mark.parametrize("impl", IMPL_NAMES)
@pytest.mark.parametrize("position", POSITION_NAMES)
def test_position_bias_values_and_gradients(position, impl):
  """The scheme's modifier, with its declared parameters initialised as a model does, through
  every impl (a modifier class registered in SCORE_MODS is tested there, once)."""
  mod = C.example_position_mod(position)
  C.skip_if(None if mod is not None else f"position {position!r} adds no score modifier")
  registered = _registered_modifier(mod)
  C.skip_if(registered and f"its modifier {type(mod).__name__} is the registered score "
           f"modifier {registered!r}, tested by test_conformance_score_mods.py")
  C.skip_if(C.check_impl(impl, masks.causal(), mod, what=f"{position}/{impl}"))


@pytest.mark.parametrize("position", POSITION_NAMES)
def test_position_in_a_language_model(position):
  """A sliding window of 5 over 24 tokens: the rolling cache wraps several times."""
  config = C.model_config("sliding_window", position)
  C.check_causal(config, position)
  C.skip_if(C.check_cached_decoding(config, position))
  C.skip_if(C.check_generation(config, position))


@pytest.mark.parametrize("position", POSITION_NAMES)
def test_position_fields_are_validated(position, tmp_path):
  block = config_lib.position_block(position)
  fields = positional.COMMON_FIELDS + tuple(positional.POSITIONS.get(position).fields)
  C.check_field_validation(block, "model.position", fields, C.position_validator(), position)
  C.check_round_trip(C.model_config("causal", position), tmp_path, position)


# ----------------------------------------------------------------------------- RoPE scalings


def _scaled(scaling: str):
  """RoPE with ``scaling`` at s = 2 from an original length of 12 (the test text is 24),
  rotating half of each head (partial rotary: the other half passes through)."""
  fields = {"scaling": scaling, "original_max_len": 12, "rotary_fraction": 0.5}
  if scaling != "none":
    fields["scale_factor"] = 2.0
  return C.model_config("causal", "rope", **fields)


@pytest.mark.parametrize("scaling", SCALING_NAMES)
def test_rope_scaling_in_a_language_model(scaling):
  config = _scaled(scaling)
  C.check_causal(config, scaling)
  C.skip_if(C.check_cached_decoding(config, scaling))


@pytest.mark.parametrize("scaling", SCALING_NAMES)
def test_rope_scaling_fields_are_validated(scaling, tmp_path):
  block = _scaled(scaling).model.position
  C.check_field_validation(block, "model.position", positional.ROPE_SCALINGS.get(scaling).fields,
                           C.position_validator(), scaling)
  C.check_round_trip(_scaled(scaling), tmp_path, scaling)


@pytest.mark.parametrize("scaling", SCALING_NAMES)
def test_rope_scaling_changes_frequencies_only_beyond_none(scaling):
  """Each scaling's frequencies at s = 2 against plain RoPE's: ``none`` equal, the others
  no larger anywhere and smaller somewhere (they all stretch wavelengths), and finite."""
  head_dim = 16
  base = positional.get_scheme(_scaled("none").model.position).frequencies(head_dim, 24)[0]
  got, multiplier = positional.get_scheme(_scaled(scaling).model.position).frequencies(head_dim,
                                                                                       24)
  assert got.shape == base.shape and np.all(np.isfinite(got)) and multiplier >= 1.0, scaling
  if scaling == "none":
    np.testing.assert_allclose(got, base, rtol=1e-12)
  else:
    assert np.all(got <= base * (1 + 1e-12)) and np.any(got < base * (1 - 1e-6)), scaling



# ----------------------------------------------------------------------------- slow tier: cross products

@pytest.mark.parametrize("position,pattern", [
    C.slow(p, q) for p in POSITION_NAMES for q in PATTERNS.names() if PATTERNS.get(q).causal])
def test_position_with_pattern_in_a_language_model(position, pattern):
  config = C.model_config(pattern, position)
  C.check_causal(config, f"{position}/{pattern}")
  C.skip_if(C.check_cached_decoding(config, f"{position}/{pattern}"))
