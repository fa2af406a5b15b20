"""The workdir layout every runner and library shares: config, checkpoints, metrics.

A training workdir holds:

- ``config.json``: the resolved config of the run (``write_or_check_config``);
- ``checkpoints/<step>/``: orbax checkpoints of ``{"step", "params", "opt_state"}``,
  written aside and renamed (atomic), the last ``train.keep_checkpoints`` kept
  (``Checkpointer``);
- ``metrics.jsonl``: one JSON object per line (``step``, ``split``, ``loss``, ...)
  (``MetricsLog``), with TensorBoard events in ``tensorboard/`` and ``loss.png``.

``restore_params`` reads the parameters of the newest checkpoint without building an
optimizer, so evaluation, generation and analysis need nothing from the trainer.
"""

from __future__ import annotations

import json
import os
import pathlib

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from attnlab import config_lib
from attnlab.registry import ConfigError


def load_config(workdir) -> ml_collections.FrozenConfigDict:
  """The config a run in ``workdir`` was trained with, with every field declared today
  (fields added since the run was written take their defaults)."""
  path = pathlib.Path(workdir) / "config.json"
  if not path.exists():
    raise FileNotFoundError(f"{path} not found: is {workdir} a training workdir?")
  return ml_collections.FrozenConfigDict(
      config_lib.with_declared_defaults(json.loads(path.read_text())))


def _flatten(d, prefix=""):
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def write_or_check_config(cfg, workdir: pathlib.Path, resuming: bool) -> None:
  """Write ``config.json``; when resuming a checkpoint, refuse a config that differs from it.

  The mesh may differ (it says how to run, not what), and a field the saved config lacks
  may be present at its declared default (a variant added after the run was written).
  """
  path = workdir / "config.json"
  current = json.loads(cfg.to_json())
  if resuming and path.exists():
    saved_raw = json.loads(path.read_text())
    saved = _flatten(saved_raw)
    upgraded = _flatten(json.loads(json.dumps(config_lib.with_declared_defaults(
        saved_raw).to_dict())))
    now = _flatten(current)
    diff = sorted(k for k in set(saved) | set(now)
                  if not k.startswith("mesh.")
                  and not (k not in saved and upgraded.get(k) == now.get(k))
                  and saved.get(k) != now.get(k))
    if diff:
      details = "; ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in diff)
      raise ConfigError(f"{workdir} holds a run with a different config ({details}); resuming "
                        f"it would not continue that run. Use a new --workdir.")
    return
  tmp = path.with_suffix(".json.tmp")
  tmp.write_text(json.dumps(current, indent=2, sort_keys=True))
  os.replace(tmp, path)


class Checkpointer:
  """Orbax CheckpointManager: atomic saves (written aside, then renamed), keeps the last few."""

  def __init__(self, directory: pathlib.Path, keep: int):
    self.manager = ocp.CheckpointManager(
        directory.absolute(), options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state) -> None:
    self.manager.save(step, args=ocp.args.StandardSave(state))

  def restore(self, step: int, like, shardings=None):
    """Restore with ``shardings`` (a tree like ``like``; default: this process's first
    device), whatever mesh or device saved the checkpoint."""
    if shardings is None:
      device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
      shardings = jax.tree.map(lambda _: device, like)
    abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s), like, shardings)
    return self.manager.restore(step, args=ocp.args.StandardRestore(abstract))

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def restore_params(workdir):
  """(resolved config, params of the newest checkpoint, its step) of a training workdir."""
  cfg = config_lib.resolve(load_config(workdir))
  checkpointer = Checkpointer(pathlib.Path(workdir) / "checkpoints", cfg.train.keep_checkpoints)
  try:
    step = checkpointer.latest_step()
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints: train the run first")
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    metadata = ocp.StandardCheckpointHandler().metadata(
        checkpointer.manager.directory / str(step) / "default")
    tree = metadata.tree if hasattr(metadata, "tree") else metadata
    abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                            tree["params"])
    restored = checkpointer.manager.restore(step, args=ocp.args.PyTreeRestore(
        {"params": abstract},
        restore_args={"params": jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=device),
                                             abstract)},
        partial_restore=True))
  finally:
    checkpointer.close()
  return cfg, restored["params"], step


class MetricsLog:
  """``metrics.jsonl`` plus TensorBoard scalars. On resume, records after the restored step
  are dropped, so the file reads as if the run had never stopped."""

  def __init__(self, workdir: pathlib.Path, resume_step: int):
    self.path = workdir / "metrics.jsonl"
    kept = [r for r in read_metrics(workdir) if r["step"] <= resume_step]
    tmp = self.path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    os.replace(tmp, self.path)
    from tensorboardX import SummaryWriter  # imported lazily: only training writes events
    self.tensorboard = SummaryWriter(str(workdir / "tensorboard"))

  def write(self, record: dict) -> None:
    with self.path.open("a") as f:
      f.write(json.dumps(record) + "\n")
    for key, value in record.items():
      if key not in ("step", "split") and isinstance(value, (int, float)):
        self.tensorboard.add_scalar(f"{record['split']}/{key}", value, record["step"])

  def close(self) -> None:
    self.tensorboard.close()


def read_metrics(workdir) -> list[dict]:
  path = pathlib.Path(workdir) / "metrics.jsonl"
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_metrics(workdir) -> pathlib.Path:
  """``loss.png``: train and valid loss against step, from ``metrics.jsonl``."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  records = read_metrics(workdir)
  fig, ax = plt.subplots(figsize=(6, 4))
  for split, style in (("train", "-"), ("valid", "o-")):
    rs = [r for r in records if r["split"] == split]
    if rs:
      ax.plot([r["step"] for r in rs], [r["loss"] for r in rs], style, label=f"{split} loss")
  ax.set_xlabel("step")
  ax.set_ylabel("loss (nats per byte)")
  ax.set_title(pathlib.Path(workdir).name)
  ax.grid(True, alpha=0.3)
  ax.legend()
  fig.tight_layout()
  path = pathlib.Path(workdir) / "loss.png"
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path
