"""StreamingLLM study: dense vs window-only vs attention sinks + window on long streams (the
``streaming`` runner).

  python -m attnlab.sweep --config=configs/streaming.py --workdir=runs/streaming

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
layer puts on the first token of a training-length window.

Records (one seed), told apart by ``measure``:
  - ``nll``: per (variant, method, ``positions``): the mean ``nll`` (nats per byte) over
    the streams' positions [start, end): ``position_ranges`` (``"0-64"``, ...) and
    ``"after_eviction"`` (every position from ``cache`` on);
  - ``curve``: the same per block of ``streaming.smooth`` positions (the plot's points);
  - ``first_token``: per (variant, layer): ``mean`` over heads and ``max_head`` of the
    attention on token 0 (``per_head`` and ``uniform`` ride along);
  - ``train``: per variant: ``valid_loss`` (the trainer's last), ``train_seconds`` and
    ``eval_seconds`` (this invocation's).
"""

from __future__ import annotations

import functools
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from attnlab import config_lib, data, positional
from attnlab import workdir as workdir_lib
from attnlab.analysis import capture
from attnlab.engine import studies, sweeps, training
from attnlab.inference import generation
from attnlab.models import TransformerLM, build_lm, kv_cache
from attnlab.registry import ConfigError
from attnlab.studies import common


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
  if n == window:
    return out
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


def uniform_first_token(seq_len: int, query_min: int) -> float:
  """Attention on token 0 of uniform causal attention, queries at positions >= query_min."""
  return float(np.mean(1.0 / (np.arange(query_min, seq_len) + 1)))


def training_config(config):
  """The sweep config the trainer sees (the streaming block is evaluation only)."""
  return common.without(config, "streaming")


def check(config) -> None:
  """The ``streaming`` block and the variants, before anything trains; ``ConfigError``
  naming the field."""
  sc = config.get("streaming")
  if sc is None:
    raise ConfigError("streaming: the config has no streaming block (see configs/streaming.py)")
  common.check_int(sc.get("cache"), "streaming.cache", 1, what="tokens the cached methods keep")
  common.check_int(sc.get("stream_length"), "streaming.stream_length", sc.cache + 1,
                   what="tokens per stream, more than streaming.cache")
  common.check_int(sc.get("num_streams"), "streaming.num_streams", 1)
  common.check_ints(sc.get("sinks"), "streaming.sinks", 1, sc.cache - 1,
                    "sink tokens kept beside a window of cache - sinks")
  common.check_int(sc.get("smooth"), "streaming.smooth", 1, sc.stream_length,
                   "positions per point of the plotted curves")
  common.check_int(sc.get("sink_query_min"), "streaming.sink_query_min", 0,
                   config.data.seq_len - 1, "queries at positions >= this, within data.seq_len")
  for name, cfg in sweeps.variant_configs(training_config(config)).items():
    try:
      positional.check_length(config_lib.resolve(cfg).model.position, sc.stream_length,
                              "streaming.stream_length (the dense method reads it whole)")
    except ConfigError as e:
      raise ConfigError(f"sweep.variants.{name}: {e}") from None


def final_valid_loss(workdir) -> float | None:
  """The last validation loss a training run logged (``metrics.jsonl``)."""
  valid = [r for r in workdir_lib.read_metrics(workdir) if r.get("split") == "valid"]
  return valid[-1]["loss"] if valid else None


