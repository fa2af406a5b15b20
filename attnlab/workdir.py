"""The workdir layout every runner and library shares: config, checkpoints, metrics, and
what each promises (docs/guarantees.md).

A training workdir holds:

- ``config.json``: the resolved config of the run (``write_or_check_config``); a relative
  ``data.tokenizer`` is read from the workdir (an imported model's ``tokenizer.json``);
- ``checkpoints/<step>/``: orbax checkpoints of ``{"step", "params", "opt_state"}``
  (item ``default``) and their record (item ``attnlab``: a sha256 of every array, the probe
  loss), written aside and renamed (atomic), the last ``train.keep_checkpoints`` kept
  (``Checkpointer``). Only usable states are saved (``engine.loop.save_if_usable``); a
  checkpoint that cannot be read or whose arrays differ from their checksums is reported
  and skipped; the writer (and only the writer) moves it to ``checkpoints_unreadable/``;
- ``data.json``: what the run was trained on (``check_data``), so a resume on other data is
  refused;
- ``metrics.jsonl``: one JSON object per line (``step``, ``split``, ``loss``, ...)
  (``MetricsLog``), with TensorBoard events in ``tensorboard/`` and ``loss.png``; a torn
  last line (a write cut short) is dropped with a warning;
- ``provenance.jsonl``: one line per start or resume of the run: the step it started
  from, the command, commit, JAX version and machine (``record_start``);
- ``.lock``: held by the process writing the run (``lock``), so a second writer is
  refused with the holder's pid.

``restore_params`` reads the parameters of the newest intact checkpoint without building
an optimizer and without writing anything (readers never change a run, even while a trainer
writes it), so evaluation, generation and analysis need nothing from the trainer, and
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
import re
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


# What an OS error reported in an exception's text means (tensorstore's messages carry the
# OS's words and often [os_error_code='N']).
_OS_WORDS = {"No space left on device": errno.ENOSPC, "Read-only file system": errno.EROFS,
             "Permission denied": errno.EACCES, "Disk quota exceeded": errno.EDQUOT,
             "No such file or directory": errno.ENOENT, "Not a directory": errno.ENOTDIR,
             "Is a directory": errno.EISDIR}


def os_error_in_text(error: BaseException) -> OSError | None:
  """The OS error an orbax / tensorstore exception reports in its text (tensorstore raises
  ``ValueError`` / ``RuntimeError`` whose message names the file and the OS's words), as an
  ``OSError`` with that path; None when the text reports none."""
  text = str(error)
  code = re.search(r"\[os_error_code='(\d+)'\]", text)
  number = int(code.group(1)) if code else next(
      (n for words, n in _OS_WORDS.items() if words in text), None)
  if number is None:
    return None
  found = (re.search(r'local file "([^"]+)"', text) or re.search(r'Failed writing: "([^"]+)"', text)
           or re.search(r'"(/[^"]+)"', text))
  return OSError(number, os.strerror(number), found.group(1) if found else None)


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


def write_or_check_config(cfg, workdir: pathlib.Path, resuming: bool | None = None) -> None:
  """Write ``config.json``, or refuse a config whose run identity (``config_lib.run_identity``)
  differs from the saved one's, whatever the state of the checkpoints (``resuming`` is
  ignored: a workdir holds one run).

  A field the run does not read (another pattern's window, a YaRN field without YaRN, the
  mesh: how to run, not what) may differ, and a field the saved config lacks may be present
  at its declared default (a variant added after the run was written).
  """
  del resuming
  path = workdir / "config.json"
  if path.exists():
    try:
      saved = config_lib.run_identity(json.loads(path.read_text()))
    except json.JSONDecodeError as e:
      raise WorkdirError(f"{path} is not valid JSON ({e}); the workdir is damaged") from None
    now = config_lib.run_identity(cfg)
    diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    if diff:
      details = "; ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in diff)
      if "model.position.max_len" in diff and "data.task" in now:
        details += " (a task run sizes a learned position table from eval.lengths)"
      raise ConfigError(f"{workdir} holds a run with a different config ({details}); resuming "
                        f"it would not continue that run. Use a new --workdir.")
    return
  steps = checkpoint_steps(workdir / "checkpoints")
  if steps or read_metrics(workdir):
    what = f"checkpoints (steps {', '.join(map(str, steps))})" if steps else "metrics.jsonl"
    raise WorkdirError(f"{workdir} holds {what} but no config.json: the config they were "
                       f"trained with is unknown, so nothing can resume them. Put the run's "
                       f"config.json back, or use a new --workdir")
  atomic_write(path, config_json(cfg))


# ----------------------------------------------------------------------------- run state


def _first_checkpoint_step(raw: dict) -> int:
  train = Declared(raw.get("train", {}), config_lib.TRAIN_FIELDS)
  return min(int(train.checkpoint_every), int(train.steps))


def progress_on_disk(workdir) -> str | None:
  """Why the run in ``workdir`` must not start again from step 0 (a sentence), or None.

  Evidence that a checkpoint was written: set-aside checkpoints, a start from a checkpoint
  in ``provenance.jsonl``, or metrics past the first checkpoint's step (the loop writes a
  checkpoint before it goes on). Metrics of a run stopped before its first checkpoint are
  no such evidence: training again from step 0 writes them again, identically.
  """
  workdir = pathlib.Path(workdir)
  aside = workdir / "checkpoints_unreadable"
  if aside.is_dir() and any(aside.iterdir()):
    names = sorted(p.name for p in aside.iterdir())
    return f"its checkpoint(s) {', '.join(names)} were set aside in {aside} as unreadable"
  provenance = workdir / "provenance.jsonl"
  if provenance.exists():
    for line in provenance.read_text().splitlines():
      try:
        step = json.loads(line).get("start_step", 0)
      except json.JSONDecodeError:
        continue
      if step:
        return f"it was resumed from its checkpoint at step {step} before ({provenance})"
  config = workdir / "config.json"
  steps = [r["step"] for r in read_metrics(workdir, internal=True) if "step" in r]
  if steps and config.exists():
    first = _first_checkpoint_step(json.loads(config.read_text()))
    if max(steps) > first:
      return (f"its metrics.jsonl reaches step {max(steps)}, past its first checkpoint "
              f"(step {first})")
  return None


def refuse_silent_restart(workdir, start: int, restart: bool) -> None:
  """At the start of training: a run that is starting from step 0 although it wrote a
  checkpoint before is refused, unless ``restart`` (``--restart``), which keeps the earlier
  metrics under ``restarts/<n>/``. Nothing is changed when refused."""
  if start:
    return
  why = progress_on_disk(workdir)
  if why is None:
    return
  if not restart:
    raise WorkdirError(f"{workdir} has no readable checkpoint, but {why}: training from step 0 "
                       f"would overwrite that run. Nothing was changed. Pass --restart to "
                       f"train it again from step 0 (its metrics are kept in "
                       f"{pathlib.Path(workdir) / 'restarts'}/), or use a new --workdir")
  workdir = pathlib.Path(workdir)
  n = 1
  while (workdir / "restarts" / str(n)).exists():
    n += 1
  keep = workdir / "restarts" / str(n)
  try:
    keep.mkdir(parents=True)
    for name in ("metrics.jsonl", "loss.png", "train.json", "eval.json"):
      if (workdir / name).exists():
        os.replace(workdir / name, keep / name)
  except OSError as e:
    raise WorkdirError(describe_os_error(e, "moving the earlier metrics to", keep)) from None
  warn(f"--restart: training {workdir} again from step 0 ({why}); the earlier metrics are in "
       f"{keep}")


# ----------------------------------------------------------------------------- data identity


def tree_digest(*arrays) -> str:
  """sha256 of arrays' shapes, dtypes and bytes (a cheap fingerprint of generated data)."""
  h = hashlib.sha256()
  for a in jax.tree.leaves(arrays):
    a = np.ascontiguousarray(np.asarray(a))
    h.update(f"{a.shape}|{a.dtype}|".encode())
    h.update(a.tobytes())
  return h.hexdigest()


