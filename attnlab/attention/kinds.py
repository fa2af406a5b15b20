"""The *kind* axis: what function of q, k, v an attention layer computes.

``softmax`` is scaled dot-product attention (any pattern and score modifier, on any
impl that serves them: the fused ``pallas`` kernel only takes modifiers that lower into
it). The other kinds change the function to make it sub-quadratic
(``attnlab.attention.efficient``): ``lsh`` (Reformer), ``performer`` (FAVOR+) and
``linear`` (elu+1 features). They take the pattern ``causal`` (or ``full`` for
encoders), no score modifier, and ignore ``impl``.

A kind is a ``KindSpec`` whose ``apply(q, k, v, *, mask, bias, cfg, layer, rng)``
returns ``[batch, seq, heads, head_dim]``; ``cfg`` is the ``model.attention`` config
block. Its optional ``weights(q, k, *, mask, bias, cfg, layer, rng)`` returns the
attention matrix ``[batch, heads, q_len, kv_len]`` that ``apply`` uses (``apply`` ==
``weights @ v``), built densely for analysis (``attnlab.analysis``); a kind without it
cannot be captured. The spec also declares what others need to know: the fields it
reads, whether it honours score modifiers (position biases) and learned sinks (``sinks``:
then ``apply`` and ``weights`` take ``sinks=`` float [heads]), whether it can decode
from a KV cache and whether it draws fresh randomness per training step. Register a
new one with ``KINDS.register("name")(KindSpec(...))``.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax

from attnlab.attention import efficient
from attnlab.attention.core import dot_product_attention, impl_options, reference_weights
from attnlab.attention.patterns import PATTERNS, SEED, layer_seed
from attnlab.registry import Field, Registry


@dataclasses.dataclass(frozen=True)
class KindSpec:
  apply: Callable
  patterns: tuple[str, ...] | None = None   # patterns it supports; None = every pattern
  honours_score_mods: bool = True           # applies score modifiers (ALiBi, T5, soft-cap)
  sinks: bool = False                       # takes learned sinks (apply/weights: sinks=)
  uses_impl: bool = False                   # computed by dot_product_attention's impls
  shared_qk: bool = False                   # keys are the queries (no key projection)
  fields: tuple[Field, ...] = ()            # model.attention fields it reads
  doc: str = ""
  weights: Callable | None = None           # the implied [B, H, q, k] attention matrix
  # Why a KV cache cannot decode it (None: it can).
  cache_refusal: str | None = None
  # Why it cannot generate text at all, cache or not (None: it can).
  generation_refusal: str | None = None
  # (model.attention config) -> True when it needs a fresh "features" rng every step.
  redraws: Callable[..., bool] = lambda cfg: False

  @property
  def params(self) -> tuple[str, ...]:
    return tuple(f.name for f in self.fields)


KINDS: Registry[KindSpec] = Registry("model.attention.kind")


def _causal(cfg) -> bool:
  return PATTERNS.get(cfg.pattern).causal


def _softmax(q, k, v, *, mask, bias, cfg, layer, rng=None, sinks=None):
  return dot_product_attention(q, k, v, mask=mask, bias=bias, impl=cfg.impl, sinks=sinks,
                               **impl_options(cfg))


def _softmax_weights(q, k, *, mask, bias, cfg, layer, rng=None, sinks=None):
  return reference_weights(q, k, mask=mask, bias=bias, sinks=sinks)


def _key(cfg, layer, rng=None):
  """Fixed per (seed, layer); a fresh ``rng`` (feature redraw while training) wins."""
  return rng if rng is not None else jax.random.PRNGKey(layer_seed(cfg, layer))


def _lsh_options(cfg, layer) -> dict:
  return dict(key=_key(cfg, layer), num_buckets=cfg.lsh_buckets, num_hashes=cfg.lsh_hashes,
              chunk_size=cfg.lsh_chunk, causal=_causal(cfg))


def _performer_options(cfg, layer, rng) -> dict:
  return dict(key=_key(cfg, layer, rng if cfg.feature_redraw else None),
              num_features=cfg.num_features, causal=_causal(cfg))


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
  return efficient.linear_attention(q, k, v, causal=_causal(cfg), chunk_size=cfg.scan_chunk)


def _linear_weights(q, k, *, mask, bias, cfg, layer, rng=None):
  return efficient.linear_attention_weights(q, k, causal=_causal(cfg))


def _one_or_even(value, context):
  return None if value == 1 or value % 2 == 0 else "must be 1 or even (angular LSH: argmax over [xR, -xR])"


SCAN_CHUNK = Field("scan_chunk", 128, "performer/linear causal: chunk of the prefix-sum scan",
                   minimum=1)
_HASHES = ("hashes the whole sequence, so a prefix's output depends on the padding after "
           "it; it cannot generate")
_RECURRENT = ("has no KV cache: its causal form is a recurrent state; KV-cache decoding needs "
              "a kind that keeps keys and values (softmax); generate with use_cache=False "
              "(--nocache) to recompute the prefix at every step instead")

KINDS.register("softmax")(KindSpec(
    _softmax, uses_impl=True, sinks=True,
    doc="softmax(q k^T / sqrt(d)) v; O(N^2) or block-sparse",
    weights=_softmax_weights))
KINDS.register("lsh")(KindSpec(
    _lsh, patterns=("causal", "full"), honours_score_mods=False, shared_qk=True,
    fields=(Field("lsh_buckets", 8, "lsh: buckets per hash (1 or even)", minimum=1,
                  check=_one_or_even),
            Field("lsh_hashes", 2, "lsh: hash rounds", minimum=1),
            Field("lsh_chunk", 64, "lsh: chunk length in sorted order", minimum=1), SEED),
    doc="Reformer: shared-QK attention within LSH-sorted chunks; O(N * chunk * hashes)",
    weights=_lsh_weights, cache_refusal=_HASHES, generation_refusal=_HASHES))
KINDS.register("performer")(KindSpec(
    _performer, patterns=("causal", "full"), honours_score_mods=False,
    fields=(Field("num_features", 256, "performer: random features", minimum=1),
            Field("feature_redraw", False, "performer: new features every training step"),
            SCAN_CHUNK, SEED),
    doc="FAVOR+ positive orthogonal random features; O(N * features * d)",
    weights=_performer_weights, cache_refusal=_RECURRENT,
    redraws=lambda cfg: bool(cfg.feature_redraw)))
KINDS.register("linear")(KindSpec(
    _linear, patterns=("causal", "full"), honours_score_mods=False, fields=(SCAN_CHUNK,),
    doc="elu(x)+1 feature map, cumulative sums when causal; O(N * d^2)",
    weights=_linear_weights, cache_refusal=_RECURRENT))
