"""Time and memory of attention paths as the sequence grows: dense vs sparse vs linear.

  python scripts/bench_attention.py                      # N = 1k..32k, every path
  python scripts/bench_attention.py --lengths=1024,4096 --paths=blockwise_causal,sliding_window,linear
  python scripts/bench_attention.py --quick              # tiny smoke test, writes to the temp dir

For each path and length N (batch 1, 4 heads, head dim 64, float32, causal) it
times the jitted forward and forward+backward and reads the peak memory XLA plans for the
forward+backward program (arguments + outputs + temporaries, from
``compiled.memory_analysis()``). A size whose plan exceeds ``--memory_limit_gb``,
or whose predicted time (from the previous length and the path's exponent so
far) exceeds ``--max_seconds``, is reported as skipped, never run.

Timing (``attnlab.benchtime``): every program is compiled and run once untimed, then
``--repeats`` rounds each time every (path, N) once, length by length with the baselines
(``--baseline``, default ``blockwise_causal`` and ``xla``) first at each length. A speed-up
over a baseline is the ratio of the two medians; its range is the smallest and largest ratio
of two times from the same round. Nothing is divided by a time from another run.

Writes ``<out>.md`` (the tables: times, fitted exponents, every path's speed-up over every
baseline at every length beside both sides' times), ``<out>.json`` (with provenance; every
round's time of every cell, and the ``ratios``) and ``<out>.png`` (log-log time and memory
with fitted exponents), each atomically.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import platform
import tempfile
import sys
import time
from typing import Callable

from attnlab import benchtime, runtime
from attnlab.provenance import provenance

runtime.configure()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from attnlab.attention import IMPLS, dot_product_attention, efficient, masks  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Path:
  name: str
  fn: Callable            # (q, k, v, n) -> out
  efficient: bool         # expected to scale ~linearly in N
  doc: str
  tile: Callable | None = None   # n -> the tile dot_product_attention chooses (default options)


def _softmax(impl, make_mask, block=512):
  def fn(q, k, v, n):
    return dot_product_attention(q, k, v, mask=make_mask(n), impl=impl, block_q=block,
                                 block_kv=block)
  return fn


def _default_tiles(make_mask):
  """Through the public API with default options: the tile comes from the pattern."""
  def fn(q, k, v, n):
    return dot_product_attention(q, k, v, mask=make_mask(n), impl="blockwise")
  return fn


def _chosen_tile(make_mask):
  return lambda n: masks.choose_tile(make_mask(n), n, n, *IMPLS.get("blockwise").tiles)


def make_paths(window: int, heads: int) -> list[Path]:
  """Every benchmarked path; window-like patterns reach ``window`` keys back.

  Tile sizes are each path's fastest on the 2-core CPU we measured (dense causal at
  N=8192: 128 -> 1.91 s, 256 -> 1.10 s, 512 -> 1.50 s, 1024 -> 2.32 s forward+backward).
  """
  causal = lambda n: masks.causal()  # noqa: E731
  key = jax.random.PRNGKey(0)
  return [
      Path("reference", _softmax("reference", causal), False,
           "dense causal, materialised [N, N] scores"),
      Path("xla", _softmax("xla", causal), False, "jax.nn.dot_product_attention, causal"),
      Path("blockwise_causal", _softmax("blockwise", causal, 256), False,
           "blockwise dense causal (skips tiles above the diagonal), 256 tiles"),
      Path("sliding_window", _softmax("blockwise", lambda n: masks.sliding_window(window), 256),
           True, f"blockwise, keys i-{window}..i, 256 tiles"),
      Path("dilated", _softmax("blockwise", lambda n: masks.dilated(window // 4, 4)
                               & masks.causal(), 256), True,
           f"blockwise, every 4th key back to i-{window}, 256 tiles"),
      Path("bigbird", _softmax("blockwise", lambda n: masks.bigbird(
          64, 3, 1, 2, seed=0, num_heads=heads, causal=True), 64), True,
           "blockwise, blocks of 64: window 3 + global 1 + random 2, causal, 64 tiles"),
      Path("longformer", _softmax("blockwise", lambda n: masks.longformer(
          window, [0], causal=True), 256), True,
           f"blockwise, window {window} + global token 0, causal, 256 tiles"),
      Path("lsh", lambda q, k, v, n: efficient.lsh_attention(
          q, v, key=key, num_buckets=max(2, 2 * (n // 128) // 2), num_hashes=2, chunk_size=64),
           True, "Reformer LSH, 2 hashes, chunks of 64, ~N/128 buckets, causal"),
      Path("performer", lambda q, k, v, n: efficient.performer_attention(
          q, k, v, key=key, num_features=256, causal=True), True,
           "FAVOR+, 256 features, causal (chunked prefix sums)"),
      Path("linear", lambda q, k, v, n: efficient.linear_attention(q, k, v, causal=True), True,
           "elu+1 linear attention, causal (chunked prefix sums)"),
  ] + [   # the public API with default options: tiles chosen from the pattern (issue 20)
      Path(f"{name}_default", _default_tiles(make), name != "causal", f"{what}, default tiles",
           _chosen_tile(make))
      for name, make, what in (
          ("causal", causal, "blockwise dense causal"),
          ("sliding_window", lambda n: masks.sliding_window(window), f"keys i-{window}..i"),
          ("dilated", lambda n: masks.dilated(window // 4, 4) & masks.causal(),
           f"every 4th key back to i-{window}"),
          ("bigbird", lambda n: masks.bigbird(64, 3, 1, 2, seed=0, num_heads=heads, causal=True),
           "BigBird blocks of 64, causal"),
          ("longformer", lambda n: masks.longformer(window, [0], causal=True),
           f"window {window} + global token 0, causal"))]


def _compiled(fn, n, heads, head_dim, backward):
  spec = jax.ShapeDtypeStruct((1, n, heads, head_dim), jnp.float32)

  def forward(q, k, v):
    return fn(q, k, v, n)

  if backward:
    def run(q, k, v):
      return jax.grad(lambda q, k, v: jnp.sum(forward(q, k, v)), argnums=(0, 1, 2))(q, k, v)
  else:
    run = forward
  return jax.jit(run).lower(spec, spec, spec).compile()


def peak_bytes(compiled) -> int:
  """Arguments + outputs + temporaries that XLA allocates for the program."""
  m = compiled.memory_analysis()
  return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
             - m.alias_size_in_bytes)


def time_once(compiled, args) -> float:
  t0 = time.perf_counter()
  jax.block_until_ready(compiled(*args))
  return time.perf_counter() - t0


def _runner(compiled, args):
  return lambda: jax.block_until_ready(compiled(*args))


def fit_exponent(ns, values) -> float:
  """Least-squares slope of log(value) against log(N)."""
  ns, values = np.asarray(ns, float), np.asarray(values, float)
  if len(ns) < 2:
    return float("nan")
  return float(np.polyfit(np.log(ns), np.log(values), 1)[0])


def measure(paths, lengths, *, heads, head_dim, repeats, memory_limit, max_seconds, progress=True,
            first=()):
  """Rows ``{path, n, fwd_s, fwd_bwd_s, peak_bytes, status, fwd, fwd_bwd}`` (times None when
  skipped); ``fwd`` / ``fwd_bwd`` are ``benchtime.spread`` of the timed runs (every round's
  seconds, median, min, max) and ``fwd_s`` / ``fwd_bwd_s`` their medians.

  First every (path, N) is compiled and run once, untimed (that run's time predicts the
  next length's, for ``max_seconds``); then come ``repeats`` timed rounds, each running
  every (path, N) once, forward then forward+backward, length by length, with the paths
  named in ``first`` (the baselines of the speed-ups) first at each length. So a path and
  its baseline alternate (A B A B ...), a speed-up's two sides are timed next to each other
  in every round, and a change in the machine's load falls on all sizes and paths alike.
  """
  from tqdm import tqdm
  rows, ready = [], []      # ready: (row, forward, backward, args)
  bar = tqdm(total=len(paths) * len(lengths), disable=not progress,
             desc="bench_attention: compile")
  for path in paths:
    done = []                                         # (n, untimed fwd+bwd seconds)
    for n in lengths:
      bar.set_postfix_str(f"{path.name} N={n}")
      row = {"path": path.name, "n": n, "fwd_s": None, "fwd_bwd_s": None, "peak_bytes": None,
             "status": "ok"}
      rows.append(row)
      bar.update()
      if done:
        n0, t0 = done[-1]
        slope = fit_exponent(*zip(*done)) if len(done) > 1 else 2.0
        predicted = (repeats + 1) * t0 * (n / n0) ** max(slope, 1.0)
        if predicted > max_seconds:
          row["status"] = f"skipped: predicted {predicted:.0f} s > --max_seconds"
          continue
      rng = np.random.default_rng(n)
      args = [jnp.asarray(rng.standard_normal((1, n, heads, head_dim), np.float32))
              for _ in range(3)]
      try:
        backward = _compiled(path.fn, n, heads, head_dim, backward=True)
        row["peak_bytes"] = peak_bytes(backward)
        if row["peak_bytes"] > memory_limit:
          row["status"] = (f"skipped: needs {row['peak_bytes'] / 2**30:.1f} GiB "
                           f"> {memory_limit / 2**30:.1f} GiB")
          continue
        forward = _compiled(path.fn, n, heads, head_dim, backward=False)
        time_once(forward, args)                      # untimed first runs
        done.append((n, time_once(backward, args)))
        ready.append((row, forward, backward, args))
      except Exception as e:  # noqa: BLE001  (an allocation failure must not end the table)
        row["status"] = f"skipped: {type(e).__name__}: {str(e).splitlines()[0][:80]}"
  bar.close()
  rank = {name: i for i, name in enumerate(first)}
  ready.sort(key=lambda r: (r[0]["n"], rank.get(r[0]["path"], len(rank))))   # stable
  programs = {}
  for row, forward, backward, args in ready:
    programs[(row["path"], row["n"], "fwd")] = _runner(forward, args)
    programs[(row["path"], row["n"], "fwd_bwd")] = _runner(backward, args)
  rounds = tqdm(total=repeats, disable=not progress, desc="bench_attention: timed rounds")
  times = benchtime.alternate(programs, repeats, warmup=0, on_round=lambda _: rounds.update())
  rounds.close()
  for row, *_ in ready:
    for mode in ("fwd", "fwd_bwd"):
      row[mode] = benchtime.spread(times[(row["path"], row["n"], mode)])
      row[f"{mode}_s"] = row[mode]["median_s"]
  return rows


def _by_path(rows):
  out = {}
  for r in rows:
    out.setdefault(r["path"], []).append(r)
  return out


def summarize(rows, paths, fit_range):
  """Per path: exponents of time and memory over the measured lengths within ``fit_range``."""
  lo, hi = fit_range
  summary = {}
  for name, rs in _by_path(rows).items():
    ok = [r for r in rs if r["status"] == "ok" and lo <= r["n"] <= hi]
    ns = [r["n"] for r in ok]
    summary[name] = {
        "time_exponent": fit_exponent(ns, [r["fwd_bwd_s"] for r in ok]),
        "fwd_exponent": fit_exponent(ns, [r["fwd_s"] for r in ok]),
        "memory_exponent": fit_exponent(ns, [r["peak_bytes"] for r in ok]),
        "lengths": ns,
    }
  return summary


MODES = {"fwd_bwd": "forward+backward", "fwd": "forward"}


def ratios(rows, baselines, modes=tuple(MODES)) -> list[dict]:
  """Speed-up of every path over each baseline at every length both ran, per mode:
  ``benchtime.comparison`` rows (numerator: the baseline's time, denominator: the path's;
  both from the same rounds of this run) with ``baseline``, ``path``, ``n`` and ``mode``."""
  ok = {(r["path"], r["n"]): r for r in rows if r["status"] == "ok"}
  out = []
  for baseline in baselines:
    for mode in modes:
      for (path, n), r in ok.items():
        base = ok.get((baseline, n))
        if base is None or path == baseline:
          continue
        out.append(benchtime.comparison((baseline, base[mode]["times_s"]),
                                        (path, r[mode]["times_s"]),
                                        baseline=baseline, path=path, n=n, mode=mode))
  return out


def speedups(rows, n, baseline="blockwise_causal", mode="fwd_bwd") -> dict:
  """``{path: comparison}`` over ``baseline`` at length ``n`` (see ``ratios``), the baseline's
  own row (1.00×) included."""
  ok = {r["path"]: r for r in rows if r["n"] == n and r["status"] == "ok"}
  if baseline not in ok:
    return {}
  times = ok[baseline][mode]["times_s"]
  return {path: benchtime.comparison((baseline, times), (path, r[mode]["times_s"]),
                                     baseline=baseline, path=path, n=n, mode=mode)
          for path, r in ok.items()}


def _fmt(x) -> str:
  return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}"


def markdown(rows, paths, summary, fit_range, speedup_n, header,
             baseline="blockwise_causal", ratio_rows=None) -> str:
  """The time table (medians), the exponents with the speed-up over the first baseline at
  ``speedup_n``, and for every baseline a table of every path's speed-up at every length,
  each beside both sides' times (median and range over the rounds).

  ``baseline``: a name or a list of names (the first one is the exponents table's);
  ``ratio_rows``: ``ratios(rows, baselines)`` (computed when None)."""
  baselines = [baseline] if isinstance(baseline, str) else list(baseline)
  if ratio_rows is None:
    ratio_rows = ratios(rows, baselines)
  lengths = sorted({r["n"] for r in rows})
  lines = [header, "", "Forward+backward time (ms) / forward time (ms) / planned peak memory "
           "(MiB); times are medians over the timed rounds (ranges: the speed-up tables "
           "below and the JSON):",
           "", "| path | " + " | ".join(f"N={n}" for n in lengths) + " |",
           "|---|" + "---|" * len(lengths)]
  by = _by_path(rows)
  for p in paths:
    cells = []
    for r in by[p.name]:
      if r["status"] != "ok":
        cells.append("skipped" + (" (memory)" if "GiB" in r["status"] else
                                  " (time)" if "predicted" in r["status"] else " (error)"))
      else:
        cells.append(f"{1e3 * r['fwd_bwd_s']:.1f} / {1e3 * r['fwd_s']:.1f} / "
                     f"{r['peak_bytes'] / 2**20:.0f}")
    lines.append(f"| {p.name} | " + " | ".join(cells) + " |")
  lo, hi = fit_range
  head = baselines[0] if baselines else None
  ups = speedups(rows, speedup_n, head) if head else {}
  lines += ["", f"Fitted exponents over N = {lo}..{hi} (time ~ N^a; memory ~ N^b)"
            + (f", and speed-up of forward+backward over `{head}` at N={speedup_n}: ratio of "
               "medians (smallest–largest ratio within one round)" if head else "") + ":", "",
            "| path | what | time a (fwd+bwd) | time a (fwd) | memory b | speed-up |",
            "|---|---|---|---|---|---|"]
  for p in paths:
    s = summary[p.name]
    doc = p.doc if p.tile is None else f"{p.doc} (tile {p.tile(speedup_n)} at N={speedup_n})"
    up = benchtime.ratio_text(ups[p.name]) if p.name in ups else "—"
    lines.append(f"| {p.name} | {doc} | {_fmt(s['time_exponent'])} | {_fmt(s['fwd_exponent'])} | "
                 f"{_fmt(s['memory_exponent'])} | {up} |")
  for base in baselines:
    mine = [c for c in ratio_rows if c["baseline"] == base and c["mode"] == "fwd_bwd"]
    lines += ["", f"Speed-up of forward+backward over `{base}`, every path at every length "
              f"both ran: `{base}`'s time over the path's, both timed in the same rounds. "
              "Times in ms, median (smallest–largest); the speed-up is the ratio of the "
              "medians (smallest–largest of the per-round ratios). Forward-only speed-ups: "
              "the JSON's `ratios`.", ""]
    if not mine:
      lines.append(f"(none: `{base}` did not run at any length in this run)")
      continue
    lines += [f"| path | N | path ms | `{base}` ms | speed-up |", "|---|---|---|---|---|"]
    order = {p.name: i for i, p in enumerate(paths)}
    for c in sorted(mine, key=lambda c: (order.get(c["path"], len(order)), c["n"])):
      lines.append(f"| {c['path']} | {c['n']} | {benchtime.time_text(c['denominator'])} | "
                   f"{benchtime.time_text(c['numerator'])} | {benchtime.ratio_text(c)} |")
  skipped = [r for r in rows if r["status"] != "ok"]
  if skipped:
    lines += ["", "Skipped: " + "; ".join(f"{r['path']} N={r['n']} ({r['status']})"
                                          for r in skipped)]
  return "\n".join(lines) + "\n"


def plot(rows, paths, summary, path_png):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(13, 5))
  by = _by_path(rows)
  for p in paths:
    ok = [r for r in by[p.name] if r["status"] == "ok"]
    if not ok:
      continue
    ns = [r["n"] for r in ok]
    style = "-" if p.efficient else "--"
    s = summary[p.name]
    axes[0].loglog(ns, [r["fwd_bwd_s"] for r in ok], style, marker="o",
                   label=f"{p.name} (a={s['time_exponent']:.2f})")
    axes[1].loglog(ns, [r["peak_bytes"] / 2**20 for r in ok], style, marker="o",
                   label=f"{p.name} (b={s['memory_exponent']:.2f})")
  axes[0].set(xlabel="sequence length N", ylabel="forward+backward time (s)",
              title="time (fitted exponent a)")
  axes[1].set(xlabel="sequence length N", ylabel="planned peak memory (MiB)",
              title="memory (fitted exponent b)")
  for ax in axes:
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  benchtime.save_figure(fig, path_png, dpi=120)
  plt.close(fig)


# --quick: a tiny run (well under a minute on 2 CPU cores) to smoke-test the script; flags
# given explicitly still win
QUICK = dict(lengths="256,512", paths="blockwise_causal,xla,sliding_window,linear", heads=2,
             head_dim=32, window=64, repeats=3, fit="256,512", speedup_at=512,
             out=str(pathlib.Path(tempfile.gettempdir()) / "bench_attention_quick"))


def main(argv=None):
  import argparse
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--lengths", default="1024,2048,4096,8192,16384,32768")
  parser.add_argument("--paths", default="", help="comma-separated subset (default: all)")
  parser.add_argument("--heads", type=int, default=4)
  parser.add_argument("--head_dim", type=int, default=64)
  parser.add_argument("--window", type=int, default=256)
  parser.add_argument("--repeats", type=int, default=5,
                      help="timed rounds; every round times every path at every length")
  parser.add_argument("--memory_limit_gb", type=float, default=0.0,
                      help="skip plans above this (default: 60%% of physical memory)")
  parser.add_argument("--max_seconds", type=float, default=300.0,
                      help="skip a size predicted to take longer than this (all repeats)")
  parser.add_argument("--fit", default="4096,16384", help="N range of the fitted exponents")
  parser.add_argument("--speedup_at", type=int, default=16384)
  parser.add_argument("--baseline", default="blockwise_causal,xla",
                      help="comma-separated paths the speed-ups are measured against, each in "
                      "the same rounds as the paths it is compared with (the first one's "
                      "speed-up at --speedup_at is in the exponents table); a baseline not "
                      "among --paths gives no speed-ups")
  parser.add_argument("--quick", action="store_true",
                      help="a tiny run to smoke-test the script: " + ", ".join(
                          f"--{k}={v}" for k, v in QUICK.items()))
  parser.add_argument("--out", default="docs/bench_attention")
  if "--quick" in (sys.argv[1:] if argv is None else argv):
    parser.set_defaults(**QUICK)
  args = parser.parse_args(argv)

  lengths = [int(x) for x in args.lengths.split(",")]
  paths = make_paths(args.window, args.heads)
  names = [p.name for p in paths]
  baselines = [b for b in args.baseline.split(",") if b]
  for flag, wanted in (("--paths", args.paths.split(",") if args.paths else []),
                       ("--baseline", baselines)):
    unknown = sorted(set(wanted) - set(names))
    if unknown:
      parser.error(f"{flag}: unknown {unknown}; valid: {', '.join(names)}")
  if args.paths:
    paths = [p for p in paths if p.name in args.paths.split(",")]
  missing = [b for b in baselines if b not in {p.name for p in paths}]
  if missing:
    print(f"note: no speed-ups over {missing}: not among --paths", file=sys.stderr)
    baselines = [b for b in baselines if b not in missing]
  limit = args.memory_limit_gb * 2**30 or 0.6 * os.sysconf("SC_PAGE_SIZE") * os.sysconf(
      "SC_PHYS_PAGES")
  load = {"start": benchtime.load_average()}
  rows = measure(paths, lengths, heads=args.heads, head_dim=args.head_dim,
                 repeats=args.repeats, memory_limit=limit, max_seconds=args.max_seconds,
                 first=baselines)
  load["end"] = benchtime.load_average()
  fit_range = tuple(int(x) for x in args.fit.split(","))
  summary = summarize(rows, paths, fit_range)
  ratio_rows = ratios(rows, baselines)
  device = jax.devices()[0]
  header = (f"`python scripts/bench_attention.py {' '.join(argv or sys.argv[1:])}`".replace(" `", "`")
            + f"\n\nDevice: {device.platform} ({device.device_kind}), {os.cpu_count()} cores, "
            f"jax {jax.__version__}, Python {platform.python_version()}; batch 1, "
            f"{args.heads} heads, head dim {args.head_dim}, float32. Every time is the median "
            f"of {args.repeats} timed rounds after an untimed compiling run; each round times "
            f"every path at every length once, length by length, the baselines "
            f"({', '.join(baselines) or 'none'}) first at each length, so every speed-up "
            f"divides two times taken side by side in the same round.")
  text = markdown(rows, paths, summary, fit_range, args.speedup_at, header, baselines,
                  ratio_rows)
  text += benchtime.load_text(load)
  tiles = {p.name: {n: p.tile(n) for n in lengths} for p in paths if p.tile is not None}
  out = pathlib.Path(args.out)
  headline = speedups(rows, args.speedup_at, baselines[0]) if baselines else {}
  benchtime.write_json(out.with_suffix(".json"), {
      "rows": rows, "summary": summary, "tiles": tiles, "repeats": args.repeats,
      "baselines": baselines, "baseline": baselines[0] if baselines else None,
      "speedup_at": args.speedup_at,
      "speedups": {p: c["ratio"] for p, c in headline.items()},
      "ratios": ratio_rows, "load_average": load}, provenance())
  benchtime.write_text(out.with_suffix(".md"), text)
  plot(rows, paths, summary, out.with_suffix(".png"))
  print(text)
  print(f"wrote {out.with_suffix('.md')}, .json, .png")


if __name__ == "__main__":
  main()
