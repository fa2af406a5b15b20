"""What every model shares: the ``model.*`` fields (``MODEL_FIELDS``), compute dtypes, the
norm and MLP registries, initialisers, and the parameters a position scheme declares
(``positional.ParamSpec``), created and weight-decayed as declared."""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from attnlab import positional
from attnlab.models import schedule
from attnlab.registry import Declared, Field, Registry

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class MLPSpec:
  """An entry of ``MLPS`` (``model.mlp``): the block's feed-forward layer.

  ``activation``: applied to the up projection (None: no MLP, an attention-only block);
  ``gated``: ``activation(gate(x)) * up(x)`` (GLU variants) instead of ``activation(up(x))``;
  ``hidden(cfg)``: the hidden width when ``model.mlp_hidden`` is 0; ``module``: a Flax
  module class built as ``module(model_cfg, name="mlp")`` that replaces the plain MLP
  (the routed MLP, ``attnlab.models.moe``).
  """
  activation: Callable | None
  gated: bool = False
  hidden: Callable = lambda cfg: cfg.mlp_ratio * cfg.d_model
  doc: str = ""
  module: Callable | None = None


MLPS: Registry[MLPSpec] = Registry("model.mlp")
MLPS.register("gelu")(MLPSpec(lambda x: nn.gelu(x, approximate=True),
                              doc="GELU, tanh approximation (GPT-2's gelu_new)"))
MLPS.register("gelu_exact")(MLPSpec(lambda x: nn.gelu(x, approximate=False),
                                    doc="GELU with erf (GPT-NeoX)"))
