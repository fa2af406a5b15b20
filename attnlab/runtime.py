"""Process-level runtime settings applied by attnlab's command-line entry points.

``configure()`` must run before JAX initialises its backend. It only adds an
XLA flag the user has not set: on XLA:CPU (jax 0.10) the YNNPACK dot fusion
is ~7% slower than the default Eigen path for the small matmuls of the models
trained here (baby-GPT step 48.4 -> 44.9 ms on 2 cores; scripts/bench_train.py).
"""

import os

_CPU_FLAGS = {"--xla_cpu_experimental_ynn_fusion_type": ""}


def configure() -> None:
  flags = os.environ.get("XLA_FLAGS", "")
  extra = [f"{k}={v}" for k, v in _CPU_FLAGS.items() if k not in flags]
  if extra:
    os.environ["XLA_FLAGS"] = " ".join([flags] + extra).strip()
