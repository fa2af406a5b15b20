"""Flax linen modules: attention layer, pre-norm block, decoder-only ``TransformerLM``.

Every module takes the ``model`` config block (a frozen ``ml_collections`` dict)
and reads its four attention axes by name from the registries, so a config
string is the whole interface.
"""

from __future__ import annotations

import collections
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from attnlab import positional
from attnlab.attention import KINDS, PATTERNS, masks
from attnlab.models import kv_cache, schedule
from attnlab.models.common import (DTYPES, LATENT_NORM_EPS, MLPS, NORMS, attention_settings,
                                   declared_params, differential_lambda_init, head_dim,
                                   mlp_hidden, model_settings, norm_eps, param_dtype,
                                   value_head_dim)
from attnlab.models.common import flat as _flat
from attnlab.registry import Declared
from attnlab.models.common import normal_init as _init


def _dtype(cfg):
  return DTYPES[cfg.dtype]


def _dense(cfg, features: int, name: str, std: float = 0.02, bias: bool | None = None):
  """A Dense layer in the model's compute and parameter dtypes (bias: ``model.use_bias``)."""
  return nn.Dense(features, use_bias=cfg.use_bias if bias is None else bias,
                  kernel_init=_init(std), dtype=_dtype(cfg), param_dtype=param_dtype(cfg),
                  name=name)


def _with_pattern(att, pattern: str | None):
  """``model.attention`` read with another registered pattern (a seq2seq encoder's "full")."""
  if pattern is None or pattern == att.pattern:
    return att
  return Declared(collections.ChainMap({"pattern": pattern}, att), ())


