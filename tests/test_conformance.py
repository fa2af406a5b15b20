"""The conformance suite: every registered entry is tested because it is registered.

The tests walk the registries (``PATTERNS``, ``POSITIONS``, ``SCORE_MODS``, ``KINDS``,
``IMPLS``) and run the checks of ``tests/conformance.py`` on every entry, against the
float64 oracles of ``tests/oracles.py``:

- patterns: the block map and band against the predicate, the declared look-back,
  values and gradients through every impl that serves them, a language model with the
  pattern (causal, cached decoding equal to the full forward past a rolling cache's
  window, greedy generation), field validation and the config round trip;
- position schemes: the bias's values and leaf gradients through every impl, a language
  model with a sliding window (rolling cache), field validation, the round trip;
- score modifiers: values and gradients (leaves included) through every impl;
- kinds: the implied weights reproduce the output, a language model, fields;
- impls: the contract on a set of standard requests.

A test id names the entry (``test_pattern_values_and_gradients[strided-pallas]``), so
``pytest -k strided`` runs every test of one entry. What an entry cannot do is skipped with
the reason its declaration gives (an impl's ``unsupported``, a kind's ``cache_refusal``,
a non-causal pattern in a language model), never because a list forgot it. The default
tier runs each entry once with each impl; the cross products (every pattern with every
modifier, every position scheme with every pattern) are marked ``slow``.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import conformance as C
from attnlab import config_lib, positional
from attnlab.attention import IMPLS, KINDS, PATTERNS, SCORE_MODS, masks, score_mods
from attnlab.models import kv_cache

IMPL_NAMES = IMPLS.names()
POSITION_NAMES = positional.POSITIONS.names()
# block-map shapes: (q_len, kv_len, block_q, block_kv), padded last tiles included
TILINGS = [(40, 40, 8, 8), (40, 40, 8, 16), (37, 45, 16, 8), (29, 29, 5, 7), (40, 40, 64, 64)]


def _skip_if(reason):
  if reason:
    pytest.skip(reason[:300])


def _causal(pattern: str) -> bool:
  return PATTERNS.get(pattern).causal


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
  _skip_if(C.check_impl(impl, mask, what=f"{pattern}/{impl}"))


@pytest.mark.parametrize("pattern", PATTERNS.names())
def test_pattern_in_a_language_model(pattern):
  _skip_if(None if _causal(pattern) else
           f"pattern {pattern!r} is not causal: a language model cannot use it")
  config = C.model_config(pattern, "rope")
  C.check_causal(config, pattern)
  _skip_if(C.check_cached_decoding(config, pattern))
  _skip_if(C.check_generation(config, pattern))


@pytest.mark.parametrize("pattern", PATTERNS.names())
def test_pattern_fields_are_validated(pattern, tmp_path):
  att = C.attention_block(pattern)
  C.check_field_validation(att, "model.attention", PATTERNS.get(pattern).fields,
                           C.attention_validator(), pattern)
  if _causal(pattern):
    C.check_round_trip(C.model_config(pattern, "rope"), tmp_path, pattern)


# ----------------------------------------------------------------------------- positions


@pytest.mark.parametrize("impl", IMPL_NAMES)
@pytest.mark.parametrize("position", POSITION_NAMES)
def test_position_bias_values_and_gradients(position, impl):
  mod = C.example_position_mod(position)
  _skip_if(None if mod is not None else f"position {position!r} adds no score modifier")
  _skip_if(C.check_impl(impl, masks.causal(), mod, what=f"{position}/{impl}"))


@pytest.mark.parametrize("position", POSITION_NAMES)
def test_position_in_a_language_model(position):
  """A sliding window of 5 over 24 tokens: the rolling cache wraps several times."""
  config = C.model_config("sliding_window", position)
  C.check_causal(config, position)
  _skip_if(C.check_cached_decoding(config, position))
  _skip_if(C.check_generation(config, position))


@pytest.mark.parametrize("position", POSITION_NAMES)
def test_position_fields_are_validated(position, tmp_path):
  block = config_lib.position_block(position)
  fields = positional.COMMON_FIELDS + tuple(positional.POSITIONS.get(position).fields)
  C.check_field_validation(block, "model.position", fields, C.position_validator(), position)
  C.check_round_trip(C.model_config("causal", position), tmp_path, position)


# ----------------------------------------------------------------------------- score modifiers


def _example(name: str, heads=C.HEADS, length=C.LENGTH, seed=0):
  return SCORE_MODS.get(name).example(heads, C.BATCH, length, jax.random.PRNGKey(seed))


@pytest.mark.parametrize("impl", IMPL_NAMES)
@pytest.mark.parametrize("name", SCORE_MODS.names())
def test_score_mod_values_and_gradients(name, impl):
  _skip_if(C.check_impl(impl, masks.causal(), _example(name), what=f"{name}/{impl}"))


def test_score_mod_per_head_leaves_are_split_by_their_declaration():
  """``select_heads`` of a modifier that only declares ``per_head`` restricts exactly those
  leaves: heads 1..2 of the modifier give heads 1..2 of its scores."""
  for name in SCORE_MODS.names():
    mod = _example(name)
    scores = jnp.asarray(np.random.default_rng(0).standard_normal((1, C.HEADS, 8, 8)),
                         jnp.float32)
    i, j = jnp.arange(8)[:, None], jnp.arange(8)[None, :]
    whole = np.asarray(jnp.broadcast_to(mod(scores, i, j), (C.BATCH, C.HEADS, 8, 8)))
    part = np.asarray(mod.select_heads(1, 2)(scores[:, 1:3], i, j))
    part = np.broadcast_to(part, (C.BATCH, 2, 8, 8))
    np.testing.assert_allclose(part, whole[:, 1:3], rtol=1e-6, atol=1e-6, err_msg=name)


# ----------------------------------------------------------------------------- kinds


@pytest.mark.parametrize("kind", KINDS.names())
def test_kind_weights_reproduce_its_output(kind):
  spec = KINDS.get(kind)
  _skip_if(None if spec.weights is not None else f"kind {kind!r} declares no weights")
  att = C.attention_block("causal", kind, heads=C.HEADS,
                          kv_heads=C.HEADS if spec.shared_qk else C.KV_HEADS)
  q, k, v, _ = C.qkvw(0, 24, 24, C.HEADS, att.num_kv_heads)
  k = q if spec.shared_qk else k
  mask = PATTERNS.get("causal").build(att, 0)
  out = np.asarray(spec.apply(q, k, v, mask=mask, bias=None, cfg=att, layer=0))
  weights = np.asarray(spec.weights(q, k, mask=mask, bias=None, cfg=att, layer=0), np.float64)
  group = C.HEADS // att.num_kv_heads
  vv = np.repeat(np.asarray(v, np.float64), group, axis=2)
  want = np.einsum("bhqk,bkhd->bqhd", weights, vv)
  np.testing.assert_allclose(out, want, rtol=2e-4, atol=2e-5, err_msg=kind)
  # causal weights: nothing after the query, rows of a softmax-like kind sum to one
  assert np.abs(np.triu(weights, 1)).max() < 1e-6, kind


@pytest.mark.parametrize("kind", KINDS.names())
def test_kind_in_a_language_model(kind):
  spec = KINDS.get(kind)
  config = C.model_config("causal", "rope" if spec.shared_qk is False else "none", kind,
                          kv_heads=C.HEADS if spec.shared_qk else C.KV_HEADS)
  # a kind that cannot generate says why: its outputs over a prefix depend on what follows
  # (LSH hashes the whole sequence); its weights never reach a later key (test above)
  _skip_if(spec.generation_refusal and f"kind {kind!r} {spec.generation_refusal}")
  C.check_causal(config, kind)
  reasons = [C.check_cached_decoding(config, kind), C.check_generation(config, kind)]
  _skip_if("; ".join(r for r in reasons if r))


@pytest.mark.parametrize("kind", KINDS.names())
def test_kind_fields_are_validated(kind):
  spec = KINDS.get(kind)
  att = C.attention_block("causal", kind, kv_heads=C.HEADS if spec.shared_qk else C.KV_HEADS)
  C.check_field_validation(att, "model.attention", spec.fields,
                           C.attention_validator("none" if spec.shared_qk else "rope"), kind)


# ----------------------------------------------------------------------------- impls

# Standard requests every implementation is held to (each skips what its impl refuses).
REQUESTS = {
    "causal_mha": dict(mask=lambda: masks.causal(), heads=(4, 4)),
    "full_cross_gqa": dict(mask=lambda: masks.full(), heads=(4, 2), nq=24),
    "window_mqa_alibi": dict(mask=lambda: masks.sliding_window(6), heads=(4, 1),
                             mod=lambda: positional.alibi_bias(4)),
    "two_sided_window_softcap": dict(mask=lambda: masks.sliding_window(3, 2), heads=(4, 2),
                                     mod=lambda: score_mods.soft_cap(1.5)),
    "dense_boolean_mask": dict(mask=lambda: np.random.default_rng(3).random((1, 1, 40, 40)) < 0.3,
                               heads=(4, 2)),
    "dense_bias_array": dict(mask=lambda: masks.causal(), heads=(4, 2),
                             mod=lambda: np.random.default_rng(4).standard_normal(
                                 (1, 4, 40, 40)).astype(np.float32)),
    "segments_and_causal": dict(mask=lambda: masks.segments(
        np.repeat(np.arange(4), 10)[None].repeat(2, 0)) & masks.causal(), heads=(4, 2)),
    "rows_that_see_nothing": dict(mask=lambda: masks.sliding_window(0, 0) & masks.prefix_lm(0)
                                  & masks.dilated(1, 3) & masks.full()
                                  | (masks.global_tokens([39]) & masks.causal()), heads=(4, 2)),
}


@pytest.mark.parametrize("request_name", list(REQUESTS))
@pytest.mark.parametrize("impl", IMPL_NAMES)
def test_impl_serves_the_contract(impl, request_name):
  r = REQUESTS[request_name]
  heads, kv_heads = r["heads"]
  mod = r.get("mod", lambda: None)()
  _skip_if(C.check_impl(impl, r["mask"](), mod, heads=heads, kv_heads=kv_heads,
                        nq=r.get("nq", C.LENGTH), what=f"{impl}/{request_name}"))


def test_every_impl_declares_its_place_and_options():
  """Declarations the rest of attnlab reads: options are Fields with a name, tiled impls
  declare tiles, auto's ranks are distinct per backend."""
  for name, spec in IMPLS.items():
    assert all(f.name and f.doc for f in spec.options), name
    if spec.tiles is not None:
      smallest, largest, overhead = spec.tiles
      assert 0 < smallest <= largest and overhead >= 0, name


