"""The run engine's promises (docs/guarantees.md), each with a regression test of a defect
seen before: results carry fingerprints (no stale numbers after retraining), a checkpoint
is usable or not written, one writer per workdir, fallback from a damaged checkpoint or
metrics line, validation of the optimizer and vocabulary, one-line errors for the
inputs a user gets wrong (including a full disk and a read-only workdir)."""

import errno
import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import REPO, tiny_config

from attnlab import ConfigError, config_lib, data
from attnlab import workdir as workdir_lib
from attnlab.engine import evaluation, sweeps, tasks, training
from attnlab.inference import generation
from attnlab.models import num_params
from configs import seq2seq as seq2seq_configs


def _tiny(**fields):
  defaults = dict(train__steps=4, train__warmup_steps=1, train__checkpoint_every=2,
                  train__eval_every=4, train__log_every=2)
  return tiny_config("rope", **{**defaults, **fields})


# ----------------------------------------------------------------------------- fingerprints


def _task_config(hidden=16):
  c = seq2seq_configs.get_config("gru_luong")
  c.data.task, c.data.max_length = "reverse", 5
  c.model.rnn.hidden = hidden
  c.model.rnn.attention_dim = 16
  c.model.rnn.embed_dim = 8
  c.train.steps, c.train.warmup_steps, c.train.log_every = 6, 1, 3
  c.train.checkpoint_every = 3
  c.eval.lengths, c.eval.examples, c.eval.batch_size = (5,), 8, 8
  return c


def test_task_results_belong_to_the_model_that_produced_them(tmp_path):
  run = tmp_path / "run"
  first = tasks.train_and_evaluate(_task_config(16), run, progress=False)
  # another model in the same workdir is refused, not silently mixed with old results
  with pytest.raises(ConfigError, match=r"model.rnn.hidden: 16 -> 24"):
    tasks.train_and_evaluate(_task_config(24), run, progress=False)
  shutil.rmtree(run / "checkpoints")           # without its checkpoints: still that run
  with pytest.raises(ConfigError, match=r"model.rnn.hidden: 16 -> 24"):
    tasks.train_and_evaluate(_task_config(24), run, progress=False)
  for name in ("config.json", "metrics.jsonl", "provenance.jsonl", "data.json"):
    (run / name).unlink()                      # the user starts it over, eval.json left behind
  second = tasks.train_and_evaluate(_task_config(24), run, progress=False)
  cfg, params = tasks.train(_task_config(24), run, progress=False)
  assert second[0]["params"] == num_params(params) != first[0]["params"]
  assert [r["seq_acc"] for r in second] == [r["seq_acc"] for r in tasks.evaluate(cfg, params)]
  cached = json.loads((run / "eval.json").read_text())
  assert cached["fingerprint"]["params_sha256"] == workdir_lib.params_digest(params)


@pytest.mark.slow
def test_lm_sweep_evaluation_is_recomputed_for_a_retrained_variant(tmp_path):
  from helpers import tiny_sweep_config
  config = tiny_sweep_config()
  config.sweep.protocols = ("non_overlapping",)
  config.sweep.factors = (1, 2)
  config.sweep.variants = {"v": {"model": {"position": {"kind": "rope"}}}}
  first = sweeps.run_sweep(config, tmp_path, progress=False)
  shutil.rmtree(tmp_path / "v" / "checkpoints")   # started over, sweep_eval.json left behind
  for name in ("config.json", "metrics.jsonl", "provenance.jsonl", "data.json"):
    (tmp_path / "v" / name).unlink()
  # alibi, not xpos: at this size xpos scores within 3e-7 of rope, which only rounding told apart
  config.sweep.variants = {"v": {"model": {"position": {"kind": "alibi"}}}}
  second = sweeps.run_sweep(config, tmp_path, progress=False)
  cfg, params, _ = workdir_lib.restore_params(tmp_path / "v")
  assert cfg.model.position.kind == "alibi"
  direct = evaluation.evaluate_lengths(cfg, params, data.load_corpus(cfg.data).valid, [16],
                                       max_tokens=config.eval.max_tokens, progress=False)[0]
  assert second[0]["loss"] == pytest.approx(direct["loss"], rel=1e-6)
  # not the old model's number (a stale result would be it to the bit; rope and alibi: 2.7e-4)
  assert second[0]["loss"] != pytest.approx(first[0]["loss"], rel=1e-5)


# ----------------------------------------------------------------------------- usable checkpoints


