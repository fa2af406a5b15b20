"""The Forgetting Transformer (Lin et al. 2025, "Forgetting Transformer: Softmax Attention with
a Forget Gate"): a data-dependent decay instead of a position encoding.

Each token t and head h has a forget gate ``f_t = sigmoid(w_h . x_t + b_h)`` computed from the
attention layer's input ``x_t``; the logit of query i for key j <= i gains
``log prod_{l=j+1}^{i} f_l = F_i - F_j`` with ``F`` the cumulative sum of ``log f`` along the
sequence. No other position encoding is used (the paper's FoX has none).

``F`` is a per-position operand (``attention.operands``): the attention implementations
load each tile's slice of it beside q and k, the fused kernel included, and its gradient
flows back to ``w`` and ``b``. The KV cache keeps ``F`` of every cached key (one float per
slot and head) and continues the sum for new tokens, so cached decoding equals the full
forward pass.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from attnlab.attention.score_mods import ForgetGateBias
from attnlab.positional import POSITIONS, ParamSpec, PositionScheme
from attnlab.registry import Field


def log_forget_gates(inputs, weight, bias):
  """log f = log sigmoid(x . w + b): inputs [batch, seq, d_model], weight [d_model, heads],
  bias [heads] -> float32 [batch, seq, heads]."""
  logits = jnp.einsum("bnd,dh->bnh", inputs.astype(jnp.float32), weight.astype(jnp.float32))
  return jax.nn.log_sigmoid(logits + bias.astype(jnp.float32))


@POSITIONS.register("fox")
class Forgetting(PositionScheme):
  """FoX: a learned forget gate per token and head, the bias ``F_i - F_j``."""
  fields = (Field("forget_bias_init", 0.0, "fox: initial forget-gate bias b (f = sigmoid(b) "
                  "for a zero input)"),)
  biases = True
  reads_input = True

  @classmethod
  def streamable(cls) -> bool:
    return False   # the decay is a function of the text between two tokens, not of places

  def attention_params(self, num_heads, d_model=0):
    init = self.cfg.forget_bias_init
    return {"forget_weight": ParamSpec((d_model, num_heads), nn.initializers.normal(0.02),
                                       decay=True),
            "forget_bias": ParamSpec((num_heads,), nn.initializers.constant(init), decay=False)}

  def log_gates(self, params, inputs):
    return log_forget_gates(inputs, params["forget_weight"], params["forget_bias"])

  def score_mod(self, num_heads, params=None, positions=None, inputs=None):
    if inputs is None:
      raise ValueError("model.position.kind='fox' reads the attention layer's input "
                       "(inputs=[batch, seq, d_model])")
    cum = jnp.cumsum(self.log_gates(params, inputs), axis=1)          # F [B, N, H]
    return ForgetGateBias(q_cum=cum, kv_cum=cum)

  def cache_state(self, batch: int, capacity: int, num_heads: int):
    """F of every cache slot, float32 [batch, capacity, heads], and F of the last token read,
    [batch, 1, heads] (0 before the text starts)."""
    return (jnp.zeros((batch, capacity, num_heads), jnp.float32),
            jnp.zeros((batch, 1, num_heads), jnp.float32))

  def cached_score_mod(self, num_heads, params, inputs, state, plan, write):
    """The modifier of one cached step and the updated state.

    ``state``: ``cache_state``'s arrays; ``plan``: the step's ``kv_cache.StepPlan``;
    ``write(buffer, new, slots)`` stores new rows. The new tokens' F continues from the last
    token's (F is a running sum, so it survives a rolling cache's evictions).
    """
    slot_cum, last = state
    cum = last + jnp.cumsum(self.log_gates(params, inputs), axis=1)      # [B, T, H]
    slot_cum = write(slot_cum, cum, plan.write_slots)
    keys = cum if plan.prefill else slot_cum
    return ForgetGateBias(q_cum=cum, kv_cum=keys), (slot_cum, cum[:, -1:])


__all__ = ["Forgetting", "log_forget_gates"]
