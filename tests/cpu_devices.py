"""Start-up shared by the worker scripts that run JAX in a process of their own: the CPU
backend with ``count`` virtual devices (fixed when JAX starts, so this must run before
JAX is imported) and attnlab's runtime flags. The workers import this file and
tests/helpers.py from their own folder (Python puts a script's folder first on its path);
helpers imports ``configs``, so their parent passes the repository root in ``PYTHONPATH``."""

import os


def use_cpu_devices(count: int) -> None:
  os.environ["JAX_PLATFORMS"] = "cpu"
  # The suite compiles at LLVM -O0 for speed (tests/conftest.py); the sharded programs run
  # at XLA's default level, as users run them: at -O0, ring attention's backward under
  # jax.checkpoint gives non-finite gradients for causal ALiBi on this XLA:CPU (see
  # docs/parallel.md), which the default level does not.
  flags = os.environ.get("XLA_FLAGS", "").replace("--xla_backend_optimization_level=0", "")
  os.environ["XLA_FLAGS"] = (flags + f" --xla_force_host_platform_device_count={count}").strip()
  from attnlab import runtime
  runtime.configure()
