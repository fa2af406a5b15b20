"""Training-step speed of a config: ms/step and tokens/s, one row per attention impl.

  python scripts/bench_train.py --config=configs/lm.py:baby_gpt --impls=auto,reference,xla,blockwise

Times the full jitted step (forward, backward, AdamW update) on real batches,
after ``--warmup`` untimed steps; reports the median and the mean of ``--steps``
steps, each synchronised on its loss as the trainer does.
"""

from __future__ import annotations

import pathlib
import platform
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from attnlab import runtime  # noqa: E402

runtime.configure()

import jax  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from attnlab import config_lib, data  # noqa: E402
from attnlab.models import TransformerLM, num_params  # noqa: E402
from attnlab.engine.training import init_state, make_optimizer, make_train_step  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/lm.py:baby_gpt", "Config to time.")
_IMPLS = flags.DEFINE_list("impls", ["auto"], "Values of model.attention.impl to time.")
_STEPS = flags.DEFINE_integer("steps", 100, "Timed steps.")
_WARMUP = flags.DEFINE_integer("warmup", 5, "Untimed steps (the first compiles).")
_JSON = flags.DEFINE_string("json", None, "Also write the rows (and the machine) to this JSON file.")


def time_steps(config, steps: int, warmup: int) -> dict:
  cfg = config_lib.resolve(config)
  model = TransformerLM(cfg.model)
  tx = make_optimizer(cfg.train)
  state = init_state(model, tx, cfg)
  n_params = num_params(state["params"])
  step_fn = make_train_step(model, tx, cfg.train.seed, dropout=cfg.model.dropout > 0)
  batch = data.make_batches(cfg).train
  t0 = time.perf_counter()
  state, m = step_fn(state, *batch(0))
  float(m["loss"])
  compile_s = time.perf_counter() - t0
  for i in range(1, warmup):
    state, m = step_fn(state, *batch(i))
    float(m["loss"])
  times = []
  for i in range(warmup, warmup + steps):
    arrays = batch(i)
    t0 = time.perf_counter()
    state, m = step_fn(state, *arrays)
    float(m["loss"])
    times.append(time.perf_counter() - t0)
  tokens = cfg.train.batch_size * cfg.data.seq_len
  return {"params": n_params, "tokens_per_step": tokens, "compile_s": compile_s,
          "median_ms": 1000 * statistics.median(times), "mean_ms": 1000 * statistics.mean(times),
          "tokens_per_s": tokens / statistics.median(times)}


def main(argv):
  del argv
  machine = dict(device=f"{jax.devices()[0].device_kind} x{jax.device_count()}",
                 processor=platform.processor() or platform.machine(), jax=jax.__version__,
                 python=platform.python_version(), steps=_STEPS.value, warmup=_WARMUP.value)
  print(f"device: {machine['device']} ({machine['processor']}), jax {jax.__version__}, "
        f"{_STEPS.value} timed steps\n")
  print("| impl | params | tokens/step | compile s | median ms/step | mean ms/step | tokens/s |")
  print("|---|---|---|---|---|---|---|")
  rows = []
  for impl in _IMPLS.value:
    config = _CONFIG.value.copy_and_resolve_references()
    config.model.attention.impl = impl
    r = dict(impl=impl, **time_steps(config, _STEPS.value, _WARMUP.value))
    rows.append(r)
    print(f"| {impl} | {r['params']:,} | {r['tokens_per_step']} | {r['compile_s']:.1f} | "
          f"{r['median_ms']:.1f} | {r['mean_ms']:.1f} | {r['tokens_per_s']:,.0f} |", flush=True)
  if _JSON.value:
    import json
    from attnlab.provenance import provenance
    pathlib.Path(_JSON.value).write_text(json.dumps(dict(provenance=provenance(),
                                                         machine=machine, rows=rows), indent=1))


if __name__ == "__main__":
  app.run(main)
