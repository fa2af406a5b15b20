"""Conformance by construction for the registries outside attention: every retrieval task
in ``RETRIEVAL_TASKS`` and every architecture in ``ARCHS`` is checked here without a list,
so a new entry is tested the moment it is registered.

Oracles are independent of the code: a retrieval example is a next-token sequence whose
scored answer is found, by a plain byte search, earlier in its own context; a language model
and an encoder-decoder decoder are causal (changing a future token leaves earlier logits
alone, and does change later ones)."""

import jax
import numpy as np
import pytest

from attnlab import ConfigError
from attnlab.data import retrieval_tasks
from attnlab.data.retrieval_tasks import RETRIEVAL_TASKS, task_batch
from attnlab.engine import tasks as tasks_engine
from attnlab.models import ARCHS, build_lm, build_seq2seq


@pytest.mark.parametrize("task", RETRIEVAL_TASKS.names())
@pytest.mark.parametrize("length", [96, 200])
@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0, None])
def test_a_retrieval_example_asks_for_something_in_its_context(task, length, depth):
  inputs, targets, weights = task_batch(task, 6, length, seed=3, step=5, depth=depth)
  assert inputs.shape == targets.shape == weights.shape == (6, length)
  assert inputs.dtype == targets.dtype == np.int32 and weights.dtype == np.float32
  np.testing.assert_array_equal(targets[:, :-1], inputs[:, 1:])       # next-token pairs
  for row_in, row_t, row_w in zip(inputs, targets, weights):
    scored = np.flatnonzero(row_w)
    assert len(scored) >= 1 and set(np.unique(row_w)) <= {0.0, 1.0}
    assert np.array_equal(scored, np.arange(scored[0], length))       # the answer ends it
    answer = bytes(row_t[scored].astype(np.uint8))
    context = bytes(row_in[:scored[0] + 1].astype(np.uint8))[:-len(answer)]
    assert answer in context, (task, answer, context[-80:])


@pytest.mark.parametrize("task", RETRIEVAL_TASKS.names())
def test_a_retrieval_batch_is_a_pure_function_of_seed_step_and_split(task):
  first = task_batch(task, 4, 96, seed=1, step=2)
  again = task_batch(task, 4, 96, seed=1, step=2)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a, b)
  assert not np.array_equal(first[0], task_batch(task, 4, 96, seed=1, step=3)[0])
  assert not np.array_equal(first[0], task_batch(task, 4, 96, seed=1, step=2, split="valid")[0])


@pytest.mark.parametrize("task", RETRIEVAL_TASKS.names())
def test_a_retrieval_task_too_short_names_itself(task):
  with pytest.raises(ConfigError, match=rf"^{task}: length=4 is too short"):
    task_batch(task, 1, 4, seed=0, step=0)
  assert retrieval_tasks.RETRIEVAL_TASKS.get(task).__doc__


def _model_config(arch):
  c = tasks_engine.default_config()
  c.model.arch = arch
  c.model.d_model, c.model.num_layers = 16, 1
  c.model.attention.num_heads = c.model.attention.num_kv_heads = 2
  c.model.rnn.hidden, c.model.rnn.embed_dim, c.model.rnn.attention_dim = 8, 4, 8
  c.data.task, c.data.max_length, c.eval.lengths = "reverse", 6, (6,)
  return tasks_engine.resolve(c).model


def _causal(apply, tokens, vocab, cut):
  """Logits before ``cut`` unchanged, and some after it changed, when tokens from ``cut``
  on change."""
  changed = tokens.copy()
  changed[:, cut:] = (changed[:, cut:] + 1) % vocab
  a, b = np.asarray(apply(tokens)), np.asarray(apply(changed))
  np.testing.assert_allclose(b[:, :cut], a[:, :cut], atol=1e-6)
  assert not np.allclose(b[:, cut:], a[:, cut:])


@pytest.mark.parametrize("arch", ARCHS.names())
def test_every_architectures_language_model_is_causal(arch):
  cfg = _model_config(arch)
  model = build_lm(cfg)
  tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 9))
  params = model.init(jax.random.PRNGKey(0), tokens)
  _causal(lambda t: model.apply(params, t), tokens, cfg.vocab_size, cut=5)


@pytest.mark.parametrize("arch", ARCHS.names())
def test_every_architectures_decoder_is_causal_and_reads_the_source(arch):
  cfg = _model_config(arch)
  model = build_seq2seq(cfg)
  rng = np.random.default_rng(1)
  src = rng.integers(3, cfg.vocab_size, (2, 6))
  tgt = rng.integers(3, cfg.vocab_size, (2, 7))
  params = model.init(jax.random.PRNGKey(0), src, tgt)
  _causal(lambda t: model.apply(params, src, t), tgt, cfg.vocab_size, cut=4)
  other = (src + 1 - 3) % (cfg.vocab_size - 3) + 3
  assert not np.allclose(model.apply(params, other, tgt), model.apply(params, src, tgt))
