"""Helpers of the induction, sinks and streaming studies (``attnlab.studies``; the
experiments in experiments/induction_heads, experiments/attention_sinks and
experiments/streaming), against oracles.

The runners' training loops are exercised by the studies themselves; here the pieces that
decide what those studies measure are checked: the training data really repeats, the loss
mask covers exactly the predictable positions, the probe losses split at the right place,
the "uniform attention" reference equals the metric on a uniform causal map, and a
one-step induction run records scores at initialisation equal to uniform attention.
"""

import numpy as np
import optax
import pytest

from attnlab.analysis import metrics
from attnlab.studies import induction, sinks, streaming
from helpers import perturbed_model


def _uniform_causal(n: int) -> np.ndarray:
  return np.tril(np.ones((n, n))) / np.arange(1, n + 1)[:, None]


def test_repeated_segments_repeat_with_their_period():
  rng = np.random.default_rng(0)
  seq, periods = induction.repeated_segments(rng, 16, 65, 4, 32, 32, 127)
  assert seq.shape == (16, 65) and seq.dtype == np.int32
  assert ((seq >= 32) & (seq < 127)).all()
  assert periods.min() >= 4 and periods.max() <= 32
  for row, p in zip(seq, periods):
    assert len(set(row[:p].tolist())) == p                       # distinct inside a segment
    np.testing.assert_array_equal(row[p:], row[:-p])             # x[t] = x[t - P]


def test_repeat_weights_mark_exactly_the_predictable_targets():
  rng = np.random.default_rng(1)
  seq, periods = induction.repeated_segments(rng, 8, 41, 3, 12, 0, 50)
  inputs, targets = seq[:, :-1], seq[:, 1:]
  w = induction.repeat_weights(periods, 40)
  for b, p in enumerate(periods):
    for t in range(40):
      # predictable in context iff the input token at t occurred before (at t - P) and the
      # token that followed that occurrence is this target
      seen_before = t >= p
      assert w[b, t] == float(seen_before)
      if seen_before:
        assert inputs[b, t - p] == inputs[b, t] and targets[b, t] == inputs[b, t - p + 1]


def test_probe_losses_split_first_copy_and_repeat():
  period, vocab = 5, 7
  rng = np.random.default_rng(2)
  tokens = metrics.induction_tokens(rng, 3, period, vocab)
  logits = rng.normal(size=(3, 2 * period, vocab)).astype(np.float32)
  first, repeat = induction.probe_losses(logits, tokens, period)
  losses = np.asarray(optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1],
                                                                      tokens[:, 1:]))
  # hand-indexed: predictions of tokens 1..P-1 (first copy) and P+1..2P-1 (repeat)
  assert first == pytest.approx(float(np.mean([losses[:, i] for i in range(0, period - 1)])))
  assert repeat == pytest.approx(float(np.mean([losses[:, i] for i in range(period, 2 * period - 1)])))


def test_first_step_above_threshold():
  scores = {0: [[0.1, 0.2], [0.1, 0.1]], 50: [[0.3, 0.4], [0.2, 0.6]],
            100: [[0.7, 0.4], [0.2, 0.9]]}
  records = [{"step": step, "layer": l, "head": h, "induction": s}
             for step, layers in scores.items() for l, heads in enumerate(layers)
             for h, s in enumerate(heads)]
  for order in (records, records[::-1]):             # the earliest step wins, in any order
    assert induction.first_step_above(order, 0.5) == (50, 1, 1)
    assert induction.first_step_above(order, 0.95) is None


@pytest.mark.parametrize("n,k", [(16, 1), (64, 1), (64, 4)])
def test_uniform_sink_mass_equals_the_metric_on_uniform_causal_attention(n, k):
  assert sinks.uniform_sink_mass(n, k) == pytest.approx(
      float(metrics.sink_mass(_uniform_causal(n), k)), rel=1e-12)


def test_sink_stats_per_layer_mean_and_largest_head():
  n = 8
  # layer 0: every head puts all attention on token 0; layer 1: uniform causal attention
  sink = np.zeros((n, n))
  sink[:, 0] = 1.0
  maps = np.stack([np.broadcast_to(sink, (2, 3, n, n)),
                   np.broadcast_to(_uniform_causal(n), (2, 3, n, n))])   # [L, B, H, n, n]
  maps = maps.copy()
  maps[1, :, 2] = sink                                                  # one sink head in layer 1
  stats = sinks.sink_stats(maps, [1])["k=1"]
  uniform = sinks.uniform_sink_mass(n, 1)
  np.testing.assert_allclose(stats["mean"], [1.0, (2 * uniform + 1.0) / 3])
  np.testing.assert_allclose(stats["max_head"], [1.0, 1.0])
  np.testing.assert_allclose(stats["per_head"][1], [uniform, uniform, 1.0])


def test_with_bos_leads_every_window_with_the_marker():
  from attnlab import data
  text = np.arange(1, 200, dtype=np.int32) % 250 + 1          # no byte 0 in the text
  plain = data.Batches(lambda step: data.get_batch(text, 3, 8, 0, step),
                       lambda i: data.get_batch(text, 3, 8, 0, i, "valid"), "toy")
  marked = sinks.with_bos(plain, 0)
  for got, base in ((marked.train(5), plain.train(5)), (marked.valid(1), plain.valid(1))):
    inputs, targets = got
    assert inputs.shape == targets.shape == (3, 8)
    assert (inputs[:, 0] == 0).all() and (inputs[:, 1:] != 0).all()
    np.testing.assert_array_equal(targets, base[0])              # the same text, shifted
    np.testing.assert_array_equal(inputs[:, 1:], targets[:, :-1])  # next-token pairs


def test_streaming_first_token_attention_reads_the_layers_maps():
  """The streaming study's sink diagnostic reads the maps the layers apply
  (attnlab.analysis.capture): with the query and key projections zeroed every causal row
  is uniform, so each layer and head puts exactly the study's ``uniform`` reference on the
  first token (a map without the causal mask would put 1/L on it); with the perturbed
  (sharp) weights it equals the captured maps' own average."""
  import jax
  import jax.numpy as jnp
  from attnlab.analysis import capture
  cfg, model, params = perturbed_model("rope")
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 256, (3, 32)), jnp.int32)
  query_min = 8
  uniform = float(np.mean(1.0 / (np.arange(query_min, 32) + 1)))   # as run_study writes it
  qk = 2 * cfg.model.d_model            # q and k columns of the fused projection (MHA)
  flat = jax.tree_util.tree_map_with_path(
      lambda path, x: x.at[:, :qk].set(0) if "qkv" in jax.tree_util.keystr(path) else x, params)
  mass = np.array(streaming.first_token_attention(cfg.model, flat, tokens, query_min))
  assert mass.shape == (cfg.model.num_layers, cfg.model.attention.num_heads)
  np.testing.assert_allclose(mass, uniform, rtol=1e-4)
  mass = np.array(streaming.first_token_attention(cfg.model, params, tokens, query_min))
  _, maps = capture.capture_attention(model, params, tokens)
  np.testing.assert_allclose(mass, maps[:, :, :, query_min:, 0].mean(axis=(1, 3)), atol=1e-5)
  assert np.abs(mass - uniform).max() > 0.01            # sharp maps are not uniform
