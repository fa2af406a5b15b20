"""The conformance suite can fail, and it covers a new entry by itself.

- Deliberately broken entries fail the suite's checks: a block map that marks a needed tile
  EMPTY (or a masked one FULL), a declared look-back shorter than the pattern's reach
  (caught by the declaration check and by cached decoding past the window), a modifier
  whose gradient rule is wrong, a field that accepts what its declaration forbids.
- Three new variants (``tests/data/new_variants.py``: a pattern, a position scheme and a
  score modifier, registered and nothing else) get the suite's tests by name, which run
  and pass: ``pytest -p new_variants tests/test_conformance_*.py -k NAME``.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

import conformance as C
from attnlab.attention import PATTERNS, masks
from attnlab.attention.pytree import pytree_dataclass
from attnlab.attention.score_mods import AdditiveBias
from attnlab.registry import ConfigError, Field

TESTS = pathlib.Path(__file__).resolve().parent


# ----------------------------------------------------------------------------- broken entries

@pytree_dataclass
class WindowMissingATile(masks.Mask):
  """A sliding window of 6 whose block map forgets the tile just left of the diagonal."""
  window: int = 6

  def __call__(self, q_idx, kv_idx):
    return (kv_idx <= q_idx) & (kv_idx >= q_idx - self.window)

  def block_map(self, q_len, kv_len, block_q, block_kv):
    right = masks.sliding_window(self.window).block_map(q_len, kv_len, block_q, block_kv)
    out = right.copy()
    for i in range(1, min(out.shape)):
      out[i, i - 1] = masks.EMPTY          # keys one tile back are needed
    return out


@pytree_dataclass
class CausalCalledFull(masks.Mask):
  """Causal, but its block map calls every tile FULL (no masking would be applied)."""

  def __call__(self, q_idx, kv_idx):
    return kv_idx <= q_idx

  def block_map(self, q_len, kv_len, block_q, block_kv):
    return masks.full().block_map(q_len, kv_len, block_q, block_kv)


def test_a_block_map_that_drops_a_needed_tile_fails():
  mask = WindowMissingATile()
  with pytest.raises(AssertionError, match="marked EMPTY but hold visible pairs"):
    C.check_block_map(mask, 40, 40, 8, 8, "broken")
  with pytest.raises(AssertionError, match="output"):       # blockwise skips the tile
    C.check_impl("blockwise", mask, what="broken/blockwise", tiles=(8, 8))


def test_a_block_map_that_calls_a_masked_tile_full_fails():
  mask = CausalCalledFull()
  with pytest.raises(AssertionError, match="marked FULL but hold masked pairs"):
    C.check_block_map(mask, 40, 40, 8, 8, "broken")
  with pytest.raises(AssertionError, match="output"):
    C.check_impl("blockwise", mask, what="broken/blockwise", tiles=(8, 8))


@pytest.fixture
def short_look_back(monkeypatch):
  """``sliding_window`` declaring a look-back of window - 2 (it sees window back)."""
  spec = PATTERNS.get("sliding_window")
  broken = dataclasses.replace(spec, lookback=lambda cfg: (0, int(cfg.window) - 2))
  monkeypatch.setitem(PATTERNS._entries, "sliding_window_short", broken)
  C._built.cache_clear()
  yield "sliding_window_short"
  C._built.cache_clear()


def test_a_look_back_shorter_than_the_pattern_fails(short_look_back):
  _, att = C.pattern_mask("sliding_window")
  with pytest.raises(AssertionError, match="beyond the declared look-back"):
    C.check_lookback(PATTERNS.get(short_look_back), att, 64, "broken")
  # cached decoding past the (too small) rolling window differs from the full forward
  config = C.model_config(short_look_back, "rope")
  with pytest.raises(AssertionError, match="cached decoding"):
    C.check_cached_decoding(config, "broken")


@jax.custom_vjp
def _half_gradient(x):
  return x


_half_gradient.defvjp(lambda x: (x, None), lambda _, g: (0.5 * g,))


@pytree_dataclass(data=("slopes",), per_head=("slopes",))
class AlibiWithAWrongGradient(AdditiveBias):
  """ALiBi whose slopes' gradient rule is half the true one (a custom_vjp mistake)."""
  slopes: jax.Array

  def bias(self, q_idx, kv_idx):
    slopes = _half_gradient(jnp.asarray(self.slopes, jnp.float32))
    return -slopes[:, None, None] * jnp.abs(q_idx - kv_idx).astype(jnp.float32)


