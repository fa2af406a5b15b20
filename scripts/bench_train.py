"""Training-step speed of a config: ms/step and tokens/s, one row per attention impl.

  python scripts/bench_train.py --config=configs/lm.py:baby_gpt --impls=auto,reference,xla,blockwise
  python scripts/bench_train.py --config=configs/lm.py:baby_gpt --torch --json=docs/bench_train_torch.json
  python scripts/bench_train.py --config=configs/lm.py:baby_gpt --torch --train \
      --json=docs/bench_train_torch_2000.json

``--torch`` also times the same model in PyTorch (``scripts/torch_gpt.py``; PyTorch is an
optional benchmark dependency, never a runtime one) on the same batches, interleaved
with attnlab's steps in blocks of ``--block`` steps so both see the same machine load,
and prints the ratio of median ms/step (attnlab / PyTorch). ``--torch --train`` trains both
for the config's ``train.steps`` (nanoGPT's baby GPT: 2000) with the same batches and
learning-rate schedule, times every step, and reports both validation losses (mean over the
same ``train.eval_batches`` batches) with a loss-curve PNG beside the JSON.

Times the full jitted step (forward, backward, AdamW update) on real batches,
after ``--warmup`` untimed steps; reports the median and the mean of ``--steps``
steps, each synchronised on its loss as the trainer does, and the process's minor page
faults per timed step (``attnlab.runtime`` keeps freed memory so that a step reuses the
previous step's pages; with a ``MALLOC_*`` variable set it leaves glibc as set, e.g.
``MALLOC_MMAP_MAX_=65536``, glibc's default, shows the cost of remapping).
"""

from __future__ import annotations

import pathlib
import platform
import resource
import statistics
import sys
import time

from attnlab import runtime

runtime.configure()

import jax  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402
from tqdm import tqdm  # noqa: E402

from attnlab import config_lib, data  # noqa: E402
from attnlab.models import TransformerLM, num_params  # noqa: E402
from attnlab.engine.training import init_state, make_optimizer, make_train_step  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/lm.py:baby_gpt", "Config to time.")
_IMPLS = flags.DEFINE_list("impls", ["auto"], "Values of model.attention.impl to time.")
_STEPS = flags.DEFINE_integer("steps", 100, "Timed steps.")
_WARMUP = flags.DEFINE_integer("warmup", 5, "Untimed steps (the first compiles).")
_JSON = flags.DEFINE_string("json", None, "Also write the rows (and the machine) to this JSON file.")
_TORCH = flags.DEFINE_boolean("torch", False, "Also time the PyTorch equivalent, interleaved.")
_BLOCK = flags.DEFINE_integer("block", 10, "With --torch: steps per turn of each framework.")
_TRAIN = flags.DEFINE_boolean(
    "train", False, "With --torch: train both models for the config's train.steps (same "
    "batches, same schedule), timing every step, and report each one's validation loss.")
_SEEDS = flags.DEFINE_list(
    "seeds", [], "With --torch --train: train once per seed (train.seed: initial weights of "
    "both models and the batches); default the config's seed.")


def attnlab_runner(config):
  """(params, next_step() -> seconds, tokens/step) for an attnlab config."""
  cfg = config_lib.resolve(config)
  model = TransformerLM(cfg.model)
  tx = make_optimizer(cfg.train)
  box = {"state": init_state(model, tx, cfg), "i": 0}
  step_fn = make_train_step(model, tx, cfg.train.seed, dropout=cfg.model.dropout > 0)
  batch = data.make_batches(cfg).train

  def next_step():
    arrays = batch(box["i"])
    box["i"] += 1
    t0 = time.perf_counter()
    box["state"], m = step_fn(box["state"], *arrays)
    float(m["loss"])
    return time.perf_counter() - t0

  return num_params(box["state"]["params"]), next_step, cfg


