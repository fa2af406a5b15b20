"""The documentation's other promises: every results file says what produced it, and the
score-modifier tutorial runs as written. (Its figures are rendered from results and checked
by ``tests/test_pages.py``.)"""

import json
import pathlib
import re

import pytest

from attnlab import provenance

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _jsonl(path):
  return [json.loads(line) for line in (ROOT / path).read_text().splitlines() if line.strip()]


def _results_files():
  """Every committed results file: the studies' and benchmarks' JSON, the runs' metrics and
  the timing logs (configs and provenance files themselves excluded)."""
  found = list((ROOT / "docs").glob("*.json")) + list((ROOT / "docs").rglob("timings/*.jsonl"))
  found += [p for p in (ROOT / "experiments").rglob("*.json*") if p.name != "config.json"]
  return sorted(p for p in found if "provenance" not in p.name and p.parent.name != "provenance")


def _provenance_of(path):
  """The provenance records that cover ``path``: embedded, in a ``<stem>.provenance.json``
  beside it, or the run's own ``provenance.jsonl`` / ``provenance/*.jsonl`` in its folder."""
  sidecar = provenance.sidecar_path(path)
  if path.suffix == ".jsonl":
    lines = _jsonl(path.relative_to(ROOT))
    embedded = [r["provenance"] for r in lines if "provenance" in r]
  else:
    value = json.loads(path.read_text())
    embedded = [value["provenance"]] if isinstance(value, dict) and "provenance" in value else []
  assert not (embedded and sidecar.exists()), f"{path}: embedded provenance and a stale {sidecar.name}"
  if embedded:
    return embedded
  if sidecar.exists():
    return [json.loads(sidecar.read_text())["provenance"]]
  runs = list(path.parent.glob("provenance.jsonl")) + list(path.parent.glob("provenance/*.jsonl"))
  return [_jsonl(run.relative_to(ROOT))[0] for run in runs]


@pytest.mark.parametrize("path", _results_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_results_file_names_its_command_commit_jax_and_machine(path):
  records = _provenance_of(path)
  assert records, f"{path.relative_to(ROOT)} has no provenance (see attnlab/provenance.py)"
  for p in records:
    # a command, possibly under environment settings (env MALLOC_MMAP_MAX_=65536 python ...)
    assert re.match(r"(env ([A-Z_]+=\S* )+)?(python3? |python3 -m venv)", p["command"]), \
        p["command"]
    assert re.fullmatch(r"[0-9a-f]{40}", p["commit"] or ""), p.get("commit")
    assert p["jax"] and p["python"] and p["machine"]["cores"] and p["machine"]["cpu"]
    if "not recorded" in json.dumps(p):
      assert "from git history" in p["reconstructed"], "unrecorded fields must say how they were filled"


def test_a_reconstructed_provenance_names_the_commit_that_last_wrote_its_file():
  import subprocess
  for sidecar in sorted(ROOT.rglob("*.provenance.json")):
    p = json.loads(sidecar.read_text())["provenance"]
    if "reconstructed" not in p:
      continue
    results = sidecar.with_name(sidecar.name.replace(".provenance.json", ".json"))
    log = subprocess.run(["git", "log", "--format=%H", "--", str(results.relative_to(ROOT))],
                         cwd=ROOT, capture_output=True, text=True)
    if log.returncode != 0 or not log.stdout.strip():
      pytest.skip("not a git checkout")
    assert p["commit"] in log.stdout.split(), f"{sidecar}: {p['commit']} never wrote {results.name}"


def test_score_mod_tutorial_runs_and_its_fused_gradients_equal_the_reference():
  """docs/score_mods.md's example, executed as written: the fused kernel's gradients of
  q, k, v and of the modifier's leaf equal impl='reference''s."""
  import numpy as np
  text = (ROOT / "docs" / "score_mods.md").read_text()
  blocks = re.findall(r"```python\n(.*?)```", text, re.S)
  assert len(blocks) == 2
  namespace = {}
  exec(compile(blocks[0], "docs/score_mods.md", "exec"), namespace)   # noqa: S102
  fused, reference = namespace["fused"], namespace["reference"]
  for got, want in zip(fused[:3], reference[:3]):
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)
  np.testing.assert_allclose(fused[3].a, reference[3].a, rtol=2e-4, atol=2e-5)
  assert np.abs(np.asarray(reference[3].a)).max() > 1e-3          # the leaf's gradient is real


def test_operand_tutorial_runs_and_its_fused_gradients_equal_the_reference():
  """docs/score_mods.md's per-position operand example (packed documents and a per-token
  temperature), executed as written: the kernel's gradients, the operand's included, equal
  impl='reference''s."""
  import numpy as np
  text = (ROOT / "docs" / "score_mods.md").read_text()
  block = re.findall(r"```python\n(.*?)```", text, re.S)[1]
  namespace = {}
  exec(compile(block, "docs/score_mods.md", "exec"), namespace)   # noqa: S102
  fused, reference = namespace["fused"], namespace["reference"]
  for got, want in zip(fused, reference):
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)
  assert np.abs(np.asarray(reference[3])).max() > 1e-3            # the operand's gradient is real
