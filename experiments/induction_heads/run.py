"""Do induction heads form in a 2-layer attention-only model, and when?

  python experiments/induction_heads/run.py --config=configs/induction.py \
      --workdir=runs/induction --out=experiments/induction_heads

Trains on repeated random segments (``configs/induction.py``) with attnlab's training
engine and, through its evaluation hook every ``train.eval_every`` steps (and at
initialisation), measures on a fixed probe batch
(random printable bytes, period seq_len / 2, repeated once):
  - the induction score of every head (``attnlab.analysis.metrics.induction_score``),
  - the previous-token score of every head,
  - the in-context loss: mean loss on the first copy (unpredictable) and on the repeat
    (predictable by looking back).
Writes ``results.json``, ``results.md`` and ``results.png`` into ``--out``, and leaves a
checkpoint in ``--workdir`` that ``python -m attnlab.analyze`` can read.
"""

from __future__ import annotations

import json
import pathlib
import time

import numpy as np
import optax
from absl import app, flags
from ml_collections import config_flags

from attnlab import config_lib, data, runtime
from attnlab.provenance import provenance
from attnlab.engine import training
from attnlab.analysis import capture, metrics
from attnlab.models import build_lm


def define_flags() -> None:
  """Command-line flags (defined only when run as a script, so tests can import this file)."""
  config_flags.DEFINE_config_file("config", "configs/induction.py", "Induction config.")
  flags.DEFINE_string("workdir", "runs/induction", "Where the trained checkpoint goes.")
  flags.DEFINE_string("out", "experiments/induction_heads", "Where the tables and plot go.")


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


def run(config, workdir, out) -> dict:
  """Train on the engine (``train_and_evaluate``) with a hook that measures the heads at
  initialisation and every ``train.eval_every`` steps; write the results into ``out``."""
  cfg = config_lib.resolve(config)
  ind, t = cfg.induction, cfg.train
  model = build_lm(cfg.model)
  period = cfg.data.seq_len // 2
  probe = metrics.induction_tokens(np.random.default_rng([t.seed, 10**6]), ind.eval_batch,
                                   period, ind.token_high, ind.token_low)
  records = []

  def measure_heads(state, step, losses):
    records.append({"step": step, "train_loss": float(np.mean(losses)) if losses else None,
                    **measure(model, state["params"], probe, period)})

  start = time.perf_counter()
  training.train_and_evaluate(cfg, workdir, batches=segment_batches(cfg),
                              hooks=(measure_heads,))
  seconds = time.perf_counter() - start
  result = {"config": cfg.to_dict(), "probe_period": period, "probe_batch": ind.eval_batch,
            "train_seconds": seconds, "records": records, "provenance": provenance()}
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  (out / "results.json").write_text(json.dumps(result, indent=1))
  (out / "results.md").write_text(markdown(result))
  plot(result, out / "results.png")
  return result


def first_step_above(records, threshold: float):
  """(step, layer, head) of the first measurement where some head's induction score > threshold."""
  for r in records:
    for l, heads in enumerate(r["induction"]):
      for h, s in enumerate(heads):
        if s > threshold:
          return r["step"], l, h
  return None


def markdown(result) -> str:
  """Per-head induction scores at selected steps, the losses, and the first step above 0.5."""
  records = result["records"]
  layers, heads = len(records[0]["induction"]), len(records[0]["induction"][0])
  shown = [r for r in records if r["step"] % 250 == 0 or r is records[-1]]
  head_names = [f"L{l}H{h}" for l in range(layers) for h in range(heads)]
  lines = ["| step | " + " | ".join(head_names) + " | loss first copy | loss repeat |",
           "|---|" + "---|" * (len(head_names) + 2)]
  for r in shown:
    scores = [r["induction"][l][h] for l in range(layers) for h in range(heads)]
    lines.append(f"| {r['step']} | " + " | ".join(f"{s:.3f}" for s in scores) +
                 f" | {r['loss_first']:.3f} | {r['loss_repeat']:.3f} |")
  lines += ["", "Previous-token score per head at the same steps:", "",
            "| step | " + " | ".join(head_names) + " |", "|---|" + "---|" * len(head_names)]
  for r in shown:
    scores = [r["previous_token"][l][h] for l in range(layers) for h in range(heads)]
    lines.append(f"| {r['step']} | " + " | ".join(f"{s:.3f}" for s in scores) + " |")
  first = first_step_above(records, 0.5)
  init_best = max(max(h) for h in records[0]["induction"])
  final_best = max(max(h) for h in records[-1]["induction"])
  period = result["probe_period"]
  summary = [
      "", f"Probe: {result['probe_batch']} sequences of {period} random printable bytes repeated "
      f"once (length {2 * period}). Uniform causal attention would score "
      f"{np.mean([1 / (i + 1) for i in range(period, 2 * period)]):.3f}.",
      f"Best head at initialisation: {init_best:.3f}; after training: {final_best:.3f}.",
      ("No head exceeded 0.5." if first is None else
       f"First measurement with a head above 0.5: step {first[0]} (layer {first[1]}, head {first[2]})."),
      f"Training time: {result['train_seconds']:.0f} s for {records[-1]['step']} steps "
      f"(including the measurements)."]
  return "\n".join(lines + summary) + "\n"


def plot(result, path) -> None:
  """Left: induction score per head against step. Right: probe losses against step."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  records = result["records"]
  steps = [r["step"] for r in records]
  scores = np.array([r["induction"] for r in records])          # [T, layers, heads]
  fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
  styles = ["--", "-"]
  for l in range(scores.shape[1]):
    for h in range(scores.shape[2]):
      a.plot(steps, scores[:, l, h], styles[l % 2], label=f"layer {l} head {h}")
  a.axhline(0.5, color="grey", lw=0.8)
  a.set_xlabel("training step")
  a.set_ylabel("induction score")
  a.set_title("induction score per head (probe: repeated random bytes)")
  a.legend(fontsize=7, ncol=2)
  b.plot(steps, [r["loss_first"] for r in records], label="first copy (unpredictable)")
  b.plot(steps, [r["loss_repeat"] for r in records], label="repeat (in-context)")
  b.set_xlabel("training step")
  b.set_ylabel("loss (nats/token)")
  b.set_title("probe loss")
  b.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv):
  del argv
  f = flags.FLAGS
  result = run(f.config, f.workdir, f.out)
  print(markdown(result))


if __name__ == "__main__":
  define_flags()
  runtime.configure()
  app.run(main)
