"""attnlab.benchtime: the benchmark scripts' ratios come from alternating rounds of one run
(A B A B ... after an untimed warm-up of both), the ratio is the ratio of the medians and its
range the extremes of per-round ratios, and results files are replaced atomically."""

import json

import pytest

from attnlab import benchtime


class FakeClock:
  """A clock the fake programs advance by their own durations."""

  def __init__(self):
    self.now = 0.0

  def __call__(self):
    return self.now


def _programs(clock, log, durations):
  """name -> a program that logs its name and advances the clock by its next duration
  (warm-up runs take 100 s, so a leak of a warm-up into the timings shows)."""
  calls = {name: 0 for name in durations}

  def make(name):
    def run():
      log.append(name)
      i = calls[name]
      calls[name] += 1
      clock.now += 100.0 if i == 0 else durations[name][i - 1]
    return run
  return {name: make(name) for name in durations}


def test_rounds_alternate_after_warming_up_every_program():
  clock, log = FakeClock(), []
  durations = {"A": [2.0, 4.0, 6.0], "B": [1.0, 1.0, 3.0]}
  rounds = []
  times = benchtime.alternate(_programs(clock, log, durations), 3, clock=clock,
                              on_round=rounds.append)
  assert log == ["A", "B"] + ["A", "B"] * 3          # warm-up of both, then A B A B A B
  assert times == durations                           # no warm-up time in the timings
  assert rounds == [0, 1, 2]


def test_three_programs_go_round_in_order_and_warmup_can_be_skipped():
  clock, log = FakeClock(), []
  programs = _programs(clock, log, {"base": [1.0] * 3, "x": [2.0] * 3, "y": [3.0] * 3})
  for fn in programs.values():        # the caller warmed them up itself
    fn()
  log.clear()
  times = benchtime.alternate(programs, 2, warmup=0, clock=clock)
  assert log == ["base", "x", "y", "base", "x", "y"]
  assert times == {"base": [1.0, 1.0], "x": [2.0, 2.0], "y": [3.0, 3.0]}
  with pytest.raises(ValueError, match="repeats"):
    benchtime.alternate(programs, 0)


def test_ratio_of_medians_and_the_spread_of_paired_ratios_hand_worked():
  # A: 2, 4, 6 s; B: 1, 1, 3 s in the same three rounds
  # medians 4 and 1: ratio 4.0; per round 2/1 = 2, 4/1 = 4, 6/3 = 2: range 2..4
  got = benchtime.paired([2.0, 4.0, 6.0], [1.0, 1.0, 3.0])
  assert got["ratio"] == pytest.approx(4.0)
  assert got["paired_ratios"] == pytest.approx([2.0, 4.0, 2.0])
  assert (got["ratio_min"], got["ratio_max"]) == pytest.approx((2.0, 4.0))
  # the ratio of medians is not the median of ratios (that would be 2.0 here)
  # even rounds: medians average the middle two: (3 + 5) / 2 = 4 over (1 + 2) / 2 = 1.5
  assert benchtime.paired([3.0, 5.0, 1.0, 9.0], [1.0, 2.0, 1.0, 2.0])["ratio"] == \
      pytest.approx(4.0 / 1.5)
  with pytest.raises(ValueError, match="equally many rounds"):
    benchtime.paired([1.0, 2.0], [1.0])


def test_comparison_rows_keep_both_sides_times_and_format_them():
  row = benchtime.comparison(("dense", [2.0, 4.0, 6.0]), ("sparse", [1.0, 1.0, 3.0]),
                             n=1024, mode="fwd_bwd")
  assert row["n"] == 1024 and row["mode"] == "fwd_bwd"
  assert row["ratio_is"] == "time(dense) / time(sparse)"
  assert row["numerator"] == {"name": "dense", "times_s": [2.0, 4.0, 6.0], "median_s": 4.0,
                              "min_s": 2.0, "max_s": 6.0}
  assert row["denominator"]["median_s"] == 1.0 and row["denominator"]["max_s"] == 3.0
  assert benchtime.ratio_text(row) == "4.00× (2.00–4.00)"
  assert benchtime.time_text(row["numerator"]) == "4000.0 (2000.0–6000.0)"
  assert benchtime.time_text(row["denominator"], scale=1.0, digits=2) == "1.00 (1.00–3.00)"


def test_results_are_written_atomically_with_provenance(tmp_path):
  path = tmp_path / "sub" / "bench.json"
  path.parent.mkdir()
  (tmp_path / "sub" / "bench.provenance.json").write_text("{}")   # an older file's sidecar
  benchtime.write_json(path, {"rows": [1, 2]}, {"command": "python x.py", "commit": "abc"})
  assert not (tmp_path / "sub" / "bench.provenance.json").exists()   # replaced by the embedded one
  assert json.loads(path.read_text()) == {"provenance": {"command": "python x.py",
                                                         "commit": "abc"}, "rows": [1, 2]}
  with pytest.raises(ValueError, match="provenance"):
    benchtime.write_json(path, {"provenance": {}}, {})
  with pytest.raises(TypeError):              # not serialisable: the old file stays
    benchtime.write_json(path, {"rows": [object()]}, {})
  assert json.loads(path.read_text())["rows"] == [1, 2]
  assert sorted(p.name for p in path.parent.iterdir()) == ["bench.json"]


def test_a_figure_that_fails_half_written_leaves_the_old_file(tmp_path):
  png = tmp_path / "bench.png"
  png.write_bytes(b"old picture")

  class Broken:
    def savefig(self, path, **kwargs):
      with open(path, "wb") as f:
        f.write(b"half a pic")
      raise OSError("disk full")

  class Fine:
    def savefig(self, path, **kwargs):
      assert str(path).endswith(".png") and path != png    # a temporary with the suffix
      with open(path, "wb") as f:
        f.write(b"new picture")

  with pytest.raises(OSError, match="disk full"):
    benchtime.save_figure(Broken(), png)
  assert png.read_bytes() == b"old picture"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.png"]
  benchtime.save_figure(Fine(), png, dpi=100)
  assert png.read_bytes() == b"new picture"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.png"]


def test_the_load_line_says_how_busy_the_machine_was():
  text = benchtime.load_text({"start": [0.5, 1.0, 1.25], "end": None})
  assert "0.50 / 1.00 / 1.25 at the start, not available at the end" in text
  got = benchtime.load_average()
  assert got is None or (len(got) == 3 and all(x >= 0 for x in got))
