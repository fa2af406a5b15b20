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


def test_timed_rounds_alternate_length_by_length_with_the_baselines_first(bench, monkeypatch):
  """Every speed-up's two sides are timed next to each other in every round: the rounds go
  length by length, the baseline first at each length, after every program ran untimed."""
  log = []

  def runner(compiled, args):
    key = next(k for k, v in programs.items() if v is compiled)
    return lambda: log.append(key)

  programs = {}
  real_compiled = bench._compiled

  def compiled(fn, n, heads, head_dim, backward):
    program = real_compiled(fn, n, heads, head_dim, backward)
    name = next(p.name for p in paths if p.fn is fn)
    programs[(name, n, "fwd_bwd" if backward else "fwd")] = program
    return program

  paths = [p for p in bench.make_paths(window=16, heads=2) if p.name in ("linear", "xla")]
  monkeypatch.setattr(bench, "_runner", runner)
  monkeypatch.setattr(bench, "_compiled", compiled)
  rows = bench.measure(paths, [64, 128], heads=2, head_dim=8, repeats=2, memory_limit=2**30,
                       max_seconds=60, progress=False, first=("linear",))
  # linear is the baseline here: first at each length though make_paths lists xla first
  one_round = [(p, n, m) for n in (64, 128) for p in ("linear", "xla") for m in ("fwd", "fwd_bwd")]
  assert log == one_round * 2
  for r in rows:
    assert r["status"] == "ok" and len(r["fwd_bwd"]["times_s"]) == 2
    assert r["fwd_bwd_s"] == r["fwd_bwd"]["median_s"] and r["fwd_s"] == r["fwd"]["median_s"]


def _row(path, n, fwd_bwd, fwd=(1.0, 1.0, 1.0)):
  from attnlab import benchtime
  return {"path": path, "n": n, "status": "ok", "peak_bytes": 2**20,
          "fwd_bwd": benchtime.spread(fwd_bwd), "fwd": benchtime.spread(fwd),
          "fwd_bwd_s": sorted(fwd_bwd)[1], "fwd_s": sorted(fwd)[1]}


def test_speedups_divide_times_of_the_same_rounds_and_show_both_sides(bench):
  # blockwise_causal 2, 4, 6 s and sliding_window 1, 1, 3 s in three rounds at N=4096:
  # ratio of medians 4 / 1 = 4.00; per round 2, 4, 2
  rows = [_row("blockwise_causal", 4096, [2.0, 4.0, 6.0]),
          _row("sliding_window", 4096, [1.0, 1.0, 3.0]),
          _row("blockwise_causal", 8192, [8.0, 8.0, 8.0]),
          {"path": "sliding_window", "n": 8192, "status": "skipped: predicted 999 s",
           "fwd_s": None, "fwd_bwd_s": None, "peak_bytes": None}]
  got = bench.ratios(rows, ["blockwise_causal"], modes=("fwd_bwd",))
  assert len(got) == 1          # nothing at 8192 (one side skipped), no self-ratio
  c = got[0]
  assert (c["baseline"], c["path"], c["n"], c["mode"]) == ("blockwise_causal", "sliding_window",
                                                           4096, "fwd_bwd")
  assert c["ratio"] == pytest.approx(4.0) and c["paired_ratios"] == pytest.approx([2, 4, 2])
  assert c["numerator"]["times_s"] == [2.0, 4.0, 6.0]
  paths = [p for p in bench.make_paths(window=256, heads=4)
           if p.name in ("blockwise_causal", "sliding_window")]
  summary = bench.summarize(rows, paths, (4096, 8192))
  text = bench.markdown(rows, paths, summary, (4096, 8192), 4096, "header",
                        ["blockwise_causal"])
  # the exponents table's speed-up and the per-length table: ratio with its range, both times
  assert "| 4.00× (2.00–4.00) |" in text
  assert ("| sliding_window | 4096 | 1000.0 (1000.0–3000.0) | 4000.0 (2000.0–6000.0) | "
          "4.00× (2.00–4.00) |") in text
  assert bench.speedups(rows, 4096, "blockwise_causal")["sliding_window"]["ratio_min"] == 2.0
