"""Same-run, alternating timing for the ratios the benchmark scripts report.

A speed ratio is only as good as the conditions its two sides were measured under. The
benchmark scripts (``scripts/bench_attention.py``, ``bench_decode.py``, ``bench_kernels.py``)
therefore measure every ratio like this:

- both sides are compiled and run once, untimed, before any timing;
- then ``repeats`` rounds, each timing every program once in a fixed order, so two sides
  alternate: A B A B ... (``alternate``);
- a ratio is the ratio of the two sides' medians, and its spread is the smallest and largest
  of the per-round ratios, each dividing two times taken in the same round (``paired``).
  A ratio never divides by a time measured in another run or another part of the run.

Every results row keeps each side's times (all rounds, median, min, max: ``spread``), so a
reader can redo the arithmetic. Results files are written atomically (``write_text``,
``write_json``, ``save_figure``): a run that dies leaves the previous file intact.
"""

from __future__ import annotations

import json
import os
import pathlib
import statistics
import time
from typing import Callable, Hashable, Mapping, Sequence


def alternate(programs: Mapping[Hashable, Callable[[], object]], repeats: int, *,
              warmup: int = 1, clock: Callable[[], float] = time.perf_counter,
              on_round: Callable[[int], None] | None = None) -> dict[Hashable, list[float]]:
  """Seconds of each program over ``repeats`` rounds: ``{name: [round 0, round 1, ...]}``.

  Each program is a callable that returns when its work is done (wrap a JAX computation in
  ``jax.block_until_ready``). First every program runs ``warmup`` times untimed (compiling
  it), in order; then each round runs every program once, in the mapping's order, so the
  timed runs interleave A B C A B C ... and a change in the machine's load falls on all
  sides alike. ``on_round(i)`` is called after round ``i``.
  """
  if repeats < 1:
    raise ValueError(f"repeats must be at least 1, got {repeats}")
  for _ in range(warmup):
    for fn in programs.values():
      fn()
  times: dict[Hashable, list[float]] = {name: [] for name in programs}
  for i in range(repeats):
    for name, fn in programs.items():
      start = clock()
      fn()
      times[name].append(clock() - start)
    if on_round is not None:
      on_round(i)
  return times


def spread(times: Sequence[float]) -> dict:
  """``{times_s, median_s, min_s, max_s}`` of one side's timed runs."""
  times = [float(t) for t in times]
  if not times:
    raise ValueError("no times")
  return {"times_s": times, "median_s": statistics.median(times), "min_s": min(times),
          "max_s": max(times)}


def paired(numerator: Sequence[float], denominator: Sequence[float]) -> dict:
  """``{ratio, ratio_min, ratio_max, paired_ratios}`` of two sides timed in the same rounds.

  ``ratio`` is median(numerator) / median(denominator); ``paired_ratios[i]`` is
  numerator[i] / denominator[i], two times from round i, and ``ratio_min`` / ``ratio_max``
  their extremes. The sides must come from the same rounds (equal length).
  """
  if len(numerator) != len(denominator) or not numerator:
    raise ValueError(f"paired ratios need equally many rounds on both sides, got "
                     f"{len(numerator)} and {len(denominator)}")
  per_round = [float(a) / float(b) for a, b in zip(numerator, denominator)]
  return {"ratio": statistics.median(numerator) / statistics.median(denominator),
          "ratio_min": min(per_round), "ratio_max": max(per_round),
          "paired_ratios": per_round}


def comparison(numerator: tuple[str, Sequence[float]], denominator: tuple[str, Sequence[float]],
               **labels) -> dict:
  """One ratio row: ``labels``, then both sides (``{name, times_s, median_s, min_s, max_s}``)
  and ``paired(numerator, denominator)``. For a speed-up of B over A, the numerator is A's
  time (the baseline) and the denominator B's."""
  (num_name, num_times), (den_name, den_times) = numerator, denominator
  return {**labels, "ratio_is": f"time({num_name}) / time({den_name})",
          "numerator": {"name": num_name, **spread(num_times)},
          "denominator": {"name": den_name, **spread(den_times)},
          **paired(num_times, den_times)}


def ratio_text(row: Mapping, digits: int = 2) -> str:
  """``'11.93× (11.50–12.31)'``: the ratio of medians, then the paired ratios' range."""
  return (f"{row['ratio']:.{digits}f}× ({row['ratio_min']:.{digits}f}–"
          f"{row['ratio_max']:.{digits}f})")


def time_text(side: Mapping, scale: float = 1e3, digits: int = 1) -> str:
  """``'348.3 (340.1–360.2)'``: one side's median, then its range (milliseconds by default)."""
  return (f"{side['median_s'] * scale:.{digits}f} ({side['min_s'] * scale:.{digits}f}–"
          f"{side['max_s'] * scale:.{digits}f})")


def _temporary(path: pathlib.Path) -> pathlib.Path:
  return path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")


def write_text(path: str | os.PathLike, text: str) -> pathlib.Path:
  """Write ``text`` through a temporary file beside ``path`` and a rename (atomic)."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = _temporary(path)
  try:
    tmp.write_text(text)
    os.replace(tmp, path)
  finally:
    tmp.unlink(missing_ok=True)
  return path


def write_json(path: str | os.PathLike, payload: Mapping, provenance: Mapping) -> pathlib.Path:
  """Write ``{"provenance": provenance, **payload}`` as JSON, atomically. ``provenance`` is
  ``attnlab.provenance.provenance()`` of the run that measured ``payload``. A
  ``<stem>.provenance.json`` beside ``path`` (the sidecar of an older results file that had
  no room for provenance) is removed: it described the file this one replaces."""
  if "provenance" in payload:
    raise ValueError("the payload has its own 'provenance' key")
  path = write_text(path, json.dumps({"provenance": dict(provenance), **payload}, indent=1))
  path.with_name(path.stem + ".provenance.json").unlink(missing_ok=True)
  return path


def load_average() -> list[float] | None:
  """The machine's 1, 5 and 15 minute load averages (None where the OS has none): recorded
  at a benchmark's start and end, so that a results file says how busy the machine was."""
  try:
    return [round(x, 2) for x in os.getloadavg()]
  except OSError:
    return None


def save_figure(fig, path: str | os.PathLike, **kwargs) -> pathlib.Path:
  """``fig.savefig`` through a temporary file and a rename (atomic)."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = _temporary(path)
  try:
    fig.savefig(tmp, **kwargs)
    os.replace(tmp, path)
  finally:
    tmp.unlink(missing_ok=True)
  return path


def load_text(load: Mapping) -> str:
  """A line for a results table: ``load`` is ``{"start": load_average(), "end": ...}``."""
  def fmt(x):
    return "not available" if x is None else " / ".join(f"{v:.2f}" for v in x)
  return (f"\nMachine load average (1 / 5 / 15 min): {fmt(load.get('start'))} at the start, "
          f"{fmt(load.get('end'))} at the end.\n")
