"""Every rendered passage of the documentation, grouped by document (``attnlab.pages``).

Each section reads committed results files, prints every measured number with ``fig``
and chooses every comparison word with ``order`` / ``every``; ``setting`` prints numbers
that are settings. The command beside each section is the one that writes its files.
"""

from __future__ import annotations

from attnlab.pages import (GENERATED, every, fig, generated, load, order, section,  # noqa: F401
                           setting)


def _variants_doc() -> str:
  from attnlab import config_lib
  return config_lib.describe_variants()


GENERATED["docs/variants.md"] = (_variants_doc, "python -m attnlab.config_lib > docs/variants.md")


# ----------------------------------------------------------------------------- README.md

QUICKSTART = "docs/timings/quickstart.jsonl"
TIMED = "python scripts/timed.py --log=docs/timings/quickstart.jsonl --readme_block={block}"


def _quick_start_runs(block: int) -> list[dict]:
  """The last 3 timed runs of the README's current Quick start ``block`` that ran to the
  end: the main job exited 0; the test suite printed pytest's summary."""
  import importlib.util
  from attnlab.pages import ROOT
  spec = importlib.util.spec_from_file_location("timed", ROOT / "scripts" / "timed.py")
  timed = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(timed)
  command = timed.quick_start_blocks((ROOT / "README.md").read_text())[block - 1]
  runs = [r for r in load(QUICKSTART) if r.get("readme_block") == block
          and r["command"] == command and (r["returncode"] == 0 if block == 1 else "pytest" in r)]
  if not runs:
    raise ValueError(f"no timed run of Quick start block {block} as the README has it now: "
                     f"run {TIMED.format(block=block)}")
  return runs[-3:]


def _minutes(seconds: list[float]) -> str:
  """"6 minutes" or "6–8 minutes" (rounded), each number through ``fig``."""
  lo, hi = min(seconds) / 60, max(seconds) / 60
  if round(lo) == round(hi):
    return fig(lo, ".0f", " minutes")
  return fig(lo, ".0f") + "–" + fig(hi, ".0f", " minutes")


@section("readme.main_job_time", "README.md", (QUICKSTART,), TIMED.format(block=1))
def readme_main_job_time():
  runs = _quick_start_runs(1)
  return (f"On 2 shared CPU cores, from a fresh clone with the install, the main job took "
          f"{_minutes([runs[-1]['wall_seconds']])} in its latest timed run "
          f"({_minutes([r['wall_seconds'] for r in runs])} over the last {setting(len(runs))}\n"
          f"runs of `{TIMED.format(block=1)}`):")


@section("readme.tests_time", "README.md", (QUICKSTART,), TIMED.format(block=2))
def readme_tests_time():
  runs = _quick_start_runs(2)
  return (f"From a fresh clone with the install, the test suite took "
          f"{_minutes([r['wall_seconds'] for r in runs])} in its last {setting(len(runs))} timed "
          f"runs, of which pytest\n{_minutes([r['pytest']['seconds'] for r in runs])}; the latest "
          f"took {_minutes([runs[-1]['wall_seconds']])}, of which pytest "
          f"{_minutes([runs[-1]['pytest']['seconds']])} (`--readme_block=2`; the goal is pytest "
          f"under {setting(12)} minutes):")


EXTRAPOLATION = "experiments/extrapolation/results.json"
EXTRAPOLATION_RUN = "python -m attnlab.sweep --config=configs/extrapolation.py"


def _extrapolation_ppl(path: str = EXTRAPOLATION):
  """ppl(variant, mode, length) from a sweep's results.json (either format)."""
  value = load(path)
  rows = value if isinstance(value, list) else value["summary"]
  table = {(r["variant"], r["eval_mode"], r["eval_length"]): r["ppl"] for r in rows}
  return lambda v, mode, n: table[(v, mode, n)]


@section("readme.extrapolation", "README.md", (EXTRAPOLATION,), EXTRAPOLATION_RUN)
def readme_extrapolation():
  ppl = _extrapolation_ppl()
  ratio = {v: ppl(v, "non_overlapping", 512) / ppl(v, "non_overlapping", 64)
           for v in ("alibi", "fox", "rope", "sinusoidal")}
  python = load("experiments/extrapolation/results.provenance.json")["provenance"]["python"]
  return (f"At {setting(8)}× the training length, ALiBi's perplexity is "
          f"{fig(100 * abs(1 - ratio['alibi']), '.1f', '%')} "
          f"{order(ratio['alibi'], 1, 'above', 'below')} its value at {setting(1)}× and FoX's "
          f"(a learned forget gate) {fig(100 * abs(1 - ratio['fox']), '.1f', '%')} "
          f"{order(ratio['fox'], 1, 'above', 'below')}, while "
          f"RoPE's is {fig(ratio['rope'], '.1f', '×')} and\nsinusoidal's "
          f"{fig(ratio['sinusoidal'], '.1f', '×')} {order(ratio['sinusoidal'], 1, 'higher', 'lower')}"
          f" (CPython {python}).")


# ----------------------------------------------------------------------------- extrapolation

EXTRAPOLATION_PAGE = "experiments/extrapolation/README.md"
EXTRAPOLATION_SEEDS = (EXTRAPOLATION, "experiments/extrapolation/seeds/seed1/results.json",
                       "experiments/extrapolation/seeds/seed2/results.json")
EXTRAPOLATION_DEBIAN = "experiments/extrapolation/debian_python3.11.2/results.json"
_SCHEMES = ("alibi", "fox", "nope", "rope", "sinusoidal")
_MODES = ("non_overlapping", "sliding")


def _study_table(path: str) -> str:
  """A study's own results.md, rendered again from its results.json by its registered
  ``markdown`` (the lm study's for files written before studies had seeds)."""
  from attnlab.engine import studies
  value = load(path)
  results = ({"study": "lm", "seeds": [None], "records": value, "summary": value}
             if isinstance(value, list) else value)
  studies._load_all()
  return generated(studies.STUDIES.get(results["study"]).markdown(results).strip())


def _table_section(name: str, page: str, path: str, command: str) -> None:
  """Register ``name``: the study's own tables (``_study_table``) of the results at ``path``."""
  section(name, page, (path,), command)(lambda: _study_table(path))


_table_section("extrapolation.tables", EXTRAPOLATION_PAGE, EXTRAPOLATION, EXTRAPOLATION_RUN)


def _ratio(ppl, v, mode, factor, train=64):
  return ppl(v, mode, factor * train) / ppl(v, mode, train)


@section("extrapolation.ratios", EXTRAPOLATION_PAGE, (EXTRAPOLATION,), EXTRAPOLATION_RUN)
def extrapolation_ratios():
  ppl = _extrapolation_ppl()
  lines = ["| variant | non-overlapping 8× | 16× | sliding 8× | 16× |", "|---|---|---|---|---|"]
  for v in _SCHEMES:
    lines.append(f"| {v} | " + " | ".join(fig(_ratio(ppl, v, m, f), ".3f") for m in _MODES
                                          for f in (8, 16)) + " |")
  return "\n".join(lines)


