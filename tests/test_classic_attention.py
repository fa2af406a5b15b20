"""Bahdanau and Luong attention: hand-worked scores, weights that sum to 1 over valid
source positions and ignore padding, in the functions, the modules and whole models."""

import jax
import ml_collections
import numpy as np
import pytest

from attnlab.models import build_seq2seq
from attnlab.data import tasks
from attnlab.models import classic_attention as ca
from configs import seq2seq as seq2seq_configs

# The tiny example worked by hand below: query s = (1, 2); keys h1 = (1, 0), h2 = (0, 1),
# h3 = (1, 1), and h3 is padding.
S = np.array([[1.0, 2.0]], np.float32)
H = np.array([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]], np.float32)
MASK = np.array([[True, True, False]])


def test_additive_scores_hand_worked():
  # W = [[1, 0], [0, 0]] -> W s = (1, 0); U swaps coordinates -> U h1 = (0, 1), U h2 = (1, 0);
  # v = (1, -1).  e1 = tanh(1 + 0) - tanh(0 + 1) = 0;  e2 = tanh(1 + 1) - tanh(0 + 0) = tanh 2
  # = 0.9640276.  alpha = softmax(0, 0.9640276) = (1, e^0.9640276) / (1 + e^0.9640276)
  # = (0.2760725, 0.7239275), alpha3 = 0;  c = alpha1 h1 + alpha2 h2 = (0.2760725, 0.7239275).
  w = np.array([[1.0, 0.0], [0.0, 0.0]], np.float32)
  u = np.array([[0.0, 1.0], [1.0, 0.0]], np.float32)
  v = np.array([1.0, -1.0], np.float32)
  scores = ca.additive_scores(S @ w.T, H @ u.T, v)
  np.testing.assert_allclose(scores[0, :2], [0.0, 0.9640276], atol=1e-6)
  # the module, with the same matrices (a Dense kernel K computes x @ K, so K = W^T)
  module = ca.AdditiveAttention(attention_dim=2)
  params = {"params": {"W": {"kernel": w.T}, "U": {"kernel": u.T}, "v": v}}
  context, weights = module.apply(params, S, H, MASK)
  np.testing.assert_allclose(weights, [[0.2760725, 0.7239275, 0.0]], atol=1e-6)
  np.testing.assert_allclose(context, [[0.2760725, 0.7239275]], atol=1e-6)


@pytest.mark.parametrize("score,params,expected", [
    # dot: e = s.h = (1, 2, [3]) -> softmax(1, 2) = (0.2689414, 0.7310586)
    ("dot", {}, [0.2689414, 0.7310586]),
    # general, W = diag(1, -1): s^T W = (1, -2) -> e = (1, -2, [-1]) -> (0.9525741, 0.0474259)
    ("general", {"W": np.diag([1.0, -1.0]).astype(np.float32)}, [0.9525741, 0.0474259]),
    # concat, A = 1, W picks s_1 + h_2, v = 2: e1 = 2 tanh(1 + 0) = 1.5231883,
    # e2 = 2 tanh(1 + 1) = 1.9280552 -> softmax = (0.4001436, 0.5998564)
    ("concat", {"W": np.array([[1.0], [0.0], [0.0], [1.0]], np.float32),
                "v": np.array([2.0], np.float32)}, [0.4001436, 0.5998564]),
])
def test_multiplicative_scores_hand_worked(score, params, expected):
  module = ca.MultiplicativeAttention(score=score, attention_dim=1)
  context, weights = module.apply({"params": params}, S, H, MASK)
  np.testing.assert_allclose(weights, [expected + [0.0]], atol=1e-6)
  np.testing.assert_allclose(context, [expected], atol=1e-6)   # h1, h2 are the unit vectors


def test_pure_score_functions_match_numpy_formulas():
  rng = np.random.default_rng(0)
  s, h = rng.standard_normal((3, 4)), rng.standard_normal((3, 5, 6))
  w, w2, v = rng.standard_normal((4, 6)), rng.standard_normal((10, 7)), rng.standard_normal(7)
  general = np.array([[s[b] @ w @ h[b, i] for i in range(5)] for b in range(3)])
  concat = np.array([[v @ np.tanh(np.concatenate([s[b], h[b, i]]) @ w2) for i in range(5)]
                     for b in range(3)])
  np.testing.assert_allclose(ca.general_scores(s, h, w), general, rtol=1e-5)
  np.testing.assert_allclose(ca.concat_scores(s, h, w2, v), concat, rtol=1e-5)
  np.testing.assert_allclose(ca.dot_scores(s, h[..., :4]),
                             np.einsum("bd,bsd->bs", s, h[..., :4]), rtol=1e-5)


