"""The conformance suite for kinds (``KINDS``): every registered entry is tested
because it is registered (the checks, the oracles and the tiers: ``tests/conformance.py``)."""

from __future__ import annotations

import numpy as np
import pytest

import conformance as C
from attnlab.attention import KINDS, PATTERNS

# ----------------------------------------------------------------------------- kinds


@pytest.mark.parametrize("kind", KINDS.names())
def test_kind_weights_reproduce_its_output(kind):
  spec = KINDS.get(kind)
  C.skip_if(None if spec.weights is not None else f"kind {kind!r} declares no weights")
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
  C.skip_if(spec.generation_refusal and f"kind {kind!r} {spec.generation_refusal}")
  C.check_causal(config, kind)
  reasons = [C.check_cached_decoding(config, kind), C.check_generation(config, kind)]
  C.skip_if("; ".join(r for r in reasons if r))


@pytest.mark.parametrize("kind", KINDS.names())
def test_kind_fields_are_validated(kind):
  spec = KINDS.get(kind)
  att = C.attention_block("causal", kind, kv_heads=C.HEADS if spec.shared_qk else C.KV_HEADS)
  C.check_field_validation(att, "model.attention", spec.fields,
                           C.attention_validator("none" if spec.shared_qk else "rope"), kind)
