"""The *kind* axis: what function of q, k, v an attention layer computes.

``softmax`` is scaled dot-product attention (any pattern, any positional bias,
any impl). The other kinds change the function to make it sub-quadratic
(``attnlab.attention.efficient``): ``lsh`` (Reformer), ``performer`` (FAVOR+) and
``linear`` (elu+1 features). They take the pattern ``causal`` (or ``full`` for
encoders), no additive position bias, and ignore ``impl``.

A kind is a ``KindSpec`` whose ``apply(q, k, v, *, mask, bias, cfg, layer, rng)``
returns ``[batch, seq, heads, head_dim]``; ``cfg`` is the ``model.attention``
config block. Its optional ``weights(q, k, *, mask, bias, cfg, layer, rng)`` returns the
attention matrix ``[batch, heads, q_len, kv_len]`` that ``apply`` uses (``apply`` ==
``weights @ v``), built densely for analysis (``attnlab.analysis``); a kind without it
cannot be captured. Register a new one with ``KINDS.register("name")(KindSpec(...))``.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax

from attnlab.attention import efficient
from attnlab.attention.core import dot_product_attention, reference_weights
from attnlab.attention.patterns import layer_seed
from attnlab.registry import Registry


@dataclasses.dataclass(frozen=True)
class KindSpec:
  apply: Callable
  patterns: tuple[str, ...] | None = None   # patterns it supports; None = every pattern
  takes_bias: bool = True                   # accepts additive position biases (ALiBi, T5)
  shared_qk: bool = False                   # keys are the queries (no key projection)
  params: tuple[str, ...] = ()              # model.attention fields it reads
  doc: str = ""
  weights: Callable | None = None           # the implied [B, H, q, k] attention matrix


KINDS: Registry[KindSpec] = Registry("model.attention.kind")


def _softmax(q, k, v, *, mask, bias, cfg, layer, rng=None):
  return dot_product_attention(q, k, v, mask=mask, bias=bias, impl=cfg.impl,
                               block_q=cfg.block_q, block_kv=cfg.block_kv,
                               ring_layout=cfg.get("ring_layout", "zigzag"))


def _softmax_weights(q, k, *, mask, bias, cfg, layer, rng=None):
  return reference_weights(q, k, mask=mask, bias=bias)


def _key(cfg, layer, rng=None):
  """Fixed per (seed, layer); a fresh ``rng`` (feature redraw while training) wins."""
  return rng if rng is not None else jax.random.PRNGKey(layer_seed(cfg, layer))


def _lsh_options(cfg, layer) -> dict:
  return dict(key=_key(cfg, layer), num_buckets=cfg.lsh_buckets, num_hashes=cfg.lsh_hashes,
              chunk_size=cfg.lsh_chunk, causal=cfg.pattern == "causal")


def _performer_options(cfg, layer, rng) -> dict:
  return dict(key=_key(cfg, layer, rng if cfg.feature_redraw else None),
              num_features=cfg.num_features, causal=cfg.pattern == "causal")


def _lsh(q, k, v, *, mask, bias, cfg, layer, rng=None):
  return efficient.lsh_attention(q, v, **_lsh_options(cfg, layer))


def _lsh_weights(q, k, *, mask, bias, cfg, layer, rng=None):
  return efficient.lsh_attention_weights(q, **_lsh_options(cfg, layer))


def _performer(q, k, v, *, mask, bias, cfg, layer, rng=None):
  return efficient.performer_attention(q, k, v, chunk_size=cfg.scan_chunk,
                                       **_performer_options(cfg, layer, rng))


def _performer_weights(q, k, *, mask, bias, cfg, layer, rng=None):
  return efficient.performer_attention_weights(q, k, **_performer_options(cfg, layer, rng))


def _linear(q, k, v, *, mask, bias, cfg, layer, rng=None):
  return efficient.linear_attention(q, k, v, causal=cfg.pattern == "causal",
                                    chunk_size=cfg.scan_chunk)


def _linear_weights(q, k, *, mask, bias, cfg, layer, rng=None):
  return efficient.linear_attention_weights(q, k, causal=cfg.pattern == "causal")


KINDS.register("softmax")(KindSpec(_softmax, params=("impl", "block_q", "block_kv"),
                                   doc="softmax(q k^T / sqrt(d)) v; O(N^2) or block-sparse",
                                   weights=_softmax_weights))
KINDS.register("lsh")(KindSpec(
    _lsh, patterns=("causal", "full"), takes_bias=False, shared_qk=True,
    params=("lsh_buckets", "lsh_hashes", "lsh_chunk", "seed"),
    doc="Reformer: shared-QK attention within LSH-sorted chunks; O(N * chunk * hashes)",
    weights=_lsh_weights))
KINDS.register("performer")(KindSpec(
    _performer, patterns=("causal", "full"), takes_bias=False,
    params=("num_features", "feature_redraw", "scan_chunk", "seed"),
    doc="FAVOR+ positive orthogonal random features; O(N * features * d)",
    weights=_performer_weights))
KINDS.register("linear")(KindSpec(
    _linear, patterns=("causal", "full"), takes_bias=False, params=("scan_chunk",),
    doc="elu(x)+1 feature map, cumulative sums when causal; O(N * d^2)",
    weights=_linear_weights))
