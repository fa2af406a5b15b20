"""attnlab.runtime: the process settings its entry points apply.

The allocator setting is checked against the kernel's own count of minor page faults
(``getrusage``), in fresh processes: a jitted program whose temporaries exceed glibc's
32 MiB mmap threshold, run repeatedly, with and without ``runtime.configure()``.
Faults are counted call by call: the kept heap may still grow once after the warm-up
(a call's temporaries can be requested before the previous call's are freed, which
depends on the machine's load), so the claim is about the typical call, not every one.
"""

import json
import os
import statistics
import subprocess
import sys

import pytest

from attnlab import runtime

_PROBE = r"""
import json, resource, sys
if sys.argv[1] == "configure":
  from attnlab import runtime
  runtime.configure()
import jax, jax.numpy as jnp
f = jax.jit(lambda x, w: jnp.sin(x) @ w)      # sin(x): a temporary of x's size
faults = []                                    # per size, the minor faults of each call
for n in (3200, 4600):                         # 41 MB (over mmap's 32 MiB), 85 MB (over 64 MiB)
  x, w = jnp.ones((n, n)), jnp.ones((n, 8))
  for _ in range(20):                          # the heap settles in the first calls
    jax.block_until_ready(f(x, w))
  per_call = []
  for _ in range(10):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    jax.block_until_ready(f(x, w))
    per_call.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
  faults.append(per_call)
print(json.dumps(faults))
"""


def _faults_per_call(mode: str) -> list[list[int]]:
  """Minor page faults of each of 10 settled calls, for the 41 MB and the 85 MB program."""
  env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
  env["JAX_PLATFORMS"] = "cpu"
  out = subprocess.run([sys.executable, "-c", _PROBE, mode], env=env,
                       capture_output=True, text=True, timeout=300, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator only")
def test_configure_stops_the_per_call_page_faults_of_large_temporaries():
  plain = [statistics.median(calls) for calls in _faults_per_call("plain")]
  if min(plain) < 1000:
    pytest.skip(f"this allocator keeps large blocks mapped by itself ({plain} faults/call)")
  # 41 MB of fresh pages is ~10,000 faults of 4 KiB; kept memory is reused without any
  assert plain[0] > 5000 and plain[1] > 10000
  for calls in _faults_per_call("configure"):
    assert statistics.median(calls) < 50, calls
    assert sum(c >= 50 for c in calls) <= 2, calls   # at most a growth or two, not every call


def test_a_users_malloc_setting_is_left_alone(monkeypatch):
  monkeypatch.setenv("MALLOC_MMAP_MAX_", "65536")
  assert runtime.keep_freed_memory() is False
  monkeypatch.setattr(runtime, "KEEPS_FREED_MEMORY", False)
  runtime.configure()
  assert runtime.KEEPS_FREED_MEMORY is False
  monkeypatch.delenv("MALLOC_MMAP_MAX_")
  monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1")
  assert runtime.keep_freed_memory() is False


def test_configure_adds_only_xla_flags_the_user_did_not_set(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_gpu_deterministic_ops=false")
  runtime.configure()
  flags = os.environ["XLA_FLAGS"].split()
  assert "--xla_gpu_deterministic_ops=false" in flags
  assert "--xla_gpu_deterministic_ops=true" not in flags
  assert "--xla_cpu_experimental_ynn_fusion_type=" in flags
