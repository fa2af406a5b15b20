"""The routed MLP (``model.mlp="moe"``, ``attnlab.models.moe``) against oracles that share
no code with it: float64 numpy loops written from the two routers' definitions (gpt-oss's
top-k softmax, DeepSeek-V3's group-limited sigmoid routing) and transformers' own
``GptOssMLP`` and ``DeepseekV3MoE`` (skipped without torch); a baby model with it trains.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers

from attnlab import config_lib
from attnlab.models import TransformerLM, moe
from attnlab.registry import ConfigError
from configs import lm

D, F, E = 16, 12, 8


def _config(**fields):
  c = lm.get_config("rope")
  c.model.d_model, c.model.num_layers, c.model.mlp, c.model.mlp_hidden = D, 2, "moe", F
  c.model.attention.num_heads = c.model.attention.num_kv_heads = 2
  c.model.moe_experts = E
  c.model.update(fields)
  c.data.corpus, c.data.seq_len = "tinyshakespeare", 32
  return config_lib.resolve(c)


def _layer_params(cfg, seed=0):
  """Random parameters of one RoutedMLP (biases and correction far from 0, so each matters)."""
  layer = moe.RoutedMLP(cfg.model)
  params = layer.init(jax.random.PRNGKey(seed), jnp.zeros((1, D)))["params"]
  rng = np.random.default_rng(seed)
  return layer, jax.tree_util.tree_map(
      lambda x: jnp.asarray(rng.standard_normal(x.shape) * (0.5 if x.ndim > 1 else 0.3),
                            jnp.float32), params)


# ----------------------------------------------------------------------------- float64 oracles

def _silu(x):
  return x / (1.0 + np.exp(-x))


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _route_softmax_topk(logits, k):
  """gpt-oss: the k largest logits, softmax over them -> {expert: weight} per token."""
  out = []
  for row in logits:
    chosen = np.argsort(-row, kind="stable")[:k]
    e = np.exp(row[chosen] - row[chosen].max())
    out.append(dict(zip(chosen.tolist(), e / e.sum())))
  return out


def _route_sigmoid_grouped(logits, k, correction, groups, topk_groups, normalize, scale):
  """DeepSeek-V3: per token, groups ranked by the sum of their two best biased sigmoid
  scores; the k best biased scores within the best ``topk_groups`` groups; weights the
  unbiased scores, normalised, times ``scale``."""
  out = []
  per = logits.shape[1] // groups
  for row in logits:
    scores = _sigmoid(row)
    biased = scores + correction
    rank = [sorted(biased[g * per:(g + 1) * per])[-2:] for g in range(groups)]
    best_groups = np.argsort([-sum(r) for r in rank], kind="stable")[:topk_groups]
    allowed = [e for g in best_groups for e in range(g * per, (g + 1) * per)]
    chosen = sorted(allowed, key=lambda e: -biased[e])[:k]
    w = np.array([scores[e] for e in chosen])
    if normalize:
      w = w / (w.sum() + 1e-20)
    out.append(dict(zip(chosen, w * scale)))
  return out


def _oracle(cfg, params, x):
  """The routed MLP in float64, token by token over its chosen experts."""
  m = cfg.model
  p = {jax.tree_util.keystr(path): np.asarray(v, np.float64)
       for path, v in jax.tree_util.tree_leaves_with_path(params)}
  get = lambda name: p[f"['{name}']"] if f"['{name}']" in p else None  # noqa: E731
  x = np.asarray(x, np.float64)
  logits = x @ get("router") + (get("router_bias") if m.moe_bias else 0.0)
  if m.moe_router == "softmax_topk":
    routes = _route_softmax_topk(logits, m.moe_top_k)
  else:
    routes = _route_sigmoid_grouped(logits, m.moe_top_k, get("correction"), m.moe_groups,
                                    m.moe_topk_groups, m.moe_norm_topk, m.moe_routed_scale)
  out = np.zeros_like(x)
  for t, route in enumerate(routes):
    for e, w in route.items():
      gate, up = x[t] @ get("gate")[e], x[t] @ get("up")[e]
      if m.moe_bias:
        gate, up = gate + get("gate_bias")[e], up + get("up_bias")[e]
      if m.moe_expert == "clamped_swiglu":
        lim, alpha = m.moe_swiglu_limit, m.moe_swiglu_alpha
        gate, up = np.minimum(gate, lim), np.clip(up, -lim, lim)
        h = (up + 1) * gate * _sigmoid(alpha * gate)
      else:
        h = _silu(gate) * up
      y = h @ get("down")[e] + (get("down_bias")[e] if m.moe_bias else 0.0)
      out[t] += w * y
  if m.moe_shared_experts:
    shared = {n: p[f"['shared_{n}']['kernel']"] for n in ("gate", "up", "down")}
    out += (_silu(x @ shared["gate"]) * (x @ shared["up"])) @ shared["down"]
  return out


ROUTINGS = {
    "gpt_oss": dict(moe_router="softmax_topk", moe_top_k=2, moe_expert="clamped_swiglu",
                    moe_bias=True, moe_swiglu_limit=1.5),   # a small limit: the clamps act
    "deepseek_v3": dict(moe_router="sigmoid_grouped", moe_top_k=3, moe_groups=4,
                        moe_topk_groups=2, moe_routed_scale=2.5, moe_shared_experts=1),
    "deepseek_unnormalised": dict(moe_router="sigmoid_grouped", moe_top_k=2, moe_groups=2,
                                  moe_topk_groups=1, moe_norm_topk=False),
}


def test_every_router_has_a_routing_case_and_an_oracle():
  """A router registered in ``moe.ROUTERS`` fails here until ROUTINGS and ``_oracle`` cover it."""
  assert {r["moe_router"] for r in ROUTINGS.values()} == set(moe.ROUTERS.names())


# test ids name the router too, so ``pytest -k sigmoid_grouped`` runs every case of one router
ROUTING_IDS = [f"{name}-{r['moe_router']}" for name, r in ROUTINGS.items()]


@pytest.mark.parametrize("routing", list(ROUTINGS), ids=ROUTING_IDS)
def test_routed_mlp_equals_the_float64_oracle(routing):
  cfg = _config(**ROUTINGS[routing])
  layer, params = _layer_params(cfg)
  x = np.random.default_rng(1).standard_normal((40, D)).astype(np.float32)
  got = np.asarray(layer.apply({"params": params}, jnp.asarray(x)))
  np.testing.assert_allclose(got, _oracle(cfg, params, x), rtol=1e-4, atol=1e-5)


def test_the_routers_choices_and_weights():
  """The routers alone, on logits with known structure: the group rule excludes an expert
  whose biased score is the largest when its group's best two sum lower."""
  logits = np.log(np.array([[0.9, 0.05, 0.6, 0.55, 0.1, 0.1]]) /
                  (1 - np.array([[0.9, 0.05, 0.6, 0.55, 0.1, 0.1]])))   # sigmoid -> these
  experts, weights = moe.sigmoid_grouped(jnp.asarray(logits, jnp.float32), 2,
                                         jnp.zeros(6), groups=3, topk_groups=1,
                                         normalize=True, scale=1.0)
  # groups {0,1}: 0.95, {2,3}: 1.15, {4,5}: 0.2 -> group 1 only, though expert 0 scores 0.9
  assert sorted(np.asarray(experts)[0].tolist()) == [2, 3]
  np.testing.assert_allclose(sorted(np.asarray(weights)[0]), [0.55 / 1.15, 0.6 / 1.15], rtol=1e-5)
  experts, weights = moe.softmax_topk(jnp.asarray([[1.0, 3.0, 2.0]]), 2)
  assert np.asarray(experts)[0].tolist() == [1, 2]
  np.testing.assert_allclose(np.asarray(weights)[0], [np.e / (np.e + 1), 1 / (np.e + 1)],
                             rtol=1e-6)


