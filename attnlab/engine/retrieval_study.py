"""Retrieval study: train variants on a synthetic task at a short length, then measure
answer accuracy by context length and needle depth (the engine behind
``python -m attnlab.retrieval --config=configs/retrieval.py --workdir=runs/retrieval``).

The config is a sweep config (``sweep.variants``) whose ``data.corpus`` names a
task in ``attnlab.data.retrieval_tasks.RETRIEVAL_TASKS``. Each variant trains in
``workdir/<name>`` (resumable), then is scored on ``retrieval.trials`` fresh
examples per (length, depth): an example counts as correct when every answer
byte is the model's top prediction given the bytes before it. Writes
``results.json`` (with ``results.provenance.json`` beside it) and ``results.md``, and
``results.png`` (a heatmap per variant).
"""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from attnlab import positional
from attnlab.data.retrieval_tasks import RETRIEVAL_TASKS, task_batch
from attnlab.engine import studies, sweeps, training
from attnlab.models import TransformerLM
from attnlab.registry import ConfigError
from attnlab.workdir import restore_params


def accuracy_grid(cfg, params, lengths, depths, trials: int, seed: int = 1234) -> list[dict]:
  """Exact-match answer accuracy at each (length, depth) of ``cfg.data.corpus``'s task."""
  for length in lengths:
    positional.check_length(cfg.model.position, length, "evaluation length")
  model = TransformerLM(cfg.model)

  @jax.jit
  def correct(params, inputs, targets, weights):
    """(example fully correct [batch], fraction of answer bytes correct [batch])."""
    hits = jnp.argmax(model.apply({"params": params}, inputs), -1) == targets
    per_byte = (hits * weights).sum(-1) / weights.sum(-1)
    return jnp.all(hits | (weights == 0), axis=-1), per_byte

  records = []
  for i, length in enumerate(lengths):
    for j, depth in enumerate(depths):
      inputs, targets, weights = task_batch(cfg.data.corpus, trials, length, seed,
                                                  step=i * len(depths) + j, split="valid",
                                                  depth=depth)
      exact, per_byte = jax.device_get(correct(params, inputs, targets, weights))
      records.append({"eval_length": length, "depth": float(depth),
                      "accuracy": float(np.mean(exact)), "byte_accuracy": float(np.mean(per_byte)),
                      "trials": trials})
  return records


METRICS = {"accuracy": "exact-match answer accuracy",
           "byte_accuracy": "fraction of answer bytes predicted correctly"}


def results_markdown(records: list[dict], metric: str = "accuracy") -> str:
  out = []
  for name in dict.fromkeys(r["variant"] for r in records):
    rs = [r for r in records if r["variant"] == name]
    lengths = sorted({r["eval_length"] for r in rs})
    depths = sorted({r["depth"] for r in rs})
    seeds = rs[0].get("seeds", 1)
    out.append(f"**{name}** (trained at {rs[0]['train_length']}): {METRICS[metric]}"
               + (f", mean over {seeds} seeds" if seeds > 1 else "")
               + ", rows = needle depth, columns = context length\n")
    out.append("| depth | " + " | ".join(f"L={n}" for n in lengths) + " | mean |")
    out.append("|---|" + "---|" * (len(lengths) + 1))
    for d in depths:
      row = [next(r[metric] for r in rs if r["eval_length"] == n and r["depth"] == d)
             for n in lengths]
      out.append(f"| {d:.2f} | " + " | ".join(f"{a:.2f}" for a in row) + f" | {np.mean(row):.2f} |")
    means = [np.mean([r[metric] for r in rs if r["eval_length"] == n]) for n in lengths]
    out.append("| mean | " + " | ".join(f"{a:.2f}" for a in means) + f" | {np.mean(means):.2f} |")
    out.append("")
  return "\n".join(out)


