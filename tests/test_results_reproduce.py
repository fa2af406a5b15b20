"""Every committed result still comes from today's code.

A training run amplifies any change in the last bits: building the initial parameters
inside ``jax.jit`` instead of eagerly once moved the extrapolation study's perplexities by
about a change of seed, and nothing noticed for a week. So:

- **Studies** keep a fingerprint, ``experiments/<study>/fingerprint/``: the same study cut
  to a minute or two (``--config=configs/<study>.py:fingerprint``), run by the same code as
  every results file of the study (checked here, quickly, from their provenance). The slow
  tier reruns each fingerprint's command with today's code and must get the same numbers,
  on a machine like the one that recorded it (same JAX, Python, processor name, SIMD
  extensions where recorded, and core count: XLA:CPU's code and thread split depend on
  them); elsewhere it skips.
- **Benchmarks** have no fingerprint (timings do not repeat): each names the code that
  produces it (``BENCH_CODE``), which must be unchanged between the commit its provenance
  names and HEAD, in a clean tree (a Python file's docstrings and comments aside: they do not
  change what it computes). A change there means rerunning the benchmark.
"""

import ast
import json
import os
import pathlib
import shlex
import subprocess
import sys

import numpy as np
import pytest

from attnlab import provenance

ROOT = pathlib.Path(__file__).resolve().parents[1]
STUDY_CODE = ["attnlab", "configs", "pyproject.toml", "setup.cfg"]  # setup.cfg: dependencies
# code that does not change what a study computes: how pages are rendered
NOT_STUDY_CODE = [":(exclude)attnlab/pages"]
STUDIES = sorted(p.parent.parent.name for p in ROOT.glob("experiments/*/fingerprint/results.json"))

# docs/<benchmark>.json -> the code whose change invalidates it
_ATTENTION = ["attnlab/attention", "attnlab/runtime.py", "attnlab/benchtime.py", "pallas_kernels",
              "pyproject.toml", "setup.cfg"]
BENCH_CODE = {
    "docs/bench_attention.json": ["scripts/bench_attention.py", *_ATTENTION],
    "docs/bench_tiles.json": ["scripts/bench_attention.py", *_ATTENTION],
    "docs/bench_kernels.json": ["scripts/bench_kernels.py", *_ATTENTION],
    "docs/bench_score_mods.json": ["scripts/bench_kernels.py", *_ATTENTION],
    "docs/bench_documents.json": ["scripts/bench_documents.py", *_ATTENTION],
    "docs/bench_decode.json": ["scripts/bench_decode.py", "attnlab/inference", "attnlab/models",
                               "attnlab/positional", *_ATTENTION],
    "experiments/baby_gpt/bench_train.json": ["scripts/bench_train.py", "attnlab/models",
                                              "attnlab/engine/training.py",
                                              "attnlab/engine/loop.py", "attnlab/positional",
                                              "attnlab/data", *_ATTENTION],
}


def _provenance(path: pathlib.Path) -> dict:
  sidecar = provenance.sidecar_path(path)
  if sidecar.exists():
    return json.loads(sidecar.read_text())["provenance"]
  return json.loads(path.read_text())["provenance"]


def _git(*args) -> subprocess.CompletedProcess:
  done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
  if done.returncode != 0:
    pytest.skip(f"git cannot compare the two commits here: {done.stderr.strip()[:200]}")
  return done


def _code(source: str | None) -> str | None:
  """A Python file's program without its docstrings and comments (``ast.dump``)."""
  if source is None:
    return None
  tree = ast.parse(source)
  for node in ast.walk(tree):
    body = getattr(node, "body", None)
    if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
        and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
      node.body = body[1:] or [ast.Pass()]
  return ast.dump(tree)


def _show(commit: str, path: str) -> str | None:
  done = subprocess.run(["git", "show", f"{commit}:{path}"], cwd=ROOT, capture_output=True,
                        text=True)
  return done.stdout if done.returncode == 0 else None


def _changed(a: str, b: str, paths) -> str:
  """The files of ``paths`` whose program differs between commits ``a`` and ``b``; a Python
  file whose change is only in docstrings or comments does not count (it computes the same)."""
  names = _git("diff", "--name-only", a, b, "--", *paths).stdout.split()
  return "\n".join(name for name in names
                   if not name.endswith(".py") or _code(_show(a, name)) != _code(_show(b, name)))


def _study_results(study: str) -> list[pathlib.Path]:
  """Every results JSON of a study but its fingerprint's (per-run logs carry their own)."""
  folder = ROOT / "experiments" / study
  return sorted(p for p in folder.rglob("*.json") if "fingerprint" not in p.parts
                and not p.name.endswith("provenance.json") and p.name != "config.json"
                and "training" not in p.parts and p.name != "bench_train.json")


def test_every_results_file_is_tied_to_todays_code_by_a_fingerprint_or_its_code():
  studies_without = sorted(p.parent.name for p in ROOT.glob("experiments/*/README.md")
                           if not (p.parent / "fingerprint" / "results.json").exists())
  assert not studies_without, f"studies without a fingerprint: {studies_without}"
  benches = sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("docs/*.json")
                   if not p.name.endswith("provenance.json"))
  benches += ["experiments/baby_gpt/bench_train.json"] * (
      ROOT / "experiments/baby_gpt/bench_train.json").exists()
  unknown = sorted(set(benches) - set(BENCH_CODE))
  assert not unknown, f"benchmark results with no declared producing code: {unknown}"


