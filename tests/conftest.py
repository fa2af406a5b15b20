"""Shared pytest setup: JAX on CPU unless the caller chose a platform, the same XLA flags
as attnlab's command-line entry points (deterministic GPU reductions). The slow tier is
marked in the test files (``@pytest.mark.slow``, or ``pytest.param(..., marks=...)`` on a
case): the default run skips it and ``pytest -m slow`` runs it. The rule that chooses it:
a parametrized check runs its first case (or the cases that cover distinct code paths) by
default and the others in the slow tier; a long end-to-end test is slow when a default
test covers its property; the cross products of the conformance suite are slow.

Many tests compile the same small programs (a tiny model's train step, its evaluation);
JAX's persistent compilation cache lets them, and the xdist workers, share one compile.
The cache lives in a fresh directory per run (the workers inherit it from the process
that started them), removed at the end, so nothing compiled by other code is reused; a
``JAX_COMPILATION_CACHE_DIR`` the caller set is used as is."""

import os
import shutil
import tempfile

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _OWN_CACHE = tempfile.mkdtemp(prefix="attnlab_test_jax_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"   # tiny programs too
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
else:
  _OWN_CACHE = None

# The suite's programs are tiny and compiled once or twice each, so compiling is most of its
# time: LLVM's -O0 (XLA:CPU's backend optimization level) compiles about a third faster and
# runs them slower by less than it saves. Semantics are XLA's either way; attnlab's entry
# points keep the default level, and so do runs on an accelerator (scripts/gpu_check.py).
if (os.environ["JAX_PLATFORMS"] == "cpu"
        and "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", "")):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_backend_optimization_level=0").strip()

from attnlab import runtime  # noqa: E402  (must precede any JAX computation)

runtime.configure()


@pytest.fixture(autouse=True)
def _fresh_compiled_caches():
  """attnlab keeps compiled programs (evaluation's scorers, generation's programs, capture)
  per config, backend and mesh; a test that patches what tracing reads (impl tables, the
  backend) must not leave a program traced under its patch to the tests after it."""
  yield
  runtime.clear_compiled_caches()


def pytest_unconfigure(config):
  if _OWN_CACHE is not None:
    shutil.rmtree(_OWN_CACHE, ignore_errors=True)
