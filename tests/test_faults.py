"""Fault injection: every way issue 33 found to lose a run, or to say something false about
it, tried again; docs/guarantees.md lists each case beside its test here.

Nothing is lost (checkpoints, metrics and config survive every refusal byte for byte),
nothing happens silently (each refusal or fallback says what and why on one line), readers
never change a run, and a user's or the disk's error is one line with exit status 2 and no
traceback, leaving no partial output. OS errors (a full or read-only disk) are injected at
the write calls: the suite runs as root, where permissions do not bite (one slow case uses a
real 1 MiB tmpfs where one can be mounted). Command-line cases run the real entry point in a
subprocess (``_cli``), with any injection set up by a ``-c`` wrapper, because what is
checked is what a user sees: the exact line on stderr and the exit status.
"""

import errno
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from helpers import REPO, tiny_config, tiny_sweep_config

from attnlab import ConfigError, config_lib, data
from attnlab import workdir as workdir_lib
from attnlab.analysis import report
from attnlab.engine import evaluation, hf_import, loop, retrieval_study, sweeps, tasks, training
from configs import seq2seq as seq2seq_configs


def _tiny(**fields):
  defaults = dict(train__steps=6, train__warmup_steps=1, train__checkpoint_every=2,
                  train__eval_every=6, train__log_every=2)
  return tiny_config("rope", **{**defaults, **fields})


def _damage(step_dir: pathlib.Path):
  """A write cut short: every array file of the checkpoint loses its last two thirds."""
  files = [p for p in step_dir.rglob("*") if p.is_file() and p.parent.name == "d"
           and p.stat().st_size > 64]
  assert files
  for victim in files:
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 3])


FLIPPED_BYTES = 16         # per array file (docs/guarantees.md states it)
READER_LOOP_STEPS = 40     # the default-tier reader loop's run (docs/guarantees.md)
DIVERGING_LR = 30.0        # the real divergence (docs/guarantees.md)
TMPFS_SIZE = "1m"          # the real full disk (docs/guarantees.md: "1 MiB")


