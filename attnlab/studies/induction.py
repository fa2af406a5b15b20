"""Induction-head study: do induction heads form in a 2-layer attention-only model, and
when (the ``induction`` runner)?

  python -m attnlab.sweep --config=configs/induction.py --workdir=runs/induction

Each variant of ``sweep.variants`` (e.g. learned absolute positions, RoPE) trains in
``workdir/<variant>`` on repeated random segments (the ``induction`` block) with attnlab's
training engine. Through its evaluation hook, at initialisation and every
``train.eval_every`` steps, it measures on a fixed probe batch (random printable bytes,
period seq_len / 2, repeated once):

  - the induction score of every head (``attnlab.analysis.metrics.induction_score``),
  - the previous-token score of every head,
  - the in-context loss: mean loss on the first copy (unpredictable) and on the repeat
    (predictable by looking back).

The measurements go to ``workdir/<variant>/induction_measurements.jsonl`` as they are
taken, so a finished run is reused (nothing retrains or re-measures) and an interrupted
one resumes from its checkpoint, measuring on from there.

Records (one seed), told apart by ``measure``:
  - ``heads``: per (variant, step, layer, head): ``induction``, ``previous_token``;
  - ``losses``: per (variant, step): ``loss_first``, ``loss_repeat``, ``train_loss`` (the
    mean training loss since the previous measurement; None at step 0);
  - ``run``: per variant: ``train_seconds`` (this invocation's), the final ``step``, the
    probe's period and batch and ``uniform`` (the induction score of uniform causal
    attention on the probe).
"""

from __future__ import annotations

import json
import pathlib
import time

import numpy as np
import optax

from attnlab import config_lib, data
from attnlab.analysis import capture, metrics
from attnlab.engine import studies, sweeps, training
from attnlab.models import build_lm
from attnlab.registry import ConfigError
from attnlab.studies import common
from attnlab.workdir import WorkdirError

MEASUREMENTS = "induction_measurements.jsonl"


def repeated_segments(rng: np.random.Generator, batch: int, length: int, min_period: int,
                      max_period: int, low: int, high: int) -> tuple[np.ndarray, np.ndarray]:
  """Per row, a segment of P distinct tokens from [low, high) (P uniform in
  [min_period, max_period]) repeated to fill ``length``.

  Returns (tokens int32 [batch, length], periods int [batch]).
  """
  rows, periods = [], rng.integers(min_period, max_period + 1, batch)
  for period in periods:
    segment = rng.permutation(high - low)[:period] + low
    rows.append(np.resize(segment, length))
  return np.stack(rows).astype(np.int32), periods


def repeat_weights(periods: np.ndarray, length: int) -> np.ndarray:
  """float32 [batch, length]: 1 where input position t >= P (its next token repeats one
  seen before, so it is predictable in context), else 0."""
  return (np.arange(length)[None, :] >= periods[:, None]).astype(np.float32)


def probe_losses(logits: np.ndarray, tokens: np.ndarray, period: int) -> tuple[float, float]:
  """Mean next-token loss on the first copy and on the repeat of ``induction_tokens``.

  logits: [batch, 2P, vocab]; tokens: [batch, 2P]. Position i predicts token i+1:
  i in [0, P-1) targets the first copy (no way to know it), i in [P, 2P-1) the repeat
  (the previous occurrence of token i says what comes next).
  """
  losses = np.asarray(optax.softmax_cross_entropy_with_integer_labels(
      logits[:, :-1], tokens[:, 1:]))
  return float(losses[:, :period - 1].mean()), float(losses[:, period:].mean())


def measure(model, params, probe, period) -> dict:
  """Induction and previous-token score per [layer][head], and the probe's two losses."""
  logits, maps = capture.capture_attention(model, params, probe)   # maps [L, B, H, 2P, 2P]
  first, repeat = probe_losses(logits, probe, period)
  return {"induction": metrics.induction_score(maps, period).mean(1).tolist(),
          "previous_token": metrics.previous_token_score(maps).mean(1).tolist(),
          "loss_first": first, "loss_repeat": repeat}


def segment_batches(cfg) -> data.Batches:
  """Training batches of repeated random segments, a pure function of (seed, step):
  (inputs, targets[, weights on the repeats]) of [batch_size, seq_len]."""
  ind, t = cfg.induction, cfg.train

  def batch(seed_step):
    rng = np.random.default_rng(seed_step)
    seq, periods = repeated_segments(rng, t.batch_size, cfg.data.seq_len + 1, ind.min_period,
                                     ind.max_period, ind.token_low, ind.token_high)
    if ind.loss_on_repeats:
      return seq[:, :-1], seq[:, 1:], repeat_weights(periods, cfg.data.seq_len)
    return seq[:, :-1], seq[:, 1:]

  return data.Batches(lambda step: batch([t.seed, step]),
                      lambda i: batch([t.seed, 10**6 + 1, i]),
                      f"repeated random segments of {ind.min_period}..{ind.max_period} bytes")