MLPS.register("swiglu")(MLPSpec(
    nn.silu, gated=True, hidden=lambda cfg: -(-int(2 * cfg.mlp_ratio * cfg.d_model / 3) // 8) * 8,
    doc="SiLU-gated (LLaMA); hidden 2/3 of mlp_ratio * d_model rounded up to 8"))
MLPS.register("geglu")(MLPSpec(
    lambda x: nn.gelu(x, approximate=True), gated=True,
    hidden=lambda cfg: -(-int(2 * cfg.mlp_ratio * cfg.d_model / 3) // 8) * 8,
    doc="GELU(tanh)-gated (Gemma); hidden 2/3 of mlp_ratio * d_model rounded up to 8"))
MLPS.register("none")(MLPSpec(None, doc="no MLP: attention-only blocks"))

NORMS: Registry = Registry("model.norm")


def _norms(value, context):
  return None if value in NORMS else f"is not valid; valid: {', '.join(NORMS.names())}"


def _mlps(value, context):
  return None if value in MLPS else f"is not valid; valid: {', '.join(MLPS.names())}"


def _transformer(block) -> bool:
  return block["arch"] == "transformer"


def _moe(block) -> bool:
  return block["arch"] == "transformer" and block.get("mlp") == "moe"


def _finite_nonnegative(value, context):
  ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < float("inf")
  return None if ok else "must be a finite number >= 0"


def _latent(block) -> bool:
  return bool(block.get("latent_rank"))


# ``model.attention`` fields every entry shares that change what a layer computes around the
# kind: read by the attention layer (``transformer.SelfAttention``) and the KV cache.
ATTENTION_FIELDS = (
    Field("qk_norm", False, "RMSNorm over head_dim on every query and key head, before "
          "position encoding (Qwen3, Gemma-3, OLMo-2)"),
    Field("softcap", 0.0, "attention scores become softcap * tanh(score / softcap) before the "
          "position bias and mask; 0: off (Gemma-2: 50)", check=_finite_nonnegative),
    Field("score_scale", 0.0, "queries are multiplied by score_scale * sqrt(head_dim), so "
          "softmax scores are q.k * score_scale; 0: 1/sqrt(head_dim) (Gemma: "
          "query_pre_attn_scalar ** -0.5)", check=_finite_nonnegative),
    Field("sink_logit", "none", "a per-head logit joining every row's softmax denominator, with no "
          "value (its probability is dropped): learned (gpt-oss; parameter 'sinks' [heads], "
          "initialised to 0), off_by_one (a fixed 0: softmax_1, Miller 2023) or none",
          choices=("none", "learned", "off_by_one")),
    Field("output_gate", "none", "a sigmoid gate computed from the layer input multiplies each "
          "head's output before the output projection (gated attention, Qiu et al. 2025; "
          "Qwen3-Next): elementwise (one gate per output dim) | headwise (one per head) | none",
          choices=("none", "elementwise", "headwise")),
    Field("differential", False, "differential attention (Ye et al. 2024): each head's query "
          "and key split in two halves of head_dim / 2; out = (softmax(q1 k1) - lambda "
          "softmax(q2 k2)) v, RMS-normalised per head and scaled by 1 - lambda_init; lambda = "
          "exp(lq1.lk1) - exp(lq2.lk2) + lambda_init(layer), lambda_init = 0.8 - 0.6 "
          "exp(-0.3 layer)"),
    Field("latent_rank", 0, "multi-head latent attention (DeepSeek-V2/V3) when > 0: keys and "
          "values are up-projected from a normed latent of this width (kv_lora_rank); a cache "
          "holds the latent and the RoPE key per token", minimum=0),
    Field("latent_query_rank", 0, "MLA: width of the query's normed low-rank latent "
          "(q_lora_rank); 0: a full-rank query projection", minimum=0, applies=_latent),
    Field("latent_rope_dim", 8, "MLA: decoupled position dims per head (qk_rope_head_dim): "
          "the query's own, and one key shared by the heads; queries and keys have head_dim + "
          "latent_rope_dim dims", minimum=2, applies=_latent),
    Field("latent_value_dim", 0, "MLA: value head width (v_head_dim); 0: head_dim",
          minimum=0, applies=_latent),
)

LATENT_NORM_EPS = 1e-6   # DeepSeek's latent RMSNorms keep their default epsilon


def differential_lambda_init(layer: int) -> float:
  """Differential attention's lambda_init for block ``layer`` (0-based: l - 1 in the paper)."""
  return 0.8 - 0.6 * math.exp(-0.3 * layer)


# The ``model.*`` fields of the language models (attention and position blocks aside: their
# fields are the registries' entries'). Every default is here and only here.
MODEL_FIELDS = (
    Field("arch", "transformer", "transformer | rnn (attnlab.models.ARCHS)"),
    Field("vocab_size", 256, "vocabulary (256: UTF-8 bytes)", minimum=1),
    Field("num_layers", 4, "blocks", minimum=1),
    Field("d_model", 128, "residual width", minimum=1, applies=_transformer),
    Field("mlp", "gelu", "feed-forward layer (MLPS)", check=_mlps, applies=_transformer),
    Field("mlp_ratio", 4, "MLP hidden width / d_model", minimum=1, applies=_transformer),
    Field("norm", "layernorm", "layernorm | rmsnorm (NORMS)", check=_norms, applies=_transformer),
    Field("use_bias", False, "biases on every projection", applies=_transformer),
    Field("tie_embeddings", True, "the unembedding is the embedding's transpose",
          applies=_transformer),
    Field("dropout", 0.0, "embedding and residual dropout", applies=_transformer,
          check=lambda v, c: None if 0.0 <= v < 1.0 else "must be in [0, 1)"),
    Field("dtype", "float32", "compute dtype", choices=tuple(DTYPES), applies=_transformer),
    Field("param_dtype", "float32", "dtype the parameters are stored in",
          choices=tuple(DTYPES), applies=_transformer),
    Field("norm_eps", 1e-6, "epsilon of every norm (GPT-2, BLOOM, Pythia: 1e-5)", minimum=0.0,
          applies=_transformer),
    Field("mlp_hidden", 0, "MLP hidden width; 0: the MLP's own default (mlp_ratio * d_model "
          "for gelu, 2/3 of it rounded up to 8 for swiglu)", minimum=0, applies=_transformer),
    Field("parallel_residual", False, "x + attn(norm(x)) + mlp(norm'(x)) (GPT-NeoX)",
          applies=_transformer),
    Field("qkv_bias", False, "biases on the q/k/v projection even when use_bias is False "
          "(Qwen2)", applies=_transformer),
    Field("embed_norm", False, "a norm on the token embeddings (BLOOM)", applies=_transformer),
    Field("head_dim", 0, "width of each attention head; 0: d_model / num_heads (Qwen3 and "
          "Gemma set it)", minimum=0, applies=_transformer),
    Field("post_norms", False, "sandwich norms: a norm on the attention and MLP outputs "
          "before each residual add (Gemma-2, Gemma-3)", applies=_transformer),
    Field("embed_scale", False, "token embeddings multiplied by sqrt(d_model) (Gemma)",
          applies=_transformer),
    Field("logit_softcap", 0.0, "final logits become cap * tanh(logits / cap); 0: off "
          "(Gemma-2: 30)", check=_finite_nonnegative, applies=_transformer),
) + schedule.SCHEDULE_FIELDS + (
    # the routed MLP's own fields (model.mlp="moe"; attnlab.models.moe)
    Field("moe_experts", 8, "mlp=moe: routed experts", minimum=1, applies=_moe),
    Field("moe_top_k", 2, "mlp=moe: experts per token", minimum=1, applies=_moe),
    Field("moe_router", "softmax_topk", "mlp=moe: softmax_topk (gpt-oss) | sigmoid_grouped "
          "(DeepSeek-V3)", choices=("softmax_topk", "sigmoid_grouped"), applies=_moe),
    Field("moe_expert", "swiglu", "mlp=moe: each expert's gated MLP: swiglu | clamped_swiglu "
          "(gpt-oss)", choices=("swiglu", "clamped_swiglu"), applies=_moe),
    Field("moe_bias", False, "mlp=moe: biases on the router and the experts (gpt-oss)",
          applies=_moe),
    Field("moe_swiglu_limit", 7.0, "mlp=moe, clamped_swiglu: clamp of the gate and linear "
          "halves", minimum=0.0, applies=_moe),
    Field("moe_swiglu_alpha", 1.702, "mlp=moe, clamped_swiglu: gate * sigmoid(alpha * gate)",
          applies=_moe),
    Field("moe_groups", 1, "mlp=moe, sigmoid_grouped: expert groups (n_group)", minimum=1,
          applies=_moe),
    Field("moe_topk_groups", 1, "mlp=moe, sigmoid_grouped: groups a token may route to "
          "(topk_group)", minimum=1, applies=_moe),
    Field("moe_norm_topk", True, "mlp=moe, sigmoid_grouped: the chosen weights sum to 1 "
          "before moe_routed_scale", applies=_moe),
    Field("moe_routed_scale", 1.0, "mlp=moe, sigmoid_grouped: factor on the routed weights "
          "(routed_scaling_factor)", minimum=0.0, applies=_moe),
    Field("moe_shared_experts", 0, "mlp=moe: shared experts every token passes through "
          "(one SwiGLU of their summed width)", minimum=0, applies=_moe),
    Field("moe_expert_hidden", 0, "mlp=moe: each expert's hidden width "
          "(moe_intermediate_size); 0: the MLP's hidden width (mlp_hidden or its default)",
          minimum=0, applies=_moe),
    Field("moe_first_dense", 0, "mlp=moe: the first this many blocks keep a dense SwiGLU MLP "
          "of width mlp_hidden (DeepSeek-V3's first_k_dense_replace)", minimum=0, applies=_moe),
    Field("moe_aux_loss", 0.0, "mlp=moe: weight of Switch's load-balancing loss in the "
          "training loss; 0: off", minimum=0.0, applies=_moe),
)


def model_settings(cfg) -> Declared:
  """The ``model`` block read through ``MODEL_FIELDS`` (a field it lacks reads as its
  declared default)."""
  return cfg if isinstance(cfg, Declared) else Declared(cfg, MODEL_FIELDS)


def attention_settings(att) -> Declared:
  """A ``model.attention`` block read through ``ATTENTION_FIELDS`` (a block written before
  one of them existed reads its default)."""
  return Declared(att, ATTENTION_FIELDS)


def head_dim(cfg) -> int:
  """Width of each attention head: ``model.head_dim``, or d_model / num_heads."""
  cfg = model_settings(cfg)
  return int(cfg.head_dim) or int(cfg.d_model) // int(cfg.attention.num_heads)


def value_head_dim(cfg) -> int:
  """Width of each head's value and output: ``attention.latent_value_dim`` with MLA, else
  ``head_dim``."""
  att = attention_settings(model_settings(cfg).attention)
  if att.latent_rank and att.latent_value_dim:
    return int(att.latent_value_dim)
  return head_dim(cfg)


def cache_dims(cfg) -> tuple[tuple[int, int], tuple[int, int]]:
  """((key heads, key dim), (value heads, value dim)) a KV cache stores per token and layer:
  ``(kv_heads, head_dim)`` twice; MLA: the latent and the shared RoPE key as one key head
  of ``latent_rank + latent_rope_dim`` and no value (values are the latent part of the
  keys); differential attention: twice the key heads of half the width (each head's two
  halves) and the values as they are."""
  att = attention_settings(model_settings(cfg).attention)
  kv, dh = int(att.num_kv_heads), head_dim(cfg)
  if att.latent_rank:
    return (1, int(att.latent_rank) + int(att.latent_rope_dim)), (1, 0)
  if att.differential:
    return (2 * kv, dh // 2), (kv, dh)
  return (kv, dh), (kv, dh)


def param_dtype(cfg):
  """The dtype parameters are stored in (``model.param_dtype``)."""
  return DTYPES[model_settings(cfg).param_dtype]


def norm_eps(cfg) -> float:
  """``model.norm_eps`` (Flax's 1e-6 by default; GPT-2 and BLOOM use 1e-5)."""
  return float(model_settings(cfg).norm_eps)


def mlp_hidden(cfg) -> int:
  """The MLP's hidden width: ``model.mlp_hidden`` when set, else the MLP's own default."""
  cfg = model_settings(cfg)
  return int(cfg.mlp_hidden) if cfg.mlp_hidden else int(MLPS.get(cfg.mlp).hidden(cfg))


NORMS.register("layernorm")(lambda cfg, name: nn.LayerNorm(
    epsilon=norm_eps(cfg), use_bias=cfg.use_bias, param_dtype=param_dtype(cfg), name=name))
NORMS.register("rmsnorm")(lambda cfg, name: nn.RMSNorm(
    epsilon=norm_eps(cfg), param_dtype=param_dtype(cfg), name=name))


def normal_init(std: float):
  return nn.initializers.normal(stddev=std)


def flat(x):
  """[batch, seq, d] -> [batch * seq, d]: XLA:CPU differentiates 2-D matmuls much faster."""
  return x.reshape(-1, x.shape[-1])


def declared_params(module: nn.Module, specs: dict, dtype=jnp.float32) -> dict:
  """Create the parameters a position scheme declares (``{name: ParamSpec}``) in ``module``."""
  return {name: module.param(name, spec.init, spec.shape, dtype) for name, spec in specs.items()}


def decay_mask(model_cfg):
  """``params -> bool tree``: which parameters AdamW decays.

  A parameter a position scheme declares (``ParamSpec.decay``) follows its declaration;
  every other one is decayed when its rank is >= 2 (matrices, embeddings), as in nanoGPT.
  """
  declared = {}
  if "position" in model_cfg:
    specs = positional.get_scheme(model_cfg.position).embedding_params(int(model_cfg.d_model))
    blocks = (schedule.distinct_positions(model_cfg) if "num_layers" in model_cfg
              else [model_cfg.position])
    for block in blocks:
      specs.update(positional.get_scheme(block).layer_params(
          int(model_cfg.attention.num_heads), int(model_cfg.d_model)))
    declared = {name: spec.decay for name, spec in specs.items()}

  def mask(params):
    def decide(path, p):
      name = getattr(path[-1], "key", None)
      return declared.get(name, p.ndim >= 2)
    return jax.tree_util.tree_map_with_path(decide, params)

  return mask