def test_load_balance_loss_is_one_when_uniform_and_larger_when_collapsed():
  e, t = 4, 8
  uniform = jnp.full((t, e), 1 / e)
  spread = jnp.asarray(np.arange(t)[:, None] % e, jnp.int32)
  assert float(moe.load_balance_loss(spread, uniform, e)) == pytest.approx(1.0)
  collapsed = jnp.zeros((t, 1), jnp.int32)
  probs = jnp.asarray(np.tile([0.7, 0.1, 0.1, 0.1], (t, 1)))
  assert float(moe.load_balance_loss(collapsed, probs, e)) == pytest.approx(4 * 0.7)


@pytest.mark.parametrize("fields,message", [
    (dict(moe_top_k=9), "moe_top_k=9"),
    (dict(moe_router="sigmoid_grouped", moe_groups=3), "moe_groups=3"),
    (dict(moe_router="sigmoid_grouped", moe_groups=2, moe_topk_groups=3), "moe_topk_groups=3"),
    (dict(moe_router="sigmoid_grouped", moe_groups=4, moe_topk_groups=1, moe_top_k=3),
     "moe_top_k=3"),
    (dict(moe_router="top1"), "moe_router='top1'"),
])
def test_bad_routing_fields_are_refused_by_name(fields, message):
  with pytest.raises(ConfigError, match=message):
    _config(**fields)


# ----------------------------------------------------------------------------- transformers

