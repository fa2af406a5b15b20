"""StreamingLLM study: dense vs window-only vs attention sinks + window on long streams.

  python experiments/streaming/run.py --config=configs/streaming.py --workdir=runs/streaming

Trains each variant of ``sweep.variants`` at ``data.seq_len`` (resumable, in
``workdir/<variant>``), then reads ``streaming.num_streams`` streams of
``streaming.stream_length`` bytes from the validation split, token by token, and
records the loss at every position under:

- ``dense``: full causal attention over the whole stream (what the model's own cache
  computes; the positions run past the training length);
- ``recompute``: each token sees the previous ``cache`` tokens, re-encoded from scratch
  at positions 0..cache-1 (the paper's "sliding window with re-computation" baseline);
- ``window``: a StreamingLLM cache with no sinks: the latest ``cache`` tokens;
- ``sinks=S``: S first tokens + the latest ``cache - S``, positions by place in the cache.

It also measures the attention-sink effect directly: the attention probability each
layer puts on the first token of a training-length window. Writes
``results.{json,md,png}`` and ``attention.png`` into ``--out`` (default the workdir).
"""

from __future__ import annotations

import functools
import json
import math
import pathlib
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import app, flags, logging
from ml_collections import config_flags
from tqdm import tqdm

from attnlab import workdir as workdir_lib
from attnlab import data, runtime
from attnlab.provenance import provenance
from attnlab.engine import sweeps as sweep
from attnlab.engine import training as train
from attnlab.inference import generation
from attnlab.models import kv_cache
from attnlab.analysis import capture
from attnlab.models import TransformerLM, build_lm

LN2 = math.log(2.0)


def position_ranges(cache: int, length: int) -> list[tuple[int, int]]:
  """[0, c), [c, 4c), [4c, 16c), [16c, length): before eviction, then ever further past it."""
  edges = [0] + [e for e in (cache, 4 * cache, 16 * cache) if e < length] + [length]
  return list(zip(edges[:-1], edges[1:]))


def streams(tokens: np.ndarray, count: int, length: int) -> np.ndarray:
  """``count`` streams of ``length + 1`` tokens at evenly spaced offsets: int32 [count, length+1]."""
  starts = np.linspace(0, len(tokens) - length - 1, count).astype(np.int64)
  return np.stack([tokens[s:s + length + 1] for s in starts]).astype(np.int32)


def _nll(logits, targets):
  return optax.softmax_cross_entropy_with_integer_labels(logits, targets)


def cached_nll(model_cfg, params, inputs, targets, layout):
  """nll [B, N] of reading the stream through a cache of ``layout``: generation's prefill
  and decode loop (``attnlab.inference.generation.stream_logits``)."""
  return _nll(generation.stream_logits(model_cfg, params, inputs, layout), targets)


@functools.lru_cache(maxsize=None)
def _forward_nll_fn(model_cfg):
  model = TransformerLM(model_cfg)
  return jax.jit(lambda params, inputs, targets: _nll(model.apply({"params": params}, inputs),
                                                      targets))


def recompute_nll(model_cfg, params, inputs, targets, window: int, chunk: int = 1024):
  """Per-position nll [B, N] when token t sees tokens max(0, t-window+1)..t, encoded afresh
  at positions 0.. (the first ``window`` positions come from one forward pass)."""
  fwd = _forward_nll_fn(model_cfg)
  batch, n = inputs.shape
  out = np.zeros((batch, n), np.float32)
  out[:, :window] = np.asarray(fwd(params, inputs[:, :window], targets[:, :window]))
  idx = np.arange(1, n - window + 1)[:, None] + np.arange(window)          # windows ending at t
  win_in = inputs[:, idx].reshape(-1, window)
  win_tg = targets[:, idx].reshape(-1, window)
  last = []
  for s in range(0, len(win_in), chunk):
    last.append(np.asarray(fwd(params, win_in[s:s + chunk], win_tg[s:s + chunk]))[:, -1])
  out[:, window:] = np.concatenate(last).reshape(batch, n - window)
  return out


