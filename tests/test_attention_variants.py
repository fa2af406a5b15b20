"""Gated attention, differential attention and multi-head latent attention (one attention
layer, ``transformer.SelfAttention``) against float64 numpy oracles written from their
papers' formulas; their caches (``common.cache_dims``) and the memory report. Cached
decoding and impl equality of each: ``test_conformance_layers`` (VARIANTS); DeepSeek-V3's
and Phi-3's checkpoints: ``test_import_hf``."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest

import helpers

from attnlab import config_lib
from attnlab.models import kv_cache
from attnlab.models.transformer import SelfAttention

D, HEADS, KV_HEADS, SEQ = 32, 4, 2, 10


def layer_config(**attention):
  c = config_lib.lm_config()
  c.model.d_model, c.model.num_layers = D, 3
  c.model.attention.num_heads, c.model.attention.num_kv_heads = HEADS, KV_HEADS
  c.model.position = config_lib.position_block("none")
  c.model.attention.update(attention)
  c.data.seq_len = SEQ
  return config_lib.resolve(c).model


def layer_output(model_cfg, layer=1, seed=0):
  """(x [2, SEQ, D], params with every leaf drawn N(0, 0.3), the layer's output), float32."""
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((2, SEQ, D)).astype(np.float32)
  module = SelfAttention(model_cfg, layer)
  params = module.init(jax.random.PRNGKey(0), x)["params"]
  params = jax.tree.map(lambda p: (rng.standard_normal(p.shape) * 0.3).astype(np.float32),
                        params)
  out = module.apply({"params": params}, x)
  return x.astype(np.float64), jax.tree.map(lambda p: np.asarray(p, np.float64), params), \
      np.asarray(out, np.float64)


def softmax_causal(scores):
  """Row softmax of scores [..., T, S] under the causal mask, float64."""
  t, s = scores.shape[-2:]
  scores = np.where(np.tril(np.ones((t, s), bool)), scores, -np.inf)
  e = np.exp(scores - scores.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def rms(x, scale, eps):
  return x / np.sqrt((x ** 2).mean(-1, keepdims=True) + eps) * scale


def plain_heads(x, p, head_dim):
  """q [B, T, H, d], k and v [B, T, KV, d] from the fused projection (columns q | k | v)."""
  qkv = x @ p["qkv"]["kernel"]
  q = qkv[..., :HEADS * head_dim].reshape(*x.shape[:2], HEADS, head_dim)
  k = qkv[..., HEADS * head_dim:(HEADS + KV_HEADS) * head_dim].reshape(*x.shape[:2], KV_HEADS,
                                                                       head_dim)
  v = qkv[..., (HEADS + KV_HEADS) * head_dim:].reshape(*x.shape[:2], KV_HEADS, head_dim)
  return q, k, v


@pytest.mark.parametrize("gate", ["elementwise", "headwise"])
def test_gated_attention_equals_its_formula(gate):
  """Qiu et al. 2025 (G1): Y = SDPA(Q, K, V) * sigmoid(X W_gate), per output dim or per
  head, then the output projection."""
  x, p, out = layer_output(layer_config(output_gate=gate))
  dh = D // HEADS
  q, k, v = plain_heads(x, p, dh)
  heads = []
  for h in range(HEADS):
    a = softmax_causal(q[:, :, h] @ k[:, :, h // 2].transpose(0, 2, 1) / math.sqrt(dh))
    heads.append(a @ v[:, :, h // 2])
  o = np.stack(heads, 2)                                    # [B, T, H, dh]
  g = 1 / (1 + np.exp(-(x @ p["gate"]["kernel"])))
  g = g.reshape(*x.shape[:2], HEADS, dh if gate == "elementwise" else 1)
  want = (o * g).reshape(*x.shape[:2], -1) @ p["out"]["kernel"]
  np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("layer", [0, 2])
def test_differential_attention_equals_its_formula(layer):
  """Ye et al. 2024, eq. 1-3: [Q1; Q2] = X W_Q, [K1; K2] = X W_K (halves of each head),
  DiffAttn = (softmax(Q1 K1^T / sqrt(d)) - lambda softmax(Q2 K2^T / sqrt(d))) V with
  lambda = exp(lq1 . lk1) - exp(lq2 . lk2) + lambda_init, lambda_init = 0.8 - 0.6
  exp(-0.3 (l - 1)); each head RMS-normalised (a shared learned scale) times
  (1 - lambda_init)."""
  x, p, out = layer_output(layer_config(differential=True), layer=layer)
  dh, d = D // HEADS, D // HEADS // 2
  q, k, v = plain_heads(x, p, dh)
  init = 0.8 - 0.6 * math.exp(-0.3 * layer)          # l - 1 = layer (0-based)
  lam = (np.exp(p["lambda_q1"] @ p["lambda_k1"]) - np.exp(p["lambda_q2"] @ p["lambda_k2"])
         + init)
  heads = []
  for h in range(HEADS):
    kh = k[:, :, h // 2]
    a1 = softmax_causal(q[:, :, h, :d] @ kh[..., :d].transpose(0, 2, 1) / math.sqrt(d))
    a2 = softmax_causal(q[:, :, h, d:] @ kh[..., d:].transpose(0, 2, 1) / math.sqrt(d))
    head = (a1 - lam * a2) @ v[:, :, h // 2]
    heads.append(rms(head, p["diff_norm"]["scale"], 1e-6) * (1 - init))
  want = np.stack(heads, 2).reshape(*x.shape[:2], -1) @ p["out"]["kernel"]
  np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("query_rank", [0, 12])
def test_latent_attention_equals_its_formula(query_rank):
  """DeepSeek-V2 section 2.1 (no position: the decoupled dims carry no rotation):
  c_kv = RMSNorm(x W_dkv), k_r = x W_kr, per head k = [c_kv W_uk, k_r], v = c_kv W_uv,
  q = [q_n, q_r] (from RMSNorm(x W_dq) with a query rank), scores / sqrt(d_n + d_r)."""
  r, dr, dv = 16, 4, 6
  x, p, out = layer_output(layer_config(latent_rank=r, latent_rope_dim=dr, latent_value_dim=dv,
                                        latent_query_rank=query_rank))
  dn = D // HEADS
  if query_rank:
    cq = rms(x @ p["query_down"]["kernel"], p["query_down_norm"]["scale"], 1e-6)
    q = cq @ p["query_up"]["kernel"]
  else:
    q = x @ p["query"]["kernel"]
  q = q.reshape(*x.shape[:2], HEADS, dn + dr)
  down = x @ p["kv_down"]["kernel"]
  c, k_r = rms(down[..., :r], p["kv_down_norm"]["scale"], 1e-6), down[..., r:]
  up = p["kv_up"].reshape(r, HEADS, dn + dv)
  heads = []
  for h in range(HEADS):
    k = np.concatenate([c @ up[:, h, :dn], k_r], -1)
    a = softmax_causal(q[:, :, h] @ k.transpose(0, 2, 1) / math.sqrt(dn + dr))
    heads.append(a @ (c @ up[:, h, dn:]))
  want = np.stack(heads, 2).reshape(*x.shape[:2], -1) @ p["out"]["kernel"]
  np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5)


def test_latent_cache_holds_the_latent_and_the_rope_key_and_is_smaller_than_gqa():
  """Per token and layer MLA stores r + d_r numbers (one key head, no value); GQA with
  kv_heads heads of head_dim stores 2 x kv_heads x head_dim. What ``init_cache`` allocates
  is what ``bytes_per_token`` says."""
  mla = layer_config(latent_rank=16, latent_rope_dim=4)
  gqa = layer_config()
  assert kv_cache.bytes_per_token(mla) == 3 * (16 + 4) * 4
  assert kv_cache.bytes_per_token(gqa) == 3 * 2 * KV_HEADS * (D // HEADS) * 4
  assert kv_cache.bytes_per_token(mla) < kv_cache.bytes_per_token(gqa)
  for cfg in (mla, gqa):
    cache = jax.eval_shape(lambda: kv_cache.init_cache(cfg, 1, kv_cache.CacheLayout(50)))
    assert cache.kv_bytes() == kv_cache.bytes_per_token(cfg) * 50


def test_the_memory_report_lists_the_latent_cache_beside_mha_gqa_mqa():
  from attnlab.inference import memory
  rows = memory.report(layer_config(latent_rank=16, latent_rope_dim=4), contexts=(64,))
  by_variant = {r["variant"]: r for r in rows}
  assert set(by_variant) >= {"MHA", "MQA", "MLA"}
  assert by_variant["MLA"]["bytes_per_token"] == 3 * (16 + 4) * 4
  # smaller than GQA's at this width (not MQA's: 2 x head_dim = 16 < r + d_r = 20 here)
  assert by_variant["MLA"]["bytes_per_token"] < by_variant["GQA (heads/2)"]["bytes_per_token"]
  assert by_variant["MLA"]["allocated@64"] == by_variant["MLA"]["bytes@64"]
  assert "MLA" in memory.markdown(rows, (64,))


@pytest.mark.parametrize("field, value, other, words", [
    ("differential", True, ("position", "alibi"), "model.position.kind="),  # a per-head bias
    ("latent_rank", 8, ("kind", "linear"), "kind"),
    ("latent_rank", 8, ("impl", "xla"), "impl='xla'"),     # values of another width than keys
    ("differential", True, ("impl", "xla"), "impl='xla'"),
])
def test_variants_refuse_what_they_cannot_compose_with(field, value, other, words):
  c = config_lib.lm_config()
  c.model.attention[field] = value
  if other[0] == "position":
    c.model.position = config_lib.position_block(other[1])
  else:
    c.model.attention[other[0]] = other[1]
  with pytest.raises(config_lib.ConfigError, match=f"model.attention.{field}") as e:
    config_lib.resolve(c)
  assert words in str(e.value)


@pytest.mark.slow
@pytest.mark.parametrize("variant", [dict(output_gate="elementwise"), dict(differential=True),
                                     dict(latent_rank=16, latent_query_rank=16)],
                         ids=["gated", "differential", "latent"])
def test_a_baby_model_with_the_variant_trains(variant, tmp_path):
  """12 steps on tinyshakespeare: the loss falls."""
  c = config_lib.lm_config()
  c.model.d_model, c.model.num_layers = 32, 2
  c.model.attention.update(variant)
  losses = helpers.train_losses(c, tmp_path / "run")
  assert losses[-1] < losses[0] - 0.1, losses


# ----------------------------------------------------------------------------- LongRoPE

def _longrope_model(pattern="causal"):
  import conformance as C
  return C.model_config(pattern, "rope", scaling="longrope", original_max_len=12,
                        scale_factor=4.0, longrope_short_factor=(1.0, 1.5, 2.0, 3.0),
                        longrope_long_factor=(1.5, 3.0, 5.0, 9.0))


def test_longrope_frequencies_equal_the_formula_and_transformers():
  """theta_i / f_i with the short factors up to L_train and the long ones beyond, and the
  multiplier sqrt(1 + ln s / ln L_train); transformers' own computation when installed."""
  from attnlab import positional
  scheme = positional.get_scheme(config_lib.resolve(_longrope_model()).model.position)
  theta = 10000.0 ** (-np.arange(0, 8, 2) / 8)
  short, m = scheme.frequencies(8, 12)
  long, m_long = scheme.frequencies(8, 13)
  np.testing.assert_allclose(short, theta / [1.0, 1.5, 2.0, 3.0], rtol=1e-12)
  np.testing.assert_allclose(long, theta / [1.5, 3.0, 5.0, 9.0], rtol=1e-12)
  assert m == m_long == pytest.approx(math.sqrt(1 + math.log(4.0) / math.log(12)))
  transformers = pytest.importorskip("transformers")
  pytest.importorskip("torch")
  from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
  hf = transformers.Phi3Config(hidden_size=32, num_attention_heads=4,
                               max_position_embeddings=48, original_max_position_embeddings=12,
                               rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0,
                                                "short_factor": [1.0, 1.5, 2.0, 3.0],
                                                "long_factor": [1.5, 3.0, 5.0, 9.0]})
  for seq_len, ours in ((None, short), (13, long)):
    inv_freq, factor = ROPE_INIT_FUNCTIONS["longrope"](hf, None, seq_len=seq_len)
    np.testing.assert_allclose(inv_freq.numpy(), ours, rtol=1e-6)
    assert factor == pytest.approx(m)


@pytest.mark.parametrize("pattern", ["causal", "sliding_window"])
def test_longrope_generation_reencodes_at_the_crossing(pattern):
  """A prompt of 8 tokens, 12 generated: the text crosses L_train = 12. Cached generation
  (re-reading the text into a fresh cache at position 12, a rolling cache included) picks
  the tokens that generation without a cache picks (each step a forward of the text so far)."""
  import conformance as C
  from attnlab.inference import generation
  cfg, _, params = C.built(_longrope_model(pattern))
  assert generation.reencode_position(cfg.model) == 12
  prompt = C.tokens(batch=1, length=8)[0]
  cached = generation.generate(cfg, params, [prompt], 12)
  recomputed = generation.generate(cfg, params, [prompt], 12, use_cache=False)
  np.testing.assert_array_equal(cached.tokens[0], recomputed.tokens[0])


def test_longrope_cached_reading_equals_the_forward_of_each_prefix():
  """A rolling cache (window 5) read token by token across L_train: every position's logits
  equal those of a forward over the text up to it."""
  import conformance as C
  C.skip_if(C.check_cached_decoding(_longrope_model("sliding_window"), "longrope"))


# ----------------------------------------------------------------------------- p-RoPE

@pytest.mark.parametrize("fraction", [0.25, 0.75])
def test_p_rope_rotates_only_the_highest_frequencies(fraction):
  """Barbero et al. 2024: pair (i, i + d/2) turns by m * theta^(-2i/d) for the highest
  fraction of frequencies (i < fraction * d/2) and not at all for the rest; NeoX's partial
  rotary instead turns the first fraction of dims with a ladder of their own."""
  from attnlab import positional
  d, theta = 16, 10000.0
  block = config_lib.position_block("rope")
  block.update(rotary_fraction=fraction, partial_rotary="p_rope")
  scheme = positional.get_scheme(block)
  rng = np.random.default_rng(0)
  x = rng.standard_normal((1, 7, 2, d)).astype(np.float32)
  pos = np.arange(7)[None]
  got, _ = scheme.rotate_qk(x, x, pos)
  want = x.astype(np.float64).copy()
  kept = int(fraction * d / 2)
  for i in range(kept):
    angle = pos[0, :, None] * theta ** (-2 * i / d)
    a, b = x[..., i].astype(np.float64), x[..., i + d // 2].astype(np.float64)
    want[..., i] = a * np.cos(angle) - b * np.sin(angle)
    want[..., i + d // 2] = a * np.sin(angle) + b * np.cos(angle)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
  assert kept < d // 2 and np.array_equal(np.asarray(got)[..., kept:d // 2], x[..., kept:d // 2])


def test_p_rope_decodes_like_the_full_forward():
  import conformance as C
  config = C.model_config("sliding_window", "rope", rotary_fraction=0.5, partial_rotary="p_rope")
  C.check_causal(config, "p_rope")
  C.skip_if(C.check_cached_decoding(config, "p_rope"))
