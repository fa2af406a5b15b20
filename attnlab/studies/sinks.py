"""Attention-sink study: sink mass by layer for models trained with each positional scheme
(the ``sinks`` runner).

  python -m attnlab.sweep --config=configs/attention_sinks.py --workdir=runs/attention_sinks

Trains one model per ``sinks.schemes`` entry (``model.position.kind``) in
``workdir/<scheme>`` (``attnlab.engine.training``; a finished run is reused, an interrupted
one resumes), then captures attention on ``sinks.eval_batches`` validation batches and
measures, per layer, the attention that queries i >= k put on the first k tokens
(``attnlab.analysis.metrics.sink_mass``), averaged over heads, and its largest head, at
initialisation and after training. With ``sinks.bos`` >= 0 every training and validation
window starts with that byte (a beginning-of-text marker; ``with_bos``).

Records (one seed): one per (``variant`` = scheme, ``when`` = init | trained, ``k``,
``layer``) with the metrics ``mean`` (over heads), ``max_head`` and ``valid_loss`` (the
model's validation loss, the same for every layer and k) and ``train_seconds``; ``uniform``
(the sink mass of uniform causal attention) and ``per_head`` ride along.
"""

from __future__ import annotations

import pathlib
import time

import jax
import numpy as np

from attnlab import config_lib, data, positional
from attnlab.analysis import capture, metrics
from attnlab.engine import studies, training
from attnlab.models import build_lm
from attnlab.registry import ConfigError
from attnlab.studies import common


def scheme_config(config, scheme: str):
  """The study config with ``model.position.kind = scheme`` (sinks and sweep blocks removed:
  what the trainer sees)."""
  c = common.without(config, "sinks", "sweep")
  c.model.position.kind = scheme
  return c


def with_bos(batches: data.Batches, bos: int) -> data.Batches:
  """Every window starts with byte ``bos``: inputs [bos, x0 .. x_{L-2}], targets x0 .. x_{L-1}.

  The windows of ``batches`` are inputs x0 .. x_{L-1} with targets x1 .. x_L; the new ones
  are the same text one position later, so token 0 is always the same marker.
  """
  def shift(batch):
    inputs = np.asarray(batch[0])
    marker = np.full((inputs.shape[0], 1), bos, inputs.dtype)
    return np.concatenate([marker, inputs[:, :-1]], axis=1), inputs

  return data.Batches(lambda step: shift(batches.train(step)), lambda i: shift(batches.valid(i)),
                      f"{batches.description}, each window led by byte {bos}")


def sink_stats(maps: np.ndarray, ks) -> dict:
  """maps [layers, batch, heads, n, n] -> {"k=1": {"mean": [layers], "max_head": [layers],
  "per_head": [layers][heads]}, ...}."""
  out = {}
  for k in ks:
    per_head = metrics.sink_mass(maps, k).mean(1)             # [layers, heads]
    out[f"k={k}"] = {"mean": per_head.mean(1).tolist(), "max_head": per_head.max(1).tolist(),
                     "per_head": per_head.tolist()}
  return out


def uniform_sink_mass(n: int, k: int) -> float:
  """Sink mass of uniform causal attention: mean over i in [k, n) of k / (i + 1)."""
  return float(np.mean([k / (i + 1) for i in range(k, n)]))


def measure(cfg, params, windows, ks) -> dict:
  """``sink_stats`` of the maps ``params`` apply to ``windows``."""
  _, maps = capture.capture_attention(build_lm(cfg.model), params, windows)
  return sink_stats(maps, ks)


def check(config) -> None:
  """The ``sinks`` block, before anything trains; ``ConfigError`` naming the field."""
  s = config.get("sinks")
  if s is None:
    raise ConfigError("sinks: the config has no sinks block (sinks.schemes, sinks.first_k, "
                      "sinks.eval_batches, sinks.bos; see configs/attention_sinks.py)")
  kinds = positional.POSITIONS.names()
  schemes = s.get("schemes")
  if (not isinstance(schemes, (list, tuple)) or not schemes or len(set(schemes)) != len(schemes)
      or any(k not in kinds for k in schemes)):
    raise ConfigError(f"sinks.schemes={schemes!r} must be a non-empty list of distinct "
                      f"position kinds; valid: {', '.join(kinds)}")
  common.check_ints(s.get("first_k"), "sinks.first_k", 1, config.data.seq_len - 1,
                    "the sink is the first k tokens; k < data.seq_len")
  common.check_int(s.get("eval_batches"), "sinks.eval_batches", 1,
                   what="validation batches of train.batch_size windows")
  common.check_int(s.get("bos"), "sinks.bos", -1, 255, "-1: no marker, else the byte that "
                   "leads every window")
  for scheme in schemes:
    try:
      config_lib.resolve(scheme_config(config, scheme))
    except ConfigError as e:
      raise ConfigError(f"sinks.schemes: {scheme}: {e}") from None


