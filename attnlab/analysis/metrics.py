"""Per-head scores of attention maps, and a role table.

Every score takes maps ``p`` of shape ``[..., q, k]`` (for example
``[layers, batch, heads, q, k]`` from ``capture.capture_attention``), with causal
rows that sum to 1, and returns the score averaged over the query rows it is
defined on: shape ``p.shape[:-2]``. Average over the batch axis yourself.
"""

from __future__ import annotations

import numpy as np

_EPS = 1e-12


def entropy(p: np.ndarray) -> np.ndarray:
  """Mean over query rows of -sum_j p_ij log p_ij (nats). [..., q, k] -> [...]."""
  p = np.asarray(p, np.float64)
  return -(p * np.log(np.maximum(p, _EPS))).sum(-1).mean(-1)


def mean_distance(p: np.ndarray) -> np.ndarray:
  """Mean over query rows of the expected distance sum_j p_ij (i - j). [..., q, k] -> [...]."""
  p = np.asarray(p, np.float64)
  q_idx, k_idx = np.arange(p.shape[-2])[:, None], np.arange(p.shape[-1])[None, :]
  return (p * (q_idx - k_idx)).sum(-1).mean(-1)


def sink_mass(p: np.ndarray, k: int = 1) -> np.ndarray:
  """Attention on the first ``k`` tokens, averaged over query rows i >= k.

  Rows i < k are skipped: a causal query there can see only sink tokens.
  [..., q, keys] -> [...].
  """
  p = np.asarray(p, np.float64)
  if not 1 <= k < p.shape[-2]:
    raise ValueError(f"sink_mass: k={k} must be in [1, {p.shape[-2] - 1}] for {p.shape[-2]} queries")
  return p[..., k:, :k].sum(-1).mean(-1)


def learned_sink_mass(p: np.ndarray) -> np.ndarray:
  """Mass on a learned sink (``model.attention.sink_logit``): the part of each row that no
  key receives, 1 - sum_j p_ij, averaged over query rows. Maps of a model with sinks
  (``capture``) sum to less than 1; without sinks this is 0. [..., q, k] -> [...]."""
  p = np.asarray(p, np.float64)
  return (1.0 - p.sum(-1)).mean(-1)


def previous_token_score(p: np.ndarray) -> np.ndarray:
  """Mean over queries i >= 1 of p[i, i-1]. [..., q, k] -> [...]."""
  p = np.asarray(p, np.float64)
  return np.diagonal(p, offset=-1, axis1=-2, axis2=-1).mean(-1)


def diagonal_score(p: np.ndarray) -> np.ndarray:
  """Mean over queries of p[i, i] (attention to the token itself). [..., q, k] -> [...]."""
  p = np.asarray(p, np.float64)
  return np.diagonal(p, axis1=-2, axis2=-1).mean(-1)


def induction_tokens(rng: np.random.Generator, batch: int, period: int, vocab_size: int,
                     low: int = 0) -> np.ndarray:
  """Random tokens repeated once: int32 [batch, 2 * period], x[t] = x[t - period] for t >= period.

  Tokens are drawn from [low, vocab_size) without repeats inside a period (when the range
  allows), so each token's previous occurrence is unique.
  """
  span = vocab_size - low
  if span < 1:
    raise ValueError(f"induction_tokens: empty token range [{low}, {vocab_size})")
  if span >= period:
    first = np.stack([rng.permutation(span)[:period] for _ in range(batch)]) + low
  else:
    first = rng.integers(low, vocab_size, (batch, period))
  return np.concatenate([first, first], axis=1).astype(np.int32)


def induction_score(p: np.ndarray, period: int) -> np.ndarray:
  """Attention from the second copy to the token after the previous occurrence.

  For tokens ``induction_tokens(period)``, query i in [period, 2*period) sees the same
  token at i - period; an induction head attends to the token after it, i - period + 1.
  Score = mean over those queries of p[i, i - period + 1]: 1 for a perfect induction
  head, mean_i 1/(i+1) (about 1/N) for uniform causal attention. [..., q, k] -> [...].
  """
  p = np.asarray(p, np.float64)
  n = p.shape[-2]
  if not (1 <= period and 2 * period <= n):
    raise ValueError(f"induction_score: period={period} needs 2 * period <= {n} queries")
  rows = np.arange(period, 2 * period)
  return p[..., rows, rows - period + 1].mean(-1)


# A head takes the first role whose score passes its threshold (in this order); else "mixed".
ROLE_THRESHOLDS = (("induction", "induction", 0.3), ("previous-token", "previous_token", 0.5),
                   ("sink", "sink_mass", 0.5), ("self", "diagonal", 0.5))


def head_metrics(text_maps: np.ndarray, induction_maps: np.ndarray | None = None,
                 period: int | None = None, sink_k: int = 1,
                 learned_sinks: bool = False) -> list[dict]:
  """One record per (layer, head), scores averaged over the batch.

  text_maps: [layers, batch, heads, q, k] on real text -> entropy, mean distance,
  sink mass (first ``sink_k`` tokens), previous-token and diagonal scores;
  induction_maps: [layers, batch, heads, 2*period, 2*period] on ``induction_tokens``
  -> induction score; ``learned_sinks`` (the model has sink logits): the mass each head
  puts on its learned sink, beside the emergent sink mass on the first tokens. Each record
  also holds its ``role`` (``head_roles``).
  """
  scores = {"entropy": entropy(text_maps), "mean_distance": mean_distance(text_maps),
            "sink_mass": sink_mass(text_maps, sink_k),
            "previous_token": previous_token_score(text_maps),
            "diagonal": diagonal_score(text_maps)}
  if learned_sinks:
    scores["learned_sink_mass"] = learned_sink_mass(text_maps)
  if induction_maps is not None:
    scores["induction"] = induction_score(induction_maps, period)
  scores = {name: s.mean(1) for name, s in scores.items()}      # [layers, heads]
  layers, heads = scores["entropy"].shape
  records = [{"layer": l, "head": h, **{name: float(s[l, h]) for name, s in scores.items()}}
             for l in range(layers) for h in range(heads)]
  for r in records:
    r["role"] = head_roles(r)
  return records


def head_roles(record: dict) -> str:
  """The role of a head from its scores (first match in ``ROLE_THRESHOLDS``, else "mixed")."""
  for role, score, threshold in ROLE_THRESHOLDS:
    if score in record and record[score] >= threshold:
      return role
  return "mixed"


def markdown_table(records: list[dict]) -> str:
  """Rows (layer, head) with every score and the role; a role summary per layer below."""
  names = [n for n in ("entropy", "mean_distance", "sink_mass", "learned_sink_mass",
                       "previous_token", "diagonal", "induction") if n in records[0]]
  lines = ["| layer | head | " + " | ".join(names) + " | role |",
           "|---|---|" + "---|" * len(names) + "---|"]
  for r in records:
    lines.append(f"| {r['layer']} | {r['head']} | " +
                 " | ".join(f"{r[n]:.3f}" for n in names) + f" | {r['role']} |")
  lines += ["", "| layer | roles |", "|---|---|"]
  for layer in sorted({r["layer"] for r in records}):
    roles = [r["role"] for r in records if r["layer"] == layer]
    counts = ", ".join(f"{role} ×{roles.count(role)}" for role in dict.fromkeys(roles))
    lines.append(f"| {layer} | {counts} |")
  rules = "; ".join(f"{role}: {score} >= {t}" for role, score, t in ROLE_THRESHOLDS)
  return "\n".join(lines) + f"\n\nRoles (first match, else mixed): {rules}.\n"