def test_equals_transformers_gpt_oss_mlp():
  torch = pytest.importorskip("torch")
  pytest.importorskip("transformers")
  from transformers import GptOssConfig
  from transformers.models.gpt_oss.modeling_gpt_oss import GptOssMLP
  hf = GptOssConfig(hidden_size=D, intermediate_size=F, num_local_experts=E,
                    num_experts_per_tok=2, swiglu_limit=1.5)
  torch.manual_seed(0)
  ref = GptOssMLP(hf).float()
  with torch.no_grad():
    for p in ref.parameters():
      p.normal_(0.0, 0.5)
  cfg = _config(**ROUTINGS["gpt_oss"])
  t = {n: p.detach().numpy() for n, p in ref.named_parameters()}
  gate_up, gate_up_bias = t["experts.gate_up_proj"], t["experts.gate_up_proj_bias"]
  params = {"router": t["router.weight"].T, "router_bias": t["router.bias"],
            "gate": gate_up[..., ::2], "up": gate_up[..., 1::2],
            "gate_bias": gate_up_bias[..., ::2], "up_bias": gate_up_bias[..., 1::2],
            "down": t["experts.down_proj"], "down_bias": t["experts.down_proj_bias"]}
  x = np.random.default_rng(2).standard_normal((1, 30, D)).astype(np.float32)
  with torch.no_grad():
    want = ref(torch.from_numpy(x))[0].numpy()
  got = moe.RoutedMLP(cfg.model).apply({"params": params}, jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5)


def test_equals_transformers_deepseek_v3_moe():
  torch = pytest.importorskip("torch")
  pytest.importorskip("transformers")
  from transformers import DeepseekV3Config
  from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE
  fields = ROUTINGS["deepseek_v3"]
  hf = DeepseekV3Config(hidden_size=D, moe_intermediate_size=F, n_routed_experts=E,
                        num_experts_per_tok=fields["moe_top_k"], n_group=fields["moe_groups"],
                        topk_group=fields["moe_topk_groups"],
                        routed_scaling_factor=fields["moe_routed_scale"], n_shared_experts=1,
                        norm_topk_prob=True)
  torch.manual_seed(0)
  ref = DeepseekV3MoE(hf).float()
  with torch.no_grad():
    for p in ref.parameters():
      p.normal_(0.0, 0.5)
    ref.gate.e_score_correction_bias.normal_(0.0, 0.3)
  cfg = _config(**fields)
  t = {n: p.detach().numpy() for n, p in ref.named_parameters()}
  gate, up = np.split(t["experts.gate_up_proj"], 2, axis=1)          # [E, 2F, d]
  params = {"router": t["gate.weight"].T,
            "correction": ref.gate.e_score_correction_bias.numpy(),
            "gate": gate.transpose(0, 2, 1), "up": up.transpose(0, 2, 1),
            "down": t["experts.down_proj"].transpose(0, 2, 1),
            "shared_gate": {"kernel": t["shared_experts.gate_proj.weight"].T},
            "shared_up": {"kernel": t["shared_experts.up_proj.weight"].T},
            "shared_down": {"kernel": t["shared_experts.down_proj.weight"].T}}
  x = np.random.default_rng(3).standard_normal((1, 30, D)).astype(np.float32)
  with torch.no_grad():
    want = ref(torch.from_numpy(x)).numpy()
  got = moe.RoutedMLP(cfg.model).apply({"params": params}, jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- training

@pytest.mark.slow
@pytest.mark.parametrize("routing", ["gpt_oss", "deepseek_v3"])
def test_a_baby_model_with_routed_experts_trains(routing, tmp_path):
  """12 steps on tinyshakespeare: the loss falls; the load-balancing loss (on) enters it."""
  c = lm.get_config("rope")
  c.model.d_model, c.model.num_layers, c.model.mlp = 32, 2, "moe"
  c.model.attention.num_heads = c.model.attention.num_kv_heads = 4
  c.model.moe_experts, c.model.moe_aux_loss = 8, 0.01
  c.model.update(ROUTINGS[routing])
  losses = helpers.train_losses(c, tmp_path / "run")
  assert losses[-1] < losses[0] - 0.1, losses


def test_the_load_balancing_loss_enters_the_training_loss():
  from attnlab.engine import training
  cfg = _config(moe_aux_loss=0.5)
  model = TransformerLM(cfg.model)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"]
  x = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 9)), jnp.int32)
  plain = training.token_loss(model, params, x[:, :-1], x[:, 1:])
  with_aux = training.token_loss(model, params, x[:, :-1], x[:, 1:], aux_weight=0.5)
  # each layer's loss is >= 1 (1 when routing is uniform): the mean adds at least 0.5
  assert float(with_aux) - float(plain) >= 0.5 - 1e-6
