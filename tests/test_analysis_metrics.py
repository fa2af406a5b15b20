"""Head metrics on hand-built attention patterns, against values worked out by hand."""

import numpy as np
import pytest

from attnlab.analysis import metrics


def uniform_causal(n: int) -> np.ndarray:
  """Row i attends equally to keys 0..i: [n, n]."""
  return np.tril(np.ones((n, n))) / np.arange(1, n + 1)[:, None]


def previous_token_head(n: int) -> np.ndarray:
  """Row i puts all weight on i-1 (row 0 on itself): [n, n]."""
  p = np.zeros((n, n))
  p[0, 0] = 1.0
  p[np.arange(1, n), np.arange(n - 1)] = 1.0
  return p


def perfect_induction_head(period: int) -> np.ndarray:
  """Second-copy rows attend to the token after the previous occurrence; others uniformly."""
  p = uniform_causal(2 * period)
  rows = np.arange(period, 2 * period)
  p[rows] = 0.0
  p[rows, rows - period + 1] = 1.0
  return p


def test_induction_score_perfect_and_uniform():
  period = 16
  assert metrics.induction_score(perfect_induction_head(period), period) == pytest.approx(1.0)
  uniform = metrics.induction_score(uniform_causal(2 * period), period)
  # mean over i in [P, 2P) of 1/(i+1): between 1/N and 2/N for N = 2P
  assert uniform == pytest.approx(np.mean(1.0 / np.arange(period + 1, 2 * period + 1)))
  assert 1 / (2 * period) < uniform < 2 / (2 * period)
  # a previous-token head is not an induction head
  assert metrics.induction_score(previous_token_head(2 * period), period) == pytest.approx(0.0)


def test_previous_token_and_diagonal_scores():
  n = 12
  assert metrics.previous_token_score(previous_token_head(n)) == pytest.approx(1.0)
  assert metrics.diagonal_score(previous_token_head(n)) == pytest.approx(1 / n)
  assert metrics.diagonal_score(np.eye(n)) == pytest.approx(1.0)
  assert metrics.previous_token_score(np.eye(n)) == pytest.approx(0.0)
  # uniform: p[i, i-1] = 1/(i+1) for i >= 1
  assert metrics.previous_token_score(uniform_causal(n)) == pytest.approx(
      np.mean(1.0 / np.arange(2, n + 1)))


def test_entropy_distance_and_sink_mass():
  n = 8
  u = uniform_causal(n)
  assert metrics.entropy(u) == pytest.approx(np.mean(np.log(np.arange(1, n + 1))))
  assert metrics.entropy(np.eye(n)) == pytest.approx(0.0, abs=1e-9)
  assert metrics.mean_distance(u) == pytest.approx(np.mean(np.arange(n) / 2))  # mean of 0..i
  assert metrics.mean_distance(previous_token_head(n)) == pytest.approx((n - 1) / n)
  sink = np.zeros((n, n))
  sink[:, 0] = 1.0
  assert metrics.sink_mass(sink) == pytest.approx(1.0)
  assert metrics.sink_mass(u) == pytest.approx(np.mean(1.0 / np.arange(2, n + 1)))
  assert metrics.sink_mass(u, k=3) == pytest.approx(np.mean(3.0 / np.arange(4, n + 1)))
  with pytest.raises(ValueError, match="k=8"):
    metrics.sink_mass(u, k=8)


def test_scores_keep_leading_axes_and_roles():
  period = 8
  n = 2 * period
  maps = np.stack([perfect_induction_head(period), previous_token_head(n),
                   np.eye(n), uniform_causal(n)])            # [heads=4, q, k]
  maps = maps[None, None]                                    # [layers=1, batch=1, 4, q, k]
  records = metrics.head_metrics(maps, maps, period)
  assert [r["role"] for r in records] == ["induction", "previous-token", "self", "mixed"]
  assert records[0]["induction"] == pytest.approx(1.0)
  assert records[1]["previous_token"] == pytest.approx(1.0)
  table = metrics.markdown_table(records)
  assert "| 0 | induction ×1, previous-token ×1, self ×1, mixed ×1 |" in table


def test_induction_tokens_repeat_with_unique_previous_occurrence():
  tokens = metrics.induction_tokens(np.random.default_rng(0), 3, 20, 127, 32)
  assert tokens.shape == (3, 40)
  np.testing.assert_array_equal(tokens[:, :20], tokens[:, 20:])
  assert all(len(set(row[:20])) == 20 for row in tokens)
  assert tokens.min() >= 32 and tokens.max() < 127


@pytest.mark.parametrize("sink_logit,value", [("off_by_one", 0.0), ("learned", 1.5)])
def test_learned_sink_mass_hand_worked(sink_logit, value):
  """Zero q/k/v projections make every score 0: causal row i sees i + 1 keys of weight
  exp(0) and the sink exp(c), so the sink takes e^c / (e^c + i + 1) (c = 0 for off-by-one);
  the captured maps carry exactly the rest."""
  import jax
  from attnlab.analysis import capture
  from helpers import tiny_config
  from attnlab import config_lib
  from attnlab.models import TransformerLM
  cfg = config_lib.resolve(tiny_config("rope", model__attention__sink_logit=sink_logit))
  model = TransformerLM(cfg.model)
  params = model.init(jax.random.PRNGKey(0), np.zeros((1, 8), np.int32))["params"]

  def edit(path, x):
    name = jax.tree_util.keystr(path)
    if "qkv" in name:
      return np.zeros_like(x)
    return np.full_like(x, value) if name.endswith("['sinks']") else x
  params = jax.tree_util.tree_map_with_path(edit, params)
  n = 12
  _, maps = capture.capture_attention(model, params, np.arange(n, dtype=np.int32)[None])
  rows = np.arange(n)
  want_rows = np.exp(value) / (np.exp(value) + rows + 1)
  got = metrics.learned_sink_mass(maps)                       # [layers, batch, heads]
  np.testing.assert_allclose(got, want_rows.mean(), rtol=1e-5)
  np.testing.assert_allclose(1 - maps.sum(-1), np.broadcast_to(want_rows, maps.shape[:-1]),
                             atol=1e-6)
  records = metrics.head_metrics(maps, learned_sinks=True)
  assert all(abs(r["learned_sink_mass"] - want_rows.mean()) < 1e-5 for r in records)
  assert "learned_sink_mass" not in metrics.head_metrics(maps)[0]