def run_seed(config, workdir, progress: bool = True, **train_options) -> list[dict]:
  """The ``streaming`` runner, one seed (``config.train.seed``): train every variant
  (resumable), read the streams through each method, measure the first-token attention."""
  check(config)
  workdir = pathlib.Path(workdir)
  sc = config.streaming
  variants = sweeps.variant_configs(training_config(config))
  seconds = {}
  for name, cfg in variants.items():
    start = time.perf_counter()
    training.train_and_evaluate(cfg, workdir / name, progress=progress, **train_options)
    seconds[name] = time.perf_counter() - start
  records = []
  evicting = [("after_eviction", sc.cache, sc.stream_length)]
  ranges = [(f"{a}-{b}", a, b) for a, b in position_ranges(sc.cache, sc.stream_length)]
  blocks = [(f"{a}-{min(a + sc.smooth, sc.stream_length)}", a, min(a + sc.smooth, sc.stream_length))
            for a in range(0, sc.stream_length, sc.smooth)]
  for name in variants:
    start = time.perf_counter()
    cfg, params, step = workdir_lib.restore_params(workdir / name)
    corpus = data.load_corpus(cfg.data)
    if len(corpus.valid) < sc.stream_length + 1:
      raise ConfigError(f"streaming.stream_length={sc.stream_length} needs a validation split of "
                        f"at least {sc.stream_length + 1} tokens; {name}'s has {len(corpus.valid)}")
    windows = streams(corpus.valid, sc.num_streams, sc.stream_length)
    inputs, targets = jnp.asarray(windows[:, :-1]), jnp.asarray(windows[:, 1:])
    methods = {"dense": lambda: _forward_nll_fn(cfg.model)(params, inputs, targets),
               "recompute": lambda: recompute_nll(cfg.model, params, np.asarray(inputs),
                                                  np.asarray(targets), sc.cache)}
    for method, layout in method_layouts(sc).items():
      methods[method] = functools.partial(
          lambda lay: cached_nll(cfg.model, params, inputs, targets, lay), layout)
    common_fields = {"variant": name, "step": step, "train_length": cfg.data.seq_len,
                     "cache": sc.cache, "streams": sc.num_streams}
    for method, fn in methods.items():
      nll = np.asarray(fn(), np.float64).mean(0)                   # per position, over streams
      for measure, spans in (("nll", ranges + evicting), ("curve", blocks)):
        for label, a, b in spans:
          records.append({**common_fields, "measure": measure, "method": method,
                          "positions": label, "start": a, "end": b, "nll": float(nll[a:b].mean())})
    mass = first_token_attention(cfg.model, params, inputs[:, :cfg.data.seq_len], sc.sink_query_min)
    uniform = uniform_first_token(cfg.data.seq_len, sc.sink_query_min)
    for layer, heads in enumerate(mass):
      records.append({**common_fields, "measure": "first_token", "layer": layer,
                      "mean": float(np.mean(heads)), "max_head": float(np.max(heads)),
                      "per_head": heads, "uniform": uniform, "query_min": sc.sink_query_min})
    records.append({**common_fields, "measure": "train", "valid_loss": final_valid_loss(workdir / name),
                    "train_seconds": seconds[name], "eval_seconds": time.perf_counter() - start})
  return records


# ----------------------------------------------------------------------------- results


def _select(summary, **match) -> list[dict]:
  return [r for r in summary if all(r.get(k) == v for k, v in match.items())]


def markdown(results: dict) -> str:
  """The loss by position range per (variant, method), the first-token attention per
  (variant, layer) and the training losses; mean ± sd over seeds."""
  summary = results["summary"]
  seeds = results.get("seeds") or [0]
  variants = list(dict.fromkeys(r["variant"] for r in summary))
  nll = _select(summary, measure="nll")
  methods = list(dict.fromkeys(r["method"] for r in nll))
  spans = list(dict.fromkeys((r["positions"], r["start"], r["end"]) for r in nll))
  some = nll[0]
  length = max(b for _, _, b in spans)
  heads = [f"{a}–{b}" if label != "after_eviction" else f"{a}–{b} (all evicting)"
           for label, a, b in spans]
  lines = []
  if len(seeds) > 1:
    lines += [f"Mean ± sample standard deviation over {len(seeds)} seeds "
              f"({', '.join(map(str, seeds))}).", ""]
  lines += [f"Mean loss (nats per byte) by stream position, {some['streams']} streams of "
            f"{length} bytes; cache = {some['cache']} tokens.\n",
            "| variant | method | " + " | ".join(heads) + " |", "|---|---|" + "---|" * len(heads)]
  cell = {(r["variant"], r["method"], r["positions"]): r for r in nll}
  for v in variants:
    for m in methods:
      lines.append(f"| {v} | {m} | " + " | ".join(
          studies.spread(cell[v, m, label], "nll", ".3f") for label, _, _ in spans) + " |")
  first = _select(summary, measure="first_token")
  layers = sorted({r["layer"] for r in first})
  lines += ["", "Attention probability on the first token of a training-length window: mean "
            f"over heads / largest head, per layer (queries at positions >= "
            f"{first[0]['query_min']}, averaged; uniform attention would give the last column).\n",
            "| variant | " + " | ".join(f"layer {i}" for i in layers) + " | uniform |",
            "|---|" + "---|" * (len(layers) + 1)]
  for v in variants:
    rows = sorted(_select(first, variant=v), key=lambda r: r["layer"])
    cells = [f"{studies.spread(r, 'mean', '.3f')} / {studies.spread(r, 'max_head', '.3f')}"
             for r in rows]
    lines.append(f"| {v} | " + " | ".join(cells) + f" | {rows[0]['uniform']:.3f} |")
  lines += ["", "| variant | trained at | steps | valid loss at the end | training seconds | "
            "evaluation seconds |", "|---|---|---|---|---|---|"]
  for r in _select(summary, measure="train"):
    lines.append(f"| {r['variant']} | {r['train_length']} | {r['step']} | "
                 f"{studies.spread(r, 'valid_loss', '.3f')} | "
                 f"{studies.spread(r, 'train_seconds', '.0f')} | "
                 f"{studies.spread(r, 'eval_seconds', '.0f')} |")
  return "\n".join(lines) + "\n"