@section("extrapolation.findings", EXTRAPOLATION_PAGE, (EXTRAPOLATION,), EXTRAPOLATION_RUN)
def extrapolation_findings():
  ppl = _extrapolation_ppl()
  no = lambda v, n: ppl(v, "non_overlapping", n)  # noqa: E731
  sl = lambda v, n: ppl(v, "sliding", n)  # noqa: E731
  r = lambda f, v, k: f(v, 64 * k) / f(v, 64)  # noqa: E731
  lengths = (64, 128, 256, 512, 1024)
  jumped = [r(sl, "sinusoidal", k) for k in (2, 4, 8, 16)]
  rope = [r(f, "rope", k) for f in (no, sl) for k in (1, 2, 4, 8, 16)]
  keeps = all(a < b for a, b in zip(rope[:5], rope[1:5])) and all(
      a < b for a, b in zip(rope[5:], rope[6:]))
  best = min(_SCHEMES, key=lambda v: no(v, 64))
  alibi8 = r(no, "alibi", 8)
  between = r(no, "nope", 8) < r(no, "rope", 8) < r(no, "sinusoidal", 8)
  return "\n".join([
      f"- **ALiBi {order(1.05, alibi8, 'extrapolates', 'degrades')}.** Under non-overlapping "
      f"evaluation its perplexity at 8× is {fig(100 * abs(1 - alibi8), '.1f', '%')} "
      f"*{order(alibi8, 1, 'above', 'below')}* its value at L. Longer windows give more bytes a "
      f"long context, and ALiBi can use it. Under sliding evaluation every scored byte already "
      f"has at least L − 32 bytes of context, so there is nothing to gain: ALiBi changes by "
      f"{fig(100 * (r(sl, 'alibi', 8) - 1), '+.1f', '%')} at 8×.",
      f"- **Sinusoidal {order(r(no, 'sinusoidal', 8), 1.5, 'does not', 'does')}.** It is "
      f"{fig(r(no, 'sinusoidal', 8), '.1f', '×')} worse at 8×. In the sliding protocol it jumps "
      f"{fig(jumped[0], '.1f', '×')} as soon as positions exceed those it was trained on (2× L), "
      f"then {order(max(jumped) / min(jumped), 1.05, 'keeps changing', 'stays there')} "
      f"(within {fig(100 * (max(jumped) / min(jumped) - 1), '.0f', '%')} up to 16×).",
      f"- **RoPE lands {order(float(between), 0.5, 'in between', 'outside the other two')} at "
      f"8× ({fig(r(no, 'rope', 8), '.1f', '×')}), but "
      f"{order(float(keeps), 0.5, 'keeps degrading', 'does not degrade steadily')}.** At 16× "
      f"its ratio "
      f"({fig(r(no, 'rope', 16), '.1f', '×')} against sinusoidal's "
      f"{fig(r(no, 'sinusoidal', 16), '.1f', '×')}) is the "
      f"{order(r(no, 'rope', 16), r(no, 'sinusoidal', 16), 'larger', 'smaller')}, and in the "
      f"sliding protocol at 8× ({fig(r(sl, 'rope', 8), '.1f', '×')} against "
      f"{fig(r(sl, 'sinusoidal', 8), '.1f', '×')}) it is the "
      f"{order(r(sl, 'rope', 8), r(sl, 'sinusoidal', 8), 'larger', 'smaller')} too. With "
      f"non-overlapping windows its absolute perplexity is the lower of the two at "
      f"{every((no('rope', n) < no('sinusoidal', n) for n in lengths), 'every length', '{k} of {n} lengths')} "
      f"(16×: {fig(no('rope', 1024), '.1f')} against {fig(no('sinusoidal', 1024), '.1f')}), "
      f"because it starts from a better value at L; in the sliding protocol at 16× it is "
      f"{order(sl('rope', 1024), sl('sinusoidal', 1024), 'above', 'below')} sinusoidal's "
      f"({fig(sl('rope', 1024), '.1f')} against {fig(sl('sinusoidal', 1024), '.1f')}).",
      f"- **NoPE degrades mildly ({fig(r(no, 'nope', 8), '.2f', '×')}) but starts "
      f"{order(no('nope', 64), no('rope', 64), 'behind', 'ahead')}** "
      f"({fig(no('nope', 64), '.1f')} against {fig(no('rope', 64), '.1f')} for RoPE at L).",
      f"- **FoX (a learned forget gate, no position encoding) "
      f"{order(r(no, 'fox', 8), 1.05, 'degrades', 'extrapolates')}** under non-overlapping "
      f"evaluation: {fig(r(no, 'fox', 8), '.3f', '×')} at 8× and "
      f"{fig(r(no, 'fox', 16), '.3f', '×')} at 16× (sliding: {fig(r(sl, 'fox', 8), '.3f', '×')} "
      f"at 8×). At L it scores {fig(no('fox', 64), '.2f')}, "
      f"{order(no('fox', 64), no('rope', 64), 'above', 'below')} RoPE's "
      f"{fig(no('rope', 64), '.2f')} and {order(no('fox', 64), no('alibi', 64), 'above', 'below')}"
      f" ALiBi's {fig(no('alibi', 64), '.2f')}; its perplexity is below ALiBi's at "
      f"{every((f('fox', n) < f('alibi', n) for f in (no, sl) for n in lengths), 'every length under both protocols', '{k} of {n} (length, protocol) pairs')}.",
      f"- **At the training length {best} is best** ({fig(no(best, 64), '.2f')}; ALiBi "
      f"{fig(no('alibi', 64), '.2f')})."])


def _seed_ratios():
  """[{(variant, mode, factor): ratio}] for the three committed seeds of the sweep."""
  out = []
  for path in EXTRAPOLATION_SEEDS:
    ppl = _extrapolation_ppl(path)
    out.append({(v, m, f): _ratio(ppl, v, m, f) for v in _SCHEMES for m in _MODES
                for f in (8, 16)})
  return out


@section("extrapolation.seeds", EXTRAPOLATION_PAGE, EXTRAPOLATION_SEEDS,
         EXTRAPOLATION_RUN + " --config.train.seed=S (S = 0, 1, 2)")
