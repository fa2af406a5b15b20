"""Evaluation by length: numbers equal a direct computation; files are written; limits are errors."""

import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from helpers import REPO, tiny_config

from attnlab import workdir as workdir_lib
from attnlab import ConfigError, data
from attnlab.engine import evaluation as evaluate
from attnlab.engine import training as train
from attnlab.models import TransformerLM


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("run") / "alibi"
  train.train_and_evaluate(tiny_config("alibi", train__steps=10, train__checkpoint_every=10),
                           workdir, progress=False)
  return workdir


def _nll_oracle(model, params, inputs, targets):
  """Mean negative log-likelihood with numpy's log-softmax, window by window."""
  total = 0.0
  for x, y in zip(inputs, targets):
    logits = np.asarray(model.apply({"params": params}, x[None]), np.float64)[0]
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    total -= logp[np.arange(len(y)), y].sum()
  return total / targets.size


def _weighted_nll_oracle(model, params, inputs, targets, weights):
  """Sum of weight * negative log-likelihood (float64 numpy log-softmax), window by window."""
  total = 0.0
  for x, y, w in zip(inputs, targets, weights):
    logits = np.asarray(model.apply({"params": params}, x[None]), np.float64)[0]
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    total -= (w * logp[np.arange(len(y)), y]).sum()
  return total


def test_protocols_share_one_compiled_program_per_length_and_padding_scores_nothing(trained):
  """Both protocols at a length run one compiled program (ragged last batches are padded to
  the batch shape with zero weights); the losses still equal a window-by-window oracle."""
  cfg, params, _ = workdir_lib.restore_params(trained)
  tokens = data.load_corpus(cfg.data).valid
  scorer = evaluate.nll_scorer(cfg.model)
  assert evaluate.nll_scorer(cfg.model) is scorer
  before = scorer._cache_size()
  model = TransformerLM(cfg.model)
  for mode in ("non_overlapping", "sliding"):
    # batch_tokens=120: 5 windows of 24, 3 of 40; every (mode, length) has a ragged last batch
    # but sliding at 40 (21 windows)
    records = evaluate.evaluate_lengths(cfg, params, tokens, [24, 40], mode=mode, stride=8,
                                        max_tokens=200, batch_tokens=120, progress=False)
    for r in records:
      n = r["eval_length"]
      if mode == "sliding":
        inputs, targets, weights = data.sliding_windows(tokens, n, 8, 200)
      else:
        inputs, targets = data.non_overlapping_windows(tokens, n, 200 // n)
        weights = np.ones(targets.shape)
      assert r["tokens"] == int(weights.sum())
      expected = _weighted_nll_oracle(model, params, inputs, targets, weights) / weights.sum()
      assert r["loss"] == pytest.approx(expected, rel=1e-5)
  assert scorer._cache_size() - before == 2      # one program per length, not per call


def test_fixed_batches_pad_only_a_ragged_last_batch_of_several():
  x = np.arange(7)[:, None] * np.ones((1, 3))
  w = np.ones((7, 3), np.float32)
  batches = list(evaluate.fixed_batches((x, w), 3))
  assert [b[0].shape for b in batches] == [(3, 3)] * 3
  assert batches[2][0][:, 0].tolist() == [6, 6, 6]             # row 6, then two repeats
  assert batches[2][1].sum(axis=1).tolist() == [3, 0, 0]       # the repeats weigh nothing
  assert w.sum() == 21                                          # inputs untouched
  single, = evaluate.fixed_batches((x[:2], w[:2]), 3)           # one batch: no padding
  assert single[0].shape == (2, 3)
  assert np.array_equal(single[0], x[:2]) and np.array_equal(single[1], w[:2])   # rows as given


def test_losses_by_length_equal_a_direct_computation(trained):
  cfg, params, step = workdir_lib.restore_params(trained)
  assert step == 10
  tokens = data.load_corpus(cfg.data).valid
  records = evaluate.evaluate_lengths(cfg, params, tokens, [16, 64], max_tokens=256,
                                      batch_tokens=100, progress=False)
  model = TransformerLM(cfg.model)
  for r in records:
    n = r["eval_length"]
    inputs, targets = data.non_overlapping_windows(tokens, n, 256 // n)
    expected = _nll_oracle(model, params, inputs, targets)
    assert r["tokens"] == 256
    assert r["loss"] == pytest.approx(expected, rel=1e-5)
    assert r["ppl"] == pytest.approx(math.exp(expected), rel=1e-5)
    assert r["bpb"] == pytest.approx(expected / math.log(2), rel=1e-5)


def test_restored_params_equal_the_trained_ones(trained, tmp_path):
  again = train.train_and_evaluate(tiny_config("alibi", train__steps=10, train__checkpoint_every=10),
                                   tmp_path / "alibi", progress=False)
  _, params, _ = workdir_lib.restore_params(trained)
  for a, b in zip(jax.tree_util.tree_leaves(params),
                  jax.tree_util.tree_leaves(again["state"]["params"])):
    assert np.array_equal(np.asarray(a), np.asarray(b))


def test_cli_writes_table_json_and_png(trained, tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-m", "attnlab.evaluate", f"--workdir={trained}",
                           "--lengths=32,64", f"--out={tmp_path}"],
                          cwd=REPO, env=env, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr[-3000:]
  out = result.stdout
  assert "| variant | L=32 | L=64 |" in out
  records = json.loads((tmp_path / "eval.json").read_text())
  assert [r["eval_length"] for r in records] == [32, 64]
  assert all(r["eval_mode"] == "non_overlapping" and r["train_length"] == 32 for r in records)
  assert (tmp_path / "eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert f"{records[0]['ppl']:.3f}" in (tmp_path / "eval.md").read_text()


def test_learned_model_beyond_its_table_is_a_clear_error(tmp_path):
  workdir = tmp_path / "learned"
  train.train_and_evaluate(tiny_config("learned", train__steps=2, train__warmup_steps=1),
                           workdir, progress=False)
  cfg, params, _ = workdir_lib.restore_params(workdir)
  with pytest.raises(ConfigError, match=r"evaluation length=64 exceeds model.position.max_len=32"):
    evaluate.evaluate_lengths(cfg, params, np.zeros(1000, np.uint8), [32, 64], progress=False)
