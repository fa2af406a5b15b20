"""Loss, perplexity and bits per byte of a trained run at several evaluation lengths
(the engine behind ``python -m attnlab.evaluate``).

Each length L is scored with non-overlapping windows over the validation split:
window w predicts tokens ``w*L+1 .. (w+1)*L`` from the tokens before them in the
same window (so early tokens of a window have short contexts, as in the ALiBi
paper's non-overlapping protocol). Writes ``eval.json``, ``eval.md`` and
``eval.png`` into the workdir (or ``--out``).

A run trained on packed documents (``data.documents``) is scored the same way, document by
document: each window carries its tokens' segment ids and positions restarting at every
document start (a window that starts inside a document starts it at position 0), and a
target that begins the next document is not scored (``data.documents.window_layout``).

Perplexity is per token; bits per byte divide the nats of the scored tokens by the UTF-8
bytes they stand for (``data.tokenization``), so byte-level and BPE models compare.
``rope_scalings`` evaluates a RoPE model once per scaling (PI, NTK, dynamic NTK, YaRN,
Llama 3), each set at evaluation time for every length: factor ``L / original`` (at least
1; dynamic NTK grows its base with the length by itself).
"""

from __future__ import annotations

import json
import math
import pathlib

import jax
import ml_collections
import numpy as np
import optax
from tqdm import tqdm

from attnlab import config_lib, data, outputs, positional
from attnlab.models import build_lm
from attnlab.registry import ConfigError
from attnlab.runtime import compiled_cache
from attnlab import workdir as workdir_lib
from attnlab.workdir import WorkdirError, restore_params

LN2 = math.log(2.0)


EVAL_MODES = ("non_overlapping", "sliding")


@compiled_cache(maxsize=8)
def _nll_scorer(model_cfg):
  model = build_lm(model_cfg)

  @jax.jit
  def weighted_nll(params, inputs, targets, weights):
    logits = model.apply({"params": params}, inputs)
    return (optax.softmax_cross_entropy_with_integer_labels(logits, targets) * weights).sum()

  return weighted_nll


def nll_scorer(model_cfg):
  """Jitted ``(params, inputs int [b, L], targets int [b, L], weights f32 [b, L]) -> sum of
  weights * next-token NLL`` for the model ``model_cfg`` describes. One function per model
  config (cached), so every protocol and every call at a batch shape it has seen reuses
  one compiled program instead of tracing and compiling the model again. The cache keys on
  the backend and mesh too (``attnlab.runtime.compiled_cache``); what tracing decided
  from anything else (``impl='auto'``'s choice from the tables in ``attnlab.attention.core``)
  stays with the programs already traced: ``attnlab.clear_compiled_caches()`` after
  changing those."""
  frozen = ml_collections.FrozenConfigDict(model_cfg)
  try:
    hash(frozen)
  except TypeError:      # a field holds something unhashable: a scorer of its own
    return _nll_scorer.__wrapped__(frozen)
  return _nll_scorer(frozen)


nll_scorer.cache_clear = _nll_scorer.cache_clear


@compiled_cache(maxsize=8)
def _document_nll_scorer(model_cfg):
  model = build_lm(model_cfg)

  @jax.jit
  def weighted_nll(params, inputs, targets, weights, segment_ids, positions):
    logits = model.apply({"params": params}, inputs, positions, segment_ids=segment_ids)
    return (optax.softmax_cross_entropy_with_integer_labels(logits, targets) * weights).sum()

  return weighted_nll


def document_nll_scorer(model_cfg):
  """``nll_scorer`` for packed documents: jitted ``(params, inputs, targets, weights,
  segment_ids int [b, L], positions int [b, L]) -> sum of weights * next-token NLL``, each
  token attending only within its document. Cached per model config like ``nll_scorer``."""
  frozen = ml_collections.FrozenConfigDict(model_cfg)
  try:
    hash(frozen)
  except TypeError:
    return _document_nll_scorer.__wrapped__(frozen)
  return _document_nll_scorer(frozen)


def fixed_batches(arrays, per_batch: int):
  """Split equal-length ``arrays`` (leading axis n) into batches of ``per_batch`` rows.

  When there is more than one batch, the last is padded to ``per_batch`` rows by
  repeating its first row, and the padding's weights (``arrays[-1]``) are zero, so every
  batch has one shape (one compiled program) and the padding scores nothing.
  """
  n = len(arrays[0])
  for start in range(0, n, per_batch):
    batch = [a[start:start + per_batch] for a in arrays]
    pad = per_batch - len(batch[0])
    if pad and n > per_batch:
      batch = [np.concatenate([b, np.repeat(b[:1], pad, axis=0)]) for b in batch]
      batch[-1][-pad:] = 0
    yield batch


