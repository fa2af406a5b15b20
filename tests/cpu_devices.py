"""Start-up shared by the worker scripts that run JAX in a process of their own: the CPU
backend with ``count`` virtual devices (fixed when JAX starts, so this must run before
JAX is imported), the repository on ``sys.path``, and attnlab's runtime flags."""

import os
import sys


def use_cpu_devices(count: int) -> None:
  os.environ["JAX_PLATFORMS"] = "cpu"
  # The suite compiles at LLVM -O0 for speed (tests/conftest.py); the sharded programs run
  # at XLA's default level, as users run them: at -O0, ring attention's backward under
  # jax.checkpoint gives non-finite gradients for causal ALiBi on this XLA:CPU (see
  # docs/parallel.md), which the default level does not.
  flags = os.environ.get("XLA_FLAGS", "").replace("--xla_backend_optimization_level=0", "")
  os.environ["XLA_FLAGS"] = (flags + f" --xla_force_host_platform_device_count={count}").strip()
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from attnlab import runtime
  runtime.configure()
