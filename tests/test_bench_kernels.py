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


def test_rounds_time_every_impl_beside_its_baseline(bench, monkeypatch):
  """Per size: every program compiled and warmed up, then rounds with the baselines (xla,
  attnlab_pallas) first; each ratio divides two times of the same round."""
  from attnlab import benchtime
  seen = []
  real = benchtime.alternate

  def alternate(programs, repeats, **kwargs):
    seen.append((list(programs), repeats, kwargs))
    return real(programs, repeats, **kwargs)

  monkeypatch.setattr(benchtime, "alternate", alternate)
  impls = bench.implementations(block=16, window=8, bigbird_block=16)
  named = {k: impls[k] for k in ("pallas_alibi", "attnlab_pallas", "xla")}
  rows = bench.measure(named, lengths=[32], head_dims=[16], causals=[True], batch_tokens=1,
                       heads=2, dtype=jnp.float32, repeats=2, max_seconds=60, progress=False)
  assert seen == [([(name, mode) for name in ("xla", "attnlab_pallas", "pallas_alibi")
                    for mode in ("fwd", "fwd+bwd")], 2, {"warmup": 0})]
  assert [(r["impl"], r["mode"]) for r in rows][:2] == [("pallas_alibi", "fwd"),
                                                         ("pallas_alibi", "fwd+bwd")]
  assert all(len(r["times"]["times_s"]) == 2 and r["seconds"] == r["times"]["median_s"]
             for r in rows)
  kinds = {(c["impl"], c["mode"]): (c["baseline"], c["kind"]) for c in bench.ratios(rows)}
  assert kinds == {("attnlab_pallas", "fwd"): ("xla", "speedup"),
                   ("attnlab_pallas", "fwd+bwd"): ("xla", "speedup"),
                   ("pallas_alibi", "fwd"): ("attnlab_pallas", "cost"),
                   ("pallas_alibi", "fwd+bwd"): ("attnlab_pallas", "cost")}


def test_ratio_directions_hand_worked(bench):
  from attnlab import benchtime

  def row(impl, times):
    return dict(impl=impl, head_dim=64, causal=True, n=256, mode="fwd+bwd",
                times=benchtime.spread(times), seconds=sorted(times)[1], tflops=1.0,
                status="ok")
  rows = [row("xla", [4.0, 4.0, 8.0]), row("attnlab_pallas", [1.0, 2.0, 2.0]),
          row("pallas_t5", [3.0, 2.0, 4.0]), row("pallas_sliding_window", [0.5, 1.0, 1.0])]
  got = {c["impl"]: c for c in bench.ratios(rows)}
  # speed-up over XLA: 4 / 2 = 2.00; rounds 4/1, 4/2, 8/2
  assert got["attnlab_pallas"]["ratio"] == pytest.approx(2.0)
  assert got["attnlab_pallas"]["paired_ratios"] == pytest.approx([4.0, 2.0, 4.0])
  # a modifier's cost: its time over the plain kernel's: 3 / 2 = 1.50; rounds 3, 1, 2
  assert got["pallas_t5"]["ratio"] == pytest.approx(1.5)
  assert got["pallas_t5"]["paired_ratios"] == pytest.approx([3.0, 1.0, 2.0])
  # block-sparse speed-up over the dense kernel: 2 / 1 = 2.00; rounds 2, 2, 2
  assert got["pallas_sliding_window"]["ratio"] == pytest.approx(2.0)
  assert got["pallas_sliding_window"]["ratio_min"] == got["pallas_sliding_window"]["ratio_max"]
  text = bench.markdown(rows, {}, [256], "header", bench.ratios(rows))
  assert ("| t5 | 64 | True | fwd+bwd | 256 | 3000.00 (2000.00–4000.00) | "
          "2000.00 (1000.00–2000.00) | 1.50× (1.00–3.00) |") in text.replace("pallas_t5", "t5")
