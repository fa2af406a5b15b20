"""Attention analysis: capture maps from a trained LM, score heads, draw and view them.

``capture``: attention probabilities of every layer (``SelfAttention`` sows them).
``metrics``: per-head scores on maps ``[..., heads, q, k]`` and a role table.
``plots``: PNG heatmaps. ``viewer``: a self-contained interactive HTML page.
The command line is ``python -m attnlab.analyze``.
"""

from attnlab.analysis.capture import CaptureUnavailable, capture_attention, restore_model
from attnlab.analysis.metrics import (ROLE_THRESHOLDS, diagonal_score, entropy, head_metrics,
                                      head_roles, induction_score, induction_tokens,
                                      mean_distance, previous_token_score, sink_mass)

__all__ = ["CaptureUnavailable", "ROLE_THRESHOLDS", "capture_attention", "diagonal_score",
           "entropy", "head_metrics", "head_roles", "induction_score", "induction_tokens",
           "mean_distance", "previous_token_score", "restore_model", "sink_mass"]
