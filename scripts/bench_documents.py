"""Packed documents against dense causal attention: forward+backward time, same run.

  python scripts/bench_documents.py            # N = 16384, writes docs/bench_documents.{md,json,png}
  python scripts/bench_documents.py --quick    # a smoke test (seconds)

A row of ``N`` tokens packed with documents attends with ``causal() & segments(ids)``: the
document ids classify tiles at run time (``Mask.tile_classes``), so ``blockwise`` visits
only tiles on the documents' diagonal blocks, and the cost follows sum(length^2), not N^2.
Each path is timed forward+backward (the gradient of sum(out * w) in q, k, v) with
``impl='blockwise'`` and its default tiles; every round times every path once
(``attnlab.benchtime.alternate``), so each speed-up divides two times of the same round.

Paths: ``causal`` (no documents, the baseline), ``documents_aligned`` (N / 256 documents
of 256 tokens), ``documents_ragged`` (random lengths of mean 256, one of them a single
token), and the same two at batch 2 with a different layout in each row
(``documents_rows_differ``, against ``causal_batch2``): blockwise skips a tile only when it
is empty in every row (the union over rows), so rows that differ share more tiles.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from attnlab import benchtime
from attnlab.attention import dot_product_attention, masks
from attnlab.provenance import provenance

MEAN_LENGTH = 256


def ragged_lengths(n: int, mean: int, seed: int) -> np.ndarray:
  """Document lengths summing to ``n``: exponential with mean ``mean`` (at least 1), one
  document of a single token; deterministic for ``seed``."""
  rng = np.random.default_rng(seed)
  lengths = [1]
  while sum(lengths) < n:
    lengths.append(max(1, int(rng.exponential(mean))))
  lengths[-1] -= sum(lengths) - n
  lengths = [x for x in lengths if x > 0]
  rng.shuffle(lengths)
  return np.asarray(lengths, np.int64)


def ids_of(lengths) -> np.ndarray:
  return np.repeat(np.arange(len(lengths)), lengths).astype(np.int32)


def layouts(n: int, seed: int) -> dict:
  """name -> (segment ids int32 [batch, n] or None, batch, description)."""
  aligned = ids_of(np.full(n // MEAN_LENGTH, MEAN_LENGTH))
  ragged = ids_of(ragged_lengths(n, MEAN_LENGTH, seed))
  other = ids_of(ragged_lengths(n, MEAN_LENGTH, seed + 1))
  return {
      "causal": (None, 1, "causal, no documents"),
      "documents_aligned": (aligned[None], 1, f"{n // MEAN_LENGTH} documents of {MEAN_LENGTH}"),
      "documents_ragged": (ragged[None], 1, f"{ragged.max() + 1} documents, random lengths "
                           f"(mean {MEAN_LENGTH}, one of 1 token)"),
      "causal_batch2": (None, 2, "causal, no documents, batch 2"),
      "documents_rows_differ": (np.stack([ragged, other]), 2,
                                "batch 2, a different random layout in each row"),
  }


def sum_squares(ids) -> float:
  """sum over documents of length^2 / N^2 (averaged over rows): the share of causal work
  packed documents need, up to the diagonal's halving."""
  if ids is None:
    return 1.0
  out = []
  for row in ids:
    lengths = np.bincount(row)
    out.append(float(np.sum(lengths.astype(np.float64) ** 2)) / len(row) ** 2)
  return float(np.mean(out))


def program(ids, batch: int, n: int, heads: int, head_dim: int, seed: int = 0):
  """A compiled forward+backward and its inputs: () -> gradients (blocked on)."""
  keys = jax.random.split(jax.random.PRNGKey(seed), 4)
  q, k, v, w = (jax.random.normal(kk, (batch, n, heads, head_dim), jnp.float32) for kk in keys)
  seg = None if ids is None else jnp.asarray(ids)

  @jax.jit
  def grads(q, k, v, seg):
    mask = masks.causal() if seg is None else masks.causal() & masks.segments(seg)
    def loss(q, k, v):
      return jnp.sum(dot_product_attention(q, k, v, mask=mask, impl="blockwise") * w)
    return jax.grad(loss, argnums=(0, 1, 2))(q, k, v)

  return lambda: jax.block_until_ready(grads(q, k, v, seg))


def visited_tiles(ids, n: int) -> tuple[int, int]:
  """(tiles blockwise visits, tile size) at the default tile for this mask."""
  mask = masks.causal() if ids is None else masks.causal() & masks.segments(ids)
  tile = masks.choose_tile(mask, n, n, 64, 256, 2**15)
  classes = np.asarray(mask.tile_classes(n, n, tile, tile))
  return int((classes != masks.EMPTY).sum()), tile


