"""The committed extrapolation results still come from today's code.

A 1000-step training run amplifies any change in the last bits: building the initial
parameters inside ``jax.jit`` instead of eagerly moved the study's perplexities by about a
change of seed (experiments/extrapolation/README.md, "Three seeds"), and nothing noticed for
a week. So the study keeps a fingerprint, ``experiments/extrapolation/fingerprint/``: the same
sweep cut to 40 steps and two lengths, run by the same code as the results. The quick test
checks that it was; the slow one reruns the fingerprint's command with today's code and must
get the same perplexities, on a machine like the one that recorded it (same JAX, Python,
processor name and core count; the corpus is the interpreter's standard library, and XLA:CPU's
code and thread split depend on the processor and cores). The record names the processor only
coarsely ("AMD EPYC") and not flax's or optax's versions, so a failure can also mean another
processor generation or other libraries; elsewhere (e.g. Debian's CPython 3.11.2) it skips.
"""

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
STUDY = ROOT / "experiments" / "extrapolation"
FINGERPRINT = STUDY / "fingerprint"


def _recorded(folder: pathlib.Path) -> dict:
  return json.loads((folder / "results.provenance.json").read_text())["provenance"]


def _ppl(path: pathlib.Path) -> dict:
  return {(r["variant"], r["eval_mode"], r["eval_length"]): r["ppl"]
          for r in json.loads(path.read_text())}


def test_the_fingerprint_and_the_results_were_made_by_the_same_code():
  results, fingerprint = _recorded(STUDY), _recorded(FINGERPRINT)
  assert results["dirty"] is False and fingerprint["dirty"] is False
  for field in ("jax", "python", "machine"):
    assert results[field] == fingerprint[field], field
  assert fingerprint["command"].startswith(results["command"].split(" --workdir")[0] + " ")
  documented = [line for line in (STUDY / "README.md").read_text().splitlines()
                if line.startswith("python ") and "extrapolation_fingerprint" in line]
  assert [shlex.split(line) for line in documented] == [shlex.split(fingerprint["command"])]
  code = ["attnlab", "configs", "pyproject.toml", "setup.cfg"]      # setup.cfg: the dependencies
  diff = subprocess.run(["git", "diff", "--stat", results["commit"], fingerprint["commit"], "--",
                         *code], cwd=ROOT, capture_output=True, text=True)
  if diff.returncode != 0:
    pytest.skip(f"git cannot compare the two commits here: {diff.stderr.strip()[:200]}")
  assert diff.stdout == "", f"code changed between the results and the fingerprint:\n{diff.stdout}"


@pytest.mark.slow
def test_todays_code_reproduces_the_fingerprint(tmp_path):
  recorded = _recorded(FINGERPRINT)
  here = provenance.provenance("")
  differs = [f"{k}: {recorded[k]} here {here[k]}" for k in ("jax", "python") if recorded[k] != here[k]]
  differs += [f"machine.{k}: {recorded['machine'][k]} here {here['machine'][k]}"
              for k in ("cpu", "cores", "backend") if recorded["machine"][k] != here["machine"][k]]
  if differs:
    pytest.skip("not the machine the fingerprint was recorded on (" + "; ".join(differs) + ")")
  command, workdir = recorded["command"].split(" --workdir=")
  argv = [sys.executable] + shlex.split(command)[1:] + [f"--workdir={tmp_path / 'run'}"]
  # as a user runs it: without the suite's XLA flags (LLVM -O0 rounds differently) and cache
  env = {k: v for k, v in os.environ.items()
         if k != "XLA_FLAGS" and not k.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT"))}
  env["JAX_PLATFORMS"] = "cpu"
  done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
  assert done.returncode == 0, done.stderr[-3000:]
  got, want = _ppl(tmp_path / "run" / "results.json"), _ppl(FINGERPRINT / "results.json")
  assert got.keys() == want.keys()
  # evaluation alone moves the last digits (batching); a changed training run moves ~1e-3
  np.testing.assert_allclose([got[k] for k in want], list(want.values()), rtol=1e-5,
                             err_msg="today's code (or this machine's libraries and "
                                     "processor, which the record names only coarsely) "
                                     "trains other models than the committed results' code")