def evaluate_lengths(cfg, params, tokens: np.ndarray, lengths, *, max_tokens: int | None = None,
                     batch_tokens: int | None = None, mode: str = "non_overlapping",
                     stride: int | None = None, progress: bool = True,
                     token_bytes: np.ndarray | None = None,
                     documents: np.ndarray | None = None) -> list[dict]:
  """Score ``tokens`` at each length; returns one record per length.

  ``mode="non_overlapping"``: consecutive windows, every token of a window scored.
  ``mode="sliding"``: windows advance by ``stride`` and score their last ``stride``
  tokens, so each scored token sees at least ``length - stride`` tokens of context.
  Record: ``eval_length``, ``eval_mode``, ``loss`` (nats/token), ``ppl`` (per token),
  ``bpb`` (bits per byte), ``tokens`` (number scored), ``bytes`` (UTF-8 bytes they stand
  for) and ``stride``. ``token_bytes``: int [len(tokens)], the bytes each token stands for
  (None: one each, a byte-level model). ``documents``: int [len(tokens)], each token's
  document (a run trained on packed documents, ``Corpus.documents``): windows are scored
  document by document (segment ids, restarting positions, no target across a boundary)
  and records carry ``documents: True``; None: the text is one stream.
  """
  if token_bytes is None:
    token_bytes = np.ones(len(tokens), np.int32)
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
  if documents is not None:
    return _evaluate_documents(cfg, params, tokens, lengths, documents, max_tokens=max_tokens,
                               batch_tokens=batch_tokens, mode=mode, stride=stride,
                               progress=progress, token_bytes=token_bytes)
  weighted_nll = nll_scorer(cfg.model)
  records = []
  for length in tqdm(lengths, desc=f"eval lengths ({mode})", disable=not progress):
    if mode == "sliding":
      inputs, targets, weights = data.sliding_windows(tokens, length, stride, max_tokens)
      target_bytes = data.sliding_windows(token_bytes, length, stride, max_tokens)[1]
    else:
      inputs, targets = data.non_overlapping_windows(tokens, length, max(1, max_tokens // length))
      target_bytes = data.non_overlapping_windows(token_bytes, length,
                                                  max(1, max_tokens // length))[1]
      weights = np.ones(targets.shape, np.float32)
    per_batch = max(1, batch_tokens // length)
    total = 0.0
    for batch in fixed_batches((inputs, targets, weights), per_batch):
      total += float(weighted_nll(params, *batch))
    scored = int(weights.sum())
    scored_bytes = int((target_bytes * weights).sum())
    loss = total / scored
    records.append({"eval_length": length, "eval_mode": mode, "loss": loss,
                    "ppl": perplexity(loss), "bpb": total / max(scored_bytes, 1) / LN2,
                    "tokens": scored, "bytes": scored_bytes,
                    "stride": stride if mode == "sliding" else length})
  return records


def _evaluate_documents(cfg, params, tokens, lengths, documents, *, max_tokens, batch_tokens,
                        mode, stride, progress, token_bytes) -> list[dict]:
  """``evaluate_lengths`` on packed documents (``documents`` int [len(tokens)]; the other
  arguments checked and filled in): the same windows and records, each window scored
  document by document."""
  if len(documents) != len(tokens):
    raise ValueError(f"evaluate_lengths: {len(tokens)} tokens but {len(documents)} document ids")
  weighted_nll = document_nll_scorer(cfg.model)
  records = []
  for length in tqdm(lengths, desc=f"eval lengths ({mode}, documents)", disable=not progress):
    if mode == "sliding":
      windows = lambda a: data.sliding_windows(a, length, stride, max_tokens)  # noqa: E731
    else:
      n = max(1, max_tokens // length)
      windows = lambda a: data.non_overlapping_windows(a, length, n)  # noqa: E731
    inputs, targets, *scored = windows(tokens)
    target_bytes = windows(token_bytes)[1]
    input_docs, target_docs = windows(documents)[:2]
    segment_ids, positions, same = data.documents.window_layout(input_docs, target_docs)
    weights = same * (scored[0] if scored else 1.0)
    total = 0.0
    # weights last: fixed_batches zeroes the padding's weights
    for i, t, s, p, w in fixed_batches((inputs, targets, segment_ids, positions, weights),
                                       max(1, batch_tokens // length)):
      total += float(weighted_nll(params, i, t, w, s, p))
    n_scored = int(weights.sum())
    if not n_scored:
      raise ConfigError(f"evaluation length {length}: every target of the windows begins a "
                        f"document, so nothing can be scored; evaluate at a longer length")
    scored_bytes = int((target_bytes * weights).sum())
    loss = total / n_scored
    records.append({"eval_length": length, "eval_mode": mode, "loss": loss,
                    "ppl": perplexity(loss), "bpb": total / max(scored_bytes, 1) / LN2,
                    "tokens": n_scored, "bytes": scored_bytes,
                    "stride": stride if mode == "sliding" else length, "documents": True})
  return records


def perplexity(loss: float) -> float | None:
  """exp(loss), or None when it overflows a float (loss > 709): reported as "overflow",
  never as a capped number."""
  return math.exp(loss) if loss < MAX_LOG_PPL else None


MAX_LOG_PPL = math.log(np.finfo(np.float64).max)


def ppl_cell(record: dict) -> str:
  """A table cell: perplexity (bits per byte), or "overflow" with the loss."""
  if record.get("ppl") is None:
    return f"overflow (loss {record['loss']:.4g} nats)"
  return f"{record['ppl']:.3f} ({record['bpb']:.3f})"


def ppl_unit(records: list[dict]) -> str:
  """"byte" when every scored token is one byte (a byte-level model), else "token"."""
  return "byte" if all(r.get("bytes", r["tokens"]) == r["tokens"] for r in records) else "token"


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
      cells.append("—" if r is None else ppl_cell(r))
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + f"\n\nCells: perplexity per {ppl_unit(records)} (bits per byte).\n"


def draw_lengths(ax, records: list[dict], title: str, key: str = "variant",
                 train_length: int | None = None) -> None:
  """Perplexity against evaluation length (log-log, plain tick labels), a line per variant."""
  from matplotlib.ticker import NullFormatter, ScalarFormatter
  records = [r for r in records if r.get("ppl") is not None]   # an overflow has no point
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
  ax.set_ylabel(f"perplexity per {ppl_unit(records)}")
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


def with_rope_scaling(cfg, scaling: str, length: int):
  """``cfg`` (resolved) with RoPE ``scaling`` applied for evaluation at ``length``: factor
  ``length / L`` (at least 1; 1 for dynamic NTK, whose base follows the length), ``L`` the
  model's trained context (``original_max_len``). ``"none"``: ``cfg`` unchanged."""
  if scaling == "none":
    return cfg
  raw = config_lib.with_declared_defaults(cfg)
  p = raw.model.position
  original = int(p.original_max_len) or int(raw.data.seq_len)
  p.scaling = scaling
  p.original_max_len = original
  p.scale_factor = 1.0 if scaling == "dynamic_ntk" else max(1.0, length / original)
  return config_lib.resolve(raw)


def check_rope_scalings(cfg, scalings) -> None:
  """Every ``--rope_scalings`` entry valid for this model, before anything compiles."""
  if not scalings:
    return
  kind = cfg.model.position.kind
  if "scaling" not in {f.name for f in positional.POSITIONS.get(kind).fields}:
    raise ConfigError(f"--rope_scalings: model.position.kind={kind!r} has no "
                      f"RoPE frequencies to scale; evaluate without --rope_scalings")
  if cfg.model.position.scaling != "none":
    raise ConfigError(f"--rope_scalings: the model already uses model.position.scaling="
                      f"{cfg.model.position.scaling!r}; another scaling would replace it, so the "
                      f"rows would not share a model at the trained context. Evaluate it as it "
                      f"is (without --rope_scalings)")
  for s in scalings:
    if s not in positional.ROPE_SCALINGS:
      raise ConfigError(f"--rope_scalings: {s!r} is not valid; valid: "
                        f"{', '.join(positional.ROPE_SCALINGS)}")


def evaluate_workdir(workdir, lengths, out=None, progress=True, rope_scalings=()) -> list[dict]:
  """Evaluate the newest checkpoint of ``workdir`` at ``lengths`` (once per RoPE scaling in
  ``rope_scalings``, when given); writes ``eval.{json,md,png}`` (with the fingerprint of what
  was evaluated) into ``out``, all three or none (``attnlab.outputs``)."""
  if out:
    outputs.check_out(out)                    # before anything is read or compiled
  cfg, params, step = restore_params(workdir)
  check_rope_scalings(cfg, rope_scalings)
  corpus = data.load_corpus(cfg.data, splits=("valid",))
  name = pathlib.Path(workdir).name
  # (row name, config, lengths): the model as it is, or each scaling at each length
  runs = ([(name, cfg, lengths)] if not rope_scalings else
          [(s, with_rope_scaling(cfg, s, n), [n]) for s in rope_scalings for n in lengths])
  records = []
  for variant, run_cfg, run_lengths in runs:
    got = evaluate_lengths(run_cfg, params, corpus.valid, run_lengths, progress=progress,
                           token_bytes=corpus.token_bytes("valid"),
                           documents=corpus.documents("valid"))
    for r in got:
      r["variant"] = variant
      if rope_scalings:
        r.update(rope_scaling=variant, scale_factor=float(run_cfg.model.position.scale_factor))
    records += got
  check_finite(records, workdir, step)
  stamp = workdir_lib.fingerprint(cfg, step, params, data=workdir_lib.data_digest(corpus.valid))
  for r in records:
    r.update(train_length=cfg.data.seq_len, step=step, fingerprint=stamp)
  with outputs.staged(out or workdir, "--out" if out else "--workdir") as stage:
    stage.write_text("eval.json", json.dumps(records, indent=2))
    stage.write_text("eval.md", markdown_table(records))
    plot_lengths(records, stage.path("eval.png"), f"{name} (trained at {cfg.data.seq_len})",
                 train_length=cfg.data.seq_len)
  return records