def _same_data(a: dict, b: dict) -> bool:
  """Whether two data identities are the same data: the same bytes and the same tokenizer
  (by content: a file moved, a workdir moved with its tokenizer, or another Python whose
  standard library reads the same is the same data), split into the same documents
  (``documents``: absent without ``data.documents``)."""
  tokenizer = lambda d: d.get("tokenizer_sha256") or d.get("tokenizer")  # noqa: E731
  return (a.get("sha256") == b.get("sha256") and tokenizer(a) == tokenizer(b)
          and a.get("documents") == b.get("documents"))


def check_data(workdir, identity: dict, step: int, accept_change: bool = False) -> None:
  """Record what the run trains on (``data.json``, at its first step) and refuse to resume
  it on other data: a changed file, tokenizer or generator is a ``WorkdirError`` naming the
  field and both fingerprints, unless ``accept_change`` (``--accept_data_change``), which
  records the new data and the step it starts at.

  ``identity``: ``{"field": the config field naming the data, "source", "sha256", ...}``
  (``data.Batches.identity``); for the built-in corpus also ``"python"``: the standard
  library it is read from changes with the interpreter.
  """
  path = pathlib.Path(workdir) / "data.json"
  history = []
  if path.exists():
    try:
      history = json.loads(path.read_text())
    except json.JSONDecodeError as e:
      raise WorkdirError(f"{path} is not valid JSON ({e}); the workdir is damaged") from None
  now = {"from_step": int(step), **identity}
  if history and _same_data(history[-1], now):
    return
  if history:
    before = history[-1]
    field = identity.get("field", "data")
    what = (f"{field}={before.get('source')!r} had sha256 {before.get('sha256', '')[:16]}, "
            f"now {field}={identity.get('source')!r} has sha256 {identity.get('sha256', '')[:16]}")
    if before.get("documents") != identity.get("documents"):
      what += (f" (packed documents: {before.get('documents') or 'none'} -> "
               f"{identity.get('documents') or 'none'})")
    if before.get("python") != identity.get("python") and identity.get("python"):
      what += (f" (the built-in corpus is the running Python's standard library: the run was "
               f"trained on Python {before.get('python')}'s, this is Python "
               f"{identity['python']}'s)")
    if not accept_change:
      raise WorkdirError(f"{workdir} was trained on other data: {what}; resuming would not "
                         f"continue that run. Use a new --workdir, or pass "
                         f"--accept_data_change to continue on the new data (recorded in {path})")
    warn(f"--accept_data_change: {workdir} continues from step {step} on other data ({what})")
  elif step:
    warn(f"{workdir} recorded no data identity (written before attnlab checked it); recording "
         f"the data it resumes on in {path}")
  atomic_write(path, json.dumps(history + [now], indent=2, sort_keys=True))


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
    try:
      handle.seek(0)
      handle.truncate()
      handle.write(str(os.getpid()))
      handle.flush()
    except OSError as e:
      raise WorkdirError(describe_os_error(e, "writing the pid to the lock file", path)) from None
    yield
  finally:
    handle.close()     # closing releases the lock