@pytest.mark.slow
def test_divergence_names_a_checkpoint_that_evaluates_finite(tmp_path):
  with pytest.raises(training.TrainingDiverged) as info:
    training.train_and_evaluate(_tiny(train__lr=1e6, train__checkpoint_every=1,
                                      train__steps=8), tmp_path, progress=False)
  message = str(info.value)
  steps = workdir_lib.Checkpointer(tmp_path / "checkpoints", 3).steps()
  if steps:
    assert f"the last good checkpoint is step {max(steps)}" in message
    cfg, params, _ = workdir_lib.restore_params(tmp_path)
    records = evaluation.evaluate_lengths(cfg, params, data.load_corpus(cfg.data).valid, [32],
                                          max_tokens=256, progress=False)
    assert np.isfinite(records[0]["loss"])
  else:
    assert "no checkpoint was written before it" in message


def _scaled_params_workdir(tmp_path, factor):
  training.train_and_evaluate(_tiny(), tmp_path, progress=False)
  checkpointer = workdir_lib.Checkpointer(tmp_path / "checkpoints", 3)
  like = training.init_state(*_model_and_tx(), config_lib.resolve(_tiny()))
  state = checkpointer.restore(4, like)
  state["params"] = jax.tree.map(lambda p: p * factor, state["params"])
  checkpointer.save(6, state)
  checkpointer.close()


def _model_and_tx():
  from attnlab.models import build_lm
  cfg = config_lib.resolve(_tiny())
  return build_lm(cfg.model), training.make_optimizer(cfg.train, cfg.model)


def test_evaluate_and_generate_refuse_unusable_parameters(tmp_path):
  _scaled_params_workdir(tmp_path / "nan", jnp.nan)
  with pytest.raises(workdir_lib.WorkdirError, match=r"step 6 .* has non-finite values"):
    workdir_lib.restore_params(tmp_path / "nan")
  _scaled_params_workdir(tmp_path / "huge", 1e30)           # finite, but logits overflow
  cfg, params, _ = workdir_lib.restore_params(tmp_path / "huge")
  with pytest.raises(ConfigError, match="gives a non-finite loss"):
    evaluation.evaluate_workdir(tmp_path / "huge", [32], progress=False)
  assert not (tmp_path / "huge" / "eval.json").exists()
  with pytest.raises(ConfigError, match="logits are not finite"):
    generation.generate(cfg, params, "Thou", 4)


# ----------------------------------------------------------------------------- one writer