def plots(results: dict, path) -> None:
  """``results.png``: per variant, the loss by stream position per method (mean over
  seeds of each block of ``streaming.smooth`` positions; shaded: min–max over seeds) and,
  below, the same minus the ``recompute`` reference. ``attention.png``: the first-token
  attention by layer."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  summary = results["summary"]
  curve = _select(summary, measure="curve")
  names = list(dict.fromkeys(r["variant"] for r in curve))
  methods = list(dict.fromkeys(r["method"] for r in curve))
  color = {m: f"C{i}" for i, m in enumerate(methods)}       # one colour per method, both rows
  cache = curve[0]["cache"]
  fig, axes = plt.subplots(2, len(names), figsize=(5.2 * len(names), 7), squeeze=False,
                           sharex=True)
  for col, name in enumerate(names):
    rows = {m: sorted(_select(curve, variant=name, method=m), key=lambda r: r["start"])
            for m in methods}
    x = [(r["start"] + r["end"] - 1) / 2 for r in rows[methods[0]]]   # block centres
    base = np.array([r["nll"] for r in rows["recompute"]]) if "recompute" in rows else None
    for m in methods:
      common.band(axes[0, col], x, rows[m], "nll", label=m, lw=1.1, color=color[m])
      if base is not None and m != "recompute":
        axes[1, col].plot(x, np.array([r["nll"] for r in rows[m]]) - base, label=m, lw=1.1,
                          color=color[m])
    for row in (0, 1):
      axes[row, col].axvline(cache, color="gray", ls=":", lw=1)
      axes[row, col].grid(True, alpha=0.3)
    axes[0, col].set_title(name)
    axes[1, col].set_xlabel("position in the stream (bytes)")
    axes[1, col].set_ylim(-0.15, 0.6)
  width = curve[0]["end"] - curve[0]["start"]
  axes[0, 0].set_ylabel(f"loss (nats/byte), mean of blocks of {width}")
  axes[1, 0].set_ylabel("loss minus the recompute baseline")
  axes[0, -1].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path("results.png"), dpi=120)
  plt.close(fig)

  first = _select(summary, measure="first_token")
  fig, ax = plt.subplots(figsize=(5, 3.5))
  for name in dict.fromkeys(r["variant"] for r in first):
    rows = sorted(_select(first, variant=name), key=lambda r: r["layer"])
    layers = [r["layer"] for r in rows]
    line = common.band(ax, layers, rows, "mean", "o-", label=f"{name} (mean over heads)")
    ax.plot(layers, [r["max_head"] for r in rows], "^--", color=line.get_color(),
            label=f"{name} (largest head)")
  ax.axhline(first[0]["uniform"], color="gray", ls=":", label="uniform attention")
  ax.set_xticks(sorted({r["layer"] for r in first}))
  ax.set_xlabel("layer")
  ax.set_ylabel("attention on the first token")
  ax.legend(fontsize=8)
  ax.grid(True, alpha=0.3)
  fig.tight_layout()
  fig.savefig(path("attention.png"), dpi=120)
  plt.close(fig)


studies.STUDIES.register("streaming")(studies.Study(
    run=run_seed, keys=("variant", "measure", "method", "positions", "layer"),
    metrics=("nll", "mean", "max_head", "valid_loss", "train_seconds", "eval_seconds"),
    markdown=markdown, plots=plots, check=check))
