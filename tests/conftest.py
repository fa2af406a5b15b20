"""Shared pytest setup: JAX on CPU unless the caller chose a platform, the same XLA flags
as attnlab's command-line entry points (deterministic GPU reductions), and the slow tier:
the tests listed in ``tests/slow_variants.txt`` (the rule is at its top) are marked
``slow``, so the default run skips them and ``pytest -m slow`` runs them."""

import os
import pathlib

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from attnlab import runtime  # noqa: E402  (must precede any JAX computation)

runtime.configure()

_SLOW_LIST = pathlib.Path(__file__).with_name("slow_variants.txt")


def _slow_variants() -> set[str]:
  lines = _SLOW_LIST.read_text().splitlines()
  return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


def pytest_collection_modifyitems(config, items):
  listed = _slow_variants()
  seen = set()
  for item in items:
    name = f"{pathlib.Path(item.fspath).name}::{item.name}"
    if name in listed:
      item.add_marker(pytest.mark.slow)
      seen.add(name)
  whole_suite = not config.args or [pathlib.Path(a).name for a in config.args] == ["tests"]
  stale = sorted(listed - seen)
  if whole_suite and stale and not config.getoption("keyword"):
    raise pytest.UsageError(f"tests/slow_variants.txt names tests that do not exist: "
                            f"{', '.join(stale[:5])}{' ...' if len(stale) > 5 else ''}")
