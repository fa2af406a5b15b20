"""How attnlab's code is started: every ``python -m attnlab.<name>`` command is also an
installed console script (setup.cfg's ``[options.entry_points]``), and scripts, experiments
and tests import the installed package rather than editing ``sys.path``."""

import configparser
import importlib.metadata
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
# the python -m attnlab.<name> commands: one per module of attnlab/cli, each with a shim
# attnlab/<name>.py beside the packages
COMMANDS = sorted(p.stem for p in (ROOT / "attnlab" / "cli").glob("*.py")
                  if p.stem not in ("__init__", "common"))


def _console_scripts() -> dict:
  eps = importlib.metadata.distribution("attnlab").entry_points
  return {ep.name: ep for ep in eps if ep.group == "console_scripts"}


def test_every_command_is_a_console_script_of_the_installed_distribution():
  assert len(COMMANDS) >= 10, COMMANDS
  for command in COMMANDS:
    assert (ROOT / "attnlab" / f"{command}.py").exists(), f"no python -m attnlab.{command}"
  installed = _console_scripts()
  assert sorted(installed) == sorted(f"attnlab-{c.replace('_', '-')}" for c in COMMANDS), (
      "setup.cfg's console_scripts and the installed distribution differ from the "
      "python -m commands: edit [options.entry_points] and run `pip install -e .`")
  for command in COMMANDS:
    ep = installed[f"attnlab-{command.replace('_', '-')}"]
    assert ep.value == f"attnlab.{command}:run"
    assert callable(ep.load())


def test_setup_cfg_declares_what_is_installed():
  cfg = configparser.ConfigParser()
  cfg.read(ROOT / "setup.cfg")
  declared = dict(line.split(" = ") for line in
                  cfg["options.entry_points"]["console_scripts"].strip().splitlines())
  assert declared == {name: ep.value for name, ep in _console_scripts().items()}


def test_a_console_script_runs_like_python_m_and_reports_a_bad_flag_in_one_line(tmp_path):
  script = pathlib.Path(sys.executable).parent / "attnlab-memory"
  if not script.exists():
    pytest.skip(f"no console scripts beside {sys.executable} (not installed with pip here)")
  args = [f"--config={ROOT / 'configs' / 'lm.py'}:rope", "--contexts=1024"]
  run = lambda *cmd: subprocess.run([*map(str, cmd)], cwd=tmp_path, capture_output=True,  # noqa: E731
                                    text=True, timeout=120)
  done = run(script, *args)
  assert done.returncode == 0, done.stderr[-2000:]
  assert "| MQA | 1 |" in done.stdout
  assert done.stdout == run(sys.executable, "-m", "attnlab.memory", *args).stdout
  done = run(script, "--no_such_flag=1")
  assert done.returncode == 2 and done.stderr.startswith("error: ") \
      and "no_such_flag" in done.stderr and len(done.stderr.strip().splitlines()) == 1


SYS_PATH_EDIT = re.compile(r"sys\.path\.(insert|append|extend)\(|sys\.path\s*(\+=|=[^=])")


def test_no_code_edits_sys_path():
  """Scripts and experiments import the installed package (``pip install -e .``); a script
  shared by another is loaded by its path (``importlib.util.spec_from_file_location``)."""
  offenders = []
  for folder in ("attnlab", "pallas_kernels", "scripts", "experiments", "tests"):
    for path in sorted((ROOT / folder).rglob("*.py")):
      for number, line in enumerate(path.read_text().splitlines(), 1):
        if SYS_PATH_EDIT.search(line):
          offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
  offenders = [o for o in offenders if not o.startswith("tests/test_entry_points.py:")]
  assert not offenders, "\n".join(offenders)