def probe_tokens(cfg) -> np.ndarray:
  """The fixed probe: ``induction.eval_batch`` sequences of seq_len / 2 random bytes from
  [token_low, token_high), repeated once (a pure function of ``train.seed``)."""
  ind = cfg.induction
  return metrics.induction_tokens(np.random.default_rng([cfg.train.seed, 10**6]), ind.eval_batch,
                                  cfg.data.seq_len // 2, ind.token_high, ind.token_low)


def uniform_score(period: int) -> float:
  """Induction score of uniform causal attention on a probe of ``period`` repeated once:
  mean over queries i in [P, 2P) of 1 / (i + 1)."""
  return float(np.mean([1 / (i + 1) for i in range(period, 2 * period)]))


def measurement_steps(t) -> list[int]:
  """The steps the hook measures at: 0, every ``eval_every`` and the last."""
  return sorted({0, t.steps, *range(t.eval_every, t.steps + 1, t.eval_every)})


def read_measurements(path: pathlib.Path) -> dict[int, dict]:
  """{step: measurement} of a measurements file (a step measured twice, by a run resumed
  from a checkpoint before it, keeps the later one; a torn last line is dropped)."""
  out = {}
  if path.exists():
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    for i, line in enumerate(lines):
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        if i == len(lines) - 1:
          break
        raise WorkdirError(f"{path} line {i + 1} is not JSON: {line[:80]!r}") from None
      out[record["step"]] = record
  return out


def train_and_measure(cfg, workdir: pathlib.Path, progress: bool = True,
                      **train_options) -> tuple[list[dict], float]:
  """Train (or resume, or reuse) the run in ``workdir`` measuring the heads on the probe;
  returns (the measurements by step, the seconds this took)."""
  model = build_lm(cfg.model)
  period = cfg.data.seq_len // 2
  probe = probe_tokens(cfg)
  path = workdir / MEASUREMENTS

  def measure_heads(state, step, losses):
    if step == 0:                     # a run from scratch: earlier measurements are another run's
      path.unlink(missing_ok=True)
    record = {"step": int(step), "train_loss": float(np.mean(losses)) if losses else None,
              **measure(model, state["params"], probe, period)}
    with path.open("a") as f:
      f.write(json.dumps(record) + "\n")

  start = time.perf_counter()
  training.train_and_evaluate(cfg, workdir, batches=segment_batches(cfg), hooks=(measure_heads,),
                              progress=progress, **train_options)
  seconds = time.perf_counter() - start
  found = read_measurements(path)
  missing = [s for s in measurement_steps(cfg.train) if s not in found]
  if missing:
    raise WorkdirError(f"{path} lacks the measurements of steps {missing[:5]}"
                       f"{' ...' if len(missing) > 5 else ''}: the run in {workdir} finished "
                       f"without them, so they cannot be taken again. Use a new --workdir "
                       f"(or remove {workdir}) to train and measure it afresh")
  return [found[s] for s in measurement_steps(cfg.train)], seconds


def check(config) -> None:
  """The ``induction`` block and the variants, before anything trains; ``ConfigError``
  naming the field."""
  ind = config.get("induction")
  if ind is None:
    raise ConfigError("induction: the config has no induction block (see configs/induction.py)")
  vocab = config.model.vocab_size
  common.check_int(ind.get("token_low"), "induction.token_low", 0, vocab - 1)
  common.check_int(ind.get("token_high"), "induction.token_high", ind.token_low + 1, vocab,
                   "segment bytes are drawn from [token_low, token_high)")
  span = ind.token_high - ind.token_low
  common.check_int(ind.get("min_period"), "induction.min_period", 1, span,
                   "a segment's bytes are distinct, so at most token_high - token_low")
  common.check_int(ind.get("max_period"), "induction.max_period", ind.min_period,
                   min(span, config.data.seq_len - 1),
                   "from min_period; the segment must repeat within data.seq_len")
  common.check_int(ind.get("eval_batch"), "induction.eval_batch", 1, what="probe sequences")
  if not isinstance(ind.get("loss_on_repeats"), bool):
    raise ConfigError(f"induction.loss_on_repeats={ind.get('loss_on_repeats')!r} must be true "
                      f"or false")
  if config.data.seq_len < 2 or config.data.seq_len % 2:
    raise ConfigError(f"data.seq_len={config.data.seq_len!r} must be even and >= 2 (the probe "
                      f"is seq_len / 2 bytes repeated once)")
  sweeps.variant_configs(config)


def run_seed(config, workdir, progress: bool = True, **train_options) -> list[dict]:
  """The ``induction`` runner, one seed (``config.train.seed``): train and measure each
  variant (resumable), return its measurements as flat records."""
  check(config)
  workdir = pathlib.Path(workdir)
  records = []
  for name, variant in sweeps.variant_configs(config).items():
    cfg = config_lib.resolve(variant)
    measured, seconds = train_and_measure(cfg, workdir / name, progress, **train_options)
    period = cfg.data.seq_len // 2
    for m in measured:
      for layer, (ind, prev) in enumerate(zip(m["induction"], m["previous_token"])):
        for head, (score, prev_score) in enumerate(zip(ind, prev)):
          records.append({"variant": name, "measure": "heads", "step": m["step"], "layer": layer,
                          "head": head, "induction": score, "previous_token": prev_score})
      records.append({"variant": name, "measure": "losses", "step": m["step"],
                      "loss_first": m["loss_first"], "loss_repeat": m["loss_repeat"],
                      "train_loss": m["train_loss"]})
    records.append({"variant": name, "measure": "run", "step": measured[-1]["step"],
                    "train_seconds": seconds, "position": cfg.model.position.kind,
                    "probe_period": period, "probe_batch": cfg.induction.eval_batch,
                    "uniform": uniform_score(period)})
  return records


# ----------------------------------------------------------------------------- results


def first_step_above(records, threshold: float, metric: str = "induction"):
  """(step, layer, head) of the first measurement where some head's ``metric`` > threshold,
  earliest step first, then layer, then head; None if none does. records: flat head
  records (``step``, ``layer``, ``head``, ``metric``)."""
  for r in sorted(records, key=lambda r: (r["step"], r["layer"], r["head"])):
    if r[metric] is not None and r[metric] > threshold:
      return r["step"], r["layer"], r["head"]
  return None


def _per_seed(rows: list[dict], metric: str = "induction") -> list[list[dict]]:
  """Head rows of the summary as one list of flat records per seed (from ``<metric>_values``)."""
  seeds = len(rows[0][f"{metric}_values"])
  return [[{**r, metric: r[f"{metric}_values"][s]} for r in rows] for s in range(seeds)]


def _best(rows: list[dict], step: int) -> list[float]:
  """Per seed, the largest induction score of any head at ``step``."""
  at = [r for r in rows if r["step"] == step]
  return np.max([common.values(r, "induction") for r in at], axis=0).tolist()


def markdown(results: dict) -> str:
  """Per variant: per-head induction scores and probe losses at every 250th step (and the
  last), the previous-token scores, and the headline numbers; then a comparison table."""
  summary = results["summary"]
  seeds = results.get("seeds") or [0]
  names = list(dict.fromkeys(r["variant"] for r in summary))
  lines = []
  if len(seeds) > 1:
    lines += [f"Mean ± sample standard deviation over {len(seeds)} seeds "
              f"({', '.join(map(str, seeds))}); per-seed values in results.json.", ""]
  table = ["| variant | steps | best head at the end | best head during the run (at step, "
           "seed means) | first step with a head above 0.5, per seed | probe loss on repeat | "
           "train loss at the end | training seconds |", "|---|---|---|---|---|---|---|---|"]
  for name in names:
    heads = [r for r in summary if r["variant"] == name and r["measure"] == "heads"]
    losses = sorted((r for r in summary if r["variant"] == name and r["measure"] == "losses"),
                    key=lambda r: r["step"])
    run = next(r for r in summary if r["variant"] == name and r["measure"] == "run")
    steps = [r["step"] for r in losses]
    layers = sorted({r["layer"] for r in heads})
    nheads = sorted({r["head"] for r in heads})
    cell = {(r["step"], r["layer"], r["head"]): r for r in heads}
    loss = {r["step"]: r for r in losses}
    shown = [s for s in steps if s % 250 == 0 or s == steps[-1]]
    head_names = [f"L{l}H{h}" for l in layers for h in nheads]
    lines += [f"**{name}** (`model.position.kind={run['position']}`): induction score per head "
              f"(LℓHh: layer ℓ, head h) and probe losses (nats/token)", "",
              "| step | " + " | ".join(head_names) + " | loss first copy | loss repeat |",
              "|---|" + "---|" * (len(head_names) + 2)]
    for s in shown:
      lines.append(f"| {s} | " + " | ".join(studies.spread(cell[s, l, h], "induction", ".3f")
                                           for l in layers for h in nheads) +
                   f" | {studies.spread(loss[s], 'loss_first', '.3f')} | "
                   f"{studies.spread(loss[s], 'loss_repeat', '.3f')} |")
    lines += ["", "Previous-token score per head at the same steps:", "",
              "| step | " + " | ".join(head_names) + " |", "|---|" + "---|" * len(head_names)]
    for s in shown:
      lines.append(f"| {s} | " + " | ".join(studies.spread(cell[s, l, h], "previous_token", ".3f")
                                           for l in layers for h in nheads) + " |")
    firsts = [first_step_above(rs, 0.5) for rs in _per_seed(heads)]
    first_text = "; ".join("—" if f is None else f"{f[0]} (L{f[1]}H{f[2]})" for f in firsts)
    best_mean = max(heads, key=lambda r: (r["induction"], -r["step"]))
    lines += ["", f"Probe: {run['probe_batch']} sequences of {run['probe_period']} random "
              f"printable bytes repeated once (length {2 * run['probe_period']}). Uniform causal "
              f"attention would score {run['uniform']:.3f}.",
              f"Best head at initialisation: {common.fmt(_best(heads, 0))}; after training: "
              f"{common.fmt(_best(heads, steps[-1]))}.",
              f"First measurement with a head above 0.5{', per seed' if len(seeds) > 1 else ''}: "
              f"{first_text}.",
              f"Training time: {studies.spread(run, 'train_seconds', '.0f')} s for {steps[-1]} "
              f"steps (including the measurements; a reused run counts only its reading).", ""]
    table.append(
        f"| {name} | {steps[-1]} | {common.fmt(_best(heads, steps[-1]))} | "
        f"{best_mean['induction']:.3f} (L{best_mean['layer']}H{best_mean['head']}, "
        f"{best_mean['step']}) | {first_text} | "
        f"{studies.spread(loss[steps[-1]], 'loss_repeat', '.3f')} | "
        f"{studies.spread(loss[steps[-1]], 'train_loss', '.3f')} | "
        f"{studies.spread(run, 'train_seconds', '.0f')} |")
  return "\n".join(lines + ["**All variants**", ""] + table) + "\n"


def plots(results: dict, path) -> None:
  """``results.png``, a row per variant. Left: induction score per head against step.
  Right: probe losses against step. Lines: mean over seeds; shaded: min–max."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  summary = results["summary"]
  names = list(dict.fromkeys(r["variant"] for r in summary))
  fig, axes = plt.subplots(len(names), 2, figsize=(12, 4.5 * len(names)), squeeze=False)
  styles = ["--", "-"]
  for (a, b), name in zip(axes, names):
    heads = [r for r in summary if r["variant"] == name and r["measure"] == "heads"]
    losses = sorted((r for r in summary if r["variant"] == name and r["measure"] == "losses"),
                    key=lambda r: r["step"])
    for layer in sorted({r["layer"] for r in heads}):
      for head in sorted({r["head"] for r in heads}):
        rows = sorted((r for r in heads if (r["layer"], r["head"]) == (layer, head)),
                      key=lambda r: r["step"])
        common.band(a, [r["step"] for r in rows], rows, "induction", styles[layer % 2],
                    label=f"layer {layer} head {head}")
    a.axhline(0.5, color="grey", lw=0.8)
    a.set_xlabel("training step")
    a.set_ylabel("induction score")
    a.set_title(f"{name}: induction score per head (probe: repeated random bytes)")
    a.legend(fontsize=7, ncol=2)
    steps = [r["step"] for r in losses]
    common.band(b, steps, losses, "loss_first", label="first copy (unpredictable)")
    common.band(b, steps, losses, "loss_repeat", label="repeat (in-context)")
    b.set_xlabel("training step")
    b.set_ylabel("loss (nats/token)")
    b.set_title(f"{name}: probe loss")
    b.legend()
  fig.tight_layout()
  fig.savefig(path("results.png"), dpi=110)
  plt.close(fig)


studies.STUDIES.register("induction")(studies.Study(
    run=run_seed, keys=("variant", "measure", "step", "layer", "head"),
    metrics=("induction", "previous_token", "loss_first", "loss_repeat", "train_loss",
             "train_seconds"),
    markdown=markdown, plots=plots, check=check))
