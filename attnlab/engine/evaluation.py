"""Loss, perplexity and bits per byte of a trained run at several evaluation lengths
(the engine behind ``python -m attnlab.evaluate``).

Each length L is scored with non-overlapping windows over the validation split:
window w predicts tokens ``w*L+1 .. (w+1)*L`` from the tokens before them in the
same window (so early tokens of a window have short contexts, as in the ALiBi
paper's non-overlapping protocol). Writes ``eval.json``, ``eval.md`` and
``eval.png`` into the workdir (or ``--out``).
"""

from __future__ import annotations

import json
import math
import pathlib

import jax
import numpy as np
import optax
from tqdm import tqdm

from attnlab import data, positional
from attnlab.models import build_lm
from attnlab.registry import ConfigError
from attnlab import workdir as workdir_lib
from attnlab.workdir import WorkdirError, restore_params

LN2 = math.log(2.0)


EVAL_MODES = ("non_overlapping", "sliding")


def evaluate_lengths(cfg, params, tokens: np.ndarray, lengths, *, max_tokens: int | None = None,
                     batch_tokens: int | None = None, mode: str = "non_overlapping",
                     stride: int | None = None, progress: bool = True) -> list[dict]:
  """Score ``tokens`` at each length; returns one record per length.

  ``mode="non_overlapping"``: consecutive windows, every token of a window scored.
  ``mode="sliding"``: windows advance by ``stride`` and score their last ``stride``
  tokens, so each scored token sees at least ``length - stride`` tokens of context.
  Record: ``eval_length``, ``eval_mode``, ``loss`` (nats/token), ``ppl``, ``bpb``
  (bits per byte, tokens being bytes), ``tokens`` (number scored), and ``stride``.
  """
  max_tokens = max_tokens or cfg.eval.max_tokens
  batch_tokens = batch_tokens or cfg.eval.batch_tokens
  if mode not in EVAL_MODES:
    raise ConfigError(f"eval mode={mode!r} is not valid; valid: {', '.join(EVAL_MODES)}")
  for length in lengths:  # validate every length before compiling anything
    if not isinstance(length, int) or length < 1:
      raise ConfigError(f"--lengths: {length!r} must be a positive integer")
    positional.check_length(cfg.model.position, length, "evaluation length")
    if mode == "sliding" and not (isinstance(stride, int) and 1 <= stride <= length):
      raise ConfigError(f"sliding stride={stride!r} must be an integer in [1, {length}]")
  model = build_lm(cfg.model)

  @jax.jit
  def weighted_nll(params, inputs, targets, weights):
    logits = model.apply({"params": params}, inputs)
    return (optax.softmax_cross_entropy_with_integer_labels(logits, targets) * weights).sum()

  records = []
  for length in tqdm(lengths, desc=f"eval lengths ({mode})", disable=not progress):
    if mode == "sliding":
      inputs, targets, weights = data.sliding_windows(tokens, length, stride, max_tokens)
    else:
      inputs, targets = data.non_overlapping_windows(tokens, length, max(1, max_tokens // length))
      weights = np.ones(targets.shape, np.float32)
    per_batch = max(1, batch_tokens // length)
    total = 0.0
    for start in range(0, len(inputs), per_batch):
      chunk = slice(start, start + per_batch)
      total += float(weighted_nll(params, inputs[chunk], targets[chunk], weights[chunk]))
    scored = int(weights.sum())
    loss = total / scored
    records.append({"eval_length": length, "eval_mode": mode, "loss": loss,
                    "ppl": math.exp(min(loss, 700.0)), "bpb": loss / LN2, "tokens": scored,
                    "stride": stride if mode == "sliding" else length})
  return records


def markdown_table(records: list[dict], key: str = "variant") -> str:
  """Rows: variants (or one row); columns: evaluation lengths; cells: perplexity (bpb)."""
  lengths = sorted({r["eval_length"] for r in records})
  names = list(dict.fromkeys(r.get(key, "model") for r in records))
  lines = ["| " + key + " | " + " | ".join(f"L={n}" for n in lengths) + " |",
           "|---|" + "---|" * len(lengths)]
  for name in names:
    cells = []
    for n in lengths:
      r = next((r for r in records if r.get(key, "model") == name and r["eval_length"] == n), None)
      cells.append("—" if r is None else f"{r['ppl']:.3f} ({r['bpb']:.3f})")
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n\nCells: perplexity per byte (bits per byte).\n"


def draw_lengths(ax, records: list[dict], title: str, key: str = "variant",
                 train_length: int | None = None) -> None:
  """Perplexity against evaluation length (log-log, plain tick labels), a line per variant."""
  from matplotlib.ticker import NullFormatter, ScalarFormatter
  for name in dict.fromkeys(r.get(key, "model") for r in records):
    rs = sorted((r for r in records if r.get(key, "model") == name), key=lambda r: r["eval_length"])
    ax.plot([r["eval_length"] for r in rs], [r["ppl"] for r in rs], marker="o", label=name)
  if train_length:
    ax.axvline(train_length, color="gray", linestyle=":", label="training length")
  ax.set_xscale("log", base=2)
  ax.set_yscale("log")
  ax.set_xticks(sorted({r["eval_length"] for r in records}))
  for axis in (ax.xaxis, ax.yaxis):
    axis.set_major_formatter(ScalarFormatter())
    axis.set_minor_formatter(NullFormatter())
  ppl = [r["ppl"] for r in records]
  ax.set_yticks(np.unique(np.round(np.geomspace(min(ppl), max(ppl), 6), 1 if max(ppl) < 100 else 0)))
  ax.set_xlabel("evaluation length (tokens)")
  ax.set_ylabel("perplexity per byte")
  ax.set_title(title)
  ax.grid(True, which="both", alpha=0.3)
  ax.legend()


def plot_lengths(records: list[dict], path, title: str, key: str = "variant",
                 train_length: int | None = None) -> None:
  """``draw_lengths`` on its own figure, saved as a PNG."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 4))
  draw_lengths(ax, records, title, key, train_length)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def check_finite(records: list[dict], workdir, step: int) -> None:
  """Refuse (``WorkdirError``) to report a non-finite loss: nothing is written."""
  bad = [r["eval_length"] for r in records if not math.isfinite(r["loss"])]
  if bad:
    raise WorkdirError(f"the checkpoint at step {step} in {workdir} gives a non-finite loss at "
                       f"length(s) {bad} (its parameters overflow); nothing was written")


def evaluate_workdir(workdir, lengths, out=None, progress=True) -> list[dict]:
  """Evaluate the newest checkpoint of ``workdir`` at ``lengths``; writes
  ``eval.{json,md,png}`` (with the fingerprint of what was evaluated) into ``out``."""
  cfg, params, step = restore_params(workdir)
  corpus = data.load_corpus(cfg.data)
  records = evaluate_lengths(cfg, params, corpus.valid, lengths, progress=progress)
  check_finite(records, workdir, step)
  stamp = workdir_lib.fingerprint(cfg, step, params, data=workdir_lib.data_digest(corpus.valid))
  name = pathlib.Path(workdir).name
  for r in records:
    r.update(variant=name, train_length=cfg.data.seq_len, step=step, fingerprint=stamp)
  out = pathlib.Path(out or workdir)
  out.mkdir(parents=True, exist_ok=True)
  (out / "eval.json").write_text(json.dumps(records, indent=2))
  (out / "eval.md").write_text(markdown_table(records))
  plot_lengths(records, out / "eval.png", f"{name} (trained at {cfg.data.seq_len})",
               train_length=cfg.data.seq_len)
  return records
