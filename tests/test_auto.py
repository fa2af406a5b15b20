"""``impl="auto"`` (``attnlab/attention/core.py``: ``choose_impl`` over each implementation's
declared ``auto_rank``, ``tested_on`` and ``own_kernel``): on each backend it picks the first
implementation in the backend's order that serves the request, passing over attnlab's own
kernel where it has not run (taking it only when nothing else serves, and saying so), says
whether attnlab has run its choice there, and logs the choice once on accelerators. GPU and
TPU are simulated by monkeypatching the backend. A GPU or TPU entry in ``tested_on`` is tied
to the committed check results in ``docs/gpu/``; there are none, so no entry names either."""

import dataclasses
import json
import logging
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attnlab import positional
from attnlab.attention import IMPLS, core, cudnn_impl, masks, reference_attention, score_mods
from attnlab.attention.strided import strided

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _qkv(dtype=jnp.float32, n=16, heads=2, d=16):
  rng = np.random.default_rng(0)
  return tuple(jnp.asarray(rng.standard_normal((1, n, heads, d)), dtype) for _ in range(3))


def declare(monkeypatch, name, **changes):
  """Replace the registered implementation ``name`` by a copy with ``changes`` (undone at
  the end of the test)."""
  monkeypatch.setitem(IMPLS._entries, name, dataclasses.replace(IMPLS.get(name), **changes))


@pytest.fixture
def backend(monkeypatch):
  def use(name):
    monkeypatch.setattr(jax, "default_backend", lambda: name)
    core._CHOICES_LOGGED.clear()
  return use


def test_cpu_dense_xla_while_small_reference_for_non_additive_blockwise_when_large():
  q, k, v = _qkv()
  assert core.choose_impl(q, k, v, masks.causal(), None)[0] == "xla"
  name, why = core.choose_impl(q, k, v, masks.causal(), score_mods.soft_cap(5.0))
  assert name == "reference" and "xla: impl='xla'" in why and "SoftCap" in why
  big = jnp.zeros((1, 4096, 2, 16))            # 4 * 2 * 4096^2 bytes = 128 MiB of scores
  name, why = core.choose_impl(big, big, big, masks.causal(), None)
  assert name == "blockwise"
  assert "xla: the score matrix would take 128 MiB" in why
  assert "reference: the score matrix would take 128 MiB" in why


def test_gpu_prefers_cudnn_then_tokamax_and_passes_over_the_untried_pallas_kernel(backend):
  backend("gpu")
  pytest.importorskip("tokamax")
  q, k, v = _qkv(jnp.bfloat16)
  name, why = core.choose_impl(q, k, v, masks.causal(), positional.alibi_bias(2))
  # the reason says the choice follows the design order, not a run on a GPU
  assert name == "cudnn" and why.startswith(
      "cudnn: first in auto's gpu order that serves the request (attnlab has not run it on "
      "gpu)")
  q, k, v = _qkv(jnp.float32)                  # cuDNN is half precision only
  name, why = core.choose_impl(q, k, v, masks.causal(), positional.alibi_bias(2))
  assert name == "tokamax" and "cudnn: impl='cudnn' takes float16 or bfloat16" in why
  # a block-sparse pattern: only pallas would skip its tiles, but it is attnlab's own kernel
  # and has never run on a GPU, so the dense XLA path serves and the reason names pallas
  name, why = core.choose_impl(q, k, v, strided(4), None)
  assert name == "xla" and "not chosen, attnlab's own kernel not yet run on gpu: pallas" in why
  assert "(attnlab has not run it on gpu)" in why


def test_an_untried_own_kernel_is_chosen_only_when_nothing_else_serves(backend, monkeypatch):
  backend("gpu")
  for name in ("xla", "reference", "blockwise"):      # auto on GPU: cudnn, tokamax, pallas
    declare(monkeypatch, name, auto_rank={})
  assert core.auto_order("gpu") == ("cudnn", "tokamax", "pallas")
  q, k, v = _qkv()
  name, why = core.choose_impl(q, k, v, strided(4), None)
  assert name == "pallas"
  assert ("pallas: nothing else serves this request; pallas is attnlab's own kernel and has "
          "not run on gpu") in why
  # once a committed run on the backend exists, it is the preferred path for what only it
  # serves, and the reason no longer says it has not run there
  declare(monkeypatch, "pallas", tested_on={"gpu": "compiled: docs/gpu/..."})
  declare(monkeypatch, "xla", auto_rank={"gpu": 4})
  name, why = core.choose_impl(q, k, v, strided(4), None)
  assert name == "pallas" and why.startswith(
      "pallas: first in auto's gpu order that serves the request.")
  # interpreting on CPU is not a run on the GPU: a "cpu" entry does not count there
  declare(monkeypatch, "pallas", tested_on={"cpu": "interpret mode"})
  assert core.choose_impl(q, k, v, strided(4), None)[0] == "xla"