def first_token_attention(model_cfg, params, inputs, query_min: int) -> list[list[float]]:
  """Attention probability on token 0, per layer and head (streams and queries at
  positions >= ``query_min`` averaged): [layers][heads]. inputs: int32 [B, L]. The maps
  are the ones the layers apply (``attnlab.analysis.capture``: each layer's mask, position
  scheme and bias, whatever the impl)."""
  _, weights = capture.capture_attention(build_lm(model_cfg), params, inputs)
  mass = weights[:, :, :, query_min:, 0].mean(axis=(1, 3))   # [layers, batch, heads, q, k]
  return np.asarray(mass).round(5).tolist()


def method_layouts(sc) -> dict:
  """{method name: StreamingLLM layout} of the cached methods."""
  out = {"window": kv_cache.streaming_layout(0, sc.cache)}
  for s in sc.sinks:
    out[f"sinks={s}"] = kv_cache.streaming_layout(s, sc.cache - s)
  return out


def run_study(config, workdir, progress: bool = True):
  workdir = pathlib.Path(workdir)
  sc = config.streaming
  base = ml_collections.ConfigDict(config.to_dict())
  del base["streaming"]
  variants = sweep.variant_configs(base)
  for name, cfg in variants.items():
    train.train_and_evaluate(cfg, workdir / name, progress=progress)
  records, curves, sink_rows = [], {}, []
  for name in tqdm(variants, desc="streams", disable=not progress):
    cfg, params, step = workdir_lib.restore_params(workdir / name)
    corpus = data.load_corpus(cfg.data)
    windows = streams(corpus.valid, sc.num_streams, sc.stream_length)
    inputs, targets = jnp.asarray(windows[:, :-1]), jnp.asarray(windows[:, 1:])
    methods = {"dense": lambda: _forward_nll_fn(cfg.model)(params, inputs, targets),
               "recompute": lambda: recompute_nll(cfg.model, params, np.asarray(inputs),
                                                  np.asarray(targets), sc.cache)}
    for method, layout in method_layouts(sc).items():
      methods[method] = functools.partial(
          lambda lay: cached_nll(cfg.model, params, inputs, targets, lay), layout)
    for method, fn in methods.items():
      t0 = time.perf_counter()
      nll = np.asarray(fn()).mean(0)                      # per position, over streams
      curves[(name, method)] = nll
      records.append({"variant": name, "method": method, "step": step,
                      "train_length": cfg.data.seq_len, "cache": sc.cache,
                      "seconds": time.perf_counter() - t0,
                      **{f"loss_{a}_{b}": float(nll[a:b].mean())
                         for a, b in position_ranges(sc.cache, sc.stream_length)},
                      "loss_after_eviction": float(nll[sc.cache:].mean())})
    mass = first_token_attention(cfg.model, params, inputs[:, :cfg.data.seq_len], sc.sink_query_min)
    uniform = float(np.mean(1.0 / (np.arange(sc.sink_query_min, cfg.data.seq_len) + 1)))
    sink_rows.append({"variant": name, "first_token_attention": mass, "uniform": uniform})
  return records, curves, sink_rows


def results_markdown(records, sink_rows, sc) -> str:
  ranges = position_ranges(sc.cache, sc.stream_length)
  cols = [f"loss_{a}_{b}" for a, b in ranges] + ["loss_after_eviction"]
  heads = [f"{a}–{b}" for a, b in ranges] + [f"{sc.cache}–{sc.stream_length} (all evicting)"]
  lines = ["Mean loss (nats per byte) by stream position, "
           f"{sc.num_streams} streams of {sc.stream_length} bytes; cache = {sc.cache} tokens.\n",
           "| variant | method | " + " | ".join(heads) + " |", "|---|---|" + "---|" * len(cols)]
  for r in records:
    lines.append(f"| {r['variant']} | {r['method']} | " + " | ".join(f"{r[c]:.3f}" for c in cols)
                 + " |")
  layers = len(sink_rows[0]["first_token_attention"])
  lines += ["", "Attention probability on the first token of a training-length window: mean "
            "over heads / largest head, per layer (queries at positions >= "
            f"{sc.sink_query_min}, averaged; uniform attention would give the last column).\n",
            "| variant | " + " | ".join(f"layer {i}" for i in range(layers)) + " | uniform |",
            "|---|" + "---|" * (layers + 1)]
  for r in sink_rows:
    cells = [f"{np.mean(h):.3f} / {np.max(h):.3f}" for h in r["first_token_attention"]]
    lines.append(f"| {r['variant']} | " + " | ".join(cells) + f" | {r['uniform']:.3f} |")
  return "\n".join(lines) + "\n"