# ----------------------------------------------------------------------------- checkpoints


# the orbax item beside a checkpoint's state ("default") holding its record: a sha256 of
# every array and the probe loss (the loss on a fixed batch when it was saved)
RECORD_ITEM = "attnlab"
ROTATED = "rotated"     # where orbax moves a step that max_to_keep drops, before we delete it


class NoReadableCheckpoint(WorkdirError):
  """A workdir has checkpoints, and none of them can be read."""


class CorruptCheckpoint(ValueError):
  """A checkpoint's arrays differ from the checksums written with them."""


def leaf_name(path) -> str:
  """A tree path as ``a/1/b``, the same whatever containers hold it (a checkpoint read
  without a template has dicts and lists where the saved state had named tuples)."""
  return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))))
                  for k in path)


def tree_checksums(tree) -> dict | None:
  """{path: sha256 of the leaf's shape, dtype and bytes} of a state tree; None when an array
  is not wholly held by this process (a multi-process run: orbax checks its own writes)."""
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  if any(isinstance(x, jax.Array) and not x.is_fully_addressable for _, x in leaves):
    return None
  sums = {}
  for path, leaf in leaves:
    a = np.ascontiguousarray(np.asarray(leaf))
    sums[leaf_name(path)] = hashlib.sha256(
        f"{a.shape}|{a.dtype}|".encode() + a.tobytes()).hexdigest()
  return sums