def test_tpu_order_puts_the_fused_kernel_first_but_picks_it_only_once_run_there(backend,
                                                                              monkeypatch):
  backend("tpu")
  q, k, v = _qkv()
  name, why = core.choose_impl(q, k, v, masks.causal(), None)
  assert core.auto_order("tpu")[0] == "pallas" and name != "pallas"
  assert "not chosen, attnlab's own kernel not yet run on tpu: pallas" in why
  declare(monkeypatch, "pallas", tested_on={"tpu": "compiled: docs/gpu/..."})
  assert core.choose_impl(q, k, v, masks.causal(), None)[0] == "pallas"


def test_the_choice_is_logged_once_per_reason_on_accelerators_only(backend, caplog):
  q, k, v = _qkv()
  with caplog.at_level(logging.WARNING, logger="attnlab"):
    backend("cpu")
    core.dot_product_attention(q, k, v, mask=masks.causal())
    assert caplog.text == ""
    backend("gpu")
    for _ in range(3):
      core.dot_product_attention(q, k, v, mask=strided(4))
  lines = [r.getMessage() for r in caplog.records]
  assert len(lines) == 1 and lines[0].startswith("impl='auto' chose 'xla': ")


def test_cudnn_mapping_equals_the_reference_through_jax_nn_on_cpu(monkeypatch):
  """The arguments cudnn_impl passes (is_causal, local_window_size, dense bias) mean the
  pattern and bias it was given: run them through jax.nn's XLA implementation."""
  real = jax.nn.dot_product_attention
  monkeypatch.setattr(jax.nn, "dot_product_attention",
                      lambda *a, implementation, **kw: real(*a, implementation="xla", **kw))
  q, k, v = _qkv(n=24)
  for mask in (None, masks.full(), masks.causal(), masks.sliding_window(5)):
    for bias in (None, positional.alibi_bias(2)):
      got = cudnn_impl.cudnn_attention(q, k, v, mask=mask, score_mod=bias, scale=0.25)
      want = reference_attention(q, k, v, mask=mask, score_mod=bias, scale=0.25)
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- the table and the check files

def _committed_checks():
  """The results scripts/gpu_check.py wrote and someone committed."""
  for path in sorted((ROOT / "docs" / "gpu").glob("*.json")):
    yield path.name, json.loads(path.read_text())


def _passes(result, backend, name):
  tests = result.get("parts", {}).get("kernel_tests", {})
  counts = tests.get("by_impl", {}).get(name, {})
  return (result.get("dry_run") is False and result.get("backend") == backend
          and tests.get("status") == "ran"
          and counts.get("passed", 0) > 0 and counts.get("failed", 1) == 0)


def test_an_accelerator_in_tested_on_needs_a_committed_passing_run_there():
  """Every implementation, attnlab's own kernel or not: ``tested_on`` names a GPU or TPU only
  with a committed docs/gpu/*.json (scripts/gpu_check.py, not a dry run) whose kernel
  tests for it passed on that backend."""
  for backend in ("gpu", "tpu"):
    for name, spec in IMPLS.items():
      if backend in spec.tested_on:
        assert any(_passes(r, backend, name) for _, r in _committed_checks()), (
            f"impl {name!r} declares tested_on {backend!r}, but no committed "
            f"docs/gpu/*.json shows its kernel tests passing on {backend}")


def test_declarations_say_what_has_run_today():
  """Nothing of attnlab has run on a GPU or TPU (no docs/gpu/ results), so every declaration
  names CPU at most, and the Pallas kernel's says it was interpreted. When a committed GPU
  run lands, this test is where its new declaration is checked by hand."""
  assert not list(_committed_checks())
  assert {name: set(spec.tested_on) for name, spec in IMPLS.items()
          if name in ("xla", "reference", "blockwise", "pallas", "cudnn", "tokamax", "ring")} == {
      "xla": {"cpu"}, "reference": {"cpu"}, "blockwise": {"cpu"}, "pallas": {"cpu"},
      "cudnn": set(), "tokamax": {"cpu"}, "ring": {"cpu"}}
  assert IMPLS.get("pallas").tested_on["cpu"].startswith("interpret mode")
  assert "only" in IMPLS.get("tokamax").tested_on["cpu"]
  assert [name for name, spec in IMPLS.items() if spec.own_kernel] == ["pallas"]
  assert not core.tested("gpu") and not core.tested("tpu")
  assert set(core.tested("cpu")) >= {"xla", "reference", "blockwise", "pallas"}


def test_declarations_rank_on_known_backends():
  for name, spec in IMPLS.items():
    assert set(spec.auto_rank) <= set(core.BACKENDS), name
    assert set(spec.tested_on) <= set(core.BACKENDS), name
  for backend in core.BACKENDS:
    ranks = [spec.auto_rank[backend] for _, spec in IMPLS.items() if backend in spec.auto_rank]
    assert len(ranks) == len(set(ranks)), f"two impls share a rank on {backend}"
  # the documented orders (docs/kernels.md)
  assert core.auto_order("gpu") == ("cudnn", "tokamax", "pallas", "xla", "reference",
                                    "blockwise")
  assert core.auto_order("tpu") == ("pallas", "tokamax", "xla", "reference", "blockwise")
  assert core.auto_order("cpu") == ("xla", "reference", "blockwise")
