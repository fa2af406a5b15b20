"""Training: the loss falls on real text, resume is bit-exact, a NaN keeps the last good checkpoint."""

import math
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import REPO, SHAKESPEARE, tiny_config

from attnlab import workdir as workdir_lib
from attnlab.engine import training as train


def _params(result):
  return jax.tree_util.tree_leaves(result["state"]["params"])


def _train_losses(workdir):
  return [(r["step"], r["loss"]) for r in workdir_lib.read_metrics(workdir) if r["split"] == "train"]


def test_loss_falls_on_tinyshakespeare(tmp_path):
  cfg = tiny_config("rope", model__d_model=64, train__steps=200, train__batch_size=16,
                    train__eval_every=200, train__eval_batches=8, train__checkpoint_every=200,
                    train__lr=3e-3, train__warmup_steps=10)
  train.train_and_evaluate(cfg, tmp_path, progress=False)
  records = workdir_lib.read_metrics(tmp_path)
  valid = [r["loss"] for r in records if r["split"] == "valid"][-1]
  first_train = [r["loss"] for r in records if r["split"] == "train"][0]
  # oracle: cross-entropy of the training split's byte frequencies on the valid split (~3.35)
  raw = np.frombuffer(SHAKESPEARE.read_bytes(), np.uint8)
  n_train = int(len(raw) * 0.9)
  p = np.bincount(raw[:n_train], minlength=256) / n_train
  counts = np.bincount(raw[n_train:], minlength=256)
  unigram = -(counts[counts > 0] * np.log(p[counts > 0])).sum() / counts.sum()
  assert first_train > unigram          # starts near ln(256) = 5.5, no better than frequencies
  assert valid < unigram - 0.7          # learned context, not just byte frequencies
  assert {"step", "split", "loss"} <= set(records[-1])
  assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  # TensorBoard holds the same validation loss as metrics.jsonl
  from tensorboard_reader import scalars
  events = scalars(tmp_path / "tensorboard")
  assert events["valid/loss"] == [(200, pytest.approx(valid, rel=1e-6))]


def test_resume_is_bit_identical(tmp_path):
  # with dropout: its keys must derive from (seed, step) for the resumed run to match
  cfg = tiny_config("alibi", train__steps=20, train__checkpoint_every=5, train__log_every=2,
                    model__dropout=0.1)
  straight = train.train_and_evaluate(cfg, tmp_path / "straight", progress=False)
  # interrupted at step 13: the checkpoint at 10 survives, steps 11-13 are redone
  train.train_and_evaluate(cfg, tmp_path / "resumed", stop_after=13, progress=False)
  assert max(s for s, _ in _train_losses(tmp_path / "resumed")) == 12
  resumed = train.train_and_evaluate(cfg, tmp_path / "resumed", progress=False)
  for a, b in zip(_params(straight), _params(resumed)):
    assert np.array_equal(np.asarray(a), np.asarray(b))
  assert _train_losses(tmp_path / "straight") == _train_losses(tmp_path / "resumed")
  valid = lambda d: [(r["step"], r["loss"]) for r in workdir_lib.read_metrics(d) if r["split"] == "valid"]  # noqa: E731
  assert valid(tmp_path / "straight") == valid(tmp_path / "resumed")


@pytest.mark.slow
def test_resume_after_the_process_is_killed(tmp_path):
  """SIGKILL mid-run, re-run the same command: final params equal an uninterrupted run."""
  args = ["--config=configs/lm.py:rope", "--config.model.num_layers=1", "--config.model.d_model=32",
          "--config.data.seq_len=32", "--config.train.batch_size=4", "--config.train.steps=400",
          "--config.train.warmup_steps=5", "--config.train.checkpoint_every=25",
          "--config.train.eval_every=400", "--config.train.eval_batches=1",
          "--config.train.log_every=25", "--config.eval.max_tokens=64"]
  args.append("--config.data.corpus=tinyshakespeare")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  cmd = lambda d: [sys.executable, "-m", "attnlab.train", f"--workdir={d}", *args]  # noqa: E731
  subprocess.run(cmd(tmp_path / "straight"), cwd=REPO, env=env, check=True, capture_output=True)
  proc = subprocess.Popen(cmd(tmp_path / "killed"), cwd=REPO, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  ckpts = tmp_path / "killed" / "checkpoints"
  deadline = time.time() + 240
  while time.time() < deadline and not (ckpts.exists() and any(p.name.isdigit() for p in ckpts.iterdir())):
    time.sleep(0.2)
  time.sleep(0.5)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  done = [int(p.name) for p in ckpts.iterdir() if p.name.isdigit()]
  assert done and max(done) < 400, "the run should have been killed before finishing"
  subprocess.run(cmd(tmp_path / "killed"), cwd=REPO, env=env, check=True, capture_output=True)
  assert _train_losses(tmp_path / "straight") == _train_losses(tmp_path / "killed")


def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
  cfg = tiny_config("rope", train__steps=20, train__checkpoint_every=5)
  clean = train.train_and_evaluate(tiny_config("rope", train__steps=20, train__checkpoint_every=5),
                                   tmp_path / "clean", stop_after=5, progress=False)
  original = train.make_train_step

  def poisoned(model, tx, seed, dropout, **kwargs):
    step_fn = original(model, tx, seed, dropout, **kwargs)

    def wrapped(state, inputs, targets):
      new_state, metrics = step_fn(state, inputs, targets)
      bad = new_state["step"] >= 7
      metrics = dict(metrics, loss=jnp.where(bad, jnp.nan, metrics["loss"]))
      new_state["params"] = jax.tree.map(lambda p: jnp.where(bad, jnp.nan, p), new_state["params"])
      return new_state, metrics

    return wrapped

  monkeypatch.setattr(train, "make_train_step", poisoned)
  with pytest.raises(train.TrainingDiverged, match=r"loss became nan at step 7; the last good checkpoint is step 5"):
    train.train_and_evaluate(cfg, tmp_path / "run", progress=False)
  monkeypatch.setattr(train, "make_train_step", original)
  checkpointer = workdir_lib.Checkpointer(tmp_path / "run" / "checkpoints", 3)
  assert checkpointer.latest_step() == 5
  restored = checkpointer.restore(5, clean["state"])
  checkpointer.close()
  for a, b in zip(jax.tree_util.tree_leaves(restored["params"]), _params(clean)):
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert np.isfinite(np.asarray(a)).all()
  assert math.isfinite(workdir_lib.read_metrics(tmp_path / "run")[-1]["loss"])