def run_seed(config, workdir, progress: bool = True, **train_options) -> list[dict]:
  """The ``sinks`` runner, one seed (``config.train.seed``): train each scheme (resumable),
  measure the sink mass of its initial and trained maps."""
  check(config)
  workdir = pathlib.Path(workdir)
  s = config.sinks
  seq_len = config.data.seq_len
  records = []
  for scheme in s.schemes:
    cfg = config_lib.resolve(scheme_config(config, scheme))
    batches = data.make_batches(cfg)
    if s.bos >= 0:
      batches = with_bos(batches, s.bos)
    start = time.perf_counter()
    result = training.train_and_evaluate(cfg, workdir / scheme, batches=batches,
                                         progress=progress, **train_options)
    seconds = time.perf_counter() - start
    windows = np.concatenate([np.asarray(batches.valid(i)[0]) for i in range(s.eval_batches)])
    model = build_lm(cfg.model)
    init = jax.jit(lambda: training.init_state(model, training.make_optimizer(cfg.train), cfg))()
    eval_step = training.make_eval_step(model)
    for when, params in (("init", init["params"]), ("trained", result["state"]["params"])):
      valid_loss = training.validation_loss(eval_step, params, batches, cfg)
      for key, stats in measure(cfg, params, windows, s.first_k).items():
        k = int(key[2:])
        for layer, (mean, top, heads) in enumerate(zip(stats["mean"], stats["max_head"],
                                                       stats["per_head"])):
          records.append({
              "variant": scheme, "when": when, "k": k, "layer": layer, "mean": mean,
              "max_head": top, "per_head": heads, "valid_loss": valid_loss,
              "train_seconds": seconds, "uniform": uniform_sink_mass(seq_len, k),
              "seq_len": seq_len, "bos": s.bos, "windows": int(len(windows)),
              "step": int(result["state"]["step"]) if when == "trained" else 0})
  return records


# ----------------------------------------------------------------------------- results


def _rows(summary, **match) -> list[dict]:
  """Summary rows with the given field values, by layer."""
  rows = [r for r in summary if all(r.get(k) == v for k, v in match.items())]
  return sorted(rows, key=lambda r: r["layer"])


def markdown(results: dict) -> str:
  """Per k: per scheme, validation loss and per-layer sink mass (mean over heads / largest
  head) after training, and the mean over layers at initialisation; mean ± sd over seeds."""
  summary = results["summary"]
  first = summary[0]
  seeds = len(results.get("seeds") or [None])
  lines = []
  if first["bos"] >= 0:
    lines += [f"Every training and validation window starts with byte {first['bos']}.", ""]
  if seeds > 1:
    lines += [f"Mean ± sample standard deviation over {seeds} seeds "
              f"({', '.join(map(str, results['seeds']))}).", ""]
  schemes = list(dict.fromkeys(r["variant"] for r in summary))
  for k in dict.fromkeys(r["k"] for r in summary):
    uniform = next(r["uniform"] for r in summary if r["k"] == k)
    layers = len(_rows(summary, variant=schemes[0], when="trained", k=k))
    lines += [f"**Sink mass on the first {k} token(s)** (queries i >= {k}; mean over heads / "
              f"largest head; uniform causal attention: {uniform:.3f})", "",
              "| scheme | valid loss | " + " | ".join(f"layer {l}" for l in range(layers)) +
              " | at init (mean of layers) |",
              "|---|---|" + "---|" * (layers + 1)]
    for name in schemes:
      trained = _rows(summary, variant=name, when="trained", k=k)
      init = _rows(summary, variant=name, when="init", k=k)
      cells = [f"{studies.spread(r, 'mean', '.3f')} / {studies.spread(r, 'max_head', '.3f')}"
               for r in trained]
      init_mean = np.mean([common.values(r, "mean") for r in init], axis=0)   # per seed
      lines.append(f"| {name} | {studies.spread(trained[0], 'valid_loss', '.3f')} | " +
                   " | ".join(cells) + f" | {common.fmt(init_mean)} |")
    lines.append("")
  return "\n".join(lines)


def plots(results: dict, path) -> None:
  """``results.png``: per k, the trained sink mass by layer, one line per scheme (mean over
  seeds, min–max shaded); dashed: the largest head; grey: uniform causal attention."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  summary = results["summary"]
  ks = list(dict.fromkeys(r["k"] for r in summary))
  schemes = list(dict.fromkeys(r["variant"] for r in summary))
  fig, axes = plt.subplots(1, len(ks), figsize=(6 * len(ks), 4.5), squeeze=False)
  for ax, k in zip(axes[0], ks):
    top, uniform = 0.0, next(r["uniform"] for r in summary if r["k"] == k)
    for name in schemes:
      rows = _rows(summary, variant=name, when="trained", k=k)
      layers = [r["layer"] for r in rows]
      line = common.band(ax, layers, rows, "mean", "o-", label=f"{name} (mean over heads)")
      ax.plot(layers, [r["max_head"] for r in rows], "x--", color=line.get_color(), alpha=0.6)
      top = max(top, *(r["max_head_max"] for r in rows))
    ax.axhline(uniform, color="grey", lw=0.8, label="uniform causal attention")
    ax.set_xticks(layers)
    ax.set_xlabel("layer")
    ax.set_ylabel(f"attention on the first {k} token(s)")
    ax.set_title(f"sink mass, k={k} (dashed: largest head)")
    ax.set_ylim(0, max(2 * uniform, 1.15 * top))
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path("results.png"), dpi=110)
  plt.close(fig)


studies.STUDIES.register("sinks")(studies.Study(
    run=run_seed, keys=("variant", "when", "k", "layer"),
    metrics=("mean", "max_head", "valid_loss", "train_seconds"),
    markdown=markdown, plots=plots, check=check))