def extrapolation_seeds():
  import statistics
  seeds = _seed_ratios()
  lines = [f"Perplexity at 8× and 16× the training length over 1×, mean ± standard deviation "
           f"(range) over seeds 0, 1, 2:", "",
           "| variant | non-overlapping 8× | 16× | sliding 8× | 16× |", "|---|---|---|---|---|"]
  for v in _SCHEMES:
    cells = []
    for m in _MODES:
      for f in (8, 16):
        xs = [s[(v, m, f)] for s in seeds]
        cells.append(f"{fig(statistics.mean(xs), '.3f')} ± {fig(statistics.stdev(xs), '.3f')} "
                     f"({fig(min(xs), '.3f')}–{fig(max(xs), '.3f')})")
    lines.append(f"| {v} | " + " | ".join(cells) + " |")
  x = lambda v, m, f: [s[(v, m, f)] for s in seeds]  # noqa: E731
  mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
  alibi = x("alibi", "non_overlapping", 8) + x("alibi", "non_overlapping", 16)
  fox = x("fox", "non_overlapping", 8) + x("fox", "non_overlapping", 16)
  nope = x("nope", "non_overlapping", 8) + x("nope", "non_overlapping", 16)
  degrade = [y for v in ("rope", "sinusoidal") for m in _MODES for f in (8, 16)
             for y in x(v, m, f)]
  no8 = {v: x(v, "non_overlapping", 8) for v in ("rope", "sinusoidal")}
  sl8 = {v: x(v, "sliding", 8) for v in ("rope", "sinusoidal")}
  lines += ["", (
      f"ALiBi's non-overlapping ratio stays within {fig(min(alibi), '.3f')}–"
      f"{fig(max(alibi), '.3f')} in every seed, FoX's within {fig(min(fox), '.3f')}–"
      f"{fig(max(fox), '.3f')}, NoPE's within {fig(min(nope), '.3f')}–"
      f"{fig(max(nope), '.3f')}, and RoPE and sinusoidal degrade {fig(min(degrade), '.1f')}–"
      f"{fig(max(degrade), '.1f', '×')} across seeds, protocols and both factors. Which of the "
      f"two degrades more depends on the protocol at 8×: with non-overlapping windows "
      f"sinusoidal's ratio is "
      f"{order(mean(no8['sinusoidal']), mean(no8['rope']), 'larger', 'smaller')} "
      f"({fig(mean(no8['sinusoidal']), '.3f')} against {fig(mean(no8['rope']), '.3f')}, "
      f"larger in {every((a > b for a, b in zip(no8['sinusoidal'], no8['rope'])), 'every seed', '{k} of {n} seeds')}); with "
      f"sliding windows RoPE's is "
      f"{order(mean(sl8['rope']), mean(sl8['sinusoidal']), 'larger', 'smaller')} "
      f"({fig(mean(sl8['rope']), '.3f')} against {fig(mean(sl8['sinusoidal']), '.3f')}, "
      f"larger in {every((a > b for a, b in zip(sl8['rope'], sl8['sinusoidal'])), 'every seed', '{k} of {n} seeds')}). At 16× "
      f"RoPE's ratio is the larger under both protocols in "
      f"{every((a > b for m in _MODES for a, b in zip(x('rope', m, 16), x('sinusoidal', m, 16))), 'every seed', '{k} of {n} seed-protocol pairs')}.")]
  return "\n".join(lines)


EXTRAPOLATION_DOCUMENTS = {
    "document by document": "experiments/extrapolation/documents/per_document/results.json",
    "as one stream": "experiments/extrapolation/documents/stream/results.json"}
DOCUMENTS_RUN = ("python -m attnlab.sweep --config=configs/extrapolation.py:documents "
                 "[--config.sweep.score_documents=never]")


@section("extrapolation.documents", EXTRAPOLATION_PAGE, tuple(EXTRAPOLATION_DOCUMENTS.values()),
         DOCUMENTS_RUN)
def extrapolation_documents():
  import statistics
  variants = ("with_document_mask", "without_document_mask")
  ppl, lengths, seeds = {}, None, None
  for scoring, path in EXTRAPOLATION_DOCUMENTS.items():
    records = [r for r in load(path)["records"] if r["eval_mode"] == "non_overlapping"]
    seeds = sorted({r["seed"] for r in records})
    lengths = sorted({r["eval_length"] for r in records})
    ppl.update({(scoring, r["variant"], r["seed"], r["eval_length"]): r["ppl"] for r in records})
  lines = [f"Perplexity per byte on tinyshakespeare's validation text (non-overlapping "
           f"windows), mean ± standard deviation over seeds "
           f"{', '.join(setting(x) for x in seeds)}:", "",
           "| scored | trained | " + " | ".join(f"L={setting(n)}" for n in lengths) + " |",
           "|---|---|" + "---|" * len(lengths)]
  for scoring in EXTRAPOLATION_DOCUMENTS:
    for v in variants:
      cells = []
      for n in lengths:
        xs = [ppl[(scoring, v, x, n)] for x in seeds]
        cells.append(f"{fig(statistics.mean(xs), '.3f')} ± {fig(statistics.stdev(xs), '.3f')}")
      lines.append(f"| {scoring} | {v.replace('_', ' ')} | " + " | ".join(cells) + " |")
  first, last = lengths[0], lengths[-1]

  def gaps(scoring, n):   # with the mask over without, per seed
    return [ppl[(scoring, variants[0], x, n)] / ppl[(scoring, variants[1], x, n)] for x in seeds]

  def say(scoring):
    out = []
    for n in (first, last):
      g = gaps(scoring, n)
      where = "L" if n == first else f"{setting(n // first)}× L"
      span = (f"{fig(min(g), '.3f')}–{fig(max(g), '.3f')} of the unmasked model's perplexity "
              f"across seeds")
      if min(g) > 1 or max(g) < 1:      # the same sign in every seed
        out.append(f"{order(g[0], 1, 'worse', 'better')} at {where} in every seed ({span})")
      else:
        worse = sum(x > 1 for x in g)
        out.append(f"not consistently different at {where} (worse in {setting(worse)} of "
                   f"{setting(len(g))} seeds: {span})")
    return " and ".join(out)

  lines += ["", f"Scored document by document, the model trained with the mask is "
            f"{say('document by document')}. Scored as one stream (windows that span "
            f"speeches, which the masked model never attended across in training), it is "
            f"{say('as one stream')}."]
  return "\n".join(lines)


@section("extrapolation.debian", EXTRAPOLATION_PAGE, (EXTRAPOLATION_DEBIAN, EXTRAPOLATION),
         EXTRAPOLATION_RUN + " (under Debian's CPython 3.11.2)")
def extrapolation_debian():
  ppl = _extrapolation_ppl(EXTRAPOLATION_DEBIAN)
  main = _extrapolation_ppl()
  lengths = (64, 128, 256, 512, 1024)
  lines = ["| non-overlapping | L=64 | 2× | 4× | 8× | 16× | 8× / 1× |",
           "|---|---|---|---|---|---|---|"]
  for v in _SCHEMES:
    cells = [ppl(v, "non_overlapping", n) for n in lengths]
    lines.append(f"| {v} | " + " | ".join(fig(c, ".3f") for c in cells)
                 + f" | {fig(cells[3] / cells[0], '.3f')} |")
  lower = [ppl(v, m, n) < main(v, m, n) for v in _SCHEMES for n in lengths for m in _MODES]
  r8 = {v: ppl(v, "non_overlapping", 512) / ppl(v, "non_overlapping", 64) for v in _SCHEMES}
  worst = max(_SCHEMES, key=lambda v: r8[v])
  best = min(_SCHEMES, key=lambda v: ppl(v, "non_overlapping", 64))
  lines += ["", (
      f"On that text {every(lower, 'every perplexity is', '{k} of {n} perplexities are')} lower "
      f"than on 3.11.7's. ALiBi ends {order(r8['alibi'], 1, 'above', 'below')} its 1× value "
      f"({fig(100 * (r8['alibi'] - 1), '+.1f', '%')} at 8×), {worst} degrades most by 8×, "
      f"{best} is best at L, and NoPE's 8× ratio is "
      f"{fig(r8['nope'], '.2f', '×')}. Compare runs only under the same Python, or pass "
      f"`--config.data.path=FILE` for a fixed text.")]
  return "\n".join(lines)


