"""The conformance suite for implementations (``IMPLS``): every registered entry is tested
because it is registered (the checks, the oracles and the tiers: ``tests/conformance.py``)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import conformance as C
from attnlab import positional
from attnlab.attention import IMPLS, masks, score_mods

IMPL_NAMES = IMPLS.names()

# ----------------------------------------------------------------------------- impls

# Standard requests every implementation is held to (each skips what its impl refuses).
REQUESTS = {
    "full_cross_mha": dict(mask=lambda: masks.full(), heads=(4, 4), nq=24),
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
    # rows 0..19 see no key (whole tiles and a part of one); the others see key 20
    "rows_that_see_nothing": dict(mask=lambda: masks.global_tokens([20]) & masks.causal(),
                                  heads=(4, 2)),
    # values of another width than queries and keys (MLA's absorbed form, differential
    # attention's half-width heads)
    "wider_values_mqa_alibi": dict(mask=lambda: masks.causal(), heads=(4, 1), dv=2 * C.HEAD_DIM,
                                   mod=lambda: positional.alibi_bias(4)),
    "narrower_values_window": dict(mask=lambda: masks.sliding_window(6), heads=(4, 2),
                                   dv=C.HEAD_DIM // 2),
}


@pytest.mark.parametrize("request_name", list(REQUESTS))
@pytest.mark.parametrize("impl", IMPL_NAMES)
def test_impl_serves_the_contract(impl, request_name):
  r = REQUESTS[request_name]
  heads, kv_heads = r["heads"]
  mod = r.get("mod", lambda: None)()
  C.skip_if(C.check_impl(impl, r["mask"](), mod, heads=heads, kv_heads=kv_heads,
                        nq=r.get("nq", C.LENGTH), what=f"{impl}/{request_name}",
                        dv=r.get("dv")))


# Learned sinks (gpt-oss): every impl declaring them against the float64 definition, the
# others refusing them by name.
SINK_REQUESTS = {
    "causal_gqa": dict(mask=lambda: masks.causal(), heads=(4, 2)),
    "full_cross_mha": dict(mask=lambda: masks.full(), heads=(4, 4), nq=24),
    "window_mqa_alibi": dict(mask=lambda: masks.sliding_window(6), heads=(4, 1),
                             mod=lambda: positional.alibi_bias(4)),
    "segments_and_causal": dict(mask=lambda: masks.segments(
        np.repeat(np.arange(4), 10)[None].repeat(2, 0)) & masks.causal(), heads=(4, 2)),
    # rows 0..19 see no key: all their mass is on the sink, out = 0
    "rows_that_see_nothing": dict(mask=lambda: masks.global_tokens([20]) & masks.causal(),
                                  heads=(4, 2)),
}


@pytest.mark.parametrize("request_name", list(SINK_REQUESTS))
@pytest.mark.parametrize("impl", IMPL_NAMES)
def test_impl_serves_learned_sinks(impl, request_name):
  r = SINK_REQUESTS[request_name]
  heads, kv_heads = r["heads"]
  C.skip_if(C.check_impl_sinks(impl, r["mask"](), r.get("mod", lambda: None)(), heads=heads,
                               kv_heads=kv_heads, nq=r.get("nq", C.LENGTH),
                               what=f"{impl}/sinks/{request_name}"))


def test_every_impl_declares_its_place_and_options():
  """Declarations the rest of attnlab reads: options are Fields with a name, tiled impls
  declare tiles, auto's ranks are distinct per backend."""
  for name, spec in IMPLS.items():
    assert all(f.name and f.doc for f in spec.options), name
    if spec.tiles is not None:
      smallest, largest, overhead = spec.tiles
      assert 0 < smallest <= largest and overhead >= 0, name



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
