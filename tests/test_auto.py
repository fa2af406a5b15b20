"""``impl="auto"`` (``attnlab/attention/core.py``: ``choose_impl`` over each implementation's
declared ``auto_rank`` and ``verified_on``): on each backend it picks the first verified
implementation that serves
the request, an unverified one only when nothing verified serves (and says so), and logs
its choice once on accelerators. GPU and TPU are simulated by monkeypatching the backend.
The table of verified kernels is tied to the committed check results in ``docs/gpu/``."""

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


def test_gpu_prefers_cudnn_then_tokamax_and_never_the_unverified_pallas_kernel(backend):
  backend("gpu")
  pytest.importorskip("tokamax")
  q, k, v = _qkv(jnp.bfloat16)
  name, why = core.choose_impl(q, k, v, masks.causal(), positional.alibi_bias(2))
  assert name == "cudnn" and why.startswith("cudnn: first verified impl on gpu")
  q, k, v = _qkv(jnp.float32)                  # cuDNN is half precision only
  name, why = core.choose_impl(q, k, v, masks.causal(), positional.alibi_bias(2))
  assert name == "tokamax" and "cudnn: impl='cudnn' takes float16 or bfloat16" in why
  # a block-sparse pattern: only pallas would skip its tiles, but it is unverified on GPU,
  # so a verified dense path serves and the reason names pallas as passed over
  name, why = core.choose_impl(q, k, v, strided(4), None)
  assert name == "xla" and "not chosen, unverified on gpu: pallas" in why


def test_an_unverified_kernel_is_chosen_only_when_nothing_verified_serves(backend, monkeypatch):
  backend("gpu")
  for name in ("xla", "reference", "blockwise"):      # auto on GPU: cudnn, tokamax, pallas
    declare(monkeypatch, name, auto_rank={})
  assert core.auto_order("gpu") == ("cudnn", "tokamax", "pallas")
  q, k, v = _qkv()
  name, why = core.choose_impl(q, k, v, strided(4), None)
  assert name == "pallas"
  assert "no verified impl serves this request, and pallas has no committed gpu check" in why
  # once a committed check verifies it, it is the preferred path for what only it serves
  declare(monkeypatch, "pallas", verified_on=("gpu",))
  declare(monkeypatch, "xla", auto_rank={"gpu": 4})
  name, why = core.choose_impl(q, k, v, strided(4), None)
  assert name == "pallas" and why.startswith("pallas: first verified impl on gpu")


def test_tpu_order_puts_the_fused_kernel_first_but_picks_it_only_when_verified(backend,
                                                                             monkeypatch):
  backend("tpu")
  q, k, v = _qkv()
  name, why = core.choose_impl(q, k, v, masks.causal(), None)
  assert core.auto_order("tpu")[0] == "pallas" and name != "pallas"
  assert "not chosen, unverified on tpu: pallas" in why
  declare(monkeypatch, "pallas", verified_on=("tpu",))
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


def test_a_kernel_of_this_repository_is_verified_only_by_a_committed_passing_check():
  for backend in ("gpu", "tpu"):
    for name, spec in IMPLS.items():
      if spec.checked_here and backend in spec.verified_on:
        assert any(_passes(r, backend, name) for _, r in _committed_checks()), (
            f"impl {name!r} declares verified_on={backend!r}, but no committed "
            f"docs/gpu/*.json shows its kernel tests passing on {backend}")


def test_declarations_verify_only_what_auto_ranks_on_known_backends():
  for name, spec in IMPLS.items():
    assert set(spec.auto_rank) <= set(core.BACKENDS), name
    assert set(spec.verified_on) <= set(spec.auto_rank), name
  for backend in core.BACKENDS:
    ranks = [spec.auto_rank[backend] for _, spec in IMPLS.items() if backend in spec.auto_rank]
    assert len(ranks) == len(set(ranks)), f"two impls share a rank on {backend}"
  # the documented orders (docs/kernels.md)
  assert core.auto_order("gpu") == ("cudnn", "tokamax", "pallas", "xla", "reference",
                                    "blockwise")
  assert core.auto_order("tpu") == ("pallas", "tokamax", "xla", "reference", "blockwise")
  assert core.auto_order("cpu") == ("xla", "reference", "blockwise")