# ----------------------------------------------------------------------------- study helpers

def _summary(path: str) -> list[dict]:
  return load(path)["summary"]


def _values(rows, metric, **where) -> list[list[float]]:
  """Per-seed values of ``metric`` of the summary rows matching ``where``: [row][seed]."""
  return [r[f"{metric}_values"] for r in rows if all(r[k] == v for k, v in where.items())]


def _per_seed_mean(rows, metric, **where) -> list[float]:
  """For each seed, the mean of ``metric`` over the rows matching ``where``."""
  cells = _values(rows, metric, **where)
  return [sum(c[i] for c in cells) / len(cells) for i in range(len(cells[0]))]


def _seeds_line(values, spec=".2f") -> str:
  """"0.41 / 0.38 / 0.44" (one per seed)."""
  return " / ".join(fig(v, spec) for v in values)


def _study_time(path: str) -> str:
  """The study's recorded wall time, in minutes."""
  return fig(load(path)["seconds"] / 60, ".0f", " minutes")


# ----------------------------------------------------------------------------- retrieval

RETRIEVAL = "experiments/retrieval/results.json"
RETRIEVAL_PAGE = "experiments/retrieval/README.md"
RETRIEVAL_RUN = "python -m attnlab.sweep --config=configs/retrieval.py --workdir=runs/retrieval"
CHANCE_DIGIT = 0.1          # a uniform guess of one of ten digits


_table_section("retrieval.tables", RETRIEVAL_PAGE, RETRIEVAL, RETRIEVAL_RUN)


@section("retrieval.per_seed", RETRIEVAL_PAGE, (RETRIEVAL,), RETRIEVAL_RUN)
def retrieval_per_seed():
  rows = _summary(RETRIEVAL)
  seeds = load(RETRIEVAL)["seeds"]
  lengths = sorted({r["eval_length"] for r in rows})
  lines = [f"Per-byte answer accuracy, mean over needle depths, per seed (chance "
           f"{setting(CHANCE_DIGIT)}); the study took {_study_time(RETRIEVAL)} on 2 CPU cores:",
           "", "| variant | seed | " + " | ".join(f"L={n}" for n in lengths) + " |",
           "|---|---|" + "---|" * len(lengths)]
  for v in dict.fromkeys(r["variant"] for r in rows):
    by_length = {n: _per_seed_mean(rows, "byte_accuracy", variant=v, eval_length=n)
                 for n in lengths}
    for i, seed in enumerate(seeds):
      lines.append(f"| {v} | {seed} | " + " | ".join(fig(by_length[n][i]) for n in lengths)
                   + " |")
  return "\n".join(lines)


@section("retrieval.findings", RETRIEVAL_PAGE, (RETRIEVAL,), RETRIEVAL_RUN)
def retrieval_findings():
  rows = _summary(RETRIEVAL)
  lengths = sorted({r["eval_length"] for r in rows})
  train, longest = lengths[0], lengths[-1]
  out = []
  exact = [a for r in rows for a in r["accuracy_values"]]
  out.append(f"- **Whole keys.** Exact-match accuracy is at most {fig(max(exact))} in any cell "
             f"of any seed.")
  for v in dict.fromkeys(r["variant"] for r in rows):
    at1 = _per_seed_mean(rows, "byte_accuracy", variant=v, eval_length=train)
    at8 = _per_seed_mean(rows, "byte_accuracy", variant=v, eval_length=longest)
    learned = [a > 2 * CHANCE_DIGIT for a in at1]
    kept = [b >= a - 0.05 for a, b in zip(at1, at8)]
    out.append(
        f"- **{v}**: per-byte accuracy at the training length {_seeds_line(at1)} (seeds), above "
        f"twice chance in {every(learned, 'every seed', '{k} of {n} seeds')}; at "
        f"{setting(longest // train)}× {_seeds_line(at8)}, within five points of its training-"
        f"length value or better in {every(kept, 'every seed', '{k} of {n} seeds')}.")
  return "\n".join(out)


# ----------------------------------------------------------------------------- task studies

def _task_findings(path: str, solved: float = 0.9) -> str:
  """Per task: which variants solve it (sequence accuracy >= ``solved``) at every length
  inside training, in how many seeds; and the best variant's accuracy at each longer length,
  per seed."""
  rows = _summary(path)
  out = []
  for task in dict.fromkeys(r["task"] for r in rows):
    rs = [r for r in rows if r["task"] == task]
    inside = sorted({r["eval_length"] for r in rs if r["eval_length"] <= r["train_max_length"]})
    beyond = sorted({r["eval_length"] for r in rs if r["eval_length"] > r["train_max_length"]})
    variants = list(dict.fromkeys(r["variant"] for r in rs))
    n_seeds = len(rs[0]["seq_acc_values"])
    solves = {}
    for v in variants:
      per_length = [next(r for r in rs if r["variant"] == v and r["eval_length"] == n)
                    for n in inside]
      solves[v] = [all(r["seq_acc_values"][i] >= solved for r in per_length)
                   for i in range(n_seeds)]
    words = [f"{v} ({every(solves[v], 'every seed', '{k} of {n} seeds')})" for v in variants
             if any(solves[v])]
    line = (f"- **{task}**: at every training length, sequence accuracy of at least "
            f"{setting(solved)} is reached by " + (", ".join(words) if words else "no variant in any seed"))
    for n in beyond:
      mean = {v: next(r["seq_acc"] for r in rs if r["variant"] == v and r["eval_length"] == n)
              for v in variants}
      best = max(variants, key=mean.get)
      values = next(r["seq_acc_values"] for r in rs if r["variant"] == best and r["eval_length"] == n)
      if max(mean.values()) == min(mean.values()):
        line += f"; at length {setting(n)} every variant scores {fig(mean[best])}"
      else:
        line += f"; at length {setting(n)} the best is {best} with {_seeds_line(values)}"
    out.append(line + ".")
  return "\n".join(out)


LENGTH_GEN = "experiments/length_generalization/results.json"
LENGTH_GEN_PAGE = "experiments/length_generalization/README.md"
LENGTH_GEN_RUN = ("python -m attnlab.sweep --config=configs/length_generalization.py "
                  "--workdir=runs/length_generalization")


_table_section("length_generalization.tables", LENGTH_GEN_PAGE, LENGTH_GEN, LENGTH_GEN_RUN)


