"""The workdir layout every runner and library shares: config, checkpoints, metrics, and
what each promises (docs/guarantees.md).

A training workdir holds:

- ``config.json``: the resolved config of the run (``write_or_check_config``); a relative
  ``data.tokenizer`` is read from the workdir (an imported model's ``tokenizer.json``);
- ``checkpoints/<step>/``: orbax checkpoints of ``{"step", "params", "opt_state"}``,
  written aside and renamed (atomic), the last ``train.keep_checkpoints`` kept
  (``Checkpointer``). Only finite parameters whose loss is finite are saved, so every
  checkpoint is usable; one that cannot be read (a truncated file) is reported, moved to
  ``checkpoints_unreadable/`` and the newest intact one is used instead;
- ``metrics.jsonl``: one JSON object per line (``step``, ``split``, ``loss``, ...)
  (``MetricsLog``), with TensorBoard events in ``tensorboard/`` and ``loss.png``; a torn
  last line (a write cut short) is dropped with a warning;
- ``provenance.jsonl``: one line per start or resume of the run: the step it started
  from, the command, commit, JAX version and machine (``record_start``);
- ``.lock``: held by the process writing the run (``lock``), so a second writer is
  refused with the holder's pid.

``restore_params`` reads the parameters of the newest intact checkpoint without building
an optimizer, so evaluation, generation and analysis need nothing from the trainer, and
``fingerprint`` names what a result was computed from, so cached results are reused only
for the same config, checkpoint and data.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import pathlib
import shutil
import sys

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

import attnlab
from attnlab import config_lib
from attnlab import data as data_lib
from attnlab.registry import ConfigError, Declared


class WorkdirError(ConfigError):
  """A workdir cannot be used as asked (in use, unwritable, full, not a run of this kind)."""


def warn(message: str) -> None:
  """A one-line warning on stderr (the run goes on)."""
  print(f"warning: {message}", file=sys.stderr, flush=True)


def describe_os_error(error: OSError, what: str, path) -> str:
  """One sentence for a failed write: disk full, read-only, permission, or the OS's words."""
  reason = {errno.ENOSPC: "the disk is full", errno.EROFS: "the file system is read-only",
            errno.EACCES: "permission denied", errno.EDQUOT: "the disk quota is exceeded"}.get(
                error.errno, error.strerror or str(error))
  return f"{what} {path} failed: {reason}"


# ----------------------------------------------------------------------------- config


def run_kind(raw: dict) -> str:
  """"lm" or "tasks": the kind of run a ``config.json`` (as a dict) describes."""
  return "tasks" if "task" in raw.get("data", {}) else "lm"


def load_config(workdir, kind: str | None = "lm") -> ml_collections.FrozenConfigDict:
  """The config a run in ``workdir`` was trained with, with every field declared today
  (fields added since the run was written take their defaults).

  ``kind``: the kind of run the caller reads ("lm": a language model, "tasks": an
  algorithmic-task model, None: either); another kind is a ``WorkdirError``.
  """
  path = pathlib.Path(workdir) / "config.json"
  if not path.exists():
    raise WorkdirError(f"--workdir={str(workdir)!r} is not a training workdir: {path} does "
                       f"not exist (train the run first)")
  try:
    raw = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise WorkdirError(f"{path} is not valid JSON ({e}); the workdir is damaged") from None
  if kind is not None and run_kind(raw) != kind:
    what = {"tasks": f"an algorithmic-task run (data.task={raw['data'].get('task')!r}), "
                     f"scored by python -m attnlab.tasks_train",
            "lm": "a language-model run"}[run_kind(raw)]
    raise WorkdirError(f"{workdir} holds {what}; this command reads "
                       f"{'language-model' if kind == 'lm' else 'algorithmic-task'} workdirs")
  tokenizer = Declared(raw.get("data", {}), data_lib.DATA_FIELDS).tokenizer
  inside = pathlib.Path(workdir) / tokenizer
  if tokenizer != "bytes" and not pathlib.Path(tokenizer).is_absolute() and inside.is_file():
    # a tokenizer.json named relative to the workdir (an import) moves with it; other
    # relative paths are relative to the current directory, as when the run was trained
    raw["data"]["tokenizer"] = str(inside.resolve())
  return ml_collections.FrozenConfigDict(config_lib.with_declared_defaults(raw))


def config_json(cfg) -> str:
  """The canonical text of a config (sorted keys): what ``config.json`` holds."""
  return json.dumps(json.loads(cfg.to_json()), indent=2, sort_keys=True)


def write_or_check_config(cfg, workdir: pathlib.Path, resuming: bool) -> None:
  """Write ``config.json``; when resuming a checkpoint, refuse a config whose run identity
  (``config_lib.run_identity``) differs from the saved one's.

  A field the run does not read (another pattern's window, a YaRN field without YaRN, the
  mesh: how to run, not what) may differ, and a field the saved config lacks may be present
  at its declared default (a variant added after the run was written).
  """
  path = workdir / "config.json"
  if resuming and path.exists():
    saved = config_lib.run_identity(json.loads(path.read_text()))
    now = config_lib.run_identity(cfg)
    diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    if diff:
      details = "; ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in diff)
      raise ConfigError(f"{workdir} holds a run with a different config ({details}); resuming "
                        f"it would not continue that run. Use a new --workdir.")
    return
  atomic_write(path, config_json(cfg))


