"""Shared pytest setup: JAX on CPU unless the caller chose a platform, and the same
XLA flags as attnlab's command-line entry points (deterministic GPU reductions)."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from attnlab import runtime  # noqa: E402  (must precede any JAX computation)

runtime.configure()