@section("length_generalization.findings", LENGTH_GEN_PAGE, (LENGTH_GEN,), LENGTH_GEN_RUN)
def length_generalization_findings():
  return (f"Per seed (values separated by slashes); the study took {_study_time(LENGTH_GEN)} "
          f"on 2 CPU cores.\n\n" + _task_findings(LENGTH_GEN))


BOTTLENECK = "experiments/bottleneck/results.json"
BOTTLENECK_PAGE = "experiments/bottleneck/README.md"
BOTTLENECK_RUN = "python -m attnlab.sweep --config=configs/bottleneck.py --workdir=runs/bottleneck"


_table_section("bottleneck.tables", BOTTLENECK_PAGE, BOTTLENECK, BOTTLENECK_RUN)


@section("bottleneck.findings", BOTTLENECK_PAGE, (BOTTLENECK,), BOTTLENECK_RUN)
def bottleneck_findings():
  rows = _summary(BOTTLENECK)
  out = [f"One seed; the study took {_study_time(BOTTLENECK)} on 2 CPU cores.", "",
         _task_findings(BOTTLENECK)]
  for task in dict.fromkeys(r["task"] for r in rows):
    rs = {(r["variant"], r["eval_length"]): r["seq_acc"] for r in rows if r["task"] == task}
    lengths = sorted({n for _, n in rs})
    if ("no_attention", lengths[0]) in rs:
      curve = [rs[("no_attention", n)] for n in lengths]
      out.append(f"- Without attention, {task}'s sequence accuracy goes "
                 + ", ".join(f"{fig(a)} at {setting(n)}" for a, n in zip(curve, lengths)) + ".")
  return "\n".join(out)


# ----------------------------------------------------------------------------- attention sinks

SINKS_PAGE = "experiments/attention_sinks/README.md"
SINKS = "experiments/attention_sinks/results.json"
SINKS_BOS = "experiments/attention_sinks/bos/results.json"
SINKS_RUN = ("python -m attnlab.sweep --config=configs/attention_sinks.py[:bos] "
             "--workdir=runs/attention_sinks[_bos]")


def _sink_ratios(path: str) -> str:
  """Per scheme and layer, the trained models' mean attention on the first token over the
  uniform share, per seed; and which (scheme, layer) cells are above uniform in every seed."""
  rows = [r for r in _summary(path) if r["when"] == "trained" and r["k"] == 1]
  uniform = rows[0]["uniform"]
  schemes = list(dict.fromkeys(r["variant"] for r in rows))
  layers = sorted({r["layer"] for r in rows})
  lines = [f"Attention on the first token after training, mean over heads, as a multiple of "
           f"uniform causal attention ({fig(uniform, '.3f')}), per seed:", "",
           "| scheme | " + " | ".join(f"layer {setting(n)}" for n in layers) + " |",
           "|---|" + "---|" * len(layers)]
  above, some = [], []
  for s in schemes:
    cells = []
    for n in layers:
      values = next(r["mean_values"] for r in rows if r["variant"] == s and r["layer"] == n)
      ratios = [v / uniform for v in values]
      cells.append(_seeds_line(ratios))
      if all(x > 1 for x in ratios):
        above.append(f"{s} layer {setting(n)}")
      elif any(x > 1 for x in ratios):
        some.append(f"{s} layer {setting(n)} "
                    f"({every([x > 1 for x in ratios], 'every seed', '{k} of {n} seeds')})")
    lines.append(f"| {s} | " + " | ".join(cells) + " |")
  lines += ["", "Above uniform in every seed: " + (", ".join(above) or "no scheme in any layer")
            + ". Above uniform in some seeds only: " + (", ".join(some) or "none") + "."]
  top = max((v, r["variant"], r["layer"]) for r in rows for v in r["max_head_values"])
  half = 0.5
  lines += ["", f"The most any head puts on the first token, in any scheme, layer and seed: "
            f"{fig(top[0], '.3f')} ({top[1]}, layer {setting(top[2])}), "
            f"{order(top[0], half, 'more', 'less')} than the half or more that a "
            f"StreamingLLM sink head gives it."]
  return "\n".join(lines)


@section("sinks.random_crops", SINKS_PAGE, (SINKS,), SINKS_RUN)
def sinks_random_crops():
  return (f"Random crops (the study took {_study_time(SINKS)} on 2 CPU cores):\n\n"
          + _sink_ratios(SINKS))


@section("sinks.marker", SINKS_PAGE, (SINKS_BOS,), SINKS_RUN)
def sinks_marker():
  return (f"Every window led by a marker byte (the study took {_study_time(SINKS_BOS)} on "
          f"2 CPU cores):\n\n" + _sink_ratios(SINKS_BOS))


_table_section("sinks.tables", SINKS_PAGE, SINKS, SINKS_RUN)


_table_section("sinks.bos_tables", SINKS_PAGE, SINKS_BOS, SINKS_RUN)


# ----------------------------------------------------------------------------- baby GPT

BABY_PAGE = "experiments/baby_gpt/README.md"
BABY = "experiments/baby_gpt/results.json"
BABY_BENCH = "experiments/baby_gpt/bench_train.json"
BABY_RUN = "python -m attnlab.sweep --config=configs/baby_gpt.py --workdir=runs/baby_gpt"
BABY_BENCH_RUN = ("python scripts/bench_train.py --config=configs/lm.py:baby_gpt "
                  "--impls=auto,reference,xla,blockwise --steps=200 "
                  "--json=experiments/baby_gpt/bench_train.json")


_table_section("baby_gpt.tables", BABY_PAGE, BABY, BABY_RUN)


NANOGPT_LOWER = "nanoGPT's rate ends lower"


@section("baby_gpt.findings", BABY_PAGE, (BABY,), BABY_RUN)
def baby_gpt_findings():
  rows = {r["variant"]: r for r in _summary(BABY) if r["eval_mode"] == "non_overlapping"}
  a, b = rows["lr3e-3"], rows["lr1e-3"]
  seeds = len(load(BABY)["seeds"])
  return (f"After the same 2000 steps, the peak learning rate 3e-3 reaches a validation loss of "
          f"{fig(a['bpb'], '.3f')} bits per byte and 1e-3 (nanoGPT's) {fig(b['bpb'], '.3f')}: "
          f"{order(b['bpb'], a['bpb'], 'the higher rate ends lower', NANOGPT_LOWER)} "
          f"({every([True] * seeds, 'one seed' if seeds == 1 else 'every seed')}; the study took "
          f"{_study_time(BABY)} on 2 CPU cores).")


@section("baby_gpt.bench", BABY_PAGE, (BABY_BENCH,), BABY_BENCH_RUN)
def baby_gpt_bench():
  bench = load(BABY_BENCH)
  lines = ["| impl | median step ms | mean step ms | tokens/s | compile s | minor page faults "
           "per step |", "|---|---|---|---|---|---|"]
  for r in bench["rows"]:
    lines.append(f"| {r['impl']} | {fig(r['median_ms'], '.1f')} | {fig(r['mean_ms'], '.1f')} | "
                 f"{fig(r['tokens_per_s'], ',.0f')} | {fig(r['compile_s'], '.1f')} | "
                 f"{fig(r['page_faults_per_step'], '.0f')} |")
  machine = bench["provenance"].get("machine", {})
  return (f"One jitted training step (forward, backward, AdamW) of the baby GPT, timed "
          f"{setting(bench['machine']['steps'])} times per impl, one impl after "
          f"another in one process ({machine.get('cpu', 'CPU')}, {machine.get('cores', 2)} "
          f"cores); the impls are run in sequence, not alternated, so the table compares them "
          f"only roughly:\n\n" + "\n".join(lines))