def atomic_write(path: pathlib.Path, text: str) -> None:
  """Write ``text`` to ``path`` through a temporary file of this process and a rename."""
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  try:
    tmp.write_text(text)
    os.replace(tmp, path)
  except OSError as e:
    tmp.unlink(missing_ok=True)
    raise WorkdirError(describe_os_error(e, "writing", path)) from None


def record_start(workdir: pathlib.Path, step: int) -> None:
  """Append to ``provenance.jsonl`` who (re)started this run at ``step``, and where."""
  from attnlab.provenance import provenance
  line = json.dumps({"start_step": int(step), **provenance()}, sort_keys=True)
  try:
    with open(pathlib.Path(workdir) / "provenance.jsonl", "a") as f:
      f.write(line + "\n")
  except OSError as e:
    raise WorkdirError(describe_os_error(e, "writing", pathlib.Path(workdir))) from None


# ----------------------------------------------------------------------------- the lock


@contextlib.contextmanager
def lock(workdir: pathlib.Path, enabled: bool = True):
  """Hold ``workdir/.lock`` (an OS lock, released when the process ends, even by kill -9)
  for the block; a second holder is refused with a ``WorkdirError`` naming the first's pid.
  ``enabled=False`` (processes other than 0 of a multi-process run) holds nothing."""
  if not enabled:
    yield
    return
  path = pathlib.Path(workdir) / ".lock"
  try:
    handle = open(path, "a+")
  except OSError as e:
    raise WorkdirError(describe_os_error(e, "creating the lock file", path)) from None
  try:
    try:
      fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      handle.seek(0)
      holder = handle.read().strip() or "unknown"
      raise WorkdirError(f"{workdir} is in use by process {holder}, which holds {path}; wait "
                         f"for it to finish or use another --workdir") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    yield
  finally:
    handle.close()     # closing releases the lock


# ----------------------------------------------------------------------------- checkpoints


class Checkpointer:
  """Orbax CheckpointManager: atomic saves (written aside, then renamed), keeps the last few,
  and restores the newest checkpoint that can be read."""

  def __init__(self, directory: pathlib.Path, keep: int):
    self.directory = pathlib.Path(directory).absolute()
    self.keep = keep
    self._open()

  def _open(self):
    self.manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=self.keep, create=True))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, state) -> None:
    self.manager.save(step, args=ocp.args.StandardSave(state))
    self.manager.wait_until_finished()

  def restore(self, step: int, like, shardings=None):
    """Restore ``step`` with ``shardings`` (a tree like ``like``; default: this process's
    first device), whatever mesh or device saved the checkpoint."""
    if shardings is None:
      device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
      shardings = jax.tree.map(lambda _: device, like)
    abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s), like, shardings)
    return self.manager.restore(step, args=ocp.args.StandardRestore(abstract))

  def _set_aside(self, step: int, error: Exception) -> None:
    aside = self.directory.parent / f"{self.directory.name}_unreadable"
    warn(f"checkpoint step {step} in {self.directory} cannot be read "
         f"({type(error).__name__}: {' '.join(str(error).split())[:160]}); moved to {aside} "
         f"and using the newest intact checkpoint")
    self.manager.close()
    aside.mkdir(parents=True, exist_ok=True)
    target = aside / str(step)
    if target.exists():
      shutil.rmtree(target)
    shutil.move(str(self.directory / str(step)), str(target))
    self._open()

  def restore_newest(self, read) -> tuple[int, object] | tuple[None, None]:
    """``(step, read(step))`` of the newest checkpoint ``read`` succeeds on; unreadable
    newer ones are reported and set aside. (None, None) when there is no checkpoint;
    a ``WorkdirError`` when there are some but none can be read."""
    tried = False
    while (step := self.latest_step()) is not None:
      tried = True
      try:
        return step, read(step)
      except Exception as e:  # noqa: BLE001 - orbax raises many kinds for a damaged step
        self._set_aside(step, e)
    if tried:
      raise WorkdirError(f"no checkpoint in {self.directory} can be read (all were set aside "
                         f"in {self.directory.name}_unreadable/); the run must start again")
    return None, None

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def _read_params(manager, directory: pathlib.Path, step: int):
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  metadata = ocp.StandardCheckpointHandler().metadata(directory / str(step) / "default")
  tree = metadata.tree if hasattr(metadata, "tree") else metadata
  abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                          tree["params"])
  return manager.restore(step, args=ocp.args.PyTreeRestore(
      {"params": abstract},
      restore_args={"params": jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=device),
                                           abstract)},
      partial_restore=True))["params"]


def non_finite(params) -> str | None:
  """Where a parameter tree holds NaN or infinity (a sentence), or None."""
  bad = [jax.tree_util.keystr(path) for path, leaf in jax.tree_util.tree_leaves_with_path(params)
         if not bool(np.all(np.isfinite(np.asarray(leaf))))]
  return None if not bad else f"non-finite values in {', '.join(bad[:3])}" + (
      f" and {len(bad) - 3} more" if len(bad) > 3 else "")


