"""Fault injection: every way issue 33 found to lose a run, or to say something false about
it, tried again (docs/guarantees.md lists each promise beside its test here).

Nothing is lost (checkpoints, metrics and config survive every refusal byte for byte),
nothing happens silently (each refusal or fallback says what and why on one line), and
readers never change a run. OS errors (a full or read-only disk) are injected at the write
calls: the suite runs as root, where permissions do not bite.
"""

import errno
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from helpers import REPO, tiny_config

from attnlab import ConfigError, data
from attnlab import workdir as workdir_lib
from attnlab.engine import evaluation, loop, training


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


def _flip_bytes(step_dir: pathlib.Path, count: int = 16, seed: int = 0):
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
  _check_race(tmp_path, capfd, steps=40, seconds=120)


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
  # a flip inside compressed data fails to decode; elsewhere only the checksum tells
  checkpointer = workdir_lib.Checkpointer(run / "checkpoints", 3)
  with pytest.raises((workdir_lib.CorruptCheckpoint, ValueError)):
    checkpointer.read(4)
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
    training.train_and_evaluate(_tiny(train__lr=30.0, train__checkpoint_every=1, train__steps=12,
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