def _torch_gpt():
  """scripts/torch_gpt.py, the module beside this one, loaded by its path (once)."""
  import importlib.util
  if "torch_gpt" not in sys.modules:
    spec = importlib.util.spec_from_file_location(
        "torch_gpt", pathlib.Path(__file__).resolve().with_name("torch_gpt.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules["torch_gpt"] = module
  return sys.modules["torch_gpt"]


def torch_runner(cfg):
  """The same for the PyTorch equivalent (scripts/torch_gpt.py), on the same batches."""
  import numpy as np
  import torch
  torch_gpt = _torch_gpt()
  torch.manual_seed(cfg.train.seed)
  model, _, step = torch_gpt.from_config(cfg)
  batch = data.make_batches(cfg).train
  box = {"i": 0}

  def next_step():
    tokens, targets = (torch.from_numpy(np.asarray(x, np.int64)) for x in batch(box["i"]))
    box["i"] += 1
    t0 = time.perf_counter()
    float(step(tokens, targets))
    return time.perf_counter() - t0

  return sum(p.numel() for p in model.parameters()), next_step, torch


def validation_losses(cfg, batches, eval_step, jax_params, torch_model,
                      torch) -> tuple[float, float]:
  """Mean loss of both models over the same ``train.eval_batches`` fixed validation batches."""
  import numpy as np
  from attnlab.engine.training import validation_loss
  ours = validation_loss(eval_step, jax_params, batches, cfg)
  torch_model.eval()
  with torch.no_grad():
    theirs = [float(torch_model(*(torch.from_numpy(np.asarray(x, np.int64))
                                  for x in batches.valid(i))))
              for i in range(cfg.train.eval_batches)]
  torch_model.train()
  return ours, float(np.mean(theirs))


def train_side_by_side(config, block: int, log_every: int = 100) -> dict:
  """Train attnlab's model and the PyTorch one for ``train.steps`` steps each, in
  alternating blocks of ``block`` steps on the same batches with the same learning-rate
  schedule (attnlab's, applied to PyTorch's AdamW step by step); every step is timed.
  Returns the median ms/step of each over all steps, their train losses every
  ``log_every`` steps and their validation losses every ``train.eval_every`` steps."""
  import numpy as np
  import torch
  torch_gpt = _torch_gpt()
  from attnlab.engine.training import learning_rate_schedule, make_eval_step
  cfg = config_lib.resolve(config)
  model = TransformerLM(cfg.model)
  tx = make_optimizer(cfg.train, cfg.model)
  state = init_state(model, tx, cfg)
  step_fn = make_train_step(model, tx, cfg.train.seed, dropout=cfg.model.dropout > 0)
  eval_step = make_eval_step(model)
  torch.manual_seed(cfg.train.seed)
  torch_model, opt, torch_step = torch_gpt.from_config(cfg)
  schedule = learning_rate_schedule(cfg.train)
  batches = data.make_batches(cfg)
  times = {"attnlab": [], "torch": []}
  curves = {"attnlab": [], "torch": []}
  valid = {"attnlab": [], "torch": []}

  def run_attnlab(i):
    nonlocal state
    arrays = batches.train(i)
    t0 = time.perf_counter()
    state, m = step_fn(state, *arrays)
    loss = float(m["loss"])
    times["attnlab"].append(time.perf_counter() - t0)
    return loss

  def run_torch(i):
    tokens, targets = (torch.from_numpy(np.asarray(x, np.int64)) for x in batches.train(i))
    for group in opt.param_groups:
      group["lr"] = float(schedule(i))             # the learning rate optax uses at step i
    t0 = time.perf_counter()
    loss = float(torch_step(tokens, targets))
    times["torch"].append(time.perf_counter() - t0)
    return loss

  steps = cfg.train.steps
  with tqdm(total=2 * steps, desc="attnlab and PyTorch steps") as bar:
    for start in range(0, steps, block):
      for name, run in (("attnlab", run_attnlab), ("torch", run_torch)):
        for i in range(start, min(start + block, steps)):
          loss = run(i)
          if (i + 1) % log_every == 0 or i == 0:
            curves[name].append((i + 1, loss))
          bar.update()
      done = min(start + block, steps)
      if done % cfg.train.eval_every == 0 or done == steps:
        ours, theirs = validation_losses(cfg, batches, eval_step, state["params"], torch_model,
                                         torch)
        valid["attnlab"].append((done, ours))
        valid["torch"].append((done, theirs))
        bar.write(f"step {done}: validation loss attnlab {ours:.4f}, PyTorch {theirs:.4f}")
  skip = min(5, steps - 1)                          # the first steps compile / warm up
  med = {k: 1000 * statistics.median(v[skip:]) for k, v in times.items()}
  return {"steps": steps, "tokens_per_step": cfg.train.batch_size * cfg.data.seq_len,
          "attnlab_median_ms": med["attnlab"], "torch_median_ms": med["torch"],
          "ratio": med["attnlab"] / med["torch"], "train_loss": curves, "valid_loss": valid,
          "attnlab_valid_loss": valid["attnlab"][-1][1], "torch_valid_loss": valid["torch"][-1][1],
          "torch": torch.__version__, "torch_threads": torch.get_num_threads()}


def seed_summary(rows: list[dict]) -> dict:
  """Mean and sample standard deviation over seeds of each framework's final validation
  loss, the mean gap (attnlab - PyTorch), and the ratio of the medians of every timed step."""
  import numpy as np
  out = {"seeds": [r["seed"] for r in rows]}
  for name in ("attnlab", "torch"):
    losses = np.array([r[f"{name}_valid_loss"] for r in rows])
    out[f"{name}_valid_mean"] = float(losses.mean())
    out[f"{name}_valid_sd"] = float(losses.std(ddof=1)) if len(rows) > 1 else float("nan")
  gaps = np.array([r["attnlab_valid_loss"] - r["torch_valid_loss"] for r in rows])
  out["valid_gap_mean"] = float(gaps.mean())
  out["valid_gap_sd"] = float(gaps.std(ddof=1)) if len(rows) > 1 else float("nan")
  out["ratio"] = float(np.median([r["ratio"] for r in rows]))
  return out


def plot_training(results: list[dict], path: pathlib.Path) -> None:
  """Train and validation loss of both frameworks against step (one line per seed)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 4))
  for i, result in enumerate(results):
    for name, color in (("attnlab", "C0"), ("torch", "C1")):
      label = "attnlab" if name == "attnlab" else "PyTorch"
      x, y = zip(*result["train_loss"][name])
      ax.plot(x, y, color=color, alpha=0.3, label=None if i else f"{label} train")
      x, y = zip(*result["valid_loss"][name])
      ax.plot(x, y, "o-", color=color, label=None if i else f"{label} validation")
  ax.set_xlabel("step")
  ax.set_ylabel("loss (nats per byte)")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def side_by_side(config, steps: int, warmup: int, block: int) -> dict:
  """Median ms/step of attnlab and PyTorch, timed in alternating blocks of steps."""
  n_params, jax_step, cfg = attnlab_runner(config)
  torch_params, torch_step, torch = torch_runner(cfg)
  for _ in range(warmup):
    jax_step()
    torch_step()
  times = {"attnlab": [], "torch": []}
  while len(times["attnlab"]) < steps:
    times["attnlab"] += [jax_step() for _ in range(block)]
    times["torch"] += [torch_step() for _ in range(block)]
  med = {k: 1000 * statistics.median(v) for k, v in times.items()}
  return {"params": n_params, "torch_params": torch_params,
          "tokens_per_step": cfg.train.batch_size * cfg.data.seq_len,
          "attnlab_median_ms": med["attnlab"], "torch_median_ms": med["torch"],
          "ratio": med["attnlab"] / med["torch"], "torch": torch.__version__,
          "torch_threads": torch.get_num_threads()}


def minor_faults() -> int:
  """Minor page faults of this process so far (pages it touched that had to be mapped)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


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
  times, faults = [], 0
  for i in range(warmup, warmup + steps):
    arrays = batch(i)
    f0, t0 = minor_faults(), time.perf_counter()
    state, m = step_fn(state, *arrays)
    float(m["loss"])
    times.append(time.perf_counter() - t0)
    faults += minor_faults() - f0
  tokens = cfg.train.batch_size * cfg.data.seq_len
  return {"params": n_params, "tokens_per_step": tokens, "compile_s": compile_s,
          "median_ms": 1000 * statistics.median(times), "mean_ms": 1000 * statistics.mean(times),
          "tokens_per_s": tokens / statistics.median(times), "page_faults_per_step": faults / steps}


def main(argv):
  del argv
  machine = dict(device=f"{jax.devices()[0].device_kind} x{jax.device_count()}",
                 processor=platform.processor() or platform.machine(), jax=jax.__version__,
                 python=platform.python_version(), steps=_STEPS.value, warmup=_WARMUP.value,
                 keeps_freed_memory=runtime.KEEPS_FREED_MEMORY)
  print(f"device: {machine['device']} ({machine['processor']}), jax {jax.__version__}, "
        f"{_STEPS.value} timed steps\n")
  if not _TORCH.value:
    print("| impl | params | tokens/step | compile s | median ms/step | mean ms/step | tokens/s "
          "| page faults/step |")
    print("|---|---|---|---|---|---|---|---|")
  rows, extra = [], {}
  if _TORCH.value and _TRAIN.value:
    config = _CONFIG.value.copy_and_resolve_references()
    config.model.attention.impl = _IMPLS.value[0]
    for seed in [int(s) for s in _SEEDS.value] or [config.train.seed]:
      config.train.seed = seed
      rows.append(dict(impl=_IMPLS.value[0], seed=seed,
                       **train_side_by_side(config, _BLOCK.value)))
    print("| seed | attnlab ms/step | PyTorch ms/step | ratio | attnlab validation loss "
          "| PyTorch validation loss |\n|---|---|---|---|---|---|")
    for r in rows:
      print(f"| {r['seed']} | {r['attnlab_median_ms']:.1f} | {r['torch_median_ms']:.1f} | "
            f"{r['ratio']:.2f} | {r['attnlab_valid_loss']:.4f} | {r['torch_valid_loss']:.4f} |")
    summary = extra["seed_summary"] = seed_summary(rows)
    print(f"\nvalidation loss over {len(rows)} seed(s): attnlab {summary['attnlab_valid_mean']:.4f}"
          f" (sd {summary['attnlab_valid_sd']:.4f}), PyTorch {summary['torch_valid_mean']:.4f} "
          f"(sd {summary['torch_valid_sd']:.4f}); median ratio of ms/step {summary['ratio']:.2f}")
    if _JSON.value:
      plot_training(rows, pathlib.Path(_JSON.value).with_suffix(".png"))
  elif _TORCH.value:
    print("| impl | params (attnlab / torch) | attnlab median ms/step | PyTorch median ms/step "
          "| ratio |")
    print("|---|---|---|---|---|")
    for impl in _IMPLS.value:
      config = _CONFIG.value.copy_and_resolve_references()
      config.model.attention.impl = impl
      r = dict(impl=impl, **side_by_side(config, _STEPS.value, _WARMUP.value, _BLOCK.value))
      rows.append(r)
      print(f"| {impl} | {r['params']:,} / {r['torch_params']:,} | {r['attnlab_median_ms']:.1f} "
            f"| {r['torch_median_ms']:.1f} | {r['ratio']:.2f}× |", flush=True)
  for impl in ([] if _TORCH.value else _IMPLS.value):
    config = _CONFIG.value.copy_and_resolve_references()
    config.model.attention.impl = impl
    r = dict(impl=impl, **time_steps(config, _STEPS.value, _WARMUP.value))
    rows.append(r)
    print(f"| {impl} | {r['params']:,} | {r['tokens_per_step']} | {r['compile_s']:.1f} | "
          f"{r['median_ms']:.1f} | {r['mean_ms']:.1f} | {r['tokens_per_s']:,.0f} | "
          f"{r['page_faults_per_step']:,.0f} |", flush=True)
  if _JSON.value:
    import json
    from attnlab.provenance import provenance
    result = dict(provenance=provenance(), machine=machine, rows=rows, **extra)
    pathlib.Path(_JSON.value).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
  app.run(main)
