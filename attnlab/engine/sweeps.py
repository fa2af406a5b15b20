"""Experiment runner: train every variant of a config, then evaluate all of them by length
(the engine behind ``python -m attnlab.sweep``).

The config holds a base model/data/train setup and ``sweep.variants``: a name
for each variant and the config fields it overrides. Each variant trains in
``workdir/<name>`` with the same seed, data and steps, then is evaluated at
``sweep.factors`` x ``data.seq_len`` under each protocol in ``sweep.protocols``.
Writes ``results.json``, ``results.csv``, ``results.md`` and ``results.png``, and
``results.provenance.json`` (command, commit, JAX, machine: ``attnlab.provenance``), through
``studies.write_results``.

Resumable: re-running skips finished variants (training and evaluation), and an
interrupted variant continues from its last checkpoint.

Evaluation only (``sweep.train=False``): every workdir already in ``workdir/`` (trained
earlier, or a pretrained model written by ``python -m attnlab.import_hf``) is evaluated
at ``sweep.factors`` x its own ``data.seq_len``; nothing trains and ``sweep.variants`` is
not read.

``sweep.runner`` picks the study (``attnlab.engine.studies.STUDIES``): ``lm`` (the
default, above), ``tasks`` (sequence-to-sequence models scored by sequence accuracy at
``eval.lengths``), ``retrieval``, ``sinks``, ``induction``, ``streaming``. ``sweep.seeds``
runs each N times with consecutive seeds (``attnlab.engine.studies``).
"""

from __future__ import annotations

import csv
import json
import pathlib

import ml_collections

from attnlab import config_lib, data, positional
from attnlab.engine import evaluation, studies, training
from attnlab.models import num_params
from attnlab.registry import ConfigError
from attnlab import workdir as workdir_lib
from attnlab.workdir import restore_params

RESULT_FIELDS = ("seed", "variant", "eval_length", "eval_mode", "loss", "ppl", "bpb", "tokens", "bytes",
                 "stride",
                 "train_length", "params", "step")


def variant_configs(config) -> dict[str, ml_collections.ConfigDict]:
  """{name: full config} for each variant, every one validated before anything trains."""
  if "sweep" not in config or not config.sweep.variants:
    raise ConfigError("sweep.variants is empty: name at least one variant and its overrides")
  base = ml_collections.ConfigDict(config.to_dict())
  del base["sweep"]
  out = {}
  longest = max(config.sweep.factors) * base.data.seq_len
  for name, overrides in config.sweep.variants.items():
    config_lib.check_plain_name(name, "sweep.variants")     # it names a directory
    cfg = ml_collections.ConfigDict(base.to_dict())
    config_lib.merge_overrides(cfg, overrides, f"sweep.variants.{name}")
    try:
      resolved = config_lib.resolve(cfg)
      positional.check_length(resolved.model.position, longest, "evaluation length")
    except ConfigError as e:
      raise ConfigError(f"sweep.variants.{name}: {e}") from None
    out[name] = cfg
  check_evaluation_spec(config, base.data.seq_len)
  return out


def check_evaluation_spec(config, seq_len: int) -> None:
  """``sweep.factors``, ``protocols``, ``stride`` and ``sliding_tokens``, for runs trained at
  ``seq_len``."""
  for factor in config.sweep.factors:
    if not isinstance(factor, int) or factor < 1:
      raise ConfigError(f"sweep.factors: {factor!r} must be a positive integer")
  for mode in config.sweep.protocols:
    if mode not in evaluation.EVAL_MODES:
      raise ConfigError(f"sweep.protocols: {mode!r} is not valid; valid: "
                        f"{', '.join(evaluation.EVAL_MODES)}")
  scoring = config.sweep.get("score_documents", "as_trained")
  if scoring not in SCORE_DOCUMENTS:
    raise ConfigError(f"sweep.score_documents={scoring!r} is not valid; valid: "
                      f"{', '.join(SCORE_DOCUMENTS)}")
  if "sliding" in config.sweep.protocols:
    if not 1 <= config.sweep.stride <= seq_len:
      raise ConfigError(f"sweep.stride={config.sweep.stride!r} must be in [1, data.seq_len={seq_len}]")
    if not config.sweep.sliding_tokens >= 1:
      raise ConfigError(f"sweep.sliding_tokens={config.sweep.sliding_tokens!r} must be >= 1")