# ----------------------------------------------------------------------------- induction heads

INDUCTION_PAGE = "experiments/induction_heads/README.md"
INDUCTION = "experiments/induction_heads/results.json"
INDUCTION_RUN = "python -m attnlab.sweep --config=configs/induction.py --workdir=runs/induction"


_table_section("induction.tables", INDUCTION_PAGE, INDUCTION, INDUCTION_RUN)


@section("induction.findings", INDUCTION_PAGE, (INDUCTION,), INDUCTION_RUN)
def induction_findings():
  """Per variant and seed: the best head's induction score at the end, the first step a
  head passes one half, the repeat loss at the end; in how many seeds a head forms."""
  results = load(INDUCTION)
  summary, seeds = results["summary"], results["seeds"]
  n = len(seeds)
  uniform = next(r["uniform"] for r in summary if r["measure"] == "run")
  out = [f"Per seed ({', '.join(map(str, seeds))}; values separated by slashes); the study "
         f"took {_study_time(INDUCTION)} on 2 CPU cores; uniform causal attention scores "
         f"{fig(uniform, '.3f')} on the probe.", ""]
  for variant in dict.fromkeys(r["variant"] for r in summary):
    heads = [r for r in summary if r["variant"] == variant and r["measure"] == "heads"]
    losses = sorted((r for r in summary if r["variant"] == variant and r["measure"] == "losses"),
                    key=lambda r: r["step"])
    last = max(r["step"] for r in heads)
    init = [v for r in heads if r["step"] == 0 for v in r["induction_values"]]
    best = [max(r["induction_values"][s] for r in heads if r["step"] == last) for s in range(n)]
    steps = sorted({r["step"] for r in heads})
    first = []
    for s in range(n):
      above = [t for t in steps if max(r["induction_values"][s] for r in heads
                                       if r["step"] == t) > 0.5]
      first.append(setting(above[0]) if above else "never")
    layer0 = max(v for r in heads if r["layer"] == 0 for v in r["induction_values"])
    repeat0 = losses[0]["loss_repeat_values"]
    repeat = losses[-1]["loss_repeat_values"]
    formed = [b > 0.5 for b in best]
    out.append(
        f"- **{variant}**: at initialisation every head scores within "
        f"{fig(max(abs(v - uniform) for v in init), '.1e')} of uniform. After {setting(last)} "
        f"steps the best head scores {_seeds_line(best, '.3f')}; a head above one half forms "
        f"in {every(formed, 'every seed', '{k} of {n} seeds')}"
        + (f" (first measured at step {' / '.join(first)})" if any(formed) else "")
        + f". The loss on the repeated half of the probe goes from "
        f"{_seeds_line(repeat0, '.2f')} to {_seeds_line(repeat, '.2f')} nats. No layer-0 head "
        f"scores above {fig(layer0, '.3f')} at any step.")
  return "\n".join(out)


# ----------------------------------------------------------------------------- inference

INFERENCE_PAGE = "docs/inference.md"
DECODE = "docs/bench_decode.json"
DECODE_RUN = ("python scripts/bench_decode.py --config=configs/lm.py:rope "
              "--contexts=256,1024,4096 --kv_heads=4,1 --json=docs/bench_decode.json")


def _memory_report(overrides: dict, contexts: tuple[int, ...], preset: str = "rope") -> str:
  """``python -m attnlab.memory --config=configs/lm.py:<preset>`` with ``overrides``:
  computed from the config (cache shapes), not measured."""
  from attnlab import config_lib
  from attnlab.config_lib import load_module
  from attnlab.inference import memory
  from attnlab.pages import ROOT
  cfg = load_module(ROOT / "configs" / "lm.py").get_config(preset)
  for dotted, value in overrides.items():
    node = cfg
    *parents, leaf = dotted.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  cfg = config_lib.resolve(cfg)
  return generated(memory.markdown(memory.report(cfg.model, contexts), contexts).strip())


@section("inference.memory_default", INFERENCE_PAGE, (),
         "python -m attnlab.memory --config=configs/lm.py:rope")
def inference_memory_default():
  return _memory_report({}, (1024, 4096))


@section("inference.memory_large", INFERENCE_PAGE, (),
         "python -m attnlab.memory --config=configs/lm.py:rope "
         "--config.model.attention.num_heads=8 --config.model.d_model=512 "
         "--config.model.num_layers=8 --contexts=1024,4096,32768")
def inference_memory_large():
  return _memory_report({"model.attention.num_heads": 8, "model.d_model": 512,
                         "model.num_layers": 8}, (1024, 4096, 32768))


@section("inference.memory_latent", INFERENCE_PAGE, (),
         "python -m attnlab.memory --config=configs/lm.py:deepseek_v3")
def inference_memory_latent():
  return _memory_report({}, (1024, 4096), "deepseek_v3")


def _range(side: dict, per: float, spec: str) -> str:
  return (f"{fig(side['median_s'] * 1e3 / per, spec)} ({fig(side['min_s'] * 1e3 / per, spec)}–"
          f"{fig(side['max_s'] * 1e3 / per, spec)})")


@section("inference.decode", INFERENCE_PAGE, (DECODE,), DECODE_RUN)
def inference_decode():
  bench = load(DECODE)
  rows = bench["rows"]
  load_avg = bench.get("load_average", {})
  lines = [f"Every row: {setting(rows[0]['rounds'])} alternating rounds (cached, then "
           f"recompute) after an untimed compiling run; times are medians with their range "
           f"over the rounds; the speed-up is the ratio of the medians, with the smallest and "
           f"largest ratio of two times from the same round. Load average over one minute "
           f"{fig(load_avg.get('start', [0])[0], '.2f')} at the start and "
           f"{fig(load_avg.get('end', [0])[0], '.2f')} at the end (2 cores).", "",
           "| context | kv_heads | cached ms/token | recompute ms/token | speed-up | cache bytes "
           "| greedy tokens agree |", "|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(
        f"| {setting(r['context'])} | {setting(r['num_kv_heads'])} | "
        f"{_range(r['cached'], r['steps'], '.3f')} | {_range(r['recompute'], 1, '.1f')} | "
        f"{fig(r['speedup'], '.0f', '×')} ({fig(r['speedup_min'], '.0f')}–"
        f"{fig(r['speedup_max'], '.0f')}) | {setting(r['cache_bytes'], ',')} | "
        f"{'yes' if r['greedy_tokens_agree'] else 'no'} |")
  low = min(rows, key=lambda r: r["speedup_min"])
  lines += ["", f"In every round of every row, cached decoding was at least "
            f"{fig(low['speedup_min'], '.0f', '×')} faster per token than recomputation (the "
            f"smallest: context {setting(low['context'])}, kv_heads "
            f"{setting(low['num_kv_heads'])}); the speed-up is not a single number: see each "
            f"row."]
  return "\n".join(lines)


