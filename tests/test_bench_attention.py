"""scripts/bench_attention.py: the exponent fit, the planned-memory measure and the
skip rules (a size that would not fit is reported, never run)."""

import importlib.util
import sys

import numpy as np
import pytest
from helpers import REPO


@pytest.fixture(scope="module")
def bench():
  spec = importlib.util.spec_from_file_location("bench_attention",
                                                REPO / "scripts" / "bench_attention.py")
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module          # dataclasses look their module up here
  spec.loader.exec_module(module)
  return module


def test_fit_exponent_recovers_power_laws(bench):
  ns = [1024, 2048, 4096, 8192]
  assert bench.fit_exponent(ns, [3e-6 * n ** 2 for n in ns]) == pytest.approx(2.0)
  assert bench.fit_exponent(ns, [5.0 * n for n in ns]) == pytest.approx(1.0)
  assert np.isnan(bench.fit_exponent([1024], [1.0]))


def test_planned_memory_separates_dense_from_blockwise(bench):
  paths = {p.name: p for p in bench.make_paths(window=64, heads=2)}

  def planned(name, n):
    return bench.peak_bytes(bench._compiled(paths[name].fn, n, 2, 32, backward=True))

  n = 2048
  dense, window = planned("reference", n), planned("sliding_window", n)
  assert dense > 2 * n * n * 4          # at least one [H, N, N] float32 score matrix
  assert window < dense / 4
  assert planned("reference", 2 * n) > 3.5 * dense          # quadratic
  assert planned("sliding_window", 2 * n) < 2.5 * window    # linear


def test_oversized_plans_are_skipped_not_run(bench):
  paths = [p for p in bench.make_paths(window=64, heads=2) if p.name in ("reference", "linear")]
  rows = bench.measure(paths, [512, 1024], heads=2, head_dim=16, repeats=1,
                       memory_limit=2 * 1024 * 1024 * 4, max_seconds=60, progress=False)
  by = {(r["path"], r["n"]): r for r in rows}
  # reference at N=1024 plans > 8 MiB (two heads of 1024^2 float32 scores): skipped
  assert by[("reference", 1024)]["status"].startswith("skipped: needs")
  assert by[("reference", 1024)]["fwd_s"] is None
  for n in (512, 1024):
    assert by[("linear", n)]["status"] == "ok" and by[("linear", n)]["fwd_bwd_s"] > 0
  text = bench.markdown(rows, paths, bench.summarize(rows, paths, (512, 1024)), (512, 1024),
                        1024, "header")
  assert "skipped (memory)" in text
