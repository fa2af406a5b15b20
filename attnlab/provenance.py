"""Where a result came from: the command, the commit, the JAX version and the machine.

Every results file a script or study writes carries ``provenance()`` so that a number in
the documentation can be traced to what produced it (``tests/test_docs.py``,
``tests/test_results_reproduce.py``).
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import subprocess
import sys

_REPO = pathlib.Path(__file__).resolve().parents[1]


def _git(*args: str) -> str | None:
  try:
    done = subprocess.run(["git", *args], cwd=_REPO, capture_output=True, text=True, timeout=10)
  except (OSError, subprocess.SubprocessError):
    return None
  return done.stdout.strip() if done.returncode == 0 else None


def cpu_model() -> str:
  """The processor's model name (Linux), else what ``platform`` knows."""
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


# the instruction-set extensions numpy and XLA:CPU choose their kernels by (/proc/cpuinfo names)
SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512dq", "avx512bw",
              "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16")


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> list[str]:
  """The ``SIMD_FLAGS`` this processor has, in that order (Linux; empty without cpuinfo)."""
  try:
    for line in pathlib.Path(cpuinfo).read_text().splitlines():
      if line.startswith("flags"):
        have = set(line.split(":", 1)[1].split())
        return [f for f in SIMD_FLAGS if f in have]
  except OSError:
    pass
  return []


def provenance(command: str | None = None) -> dict:
  """``{command, commit, dirty, jax, python, machine}`` for the running process.

  ``commit`` is the checkout's HEAD (None outside a git checkout); ``dirty`` says whether
  tracked files differed from it when the result was written.
  """
  import jax
  if command is None:
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    program = (f"-m {spec.name.removesuffix('.__main__')}" if spec is not None and spec.name
               else (pathlib.Path(sys.argv[0]).as_posix() if sys.argv and sys.argv[0] else "-c"))
    command = " ".join(["python", program, *sys.argv[1:]])
  commit = _git("rev-parse", "HEAD")
  status = _git("status", "--porcelain", "--untracked-files=no")
  return {
      "command": command,
      "commit": commit,
      "dirty": bool(status) if status is not None else None,
      "jax": jax.__version__,
      "python": platform.python_version(),
      "machine": {"cpu": cpu_model(), "cpu_flags": cpu_flags(), "cores": os.cpu_count(),
                  "device": f"{jax.devices()[0].device_kind} x{jax.device_count()}",
                  "backend": jax.default_backend()},
  }


def sidecar_path(results: pathlib.Path) -> pathlib.Path:
  """``results.json`` -> ``results.provenance.json`` beside it."""
  results = pathlib.Path(results)
  return results.with_name(results.stem + ".provenance.json")


def write_sidecar(results: pathlib.Path, command: str | None = None) -> pathlib.Path:
  """Write ``provenance()`` beside a results file whose own format has no room for it
  (a JSON list of records), as ``{"results": name, "provenance": {...}}``."""
  path = sidecar_path(results)
  path.write_text(json.dumps({"results": pathlib.Path(results).name,
                              "provenance": provenance(command)}, indent=2, sort_keys=True))
  return path
