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
from attnlab.models.common import (DTYPES, MLPS, NORMS, attention_settings, declared_params,
                                   head_dim, mlp_hidden, model_settings, norm_eps, param_dtype)
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
  position scheme, every memory token visible but for ``mask``).
  With ``cache=(layer_kv, plan)`` (incremental decoding, see ``attnlab.models.kv_cache``)
  returns ``(output, updated layer_kv)``.

  When the ``intermediates`` collection is mutable, the layer also sows
  ``attention_weights`` [batch, heads, q_len, kv_len]: the matrix its kind applies
  (``KindSpec.weights``; for softmax the reference formula, whatever ``impl`` computes
  the output), built densely. The output is computed exactly as without capture.
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
    if memory is not None:
      src = memory.shape[1]
      q = _dense(cfg, heads * dh, "query", bias=qkv_bias)(_flat(x))
      kv = _dense(cfg, 2 * kv_heads * dh, "key_value", bias=qkv_bias)(_flat(memory))
      q = q.reshape(batch, seq, heads, dh)
      k, v = jnp.split(kv.reshape(batch, src, 2 * kv_heads, dh), 2, axis=2)
      q, k = self._normed(q, k, settings)
      scheme, bias = None, kv_cache.capped(att, None)
    else:
      num_k = 0 if kind.shared_qk else kv_heads     # shared QK (Reformer): keys are the queries
      qkv = _dense(cfg, (heads + num_k + kv_heads) * dh, "qkv", bias=qkv_bias)(_flat(x))
      q, k, v = jnp.split(qkv.reshape(batch, seq, heads + num_k + kv_heads, dh),
                          [heads, heads + num_k], axis=2)   # one matmul; columns [q | k | v]
      q, normed_k = self._normed(q, k if num_k else None, settings)
      k = k if normed_k is None else normed_k
      scheme = positional.get_scheme(schedule.layer_position(cfg, self.layer))
      params = declared_params(self, scheme.layer_params(heads, cfg.d_model),
                               param_dtype(cfg))
      if cache is not None:   # incremental decoding: k, v go to the cache before encoding
        out, layer_kv = kv_cache.cached_attention(q, k, v, *cache, scheme=scheme,
                                                  params=params, att=att, layer=self.layer,
                                                  inputs=x, sinks=self._sinks(settings))
        return out_proj(out.reshape(batch * seq, heads * dh)).reshape(x.shape), layer_kv
      if kind.shared_qk:
        q, _ = scheme.rotate_qk(q, q, positions)
        k = q
      else:
        q, k = scheme.rotate_qk(q, k, positions)
      if scheme.reads_input:   # FoX: gates from this layer's input
        bias = scheme.score_mod(heads, params, positions, inputs=x)
      else:
        bias = scheme.score_mod(heads, params, positions)
      bias = kv_cache.capped(att, bias)
    rng = self.make_rng("features") if self.has_rng("features") else None
    pattern = PATTERNS.get(att.pattern).build(att, self.layer)
    pattern = pattern if mask is None else pattern & masks.as_mask(mask)
    if segment_ids is not None:
      pattern = pattern & masks.segments(segment_ids)
    sinks = self._sinks(settings)
    extra = {} if sinks is None else {"sinks": sinks}
    if kind.weights is not None and self.is_mutable_collection("intermediates"):
      self.sow("intermediates", "attention_weights",
               kind.weights(q, k, mask=pattern, bias=bias, cfg=att, layer=self.layer, rng=rng,
                            **extra))
    out = kind.apply(q, k, v, mask=pattern, bias=bias, cfg=att, layer=self.layer, rng=rng,
                     **extra)
    out = out_proj(out.reshape(batch * seq, heads * dh))
    return out.reshape(x.shape)

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


class MLP(nn.Module):
  """The feed-forward layer ``model.mlp`` names (an ``MLPS`` entry): ``act(up(x))``, or
  ``act(gate(x)) * up(x)`` when gated, then ``down``; hidden width ``mlp_hidden(cfg)``.
  x: [..., d_model] -> [..., d_model]."""
  cfg: Any

  @nn.compact
  def __call__(self, x):
    cfg = self.cfg
    spec = MLPS.get(cfg.mlp)
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
    if spec.module is not None or spec.activation is not None:   # "none": attention only
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