def plot_heatmaps(records: list[dict], path) -> None:
  """A row per metric (exact match, per byte), a column per variant."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  names = list(dict.fromkeys(r["variant"] for r in records))
  fig, axes = plt.subplots(len(METRICS), len(names), figsize=(4.2 * len(names), 3.6 * len(METRICS)),
                           squeeze=False)
  for row, metric in enumerate(METRICS):
    for ax, name in zip(axes[row], names):
      rs = [r for r in records if r["variant"] == name]
      lengths = sorted({r["eval_length"] for r in rs})
      depths = sorted({r["depth"] for r in rs})
      grid = np.array([[next(r[metric] for r in rs if r["eval_length"] == n and r["depth"] == d)
                        for n in lengths] for d in depths])
      ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", origin="upper", aspect="auto")
      for (y, x), a in np.ndenumerate(grid):
        ax.text(x, y, f"{a:.2f}", ha="center", va="center", color="white" if a < 0.6 else "black",
                fontsize=8)
      ax.set_xticks(range(len(lengths)), [str(n) for n in lengths])
      ax.set_yticks(range(len(depths)), [f"{d:.2f}" for d in depths])
      ax.set_xlabel("context length (bytes)")
      ax.set_ylabel("needle depth")
      ax.set_title(f"{name} (trained at {rs[0]['train_length']}): {metric}", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def check_retrieval(config) -> None:
  """``retrieval.trials`` (an integer >= 1) and ``retrieval.depths`` (a non-empty list of
  numbers in [0, 1]), before anything trains; ``ConfigError`` naming the field."""
  r = config.get("retrieval")
  if r is None:
    raise ConfigError("retrieval: the config has no retrieval block (retrieval.depths, "
                      "retrieval.trials; see configs/retrieval.py)")
  trials = r.get("trials")
  if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
    raise ConfigError(f"retrieval.trials={trials!r} must be an integer >= 1 (examples per "
                      f"length and depth)")
  depths = r.get("depths")
  if (not isinstance(depths, (tuple, list)) or not depths
      or not all(isinstance(d, (int, float)) and not isinstance(d, bool) and 0.0 <= d <= 1.0
                 for d in depths)):
    raise ConfigError(f"retrieval.depths={depths!r} must be a non-empty list of numbers in "
                      f"[0, 1] (0: the needle at the start, 1: at the end)")


def check_study(config) -> None:
  """The task and the ``retrieval`` block, before anything trains."""
  if config.data.path or config.data.corpus not in RETRIEVAL_TASKS:
    raise ConfigError(f"data.corpus={config.data.corpus!r} (with data.path={config.data.path!r}) "
                      f"is not a retrieval task; valid: {', '.join(RETRIEVAL_TASKS.names())}")
  check_retrieval(config)


def run_seed(config, workdir, progress: bool = True, **train_options) -> list[dict]:
  """The ``retrieval`` runner, one seed: train every variant (resumable), score each on the
  grid. The ``retrieval`` block is an evaluation setting: a new depth grid or trial count
  re-scores the trained variants without retraining them."""
  check_study(config)
  workdir = pathlib.Path(workdir)
  variants = sweeps.variant_configs(config)
  lengths = [f * config.data.seq_len for f in config.sweep.factors]
  depths = [float(d) for d in config.retrieval.depths]
  for name, cfg in variants.items():
    training.train_and_evaluate(cfg, workdir / name, progress=progress, **train_options)
  records = []
  for name in variants:
    cfg, params, step = restore_params(workdir / name)
    for r in accuracy_grid(cfg, params, lengths, depths, config.retrieval.trials):
      r.update(variant=name, train_length=cfg.data.seq_len, step=step, task=cfg.data.corpus)
      records.append(r)
  return records


def run_study(config, workdir, progress: bool = True, **train_options) -> list[dict]:
  """Run the study for every seed (``sweep.seeds``) and write ``results.*`` through
  ``studies.write_results``; returns the records (each with its seed)."""
  return studies.run(config, workdir, progress, name="retrieval", **train_options)["records"]


studies.STUDIES.register("retrieval")(studies.Study(
    run=run_seed, keys=("variant", "eval_length", "depth"),
    metrics=("accuracy", "byte_accuracy"),
    markdown=lambda results: "\n".join(results_markdown(results["summary"], m) for m in METRICS),
    plots=lambda results, path: plot_heatmaps(results["summary"], path("results.png")),
    check=check_study))