def verify_checksums(tree, record: dict, step: int) -> None:
  """Raise ``CorruptCheckpoint`` when a leaf of ``tree`` (all or part of a restored state)
  differs from the checksum ``record`` holds for it; a record without checksums (written
  before attnlab kept them, or by a multi-process run) checks nothing."""
  sums = record.get("checksums") or {}
  if not sums:
    return
  now = tree_checksums(tree) or {}
  bad = [k for k, v in now.items() if sums.get(k) != v]
  if bad:
    raise CorruptCheckpoint(f"checksum mismatch at step {step} in {', '.join(bad[:3])}"
                            + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
                            + " (its files changed after they were written)")


def checkpoint_steps(directory) -> list[int]:
  """The finished checkpoints in ``directory`` (orbax renames a step's folder to its number
  once every file is written), oldest first. Reads only."""
  directory = pathlib.Path(directory)
  if not directory.is_dir():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit() and p.is_dir())


def read_record(directory, step: int) -> dict:
  """The record saved with checkpoint ``step`` (checksums, probe loss); {} when it has none."""
  path = pathlib.Path(directory) / str(step) / RECORD_ITEM / "metadata"
  if not path.exists():
    return {}
  return json.loads(path.read_text())


class StateMismatch(WorkdirError):
  """A readable checkpoint holds other arrays than the model being trained (its code
  changed): not damage, so it is neither skipped nor set aside."""


def _saved_arrays(path: pathlib.Path) -> dict:
  """{leaf name: (shape, dtype)} of the arrays a checkpoint item holds (its metadata)."""
  metadata = ocp.StandardCheckpointHandler().metadata(path)
  tree = metadata.tree if hasattr(metadata, "tree") else metadata
  return {leaf_name(k): (tuple(m.shape), str(m.dtype))
          for k, m in jax.tree_util.tree_leaves_with_path(tree)}


def _restore_state(directory: pathlib.Path, step: int, abstract):
  path = directory / str(step) / "default"
  saved = _saved_arrays(path)         # unreadable metadata is damage, raised as it is
  wanted = {leaf_name(k): (tuple(a.shape), str(np.dtype(a.dtype)))
            for k, a in jax.tree_util.tree_leaves_with_path(abstract)}
  if saved != wanted:
    diff = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
    details = "; ".join(f"{k}: saved {saved.get(k)}, model {wanted.get(k)}" for k in diff[:3])
    raise StateMismatch(f"the checkpoint at step {step} in {directory} holds other arrays than "
                        f"this model ({details}{' and more' if len(diff) > 3 else ''}): "
                        f"attnlab's model code changed since it was written. Nothing was moved; "
                        f"resume it with the attnlab that wrote it, or use a new --workdir")
  with ocp.StandardCheckpointer() as checkpointer:
    return checkpointer.restore(path, abstract)


def _short(error: Exception) -> str:
  return f"{type(error).__name__}: {' '.join(str(error).split())[:240]}"


def newest_readable(directory, read, on_unreadable=None):
  """``(step, read(step))`` of the newest checkpoint in ``directory`` that ``read`` succeeds
  on; (None, None) when there is none; a ``WorkdirError`` when there are some and none can be
  read. An unreadable step is reported and skipped (``on_unreadable(step, error)`` is called,
  if given); a step removed while it was read (a writer's rotation) is skipped silently.
  Steps are listed again after each failure, so a checkpoint finished meanwhile is found."""
  directory = pathlib.Path(directory)
  tried, failed = set(), []
  while True:
    steps = [s for s in checkpoint_steps(directory) if s not in tried]
    if not steps:
      break
    step = steps[-1]
    tried.add(step)
    try:
      return step, read(step)
    except StateMismatch:
      raise
    except Exception as e:  # noqa: BLE001 - orbax and tensorstore raise many kinds
      if not (directory / str(step)).exists():
        continue
      failed.append(step)
      if on_unreadable is not None:
        on_unreadable(step, e)
      else:
        older = [s for s in checkpoint_steps(directory) if s < step]
        warn(f"checkpoint step {step} in {directory} cannot be read ({_short(e)}); skipped "
             f"(left in place)" + (", using an older one" if older else ""))
  if failed:
    raise NoReadableCheckpoint(f"no checkpoint in {directory} can be read (tried step(s) "
                       f"{', '.join(map(str, sorted(failed)))})")
  return None, None