class SelfAttention(nn.Module):
  """Multi-head attention, the one layer of every Transformer here: MHA, GQA or MQA by
  ``num_kv_heads``; the kind, pattern, position scheme and impl of ``model.attention``,
  as this layer's entry of the schedule (``model.layer_types``) reads them: a local layer
  attends through a sliding window, a NoPE layer encodes no positions. With
  ``attention.qk_norm`` queries and keys are RMS-normalised per head before position
  encoding; ``attention.score_scale`` rescales the queries; ``attention.softcap`` caps the
  scores before the position modifier; ``attention.sink_logit`` adds a per-head sink logit to
  every row's softmax denominator (learned: the parameter ``sinks`` [heads]).

  What replaces the plain projections or the softmax path (``model.attention`` fields):

  - ``latent_rank`` > 0: multi-head latent attention (DeepSeek-V2/V3; ``_latent``).
  - ``differential``: differential attention (Ye et al. 2024; ``_differential``): each head
    is two half-width heads of one softmax each, attended over the same values.
  - ``output_gate``: a sigmoid gate from the layer input on each head's output (``_gated``).

  x: [batch, seq, d_model]; positions: int [batch, seq] -> [batch, seq, d_model].
  ``layer`` (the block index) seeds random patterns and random features; ``pattern``
  replaces ``model.attention.pattern`` (a seq2seq encoder attends with ``"full"``);
  ``depth``: residual layers of the whole model, for the output projection's initial
  scale (0: ``model.num_layers``).

  ``mask``: bool broadcastable to [batch, heads, q, k], and-ed with the pattern (source
  padding). ``segment_ids``: int [batch, seq], packed documents: a token sees only keys of
  its own document (``masks.segments``, and-ed with the pattern; tiles across documents
  are skipped at run time). ``memory`` [batch, src, d_model]: cross-attention, queries from ``x`` and keys
  and values from ``memory`` (projections ``query`` and ``key_value``; content only: no
  position scheme, every memory token visible but for ``mask``; always plain attention).
  With ``cache=(layer_kv, plan)`` (incremental decoding, see ``attnlab.models.kv_cache``)
  returns ``(output, updated layer_kv)``.

  When the ``intermediates`` collection is mutable, the layer also sows
  ``attention_weights`` [batch, heads, q_len, kv_len]: the matrix its kind applies
  (``KindSpec.weights``; for softmax the reference formula, whatever ``impl`` computes
  the output), built densely (differential attention: both maps of each head, pair-major,
  [batch, 2 * heads, q_len, kv_len]). The output is computed exactly as without capture.
  """
  cfg: Any
  layer: int = 0
  pattern: str | None = None
  depth: int = 0

  @nn.compact
  def __call__(self, x, positions=None, cache=None, *, mask=None, memory=None,
               segment_ids=None):
    cfg = self.cfg
    layer_att = schedule.layer_attention(cfg, self.layer) if memory is None else cfg.attention
    att = _with_pattern(layer_att, "full" if memory is not None else self.pattern)
    settings = attention_settings(att)
    batch, seq, _ = x.shape
    heads, kv_heads = att.num_heads, att.num_kv_heads
    dh = head_dim(cfg)
    kind = KINDS.get(att.kind)
    qkv_bias = cfg.use_bias or model_settings(cfg).qkv_bias
    depth = self.depth or cfg.num_layers
    out_proj = _dense(cfg, cfg.d_model, "out", 0.02 / math.sqrt(2 * depth))
    sinks = self._sinks(settings)
    layer_kv = None
    if memory is not None:
      src = memory.shape[1]
      q = _dense(cfg, heads * dh, "query", bias=qkv_bias)(_flat(x))
      kv = _dense(cfg, 2 * kv_heads * dh, "key_value", bias=qkv_bias)(_flat(memory))
      q = q.reshape(batch, seq, heads, dh)
      k, v = jnp.split(kv.reshape(batch, src, 2 * kv_heads, dh), 2, axis=2)
      q, k = self._normed(q, k, settings)
      out = self._attend(q, k, v, kv_cache.capped(att, None), att, mask, segment_ids, sinks)
      return out_proj(out.reshape(batch * seq, heads * dh)).reshape(x.shape)
    scheme = positional.get_scheme(schedule.layer_position(cfg, self.layer))
    params = declared_params(self, scheme.layer_params(heads, cfg.d_model), param_dtype(cfg))
    if settings.latent_rank:
      out = self._latent(x, positions, cache, settings, att, scheme, params, mask,
                         segment_ids, sinks)
      out, layer_kv = out if cache is not None else (out, None)
    else:
      num_k = 0 if kind.shared_qk else kv_heads     # shared QK (Reformer): keys are the queries
      qkv = _dense(cfg, (heads + num_k + kv_heads) * dh, "qkv", bias=qkv_bias)(_flat(x))
      q, k, v = jnp.split(qkv.reshape(batch, seq, heads + num_k + kv_heads, dh),
                          [heads, heads + num_k], axis=2)   # one matmul; columns [q | k | v]
      values = None
      if settings.differential:   # each head's two halves as heads of their own
        q, k = _halves(q), (_halves(k) if num_k else k)
        values = _doubled
        sinks = None if sinks is None else jnp.concatenate([sinks, sinks])
      q, normed_k = self._normed(q, k if num_k else None, settings)
      k = k if normed_k is None else normed_k
      if cache is not None:   # incremental decoding: k, v go to the cache before encoding
        out, layer_kv = kv_cache.cached_attention(q, k, v, *cache, scheme=scheme,
                                                  params=params, att=att, layer=self.layer,
                                                  inputs=x, sinks=sinks, values=values)
      else:
        if kind.shared_qk:
          q, _ = scheme.rotate_qk(q, q, positions)
          k = q
        else:
          q, k = scheme.rotate_qk(q, k, positions)
        if scheme.reads_input:   # FoX: gates from this layer's input
          bias = scheme.score_mod(heads, params, positions, inputs=x)
        else:
          bias = scheme.score_mod(heads, params, positions)
        out = self._attend(q, k, v if values is None else values(k, v),
                           kv_cache.capped(att, bias), att, mask, segment_ids, sinks)
      if settings.differential:
        out = self._differential(out, heads)
    out = self._gated(out, x, settings)
    out = out_proj(out.reshape(batch * seq, -1)).reshape(x.shape)
    return out if cache is None else (out, layer_kv)

  def _attend(self, q, k, v, bias, att, mask, segment_ids, sinks):
    """The kind's attention of q over k, v ([batch, len, heads, dim]) under the layer's
    pattern, ``mask`` and ``segment_ids``; sows the weights when capturing."""
    kind = KINDS.get(att.kind)
    rng = self.make_rng("features") if self.has_rng("features") else None
    pattern = PATTERNS.get(att.pattern).build(att, self.layer)
    pattern = pattern if mask is None else pattern & masks.as_mask(mask)
    if segment_ids is not None:
      pattern = pattern & masks.segments(segment_ids)
    extra = {} if sinks is None else {"sinks": sinks}
    if kind.weights is not None and self.is_mutable_collection("intermediates"):
      self.sow("intermediates", "attention_weights",
               kind.weights(q, k, mask=pattern, bias=bias, cfg=att, layer=self.layer, rng=rng,
                            **extra))
    return kind.apply(q, k, v, mask=pattern, bias=bias, cfg=att, layer=self.layer, rng=rng,
                      **extra)

  def _latent(self, x, positions, cache, settings, att, scheme, params, mask, segment_ids,
              sinks):
    """Multi-head latent attention (DeepSeek-V2 section 2.1; V3's layer).

    With r = ``latent_rank``, d_n = head_dim, d_r = ``latent_rope_dim``, d_v the value dim:
    c_kv = RMSNorm(x W_dkv) [r] and a RoPE key k_r = RoPE(x W_kr) [d_r] shared by the
    heads; per head, k = [c_kv W_uk, k_r], v = c_kv W_uv; queries q = [q_n, RoPE(q_r)] from
    x (or from RMSNorm(x W_dq) with ``latent_query_rank``). Scores scale by
    1 / sqrt(d_n + d_r). Parameters: ``query`` (or ``query_down``, ``query_down_norm``,
    ``query_up``), ``kv_down`` (W_dkv and W_kr as one matrix, [d_model, r + d_r]),
    ``kv_down_norm``, ``kv_up`` [r, heads * (d_n + d_v)] (per head: W_uk then W_uv).

    Full pass: keys and values expanded per head. Cached step (the absorbed form): the
    cache holds [c_kv, k_r] per token (one key head of r + d_r, no value); queries become
    [q_n W_uk^T, q_r] and attend over it with values c_kv, and the output is multiplied by
    W_uv: the same scores and output with no per-head key or value ever stored.
    Returns [batch, seq, heads, d_v] (and the layer's cache with ``cache``).
    """
    cfg = self.cfg
    batch, seq, _ = x.shape
    heads = int(att.num_heads)
    dn, dr, r = head_dim(cfg), int(settings.latent_rope_dim), int(settings.latent_rank)
    dv = value_head_dim(cfg)
    norm = lambda name: nn.RMSNorm(epsilon=LATENT_NORM_EPS, dtype=_dtype(cfg),  # noqa: E731
                                   param_dtype=param_dtype(cfg), name=name)
    xf = _flat(x)
    if settings.latent_query_rank:
      cq = norm("query_down_norm")(_dense(cfg, int(settings.latent_query_rank), "query_down")(xf))
      q = _dense(cfg, heads * (dn + dr), "query_up", bias=False)(cq)
    else:
      q = _dense(cfg, heads * (dn + dr), "query", bias=False)(xf)
    q = q.reshape(batch, seq, heads, dn + dr)
    down = _dense(cfg, r + dr, "kv_down")(xf).reshape(batch, seq, 1, r + dr)
    latent, k_rope = norm("kv_down_norm")(down[..., :r]), down[..., r:]
    up = self.param("kv_up", _init(0.02), (r, heads * (dn + dv)), param_dtype(cfg))
    up = up.astype(_dtype(cfg)).reshape(r, heads, dn + dv)
    q_nope, q_rope = q[..., :dn], q[..., dn:]
    q_rope, k_rope = scheme.rotate_qk(q_rope, k_rope, positions)
    scale = (float(settings.score_scale) or 1.0 / math.sqrt(dn + dr))   # of q . k
    if cache is not None:   # the absorbed form over a latent cache
      q_latent = jnp.einsum("bthn,rhn->bthr", q_nope, up[..., :dn])
      q_abs = jnp.concatenate([q_latent, q_rope], axis=-1)
      q_abs = q_abs * jnp.asarray(scale * math.sqrt(r + dr), q_abs.dtype)  # kinds: 1/sqrt(dim)
      keys = jnp.concatenate([latent, k_rope.astype(latent.dtype)], axis=-1)
      empty = jnp.zeros((batch, seq, 1, 0), keys.dtype)
      out, layer_kv = kv_cache.cached_attention(
          q_abs, keys, empty, *cache, scheme=scheme, params=params, att=att, layer=self.layer,
          inputs=x, sinks=sinks, rotated=True, values=lambda k, v: k[..., :r])
      return jnp.einsum("bthr,rhv->bthv", out, up[..., dn:]), layer_kv
    expanded = jnp.einsum("btr,rhx->bthx", latent[:, :, 0], up)
    k = jnp.concatenate([expanded[..., :dn],
                         jnp.broadcast_to(k_rope, (batch, seq, heads, dr)).astype(q.dtype)], -1)
    v = expanded[..., dn:]
    q = jnp.concatenate([q_nope, q_rope.astype(q.dtype)], axis=-1)
    if settings.score_scale:
      q = q * jnp.asarray(scale * math.sqrt(dn + dr), q.dtype)
    bias = kv_cache.capped(att, scheme.score_mod(heads, params, positions))
    return self._attend(q, k, v, bias, att, mask, segment_ids, sinks)

  def _differential(self, out, heads: int):
    """Differential attention's combination (Ye et al. 2024, eq. 1-3) of the two maps' outputs
    ``out`` [batch, seq, 2 * heads, head_dim] (pair-major: map 1 of every head, then map 2):
    (o1 - lambda o2), RMS-normalised per head (parameter ``diff_norm`` [head_dim]), times
    1 - lambda_init. lambda = exp(lambda_q1 . lambda_k1) - exp(lambda_q2 . lambda_k2) +
    lambda_init, the four vectors [head_dim / 2] initialised N(0, 0.1) as in the paper's
    code, one lambda per layer. Returns [batch, seq, heads, head_dim]."""
    cfg, half = self.cfg, out.shape[-1] // 2
    vec = lambda name: self.param(name, nn.initializers.normal(0.1), (half,),  # noqa: E731
                                  param_dtype(cfg)).astype(jnp.float32)
    init = differential_lambda_init(self.layer)
    lam = (jnp.exp(jnp.sum(vec("lambda_q1") * vec("lambda_k1")))
           - jnp.exp(jnp.sum(vec("lambda_q2") * vec("lambda_k2"))) + init)
    o1, o2 = out[:, :, :heads].astype(jnp.float32), out[:, :, heads:].astype(jnp.float32)
    diff = nn.RMSNorm(epsilon=norm_eps(cfg), dtype=jnp.float32, param_dtype=param_dtype(cfg),
                      name="diff_norm")(o1 - lam * o2)
    return (diff * (1.0 - init)).astype(out.dtype)

  def _gated(self, out, x, settings):
    """``out`` [batch, seq, heads, dim] times sigmoid(x W_gate) (``attention.output_gate``):
    one gate per output dim (elementwise) or per head (headwise), from the layer input x
    (parameter ``gate``; Qiu et al. 2025's G1 position, Qwen3-Next's elementwise gate)."""
    if settings.output_gate == "none":
      return out
    batch, seq, heads, dim = out.shape
    width = heads * dim if settings.output_gate == "elementwise" else heads
    bias = self.cfg.use_bias or model_settings(self.cfg).qkv_bias
    gate = _dense(self.cfg, width, "gate", bias=bias)(_flat(x)).reshape(batch, seq, heads, -1)
    return out * jax.nn.sigmoid(gate.astype(jnp.float32)).astype(out.dtype)

  def _sinks(self, settings):
    """The sink logits float32 [heads] (``attention.sink_logit``), or None."""
    if settings.sink_logit == "learned":
      return self.param("sinks", nn.initializers.zeros, (int(settings.num_heads),),
                        param_dtype(self.cfg)).astype(jnp.float32)
    if settings.sink_logit == "off_by_one":
      return jnp.zeros((int(settings.num_heads),), jnp.float32)
    return None

  def _normed(self, q, k, settings):
    """Queries and keys [batch, len, heads, head_dim] after QK-norm (``qk_norm``: RMSNorm
    over head_dim, one scale shared by the heads) and the query scaling ``score_scale``
    (scores become q.k * score_scale once the kind divides by sqrt(head_dim)). ``k``
    None: keys are the queries (shared QK), returned as None."""
    cfg, dh = self.cfg, q.shape[-1]
    if settings.qk_norm:
      norm = lambda name: nn.RMSNorm(epsilon=norm_eps(cfg), dtype=_dtype(cfg),  # noqa: E731
                                     param_dtype=param_dtype(cfg), name=name)
      q = norm("query_norm")(q)
      k = None if k is None else norm("key_norm")(k)
    if settings.score_scale:
      q = q * jnp.asarray(float(settings.score_scale) * math.sqrt(dh), q.dtype)
    return q, k


