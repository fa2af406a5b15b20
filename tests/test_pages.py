"""The documentation's figures are rendered from committed results (``attnlab.pages``).

- Every marked passage equals what its section renders from today's results files, and
  every generated file equals its generator's output.
- No figure stands in prose outside a rendered passage, except the settings and versions
  ``pages.ALLOWED`` lists with a reason.
- The check has teeth: changing any figure of a rendered passage by 30%, or flipping any
  word of comparison in it, makes it fail; and each section's figures and orderings follow
  from its data (perturbing the number a section prints, or the comparison it makes,
  changes the text), while the section's own template prints no figure of its own.
"""

import re

import pytest

from attnlab import pages

pages._load_sections()
NAMES = sorted(pages.SECTIONS)

# words of comparison, each with its opposite
OPPOSITES = [("above", "below"), ("higher", "lower"), ("faster", "slower"), ("more", "less"),
             ("better", "worse"), ("larger", "smaller"), ("beats", "trails"), ("rises", "falls"),
             ("every", "no"), ("gains", "loses"), ("above", "under")]


def _passage(name):
  doc = pages.SECTIONS[name].doc
  text = (pages.ROOT / doc).read_text()
  match = next(m for m in pages.blocks(text) if m["name"] == name)
  return doc, text, match


def test_every_rendered_passage_and_generated_file_matches_its_results():
  found = pages.problems()
  assert not found, "\n".join(found) + "\n(run python -m attnlab.pages, after rerunning what " \
                                       "changed)"


@pytest.mark.parametrize("doc", pages.documents())
def test_no_figure_stands_outside_a_rendered_passage(doc):
  found = pages.figures_outside(doc)
  assert not found, "\n".join(f"{doc}:{n}: {f!r} in {line[:100]!r}" for n, f, line in found)


def _mutated(figure: str) -> str:
  number = re.match(r"[\d,]+(?:\.\d+)?", figure).group(0)
  value = float(number.replace(",", ""))
  decimals = len(number.split(".")[1]) if "." in number else 0
  new = value * 1.3 if value else 1.0
  text = f"{new:,.{decimals}f}" if "," in number else f"{new:.{decimals}f}"
  if text == number:                  # too small to move at this precision: one last digit up
    text = f"{value + 10 ** -decimals:.{decimals}f}"
  return text + figure[len(number):]


@pytest.mark.parametrize("name", NAMES)
def test_a_30_percent_change_of_any_rendered_figure_fails_the_check(name):
  doc, text, m = _passage(name)
  renders = {}
  assert not pages.problems(only=name, renders=renders)
  body_start = m.start("body")
  hits = [f for f in pages.FIGURE.finditer(m["body"]) if pages._is_figure(f)]
  assert hits, f"passage {name!r} states no figure"
  for f in hits:
    a, b = body_start + f.start(), body_start + f.end()
    mutated = text[:a] + _mutated(f.group(0)) + text[b:]
    assert mutated != text
    assert pages.problems({doc: mutated}, only=name, renders=renders), \
        f"{name}: {f.group(0)!r} -> {_mutated(f.group(0))!r} went unnoticed"


@pytest.mark.parametrize("name", NAMES)
def test_flipping_any_stated_ordering_fails_the_check(name):
  doc, text, m = _passage(name)
  renders = {}
  body_start = m.start("body")
  for a, b in OPPOSITES:
    for word, other in ((a, b), (b, a)):
      for w in re.finditer(rf"\b{word}\b", m["body"]):
        s, e = body_start + w.start(), body_start + w.end()
        flipped = text[:s] + other + text[e:]
        assert pages.problems({doc: flipped}, only=name, renders=renders), \
            f"{name}: {word!r} -> {other!r} went unnoticed"


@pytest.mark.parametrize("name", NAMES)
def test_each_figure_and_ordering_a_section_prints_follows_from_its_data(name):
  base = pages.render(name)
  figures, orders = pages._Hooks.figures, pages._Hooks.orders
  for i in range(figures):
    pages._Hooks.reset(scale_at=i)
    changed = pages.SECTIONS[name].render().strip("\n")
    pages._Hooks.reset()
    # a figure printed too coarsely to show a 30% change (e.g. 0.00) is exempt
    assert changed != base or _coarse(name, i), \
        f"{name}: figure #{i} does not change the text when its value changes by 30%"
  for i in range(orders):
    pages._Hooks.reset(flip_at=i)
    assert pages.SECTIONS[name].render().strip("\n") != base, \
        f"{name}: ordering #{i} does not change the text when flipped"
  pages._Hooks.reset()


def _coarse(name, index):
  """Whether figure ``index`` of ``name`` prints the same at its value and 1.3 times it."""
  pages._Hooks.reset(mark=True)
  a = re.findall(f"{pages.MARK_OPEN}(.*?){pages.MARK_CLOSE}", pages.SECTIONS[name].render(), re.S)
  pages._Hooks.reset(mark=True, scale_at=index)
  b = re.findall(f"{pages.MARK_OPEN}(.*?){pages.MARK_CLOSE}", pages.SECTIONS[name].render(), re.S)
  pages._Hooks.reset()
  return a == b


@pytest.mark.parametrize("name", NAMES)
def test_a_section_prints_no_figure_of_its_own(name):
  """Every figure in a rendered passage comes through ``fig`` or ``setting``: with those
  marked and removed, the template left over states none."""
  pages._Hooks.reset(mark=True)
  marked = pages.SECTIONS[name].render()
  pages._Hooks.reset()
  bare = re.sub(f"{pages.MARK_OPEN}.*?{pages.MARK_CLOSE}", "", marked, flags=re.S)
  found = pages.figures_outside(pages.SECTIONS[name].doc, bare)
  assert not found, f"{name}: figures typed into the template: {found}"
