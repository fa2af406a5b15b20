"""Documentation figures are rendered from results files, never retyped.

A document marks each passage that states measured figures::

    <!-- rendered: NAME -->
    ...text that SECTIONS[NAME] renders from its results file...
    <!-- /rendered: NAME -->

``python -m attnlab.pages`` rewrites every marked passage from today's results files;
``python -m attnlab.pages --check`` lists the passages whose committed text differs from
what it renders (``tests/test_pages.py`` fails on any). Outside marked passages, prose
states no measured figure (``figures_outside``; settings and versions are allowed where
``ALLOWED`` says why).

A section is a function returning Markdown. It prints every measured number with ``fig``
and chooses every word of comparison with ``order``, so that ``tests/test_pages.py`` can
check that each printed figure and each stated ordering follows from the data (it perturbs
them one at a time and requires the text to change).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import re
from typing import Callable

ROOT = pathlib.Path(__file__).resolve().parents[2]


@dataclasses.dataclass(frozen=True)
class Section:
  """A rendered passage: the document it lives in, the results files it reads (repo
  paths) and the function that renders it (no arguments -> Markdown, no trailing newline)."""
  name: str
  doc: str
  sources: tuple[str, ...]
  render: Callable[[], str]
  command: str            # the command that writes its results files


SECTIONS: dict[str, Section] = {}

# Whole files rendered from results: {repo path: (() -> its full text, the command)}.
GENERATED: dict[str, tuple[Callable[[], str], str]] = {}


def section(name: str, doc: str, sources: tuple[str, ...], command: str):
  """Decorator registering a renderer as ``SECTIONS[name]``."""
  def add(fn):
    if name in SECTIONS:
      raise ValueError(f"section {name!r} is registered twice")
    SECTIONS[name] = Section(name, doc, tuple(sources), fn, command)
    return fn
  return add


# ----------------------------------------------------------------------------- figures

class _Hooks:
  """Perturbations ``tests/test_pages.py`` applies: scale the ``scale_at``-th figure
  rendered by 1.3, flip the ``flip_at``-th ordering, or mark every figure."""
  figures = 0
  orders = 0
  scale_at: int | None = None
  flip_at: int | None = None
  mark = False

  @classmethod
  def reset(cls, scale_at=None, flip_at=None, mark=False):
    cls.figures = cls.orders = 0
    cls.scale_at, cls.flip_at, cls.mark = scale_at, flip_at, mark


MARK_OPEN, MARK_CLOSE = "\u27e6", "\u27e7"     # ⟦ ⟧: around a figure in marking mode


def fig(value: float, spec: str = ".2f", suffix: str = "") -> str:
  """A measured number as printed: ``format(value, spec) + suffix`` (e.g. ``"14.2×"``)."""
  index = _Hooks.figures
  _Hooks.figures += 1
  if _Hooks.scale_at == index:
    value = value * 1.3 if value else 1.0
  text = format(value, spec) + suffix
  return f"{MARK_OPEN}{text}{MARK_CLOSE}" if _Hooks.mark else text


def setting(value, spec: str = "", suffix: str = "") -> str:
  """A number that is a setting (a length, a factor, a seed count), not a measurement: it
  prints as it is and is not perturbed by the tests."""
  text = format(value, spec) + suffix
  return f"{MARK_OPEN}{text}{MARK_CLOSE}" if _Hooks.mark else text


def generated(text: str) -> str:
  """Text a results generator wrote from the data (a study's table, from its registered
  ``markdown``): embedded as it is."""
  return f"{MARK_OPEN}{text}{MARK_CLOSE}" if _Hooks.mark else text


def order(a: float, b: float, greater: str, less: str) -> str:
  """``greater`` when ``a > b``, else ``less``: a word of comparison the data chooses."""
  index = _Hooks.orders
  _Hooks.orders += 1
  pick = a > b
  if _Hooks.flip_at == index:
    pick = not pick
  return greater if pick else less


def every(flags, all_word: str = "every", count_word: str = "{k} of {n}") -> str:
  """"every" when all ``flags`` hold, else "k of n" (how many seeds a finding holds in)."""
  flags = list(flags)
  k = sum(bool(f) for f in flags)
  index = _Hooks.orders
  _Hooks.orders += 1
  if _Hooks.flip_at == index:
    k = len(flags) - 1 if k == len(flags) else len(flags)
  return all_word if k == len(flags) else count_word.format(k=k, n=len(flags))


@functools.lru_cache(maxsize=None)
def _read(path: str) -> str:
  return (ROOT / path).read_text()


def load(path: str):
  """A committed results file (JSON, or JSONL as a list of its lines), read once."""
  text = _read(path)
  if path.endswith(".jsonl"):
    return [json.loads(line) for line in text.splitlines() if line.strip()]
  return json.loads(text)


# ----------------------------------------------------------------------------- documents

_BLOCK = re.compile(r"<!-- rendered: (?P<name>[\w.-]+) -->\n(?P<body>.*?)\n?<!-- /rendered: "
                    r"(?P=name) -->", re.S)


def documents() -> list[str]:
  """Every document whose prose is held to the rule: README.md, docs/*.md and each
  experiment's README.md (repo paths)."""
  _load_sections()
  # a benchmark's .md beside its .json is a results file, not prose: the script writes both
  # in one run (like a study's results.md); documents quote it through rendered passages
  docs = ["README.md"] + [f"docs/{p.name}" for p in sorted((ROOT / "docs").glob("*.md"))
                          if not p.with_suffix(".json").exists()]
  docs += [str(p.relative_to(ROOT)) for p in sorted((ROOT / "experiments").rglob("README.md"))]
  return [d for d in docs if d not in GENERATED]


def blocks(text: str) -> list[re.Match]:
  """The marked passages of a document's text."""
  return list(_BLOCK.finditer(text))


def render(name: str) -> str:
  """The text ``SECTIONS[name]`` renders now."""
  _load_sections()
  _Hooks.reset()
  return SECTIONS[name].render().strip("\n")


def rendered_text(doc: str, text: str | None = None) -> str:
  """``doc``'s text with every marked passage rendered afresh."""
  text = (ROOT / doc).read_text() if text is None else text
  return _BLOCK.sub(lambda m: (f"<!-- rendered: {m['name']} -->\n{render(m['name'])}\n"
                               f"<!-- /rendered: {m['name']} -->"), text)


def problems(texts: dict[str, str] | None = None, only: str | None = None,
             renders: dict[str, str] | None = None) -> list[str]:
  """Why the documents differ from what renders: a passage whose text differs, a passage no
  section renders, a section whose document lacks its passage, a generated file that differs.
  ``texts``: {doc: text} to check instead of the files; ``only``: check one passage;
  ``renders``: {name: text} already rendered (the mutation test renders each once)."""
  _load_sections()
  renders = {} if renders is None else renders
  out = []
  seen = set()
  for path, (make, command) in GENERATED.items():
    if only is None or only == path:
      text = (texts or {}).get(path) or (ROOT / path).read_text()
      if path not in renders:
        renders[path] = make()
      if text != renders[path]:
        out.append(f"{path}: differs from what its results render ({command})")
  for doc in documents():
    text = (texts or {}).get(doc) or (ROOT / doc).read_text()
    for m in blocks(text):
      name = m["name"]
      if only is not None and name != only:
        continue
      if name not in SECTIONS:
        out.append(f"{doc}: passage {name!r} is rendered by no section (attnlab/pages)")
        continue
      seen.add(name)
      if SECTIONS[name].doc != doc:
        out.append(f"{doc}: passage {name!r} belongs to {SECTIONS[name].doc}")
        continue
      if name not in renders:
        try:
          renders[name] = render(name)
        except Exception as e:  # noqa: BLE001  (a results file of another format, a missing key)
          out.append(f"{doc}: passage {name!r} cannot be rendered from its results "
                     f"({', '.join(SECTIONS[name].sources) or 'no file'}): "
                     f"{type(e).__name__}: {e}")
          continue
      if m["body"].strip("\n") != renders[name]:
        out.append(f"{doc}: passage {name!r} differs from what its results render "
                   f"(python -m attnlab.pages)")
  for name, s in SECTIONS.items():
    if name not in seen and only is None:
      out.append(f"{s.doc}: has no passage {name!r} (add <!-- rendered: {name} --> ... "
                 f"<!-- /rendered: {name} -->)")
  return out


# ----------------------------------------------------------------------------- prose figures

# A measured figure: a decimal, or a whole number with ×, % or a unit of time.
FIGURE = re.compile(r"(?<![\w.^/-])(\d+\.\d+|\d+(?:,\d{3})*)(\s?(?:×|%|x\b)|\s(?:ms|s|seconds?|"
                    r"min|minutes?|hours?)\b)?(?![\w.]*\d)")


def _is_figure(m: re.Match) -> bool:
  return "." in m.group(1) or bool(m.group(2))


def figures_outside(doc: str, text: str | None = None) -> list[tuple[int, str, str]]:
  """(line number, figure, line) for every figure of ``doc`` outside marked passages and
  fenced code, that ``ALLOWED[doc]`` does not list."""
  text = (ROOT / doc).read_text() if text is None else text
  allowed = {**ALLOWED.get("*", {}), **ALLOWED.get(doc, {})}
  patterns = [p[3:] for p in allowed if p.startswith("re:")]
  spans = [(m.start(), m.end()) for m in blocks(text)]
  out = []
  offset = 0
  fenced = False
  for number, line in enumerate(text.split("\n"), 1):
    start = offset
    offset += len(line) + 1
    if line.lstrip().startswith("```"):
      fenced = not fenced
      continue
    if fenced or any(a <= start < b for a, b in spans):
      continue
    exempt = [(r.start(), r.end()) for p in patterns for r in re.finditer(p, line)]
    for m in FIGURE.finditer(line):
      if not _is_figure(m):
        continue
      figure = m.group(0).strip()
      if figure in allowed or any(a <= m.start(1) < b for a, b in exempt):
        continue
      out.append((number, figure, line.strip()))
  return out


# Figures allowed outside rendered passages: settings, versions, definitions, quotes. Each
# entry says why. Keys: a document, or "*" for all. An entry "re:PATTERN" allows every
# figure inside a match of PATTERN on its line.
ALLOWED: dict[str, dict[str, str]] = {
    "*": {
        r"re:\b(?:jax|JAX|Python|CPython|python|torch|PyTorch|transformers|flax|optax|orbax|"
        r"numpy|CUDA|cuDNN|Pallas|tokamax|Debian)[ -]?(?:\d+\.)+\d+\S*":
            "a version of a dependency or tool",
        r"re:\barXiv[: ]\d{4}\.\d{4,5}|\b\d{4}\.\d{4,5}(?:v\d)?\b": "an arXiv identifier",
        r"re:\d+(?:\.\d+)?e-?\d+": "a setting in scientific notation (learning rates, theta)",
        r"re:\bLlama ?\d+(?:\.\d+)?": "a model family's name (Llama 3.1)",
        r"re:`[\w.]+` = `[^`]*`": "a config field's declared default",
        r"re:\w+=\d+ × \w+=\d+": "a device mesh's shape (a setting)",
    },
    "README.md": {
        "1×": "the shortest evaluation length over the training length (configs/extrapolation.py)",
        "16×": "the longest evaluation factor (configs/extrapolation.py)",
        "90%": "the train/validation split (data.valid_fraction)",
    },
    "experiments/extrapolation/README.md": {
        "1×": "an evaluation factor (configs/extrapolation.py)", "2×": "an evaluation factor",
        "4×": "an evaluation factor", "8×": "an evaluation factor", "16×": "an evaluation factor",
        "10%": "the validation split (data.valid_fraction)",
        "0.71": "the RMS of a sin/cos pair, 1/sqrt(2) (a definition)",
        "0.02": "a config default (the token embeddings' init std)",
        "19.73": "the ALiBi paper's WikiText-103 figure, quoted", "18.34": "the ALiBi paper, quoted",
        "17.98": "the ALiBi paper, quoted", "17.92": "the ALiBi paper, quoted",
        "18.3": "the ALiBi paper, quoted", "16.6": "the ALiBi paper's 16.6L, quoted",
    },
    "experiments/retrieval/README.md": {
        "2×": "an evaluation factor (configs/retrieval.py)", "8×": "an evaluation factor",
    },
    "experiments/README.md": {
        "2×": "an evaluation factor of a study's config", "8×": "an evaluation factor",
        "16×": "an evaluation factor", "32×": "stream length over training length, a setting",
        "30%": "the mutation test's perturbation (tests/test_pages.py), a setting",
    },
    "docs/attention.md": {
        "0.1": "differential attention's lambda vectors are drawn N(0, 0.1) (the paper's code)",
        "0.8": "lambda_init = 0.8 - 0.6 exp(-0.3 l), the paper's definition",
        "0.6": "lambda_init's definition", "0.3": "lambda_init's definition",
        "2.1": "a section of the DeepSeek-V2 paper",
    },
    "docs/pretrained.md": {
        "2.5": "the DeepSeek-V3 fixture's routed_scaling_factor, a setting",
    },
    "docs/benchmarks.md": {
        "0.99": "AdamW's beta2, a setting (configs/lm.py)", "0.1": "weight decay, a setting",
        "1.0": "gradient clipping, a setting",
    },
    "docs/references.md": {
        "0.1": "YaRN's temperature formula, 0.1·ln(s) + 1 (a definition)",
        "3.5": "FlashAttention's FLOP convention, ×3.5 for forward+backward (a definition)",
        "1.88": "nanoGPT's README, quoted",
    },
    "docs/kernels.md": {
        "3.5": "FlashAttention's FLOP convention, ×3.5 for forward+backward (a definition)",
        "10%": "issue 18's target, quoted",
    },
}


def _load_sections() -> None:
  from attnlab.pages import sections  # noqa: F401  (registers SECTIONS)


def main(argv=None) -> int:
  """``python -m attnlab.pages [--check]``: rewrite (or check) every rendered passage."""
  import argparse
  parser = argparse.ArgumentParser(prog="python -m attnlab.pages", description=main.__doc__)
  parser.add_argument("--check", action="store_true", help="only list what differs")
  args = parser.parse_args(argv)
  _load_sections()
  if args.check:
    found = problems()
    for doc in documents():
      found += [f"{doc}:{n}: figure {f!r} outside a rendered passage: {line[:100]}"
                for n, f, line in figures_outside(doc)]
    print("\n".join(found) or "every rendered passage matches its results")
    return 1 if found else 0
  changed = []
  for path, (make, _) in GENERATED.items():
    if (ROOT / path).read_text() != make():
      (ROOT / path).write_text(make())
      changed.append(path)
  failed = []
  for doc in documents():
    path = ROOT / doc
    old = path.read_text()
    try:
      new = rendered_text(doc, old)
    except Exception as e:  # noqa: BLE001  (one line naming the document, not a traceback)
      failed.append(f"{doc}: not rendered: {type(e).__name__}: {e}")
      continue
    if new != old:
      path.write_text(new)
      changed.append(doc)
  print("\n".join(f"rendered {d}" for d in changed) or "nothing to render: all up to date")
  if failed:
    print("\n".join(failed))
    return 1
  missing = [p for p in problems() if "has no passage" in p or "no section" in p]
  print("\n".join(missing))
  return 1 if missing else 0