def _halves(x):
  """[batch, len, heads, dim] -> [batch, len, 2 * heads, dim / 2]: each head's first halves
  (heads 0..heads-1), then its second halves (pair-major, so GQA's grouping still maps
  query half j of head i to key half j of head i's key head)."""
  b, n, h, d = x.shape
  return x.reshape(b, n, h, 2, d // 2).transpose(0, 1, 3, 2, 4).reshape(b, n, 2 * h, d // 2)


def _doubled(k, v):
  """Values [batch, len, kv_heads, dim] for the 2 * kv_heads half-width keys of
  differential attention (both maps of a head read the same values)."""
  return jnp.concatenate([v, v], axis=2)


class MLP(nn.Module):
  """The feed-forward layer ``model.mlp`` names (an ``MLPS`` entry): ``act(up(x))``, or
  ``act(gate(x)) * up(x)`` when gated, then ``down``; hidden width ``mlp_hidden(cfg)``.
  x: [..., d_model] -> [..., d_model]."""
  cfg: Any
  mlp: str | None = None     # an MLPS name other than model.mlp (a routed model's dense blocks)

  @nn.compact
  def __call__(self, x):
    cfg = self.cfg
    spec = MLPS.get(self.mlp or cfg.mlp)
    hidden = mlp_hidden(cfg)
    out_std = 0.02 / math.sqrt(2 * cfg.num_layers)
    shape, x = x.shape, _flat(x)
    if spec.gated:
      h = spec.activation(_dense(cfg, hidden, "gate")(x)) * _dense(cfg, hidden, "up")(x)
    else:
      h = spec.activation(_dense(cfg, hidden, "up")(x))
    return _dense(cfg, cfg.d_model, "down", out_std)(h).reshape(shape)


class Block(nn.Module):
  """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x)) (unless mlp="none");
  with ``model.parallel_residual`` (GPT-NeoX) x + attn(norm(x)) + mlp(norm'(x)); with
  ``model.post_norms`` (Gemma's sandwich) each branch's output is normalised again before
  its residual add: x + norm''(attn(norm(x))).

  With ``cache`` (see ``SelfAttention``) returns ``(x, updated layer_kv)``.
  """
  cfg: Any
  layer: int = 0

  @nn.compact
  def __call__(self, x, positions, deterministic: bool = True, cache=None, segment_ids=None):
    norm = NORMS.get(self.cfg.norm)
    settings = model_settings(self.cfg)
    post = (lambda name, y: norm(self.cfg, name)(y)) if settings.post_norms else (  # noqa: E731
        lambda name, y: y)
    drop = nn.Dropout(self.cfg.dropout)
    attn = SelfAttention(self.cfg, self.layer, name="attention")(
        norm(self.cfg, "norm_attention")(x), positions, cache, segment_ids=segment_ids)
    if cache is not None:
      attn, layer_kv = attn
    out = x + drop(post("norm_attention_out", attn), deterministic)
    mlp_in = x if settings.parallel_residual else out
    spec = MLPS.get(self.cfg.mlp)
    if spec.module is not None and self.layer < int(settings.moe_first_dense):
      mlp = MLP(self.cfg, "swiglu", name="mlp")(norm(self.cfg, "norm_mlp")(mlp_in))
      out = out + drop(post("norm_mlp_out", mlp), deterministic)
    elif spec.module is not None or spec.activation is not None:   # "none": attention only
      layer = spec.module or MLP
      mlp = layer(self.cfg, name="mlp")(norm(self.cfg, "norm_mlp")(mlp_in))
      out = out + drop(post("norm_mlp_out", mlp), deterministic)
    return out if cache is None else (out, layer_kv)


class TransformerLM(nn.Module):
  """Decoder-only language model.

  tokens: int [batch, seq]; positions: int [batch, seq] (default 0..seq-1)
  -> float32 logits [batch, seq, vocab_size]. ``segment_ids`` (int [batch, seq], optional):
  packed documents; each token attends only within its document (pass positions that
  restart in each document, ``data.document_positions``).

  ``model.embed_scale`` multiplies the token embeddings by sqrt(d_model);
  ``model.logit_softcap`` caps the logits (cap * tanh(logits / cap)).

  Incremental decoding: with ``cache`` (a ``kv_cache.KVCache``) the tokens continue the
  text the cache holds (their positions follow from it; ``positions`` must be None) and
  the result is ``(logits, updated cache)``. ``prefill=True`` fills an empty cache.
  """
  cfg: Any

  @nn.compact
  def __call__(self, tokens, positions=None, deterministic: bool = True, cache=None,
               prefill: bool = False, segment_ids=None):
    cfg = self.cfg
    batch, seq = tokens.shape
    plans = None
    if cache is not None:
      if segment_ids is not None:
        raise ValueError("TransformerLM: a cache decodes one document; pass segment_ids=None")
      if positions is not None:
        raise ValueError("TransformerLM: with a cache, positions follow from it; pass None")
      plans = kv_cache.plan_step(cache, seq, prefill)
      positions = jnp.broadcast_to(plans[0].q_pos, (batch, seq))
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(seq), (batch, seq))
    positional.check_length(cfg.position, seq, "input length")
    embed = nn.Embed(cfg.vocab_size, cfg.d_model, embedding_init=_init(0.02),
                     param_dtype=param_dtype(cfg), name="embed")
    x = embed(tokens).astype(_dtype(cfg))
    settings = model_settings(cfg)
    if settings.embed_scale:   # Gemma: sqrt(d_model) in the compute dtype
      x = x * jnp.asarray(math.sqrt(cfg.d_model), x.dtype)
    if settings.embed_norm:   # BLOOM normalises the token embeddings
      x = NORMS.get(cfg.norm)(cfg, "norm_embed")(x)
    scheme = positional.get_scheme(cfg.position)
    params = declared_params(self, scheme.embedding_params(cfg.d_model), param_dtype(cfg))
    absolute = scheme.embed(positions, cfg.d_model, params)
    if absolute is not None:
      x = x + absolute.astype(x.dtype)
    x = nn.Dropout(cfg.dropout)(x, deterministic)
    new_layers = []
    for i in range(cfg.num_layers):
      block = Block(cfg, i, name=f"block_{i}")
      if cache is None:
        x = block(x, positions, deterministic, segment_ids=segment_ids)
      else:
        x, layer_kv = block(x, positions, deterministic,
                            (cache.layers[i], plans[cache.group_of[i]]))
        new_layers.append(layer_kv)
    x = _flat(NORMS.get(cfg.norm)(cfg, "norm_final")(x)).astype(jnp.float32)
    if cfg.tie_embeddings:
      logits = embed.attend(x)
    else:
      logits = nn.Dense(cfg.vocab_size, use_bias=False, kernel_init=_init(0.02),
                        param_dtype=param_dtype(cfg), name="unembed")(x)
    logits = logits.reshape(batch, seq, cfg.vocab_size).astype(jnp.float32)
    if settings.logit_softcap:
      cap = float(settings.logit_softcap)
      logits = cap * jnp.tanh(logits / cap)
    return logits if cache is None else (logits, kv_cache.finish_step(cache, plans, new_layers))


def num_params(params) -> int:
  return sum(x.size for x in jax.tree_util.tree_leaves(params))