class Checkpointer:
  """The writer's checkpoints: orbax CheckpointManager saves (written aside, then renamed),
  keeps the last few, and restores the newest checkpoint that can be read and matches its
  checksums, setting unreadable ones aside (the writer holds the workdir's lock)."""

  def __init__(self, directory: pathlib.Path, keep: int):
    self.directory = pathlib.Path(directory).absolute()
    self.keep = keep
    self._drop_rotated()       # left by a writer killed between the rename and the delete
    self._open()

  def _open(self):
    self.manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(
            max_to_keep=self.keep, create=True,
            # an old step leaves by one rename (a reader sees it whole or not at all), then
            # is deleted (``_drop_rotated``)
            todelete_subdir=ROTATED,
            # saves finish before the loop goes on anyway; synchronous, a failed write is an
            # exception here rather than a traceback printed by a background thread
            enable_async_checkpointing=False))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def best_probe_loss(self) -> tuple[float, int] | None:
    """(the lowest probe loss of the checkpoints written so far, its step), from their
    records (each carries the best before it, so rotated-out steps still count)."""
    best = None
    for step in self.steps():
      record = read_record(self.directory, step)
      for loss, at in ((record.get("probe_loss"), step),
                       tuple(record.get("best_probe_loss") or (None, None))):
        if loss is not None and (best is None or loss < best[0]):
          best = (float(loss), int(at))
    return best

  def save(self, step: int, state, probe_loss: float | None = None) -> None:
    """Save ``state`` as ``step`` with its record: the checksum of every array, the probe
    loss and the best probe loss before it."""
    best = self.best_probe_loss()
    if probe_loss is not None and (best is None or probe_loss < best[0]):
      best = (float(probe_loss), int(step))
    record = {"format": 1, "step": int(step), "checksums": tree_checksums(state),
              "probe_loss": probe_loss, "best_probe_loss": list(best) if best else None}
    self.manager.save(step, args=ocp.args.Composite(
        default=ocp.args.StandardSave(state), **{RECORD_ITEM: ocp.args.JsonSave(record)}))
    self.manager.wait_until_finished()
    self._drop_rotated()

  def _drop_rotated(self) -> None:
    shutil.rmtree(self.directory / ROTATED, ignore_errors=True)

  def restore(self, step: int, like, shardings=None):
    """Restore ``step`` with ``shardings`` (a tree like ``like``; default: this process's
    first device), whatever mesh or device saved the checkpoint; a ``CorruptCheckpoint``
    when its arrays differ from their checksums."""
    if shardings is None:
      device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
      shardings = jax.tree.map(lambda _: device, like)
    abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s), like, shardings)
    state = _restore_state(self.directory, step, abstract)
    verify_checksums(state, read_record(self.directory, step), step)
    return state

  def read(self, step: int):
    """The whole saved state of ``step`` as numpy arrays (no template; for inspection)."""
    with ocp.StandardCheckpointer() as checkpointer:
      state = checkpointer.restore(self.directory / str(step) / "default")
    verify_checksums(state, read_record(self.directory, step), step)
    return state

  def _set_aside(self, step: int, error: Exception) -> None:
    """Move ``step`` to ``checkpoints_unreadable/<step>`` (``<step>.<n>`` when that exists:
    nothing set aside is ever deleted)."""
    aside = self.directory.parent / f"{self.directory.name}_unreadable"
    target = aside / str(step)
    n = 1
    while target.exists():
      target = aside / f"{step}.{n}"
      n += 1
    warn(f"checkpoint step {step} in {self.directory} cannot be used ({_short(error)}); moved "
         f"to {target} and using the newest intact checkpoint")
    self.manager.close()
    try:
      aside.mkdir(parents=True, exist_ok=True)
      os.replace(self.directory / str(step), target)
    except OSError as e:
      raise WorkdirError(describe_os_error(e, "setting aside the unreadable checkpoint in",
                                           target)) from None
    finally:
      self._open()

  def restore_newest(self, read) -> tuple[int, object] | tuple[None, None]:
    """``(step, read(step))`` of the newest checkpoint ``read`` succeeds on; unreadable
    newer ones are reported and set aside (the caller holds the workdir's lock). (None,
    None) when there is no checkpoint; a ``WorkdirError`` when none can be read."""
    try:
      return newest_readable(self.directory, read, on_unreadable=self._set_aside)
    except NoReadableCheckpoint:
      raise NoReadableCheckpoint(f"no checkpoint in {self.directory} can be read (all were set aside "
                         f"in {self.directory.name}_unreadable/); nothing was deleted. Train "
                         f"again from step 0 with --restart, or use a new --workdir") from None

  def close(self) -> None:
    try:
      self.manager.wait_until_finished()
    finally:
      self.manager.close()


