"""Process-level runtime settings applied by attnlab's entry points (and the test suite).

``configure()`` must run before JAX initialises its backend. It adds only XLA
flags the user has not set in ``XLA_FLAGS``:

- ``--xla_gpu_deterministic_ops=true``: XLA:GPU reductions and scatters are
  otherwise nondeterministic, and a resumed run would drift from an
  uninterrupted one in the last bits. Set it to false yourself for speed.
- ``--xla_cpu_experimental_ynn_fusion_type=`` (empty): on XLA:CPU (jax 0.10) the
  YNNPACK dot fusion is slower than the default path for the small matmuls of
  the models trained here (measured on baby GPT, 2 cores).

On Linux with glibc it also keeps freed heap memory in the process
(``keep_freed_memory``): XLA:CPU allocates each execution's temporaries in one
block, and glibc serves a block over 32 MiB with ``mmap`` and unmaps it on free
(and, from a worker thread's arena, any block over 64 MiB), so every training
step page-faults its temporaries in afresh (tens of megabytes per baby-GPT step;
the fault counts are measured by ``scripts/bench_train.py``). Setting any of
glibc's ``MALLOC_*`` variables (or ``GLIBC_TUNABLES`` with ``malloc``) leaves
the allocator as you set it.

It also keeps the one list of module-level caches of compiled programs (and of other
results decided while tracing). What a trace decides (``impl='auto'``'s choice, a
kernel's trace-time checks) depends on the backend and the mesh at trace time, so a
cache made with ``compiled_cache`` keys on ``trace_context()`` as well as on its
arguments, and ``clear_compiled_caches()`` empties every such cache and JAX's own.
"""

import ctypes
import functools
import os
import platform
import sys
import weakref

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


# ----------------------------------------------------------------------------- compiled caches

_COMPILED_CACHES: "weakref.WeakSet" = weakref.WeakSet()   # the lru_caches compiled_cache made


def trace_context() -> tuple:
  """What a trace may read besides its arguments: ``(jax.default_backend(), the abstract
  mesh's axes as (name, size, type) triples)`` (no axes outside ``jax.set_mesh``).
  ``impl='auto'`` chooses by the backend and by how the mesh splits the sequence."""
  import jax   # here, not at import: configure() runs before JAX starts its backend
  mesh = jax.sharding.get_abstract_mesh()
  axes = tuple(zip(mesh.axis_names, mesh.axis_sizes, map(str, mesh.axis_types)))
  return jax.default_backend(), axes


def compiled_cache(maxsize: int | None = 128):
  """``functools.lru_cache(maxsize)`` for a function that builds (or traces) a program,
  keyed on ``trace_context()`` as well as the arguments, so a program traced under one
  backend or mesh is never reused under another; registered, so
  ``clear_compiled_caches()`` empties it. The decorated function keeps ``cache_clear``,
  ``cache_info`` and ``__wrapped__`` (the undecorated function, for unhashable arguments).
  """

  def decorate(fn):
    @functools.lru_cache(maxsize=maxsize)
    def cached(context, *args, **kwargs):
      del context                         # a cache key only
      return fn(*args, **kwargs)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
      return cached(trace_context(), *args, **kwargs)

    wrapper.cache_clear = cached.cache_clear
    wrapper.cache_info = cached.cache_info
    _COMPILED_CACHES.add(cached)
    return wrapper

  return decorate


def clear_compiled_caches() -> None:
  """Empty every ``compiled_cache`` and JAX's own caches (``jax.clear_caches()``), so the
  next call traces again and reads what tracing reads (impl tables, the backend, the mesh,
  anything a test patched) afresh."""
  for cache in list(_COMPILED_CACHES):
    cache.cache_clear()
  if "jax" in sys.modules:              # nothing of JAX's to clear before it is imported
    sys.modules["jax"].clear_caches()