def restore_params(workdir, kind: str = "lm"):
  """(resolved config, params of the newest intact checkpoint, its step) of a training
  workdir; a ``WorkdirError`` when there is none, or its parameters are not finite."""
  raw = load_config(workdir, kind)
  cfg = config_lib.resolve(raw) if kind == "lm" else raw
  checkpointer = Checkpointer(pathlib.Path(workdir) / "checkpoints", 3)
  try:
    step, params = checkpointer.restore_newest(
        lambda s: _read_params(checkpointer.manager, checkpointer.directory, s))
  finally:
    checkpointer.close()
  if step is None:
    raise WorkdirError(f"no checkpoint in {workdir}/checkpoints: train the run first")
  problem = non_finite(params)
  if problem:
    raise WorkdirError(f"the checkpoint at step {step} in {workdir} has {problem}; it cannot "
                       f"be evaluated")
  return cfg, params, step


# ----------------------------------------------------------------------------- fingerprints


def params_digest(params) -> str:
  """sha256 of a parameter tree's names, shapes, dtypes and bytes."""
  h = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    a = np.asarray(leaf)
    h.update(f"{jax.tree_util.keystr(path)}|{a.shape}|{a.dtype}|".encode())
    h.update(np.ascontiguousarray(a).tobytes())
  return h.hexdigest()


def data_digest(tokens) -> str:
  """sha256 of the tokens a result was computed on."""
  return hashlib.sha256(np.ascontiguousarray(np.asarray(tokens)).tobytes()).hexdigest()


def fingerprint(cfg, step: int, params, data: str = "") -> dict:
  """What a result was computed from: the resolved config's run identity (the fields the run
  reads, ``config_lib.run_identity``), the checkpoint (step and content), the data and
  attnlab's version. A cached result is reused only when this is equal."""
  identity = json.dumps(config_lib.run_identity(cfg), sort_keys=True)
  return {"config_sha256": hashlib.sha256(identity.encode()).hexdigest(),
          "checkpoint_step": int(step), "params_sha256": params_digest(params),
          "data_sha256": data, "attnlab": attnlab.__version__}


def fingerprint_change(old: dict | None, new: dict) -> str:
  """Which parts of a fingerprint changed (for the "recomputed because" line)."""
  if not old:
    return "no fingerprint recorded"
  changed = [k for k in new if old.get(k) != new[k]]
  return "changed: " + ", ".join(changed) if changed else ""


# ----------------------------------------------------------------------------- metrics


class MetricsLog:
  """``metrics.jsonl`` plus TensorBoard scalars. On resume, records after the restored step
  are dropped, so the file reads as if the run had never stopped. ``tensorboard=False``
  writes the JSON lines only."""

  def __init__(self, workdir: pathlib.Path, resume_step: int, tensorboard: bool = True):
    self.path = workdir / "metrics.jsonl"
    kept = [r for r in read_metrics(workdir, internal=True) if r["step"] <= resume_step]
    atomic_write(self.path, "".join(json.dumps(r) + "\n" for r in kept))
    self.tensorboard = None
    if tensorboard:
      from tensorboardX import SummaryWriter  # imported lazily: only training writes events
      self.tensorboard = SummaryWriter(str(workdir / "tensorboard"))

  def write(self, record: dict) -> None:
    try:
      with self.path.open("a") as f:
        f.write(json.dumps(record) + "\n")
    except OSError as e:
      raise WorkdirError(describe_os_error(e, "writing", self.path)) from None
    if self.tensorboard is not None:
      for key, value in record.items():
        if key not in ("step", "split") and isinstance(value, (int, float)):
          self.tensorboard.add_scalar(f"{record['split']}/{key}", value, record["step"])

  def close(self) -> None:
    if self.tensorboard is not None:
      self.tensorboard.close()


# metrics.jsonl records of this split are the training loop's own state, not measurements
LOOP_STATE = "loop_state"


def read_metrics(workdir, internal: bool = False) -> list[dict]:
  """The records of ``metrics.jsonl``; a torn last line (a write cut short by a kill) is
  dropped with a warning, a damaged line elsewhere is a ``WorkdirError``. The loop's own
  records (``LOOP_STATE``) are left out unless ``internal``."""
  path = pathlib.Path(workdir) / "metrics.jsonl"
  if not path.exists():
    return []
  lines = [line for line in path.read_text().splitlines() if line.strip()]
  records = []
  for i, line in enumerate(lines):
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:
      if i == len(lines) - 1:
        warn(f"the last line of {path} is incomplete (a write was cut short); dropped it")
      else:
        raise WorkdirError(f"{path} line {i + 1} is not JSON: {line[:80]!r}") from None
  return records if internal else [r for r in records if r.get("split") != LOOP_STATE]


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
  ax.set_ylabel("loss (nats per token)")
  ax.set_title(pathlib.Path(workdir).name)
  ax.grid(True, alpha=0.3)
  ax.legend()
  fig.tight_layout()
  path = pathlib.Path(workdir) / "loss.png"
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path