def existing_runs(workdir: pathlib.Path) -> list[str]:
  """Names of the language-model workdirs inside ``workdir`` (evaluation-only sweeps)."""
  names = []
  for path in sorted(pathlib.Path(workdir).glob("*/config.json")):
    try:
      raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
      raise ConfigError(f"{path} is not valid JSON ({e}); the workdir is damaged") from None
    if workdir_lib.run_kind(raw) == "lm":
      names.append(path.parent.name)
  if not names:
    raise ConfigError(f"sweep.train=False evaluates the runs already in --workdir={str(workdir)!r}"
                      f", which holds none (train them, or import one with python -m "
                      f"attnlab.import_hf --workdir={workdir}/NAME)")
  return names


# sweep.score_documents: score each validation document separately (its windows split at
# document boundaries, positions restarting) as each variant was trained, always, or never
# (the text as one stream, whatever the training).
SCORE_DOCUMENTS = ("as_trained", "always", "never")


def evaluation_spec(config, seq_len: int) -> dict:
  """What a variant trained at ``seq_len`` is evaluated on (its cache key with the fingerprint)."""
  spec = {"lengths": [f * seq_len for f in config.sweep.factors],
          "protocols": list(config.sweep.protocols), "stride": config.sweep.stride,
          "max_tokens": config.eval.max_tokens, "sliding_tokens": config.sweep.sliding_tokens}
  scoring = config.sweep.get("score_documents", "as_trained")
  if scoring != "as_trained":   # absent by default: the spec earlier sweeps cached
    spec["score_documents"] = scoring
  return spec


def _evaluate_variant(run_dir: pathlib.Path, spec: dict, progress: bool,
                      batch_tokens: int | None = None) -> list[dict]:
  """Evaluate a trained variant, or reuse its cached results when the spec and the
  fingerprint of what they were computed from (config, checkpoint, data) are unchanged.
  The spec comes from the sweep's config, not the variant's ``config.json``: evaluation
  settings are not part of a run (``config_lib.EVALUATION_BLOCKS``), so changing them
  re-evaluates and keeps the training. ``batch_tokens`` (default: the variant's
  ``eval.batch_tokens``) only splits the work, so it is not part of the spec."""
  cache = run_dir / "sweep_eval.json"
  cfg, params, step = restore_params(run_dir)
  data_cfg = cfg.data
  scoring = spec.get("score_documents", "as_trained")
  trained = config_lib.Declared(cfg.data, data.DATA_FIELDS).documents
  if scoring != "as_trained" and (scoring == "always") != trained:
    data_cfg = ml_collections.ConfigDict(cfg.data.to_dict())   # the same text
    data_cfg.documents = scoring == "always"
  corpus = data.load_corpus(data_cfg, splits=("valid",))
  tokens = corpus.valid
  stamp = workdir_lib.fingerprint(cfg, step, params, data=workdir_lib.data_digest(tokens))
  if cache.exists():
    cached = json.loads(cache.read_text())
    why = workdir_lib.fingerprint_change(cached.get("fingerprint"), stamp)
    if cached.get("spec") == spec and not why:
      return cached["records"]
    if progress:
      print(f"{run_dir}: evaluating again ({why or 'another evaluation spec'})")
  records = []
  for mode in spec["protocols"]:
    budget = spec["sliding_tokens"] if mode == "sliding" else spec["max_tokens"]
    records += evaluation.evaluate_lengths(cfg, params, tokens, spec["lengths"], mode=mode,
                                           stride=spec["stride"], max_tokens=budget,
                                           batch_tokens=batch_tokens, progress=progress,
                                           token_bytes=corpus.token_bytes("valid"),
                                           documents=corpus.documents("valid"))
  evaluation.check_finite(records, run_dir, step)
  for r in records:
    r.update(variant=run_dir.name, train_length=cfg.data.seq_len, params=num_params(params),
             step=step)
  workdir_lib.atomic_write(cache, json.dumps(
      {"spec": spec, "fingerprint": stamp, "records": records}, indent=2))
  return records