@pytest.mark.slow
def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path):
  with workdir_lib.lock(tmp_path):
    with pytest.raises(workdir_lib.WorkdirError, match=rf"in use by process {os.getpid()}"):
      training.train_and_evaluate(_tiny(), tmp_path, progress=False)
    cli = subprocess.run(
        [sys.executable, "-m", "attnlab.train", "--config=configs/lm.py:rope",
         f"--workdir={tmp_path}", "--config.train.steps=2"], cwd=REPO, capture_output=True,
        text=True, env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"}, timeout=300)
  assert cli.returncode == 2
  assert cli.stderr.strip() == (f"error: {tmp_path} is in use by process {os.getpid()}, which "
                                f"holds {tmp_path / '.lock'}; wait for it to finish or use "
                                f"another --workdir")
  result = training.train_and_evaluate(_tiny(), tmp_path, progress=False)   # released
  assert result["metrics"]["step"] == 4


# ----------------------------------------------------------------------------- fallback


def _truncate_data_files(step_dir: pathlib.Path):
  """A write cut short: every array data file of the checkpoint loses its last two thirds.
  (Damaging only the largest file is not enough: it may hold optimizer moments alone, which
  a params-only restore never reads.)"""
  files = [p for p in step_dir.rglob("*") if p.is_file() and p.parent.name == "d"
           and p.stat().st_size > 64]
  assert files
  for victim in files:
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 3])


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous(tmp_path, capfd):
  straight = training.train_and_evaluate(_tiny(train__steps=6), tmp_path / "straight",
                                         progress=False)
  run = tmp_path / "run"
  training.train_and_evaluate(_tiny(train__steps=6), run, stop_after=4, progress=False)
  _truncate_data_files(run / "checkpoints" / "4")
  cfg, params, step = workdir_lib.restore_params(run)      # a reader skips it, moves nothing
  assert step == 2 and "checkpoint step 4" in capfd.readouterr().err
  assert (run / "checkpoints" / "4").exists() and not (run / "checkpoints_unreadable").exists()
  with (run / "metrics.jsonl").open("a") as f:
    f.write('{"step": 5, "split": "tr')                    # a torn last line
  resumed = training.train_and_evaluate(_tiny(train__steps=6), run, progress=False)
  err = capfd.readouterr().err
  assert "incomplete" in err and "checkpoint step 4" in err
  assert (run / "checkpoints_unreadable" / "4").exists()   # the writer set it aside
  for a, b in zip(jax.tree.leaves(straight["state"]), jax.tree.leaves(resumed["state"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert ([r for r in workdir_lib.read_metrics(run) if r["split"] == "train"][-1]["loss"]
          == [r for r in workdir_lib.read_metrics(tmp_path / "straight")
              if r["split"] == "train"][-1]["loss"])


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize("fields,match", [
    ({"train__lr": float("inf")}, r"train.lr=inf must be > 0 and finite"),
    ({"model__vocab_size": 100}, r"model.vocab_size=100 must be 256"),
    ({"model__position__theta": 0.0}, r"model.position.theta=0.0 must be > 0"),
    ({"train__b2": 1.5}, r"train.b2=1.5 must be in \[0, 1\)"),
    ({"train__weight_decay": -0.1}, r"train.weight_decay=-0.1 must be >= 0"),
])
def test_values_that_failed_late_are_refused_before_anything_is_written(fields, match, tmp_path):
  with pytest.raises(ConfigError, match=match):
    training.train_and_evaluate(_tiny(**fields), tmp_path / "run", progress=False)
  assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_warmup_longer_than_the_run_warms_up_for_the_steps_it_has(tmp_path):
  cfg = config_lib.resolve(_tiny(train__steps=10, train__warmup_steps=100))
  schedule = training.learning_rate_schedule(cfg.train)
  lrs = [float(schedule(s)) for s in range(10)]
  assert lrs[0] == 0.0 and lrs[9] == pytest.approx(cfg.train.lr) and lrs == sorted(lrs)
  result = training.train_and_evaluate(_tiny(train__steps=10, train__warmup_steps=100), tmp_path,
                                       progress=False)
  assert result["metrics"]["step"] == 10


# ----------------------------------------------------------------------------- one-line errors


def test_commands_on_the_wrong_workdir_get_one_line(tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(workdir_lib.WorkdirError, match="is not a training workdir"):
    workdir_lib.restore_params(empty)
  (empty / "config.json").write_text(config_lib.resolve(_tiny()).to_json())
  with pytest.raises(workdir_lib.WorkdirError, match="no checkpoint in .*: train the run first"):
    workdir_lib.restore_params(empty)
  task_dir = tmp_path / "task"
  task_dir.mkdir()
  (task_dir / "config.json").write_text(json.dumps(_task_config().to_dict()))
  with pytest.raises(workdir_lib.WorkdirError, match=r"algorithmic-task run \(data.task='reverse'"):
    workdir_lib.restore_params(task_dir)
  rnn = config_lib.load_config_file(str(REPO / "configs" / "rnn_lm.py"))
  with pytest.raises(ConfigError, match=r"model.arch='rnn': generation runs Transformer"):
    generation.check_request(config_lib.resolve(rnn).model, [3], 4, (), None, True)
  cli = subprocess.run([sys.executable, "-m", "attnlab.evaluate", f"--workdir={task_dir}"],
                       cwd=REPO, capture_output=True, text=True, timeout=300,
                       env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"})
  assert cli.returncode == 2 and len(cli.stderr.strip().splitlines()) == 1
  assert "algorithmic-task run" in cli.stderr


def test_the_override_in_the_extrapolation_docstring_works():
  from absl import flags
  from ml_collections import config_flags
  argv = ["x", f"--config={REPO / 'configs' / 'extrapolation.py'}:rope,alibi",
          "--config.sweep.variants.rope.model.position.scaling=yarn",
          "--config.sweep.variants.rope.model.position.scale_factor=4"]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True,
                                  sys_argv=argv)
  fv(argv)
  variants = sweeps.variant_configs(fv.config)
  assert variants["rope"].model.position.scaling == "yarn"
  assert variants["rope"].model.position.scale_factor == 4.0
  assert variants["alibi"].model.position.scaling == "none"          # untouched
  assert variants["rope"].model.position.theta == fv.config.model.position.theta


@pytest.mark.slow
@pytest.mark.parametrize("code,words", [(errno.ENOSPC, "the disk is full"),
                                        (errno.EROFS, "the file system is read-only")])
def test_a_full_disk_or_read_only_workdir_is_one_line_and_keeps_the_last_checkpoint(
    tmp_path, monkeypatch, code, words):
  training.train_and_evaluate(_tiny(), tmp_path / "run", stop_after=2, progress=False)

  def failing_save(self, step, state, probe_loss=None):
    raise OSError(code, os.strerror(code))

  monkeypatch.setattr(workdir_lib.Checkpointer, "save", failing_save)
  with pytest.raises(workdir_lib.WorkdirError,
                     match=rf"writing the checkpoint of step 4 to .* failed: {words}; the last "
                           rf"good checkpoint is step 2"):
    training.train_and_evaluate(_tiny(), tmp_path / "run", progress=False)
  monkeypatch.undo()
  assert workdir_lib.restore_params(tmp_path / "run")[2] == 2       # intact
  # a workdir that cannot be written at all is named before anything runs
  real_write = pathlib.Path.write_text

  def read_only(self, *args, **kwargs):
    if "fresh" in str(self):
      raise OSError(code, os.strerror(code))
    return real_write(self, *args, **kwargs)

  monkeypatch.setattr(pathlib.Path, "write_text", read_only)
  with pytest.raises(workdir_lib.WorkdirError, match=rf"writing to .*fresh failed: {words}"):
    training.train_and_evaluate(_tiny(), tmp_path / "fresh", progress=False)


# ----------------------------------------------------------------------------- kill -9


def _kill_repeatedly(cmd, workdir: pathlib.Path, kills: int, seed: int):
  """Start ``cmd`` and SIGKILL it ``kills`` times at random moments after it has written a
  checkpoint (with checkpoints every step, most moments fall inside a checkpoint write),
  then let it finish."""
  import random
  import signal
  import time
  rng = random.Random(seed)
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  for _ in range(kills):
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    before = set(_steps(workdir))
    deadline = time.time() + 300
    while time.time() < deadline and set(_steps(workdir)) <= before and proc.poll() is None:
      time.sleep(0.05)
    time.sleep(rng.uniform(0.0, 1.5))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True, timeout=600)


def _steps(workdir):
  ckpts = pathlib.Path(workdir) / "checkpoints"
  return [int(p.name) for p in ckpts.iterdir() if p.name.isdigit()] if ckpts.exists() else []


def _final_state(workdir):
  """(step, the whole saved state as numpy) of the newest checkpoint."""
  checkpointer = workdir_lib.Checkpointer(pathlib.Path(workdir) / "checkpoints", 3)
  step = checkpointer.latest_step()
  state = checkpointer.read(step)
  checkpointer.close()
  return step, state


@pytest.mark.slow
@pytest.mark.parametrize("trainer", ["lm", "tasks"])
def test_killed_runs_resume_exactly(trainer, tmp_path):
  if trainer == "lm":
    args = ["-m", "attnlab.train", "--config=configs/lm.py:rope", "--config.model.num_layers=1",
            "--config.model.d_model=32", "--config.data.seq_len=32",
            "--config.train.batch_size=4", "--config.train.steps=60",
            "--config.train.warmup_steps=5", "--config.train.checkpoint_every=1",
            "--config.train.keep_checkpoints=2", "--config.train.eval_every=30",
            "--config.train.eval_batches=1", "--config.train.log_every=5"]
  else:
    args = ["-m", "attnlab.tasks_train", "--config=configs/seq2seq.py:gru_luong",
            "--config.data.task=reverse", "--config.data.max_length=6",
            "--config.model.rnn.hidden=16", "--config.model.rnn.attention_dim=16",
            "--config.train.steps=80", "--config.train.warmup_steps=5",
            "--config.train.checkpoint_every=1", "--config.train.log_every=5",
            "--config.eval.lengths=(3,6)", "--config.eval.examples=16",
            "--config.eval.batch_size=16"]
  cmd = lambda d: [sys.executable, *args, f"--workdir={d}"]  # noqa: E731
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  subprocess.run(cmd(tmp_path / "straight"), cwd=REPO, env=env, check=True, capture_output=True,
                 timeout=600)
  _kill_repeatedly(cmd(tmp_path / "killed"), tmp_path / "killed", kills=4, seed=7)
  step_a, raw_a = _final_state(tmp_path / "straight")
  step_b, raw_b = _final_state(tmp_path / "killed")
  assert step_a == step_b
  leaves_a, leaves_b = jax.tree.leaves(raw_a), jax.tree.leaves(raw_b)
  assert len(leaves_a) == len(leaves_b) > 0
  for a, b in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  metrics = lambda d: [(r["step"], r["split"], r["loss"]) for r in workdir_lib.read_metrics(d)]  # noqa: E731
  assert metrics(tmp_path / "straight") == metrics(tmp_path / "killed")