def markdown(rows, ratios, header) -> str:
  lines = [header, "",
           "| path | batch | layout | sum(len²)/N² | tiles visited (tile) | fwd+bwd ms |",
           "|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['path']} | {r['batch']} | {r['layout']} | {r['sum_squares']:.4f} | "
                 f"{r['tiles']:,} ({r['tile']}) | {benchtime.time_text(r['fwd_bwd'])} |")
  lines += ["", "Speed-up of packed documents over causal attention at the same N and batch "
            "(ratio of medians; smallest–largest ratio within one round):", "",
            "| path | baseline | baseline ms | path ms | speed-up |", "|---|---|---|---|---|"]
  for c in ratios:
    lines.append(f"| {c['denominator']['name']} | {c['numerator']['name']} | "
                 f"{benchtime.time_text(c['numerator'])} | {benchtime.time_text(c['denominator'])}"
                 f" | {benchtime.ratio_text(c)} |")
  return "\n".join(lines) + "\n"


def plot(rows, path_png):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(7, 3.2))
  names = [r["path"] for r in rows]
  medians = [r["fwd_bwd"]["median_s"] * 1e3 for r in rows]
  low = [m - r["fwd_bwd"]["min_s"] * 1e3 for m, r in zip(medians, rows)]
  high = [r["fwd_bwd"]["max_s"] * 1e3 - m for m, r in zip(medians, rows)]
  ax.barh(names, medians, xerr=[low, high], color="tab:blue")
  ax.set_xscale("log")
  ax.set_xlabel("forward+backward, ms (median; bars: min–max)")
  ax.invert_yaxis()
  fig.tight_layout()
  benchtime.save_figure(fig, path_png, dpi=120)
  plt.close(fig)


QUICK = dict(n=2048, repeats=2, out=str(pathlib.Path(tempfile.gettempdir()) / "bench_documents"))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--n", type=int, default=16384)
  parser.add_argument("--heads", type=int, default=4)
  parser.add_argument("--head_dim", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--seed", type=int, default=0, help="the ragged layouts' seed")
  parser.add_argument("--quick", action="store_true", help="a smoke test: " + ", ".join(
      f"--{k}={v}" for k, v in QUICK.items()))
  parser.add_argument("--out", default="docs/bench_documents")
  argv = sys.argv[1:] if argv is None else argv
  if "--quick" in argv:
    parser.set_defaults(**QUICK)
  args = parser.parse_args(argv)
  if args.n % MEAN_LENGTH:
    parser.error(f"--n={args.n} must be a multiple of {MEAN_LENGTH} (the aligned documents)")

  specs = layouts(args.n, args.seed)
  programs = {name: program(ids, batch, args.n, args.heads, args.head_dim)
              for name, (ids, batch, _) in specs.items()}
  load = {"start": benchtime.load_average()}
  from tqdm import tqdm
  with tqdm(total=args.repeats, desc="rounds") as bar:
    times = benchtime.alternate(programs, args.repeats, on_round=lambda _: bar.update())
  load["end"] = benchtime.load_average()
  rows = []
  for name, (ids, batch, layout) in specs.items():
    tiles, tile = visited_tiles(ids, args.n)
    rows.append({"path": name, "batch": batch, "layout": layout, "n": args.n,
                 "sum_squares": sum_squares(ids), "tiles": tiles, "tile": tile,
                 "fwd_bwd": benchtime.spread(times[name])})
  pairs = [("causal", "documents_aligned"), ("causal", "documents_ragged"),
           ("causal_batch2", "documents_rows_differ")]
  ratios = [benchtime.comparison((base, times[base]), (path, times[path]), n=args.n)
            for base, path in pairs]
  device = jax.devices()[0]
  header = (f"`python scripts/bench_documents.py{''.join(' ' + a for a in argv)}`\n\n"
            f"Device: {device.platform} ({device.device_kind}), {os.cpu_count()} cores, jax "
            f"{jax.__version__}, Python {platform.python_version()}; N = {args.n}, "
            f"{args.heads} heads, head dim {args.head_dim}, float32, impl='blockwise' with its "
            f"default tiles. Every time is the median of {args.repeats} timed rounds after an "
            f"untimed compiling run; each round times every path once, in the table's order.")
  text = markdown(rows, ratios, header) + benchtime.load_text(load)
  out = pathlib.Path(args.out)
  benchtime.write_json(out.with_suffix(".json"), {
      "rows": rows, "ratios": ratios, "repeats": args.repeats, "seed": args.seed,
      "load_average": load}, provenance())
  benchtime.write_text(out.with_suffix(".md"), text)
  plot(rows, out.with_suffix(".png"))
  print(text)
  print(f"wrote {out.with_suffix('.md')}, .json, .png")


if __name__ == "__main__":
  main()