# ----------------------------------------------------------------------------- attention benchmarks

ATTENTION_PAGE = "docs/attention.md"
BENCH_ATTENTION = "docs/bench_attention.json"
BENCH_TILES = "docs/bench_tiles.json"
BENCH_ATTENTION_RUN = "python scripts/bench_attention.py"
BENCH_TILES_RUN = ("python scripts/bench_attention.py --paths=causal_default,"
                   "sliding_window_default,dilated_default,bigbird_default,longformer_default "
                   "--lengths=4096,8192,16384 --baseline=causal_default --repeats=5 "
                   "--max_seconds=300 --out=docs/bench_tiles")


def _ratio_cell(c: dict, spec: str = ".2f") -> str:
  """'11.93× (11.50–12.31)': ratio of medians, then the per-round ratios' range."""
  return f"{fig(c['ratio'], spec, '×')} ({fig(c['ratio_min'], spec)}–{fig(c['ratio_max'], spec)})"


def _ms(side: dict) -> str:
  return f"{fig(side['median_s'] * 1e3, '.1f')} ({fig(side['min_s'] * 1e3, '.1f')}–" \
         f"{fig(side['max_s'] * 1e3, '.1f')})"


def _bench_rows(bench: dict):
  lengths = sorted({r["n"] for r in bench["rows"]})
  paths = list(dict.fromkeys(r["path"] for r in bench["rows"]))
  cell = {(r["path"], r["n"]): r for r in bench["rows"]}
  return lengths, paths, cell


def _find_ratio(bench, baseline, path, n, mode="fwd_bwd"):
  return next((c for c in bench["ratios"] if c["baseline"] == baseline and c["path"] == path
               and c["n"] == n and c["mode"] == mode), None)


def _load_line(bench: dict) -> str:
  la = bench.get("load_average") or {}
  if not la:
    return ""
  return (f" Load average over one minute {fig(la['start'][0], '.2f')} at the start and "
          f"{fig(la['end'][0], '.2f')} at the end, on 2 cores.")


