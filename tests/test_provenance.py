"""Provenance of results files and the timing log the README's wall times come from."""

import importlib.util
import json
import pathlib
import subprocess

import jax
import pytest

from attnlab import provenance

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load_script(name: str):
  """scripts/<name>.py, loaded by its path (scripts are files, not a package)."""
  spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


timed = _load_script("timed")


def _git_head():
  done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
  return done.stdout.strip() if done.returncode == 0 else None


def test_provenance_names_this_checkouts_commit_jax_and_the_given_command():
  p = provenance.provenance(command="python -m attnlab.sweep --config=x.py")
  assert p["command"] == "python -m attnlab.sweep --config=x.py"
  assert p["commit"] == _git_head()            # None outside a git checkout, on both sides
  assert p["jax"] == jax.__version__ and p["machine"]["backend"] == "cpu"


def test_a_sidecar_sits_beside_its_results_file_and_names_it(tmp_path):
  results = tmp_path / "results.json"
  results.write_text("[]")
  path = provenance.write_sidecar(results, command="python -m attnlab.retrieval")
  assert path == tmp_path / "results.provenance.json"
  written = json.loads(path.read_text())
  assert written["results"] == "results.json"
  assert written["provenance"]["command"] == "python -m attnlab.retrieval"


README = """# x

## Quick start

Main job:

```bash
echo one && echo two
```

Tests:

```bash
python -m pytest
```

## Next

```bash
not in the quick start
```
"""


def test_quick_start_blocks_are_the_bash_blocks_of_that_section_only():
  assert timed.quick_start_blocks(README) == ["echo one && echo two", "python -m pytest"]


def test_pytest_summary_is_read_from_the_last_summary_line():
  out = ("== 1 failed in 2.00s ==\nnoise\n"
         "============ 914 passed, 6 skipped, 248 deselected in 1059.20s (0:17:39) ============\n")
  assert timed.pytest_summary(out) == {"summary": "914 passed, 6 skipped, 248 deselected",
                                       "seconds": 1059.2}
  assert timed.pytest_summary("no summary here") is None


def test_a_timed_command_logs_its_status_wall_time_and_provenance(tmp_path, capsys):
  log = tmp_path / "t.jsonl"
  status = timed.main(["--log", str(log), "--", "sleep 0.3; echo '== 2 passed in 0.25s =='; exit 3"])
  assert status == 3
  (record,) = [json.loads(line) for line in log.read_text().splitlines()]
  assert record["returncode"] == 3 and 0.3 <= record["wall_seconds"] < 30
  assert record["pytest"] == {"summary": "2 passed", "seconds": 0.25}
  assert record["provenance"]["commit"] == _git_head()


def test_timed_needs_exactly_one_thing_to_run(tmp_path):
  with pytest.raises(SystemExit):
    timed.main(["--log", str(tmp_path / "t.jsonl")])


@pytest.mark.parametrize("block,dirty", [("echo ran > ran.txt", False), ("echo x >> README.md", True)])
def test_a_readme_block_run_records_the_state_of_the_clone_it_ran_in(tmp_path, monkeypatch,
                                                                     block, dirty):
  """This checkout may be dirty while a block runs (a previous run appended to the log);
  what ran is a clone of HEAD, so the record's ``dirty`` is the clone's."""
  scratch = tmp_path / "scratch"
  scratch.mkdir()
  monkeypatch.setattr(timed.tempfile, "mkdtemp", lambda prefix: str(scratch))
  monkeypatch.setattr(timed, "quick_start_blocks", lambda readme: [block])
  monkeypatch.setattr(timed, "provenance", lambda command: {"commit": "c", "dirty": not dirty})
  log = tmp_path / "t.jsonl"
  assert timed.main(["--log", str(log), "--readme_block=1"]) == 0
  (record,) = [json.loads(line) for line in log.read_text().splitlines()]
  assert record["provenance"]["dirty"] is dirty
  assert record["provenance"]["commit"] == _git_head()      # the clone's HEAD, not "c"


def test_cpu_flags_are_the_simd_extensions_cpuinfo_lists(tmp_path):
  """The first ``flags`` line of cpuinfo, filtered to SIMD_FLAGS in that order (a hand-made
  cpuinfo; the real one is whatever this machine has)."""
  fake = tmp_path / "cpuinfo"
  fake.write_text("processor\t: 0\nmodel name\t: Test CPU\n"
                  "flags\t\t: fpu sse4_2 avx512f avx2 ht avx\nflags\t\t: amx_tile\n")
  assert provenance.cpu_flags(str(fake)) == ["sse4_2", "avx", "avx2", "avx512f"]
  assert provenance.cpu_flags(str(tmp_path / "absent")) == []
  assert set(provenance.provenance()["machine"]["cpu_flags"]) <= set(provenance.SIMD_FLAGS)
