"""Process-level runtime settings applied by attnlab's entry points (and the test suite).

``configure()`` must run before JAX initialises its backend. It adds only XLA
flags the user has not set in ``XLA_FLAGS``:

- ``--xla_gpu_deterministic_ops=true``: XLA:GPU reductions and scatters are
  otherwise nondeterministic, and a resumed run would drift from an
  uninterrupted one in the last bits. Set it to false yourself for speed.
- ``--xla_cpu_experimental_ynn_fusion_type=`` (empty): on XLA:CPU (jax 0.10) the
  YNNPACK dot fusion is slower than the default path for the small matmuls of
  the models trained here (baby-GPT step 48.4 -> 44.9 ms on 2 cores).

On Linux with glibc it also keeps freed heap memory in the process
(``keep_freed_memory``): XLA:CPU allocates each execution's temporaries in one
block, and glibc serves a block over 32 MiB with ``mmap`` and unmaps it on free
(and, from a worker thread's arena, any block over 64 MiB), so every training
step page-faults its temporaries in afresh (baby GPT: ~40 MB, 9,900 minor faults
per step, about a quarter of its time on 2 cores; blockwise sliding-window
attention at 16k tokens: ~30,000 faults per forward+backward). Setting any of
glibc's ``MALLOC_*`` variables (or ``GLIBC_TUNABLES`` with ``malloc``) leaves
the allocator as you set it.
"""

import ctypes
import os
import platform
import sys

_FLAGS = {
    "--xla_gpu_deterministic_ops": "true",
    "--xla_cpu_experimental_ynn_fusion_type": "",
}


# glibc's mallopt parameters (malloc.h) and the values set
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
TRIM_THRESHOLD_BYTES = 512 * 2**20     # free memory kept at the heap's top before returning it


def keep_freed_memory() -> bool:
  """Serve every allocation from glibc's main heap (no per-allocation ``mmap``; one arena,
  since a thread's own arena maps anything over 64 MiB separately) and keep up to
  ``TRIM_THRESHOLD_BYTES`` of freed memory there, so a block freed by one step is reused,
  already mapped, by the next. Returns whether it was applied (Linux with glibc, and no
  ``MALLOC_*`` setting of the user's); numerics are unaffected."""
  if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
    return False
  if any(name.startswith("MALLOC_") for name in os.environ):
    return False
  if "malloc" in os.environ.get("GLIBC_TUNABLES", ""):
    return False
  libc = ctypes.CDLL(None)
  settings = ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES), (_M_ARENA_MAX, 1))
  return all([bool(libc.mallopt(param, value)) for param, value in settings])


KEEPS_FREED_MEMORY = False   # whether configure() applied keep_freed_memory in this process


def configure() -> None:
  global KEEPS_FREED_MEMORY
  KEEPS_FREED_MEMORY = keep_freed_memory() or KEEPS_FREED_MEMORY
  flags = os.environ.get("XLA_FLAGS", "")
  extra = [f"{k}={v}" for k, v in _FLAGS.items() if k not in flags]
  if extra:
    os.environ["XLA_FLAGS"] = " ".join([flags] + extra).strip()