def plot(curves, sink_rows, sc, path, attention_path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  names = list(dict.fromkeys(v for v, _ in curves))
  fig, axes = plt.subplots(2, len(names), figsize=(5.2 * len(names), 7), squeeze=False,
                           sharex=True)
  kernel = np.ones(sc.smooth) / sc.smooth
  smooth = lambda x: np.convolve(x, kernel, mode="valid")   # noqa: E731
  methods = list(dict.fromkeys(m for _, m in curves))
  color = {m: f"C{i}" for i, m in enumerate(methods)}       # one colour per method, both rows
  for col, name in enumerate(names):
    base = smooth(curves[(name, "recompute")])
    x = np.arange(len(base)) + sc.smooth - 1          # position of each average's last byte
    for (v, method), nll in curves.items():
      if v != name:
        continue
      axes[0, col].plot(x, smooth(nll), label=method, lw=1.1, color=color[method])
      if method != "recompute":
        axes[1, col].plot(x, smooth(nll) - base, label=method, lw=1.1, color=color[method])
    for row in (0, 1):
      axes[row, col].axvline(sc.cache, color="gray", ls=":", lw=1)
      axes[row, col].grid(True, alpha=0.3)
    axes[0, col].set_title(name)
    axes[1, col].set_xlabel("position in the stream (bytes)")
    axes[1, col].set_ylim(-0.15, 0.6)
  axes[0, 0].set_ylabel(f"loss (nats/byte), moving average of {sc.smooth}")
  axes[1, 0].set_ylabel("loss minus the recompute baseline")
  axes[0, -1].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  fig, ax = plt.subplots(figsize=(5, 3.5))
  for r in sink_rows:
    layers = range(len(r["first_token_attention"]))
    line, = ax.plot(layers, [np.mean(h) for h in r["first_token_attention"]], "o-",
                    label=f"{r['variant']} (mean over heads)")
    ax.plot(layers, [np.max(h) for h in r["first_token_attention"]], "^--", color=line.get_color(),
            label=f"{r['variant']} (largest head)")
  ax.axhline(sink_rows[0]["uniform"], color="gray", ls=":", label="uniform attention")
  ax.set_xticks(range(len(sink_rows[0]["first_token_attention"])))
  ax.set_xlabel("layer")
  ax.set_ylabel("attention on the first token")
  ax.legend(fontsize=8)
  ax.grid(True, alpha=0.3)
  fig.tight_layout()
  fig.savefig(attention_path, dpi=120)
  plt.close(fig)


def define_flags():
  config_flags.DEFINE_config_file("config", "configs/streaming.py", "Streaming study config.",
                                  lock_config=True)
  flags.DEFINE_string("workdir", "runs/streaming", "Training runs and results.")
  flags.DEFINE_string("out", None, "Where to write results.{json,md,png}; default the workdir.")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  FLAGS = flags.FLAGS
  t0 = time.perf_counter()
  records, curves, sink_rows = run_study(FLAGS.config, FLAGS.workdir)
  sc = FLAGS.config.streaming
  out = pathlib.Path(FLAGS.out or FLAGS.workdir)
  out.mkdir(parents=True, exist_ok=True)
  (out / "results.json").write_text(json.dumps(
      {"records": records, "first_token_attention": sink_rows,
       "curves": {f"{v}/{m}": np.round(c, 4).tolist() for (v, m), c in curves.items()},
       "provenance": provenance()}, indent=1))
  table = results_markdown(records, sink_rows, sc)
  (out / "results.md").write_text(table)
  plot(curves, sink_rows, sc, out / "results.png", out / "attention.png")
  print(table)
  print(f"wrote {out}/results.{{json,md,png}} and attention.png in "
        f"{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
  runtime.configure()
  define_flags()
  app.run(main)
