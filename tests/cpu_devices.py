"""Start-up shared by the worker scripts that run JAX in a process of their own: the CPU
backend with ``count`` virtual devices (fixed when JAX starts, so this must run before
JAX is imported), the repository on ``sys.path``, and attnlab's runtime flags."""

import os
import sys


def use_cpu_devices(count: int) -> None:
  os.environ["JAX_PLATFORMS"] = "cpu"
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + f" --xla_force_host_platform_device_count={count}").strip()
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from attnlab import runtime
  runtime.configure()