# ----------------------------------------------------------------------------- slow tier: cross products


def _slow(*values):
  return pytest.param(*values, marks=pytest.mark.slow)


@pytest.mark.parametrize("pattern,name,impl", [
    _slow(p, m, i) for p in PATTERNS.names() for m in SCORE_MODS.names() for i in IMPL_NAMES])
def test_pattern_with_score_mod(pattern, name, impl):
  mask, _ = C.pattern_mask(pattern, heads=C.HEADS)
  _skip_if(C.check_impl(impl, mask, _example(name), kv_heads=1, what=f"{pattern}/{name}/{impl}"))


@pytest.mark.parametrize("position,pattern", [
    _slow(p, q) for p in POSITION_NAMES for q in PATTERNS.names() if PATTERNS.get(q).causal])
def test_position_with_pattern_in_a_language_model(position, pattern):
  config = C.model_config(pattern, position)
  C.check_causal(config, f"{position}/{pattern}")
  _skip_if(C.check_cached_decoding(config, f"{position}/{pattern}"))


@pytest.mark.parametrize("pattern,impl", [
    _slow(p, i) for p in PATTERNS.names() if PATTERNS.get(p).causal for i in ("blockwise", "pallas")])
def test_pattern_model_through_an_impl_decodes_from_its_cache(pattern, impl):
  """The cached step through the impl's own decode path (the Pallas split-K kernel for
  bands), against the same model's full forward."""
  _skip_if(C.check_cached_decoding(C.model_config(pattern, "alibi", impl=impl),
                                   f"{pattern}/{impl}"))


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


@pytest.mark.slow
def test_ring_serves_every_pattern_and_modifier_on_a_sequence_mesh():
  """``impl='ring'`` needs a mesh that shards the sequence: the same impl checks on 4
  virtual devices (tests/ring_conformance_worker.py), every pattern and modifier."""
  tests = pathlib.Path(__file__).resolve().parent
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      filter(None, [str(tests.parent), str(tests), os.environ.get("PYTHONPATH")])))
  done = subprocess.run([sys.executable, str(tests / "ring_conformance_worker.py")],
                        capture_output=True, text=True, timeout=1200, env=env)
  assert done.returncode == 0, done.stderr[-3000:]
  report = json.loads(done.stdout.strip().splitlines()[-1])
  assert not report["failed"], report["failed"]
  assert len(report["passed"]) >= 10, report
