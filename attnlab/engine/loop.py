"""The one training loop every trainer runs on: steps, progress, logged metrics, evaluation
hooks, checkpoints and the NaN policy, and resume.

``run_steps`` advances a state ``{"step", "params", "opt_state"}`` from its step to
``end`` with ``step_fn(state, step) -> (state, {"loss", ...})``. Every ``log_every`` steps
it writes the mean training loss (and ``log_fields``) to ``metrics.jsonl``; every
``eval_every`` steps it calls ``evaluate(state, step)`` (records to log) and every hook;
every ``checkpoint_every`` steps (and at the end) it saves a checkpoint, but only a usable
one: parameters all finite and ``probe(params)`` (the loss on a fixed batch) finite.
A non-finite training loss or an unusable state stops the run with ``TrainingDiverged``,
naming the last checkpoint written, which is therefore always usable.

Everything a step depends on is a pure function of (seed, step), so a run resumed from a
checkpoint continues exactly where it stopped (``docs/guarantees.md``); the training
losses of a partly logged window are saved beside each checkpoint (a ``loop_state`` record
of ``metrics.jsonl``), so the logged means are the same too.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import time
from typing import Any, Callable

import numpy as np
from tqdm import tqdm

from attnlab import workdir as workdir_lib


class TrainingDiverged(FloatingPointError):
  """The loss or the parameters became NaN or infinite."""


@dataclasses.dataclass
class Schedule:
  """When the loop logs, evaluates and checkpoints (steps are counted from 1)."""
  steps: int
  log_every: int
  eval_every: int
  checkpoint_every: int

  def due(self, every: int, done: int) -> bool:
    return done % every == 0 or done == self.steps


def last_good(checkpointer) -> str:
  step = checkpointer.latest_step()
  if step is None:
    return "no checkpoint was written before it"
  return f"the last good checkpoint is step {step} in {checkpointer.directory}"


def run_steps(*, state, step_fn: Callable, start: int, end: int, schedule: Schedule,
              checkpointer, metrics, probe: Callable, evaluate: Callable | None = None,
              hooks: tuple = (), log_fields: Callable | None = None, write: bool = True,
              desc: str = "", progress: bool = True) -> tuple[Any, dict]:
  """Steps ``start .. end`` (see the module docstring). Returns (state, last logged record).

  ``hooks``: callables ``hook(state, done, losses)`` run at every evaluation point with the
  training losses since the previous one, and once at step 0 (with no losses) when the
  run starts from scratch (experiment scripts measure there).
  ``write``: False in processes other than 0 of a multi-process run (they save checkpoints,
  which is collective, but write no metrics).
  """
  last: dict = {}
  window, since_eval = [], []
  if start and metrics is not None:   # losses since the last log / evaluation, as saved
    saved = [r for r in workdir_lib.read_metrics(metrics.path.parent, internal=True)
             if r.get("split") == workdir_lib.LOOP_STATE and r["step"] == start]
    if saved:
      window, since_eval = list(saved[-1]["window"]), list(saved[-1]["since_eval"])
  window_start, timed = time.perf_counter(), 0     # timing covers this process's steps
  bar = tqdm(total=schedule.steps, initial=start, desc=desc, disable=not progress,
             mininterval=1.0, dynamic_ncols=True)
  try:
    if start == 0:
      for hook in hooks:
        hook(state, 0, [])
    for step in range(start, end):
      state, step_metrics = step_fn(state, step)
      loss = float(step_metrics["loss"])
      done = step + 1
      if not math.isfinite(loss):
        raise TrainingDiverged(f"loss became {loss} at step {done}; {last_good(checkpointer)}")
      window.append(loss)
      since_eval.append(loss)
      timed += 1
      bar.update(1)
      if schedule.due(schedule.log_every, done):
        elapsed = time.perf_counter() - window_start
        last = {"step": done, "split": "train", "loss": float(np.mean(window)),
                "ms_per_step": 1000 * elapsed / timed}
        if log_fields is not None:
          last.update(log_fields(done, step_metrics, timed, elapsed))
        if write:
          metrics.write(last)
        bar.set_postfix(loss=f"{last['loss']:.3f}")
        window, window_start, timed = [], time.perf_counter(), 0
      if schedule.due(schedule.eval_every, done):
        if evaluate is not None:
          for record in evaluate(state, done):
            if write:
              metrics.write(record)
            last.update({f"{record['split']}_loss": record["loss"]})
            bar.write(f"step {done}: {record['split']} loss {record['loss']:.4f}")
        for hook in hooks:
          hook(state, done, since_eval)
        since_eval = []
        window_start, timed = time.perf_counter(), 0
      if schedule.due(schedule.checkpoint_every, done):
        if write and (window or since_eval):   # so a run resumed here logs the same means
          metrics.write({"step": done, "split": workdir_lib.LOOP_STATE, "window": window,
                         "since_eval": since_eval})
        save_if_usable(checkpointer, state, done, probe)
  finally:
    bar.close()
  return state, last


# A checkpoint is saved only if its probe loss (the loss on a fixed batch) is at most
# PROBE_FACTOR times the best probe loss of the run's checkpoints so far, or that best plus
# PROBE_MARGIN nats when larger (a near-zero loss may double by noise alone).
PROBE_FACTOR = 2.0
PROBE_MARGIN = 1.0


def usable(state, probe_loss: float, best: tuple[float, int] | None) -> str | None:
  """Why ``state`` must not be saved (a phrase), or None: non-finite parameters or optimizer
  state, a non-finite probe loss, or one far above the best so far (``PROBE_FACTOR``)."""
  problem = (workdir_lib.non_finite(state["params"])
             or workdir_lib.non_finite(state.get("opt_state", {}), "the optimizer state"))
  if problem:
    return problem
  if not math.isfinite(probe_loss):
    return f"a loss of {probe_loss} on a fixed batch"
  if best is not None:
    limit = max(PROBE_FACTOR * best[0], best[0] + PROBE_MARGIN)
    if probe_loss > limit:
      return (f"a loss of {probe_loss:.6g} on a fixed batch, above {limit:.6g} (the best "
              f"checkpoint's, {best[0]:.6g} at step {best[1]}, times {PROBE_FACTOR:g} or plus "
              f"{PROBE_MARGIN:g}): the run is diverging")
  return None


def save_if_usable(checkpointer, state, done: int, probe: Callable) -> None:
  """Save ``state`` as step ``done`` if it is usable (``usable``); otherwise stop with
  ``TrainingDiverged`` (the previous checkpoint stays the last). A failed write (a full or
  read-only disk, which orbax may report as a ``ValueError``) is one ``WorkdirError``."""
  loss = (float(probe(state["params"])) if workdir_lib.non_finite(state["params"]) is None
          else float("nan"))
  problem = usable(state, loss, checkpointer.best_probe_loss())
  if problem:
    raise TrainingDiverged(f"the state after step {done} has {problem}; it was not saved, and "
                           f"{last_good(checkpointer)}")
  try:
    checkpointer.save(done, state, probe_loss=loss)
  except Exception as e:  # noqa: BLE001 - orbax wraps OS errors in ValueError and others
    error = _os_error(e)
    if error is None:
      raise
    raise workdir_lib.WorkdirError(workdir_lib.describe_os_error(
        error, f"writing the checkpoint of step {done} to", checkpointer.directory)
        + f"; {last_good(checkpointer)}") from None


def _os_error(error: BaseException) -> OSError | None:
  """The OS error behind ``error``: itself, one of its causes, or one that orbax or
  tensorstore report in the text of a wrapped error (``workdir.os_error_in_text``)."""
  seen = error
  while seen is not None:
    if isinstance(seen, OSError):
      return seen
    found = workdir_lib.os_error_in_text(seen)
    if found is not None:
      return found
    seen = seen.__cause__ or seen.__context__
  return None


def restore_or_init(checkpointer, abstract, shardings, init: Callable):
  """(start step, state): the newest readable checkpoint, or ``init()`` at step 0."""
  step, state = checkpointer.restore_newest(
      lambda s: checkpointer.restore(s, abstract, shardings))
  if step is None:
    return 0, init()
  return step, state


def prepare_workdir(workdir: pathlib.Path) -> None:
  """Create the workdir, or say in one line why it cannot be written."""
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    probe = workdir / f".write-test-{os.getpid()}"
    probe.write_text("")
    probe.unlink()
  except OSError as e:
    raise workdir_lib.WorkdirError(workdir_lib.describe_os_error(e, "writing to", workdir)) \
        from None
