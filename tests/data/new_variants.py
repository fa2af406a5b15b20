"""Three variants as a researcher adds them, each one registration and no test of its own
(``tests/test_conformance_catches.py`` loads this file as a pytest plugin, the "one import
line", and runs the conformance suite on them by name):

- ``dilated_sinks``: a pattern, every ``dilation``-th key of the last ``window`` plus the
  first ``sinks`` keys, causal (closed-form block map from its parts);
- ``log_distance``: a position scheme whose learned per-head bias is
  ``-a_h * log1p(|i - j|)``;
- ``learned_temperature``: a score modifier ``s * softplus(t_h)`` (not additive).
"""

import jax
import jax.numpy as jnp

from attnlab.attention import masks
from attnlab.attention.patterns import PATTERNS, PatternSpec, SINKS, WINDOW
from attnlab.attention.pytree import pytree_dataclass
from attnlab.attention.score_mods import SCORE_MODS, AdditiveBias, ScoreMod, ScoreModSpec
from attnlab.positional import POSITIONS, ParamSpec, PositionScheme
from attnlab.registry import Field

STEP = Field("step", 2, "dilated_sinks: every step-th key", minimum=1)


def _dilated_sinks(cfg, layer):
  return ((masks.dilated(cfg.window, cfg.step) | masks.Sinks(count=cfg.sinks))
          & masks.causal())


PATTERNS.register("dilated_sinks")(PatternSpec(
    _dilated_sinks, causal=True, fields=(WINDOW, SINKS, STEP),
    doc="every step-th key of the last window * step, plus the first sinks keys"))


@pytree_dataclass(data=("a",), per_head=("a",))
class LogDistance(AdditiveBias):
  a: jax.Array

  def bias(self, q_idx, kv_idx):
    return -self.a[:, None, None] * jnp.log1p(jnp.abs(q_idx - kv_idx).astype(jnp.float32))


@POSITIONS.register("log_distance")
class LogDistanceScheme(PositionScheme):
  """-a_h log1p(|i - j|), a learned per head."""
  biases = True
  fields = (Field("log_init", 0.5, "log_distance: initial a_h", minimum=0.0),)

  def attention_params(self, num_heads):
    init = self.cfg.log_init
    return {"log_a": ParamSpec((num_heads,), lambda k, s, d=jnp.float32: jnp.full(s, init, d),
                               decay=False)}

  def score_mod(self, num_heads, params=None, positions=None):
    return LogDistance(a=params["log_a"])


@pytree_dataclass(data=("t",), per_head=("t",))
class LearnedTemperature(ScoreMod):
  t: jax.Array

  def __call__(self, scores, q_idx, kv_idx):
    return scores * jax.nn.softplus(self.t)[:, None, None]


SCORE_MODS.register("learned_temperature")(ScoreModSpec(
    lambda heads, batch, length, key: LearnedTemperature(t=jax.random.normal(key, (heads,))),
    "s * softplus(t_h)"))