@pytest.mark.parametrize("impl", ["reference", "blockwise"])
def test_a_modifier_with_a_wrong_gradient_fails(impl):
  mod = AlibiWithAWrongGradient(slopes=jnp.asarray([0.5, 0.25, 0.125, 0.0625]))
  with pytest.raises(AssertionError, match="gradient of the modifier's leaves"):
    C.check_impl(impl, masks.causal(), mod, what=f"broken/{impl}")


def _sinks_impl(monkeypatch, name, transform):
  """``blockwise`` registered again as ``name``, with its sinks passed through ``transform``."""
  from attnlab.attention import IMPLS, blockwise_attention
  base = IMPLS.get("blockwise")

  def fn(q, k, v, *, sinks=None, **kw):
    kw = {n: kw[n] for n in ("mask", "score_mod", "scale", "block_q", "block_kv")}
    return blockwise_attention(q, k, v, sinks=transform(sinks), **kw)

  monkeypatch.setitem(IMPLS._entries, name, dataclasses.replace(base, fn=fn))
  return name


@pytest.mark.parametrize("broken,transform,message", [
    ("sinks_ignored", lambda s: None, "output"),
    ("sinks_without_gradient", jax.lax.stop_gradient, "d sinks"),
])
def test_an_impl_that_mishandles_sinks_fails(monkeypatch, broken, transform, message):
  name = _sinks_impl(monkeypatch, broken, transform)
  with pytest.raises(AssertionError, match=message):
    C.check_impl_sinks(name, masks.causal(), what=f"broken/{name}", tiles=(8, 16))


def test_a_field_that_accepts_what_it_declares_invalid_fails():
  """A pattern that declares ``window >= 1`` but whose validation never looks at it."""
  fields = (Field("window", 6, "window", minimum=1),)

  def validate_nothing(block):
    pass

  with pytest.raises(AssertionError, match="was accepted"):
    C.check_field_validation(C.attention_block("sliding_window"), "model.attention", fields,
                             validate_nothing, "broken")


def test_a_refusal_that_does_not_name_the_field_fails():
  fields = (Field("window", 6, "window", minimum=1),)

  def vague(block):
    if not isinstance(block.window, int) or block.window < 1:
      raise ConfigError("something is wrong with the attention config")

  with pytest.raises(AssertionError, match="does not name it"):
    C.check_field_validation(C.attention_block("sliding_window"), "model.attention", fields,
                             vague, "broken")


# ----------------------------------------------------------------------------- new entries

NEW = ("dilated_sinks", "log_distance", "learned_temperature")
SUITE = [str(p) for p in sorted(TESTS.glob("test_conformance_*.py")) if "catches" not in p.name]


def test_new_entries_get_the_suites_tests_by_name_and_pass():
  """One new file registering a pattern, a position scheme and a score modifier, loaded
  as a plugin (the import line): the suite collects tests named after each, and they pass."""
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [str(TESTS / "data"), str(TESTS.parent), os.environ.get("PYTHONPATH", "")]))
  done = subprocess.run(
      [sys.executable, "-m", "pytest", "-p", "new_variants", "-p", "no:cacheprovider", "-n", "0",
       "-m", "not slow", "-q", "-rs", *SUITE,
       "-k", " or ".join(NEW)],
      cwd=TESTS.parent, env=env, capture_output=True, text=True, timeout=900)
  tail = done.stdout[-3000:] + done.stderr[-2000:]
  assert done.returncode == 0, tail
  summary = re.search(r"(\d+) passed", done.stdout)
  assert summary, tail
  for name in NEW:
    collect = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "new_variants", "-p", "no:cacheprovider",
         "-n", "0", "-m", "not slow", "--collect-only", "-q", *SUITE,
         "-k", name], cwd=TESTS.parent, env=env, capture_output=True, text=True, timeout=300)
    ids = [line for line in collect.stdout.splitlines() if "::" in line]
    assert len(ids) >= 3, f"{name}: {collect.stdout[-1000:]}"
    assert all(name in i for i in ids), ids
  assert int(summary.group(1)) >= 15, tail
