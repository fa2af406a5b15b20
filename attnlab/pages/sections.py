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
           for v in ("alibi", "rope", "sinusoidal")}
  python = load("experiments/extrapolation/results.provenance.json")["provenance"]["python"]
  return (f"At {setting(8)}× the training length, ALiBi's perplexity is "
          f"{fig(100 * abs(1 - ratio['alibi']), '.1f', '%')} "
          f"{order(ratio['alibi'], 1, 'above', 'below')} its value at {setting(1)}×, while "
          f"RoPE's is {fig(ratio['rope'], '.1f', '×')} and\nsinusoidal's "
          f"{fig(ratio['sinusoidal'], '.1f', '×')} {order(ratio['sinusoidal'], 1, 'higher', 'lower')}"
          f" (CPython {python}).")
