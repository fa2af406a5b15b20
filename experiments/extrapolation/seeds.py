"""The extrapolation headline over seeds: perplexity at 8x (and 16x) over 1x per scheme,
as mean, standard deviation and range over the sweeps given.

  python experiments/extrapolation/seeds.py experiments/extrapolation/results.json \
      runs/extrapolation_seed1/results.json runs/extrapolation_seed2/results.json \
      --seeds=0,1,2 --out=experiments/extrapolation/seeds

Each input is a sweep's ``results.json`` (``python -m attnlab.sweep
--config=configs/extrapolation.py --config.train.seed=S``). Writes ``<out>/results.json``
(per-seed ratios and their summary, with provenance) and ``<out>/results.md``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics

FACTORS = (8, 16)
MODES = ("non_overlapping", "sliding")


def ratios(rows: list[dict]) -> dict:
  """{variant: {mode: {factor: ppl(factor x L) / ppl(L)}}} for one sweep."""
  train = {r["variant"]: r["train_length"] for r in rows}
  out: dict = {}
  for r in rows:
    base = next(b["ppl"] for b in rows if b["variant"] == r["variant"]
                and b["eval_mode"] == r["eval_mode"] and b["eval_length"] == train[r["variant"]])
    factor = r["eval_length"] // train[r["variant"]]
    if factor in FACTORS:
      out.setdefault(r["variant"], {}).setdefault(r["eval_mode"], {})[factor] = r["ppl"] / base
  return out


def summarise(per_seed: list[dict]) -> dict:
  """{variant: {mode: {factor: {mean, std, min, max, n}}}}."""
  summary: dict = {}
  for variant in per_seed[0]:
    for mode in MODES:
      for factor in FACTORS:
        values = [s[variant][mode][factor] for s in per_seed]
        summary.setdefault(variant, {}).setdefault(mode, {})[factor] = {
            "mean": statistics.mean(values), "std": statistics.stdev(values),
            "min": min(values), "max": max(values), "n": len(values)}
  return summary


def markdown(summary: dict, seeds: list[int]) -> str:
  lines = [f"Perplexity at 8× and 16× the training length over 1×, mean ± standard deviation "
           f"(range) over seeds {', '.join(map(str, seeds))}:", "",
           "| variant | non-overlapping 8× | 16× | sliding 8× | 16× |", "|---|---|---|---|---|"]
  for variant in sorted(summary):
    cells = [summary[variant][m][f] for m in MODES for f in FACTORS]
    lines.append(f"| {variant} | " + " | ".join(
        f"{c['mean']:.3f} ± {c['std']:.3f} ({c['min']:.3f}–{c['max']:.3f})" for c in cells) + " |")
  return "\n".join(lines) + "\n"


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("results", nargs="+", help="results.json of each seed's sweep")
  parser.add_argument("--seeds", required=True, help="train.seed of each sweep, in order")
  parser.add_argument("--out", required=True)
  args = parser.parse_args(argv)
  seeds = [int(s) for s in args.seeds.split(",")]
  if len(args.results) < 2 or len(seeds) != len(args.results):
    parser.error("give at least two sweeps and one --seeds entry per sweep")
  per_seed = [ratios(json.loads(pathlib.Path(p).read_text())) for p in args.results]
  from attnlab.provenance import provenance
  summary = summarise(per_seed)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  (out / "results.json").write_text(json.dumps(
      {"provenance": provenance(), "inputs": args.results, "seeds": seeds,
       "per_seed": per_seed, "summary": summary}, indent=1))
  text = markdown(summary, seeds)
  (out / "results.md").write_text(text)
  print(text)


if __name__ == "__main__":
  main()
