"""Time a command and append what happened to a JSONL log, with provenance.

  python scripts/timed.py --log=docs/timings/quickstart.jsonl --readme_block=1
  python scripts/timed.py --log=docs/timings/commands.jsonl -- python -m attnlab.sweep ...

``--readme_block=K`` runs the K-th ``bash`` block of the README's Quick start verbatim in
a fresh ``git clone`` of this checkout's HEAD, as a new user would: ``env -i`` with a minimal
PATH, ``CI=true``, no stdin, no ``../shared`` beside it. Otherwise the command after ``--``
runs here, in the current directory and environment.

Each run appends one line: the command, the wall seconds, the exit status, the pytest
summary when the output has one (``914 passed, 6 skipped in 1059.20s``), the time it
started, and ``attnlab.provenance`` (commit, JAX, Python, machine). Wall times quoted in the
README are rendered from these lines by ``attnlab.pages`` (``tests/test_pages.py``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time

from attnlab.provenance import provenance

ROOT = pathlib.Path(__file__).resolve().parents[1]

PYTEST_SUMMARY = re.compile(r"^=+ (.*?) in ([\d.]+)s(?: \([\d:]+\))? =+$", re.M)


def quick_start_blocks(readme: str) -> list[str]:
  """The ``bash`` code blocks of the README's ``## Quick start`` section, in order."""
  section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
  return [b.strip() for b in re.findall(r"```bash\n(.*?)```", section, re.S)]


def pytest_summary(output: str) -> dict | None:
  """``{"summary": "914 passed, 6 skipped", "seconds": 1059.2}`` from pytest's last line."""
  found = PYTEST_SUMMARY.findall(output)
  if not found:
    return None
  summary, seconds = found[-1]
  return {"summary": summary, "seconds": float(seconds)}


def run(command: str, cwd: pathlib.Path, env: dict | None) -> tuple[int, float, str]:
  """Run ``command`` under bash, its output shown as it comes; (status, seconds, output)."""
  start = time.perf_counter()
  proc = subprocess.Popen(["bash", "-c", command], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  lines = []
  for line in proc.stdout:
    sys.stdout.write(line)
    lines.append(line)
  status = proc.wait()
  return status, time.perf_counter() - start, "".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--log", required=True, help="JSONL file to append the record to")
  parser.add_argument("--readme_block", type=int, default=0,
                      help="run the README Quick start's K-th bash block in a fresh clone")
  parser.add_argument("command", nargs="*", help="the command to time (after --)")
  args = parser.parse_args(argv)
  if bool(args.readme_block) == bool(args.command):
    parser.error("give exactly one of --readme_block=K or a command after --")

  started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
  record: dict = {"started": started}
  if args.readme_block:
    blocks = quick_start_blocks((ROOT / "README.md").read_text())
    if not 1 <= args.readme_block <= len(blocks):
      parser.error(f"--readme_block={args.readme_block}: the Quick start has {len(blocks)} blocks")
    command = blocks[args.readme_block - 1]
    scratch = pathlib.Path(tempfile.mkdtemp(prefix="attnlab_timed_"))
    clone = scratch / "attnlab"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    env = {"HOME": str(scratch / "home"), "PATH": "/usr/local/bin:/usr/bin:/bin", "CI": "true"}
    status, seconds, output = run(command, clone, env)
    (scratch / "output.log").write_text(output)
    venv_python = clone / ".venv" / "bin" / "python"
    if venv_python.exists():
      versions = subprocess.run(
          [str(venv_python), "-c", "import platform, jax; print(platform.python_version(), "
           "jax.__version__)"], capture_output=True, text=True, env=env)
      if versions.returncode == 0:
        record["venv"] = dict(zip(("python", "jax"), versions.stdout.split()))
    record.update(readme_block=args.readme_block, where="fresh clone, env -i, CI=true, no stdin")
    print(f"output kept in {scratch / 'output.log'}")
  else:
    command = " ".join(args.command)
    status, seconds, output = run(command, pathlib.Path.cwd(), dict(os.environ))
  record.update(command=command, wall_seconds=round(seconds, 1), returncode=status,
                provenance=provenance(command=command))
  if args.readme_block:   # what ran is the clone, whatever this checkout holds by now
    git = lambda *a: subprocess.run(["git", *a], cwd=clone, capture_output=True,  # noqa: E731
                                    text=True).stdout.strip()
    record["provenance"].update(commit=git("rev-parse", "HEAD"),
                                dirty=bool(git("status", "--porcelain", "--untracked-files=no")))
  if (summary := pytest_summary(output)) is not None:
    record["pytest"] = summary
  log = pathlib.Path(args.log)
  log.parent.mkdir(parents=True, exist_ok=True)
  with open(log, "a") as f:
    f.write(json.dumps(record, sort_keys=True) + "\n")
  print(f"{command[:60]}...: {seconds:.0f} s, exit {status}; appended to {log}")
  return status


if __name__ == "__main__":
  sys.exit(main())