def results_markdown(results: dict) -> str:
  """One table per protocol: rows are variants (with parameter counts), columns lengths;
  with several seeds, each cell is the mean over seeds ± their standard deviation."""
  records = results["summary"]
  out = []
  for mode in dict.fromkeys(r["eval_mode"] for r in records):
    rs = [r for r in records if r["eval_mode"] == mode]
    lengths = sorted({r["eval_length"] for r in rs})
    stride = rs[0]["stride"] if mode == "sliding" else None
    seeds = max(r.get("seeds", 1) for r in rs)
    out.append(f"**{mode}**" + (f" (stride {stride})" if stride else "") +
               f": perplexity per {evaluation.ppl_unit(rs)} (bits per byte)"
               + (f", mean ± sd over {seeds} seeds" if seeds > 1 else "") + "\n")
    out.append("| variant | params | " + " | ".join(f"L={n}" for n in lengths) + " |")
    out.append("|---|---|" + "---|" * len(lengths))
    for name in dict.fromkeys(r["variant"] for r in rs):
      row = {r["eval_length"]: r for r in rs if r["variant"] == name}
      params = next(iter(row.values()))["params"]
      cells = [_cell(row[n]) if n in row else "—" for n in lengths]
      out.append(f"| {name} | {params:,} | " + " | ".join(cells) + " |")
    out.append("")
  return "\n".join(out)


def _cell(row: dict) -> str:
  """Perplexity (bits per byte), with the spread over seeds where there are several."""
  if row.get("seeds", 1) < 2 or row.get("ppl") is None:
    return evaluation.ppl_cell(row)
  return f"{row['ppl']:.3f} ± {row['ppl_sd']:.3f} ({row['bpb']:.3f})"


def plot_results(results: dict, path) -> None:
  """results.png: perplexity (mean over seeds) against evaluation length, a panel per
  protocol."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  records = results["summary"]
  modes = list(dict.fromkeys(r["eval_mode"] for r in records))
  fig, axes = plt.subplots(1, len(modes), figsize=(6 * len(modes), 4.2), squeeze=False)
  for ax, mode in zip(axes[0], modes):
    rs = [r for r in records if r["eval_mode"] == mode]
    evaluation.draw_lengths(ax, rs, f"{mode} evaluation", train_length=rs[0]["train_length"])
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def run_sweep(config, workdir, progress: bool = True, **train_options) -> list[dict]:
  """Run the study ``sweep.runner`` names (``attnlab.engine.studies``) for every seed and
  write its results; returns its records (each with its ``seed``). ``train_options``
  (``restart``, ``accept_data_change``) go to every trainer."""
  return studies.run(config, workdir, progress, **train_options)["records"]


def run_lm_sweep(config, workdir, progress: bool = True, **train_options) -> list[dict]:
  """The ``lm`` runner, one seed: train every variant (unless ``sweep.train=False``) and
  evaluate each by length; returns the records."""
  workdir = pathlib.Path(workdir)
  if config.sweep.get("train", True):
    variants = variant_configs(config)         # every variant validated before any training
    for name, cfg in variants.items():
      training.train_and_evaluate(cfg, workdir / name, progress=progress, **train_options)
    lengths = {name: config.data.seq_len for name in variants}
  else:
    lengths = {name: workdir_lib.load_config(workdir / name).data.seq_len
               for name in existing_runs(workdir)}
    for seq_len in lengths.values():
      check_evaluation_spec(config, seq_len)
  records = []
  for name, seq_len in lengths.items():
    records += _evaluate_variant(workdir / name, evaluation_spec(config, seq_len), progress,
                                 batch_tokens=config.eval.batch_tokens)
  return records


def _write_csv(results: dict, path) -> None:
  """results.csv: every record (every seed), the fields of ``RESULT_FIELDS``."""
  with path("results.csv").open("w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=RESULT_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(results["records"])


studies.STUDIES.register("lm")(studies.Study(
    run=run_lm_sweep, keys=("variant", "eval_mode", "eval_length"),
    metrics=("loss", "ppl", "bpb"), markdown=results_markdown,
    plots=lambda results, path: plot_results(results, path("results.png")), extra=_write_csv))
