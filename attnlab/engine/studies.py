"""One shape for every study: a config, a registered runner, seeds as an axis, one writer.

``python -m attnlab.sweep --config=configs/<study>.py --workdir=runs/<study>`` runs any of
them; ``sweep.runner`` names the ``Study`` in ``STUDIES`` (``lm``: train variants and
evaluate them by length; ``tasks``, ``retrieval``, ``sinks``, ``induction``, ``streaming``).

A ``Study`` says how one seed runs (``run``: config with ``seed`` set, a workdir ->
records, flat dicts), which record fields name a cell (``keys``) and which are measured
(``metrics``), how the results read as Markdown and which plots they draw. Everything else is
shared and lives here:

- **Seeds** (``sweep.seeds = N``, default 1): the study runs N times with ``train.seed`` =
  the config's + 0 .. N-1, seed ``s`` in ``workdir/seed<s>`` (with N = 1, in ``workdir``
  itself). Every record carries its ``seed``; ``summarize`` gives per cell the mean, the
  sample standard deviation, min, max and the per-seed values of each metric.
- **Resume** is the runner's: a finished variant is not retrained, an interrupted one
  continues from its checkpoint, as for ``attnlab.sweep``.
- **Writing**: ``write_results`` writes ``results.json`` (``{"study", "seeds", "seconds",
  "records", "summary"}``), ``results.provenance.json`` beside it, ``results.md`` and the study's
  plots, all of them or none (``attnlab.outputs``).
- **Fingerprint**: every study config accepts the argument ``fingerprint``
  (``--config=configs/<study>.py:fingerprint``): the same study cut to a minute or two of
  CPU (few steps, one seed). Its results are committed in ``experiments/<study>/fingerprint/``
  beside the study's, made by the same code; ``tests/test_results_reproduce.py`` reruns it
  with today's code (slow tier), so a change that alters what the study computes is caught.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import time
from typing import Any, Callable

import ml_collections

from attnlab import config_lib, outputs, provenance
from attnlab.registry import ConfigError, Declared, Registry


@dataclasses.dataclass(frozen=True)
class Study:
  """A registered runner.

  run: ``(config, workdir, progress, **train_options) -> list[dict]``, one seed's records
    (``config.train.seed`` is that seed; the runner resumes what ``workdir`` already holds).
  keys: the record fields that name a cell (e.g. variant, eval_length, eval_mode).
  metrics: the numeric record fields averaged over seeds.
  markdown: ``results -> str`` (``results.md``; read ``results["summary"]``).
  plots: ``(results, path) -> None``, ``path(name)`` giving where the PNG ``name`` goes.
  check: ``config -> None``, raising ``ConfigError`` before anything trains.
  extra: ``(results, path) -> None`` for other files (e.g. ``results.csv``).
  """
  run: Callable[..., list[dict]]
  keys: tuple[str, ...]
  metrics: tuple[str, ...]
  markdown: Callable[[dict], str]
  plots: Callable[[dict, Callable[[str], pathlib.Path]], None] | None = None
  check: Callable[[Any], None] | None = None
  extra: Callable[[dict, Callable[[str], pathlib.Path]], None] | None = None


STUDIES: Registry[Study] = Registry("sweep.runner")

# the modules that register studies (they import this one, never the reverse)
_IMPORTS = ("attnlab.engine.sweeps", "attnlab.engine.tasks", "attnlab.engine.retrieval_study",
            "attnlab.studies.sinks", "attnlab.studies.induction", "attnlab.studies.streaming")


def _load_all() -> None:
  """Import every module that registers a study (they import this one, not the reverse)."""
  import importlib
  for module in _IMPORTS:
    importlib.import_module(module)


def study_name(config) -> str:
  """``sweep.runner`` (default ``lm``), checked against ``STUDIES``."""
  _load_all()
  name = config.sweep.get("runner", "lm") if "sweep" in config else "lm"
  STUDIES.get(name)
  return name


def seed_count(config) -> int:
  """``sweep.seeds`` (default 1), an integer >= 1."""
  n = config.sweep.get("seeds", 1) if "sweep" in config else 1
  if not isinstance(n, int) or isinstance(n, bool) or n < 1:
    raise ConfigError(f"sweep.seeds={n!r} must be an integer >= 1 (runs per variant, each with "
                      f"its own seed)")
  return n


def seed_runs(config, workdir) -> list[tuple[int, ml_collections.ConfigDict, pathlib.Path]]:
  """(seed, config with that seed, its workdir) for each of the ``sweep.seeds`` runs."""
  workdir = pathlib.Path(workdir)
  n = seed_count(config)
  base = Declared(config.train, config_lib.TRAIN_FIELDS).seed
  runs = []
  for i in range(n):
    cfg = ml_collections.ConfigDict(config.to_dict())
    cfg.train.seed = base + i
    runs.append((base + i, cfg, workdir if n == 1 else workdir / f"seed{base + i}"))
  return runs


def _sd(values: list[float]) -> float:
  if len(values) < 2:
    return 0.0
  mean = sum(values) / len(values)
  return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def summarize(records: list[dict], keys, metrics) -> list[dict]:
  """One row per cell (the ``keys`` values): its other non-metric fields as in its first
  record, and per metric its mean (under the metric's name), ``<m>_sd`` (sample standard
  deviation; 0 with one seed), ``<m>_min``, ``<m>_max`` and ``<m>_values`` (one per seed, in
  seed order; None where a seed's value was None). ``seeds``: how many records the cell has.
  A metric that is None in any seed has mean None."""
  cells: dict[tuple, list[dict]] = {}
  for r in records:
    cells.setdefault(tuple(json.dumps(r.get(k), sort_keys=True) for k in keys), []).append(r)
  rows = []
  for group in cells.values():
    group = sorted(group, key=lambda r: r["seed"])      # run() gives every record its seed
    row = {k: v for k, v in group[0].items() if k not in metrics and k != "seed"}
    row["seeds"] = len(group)
    for m in metrics:
      values = [r.get(m) for r in group]
      row[f"{m}_values"] = values
      known = [float(v) for v in values if v is not None]
      if len(known) != len(values) or not known:
        row.update({m: None, f"{m}_sd": None, f"{m}_min": None, f"{m}_max": None})
        continue
      row.update({m: sum(known) / len(known), f"{m}_sd": _sd(known), f"{m}_min": min(known),
                  f"{m}_max": max(known)})
    rows.append(row)
  return rows


def write_results(out, name: str, results: dict, markdown: str,
                  plots: Callable | None = None, extra: Callable | None = None,
                  flag: str = "--workdir") -> dict:
  """Write ``results.json`` (``results``), ``results.provenance.json`` (command, commit,
  clean tree, versions, machine), ``results.md`` and whatever ``plots`` / ``extra`` draw,
  into ``out``: all of them or none (``attnlab.outputs.staged``). Returns ``results``."""
  results = {"study": name, **results}
  with outputs.staged(out, flag) as stage:
    stage.write_text("results.json", json.dumps(results, indent=1))
    provenance.write_sidecar(stage.path("results.json"))
    stage.path(provenance.sidecar_path("results.json"))
    stage.write_text("results.md", markdown)
    if plots is not None:
      plots(results, stage.path)
    if extra is not None:
      extra(results, stage.path)
  return results


def run(config, workdir, progress: bool = True, name: str | None = None,
        **train_options) -> dict:
  """Run the study ``name`` (default: the one ``sweep.runner`` names) for each seed (each
  resumable), summarize over seeds and write the results into ``workdir``. Returns what
  ``results.json`` holds. ``train_options`` (``restart``, ``accept_data_change``) go to
  every trainer."""
  if name is None:
    name = study_name(config)
  _load_all()
  study = STUDIES.get(name)
  runs = seed_runs(config, workdir)
  if study.check is not None:
    study.check(config)                  # everything validated before anything trains
  records = []
  start = time.perf_counter()
  for seed, cfg, seed_dir in runs:
    if progress and len(runs) > 1:
      print(f"{name}: seed {seed} in {seed_dir}")
    for r in study.run(cfg, seed_dir, progress, **train_options):
      records.append({**r, "seed": seed})
  results = {"seeds": [seed for seed, _, _ in runs],
             # this invocation's wall time: a resumed run counts only what it redid
             "seconds": time.perf_counter() - start, "records": records,
             "summary": summarize(records, study.keys, study.metrics)}
  markdown = study.markdown({"study": name, **results})
  return write_results(workdir, name, results, markdown, study.plots, study.extra)


def load_results(path) -> dict:
  """A ``results.json`` as ``{"study", "seeds", "records", "summary"}``; a file written
  before studies had seeds (a list of records) reads as one seed's records."""
  value = json.loads(pathlib.Path(path).read_text())
  if isinstance(value, list):
    return {"study": None, "seeds": [None], "records": value, "summary": value}
  return value


def spread(row: dict, metric: str, fmt: str = ".2f") -> str:
  """``"mean ± sd"`` of ``metric`` in a summary row (just the mean when it has one seed)."""
  mean = row.get(metric)
  if mean is None:
    return "—"
  if row.get("seeds", 1) < 2:
    return format(mean, fmt)
  return f"{format(mean, fmt)} ± {format(row[f'{metric}_sd'], fmt)}"
