"""Retrieval tasks against plain-Python solutions; weighted loss; the study's accuracy grid."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import REPO

from attnlab import workdir as workdir_lib
from attnlab import ConfigError, config_lib
from attnlab.engine import retrieval_study
from attnlab.engine import training as train
from attnlab.data import retrieval_tasks
from attnlab.models import TransformerLM


def text(ids):
  return bytes(np.asarray(ids, np.uint8).tolist()).decode()


@pytest.mark.parametrize("length", [80, 128, 1000])
@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0])
def test_passkey_answer_is_the_hidden_key(length, depth):
  rng = np.random.default_rng(length)
  inputs, targets, weights = retrieval_tasks.passkey(rng, length, depth)
  assert inputs.shape == targets.shape == weights.shape == (length,)
  assert np.array_equal(inputs[1:], targets[:-1])
  whole = text(inputs) + text(targets[-1:])
  keys = re.findall(r"The pass key is (\d{5})\. Remember it\.", whole)
  assert len(keys) == 1
  assert whole.endswith("What is the pass key? The pass key is " + keys[0])
  assert text(targets[weights > 0]) == keys[0] and weights.sum() == 5
  needle_at = whole.index(" The pass key is ")
  filler_len = length + 1 - len(" The pass key is 00000. Remember it. ") - len(
      " What is the pass key? The pass key is ") - 5
  assert needle_at == round(depth * filler_len)


@pytest.mark.parametrize("length", [60, 200, 1000])
def test_associative_recall_answer_matches_a_plain_solution(length):
  for step in range(5):
    inputs, targets, weights = retrieval_tasks.task_batch("associative_recall", 1, length, 3, step)
    whole = text(inputs[0]) + text(targets[0, -1:])
    pairs = dict(re.findall(r"([a-z]{3})=(\d{3}) ", whole))
    asked = re.search(r" ([a-z]{3})\?=(\d{3})$", whole)
    assert asked and pairs[asked.group(1)] == asked.group(2)
    assert text(targets[0][weights[0] > 0]) == asked.group(2)
    assert len(pairs) == (length + 1 - 9) // 8        # as many distinct pairs as fit


def test_batches_are_pure_functions_of_seed_step_split():
  a = retrieval_tasks.task_batch("passkey", 3, 100, 1, 5)
  b = retrieval_tasks.task_batch("passkey", 3, 100, 1, 5)
  c = retrieval_tasks.task_batch("passkey", 3, 100, 1, 6)
  d = retrieval_tasks.task_batch("passkey", 3, 100, 1, 5, split="valid")
  assert all(np.array_equal(x, y) for x, y in zip(a, b))
  assert not np.array_equal(a[0], c[0]) and not np.array_equal(a[0], d[0])


def test_too_short_lengths_are_clear_errors():
  with pytest.raises(ConfigError, match=r"passkey: length=50 is too short; it needs at least 80 tokens"):
    retrieval_tasks.task_batch("passkey", 1, 50, 0, 0)
  with pytest.raises(ConfigError, match=r"associative_recall: length=10 is too short"):
    retrieval_tasks.task_batch("associative_recall", 1, 10, 0, 0)


def test_retrieval_tasks_are_a_registry_apart_from_the_algorithmic_tasks():
  from attnlab.data import tasks as algorithmic
  assert retrieval_tasks.RETRIEVAL_TASKS.names() == ["associative_recall", "passkey"]
  assert retrieval_tasks.RETRIEVAL_TASKS.get("passkey") is retrieval_tasks.passkey
  assert retrieval_tasks.RETRIEVAL_TASKS.field == "data.corpus"
  assert algorithmic.TASKS.field == "data.task"     # its associative_recall is another task
  with pytest.raises(ConfigError, match=r"data.corpus='needle' is not a retrieval task; "
                     r"valid: associative_recall, passkey"):
    retrieval_tasks.task_batch("needle", 1, 100, 0, 0)


def _tiny(corpus="passkey"):
  cfg = config_lib.load_config_file(str(REPO / "configs" / "retrieval.py"))
  cfg.model.num_layers, cfg.model.d_model, cfg.data.seq_len = 1, 32, 80
  cfg.data.corpus = corpus
  cfg.train.steps, cfg.train.warmup_steps, cfg.train.eval_batches = 4, 1, 1
  cfg.sweep.factors, cfg.retrieval.trials, cfg.retrieval.depths = (1, 2), 4, (0.0, 1.0)
  cfg.sweep.seeds = 1                  # one run per variant, in workdir/<variant>
  return cfg


@pytest.mark.slow
def test_weighted_loss_scores_only_the_answer():
  cfg = config_lib.resolve(_tiny())
  model = TransformerLM(cfg.model)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 80), jnp.int32))["params"]
  inputs, targets, weights = retrieval_tasks.task_batch("passkey", 2, 80, 0, 0)
  logits = np.asarray(model.apply({"params": params}, inputs), np.float64)
  logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
      - logits.max(-1, keepdims=True)
  nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
  expected = (nll * weights).sum() / weights.sum()
  got = float(train.token_loss(model, params, inputs, targets, weights))
  assert got == pytest.approx(expected, rel=1e-5)
  assert got != pytest.approx(nll.mean(), rel=1e-3)


def test_accuracy_grid_equals_a_direct_count(tmp_path):
  cfg = _tiny()
  cfg.sweep.variants = {"rope": cfg.sweep.variants["rope"].to_dict()}   # one variant (time)
  records = retrieval_study.run_study(cfg, tmp_path, progress=False)
  assert {(r["variant"], r["eval_length"], r["depth"]) for r in records} == {
      ("rope", n, d) for n in (80, 160) for d in (0.0, 1.0)}
  run_cfg, params, _ = workdir_lib.restore_params(tmp_path / "rope")
  model = TransformerLM(run_cfg.model)
  for i, n in enumerate((80, 160)):
    for j, d in enumerate((0.0, 1.0)):
      x, y, w = retrieval_tasks.task_batch("passkey", 4, n, 1234, i * 2 + j, "valid", depth=d)
      pred = np.asarray(model.apply({"params": params}, x)).argmax(-1)
      expected = np.mean([(pred[k][w[k] > 0] == y[k][w[k] > 0]).all() for k in range(4)])
      per_byte = np.mean([(pred[k][w[k] > 0] == y[k][w[k] > 0]).mean() for k in range(4)])
      got = next(r for r in records
                 if r["variant"] == "rope" and r["eval_length"] == n and r["depth"] == d)
      assert got["accuracy"] == expected          # a count of 4 windows / 4: exact
      assert got["byte_accuracy"] == pytest.approx(per_byte, abs=1e-6)
  assert (tmp_path / "results.png").read_bytes()[:4] == b"\x89PNG"
  assert "| depth | L=80 | L=160 | mean |" in (tmp_path / "results.md").read_text()


def test_study_refuses_a_text_corpus(tmp_path):
  cfg = _tiny("builtin")
  with pytest.raises(ConfigError, match=r"data.corpus='builtin'.*not a retrieval task; "
                     r"valid: associative_recall, passkey"):
    retrieval_study.run_study(cfg, tmp_path, progress=False)