@pytest.mark.parametrize("study", STUDIES)
def test_a_studys_results_and_its_fingerprint_were_made_by_the_same_code(study):
  folder = ROOT / "experiments" / study
  fingerprint = _provenance(folder / "fingerprint" / "results.json")
  assert fingerprint["dirty"] is False, "the fingerprint was made in a dirty tree"
  documented = [line for line in (folder / "README.md").read_text().splitlines()
                if line.startswith("python ") and ("fingerprint" in line)]
  assert [shlex.split(line) for line in documented] == [shlex.split(fingerprint["command"])], \
      "the study's page must show the fingerprint's command as recorded"
  results = _study_results(study)
  assert results
  for path in results:
    made = _provenance(path)
    where = path.relative_to(ROOT)
    assert made["dirty"] is False, f"{where} was made in a dirty tree"
    if path.parent == folder:          # the study's own results: the fingerprint's machine
      for field in ("jax", "python"):
        assert made[field] == fingerprint[field], (where, field)
    if made.get("reconstructed"):
      pytest.fail(f"{where}: provenance reconstructed from git history; rerun the study")
    diff = _changed(made["commit"], fingerprint["commit"], STUDY_CODE + NOT_STUDY_CODE)
    assert diff == "", f"code changed between {where} and the fingerprint:\n{diff}"


@pytest.mark.parametrize("path", sorted(BENCH_CODE))
def test_a_benchmarks_producing_code_is_unchanged_since_it_ran(path):
  if not (ROOT / path).exists():
    pytest.skip(f"{path} is not committed")
  made = _provenance(ROOT / path)
  assert made["dirty"] is False, f"{path} was measured in a dirty tree"
  diff = _changed(made["commit"], "HEAD", BENCH_CODE[path])
  assert diff == "", f"{path}'s code changed since it ran ({made['commit'][:7]}): rerun " \
                     f"{made['command']}\n{diff}"


def _numbers(path: pathlib.Path) -> dict:
  """{(cell..., field): value} of every measured number of a results.json (either format),
  wall times left out."""
  value = json.loads(path.read_text())
  records = value if isinstance(value, list) else value["records"]
  out = {}
  for r in records:
    cell = tuple(sorted((k, json.dumps(v)) for k, v in r.items()
                        if not isinstance(v, float) and "seconds" not in k and k != "seed"))
    for k, v in r.items():
      if isinstance(v, float) and "seconds" not in k and k not in ("tokens_per_s",):
        out[(cell, k)] = v
  return out


@pytest.mark.slow
@pytest.mark.parametrize("study", STUDIES)
def test_todays_code_reproduces_the_fingerprint(study, tmp_path):
  folder = ROOT / "experiments" / study / "fingerprint"
  recorded = _provenance(folder / "results.json")
  here = provenance.provenance("")
  differs = [f"{k}: {recorded[k]} here {here[k]}" for k in ("jax", "python") if recorded[k] != here[k]]
  differs += [f"machine.{k}: {recorded['machine'][k]} here {here['machine'][k]}"
              for k in ("cpu", "cores", "backend") if recorded["machine"][k] != here["machine"][k]]
  if "cpu_flags" in recorded["machine"] and recorded["machine"]["cpu_flags"] != \
      here["machine"]["cpu_flags"]:
    differs.append(f"machine.cpu_flags: {recorded['machine']['cpu_flags']} here "
                   f"{here['machine']['cpu_flags']}")
  if differs:
    pytest.skip("not the machine the fingerprint was recorded on (" + "; ".join(differs) + ")")
  command = recorded["command"].split(" --workdir=")[0]
  argv = [sys.executable] + shlex.split(command)[1:] + [f"--workdir={tmp_path / 'run'}"]
  # as a user runs it: without the suite's XLA flags (LLVM -O0 rounds differently) and cache
  env = {k: v for k, v in os.environ.items()
         if k != "XLA_FLAGS" and not k.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT"))}
  env["JAX_PLATFORMS"] = "cpu"
  done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
  assert done.returncode == 0, done.stderr[-3000:]
  got, want = _numbers(tmp_path / "run" / "results.json"), _numbers(folder / "results.json")
  assert got.keys() == want.keys()
  # evaluation alone moves the last digits (batching); a changed training run moves ~1e-3
  np.testing.assert_allclose([got[k] for k in want], list(want.values()), rtol=1e-5,
                             err_msg="today's code (or this machine's libraries and "
                                     "processor, which the record names only coarsely) "
                                     "computes another study than the committed results' code")


def test_only_docstrings_and_comments_leave_the_program_unchanged():
  a = 'def f(x):\n  """Doubles x."""\n  return 2 * x  # twice\n'
  b = 'def f(x):\n  """Returns x times two: a new docstring."""\n  # a new comment\n  return 2 * x\n'
  c = 'def f(x):\n  """Doubles x."""\n  return 3 * x\n'
  assert _code(a) == _code(b)
  assert _code(a) != _code(c)
  assert _code('"""Module."""\nX = 1\n') == _code("X = 1\n")
