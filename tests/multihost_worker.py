"""One process of a two-process training run on localhost (CPU backend, 4 virtual devices
per process, cross-process collectives over gloo). Used by tests/test_parallel.py; prints
one JSON line.

  python tests/multihost_worker.py WORKDIR PROCESS_ID PORT STEPS
"""

import json
import sys

from cpu_devices import use_cpu_devices

use_cpu_devices(4)

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")

from attnlab import parallel  # noqa: E402
from attnlab import workdir as workdir_lib  # noqa: E402
from attnlab.engine import training  # noqa: E402


def main(workdir, process_id, port, steps):
  from helpers import tiny_config
  cfg = tiny_config("rope", train__steps=int(steps), train__log_every=1,
                    train__eval_every=int(steps), train__checkpoint_every=2,
                    train__warmup_steps=1, mesh__data=4, mesh__fsdp=2,
                    mesh__coordinator_address=f"localhost:{port}", mesh__num_processes=2,
                    mesh__process_id=int(process_id))
  parallel.initialize_distributed(cfg)
  result = training.train_and_evaluate(cfg, workdir, progress=False)
  losses = {}
  if jax.process_index() == 0:
    losses = {r["step"]: r["loss"] for r in workdir_lib.read_metrics(workdir)
              if r["split"] == "train"}
  return {"process": jax.process_index(), "devices": jax.device_count(),
          "local_devices": jax.local_device_count(), "losses": losses,
          "final_step": int(result["metrics"]["step"])}


if __name__ == "__main__":
  print(json.dumps(main(*sys.argv[1:])))
