"""scripts/bench_kernels.py: the FLOP count, the correctness gate and the reporting of
implementations a backend lacks (reported in the table, never a crash)."""

import importlib.util
import sys

import jax.numpy as jnp
import pytest
from helpers import REPO


@pytest.fixture(scope="module")
def bench():
  spec = importlib.util.spec_from_file_location("bench_kernels", REPO / "scripts" / "bench_kernels.py")
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module
  spec.loader.exec_module(module)
  return module


def test_flop_count_follows_flash_attention_convention(bench):
  # two matmuls of 2·N²·D each per (batch, head): 4·N²·D; causal halves; backward 2.5x
  assert bench.attention_flops(2, 3, 1024, 64, False, False) == 4 * 2 * 3 * 1024**2 * 64
  assert bench.attention_flops(1, 1, 100, 8, True, False) == 2 * 100**2 * 8
  assert bench.attention_flops(1, 1, 100, 8, True, True) == 3.5 * 2 * 100**2 * 8


def test_outputs_checked_against_xla_and_missing_backends_reported(bench):
  impls = bench.implementations(block=16, window=8, bigbird_block=16)
  named = ("attnlab_pallas", "jax_pallas", "cudnn", "tokamax_xla", "tokamax_xla_chunked")
  errors = bench.check_outputs({k: impls[k] for k in named if k in impls}, n=48, heads=2,
                               head_dim=16, dtype=jnp.float32, causal=True)
  assert errors["attnlab_pallas"] < 1e-5 and errors["jax_pallas"] < 1e-5
  assert isinstance(errors["cudnn"], str) and "cuDNN" in errors["cudnn"]   # CPU: no cuDNN
  if importlib.util.find_spec("tokamax"):                                    # the [gpu] extra
    assert errors["tokamax_xla"] < 1e-5 and errors["tokamax_xla_chunked"] < 1e-5
  rows = bench.measure({k: impls[k] for k in ("attnlab_pallas", "cudnn")}, lengths=[32],
                       head_dims=[16], causals=[True], batch_tokens=1, heads=2,
                       dtype=jnp.float32, repeats=1, max_seconds=60, progress=False)
  by = {(r["impl"], r["mode"]): r for r in rows}
  assert by[("attnlab_pallas", "fwd+bwd")]["seconds"] > 0
  assert by[("cudnn", "fwd")]["tflops"] is None and "cuDNN" in by[("cudnn", "fwd")]["status"]


def test_modifier_rows_are_checked_against_xla_with_the_same_bias(bench):
  impls = bench.implementations(block=16, window=8, bigbird_block=16)
  mods = {k: impls[k] for k in bench.MODIFIERS}
  errors = bench.check_outputs(mods, n=48, heads=2, head_dim=16, dtype=jnp.float32, causal=True)
  assert set(errors) == set(bench.MODIFIERS)
  assert all(isinstance(e, float) and e < 1e-5 for e in errors.values()), errors
  # and the check would see a wrong modifier: ALiBi's output differs from plain attention
  plain = bench.check_outputs({"pallas_alibi": impls["attnlab_pallas"]}, n=48, heads=2,
                              head_dim=16, dtype=jnp.float32, causal=True)
  assert plain["pallas_alibi"] > 1e-3