def _read_params(directory: pathlib.Path, step: int):
  """The parameters of checkpoint ``step`` on this process's first device, checked against
  their checksums. Reads only."""
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  path = directory / str(step) / "default"
  metadata = ocp.StandardCheckpointHandler().metadata(path)
  tree = metadata.tree if hasattr(metadata, "tree") else metadata
  abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                          tree["params"])
  with ocp.PyTreeCheckpointer() as checkpointer:
    params = checkpointer.restore(path, args=ocp.args.PyTreeRestore(
        {"params": abstract},
        restore_args={"params": jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=device),
                                             abstract)},
        partial_restore=True))["params"]
  verify_checksums({"params": params}, read_record(directory, step), step)
  return params


def non_finite(params, what: str = "") -> str | None:
  """Where a tree holds NaN or infinity (a sentence), or None."""
  bad = [what + jax.tree_util.keystr(path)
         for path, leaf in jax.tree_util.tree_leaves_with_path(params)
         if not bool(np.all(np.isfinite(np.asarray(leaf))))]
  return None if not bad else f"non-finite values in {', '.join(bad[:3])}" + (
      f" and {len(bad) - 3} more" if len(bad) > 3 else "")


def restore_params(workdir, kind: str = "lm"):
  """(resolved config, params of the newest intact checkpoint, its step) of a training
  workdir; a ``WorkdirError`` when there is none, or its parameters are not finite.

  A reader: it writes, moves and deletes nothing, so it is safe beside a trainer writing
  the same workdir. A checkpoint it cannot read (or whose checksums differ) is reported on
  stderr and skipped; only the trainer sets it aside.
  """
  raw = load_config(workdir, kind)
  cfg = config_lib.resolve(raw) if kind == "lm" else raw
  directory = (pathlib.Path(workdir) / "checkpoints").absolute()
  step, params = newest_readable(directory, lambda s: _read_params(directory, s))
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
      try:
        self.tensorboard.close()
      except OSError as e:
        raise WorkdirError(describe_os_error(e, "writing the TensorBoard events in",
                                             self.path.parent / "tensorboard")) from None


def close_all(*closeable, failing: BaseException | None = None) -> None:
  """Close each of ``closeable`` (None skipped), all of them whatever fails. An error while
  closing is raised (an ``OSError`` as a ``WorkdirError``) unless the block already failed
  with ``failing``: then the first error is the one reported, and a later one is a warning,
  or nothing when it is the OS error's aftermath (a full disk fails every later write)."""
  first = None
  for thing in closeable:
    if thing is None:
      continue
    try:
      thing.close()
    except Exception as e:  # noqa: BLE001 - every resource gets closed; the first error wins
      if failing is not None:
        if isinstance(e, (OSError, WorkdirError)) or os_error_in_text(e) is not None:
          continue
        warn(f"after the error below, closing {type(thing).__name__} also failed "
             f"({_short(e)})")
      elif first is None:
        first = e
  if first is not None:
    if isinstance(first, OSError):
      raise WorkdirError(describe_os_error(first, "closing", first.filename or "a file")) \
          from None
    raise first


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
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
  try:
    fig.savefig(tmp, dpi=120)
    os.replace(tmp, path)
  except OSError as e:
    tmp.unlink(missing_ok=True)
    raise WorkdirError(describe_os_error(e, "writing", path)) from None
  finally:
    plt.close(fig)
  return path