def _flip_bytes(step_dir: pathlib.Path, count: int = FLIPPED_BYTES, seed: int = 0):
  """Bit rot: ``count`` bytes inverted in the middle half of every array file (they still
  decode: only the checksums can tell)."""
  rng = np.random.default_rng(seed)
  for f in (p for p in step_dir.rglob("*") if p.is_file() and p.parent.name == "d"
            and p.stat().st_size > 4096):
    b = bytearray(f.read_bytes())
    for i in rng.choice(np.arange(len(b) // 4, 3 * len(b) // 4), count, replace=False):
      b[i] ^= 0xFF
    f.write_bytes(bytes(b))


def _snapshot(run: pathlib.Path) -> dict:
  """{relative path: bytes} of every file in a run except the lock."""
  return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*"))
          if p.is_file() and p.name != ".lock"}


def _same_state(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ----------------------------------------------------------------------------- no silent restart


def test_a_run_whose_checkpoints_were_all_set_aside_is_never_restarted_silently(tmp_path, capfd):
  run = tmp_path / "run"
  training.train_and_evaluate(_tiny(), run, stop_after=4, progress=False)
  for step in (2, 4):
    _damage(run / "checkpoints" / str(step))
  with pytest.raises(workdir_lib.WorkdirError, match=r"no checkpoint in .* can be read .* "
                                                     r"nothing was deleted.*--restart"):
    training.train_and_evaluate(_tiny(), run, progress=False)
  assert sorted(p.name for p in (run / "checkpoints_unreadable").iterdir()) == ["2", "4"]
  before = _snapshot(run)
  # the next train (what used to start from step 0 and truncate metrics.jsonl) is refused
  with pytest.raises(workdir_lib.WorkdirError,
                     match=r"has no readable checkpoint, but its checkpoint\(s\) 2, 4 were set "
                           r"aside .* Nothing was changed\. Pass --restart"):
    training.train_and_evaluate(_tiny(), run, progress=False)
  # and a different config is refused whatever the checkpoints' state
  with pytest.raises(ConfigError, match=r"different config \(train.lr: 0.002 -> 0.004\)"):
    training.train_and_evaluate(_tiny(train__lr=4e-3), run, progress=False)
  after = _snapshot(run)
  assert after.keys() >= before.keys()
  assert all(after[k] == before[k] for k in before)            # nothing changed, nothing lost
  # --restart trains again from step 0, keeping the earlier metrics
  capfd.readouterr()
  result = training.train_and_evaluate(_tiny(), run, restart=True, progress=False)
  assert "--restart: training" in capfd.readouterr().err
  assert result["metrics"]["step"] == 6
  assert (run / "restarts" / "1" / "metrics.jsonl").read_bytes() == before["metrics.jsonl"]
  assert sorted(p.name for p in (run / "checkpoints_unreadable").iterdir()) == ["2", "4"]


def test_metrics_past_the_first_checkpoint_are_evidence_of_a_run(tmp_path):
  """Checkpoints deleted by hand: the metrics show one was written, so no restart from 0;
  a run stopped before its first checkpoint starts again (its metrics come out the same)."""
  run = tmp_path / "run"
  training.train_and_evaluate(_tiny(), run, stop_after=4, progress=False)
  shutil.rmtree(run / "checkpoints")
  before = _snapshot(run)
  with pytest.raises(workdir_lib.WorkdirError,
                     match=r"its metrics.jsonl reaches step 4, past its first checkpoint "
                           r"\(step 2\)"):
    training.train_and_evaluate(_tiny(), run, progress=False)
  assert _snapshot(run) == before
  early = tmp_path / "early"                     # killed before its first checkpoint
  training.train_and_evaluate(_tiny(), early, stop_after=2, progress=False)
  shutil.rmtree(early / "checkpoints")
  assert workdir_lib.progress_on_disk(early) is None
  straight = tmp_path / "straight"
  training.train_and_evaluate(_tiny(), straight, progress=False)
  training.train_and_evaluate(_tiny(), early, progress=False)
  assert ([r["loss"] for r in workdir_lib.read_metrics(early)]
          == pytest.approx([r["loss"] for r in workdir_lib.read_metrics(straight)], rel=1e-6))


def test_setting_aside_the_same_step_twice_keeps_both_copies(tmp_path, capfd):
  state = lambda v: {"step": np.int32(2), "params": {"w": np.full(4, v, np.float32)}}  # noqa: E731

  def unreadable(step):
    raise ValueError("damaged")

  for value in (1.0, 2.0):
    checkpointer = workdir_lib.Checkpointer(tmp_path / "checkpoints", 3)
    checkpointer.save(2, state(value))
    with pytest.raises(workdir_lib.WorkdirError):
      checkpointer.restore_newest(unreadable)
    checkpointer.close()
  aside = tmp_path / "checkpoints_unreadable"
  assert sorted(p.name for p in aside.iterdir()) == ["2", "2.1"]
  # both copies are whole: the first holds 1.0, the second 2.0
  for name, value in (("2", 1.0), ("2.1", 2.0)):
    record = json.loads((aside / name / workdir_lib.RECORD_ITEM / "metadata").read_text())
    w = np.full(4, value, np.float32)
    assert record["checksums"]["params/w"] == workdir_lib.tree_checksums({"params": {"w": w}})[
        "params/w"]
  assert capfd.readouterr().err.count("moved to") == 2


# ----------------------------------------------------------------------------- readers


def test_readers_skip_an_unreadable_checkpoint_and_change_nothing(tmp_path, capfd):
  run = tmp_path / "run"
  training.train_and_evaluate(_tiny(), run, stop_after=4, progress=False)
  _damage(run / "checkpoints" / "4")
  before = _snapshot(run)
  cfg, params, step = workdir_lib.restore_params(run)
  err = capfd.readouterr().err
  assert step == 2
  assert err.count("\n") == 1 and "checkpoint step 4" in err and "left in place" in err
  records = evaluation.evaluate_workdir(run, [32], out=tmp_path / "eval", progress=False)
  assert records[0]["step"] == 2
  assert _snapshot(run) == before                            # not a byte changed in the run
  assert not (run / "checkpoints_unreadable").exists()


def _race(tmp_path, steps: int, seconds: float):
  """A trainer in its own process, checkpointing every step (keeping 2, so steps are
  deleted while readers read), and readers in a loop in this one for ``seconds`` or until
  the trainer ends. Returns (trainer's return code or None, steps read, reader errors)."""
  run = tmp_path / "run"
  overrides = dict(model__num_layers=1, train__steps=steps, train__checkpoint_every=1,
                   train__keep_checkpoints=2, train__log_every=1, train__eval_every=steps,
                   train__eval_batches=1, train__warmup_steps=1, train__batch_size=4)
  flags = [f"--config.{k.replace('__', '.')}={v}" for k, v in overrides.items()]
  flags += ["--config.model.d_model=32", "--config.model.attention.num_heads=4",
            "--config.model.attention.num_kv_heads=4", "--config.data.seq_len=32",
            "--config.data.corpus=tinyshakespeare"]
  proc = subprocess.Popen(
      [sys.executable, "-m", "attnlab.train", "--config=configs/lm.py:rope", f"--workdir={run}",
       *flags], cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"),
      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  seen, errors = [], []
  start = time.time()
  while proc.poll() is None and time.time() - start < seconds:
    try:
      seen.append(workdir_lib.restore_params(run)[2])
    except workdir_lib.WorkdirError as e:       # before the first checkpoint
      if "train the run first" not in str(e) and "not a training workdir" not in str(e):
        errors.append(str(e))
  if proc.poll() is None:
    proc.send_signal(signal.SIGKILL)
  proc.wait()
  return proc, run, overrides, seen, errors


def _check_race(tmp_path, capfd, steps, seconds):
  proc, run, overrides, seen, errors = _race(tmp_path, steps, seconds)
  assert not errors
  assert len(seen) >= 5 and seen == sorted(seen)              # readers followed the trainer
  assert not (run / "checkpoints_unreadable").exists()        # and set nothing aside
  assert "cannot be" not in capfd.readouterr().err            # nor found a torn step
  stderr = proc.stderr.read()
  assert "Traceback" not in stderr and "error:" not in stderr
  if proc.returncode == 0:
    assert seen[-1] <= steps and workdir_lib.restore_params(run)[2] == steps
  else:                                      # killed after ``seconds``: it resumes cleanly
    cfg = tiny_config("rope", **overrides)
    latest = workdir_lib.checkpoint_steps(run / "checkpoints")[-1]
    result = training.train_and_evaluate(cfg, run, stop_after=latest + 2, progress=False)
    assert result["metrics"]["step"] == latest + 2
    assert "cannot be" not in capfd.readouterr().err


def test_a_reader_loop_during_training_never_disturbs_the_trainer(tmp_path, capfd):
  _check_race(tmp_path, capfd, steps=READER_LOOP_STEPS, seconds=120)


@pytest.mark.slow
def test_a_60_second_reader_loop_during_training(tmp_path, capfd):
  _check_race(tmp_path, capfd, steps=100_000, seconds=60)


# ----------------------------------------------------------------------------- data identity


def test_a_changed_data_file_is_refused_on_resume(tmp_path, capfd):
  text = tmp_path / "text.txt"
  text.write_bytes((data.CORPUS_DIR / "tinyshakespeare.txt").read_bytes()[:200_000])
  cfg = lambda: _tiny(data__path=str(text))  # noqa: E731
  run = tmp_path / "run"
  training.train_and_evaluate(cfg(), run, stop_after=2, progress=False)
  old = json.loads((run / "data.json").read_text())[0]["sha256"]
  text.write_bytes(text.read_bytes().replace(b"the", b"THE"))
  before = _snapshot(run)
  with pytest.raises(workdir_lib.WorkdirError) as info:
    training.train_and_evaluate(cfg(), run, progress=False)
  message = str(info.value)
  assert f"data.path={str(text)!r} had sha256 {old[:16]}" in message
  assert "--accept_data_change" in message and "\n" not in message
  assert _snapshot(run) == before
  capfd.readouterr()
  result = training.train_and_evaluate(cfg(), run, accept_data_change=True, progress=False)
  assert result["metrics"]["step"] == 6 and "--accept_data_change" in capfd.readouterr().err
  history = json.loads((run / "data.json").read_text())
  assert [h["from_step"] for h in history] == [0, 2] and history[0]["sha256"] == old


def test_the_builtin_corpus_of_another_python_is_refused_and_says_why(tmp_path, monkeypatch):
  shakespeare = (data.CORPUS_DIR / "tinyshakespeare.txt").read_bytes()[:200_000]
  monkeypatch.setitem(data.CORPORA, "builtin", lambda: (shakespeare, "python-stdlib"))
  monkeypatch.setattr(data.platform, "python_version", lambda: "3.11.7")
  run = tmp_path / "run"
  training.train_and_evaluate(_tiny(data__corpus="builtin"), run, stop_after=2, progress=False)
  monkeypatch.setitem(data.CORPORA, "builtin", lambda: (shakespeare[::-1], "python-stdlib"))
  monkeypatch.setattr(data.platform, "python_version", lambda: "3.12.1")
  with pytest.raises(workdir_lib.WorkdirError,
                     match=r"data.corpus='builtin' had sha256 .*\(the built-in corpus is the "
                           r"running Python's standard library: the run was trained on Python "
                           r"3.11.7's, this is Python 3.12.1's\); .*--accept_data_change"):
    training.train_and_evaluate(_tiny(data__corpus="builtin"), run, progress=False)
  result = training.train_and_evaluate(_tiny(data__corpus="builtin"), run, progress=False,
                                       accept_data_change=True)
  assert result["metrics"]["step"] == 6


# ----------------------------------------------------------------------------- integrity


def test_flipped_bytes_are_detected_and_the_run_falls_back(tmp_path, capfd):
  straight = training.train_and_evaluate(_tiny(), tmp_path / "straight", progress=False)
  run = tmp_path / "run"
  training.train_and_evaluate(_tiny(), run, stop_after=4, progress=False)
  _flip_bytes(run / "checkpoints" / "4")
  # a flip inside compressed data fails to decode (tensorstore raises a plain Exception
  # or a ValueError); elsewhere only the checksum tells
  checkpointer = workdir_lib.Checkpointer(run / "checkpoints", 3)
  with pytest.raises(Exception) as info:  # noqa: B017 - which kind depends on where it landed
    checkpointer.read(4)
  chain, error = [], info.value
  while error is not None:
    chain.append(error)
    error = error.__cause__ or error.__context__
  assert any(isinstance(e, workdir_lib.CorruptCheckpoint) or "corrupt" in str(e).lower()
             for e in chain), chain
  checkpointer.close()
  assert workdir_lib.restore_params(run)[2] == 2           # a reader skips it
  assert "checkpoint step 4" in capfd.readouterr().err
  resumed = training.train_and_evaluate(_tiny(), run, progress=False)   # the writer sets it aside
  err = capfd.readouterr().err
  assert "checkpoint step 4" in err and "moved to" in err
  assert (run / "checkpoints_unreadable" / "4").exists()
  _same_state(straight["state"], resumed["state"])         # and resumes exactly from step 2


def test_arrays_that_differ_from_their_checksums_are_corrupt(tmp_path, capfd):
  """Values that decode but are not what was saved (bit rot in stored data, a file swapped):
  the checksums saved with the checkpoint catch them, in the parameters and in the
  optimizer state."""
  import orbax.checkpoint as ocp
  run = tmp_path / "run"
  training.train_and_evaluate(_tiny(), run, stop_after=4, progress=False)
  checkpointer = workdir_lib.Checkpointer(run / "checkpoints", 3)
  saved = jax.tree.map(np.array, checkpointer.read(4))
  item = run / "checkpoints" / "4" / "default"
  for part in ("opt_state", "params"):
    state = jax.tree.map(np.array, saved)
    jax.tree.leaves(state[part])[-1].reshape(-1)[0] += 1.0      # one entry, still finite
    shutil.rmtree(item)
    with ocp.StandardCheckpointer() as writer:
      writer.save(item, state)
    with pytest.raises(workdir_lib.CorruptCheckpoint,
                       match=rf"checksum mismatch at step 4 in {part}/"):
      checkpointer.read(4)
  checkpointer.close()
  assert workdir_lib.restore_params(run)[2] == 2
  assert "checksum mismatch at step 4 in params/" in capfd.readouterr().err


# ----------------------------------------------------------------------------- last good


class _Probe:
  def __init__(self, losses):
    self.losses = iter(losses)

  def __call__(self, params):
    return next(self.losses)


def _state(value=1.0, opt=0.0):
  return {"step": np.int32(0), "params": {"w": np.full(3, value, np.float32)},
          "opt_state": {"mu": np.full(3, opt, np.float32)}}


def test_only_usable_states_are_saved_and_named_last_good(tmp_path):
  checkpointer = workdir_lib.Checkpointer(tmp_path / "checkpoints", 5)
  probe = _Probe([3.0, 5.9, 1.6e10])
  loop.save_if_usable(checkpointer, _state(), 1, probe)
  loop.save_if_usable(checkpointer, _state(), 2, probe)     # 5.9 <= 2 x 3.0
  with pytest.raises(loop.TrainingDiverged,
                     match=r"after step 3 has a loss of 1.6e\+10 on a fixed batch, above 6 .* "
                           r"diverging; it was not saved, and the last good checkpoint is step 2"):
    loop.save_if_usable(checkpointer, _state(), 3, probe)
  with pytest.raises(loop.TrainingDiverged, match=r"non-finite values in the optimizer "
                                                  r"state\['mu'\]; .* last good checkpoint is "
                                                  r"step 2"):
    loop.save_if_usable(checkpointer, _state(opt=np.inf), 3, _Probe([3.0]))
  assert checkpointer.steps() == [1, 2]
  assert workdir_lib.read_record(checkpointer.directory, 2)["probe_loss"] == 5.9
  checkpointer.close()
  # near zero, a factor alone would refuse noise: the margin is 1 nat
  checkpointer = workdir_lib.Checkpointer(tmp_path / "tasks", 5)
  probe = _Probe([0.01, 0.5, 1.2])
  loop.save_if_usable(checkpointer, _state(), 1, probe)
  loop.save_if_usable(checkpointer, _state(), 2, probe)
  with pytest.raises(loop.TrainingDiverged, match=r"above 1.01 "):
    loop.save_if_usable(checkpointer, _state(), 3, probe)
  checkpointer.close()


def test_a_diverging_run_names_a_checkpoint_within_the_factor(tmp_path):
  with pytest.raises(training.TrainingDiverged) as info:
    training.train_and_evaluate(_tiny(train__lr=DIVERGING_LR, train__checkpoint_every=1,
                                      train__steps=12,
                                      train__warmup_steps=1), tmp_path, progress=False)
  steps = workdir_lib.checkpoint_steps(tmp_path / "checkpoints")
  assert steps and f"the last good checkpoint is step {steps[-1]}" in str(info.value)
  records = [workdir_lib.read_record(tmp_path / "checkpoints", s) for s in steps]
  best = min(r["best_probe_loss"][0] for r in records)
  assert all(r["probe_loss"] <= max(2 * best, best + 1) for r in records)
  cfg, params, _ = workdir_lib.restore_params(tmp_path)
  loss = evaluation.evaluate_lengths(cfg, params, data.load_corpus(cfg.data).valid, [32],
                                     max_tokens=256, progress=False)[0]["loss"]
  assert loss < 2 * records[-1]["probe_loss"] + 1


def test_a_perplexity_too_large_to_compute_is_reported_as_such():
  assert evaluation.perplexity(2.0) == pytest.approx(np.exp(2.0))
  assert evaluation.perplexity(800.0) is None              # exp(800) overflows: not a number
  table = evaluation.markdown_table([{"eval_length": 8, "loss": 800.0, "ppl": None,
                                      "bpb": 1154.2, "tokens": 8, "bytes": 8}])
  assert "overflow" in table and "e+" not in table


# ----------------------------------------------------------------------------- disks


@pytest.mark.parametrize("text,words", [
    ("Error writing to /x [OS error: No space left on device]", "the disk is full"),
    ("FAILED_PRECONDITION: Read-only file system", "the file system is read-only")])
def test_a_full_or_read_only_disk_during_a_save_is_one_line_naming_the_last_good(
    tmp_path, monkeypatch, text, words):
  run = tmp_path / "run"
  training.train_and_evaluate(_tiny(), run, stop_after=2, progress=False)
  import orbax.checkpoint as ocp

  def failing(self, *args, **kwargs):
    raise ValueError(text)                       # how orbax and tensorstore report it

  monkeypatch.setattr(ocp.CheckpointManager, "save", failing)
  with pytest.raises(workdir_lib.WorkdirError) as info:
    training.train_and_evaluate(_tiny(), run, progress=False)
  assert str(info.value) == (f"writing the checkpoint of step 4 to {run.absolute()}/checkpoints "
                             f"failed: {words}; the last good checkpoint is step 2 in "
                             f"{run.absolute()}/checkpoints")
  monkeypatch.undo()
  assert workdir_lib.restore_params(run)[2] == 2


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_os_errors_of_the_lock_and_the_set_aside_are_one_line(tmp_path, monkeypatch, code):
  import builtins
  real_open = builtins.open

  class FullFile:
    def __init__(self, handle):
      self.handle = handle

    def __getattr__(self, name):
      return getattr(self.handle, name)

    def write(self, text):
      raise OSError(code, os.strerror(code))

  def opener(path, *args, **kwargs):
    handle = real_open(path, *args, **kwargs)
    return FullFile(handle) if str(path).endswith(".lock") else handle

  monkeypatch.setattr(builtins, "open", opener)
  with pytest.raises(workdir_lib.WorkdirError, match=r"writing the pid to the lock file .*\.lock "
                                                     r"failed: "):
    with workdir_lib.lock(tmp_path):
      pass
  monkeypatch.undo()
  checkpointer = workdir_lib.Checkpointer(tmp_path / "checkpoints", 3)
  checkpointer.save(2, {"step": np.int32(2), "params": {"w": np.ones(2, np.float32)}})

  def failing_replace(src, dst):
    raise OSError(code, os.strerror(code))

  monkeypatch.setattr(workdir_lib.os, "replace", failing_replace)
  with pytest.raises(workdir_lib.WorkdirError, match=r"setting aside the unreadable checkpoint "
                                                     r"in .* failed: "):
    checkpointer.restore_newest(lambda step: (_ for _ in ()).throw(ValueError("damaged")))
  monkeypatch.undo()
  assert checkpointer.steps() == [2]                        # still there
  checkpointer.close()


# ============================================================================= inputs, outputs, paths

HF = REPO / "tests" / "data" / "hf"
ENV = {"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}


def _cli(module: str, *args: str, inject: str = "") -> subprocess.CompletedProcess:
  """``python -m attnlab.<module> args`` (with ``inject``, Python run first in the process)."""
  if inject:
    cmd = [sys.executable, "-c", f"{inject}\nimport sys\nsys.argv[0] = {module!r}\n"
           f"from attnlab.{module} import run\nrun()", *args]
  else:
    cmd = [sys.executable, "-m", f"attnlab.{module}", *args]
  return subprocess.run(cmd, cwd=REPO, capture_output=True, timeout=300, env=ENV)


_PROGRESS = re.compile(r"\|\s*\d+/\d+ \[")     # tqdm: "|  3/40 [00:02<01:35, ..."


def _one_line(result: subprocess.CompletedProcess) -> str:
  """The single ``error:`` line of a failed command (exit status 2, no traceback)."""
  err = result.stderr.decode("utf-8", "replace")
  assert result.returncode == 2, err[-3000:]
  assert "Traceback" not in err, err[-3000:]
  lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()
           and not _PROGRESS.search(line)]          # tqdm's progress bars are not errors
  assert len(lines) == 1 and lines[0].startswith("error: "), err[-3000:]
  return lines[0]


def _files(folder: pathlib.Path) -> dict:
  return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
          if p.is_file()}


def _no_staging_left(folder: pathlib.Path) -> None:
  left = [p for p in folder.parent.rglob("*") if ".staging-" in p.name]
  assert not left, left


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A tiny language-model run with a checkpoint (2 steps)."""
  run = tmp_path_factory.mktemp("trained") / "run"
  training.train_and_evaluate(tiny_config("rope", train__steps=2, train__warmup_steps=1,
                                          train__checkpoint_every=2, train__eval_every=2,
                                          train__log_every=1), run, progress=False)
  return run


# ----------------------------------------------------------------------------- all or nothing


def test_staged_outputs_are_all_or_nothing_and_keep_the_earlier_set(tmp_path, monkeypatch):
  from attnlab import outputs
  out = tmp_path / "out"
  with outputs.staged(out) as stage:
    for name in ("a.json", "b.md", "sub/c.png"):
      stage.write_text(name, f"old {name}")
  before = _files(out)
  assert sorted(before) == ["a.json", "b.md", "sub/c.png"]
  # a write fails half way (the OS names no file, as PIL's does): one line naming the file
  # the block was writing, nothing of the new set in place
  with pytest.raises(workdir_lib.WorkdirError,
                     match=rf"^writing {out}/sub/c.png failed: the disk is full$"):
    with outputs.staged(out) as stage:
      stage.write_text("a.json", "new")
      stage.write_text("b.md", "new")
      stage.path("sub/c.png")
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
  assert _files(out) == before
  _no_staging_left(out)
  # the last rename fails: the files already renamed are put back
  real_replace = os.replace

  def failing_replace(src, dst):
    if str(dst).endswith("c.png"):
      raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dst))
    return real_replace(src, dst)

  monkeypatch.setattr(os, "replace", failing_replace)
  with pytest.raises(workdir_lib.WorkdirError,
                     match=rf"^writing {out}/sub/c.png failed: the file system is read-only$"):
    with outputs.staged(out) as stage:
      for name in ("a.json", "b.md", "sub/c.png"):
        stage.write_text(name, "new")
  monkeypatch.undo()
  assert _files(out) == before
  _no_staging_left(out)
  # a failed first write into a new folder leaves no folder
  with pytest.raises(workdir_lib.WorkdirError):
    with outputs.staged(tmp_path / "new") as stage:
      stage.write_text("x", "1")
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
  assert not (tmp_path / "new").exists()
  # and success replaces the whole set
  with outputs.staged(out) as stage:
    for name in ("a.json", "b.md", "sub/c.png"):
      stage.write_text(name, "new")
  assert set(_files(out).values()) == {b"new"}
  _no_staging_left(out)


def test_evaluate_on_a_full_disk_is_one_line_and_keeps_the_earlier_results(trained, tmp_path):
  out = tmp_path / "eval"
  out.mkdir()
  for name in ("eval.json", "eval.md", "eval.png"):
    (out / name).write_text(f"earlier {name}")
  before = _files(out)
  # the PNG is written last; PIL's write on a full disk raises ENOSPC naming no file
  full = ("import errno, os, matplotlib.figure\n"
          "def savefig(self, *a, **k):\n"
          "  raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\n"
          "matplotlib.figure.Figure.savefig = savefig")
  result = _cli("evaluate", f"--workdir={trained}", "--lengths=32", f"--out={out}", inject=full)
  assert _one_line(result) == f"error: writing {out}/eval.png failed: the disk is full"
  assert _files(out) == before              # no eval.json / eval.md of the failed run
  _no_staging_left(out)


@pytest.mark.slow
@pytest.mark.parametrize("code,words", [(errno.ENOSPC, "the disk is full"),
                                        (errno.EROFS, "the file system is read-only")])
def test_evaluate_and_analyze_write_all_files_or_none(trained, tmp_path, monkeypatch, code,
                                                      words):
  out = tmp_path / "out"
  evaluation.evaluate_workdir(trained, [32], out, progress=False)
  report.analyze(trained, "hello there", out / "analysis", induction_batch=2, progress=False)
  before = _files(out)
  real = pathlib.Path.write_text

  def failing(self, *args, **kwargs):
    if self.name in ("eval.md", "viewer.html"):
      raise OSError(code, os.strerror(code), str(self))
    return real(self, *args, **kwargs)

  monkeypatch.setattr(pathlib.Path, "write_text", failing)
  with pytest.raises(workdir_lib.WorkdirError, match=rf"^writing {out}/eval.md failed: {words}$"):
    evaluation.evaluate_workdir(trained, [32, 64], out, progress=False)
  with pytest.raises(workdir_lib.WorkdirError,
                     match=rf"^writing {out}/analysis/viewer.html failed: {words}$"):
    report.analyze(trained, "other text", out / "analysis", induction_batch=2, progress=False)
  assert _files(out) == before
  _no_staging_left(out)


def test_a_checkpoint_write_failing_in_orbax_threads_is_one_line_and_leaves_no_workdir(
    tmp_path):
  # orbax writes the checkpoint in threads that log the failure with its traceback (about
  # 200 lines before this was fixed); the import builds its workdir aside
  full = ("import builtins, errno, io, os\n"
          "real = builtins.open\n"
          "def open_(file, mode='r', *a, **k):\n"
          "  if '.orbax-checkpoint-tmp' in str(file) and any(c in mode for c in 'wax'):\n"
          "    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\n"
          "  return real(file, mode, *a, **k)\n"
          "builtins.open = io.open = open_")
  workdir = tmp_path / "imported"
  result = _cli("import_hf", f"--checkpoint={HF / 'gpt2'}", f"--workdir={workdir}",
                f"--config={REPO / 'configs' / 'lm.py'}", inject=full)
  assert _one_line(result) == f"error: writing {workdir} failed: the disk is full"
  assert sorted(p.name for p in tmp_path.iterdir()) == []       # no workdir, nothing aside


def test_tensorstore_errors_that_report_an_os_error_are_one_line():
  from attnlab.cli import common
  tensorstore = ValueError(
      'RESOURCE_EXHAUSTED: Error opening "zarr" driver: Error writing "params.w/.zarray" in '
      'OCDBT database at local file "/runs/a/checkpoints/4.orbax-checkpoint-tmp/default.orbax-'
      'checkpoint-tmp/ocdbt.process_0/": Failed writing: "/runs/a/checkpoints/4.orbax-'
      'checkpoint-tmp/d/30a4": Failed to write 183 bytes to file 4: No space left on device '
      "[os_error_code='28'] [tensorstore_spec='{\"context\":{}}']")
  assert common.user_error(tensorstore) == ("writing the checkpoint /runs/a/checkpoints/4 "
                                            "failed: the disk is full")
  assert common.user_error(RuntimeError("Read-only file system: \"/runs/b/x\"")) == (
      "writing /runs/b/x failed: the file system is read-only")
  assert common.user_error(IsADirectoryError(errno.EISDIR, "Is a directory", "/runs/c")) == (
      "accessing /runs/c failed: Is a directory")
  # a bug is not a user error: it keeps its traceback
  assert common.user_error(TypeError("unsupported operand")) is None
  assert common.user_error(RuntimeError("Event loop is closed")) is None


@pytest.mark.slow
def test_a_real_full_disk_is_one_line(trained, tmp_path):
  """On a 1 MiB tmpfs (where this process may mount one): the real ENOSPC of PIL, orbax and
  tensorstore, not an injected one."""
  disk = tmp_path / "disk"
  disk.mkdir()
  mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs",
                            str(disk)],
                           capture_output=True)
  if mounted.returncode:
    pytest.skip("cannot mount a tmpfs here")
  try:
    (disk / "fill").write_bytes(b"\0" * (1024 * 1024 - 20 * 1024))  # ~20 KiB left
    result = _cli("evaluate", f"--workdir={trained}", "--lengths=32", f"--out={disk / 'eval'}")
    assert _one_line(result).endswith("failed: the disk is full")
    assert not (disk / "eval").exists()
    result = _cli("import_hf", f"--checkpoint={HF / 'gpt2'}", f"--workdir={disk / 'w'}",
                  f"--config={REPO / 'configs' / 'lm.py'}")
    assert _one_line(result).endswith("failed: the disk is full")
    assert sorted(p.name for p in disk.iterdir()) == ["fill"]
  finally:
    subprocess.run(["umount", str(disk)], check=True)


@pytest.mark.slow
def test_a_trainer_on_a_real_full_disk_is_one_line_and_keeps_its_checkpoint(tmp_path):
  """A run resumed on a tmpfs with about 40 KiB free: the real ENOSPC of orbax (or of the
  metrics file, whichever write comes first) is one line, and step 2 stays readable."""
  run = tmp_path / "run"
  fields = dict(train__steps=40, train__warmup_steps=1, train__checkpoint_every=2,
                train__log_every=1, train__eval_every=40, train__eval_batches=1,
                model__num_layers=1, train__batch_size=4)
  training.train_and_evaluate(tiny_config("rope", **fields), run, stop_after=2, progress=False)
  used = sum(p.stat().st_size for p in run.rglob("*") if p.is_file())
  disk = tmp_path / "disk"
  disk.mkdir()
  size = used + 2 * 1024 * 1024
  mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)],
                           capture_output=True)
  if mounted.returncode:
    pytest.skip("cannot mount a tmpfs here")
  try:
    shutil.copytree(run, disk / "run")
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    (disk / "fill").write_bytes(b"\0" * max(0, free - 40 * 1024))
    flags = [f"--config.{k.replace('__', '.')}={v}" for k, v in fields.items()]
    flags += ["--config.model.d_model=32", "--config.model.attention.num_heads=4",
              "--config.model.attention.num_kv_heads=4", "--config.data.seq_len=32",
              "--config.data.corpus=tinyshakespeare"]
    result = _cli("train", "--config=configs/lm.py:rope", f"--workdir={disk / 'run'}", *flags)
    assert _one_line(result).endswith("the disk is full") or "the disk is full;" in \
        _one_line(result)
    (disk / "fill").unlink()
    assert workdir_lib.restore_params(disk / "run")[2] >= 2
    assert workdir_lib.checkpoint_steps(disk / "run" / "checkpoints")[0] >= 2
  finally:
    subprocess.run(["umount", str(disk)], check=True)


# ----------------------------------------------------------------------------- malformed inputs


@pytest.mark.parametrize("module,args,line", [
    ("train", ["--config=/nonexistent/lm.py", "--workdir=/tmp/unused"],
     "error: --config='/nonexistent/lm.py': cannot load the config file: no such file"),
    ("sweep", ["--config=/nonexistent/sweep.py:rope", "--workdir=/tmp/unused"],
     "error: --config='/nonexistent/sweep.py:rope': cannot load the config file: no such file"),
])
def test_a_missing_config_file_is_one_line(module, args, line):
  assert _one_line(_cli(module, *args)) == line


def test_out_naming_a_file_is_one_line_before_anything_runs(trained, tmp_path):
  afile = tmp_path / "afile"
  afile.write_text("mine")
  assert _one_line(_cli("evaluate", f"--workdir={trained}", "--lengths=32", f"--out={afile}")) \
      == (f"error: --out={str(afile)!r} is a file; it must be a directory (created if missing) "
          f"for the output files")
  assert afile.read_text() == "mine"
  with pytest.raises(ConfigError, match=rf"--out='{afile}/sub' lies under '{afile}', which is a "
                                        rf"file"):
    report.analyze(trained, "hello", afile / "sub")


def test_non_utf8_text_flags_are_one_line(tmp_path):
  result = _cli("generate", f"--workdir={tmp_path}", "--prompt=hi", b"--stop=\xff".decode(
      "utf-8", "surrogateescape"))
  assert _one_line(result) == ("error: --stop=b'\\xff' is not valid UTF-8; give UTF-8 text "
                               "(for --stop one character, or an escape such as '\\n')")


@pytest.mark.parametrize("flag,value", [("induction_batch", 0), ("induction_batch", -3),
                                        ("sink_k", 0), ("seed", -1)])
def test_analyze_refuses_non_positive_counts_before_reading_the_run(trained, tmp_path, flag,
                                                                     value):
  with pytest.raises(ConfigError, match=rf"^--{flag}={value} must be an integer >= "):
    report.analyze(trained, "hello", tmp_path / "out", **{flag: value})
  assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("field,value,match", [
    ("trials", 0, r"^retrieval.trials=0 must be an integer >= 1"),
    ("trials", -2, r"^retrieval.trials=-2 must be an integer >= 1"),
    ("depths", (), r"^retrieval.depths=\(\) must be a non-empty list of numbers in \[0, 1\]"),
    ("depths", (0.5, 1.5), r"^retrieval.depths=\(0.5, 1.5\) must be a non-empty list"),
])
def test_retrieval_settings_are_checked_before_training(tmp_path, field, value, match):
  config = config_lib.load_config_file(str(REPO / "configs" / "retrieval.py"))
  config.retrieval[field] = value
  with pytest.raises(ConfigError, match=match):
    retrieval_study.run_study(config, tmp_path / "study", progress=False)
  assert not (tmp_path / "study").exists()


def _hf_copy(family: str, tmp_path, edit) -> pathlib.Path:
  src = pathlib.Path(shutil.copytree(HF / family, tmp_path / family))
  hf = json.loads((src / "config.json").read_text())
  (src / "config.json").write_text(json.dumps(edit(hf)))
  return src


def _base():
  c = config_lib.load_module(REPO / "configs" / "lm.py").base_config()
  c.data.corpus = "tinyshakespeare"
  return c


@pytest.mark.parametrize("family,edit,match", [
    ("llama", lambda hf: [], r"config.json: the top level is list \[\]; valid: a JSON object"),
    ("llama", lambda hf: {**hf, "num_attention_heads": 0},
     r"num_attention_heads=0 is not valid; valid: an integer >= 1"),
    ("gpt2", lambda hf: {**hf, "n_embd": "32"}, r"n_embd='32' is not valid; valid: an integer >= 1"),
    ("bloom", lambda hf: {**hf, "n_head": 0}, r"n_head=0 is not valid; valid: an integer >= 1"),
    ("gpt_neox", lambda hf: {**hf, "num_attention_heads": None},     # present but null
     r"config.json of GPT-NeoX lacks 'num_attention_heads'"),
    ("llama", lambda hf: {**hf, "num_key_value_heads": 1.5},
     r"num_key_value_heads=1.5 is not valid; valid: an integer >= 1"),
    ("llama", lambda hf: {**hf, "rope_scaling": "linear"},
     r"rope_scaling='linear' is not valid; valid: an object"),
    ("llama", lambda hf: {**hf, "architectures": "LlamaForCausalLM"},
     r"architectures='LlamaForCausalLM' is not valid; valid: a list of class names"),
])
def test_a_malformed_hugging_face_config_is_named(tmp_path, family, edit, match):
  src = _hf_copy(family, tmp_path, edit)
  with pytest.raises(hf_import.HFImportError, match=match):
    hf_import.import_checkpoint(src, tmp_path / "w", _base())
  assert not (tmp_path / "w").exists()


def test_a_malformed_hugging_face_config_is_one_line_on_the_command_line(tmp_path):
  src = _hf_copy("gpt2", tmp_path, lambda hf: {**hf, "n_head": 0})
  result = _cli("import_hf", f"--checkpoint={src}", f"--workdir={tmp_path / 'w'}",
                f"--config={REPO / 'configs' / 'lm.py'}")
  assert _one_line(result) == ("error: config.json of GPT-2: n_head=0 is not valid; valid: an "
                               "integer >= 1")
  assert not (tmp_path / "w").exists()


# ----------------------------------------------------------------------------- paths from configs


@pytest.mark.parametrize("name", ["/tmp/elsewhere", "a/b", "/", "", "sp ace", "up\\x"])
def test_a_sweep_variant_name_must_be_a_plain_name(name):
  message = rf"^sweep\.variants: {re.escape(repr(name))} cannot name a directory; valid: a plain"
  lm = tiny_sweep_config()
  lm.sweep.variants = {name: {"model": {"position": {"kind": "rope"}}}}
  with pytest.raises(ConfigError, match=message):
    sweeps.variant_configs(lm)
  task = config_lib.load_config_file(str(REPO / "configs" / "length_generalization.py"))
  task.sweep.variants = {name: {}}
  with pytest.raises(ConfigError, match=message):
    tasks.variant_configs(task)


def test_plain_variant_names_are_accepted_and_dots_cannot_leave_the_sweep():
  lm = tiny_sweep_config()
  lm.sweep.variants = {"Rope-2_v1": {"model": {"position": {"kind": "rope"}}}}
  assert list(sweeps.variant_configs(lm)) == ["Rope-2_v1"]
  config_lib.check_plain_name("v1.5", "sweep.variants")
  # a ConfigDict refuses dotted keys, but a name may come from elsewhere
  for name in (".", "..", "../up", ".hidden", None, 3):
    with pytest.raises(ConfigError, match=r"^sweep\.variants: .* cannot name a directory"):
      config_lib.check_plain_name(name, "sweep.variants")


def _sharded_llama(tmp_path, shard_name: str) -> pathlib.Path:
  from safetensors.numpy import load_file, save_file
  src = pathlib.Path(shutil.copytree(HF / "llama", tmp_path / "ckpt"))
  tensors = load_file(src / "model.safetensors")
  names = sorted(tensors)
  (src / "model.safetensors").unlink()
  shard = (src / shard_name).resolve()
  shard.parent.mkdir(parents=True, exist_ok=True)
  save_file({k: tensors[k] for k in names[1:]}, shard)
  save_file({names[0]: tensors[names[0]]}, src / "first.safetensors")
  (src / "model.safetensors.index.json").write_text(json.dumps(
      {"weight_map": {names[0]: "first.safetensors", **{k: shard_name for k in names[1:]}}}))
  return src


@pytest.mark.parametrize("shard", ["../outside/w.safetensors", "ABSOLUTE", "sub/../../x.safetensors"])
def test_a_shard_outside_the_checkpoint_folder_is_refused(tmp_path, shard):
  if shard == "ABSOLUTE":
    shard = str(tmp_path / "outside" / "abs.safetensors")
  src = _sharded_llama(tmp_path, shard)
  with pytest.raises(hf_import.HFImportError,
                     match=rf"index.json: shard {shard!r} is not inside the checkpoint folder"):
    hf_import.import_checkpoint(src, tmp_path / "w", _base())
  assert not (tmp_path / "w").exists()


def test_every_shard_read_is_hashed(tmp_path):
  src = _sharded_llama(tmp_path, "shards/rest.safetensors")      # inside, in a subfolder
  record = hf_import.import_checkpoint(src, tmp_path / "w", _base())
  assert set(record["files"]) >= {"shards/rest.safetensors", "first.safetensors",
                                  "model.safetensors.index.json", "config.json", "tokenizer.json"}
  assert record["files"]["shards/rest.safetensors"] == hf_import._sha256(
      src / "shards" / "rest.safetensors")
  assert json.loads((tmp_path / "w" / "import.json").read_text()) == record


# ----------------------------------------------------------------------------- evaluation settings


def test_evaluation_blocks_are_not_part_of_the_run_identity():
  base = config_lib.resolve(tiny_config())
  other = config_lib.with_declared_defaults(base)
  other.eval.max_tokens, other.eval.batch_tokens = 123, 456
  assert config_lib.run_identity(other) == config_lib.run_identity(base)
  retrieval = config_lib.load_config_file(str(REPO / "configs" / "retrieval.py"))
  a = sweeps.variant_configs(retrieval)["rope"]
  retrieval.retrieval.trials, retrieval.retrieval.depths = 7, (0.5,)
  b = sweeps.variant_configs(retrieval)["rope"]
  assert a.retrieval.trials != b.retrieval.trials
  assert config_lib.run_identity(config_lib.resolve(a)) == config_lib.run_identity(
      config_lib.resolve(b))
  # a training field still counts
  other.train.lr = 1e-4
  assert config_lib.run_identity(other) != config_lib.run_identity(base)


def test_what_eval_lengths_decide_about_a_task_model_still_counts():
  """The task trainer sizes a learned position table from eval.lengths: the resolved model
  block carries it, so a longer evaluation is a different model there, and nothing for a
  scheme without a table."""
  def resolved(kind, lengths):
    c = seq2seq_configs.get_config("transformer")
    c.data.task, c.data.max_length = "reverse", 5
    c.model.position.kind = kind
    c.eval.lengths = lengths
    return config_lib.run_identity(tasks.resolve(c))

  learned_short, learned_long = resolved("learned", (5, 10)), resolved("learned", (5, 40))
  assert {k for k in learned_long if learned_long[k] != learned_short.get(k)} == {
      "model.position.max_len"}
  assert resolved("rope", (5, 10)) == resolved("rope", (5, 40))


def _task_config(examples: int):
  c = seq2seq_configs.get_config("gru_luong")
  c.data.task, c.data.max_length = "reverse", 5
  c.model.rnn.hidden, c.model.rnn.attention_dim, c.model.rnn.embed_dim = 16, 16, 8
  c.train.steps, c.train.warmup_steps, c.train.log_every, c.train.checkpoint_every = 4, 1, 2, 2
  c.eval.lengths, c.eval.examples, c.eval.batch_size = (5,), examples, 8
  return c


def test_new_evaluation_settings_re_evaluate_a_task_run_without_retraining(tmp_path):
  run = tmp_path / "run"
  first = tasks.train_and_evaluate(_task_config(8), run, progress=False)
  trained = (run / "train.json").read_bytes(), _files(run / "checkpoints")
  second = tasks.train_and_evaluate(_task_config(16), run, progress=False)
  assert [r["examples"] for r in first] == [8] and [r["examples"] for r in second] == [16]
  assert json.loads((run / "eval.json").read_text())["spec"]["examples"] == 16
  assert ((run / "train.json").read_bytes(), _files(run / "checkpoints")) == trained


def test_new_evaluation_settings_re_evaluate_a_finished_sweep_without_retraining(tmp_path):
  config = tiny_sweep_config()
  config.sweep.protocols = ("non_overlapping",)
  config.sweep.factors = (1, 2)
  config.sweep.variants = {"v": {"model": {"position": {"kind": "rope"}}}}
  first = sweeps.run_sweep(config, tmp_path, progress=False)
  trained = _files(tmp_path / "v" / "checkpoints"), (tmp_path / "v" / "metrics.jsonl").read_bytes()
  config.eval.max_tokens = 128                   # was 256
  config.eval.batch_tokens = 64
  config.sweep.factors = (1, 2, 4)
  second = sweeps.run_sweep(config, tmp_path, progress=False)
  assert [r["eval_length"] for r in second] == [16, 32, 64]
  assert [r["tokens"] for r in first] == [256, 256]
  assert [r["tokens"] for r in second] == [128, 128, 128]
  cache = json.loads((tmp_path / "v" / "sweep_eval.json").read_text())
  assert cache["spec"]["max_tokens"] == 128 and cache["spec"]["lengths"] == [16, 32, 64]
  assert (_files(tmp_path / "v" / "checkpoints"),
          (tmp_path / "v" / "metrics.jsonl").read_bytes()) == trained
  assert len(json.loads((tmp_path / "results.json").read_text())["records"]) == 3


# ----------------------------------------------------------------------------- the flags


@pytest.mark.slow
def test_the_trainer_flags_reach_the_trainer(tmp_path):
  """On the command line: the refusal of a silent restart is one line naming --restart, and
  --restart trains again, keeping the earlier metrics."""
  run = tmp_path / "run"
  flags = [f"--workdir={run}", "--config=configs/lm.py:rope", "--config.model.num_layers=1",
           "--config.model.d_model=32", "--config.model.attention.num_heads=4",
           "--config.model.attention.num_kv_heads=4", "--config.data.seq_len=32",
           "--config.data.corpus=tinyshakespeare", "--config.train.batch_size=4",
           "--config.train.steps=4", "--config.train.checkpoint_every=2",
           "--config.train.log_every=2", "--config.train.eval_every=4",
           "--config.train.eval_batches=1", "--config.train.warmup_steps=1"]
  training.train_and_evaluate(tiny_config("rope", model__num_layers=1, train__batch_size=4,
                                          train__steps=4, train__checkpoint_every=2,
                                          train__log_every=2, train__eval_every=4,
                                          train__eval_batches=1, train__warmup_steps=1),
                              run, progress=False)
  aside = run / "checkpoints_unreadable"
  aside.mkdir()
  for step in (2, 4):
    os.replace(run / "checkpoints" / str(step), aside / str(step))
  line = _one_line(_cli("train", *flags))
  assert "has no readable checkpoint" in line and "Pass --restart" in line
  result = subprocess.run([sys.executable, "-m", "attnlab.train", *flags, "--restart"], cwd=REPO,
                          capture_output=True, text=True, timeout=300, env=ENV)
  assert result.returncode == 0, result.stderr[-2000:]
  assert (run / "restarts" / "1" / "metrics.jsonl").exists()
  assert workdir_lib.checkpoint_steps(run / "checkpoints") == [2, 4]


def test_every_fault_test_is_listed_in_the_guarantees():
  """docs/guarantees.md's table names every test of this file, and names no test that is
  not here (a renamed or removed case would leave the page promising it)."""
  text = (REPO / "docs" / "guarantees.md").read_text()
  table = text[text.index("## The fault-injection suite"):]
  listed = set(re.findall(r"`(test_\w+)`", table))
  here = set(re.findall(r"^def (test_\w+)\(", pathlib.Path(__file__).read_text(), re.M))
  assert here - listed == set(), "not in docs/guarantees.md"
  assert listed - here == set(), "listed in docs/guarantees.md but not in tests/test_faults.py"


def test_the_same_data_moved_or_read_by_another_python_is_the_same_data(tmp_path, capfd):
  """The identity is the content: the same bytes under another path, or the built-in
  corpus of another Python that reads the same, resume without a word."""
  record = {"field": "data.path", "source": "/old/text.txt", "sha256": "ab" * 32,
            "tokenizer": "bytes", "python": "3.11.7"}
  workdir_lib.check_data(tmp_path, record, 0)
  workdir_lib.check_data(tmp_path, dict(record, source="/new/text.txt", python="3.12.1"), 4)
  assert len(json.loads((tmp_path / "data.json").read_text())) == 1
  assert capfd.readouterr().err == ""
  with pytest.raises(workdir_lib.WorkdirError, match=r"trained on other data"):
    workdir_lib.check_data(tmp_path, dict(record, tokenizer="tok.json", tokenizer_sha256="cd"), 4)


def test_checkpoints_without_their_config_are_not_trained_over(tmp_path):
  """config.json deleted: the checkpoints' config is unknown, so a trainer with another
  config must neither write its own config.json nor try (and fail) to read them and set
  them aside."""
  run = tmp_path / "run"
  training.train_and_evaluate(_tiny(), run, stop_after=2, progress=False)
  (run / "config.json").unlink()
  before = _snapshot(run)
  with pytest.raises(workdir_lib.WorkdirError, match=r"holds checkpoints \(steps 2\) but no "
                                                     r"config.json"):
    training.train_and_evaluate(_tiny(model__d_model=64), run, progress=False)
  assert _snapshot(run) == before


def test_a_checkpoint_of_other_model_code_is_named_not_set_aside(tmp_path, monkeypatch):
  """The model's code changed since the run was written (another parameter shape under the
  same config): the checkpoints are intact, so they are neither skipped nor set aside."""
  run = tmp_path / "run"
  training.train_and_evaluate(_tiny(), run, stop_after=2, progress=False)
  before = _snapshot(run)
  real_init = training.init_state

  def changed_code(model, tx, cfg):          # as if a layer gained a parameter
    state = real_init(model, tx, cfg)
    state["params"] = dict(state["params"], extra={"w": jax.numpy.zeros(3)})
    state["opt_state"] = tx.init(state["params"])
    return state

  monkeypatch.setattr(training, "init_state", changed_code)
  with pytest.raises(workdir_lib.StateMismatch, match=r"step 2 .* holds other arrays than this "
                                                      r"model \(.*params/extra/w: saved None"):
    training.train_and_evaluate(_tiny(), run, progress=False)
  assert _snapshot(run) == before and not (run / "checkpoints_unreadable").exists()


def test_the_settings_the_guarantees_state_are_the_ones_in_force():
  """Every number docs/guarantees.md states is a setting of the code or of these tests
  (none is measured); each is read from where it is set, so an edit on either side fails."""
  import math
  text = " ".join((REPO / "docs" / "guarantees.md").read_text().split())
  stated = [f"`loop.PROBE_FACTOR` = {loop.PROBE_FACTOR:g} times",
            f"`loop.PROBE_MARGIN` = {loop.PROBE_MARGIN:g} nat",
            f"loss above {math.floor(evaluation.MAX_LOG_PPL)} nats",
            f"exp({math.floor(evaluation.MAX_LOG_PPL)})",
            f"a {READER_LOOP_STEPS}-step run",
            f"{FLIPPED_BYTES} bytes flipped",
            f"learning rate {DIVERGING_LR:g})",
            f"a {TMPFS_SIZE[:-1]} MiB tmpfs"]
  missing = [phrase for phrase in stated if phrase not in text]
  assert not missing, missing
  numbers = re.findall(r"(?<![\w.])\d+(?:\.\d+)?(?![\w.])", text)
  allowed = {"0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "60", "33", "100",
             str(math.floor(evaluation.MAX_LOG_PPL)), str(READER_LOOP_STEPS),
             str(FLIPPED_BYTES), f"{DIVERGING_LR:g}"}
  assert set(numbers) <= allowed, sorted(set(numbers) - allowed)
