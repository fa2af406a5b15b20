"""Sink mass by layer for models trained with each positional scheme.

  python experiments/attention_sinks/run.py --config=configs/attention_sinks.py \
      --workdir=runs/attention_sinks --out=experiments/attention_sinks

Trains one model per ``sinks.schemes`` entry (``attnlab.train``; a finished run is
reused), then captures attention on validation windows and measures, per layer, the
attention that queries i >= k put on the first k tokens (``metrics.sink_mass``),
averaged over heads, and its largest head, at initialisation and after training.
With ``sinks.bos`` >= 0 every training and validation window starts with that byte
(a beginning-of-text marker; ``with_bos``). Writes ``results.json``, ``results.md``
and ``results.png`` into ``--out``.
"""

from __future__ import annotations

import json
import pathlib
import time

import jax
import ml_collections
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags
from tqdm import tqdm

from attnlab import config_lib, data, runtime
from attnlab.provenance import provenance
from attnlab.engine import training as train
from attnlab.analysis import capture, metrics
from attnlab.models import build_lm


def define_flags() -> None:
  """Command-line flags (defined only when run as a script, so tests can import this file)."""
  config_flags.DEFINE_config_file("config", "configs/attention_sinks.py", "Sink study config.")
  flags.DEFINE_string("workdir", "runs/attention_sinks", "One training workdir per scheme inside.")
  flags.DEFINE_string("out", "experiments/attention_sinks", "Where the tables and plot go.")


def scheme_config(config, scheme: str):
  """The study config with ``model.position.kind = scheme`` (sinks block removed)."""
  c = ml_collections.ConfigDict(config.to_dict())
  c.model.position.kind = scheme
  del c["sinks"]
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
  """maps [layers, batch, heads, n, n] -> {"k=1": {"mean": [layers], "max_head": [layers]}, ...}."""
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
  model = build_lm(cfg.model)
  _, maps = capture.capture_attention(model, params, windows)
  return sink_stats(maps, ks)


def run(config, workdir, out) -> dict:
  workdir, out = pathlib.Path(workdir), pathlib.Path(out)
  s = config.sinks
  if not (isinstance(s.bos, int) and -1 <= s.bos <= 255):
    raise ValueError(f"sinks.bos={s.bos!r} must be -1 (no marker) or a byte value in [0, 255]")
  results = {"schemes": {}, "seq_len": config.data.seq_len, "bos": s.bos,
             "uniform": {f"k={k}": uniform_sink_mass(config.data.seq_len, k) for k in s.first_k}}
  for scheme in tqdm(s.schemes, desc="schemes"):
    start = time.perf_counter()
    cfg = config_lib.resolve(scheme_config(config, scheme))
    batches = data.make_batches(cfg)
    if s.bos >= 0:
      batches = with_bos(batches, s.bos)
    result = train.train_and_evaluate(cfg, workdir / scheme, batches=batches)
    seconds = time.perf_counter() - start
    windows = np.concatenate([np.asarray(batches.valid(i)[0]) for i in range(s.eval_batches)])
    model = build_lm(cfg.model)
    init = jax.jit(lambda: train.init_state(model, train.make_optimizer(cfg.train), cfg))()
    results["schemes"][scheme] = {
        "valid_loss": result["metrics"].get("valid_loss"), "seconds": seconds,
        "windows": int(len(windows)),
        "init": measure(cfg, init["params"], windows, s.first_k),
        "trained": measure(cfg, result["state"]["params"], windows, s.first_k)}
  out.mkdir(parents=True, exist_ok=True)
  (out / "results.json").write_text(json.dumps({**results, "provenance": provenance()}, indent=1))
  (out / "results.md").write_text(markdown(results))
  plot(results, out / "results.png")
  return results


def markdown(results) -> str:
  """Per scheme: validation loss and per-layer sink mass (mean over heads / largest head)."""
  bos = results.get("bos", -1)
  lines = [] if bos < 0 else [f"Every training and validation window starts with byte {bos}.", ""]
  for key, uniform in results["uniform"].items():
    schemes = results["schemes"]
    layers = len(next(iter(schemes.values()))["trained"][key]["mean"])
    lines += [f"**Sink mass on the first {key[2:]} token(s)** (queries i >= {key[2:]}; "
              f"mean over heads / largest head; uniform causal attention: {uniform:.3f})", "",
              "| scheme | valid loss | " + " | ".join(f"layer {l}" for l in range(layers)) +
              " | at init (mean of layers) |",
              "|---|---|" + "---|" * (layers + 1)]
    for name, r in schemes.items():
      t, i = r["trained"][key], r["init"][key]
      cells = [f"{m:.3f} / {x:.3f}" for m, x in zip(t["mean"], t["max_head"])]
      lines.append(f"| {name} | {r['valid_loss']:.3f} | " + " | ".join(cells) +
                   f" | {np.mean(i['mean']):.3f} |")
    lines.append("")
  return "\n".join(lines)


def plot(results, path) -> None:
  """Sink mass (first token) by layer, one line per scheme; dashed: largest head."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  keys = list(results["uniform"])
  fig, axes = plt.subplots(1, len(keys), figsize=(6 * len(keys), 4.5), squeeze=False)
  for ax, key in zip(axes[0], keys):
    for n, (name, r) in enumerate(results["schemes"].items()):
      t = r["trained"][key]
      layers = range(len(t["mean"]))
      line, = ax.plot(layers, t["mean"], "o-", label=f"{name} (mean over heads)")
      ax.plot(layers, t["max_head"], "x--", color=line.get_color(), alpha=0.6)
    ax.axhline(results["uniform"][key], color="grey", lw=0.8, label="uniform causal attention")
    ax.set_xticks(list(layers))
    ax.set_xlabel("layer")
    ax.set_ylabel(f"attention on the first {key[2:]} token(s)")
    ax.set_title(f"sink mass, {key} (dashed: largest head)")
    top = max(max(r["trained"][key]["max_head"]) for r in results["schemes"].values())
    ax.set_ylim(0, max(2 * results["uniform"][key], 1.15 * top))
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  f = flags.FLAGS
  results = run(f.config, f.workdir, f.out)
  print(markdown(results))


if __name__ == "__main__":
  define_flags()
  runtime.configure()
  app.run(main)
