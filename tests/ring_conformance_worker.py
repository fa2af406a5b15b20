"""The conformance suite's impl checks for ``impl="ring"``, on 4 virtual CPU devices whose
mesh shards the sequence (the device count is fixed when JAX starts, so this runs in its
own process). Used by tests/test_conformance_impls.py (slow tier); prints one JSON line:
{"passed": [...], "skipped": {case: reason}, "failed": {case: message}}.

  python tests/ring_conformance_worker.py
"""

import json

from cpu_devices import use_cpu_devices

use_cpu_devices(4)

import jax  # noqa: E402

import conformance as C  # noqa: E402
from attnlab.attention import PATTERNS, SCORE_MODS, masks  # noqa: E402


def main():
  mesh = jax.make_mesh((1, 1, 1, 4), ("data", "fsdp", "tensor", "sequence"),
                       axis_types=(jax.sharding.AxisType.Auto,) * 4)
  cases = {f"pattern/{name}": (lambda name=name: (C.pattern_mask(name)[0], None))
           for name in PATTERNS.names()}
  cases.update({f"score_mod/{name}": (lambda name=name: (masks.causal(), SCORE_MODS.get(name)
                                                         .example(C.HEADS, C.BATCH, C.LENGTH,
                                                                  jax.random.PRNGKey(0))))
                for name in SCORE_MODS.names()})
  cases.update({f"operands/{name}": make for name, make in C.operand_cases().items()})
  # each case: a check returning the impl's reason to skip, or None when it passed
  checks = {case: (lambda case=case, make=make: C.check_impl("ring", *make(),
                                                             what=f"ring/{case}"))
            for case, make in cases.items()}
  checks.update({f"sinks/{name}": (lambda name=name, mask=mask: C.check_impl_sinks(
      "ring", mask, what=f"ring/sinks/{name}"))
      for name, mask in (("causal", masks.causal()), ("window", masks.sliding_window(6)))})
  report = {"passed": [], "skipped": {}, "failed": {}}
  with jax.set_mesh(mesh):
    for case, check in checks.items():
      try:
        reason = check()
      except Exception as e:  # noqa: BLE001 - every failure is reported by case
        report["failed"][case] = f"{type(e).__name__}: {str(e)[:500]}"
        continue
      if reason:
        report["skipped"][case] = reason
      else:
        report["passed"].append(case)
  print(json.dumps(report))


if __name__ == "__main__":
  main()
