"""The routed MLP (mixture of experts), ``model.mlp="moe"``: a router picks ``moe_top_k`` of
``moe_experts`` expert MLPs per token and weights their outputs; optional shared experts
see every token.

Routers (``ROUTERS``, ``model.moe_router``), as the models that use them define them:

- ``softmax_topk`` (gpt-oss; Mixtral): logits = x W (+ b); the top k logits, then a softmax
  over those k.
- ``sigmoid_grouped`` (DeepSeek-V3): scores = sigmoid(x W); the experts are chosen by
  score + correction bias within the ``moe_topk_groups`` groups (of ``moe_groups``) whose
  two best biased scores sum highest; the weights are the chosen *unbiased* scores,
  normalised to sum 1 (``moe_norm_topk``) and multiplied by ``moe_routed_scale``. Experts of
  the groups not chosen are excluded (-inf) before the final top-k, as in DeepSeek's code
  and transformers' ``DeepseekV3TopkRouter``. The correction bias is a parameter that gradients
  do not move (DeepSeek adjusts it by a balancing rule outside backprop, which attnlab does
  not implement: it holds the imported or initial value).

Experts (``moe_expert``): ``swiglu`` (silu(x Wg) * x Wu, then Wd) or ``clamped_swiglu``
(gpt-oss: gate clamped above at ``moe_swiglu_limit``, the linear half to
[-limit, limit], out = (up + 1) * gate * sigmoid(alpha * gate), then Wd), each with biases
when ``moe_bias`` (gpt-oss has them, on the router too).

Every expert is computed for every token and the unchosen ones weighted 0: exact and simple
at the sizes attnlab trains, O(experts) compute; no token dropping, no capacity factor.

Load balancing (optional, ``moe_aux_loss`` > 0): Switch Transformer's auxiliary loss
``E * sum_e f_e P_e`` (f_e: fraction of routing slots that chose expert e, P_e: the mean
router probability of e: softmax of the logits for ``softmax_topk``, normalised sigmoid
scores for ``sigmoid_grouped``), sown per layer into the ``losses`` collection; the training
loss adds ``moe_aux_loss`` times their mean over layers.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from attnlab.models.common import DTYPES, MLPS, MLPSpec, mlp_hidden, model_settings, param_dtype
from attnlab.models.common import normal_init
from attnlab.registry import Registry

_F32 = jnp.float32


# ----------------------------------------------------------------------------- routers

@dataclasses.dataclass(frozen=True)
class Router:
  """An entry of ``ROUTERS``: ``route(logits [T, E], bias [E] | None, cfg) -> (experts int
  [T, k], weights float32 [T, k])`` and ``probs(logits, cfg) -> [T, E]`` (what the
  load-balancing loss averages)."""
  route: Callable
  probs: Callable
  doc: str = ""


ROUTERS: Registry[Router] = Registry("model.moe_router")


def softmax_topk(logits, k: int):
  """gpt-oss: the top ``k`` logits, softmax over them. logits [T, E] -> (int [T, k],
  float32 [T, k])."""
  values, experts = jax.lax.top_k(logits.astype(_F32), k)
  return experts, jax.nn.softmax(values, axis=-1)


def sigmoid_grouped(logits, k: int, correction, *, groups: int, topk_groups: int,
                    normalize: bool, scale: float):
  """DeepSeek-V3: sigmoid scores, group-limited top-k on score + correction, weights the
  chosen scores (normalised when ``normalize``) times ``scale``.

  logits [T, E]; correction [E] -> (int [T, k], float32 [T, k]).
  """
  t, e = logits.shape
  scores = jax.nn.sigmoid(logits.astype(_F32))
  choice = scores + jax.lax.stop_gradient(correction.astype(_F32))[None]
  per_group = choice.reshape(t, groups, e // groups)
  group_scores = jax.lax.top_k(per_group, 2)[0].sum(-1)                  # [T, groups]
  _, chosen_groups = jax.lax.top_k(group_scores, topk_groups)
  keep = jax.nn.one_hot(chosen_groups, groups, dtype=_F32).sum(1) > 0     # [T, groups]
  keep = jnp.repeat(keep, e // groups, axis=1)                            # [T, E]
  _, experts = jax.lax.top_k(jnp.where(keep, choice, -jnp.inf), k)
  weights = jnp.take_along_axis(scores, experts, axis=1)
  if normalize:
    weights = weights / (weights.sum(-1, keepdims=True) + 1e-20)
  return experts, weights * scale


ROUTERS.register("softmax_topk")(Router(
    lambda logits, bias, cfg: softmax_topk(logits, int(cfg.moe_top_k)),
    lambda logits, cfg: jax.nn.softmax(logits.astype(_F32), axis=-1),
    doc="gpt-oss / Mixtral: top-k of the router logits, softmax over the chosen k"))
ROUTERS.register("sigmoid_grouped")(Router(
    lambda logits, bias, cfg: sigmoid_grouped(
        logits, int(cfg.moe_top_k), bias, groups=int(cfg.moe_groups),
        topk_groups=int(cfg.moe_topk_groups), normalize=bool(cfg.moe_norm_topk),
        scale=float(cfg.moe_routed_scale)),
    lambda logits, cfg: _normalised(jax.nn.sigmoid(logits.astype(_F32))),
    doc="DeepSeek-V3: sigmoid scores with a correction bias, group-limited top-k, "
        "normalised weights times routed_scale"))


def _normalised(x):
  return x / x.sum(-1, keepdims=True)


def combine_weights(experts, weights, num_experts: int):
  """Routing as a dense matrix: float32 [T, E], ``weights`` at the chosen experts, else 0."""
  return (jax.nn.one_hot(experts, num_experts, dtype=_F32) * weights[..., None]).sum(1)


def load_balance_loss(experts, probs, num_experts: int):
  """Switch Transformer's auxiliary loss E * sum_e f_e * P_e (1 when routing is uniform).
  experts int [T, k]; probs [T, E]."""
  chosen = jax.nn.one_hot(experts, num_experts, dtype=_F32).sum(1)          # [T, E]
  fraction = chosen.mean(0) / experts.shape[1]
  return num_experts * jnp.sum(fraction * probs.mean(0))


# ----------------------------------------------------------------------------- experts

def swiglu(gate, up, cfg):
  """silu(gate) * up."""
  return jax.nn.silu(gate) * up


def clamped_swiglu(gate, up, cfg):
  """gpt-oss: gate clamped above at ``limit``, up to [-limit, limit];
  (up + 1) * gate * sigmoid(alpha * gate)."""
  limit, alpha = float(cfg.moe_swiglu_limit), float(cfg.moe_swiglu_alpha)
  gate = jnp.minimum(gate, limit)
  up = jnp.clip(up, -limit, limit)
  return (up + 1) * gate * jax.nn.sigmoid(gate * alpha)


EXPERTS = {"swiglu": swiglu, "clamped_swiglu": clamped_swiglu}


def moe_hidden(cfg) -> int:
  """Each expert's hidden width: ``model.moe_expert_hidden`` when set, else the MLP's
  (``model.mlp_hidden``, or SwiGLU's default)."""
  return int(model_settings(cfg).moe_expert_hidden) or mlp_hidden(cfg)


class RoutedMLP(nn.Module):
  """The routed MLP. x: [..., d_model] -> [..., d_model].

  Parameters: ``router`` (kernel [d, E], bias [E] with ``moe_bias``; ``correction`` [E] for
  ``sigmoid_grouped``), ``gate`` / ``up`` [E, d, F] and ``down`` [E, F, d] (biases
  ``gate_bias`` / ``up_bias`` [E, F], ``down_bias`` [E, d] with ``moe_bias``), and with
  shared experts a ``shared`` SwiGLU MLP of width F * ``moe_shared_experts``.
  """
  cfg: Any

  @nn.compact
  def __call__(self, x):
    cfg = model_settings(self.cfg)
    e, d, f = int(cfg.moe_experts), int(cfg.d_model), moe_hidden(cfg)
    dtype, pdtype = DTYPES[cfg.dtype], param_dtype(cfg)
    shape = x.shape
    x = x.reshape(-1, d)
    init = normal_init(0.02)
    out_init = normal_init(0.02 / math.sqrt(2 * cfg.num_layers))
    zeros = nn.initializers.zeros
    router = ROUTERS.get(cfg.moe_router)
    logits = x.astype(_F32) @ self.param("router", init, (d, e), pdtype).astype(_F32)
    if cfg.moe_bias:
      logits = logits + self.param("router_bias", zeros, (e,), pdtype).astype(_F32)
    correction = (self.param("correction", zeros, (e,), pdtype)
                  if cfg.moe_router == "sigmoid_grouped" else None)
    experts, weights = router.route(logits, correction, cfg)
    if cfg.moe_aux_loss:
      self.sow("losses", "load_balance", load_balance_loss(experts, router.probs(logits, cfg), e))

    xc = x.astype(dtype)
    gate = jnp.einsum("td,edf->tef", xc, self.param("gate", init, (e, d, f), pdtype).astype(dtype))
    up = jnp.einsum("td,edf->tef", xc, self.param("up", init, (e, d, f), pdtype).astype(dtype))
    if cfg.moe_bias:
      gate = gate + self.param("gate_bias", zeros, (e, f), pdtype).astype(dtype)
      up = up + self.param("up_bias", zeros, (e, f), pdtype).astype(dtype)
    h = EXPERTS[cfg.moe_expert](gate, up, cfg)
    y = jnp.einsum("tef,efd->ted", h, self.param("down", out_init, (e, f, d), pdtype).astype(dtype))
    if cfg.moe_bias:
      y = y + self.param("down_bias", zeros, (e, d), pdtype).astype(dtype)
    combine = combine_weights(experts, weights, e)                          # [T, E]
    out = jnp.einsum("te,ted->td", combine.astype(_F32), y.astype(_F32)).astype(dtype)
    if cfg.moe_shared_experts:
      hidden = f * int(cfg.moe_shared_experts)
      dense = lambda n, name, i=init: nn.Dense(n, use_bias=False, kernel_init=i, dtype=dtype,  # noqa: E731
                                               param_dtype=pdtype, name=name)
      shared = dense(hidden, "shared_gate")(xc)
      shared = jax.nn.silu(shared) * dense(hidden, "shared_up")(xc)
      out = out + dense(d, "shared_down", out_init)(shared)
    return out.reshape(shape)


MLPS.register("moe")(MLPSpec(
    None, module=RoutedMLP, hidden=MLPS.get("swiglu").hidden,
    doc="routed experts (model.moe_*): a router (softmax_topk: gpt-oss; sigmoid_grouped: "
        "DeepSeek-V3) picks moe_top_k of moe_experts SwiGLU experts per token; optional "
        "shared experts and load-balancing loss"))