@section("attention.scaling", ATTENTION_PAGE, (BENCH_ATTENTION,), BENCH_ATTENTION_RUN)
def attention_scaling():
  bench = load(BENCH_ATTENTION)
  lengths, paths, cell = _bench_rows(bench)
  at, base = bench["speedup_at"], bench["baselines"][0]
  summary = bench["summary"]
  fit = max((s["lengths"] for s in summary.values()), key=len)    # the fit range, where measured
  lines = [f"Forward+backward milliseconds (median of {setting(bench['repeats'])} alternating "
           f"rounds); exponents fitted over N = {setting(min(fit))}..{setting(max(fit))} "
           f"(time ∝ N^a, planned peak memory ∝ N^b); speed-up over {base} at N = "
           f"{setting(at)} with the range of the per-round ratios." + _load_line(bench), "",
           "| path | " + " | ".join(f"N={setting(n)}" for n in lengths)
           + " | a (fwd+bwd) | b (memory) | speed-up |",
           "|---|" + "---|" * (len(lengths) + 3)]
  for p in paths:
    cells = []
    for n in lengths:
      r = cell.get((p, n))
      cells.append(fig(r["fwd_bwd_s"] * 1e3, ".1f") if r and r["status"] == "ok" else "skipped")
    s = summary[p]
    c = _find_ratio(bench, base, p, at)
    cells += [fig(s["time_exponent"], ".2f"), fig(s["memory_exponent"], ".2f"),
              _ratio_cell(c) if c else (setting(1.0, ".2f", "×") if p == base else "—")]
    lines.append(f"| {p} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


LRA_PATHS = ("sliding_window", "linear", "performer", "lsh", "bigbird")


@section("attention.lra", ATTENTION_PAGE, (BENCH_ATTENTION,), BENCH_ATTENTION_RUN)
def attention_lra():
  bench = load(BENCH_ATTENTION)
  lengths = [n for n in (1024, 2048, 4096) if any(c["n"] == n for c in bench["ratios"])]
  lines = ["Speed-up of forward+backward over XLA's dense attention (`xla`), both sides in "
           "the same rounds; in brackets the range of the per-round ratios:", "",
           "| path | " + " | ".join(f"N={setting(n)}" for n in lengths) + " |",
           "|---|" + "---|" * len(lengths)]
  for p in LRA_PATHS:
    cells = [_find_ratio(bench, "xla", p, n) for n in lengths]
    if all(c is None for c in cells):
      continue
    lines.append(f"| {p} | " + " | ".join(_ratio_cell(c) if c else "—" for c in cells) + " |")
  return "\n".join(lines)


@section("attention.findings", ATTENTION_PAGE, (BENCH_ATTENTION,), BENCH_ATTENTION_RUN)
def attention_findings():
  bench = load(BENCH_ATTENTION)
  summary, at, base = bench["summary"], bench["speedup_at"], bench["baselines"][0]
  sw = _find_ratio(bench, base, "sliding_window", at)
  dense = [p for p in ("reference", "xla") if p in summary]
  efficient = [p for p in summary if p not in dense + [base]]
  mem = [summary[p]["memory_exponent"] for p in efficient]
  out = [f"- Sliding-window attention (w = 256) grows as N^{fig(summary['sliding_window']['time_exponent'], '.2f')} "
         f"and is {_ratio_cell(sw)} faster than blockwise dense causal at {setting(at)} tokens "
         f"({_ms(sw['denominator'])} ms against {_ms(sw['numerator'])} ms)."]
  out.append(f"- Every blockwise or efficient path's planned memory grows as N^{fig(min(mem), '.2f')} to "
             f"N^{fig(max(mem), '.2f')}"
             + (f", the dense paths' as N^{fig(min(summary[p]['memory_exponent'] for p in dense), '.2f')}"
                if dense else "") + ".")
  return "\n".join(out)


@section("attention.tiles", ATTENTION_PAGE, (BENCH_TILES,), BENCH_TILES_RUN)
def attention_tiles():
  bench = load(BENCH_TILES)
  lengths, paths, cell = _bench_rows(bench)
  at, base = bench["speedup_at"], bench["baselines"][0]
  lines = [f"Forward+backward milliseconds (median of {setting(bench['repeats'])} alternating "
           f"rounds, range in brackets), the default tile at N = {setting(at)}, and the "
           f"speed-up over {base} at N = {setting(at)}." + _load_line(bench), "",
           "| path | tile | " + " | ".join(f"N={setting(n)}" for n in lengths)
           + " | a (fwd+bwd) | speed-up |", "|---|---|" + "---|" * (len(lengths) + 2)]
  for p in paths:
    tile = bench["tiles"].get(p, {}).get(str(at))
    cells = [_ms(cell[p, n]["fwd_bwd"]) if cell.get((p, n)) and cell[p, n]["status"] == "ok"
             else "skipped" for n in lengths]
    c = _find_ratio(bench, base, p, at)
    lines.append(f"| {p} | {setting(tile[0]) if isinstance(tile, list) else setting(tile)} | "
                 + " | ".join(cells) + f" | {fig(bench['summary'][p]['time_exponent'], '.2f')} | "
                 + (_ratio_cell(c) if c else setting(1.0, ".2f", "×")) + " |")
  sw = _find_ratio(bench, base, "sliding_window_default", at)
  a = bench["summary"]["sliding_window_default"]["time_exponent"]
  target_ratio, target_exp = 12, 1.1
  holds = sw["ratio"] >= target_ratio and a <= target_exp
  lines += ["", f"Issue 20's targets for the default-tile sliding window (at least "
            f"{setting(target_ratio)}× over dense causal at {setting(at)}, time exponent at most "
            f"{setting(target_exp)}) {order(float(holds), 0.5, 'hold', 'do not hold')} in this "
            f"run: {_ratio_cell(sw)}, N^{fig(a, '.2f')}."]
  return "\n".join(lines)


BENCH_DOCUMENTS = "docs/bench_documents.json"
BENCH_DOCUMENTS_RUN = "python scripts/bench_documents.py"


@section("attention.documents", ATTENTION_PAGE, (BENCH_DOCUMENTS,), BENCH_DOCUMENTS_RUN)
def attention_documents():
  bench = load(BENCH_DOCUMENTS)
  rows = {r["path"]: r for r in bench["rows"]}
  n = rows["causal"]["n"]
  lines = [f"Forward+backward milliseconds at N = {setting(n)} with `impl='blockwise'` and its "
           f"default tiles (median of {setting(bench['repeats'])} alternating rounds, range in "
           f"brackets), the share of causal work the documents need (Σ length² / N²) and "
           f"the tiles visited. `documents_aligned`: {setting(n // 256)} documents of "
           f"{setting(256)} tokens; `documents_ragged`: random lengths of mean {setting(256)}, "
           f"one document of a single token; `documents_rows_differ`: two rows, each its own "
           f"random layout." + _load_line(bench), "",
           "| path | batch | Σ len² / N² | tiles visited | fwd+bwd ms |",
           "|---|---|---|---|---|"]
  for name, r in rows.items():
    lines.append(f"| {name} | {setting(r['batch'])} | {fig(r['sum_squares'], '.4f')} | "
                 f"{fig(r['tiles'], ',.0f')} | {_ms(r['fwd_bwd'])} |")
  ratio = {c["denominator"]["name"]: c for c in bench["ratios"]}
  aligned = ratio["documents_aligned"]
  target = 12
  lines += ["", f"Speed-up over causal attention without documents, in the same rounds: "
            f"aligned documents {_ratio_cell(aligned)}, ragged ones "
            f"{_ratio_cell(ratio['documents_ragged'])}, and two rows of different layouts "
            f"{_ratio_cell(ratio['documents_rows_differ'])} over causal at batch "
            f"{setting(rows['causal_batch2']['batch'])}. Issue 35's target (at least "
            f"{setting(target)}× for {setting(n // 256)} documents of {setting(256)} at N = "
            f"{setting(n)}) {order(aligned['ratio'], target, 'holds', 'does not hold')} in this "
            f"run{order(aligned['ratio_min'], target, ' in every round', ', though not in every round')}."]
  return "\n".join(lines)


# ----------------------------------------------------------------------------- streaming

STREAMING_PAGE = "experiments/streaming/README.md"
STREAMING = "experiments/streaming/results.json"
STREAMING_RUN = "python -m attnlab.sweep --config=configs/streaming.py --workdir=runs/streaming"


_table_section("streaming.tables", STREAMING_PAGE, STREAMING, STREAMING_RUN)


def _signed(values, spec=".3f") -> str:
  return " / ".join(fig(v, "+" + spec) for v in values)


STREAMING_TOLERANCE = 0.005    # nats/byte: differences this small are within seed noise here


def _against(diffs, tol: float, worse: str = "worse") -> str:
  """'+0.001 / +0.000 / +0.002: within ±0.005 in every seed' (or how many seeds are worse)."""
  within = [abs(d) <= tol for d in diffs]
  text = (f"{_signed(diffs)}: within ±{setting(tol)} in "
          f"{every(within, 'every seed', '{k} of {n} seeds')}")
  for word, side in ((worse, [d > tol for d in diffs]), ("better", [d < -tol for d in diffs])):
    if any(side):
      text += f", {word} by more than {setting(tol)} in {every(side, 'every seed', '{k} of {n} seeds')}"
  return text


@section("streaming.findings", STREAMING_PAGE, (STREAMING,), STREAMING_RUN)
def streaming_findings():
  """Per variant, per seed: the window-only cache against recomputation after eviction, each
  sink cache against the window-only one, dense attention against recomputation at the far
  end of the stream, and the first-token attention against uniform."""
  results = load(STREAMING)
  summary, seeds = results["summary"], results["seeds"]
  tol = STREAMING_TOLERANCE
  nll = {(r["variant"], r["method"], r["positions"]): r["nll_values"]
         for r in summary if r["measure"] == "nll"}
  first = [r for r in summary if r["measure"] == "first_token"]
  spans = [r for r in summary if r["measure"] == "nll" and r["method"] == "dense"
           and r["positions"] != "after_eviction"]
  far = max(spans, key=lambda r: r["start"])["positions"]
  sinks = sorted({m for _, m, _ in nll if m.startswith("sinks=")},
                 key=lambda m: int(m.split("=")[1]))
  out = [f"Per seed ({', '.join(map(str, seeds))}; values separated by slashes), differences "
         f"of the mean loss in nats per byte (positive: worse); the study took "
         f"{_study_time(STREAMING)} on 2 CPU cores.", ""]
  for v in dict.fromkeys(r["variant"] for r in summary):
    after = lambda m: nll[v, m, "after_eviction"]   # noqa: E731
    window = [a - b for a, b in zip(after("window"), after("recompute"))]
    line = (f"- **{v}**: once tokens leave the cache, the window-only cache against "
            f"recomputation: {_against(window, tol)}")
    for s in sinks:
      diff = [a - b for a, b in zip(after(s), after("window"))]
      line += f"; {s} against the window-only cache: {_against(diff, tol)}"
    dense = [a - b for a, b in zip(nll[v, "dense", far], nll[v, "recompute", far])]
    line += (f". Dense attention over the whole stream against recomputation at positions "
             f"{far}: {_against(dense, tol)}.")
    rows = [r for r in first if r["variant"] == v]
    uniform = rows[0]["uniform"]
    top = [max(r["mean_values"][i] for r in rows) for i in range(len(seeds))]
    line += (f" The most attention a layer puts on the first token (mean over heads), as a "
             f"multiple of uniform: {_seeds_line([x / uniform for x in top], '.2f')}.")
    out.append(line)
  return "\n".join(out)