def test_masked_softmax_sums_to_one_over_valid_positions_and_ignores_padding():
  rng = np.random.default_rng(1)
  scores = rng.standard_normal((6, 9)).astype(np.float32) * 5
  lengths = np.array([1, 3, 9, 5, 2, 0])
  mask = np.arange(9)[None] < lengths[:, None]
  w = np.asarray(ca.masked_softmax(scores, mask))
  np.testing.assert_allclose(w.sum(-1), [1, 1, 1, 1, 1, 0], atol=1e-6)   # no valid key: zeros
  assert np.all(w[~mask] == 0) and not np.isnan(w).any()
  for b, n in enumerate(lengths[:-1]):                                    # numpy softmax oracle
    e = np.exp(scores[b, :n] - scores[b, :n].max())
    np.testing.assert_allclose(w[b, :n], e / e.sum(), rtol=1e-5)
  # changing scores at padded positions changes nothing
  noisy = np.where(mask, scores, 1e4)
  np.testing.assert_array_equal(np.asarray(ca.masked_softmax(noisy, mask)), w)


def _model_cfg(preset, **rnn):
  c = seq2seq_configs.get_config(preset)
  c.model.vocab_size = len(tasks.VOCAB)
  c.model.d_model = 32
  c.model.num_layers = 1
  c.model.rnn.hidden = 16
  c.model.rnn.embed_dim = 8
  c.model.rnn.attention_dim = 16
  for k, v in rnn.items():
    c.model.rnn[k] = v
  return ml_collections.FrozenConfigDict(c.model)


def _batch(lengths, width, seed=0):
  rng = np.random.default_rng(seed)
  src = np.zeros((len(lengths), width), np.int32)
  for b, n in enumerate(lengths):
    src[b, :n] = rng.integers(3, 13, n)
  tgt_in = np.concatenate([np.full((len(lengths), 1), tasks.BOS), rng.integers(3, 13, (len(lengths), 5))],
                          1).astype(np.int32)
  return src, tgt_in


@pytest.mark.parametrize("preset,rnn", [
    ("gru_bahdanau", {}),     # the default tier runs the first case, the slow tier the others
    pytest.param("lstm_luong", {"luong_score": "dot", "bidirectional": False},
                 marks=pytest.mark.slow),
    pytest.param("gru_luong", {"luong_score": "concat", "input_feeding": False},
                 marks=pytest.mark.slow)])
def test_model_attention_weights_sum_to_one_and_skip_source_padding(preset, rnn):
  cfg = _model_cfg(preset, **rnn)
  model = build_seq2seq(cfg)
  src, tgt_in = _batch([4, 7, 1], 7)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), src, tgt_in)
  apply = jax.jit(model.apply, static_argnames=("return_weights",))
  logits, weights = apply(params, src, tgt_in, return_weights=True)
  valid = src != tasks.PAD                                                 # [B, S]
  np.testing.assert_allclose(np.asarray(weights).sum(-1), 1.0, atol=1e-5)  # [B, T]
  assert np.all(np.asarray(weights)[np.broadcast_to(~valid[:, None], weights.shape)] == 0)
  # extra padding on the source leaves logits and weights unchanged
  padded = np.pad(src, ((0, 0), (0, 5)))
  logits2, weights2 = apply(params, padded, tgt_in, return_weights=True)
  np.testing.assert_allclose(logits2, logits, atol=1e-5)
  np.testing.assert_allclose(np.asarray(weights2)[..., :7], weights, atol=1e-6)


@pytest.mark.parametrize("preset", ["gru", pytest.param("transformer", marks=pytest.mark.slow)])
def test_models_without_rnn_attention_ignore_source_padding(preset):
  cfg = _model_cfg(preset)
  model = build_seq2seq(cfg)
  src, tgt_in = _batch([4, 7, 2], 7, seed=1)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), src, tgt_in)
  apply = jax.jit(model.apply)
  logits = apply(params, src, tgt_in)
  np.testing.assert_allclose(apply(params, np.pad(src, ((0, 0), (0, 6))), tgt_in), logits,
                             atol=1e-5)
  # a sequence's logits depend on its own valid tokens only (not on the batch's widths)
  alone = apply(params, src[2:3, :2], tgt_in[2:3])
  np.testing.assert_allclose(alone[0], logits[2], atol=1e-5)
