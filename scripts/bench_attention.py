"""Time and memory of attention paths as the sequence grows: dense vs sparse vs linear.

  python scripts/bench_attention.py                      # N = 1k..32k, every path
  python scripts/bench_attention.py --lengths=1024,4096 --paths=sliding_window,linear

For each path and length N (batch 1, 4 heads, head dim 64, float32, causal) it
times the jitted forward and forward+backward (median of ``--repeats`` runs after
one untimed run; the timed runs go round all paths and lengths in turn) and reads the peak memory XLA plans for the
forward+backward program (arguments + outputs + temporaries, from
``compiled.memory_analysis()``). A size whose plan exceeds ``--memory_limit_gb``,
or whose predicted time (from the previous length and the path's exponent so
far) exceeds ``--max_seconds``, is reported as skipped, never run.

Writes ``<out>.md`` (the table, the fitted exponents, the speed-ups), ``<out>.json``
and ``<out>.png`` (log-log time and memory with fitted exponents).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import platform
import statistics
import sys
import time
from typing import Callable

from attnlab import runtime
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


def fit_exponent(ns, values) -> float:
  """Least-squares slope of log(value) against log(N)."""
  ns, values = np.asarray(ns, float), np.asarray(values, float)
  if len(ns) < 2:
    return float("nan")
  return float(np.polyfit(np.log(ns), np.log(values), 1)[0])


def measure(paths, lengths, *, heads, head_dim, repeats, memory_limit, max_seconds, progress=True):
  """Rows ``{path, n, fwd_s, fwd_bwd_s, peak_bytes, status}`` (times None when skipped).

  First every (path, N) is compiled and run once, untimed (that run's time predicts the
  next length's, for ``max_seconds``); then the ``repeats`` timed runs go round every
  (path, N) in turn, so a change in the machine's load during the benchmark falls on all
  sizes and paths alike instead of bending one path's exponent or one speed-up.
  """
  from tqdm import tqdm
  rows, ready = [], []      # ready: (row, forward, backward, args, fwd times, fwd+bwd times)
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
        ready.append((row, forward, backward, args, [], []))
      except Exception as e:  # noqa: BLE001  (an allocation failure must not end the table)
        row["status"] = f"skipped: {type(e).__name__}: {str(e).splitlines()[0][:80]}"
  bar.close()
  for _ in tqdm(range(repeats), disable=not progress, desc="bench_attention: timed rounds"):
    for _, forward, backward, args, fwd, fwd_bwd in ready:
      fwd.append(time_once(forward, args))
      fwd_bwd.append(time_once(backward, args))
  for row, _, _, _, fwd, fwd_bwd in ready:
    row["fwd_s"], row["fwd_bwd_s"] = statistics.median(fwd), statistics.median(fwd_bwd)
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


def speedups(rows, n, baseline="blockwise_causal"):
  """fwd+bwd time of the baseline over each path's, at length n."""
  at = {r["path"]: r for r in rows if r["n"] == n and r["status"] == "ok"}
  if baseline not in at:
    return {}
  return {p: at[baseline]["fwd_bwd_s"] / r["fwd_bwd_s"] for p, r in at.items()}


def markdown(rows, paths, summary, fit_range, speedup_n, header,
             baseline="blockwise_causal") -> str:
  lengths = sorted({r["n"] for r in rows})
  lines = [header, "", "Forward+backward time (ms) / forward time (ms) / planned peak memory (MiB):",
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
  lines += ["", f"Fitted exponents over N = {lo}..{hi} (time ~ N^a; memory ~ N^b), and speed-up "
            f"of forward+backward over `{baseline}` at N={speedup_n}:", "",
            "| path | what | time a (fwd+bwd) | time a (fwd) | memory b | speed-up |",
            "|---|---|---|---|---|---|"]
  ups = speedups(rows, speedup_n, baseline)
  for p in paths:
    s = summary[p.name]
    doc = p.doc if p.tile is None else f"{p.doc} (tile {p.tile(speedup_n)} at N={speedup_n})"
    fmt = lambda x: "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}"  # noqa: E731
    lines.append(f"| {p.name} | {doc} | {fmt(s['time_exponent'])} | {fmt(s['fwd_exponent'])} | "
                 f"{fmt(s['memory_exponent'])} | "
                 f"{fmt(ups.get(p.name)) + '×' if p.name in ups else '—'} |")
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
  fig.savefig(path_png, dpi=120)
  plt.close(fig)


def main(argv=None):
  import argparse
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--lengths", default="1024,2048,4096,8192,16384,32768")
  parser.add_argument("--paths", default="", help="comma-separated subset (default: all)")
  parser.add_argument("--heads", type=int, default=4)
  parser.add_argument("--head_dim", type=int, default=64)
  parser.add_argument("--window", type=int, default=256)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--memory_limit_gb", type=float, default=0.0,
                      help="skip plans above this (default: 60%% of physical memory)")
  parser.add_argument("--max_seconds", type=float, default=300.0,
                      help="skip a size predicted to take longer than this (all repeats)")
  parser.add_argument("--fit", default="4096,16384", help="N range of the fitted exponents")
  parser.add_argument("--speedup_at", type=int, default=16384)
  parser.add_argument("--baseline", default="blockwise_causal",
                      help="the path the speed-ups are measured against")
  parser.add_argument("--out", default="docs/bench_attention")
  args = parser.parse_args(argv)

  lengths = [int(x) for x in args.lengths.split(",")]
  paths = make_paths(args.window, args.heads)
  if args.paths:
    wanted = args.paths.split(",")
    unknown = sorted(set(wanted) - {p.name for p in paths})
    if unknown:
      parser.error(f"--paths: unknown {unknown}; valid: {', '.join(p.name for p in paths)}")
    paths = [p for p in paths if p.name in wanted]
  limit = args.memory_limit_gb * 2**30 or 0.6 * os.sysconf("SC_PAGE_SIZE") * os.sysconf(
      "SC_PHYS_PAGES")
  rows = measure(paths, lengths, heads=args.heads, head_dim=args.head_dim,
                 repeats=args.repeats, memory_limit=limit, max_seconds=args.max_seconds)
  fit_range = tuple(int(x) for x in args.fit.split(","))
  summary = summarize(rows, paths, fit_range)
  device = jax.devices()[0]
  header = (f"`python scripts/bench_attention.py {' '.join(argv or sys.argv[1:])}`".replace(" `", "`")
            + f"\n\nDevice: {device.platform} ({device.device_kind}), {os.cpu_count()} cores, "
            f"jax {jax.__version__}, Python {platform.python_version()}; batch 1, "
            f"{args.heads} heads, head dim {args.head_dim}, float32, median of {args.repeats} "
            f"timed runs, taken in rounds over every path and length.")
  text = markdown(rows, paths, summary, fit_range, args.speedup_at, header, args.baseline)
  tiles = {p.name: {n: p.tile(n) for n in lengths} for p in paths if p.tile is not None}
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.with_suffix(".md").write_text(text)
  out.with_suffix(".json").write_text(json.dumps({"provenance": provenance(),
                                                   "rows": rows, "summary": summary, "tiles": tiles,
                                                   "baseline": args.baseline,
                                                   "speedup_at": args.speedup_at,
                                                   "speedups": speedups(rows, args.speedup_at,
                                                                        args.baseline)},
                                                  indent=1))
  plot(rows, paths, summary, out.with_suffix(".png"))
  print(text)
  print(f"wrote {out.with_suffix('.md')}, .json, .png")


if __name__ == "__main__":
  main()
