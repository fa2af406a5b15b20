"""``dot_product_attention`` and the registry of implementations (the *impl* axis).

Every implementation computes the same function (the contract):

  out[b, i, h] = sum_j softmax_j(score_mod(scale * q[b,i,h] . k[b,j,h//G]))
                 * v[b, j, h//G]          over keys j with mask(i, j) true,

with softmax statistics in float32 and ``out = 0`` for a row that sees no key.

Learned sinks (gpt-oss; Xiao et al.'s attention sinks made a parameter): with ``sinks``
(float ``[heads]``, one logit per query head) every row's softmax denominator gains
``exp(sinks[h])``, a key with no value, so

  out[b, i, h] = sum_j exp(s_ij) v_j / (exp(sinks[h]) + sum_j exp(s_ij)),

and the row's weights sum to less than one (the rest is the sink's mass). Off-by-one
softmax (Miller 2023) is ``sinks = 0``. A row that sees no key still gives 0. An impl
that serves sinks declares ``Implementation.sinks`` and takes ``sinks=`` (gradients
included); ``dot_product_attention`` refuses the others.
Layout is ``[batch, seq, heads, head_dim]``; K/V may have fewer heads (GQA/MQA,
``G = heads // kv_heads``).

To add an implementation, write ``fn(q, k, v, *, mask, score_mod, scale, **options)``
(and take ``sinks=`` if it declares ``sinks=True``)
and register it in a module of its own: ``IMPLS.register("name")(Implementation(fn,
unsupported=..., options=(Field(...), ...)))`` (``cudnn_impl.py`` is the worked example).
Its ``options`` are ``model.attention`` fields that models forward to it by name
(``impl_options``); ``decode`` is its fast path for one cached decoding step, if any.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from attnlab.attention import masks as masks_lib
from attnlab.attention import score_mods
from attnlab.attention.blockwise import blockwise_attention
from attnlab.registry import ConfigError, Field, Registry

_F32 = jnp.float32


@dataclasses.dataclass(frozen=True)
class Implementation:
  """An attention implementation and what it declares about itself.

  ``unsupported(q, k, v, mask, score_mod)``: why it cannot serve a request (None: it can).
  ``options``: the ``model.attention`` fields it takes (passed to ``fn`` by name).
  ``decode(q, k, v, *, lengths, mask, score_mod, scale, **options)``: optional fast path
  for a cached decoding step, where cache slot j holds text position j, ``lengths``
  (int32 ``[batch]``) counts the filled slots and the ``T`` queries sit at the last T of
  them; ``mask`` / ``score_mod`` are the model's own (in text positions); ``sinks`` (an
  option, when the impl declares them) the layer's sink logits. It returns the
  output ``[batch, T, heads, head_dim]``, or None when it cannot serve the step (the
  cache then uses ``dot_product_attention``).
  """
  fn: Callable
  unsupported: Callable[..., str | None] = lambda q, k, v, mask, score_mod: None
  doc: str = ""
  options: tuple[Field, ...] = ()
  decode: Callable | None = None
  shards_sequence: bool = False   # serves a mesh whose 'sequence' axis splits the tokens
  # (smallest, largest, per-tile overhead in score entries): the square tiles it picks
  # from (masks.choose_tile) when the caller leaves block_q / block_kv unset; None for
  # untiled implementations
  tiles: tuple[int, int, int] | None = None
  # materialises the [B, H, Nq, Nk] scores (auto avoids it above AUTO_DENSE_LIMIT_BYTES)
  dense: bool = False
  # its place in auto's order per backend ("gpu", "tpu", "cpu"; lower first): the backends
  # it is designed for, in the order auto prefers them there; a backend it is not ranked on:
  # auto never picks it there. A rank is a design intention, not a measurement: nothing of
  # attnlab has run on a GPU or TPU (see ``tested_on``)
  auto_rank: Mapping[str, int] = dataclasses.field(default_factory=dict)
  # where this repository's committed runs have executed it, and how: backend -> what ran
  # ({"cpu": "compiled by XLA"}, {"cpu": "interpret mode"}, ...). A GPU or TPU entry needs a
  # committed results file of a run there (docs/gpu/*.json, written by scripts/gpu_check.py;
  # tests/test_auto.py ties the two); there is none yet, so no entry names either
  tested_on: Mapping[str, str] = dataclasses.field(default_factory=dict)
  # a kernel of this repository (not a plain JAX program, not a third-party kernel): auto
  # takes it on a backend only once it has run there (``tested_on``), and otherwise only
  # when no other implementation serves the request
  own_kernel: bool = False
  # serves learned sinks (``sinks=``, float [heads]; the module docstring), with gradients
  sinks: bool = False


IMPLS: Registry[Implementation] = Registry("model.attention.impl")

BLOCK_Q = Field("block_q", 0, "query tile of the tiled paths (blockwise, pallas); 0: chosen "
                "from the pattern (masks.choose_tile: about a window's or block's extent, "
                "large for dense patterns)", minimum=0)
BLOCK_KV = Field("block_kv", 0, "key tile of the tiled paths; 0: chosen from the pattern",
                 minimum=0)


def impl_options(cfg) -> dict:
  """The ``model.attention`` fields any implementation takes, by name, from ``cfg`` (those
  present): what a model forwards to ``dot_product_attention``, whichever impl runs."""
  names = {f.name for _, spec in IMPLS.items() for f in spec.options}
  return {name: cfg[name] for name in sorted(names) if name in cfg}


def reference_weights(q, k, *, mask=None, bias=None, scale: float | None = None, sinks=None):
  """Softmax attention probabilities, computed as ``reference_attention`` computes them.

  q: [batch, q_len, heads, head_dim]; k: [batch, kv_len, kv_heads, head_dim] (GQA/MQA
  keys are shared by ``heads // kv_heads`` query heads) -> float32 [batch, heads, q_len, kv_len].
  Scale 1/sqrt(head_dim) by default; a row that sees no key is all zeros. With ``sinks``
  (float [heads]) each row's denominator gains exp(sink): its weights sum to 1 - the
  sink's mass.
  """
  mask, bias = masks_lib.as_mask(mask), score_mods.as_score_mod(bias)
  scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
  k = jnp.repeat(k, q.shape[2] // k.shape[2], axis=2)
  s = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=_F32) * scale
  q_idx, kv_idx = jnp.arange(q.shape[1])[:, None], jnp.arange(k.shape[1])[None, :]
  if bias is not None:
    s = bias(s, q_idx, kv_idx)
  if mask is not None:
    s = jnp.where(mask(q_idx, kv_idx), s, -jnp.inf)
  if sinks is not None:
    sink = jnp.asarray(sinks, _F32).reshape(1, -1, 1, 1)
    m = jax.lax.stop_gradient(jnp.maximum(s.max(axis=-1, keepdims=True), sink))
    p = jnp.exp(s - m)
    return p / (p.sum(axis=-1, keepdims=True) + jnp.exp(sink - m))
  m = jax.lax.stop_gradient(s.max(axis=-1, keepdims=True))
  p = jnp.exp(s - jnp.where(jnp.isneginf(m), 0.0, m))
  denom = p.sum(axis=-1, keepdims=True)
  return p / jnp.where(denom == 0, 1.0, denom)


def reference_attention(q, k, v, *, mask=None, score_mod=None, scale: float, sinks=None,
                        **unused):
  """The oracle: materialises the full ``[B, H, Nq, Nk]`` float32 probabilities
  (``reference_weights``) and applies them to v."""
  p = reference_weights(q, k, mask=mask, bias=score_mod, scale=scale, sinks=sinks)
  v = jnp.repeat(v, q.shape[2] // v.shape[2], axis=2).astype(_F32)
  return jnp.einsum("bhqk,bkhd->bqhd", p, v).astype(q.dtype)


def _xla_unsupported(q, k, v, mask, score_mod):
  if score_mod is not None and not isinstance(score_mod, score_mods.AdditiveBias):
    return (f"impl='xla' (jax.nn.dot_product_attention) takes only additive biases; "
            f"{type(score_mod).__name__} is not additive. Use impl='reference' or 'blockwise'.")
  if not (q.dtype == k.dtype == v.dtype):
    return f"impl='xla' needs q, k, v of one dtype; got {q.dtype}, {k.dtype}, {v.dtype}"
  if q.shape[-1] != v.shape[-1]:
    return "impl='xla' needs equal query and value head dims"
  return None


def xla_attention(q, k, v, *, mask=None, score_mod=None, scale: float, sinks=None, **unused):
  """``jax.nn.dot_product_attention(implementation='xla')`` with dense mask and bias.

  Sinks: one more key (zero key and value, always visible) whose bias is the head's sink
  logit, so jax's softmax puts the sink's mass there (``_with_sink_key``)."""
  reason = _xla_unsupported(q, k, v, mask, score_mod)
  if reason:
    raise ValueError(reason)
  nq, nk = q.shape[1], k.shape[1]
  bias = None if score_mod is None else score_mod.dense(nq, nk).astype(q.dtype)
  dense_mask = None
  if mask is not None:
    dense_mask = mask.dense(nq, nk)
    dense_mask = dense_mask.reshape((1,) * (4 - dense_mask.ndim) + dense_mask.shape)
  if sinks is not None:
    out = jax.nn.dot_product_attention(*_with_sink_key(q, k, v, bias, dense_mask, sinks),
                                       scale=scale, implementation="xla")
    return out   # a row that sees no key puts all its mass on the sink: out = 0
  out = jax.nn.dot_product_attention(q, k, v, bias=bias, mask=dense_mask, scale=scale,
                                     implementation="xla")
  if dense_mask is not None and _may_have_empty_rows(mask, nq, nk):
    # jax gives a uniform average for a row that sees no key; the contract says 0
    sees_any = jnp.broadcast_to(dense_mask, (q.shape[0], q.shape[2], nq, nk)).any(-1)
    out = out * sees_any.transpose(0, 2, 1)[..., None].astype(out.dtype)
  return out


def _with_sink_key(q, k, v, bias, dense_mask, sinks):
  """(q, k, v, bias, mask) with the sink as key ``kv_len``: k and v zero there (so its
  logit is the bias alone), bias ``sinks[h]``, visible to every query."""
  b, nq, h, _ = q.shape
  nk = k.shape[1]
  k = jnp.pad(k, ((0, 0), (0, 1), (0, 0), (0, 0)))
  v = jnp.pad(v, ((0, 0), (0, 1), (0, 0), (0, 0)))
  bias = jnp.zeros((1, 1, nq, nk), q.dtype) if bias is None else bias
  bias = bias.reshape((1,) * (4 - bias.ndim) + bias.shape)
  bias = jnp.broadcast_to(bias, (bias.shape[0], h, nq, nk))
  sink = jnp.broadcast_to(jnp.asarray(sinks, q.dtype).reshape(1, h, 1, 1),
                          (bias.shape[0], h, nq, 1))
  bias = jnp.concatenate([bias, sink], axis=-1)
  if dense_mask is not None:
    dense_mask = jnp.pad(dense_mask, ((0, 0), (0, 0), (0, 0), (0, 1)), constant_values=True)
  return q, k, v, bias, dense_mask


def _may_have_empty_rows(mask, q_len: int, kv_len: int) -> bool:
  """False when a static pattern provably gives every query at least one key."""
  if not mask.is_static():
    return True
  band = mask.band()
  if band is not None:   # row i sees keys max(0, i - left) .. min(kv_len - 1, i + right)
    left, right = band
    rows = np.arange(q_len)
    first = np.zeros_like(rows) if left is None else np.maximum(0, rows - left)
    last = np.full_like(rows, kv_len - 1) if right is None else np.minimum(kv_len - 1, rows + right)
    return bool(np.any(first > last))
  with jax.ensure_compile_time_eval():
    return not bool(jnp.all(jnp.any(mask.dense(q_len, kv_len), axis=-1)))


def _blockwise_fn(q, k, v, *, mask=None, score_mod=None, scale: float,
                  block_q: int | None = None, block_kv: int | None = None, sinks=None,
                  **unused):
  return blockwise_attention(q, k, v, mask=mask, score_mod=score_mod, scale=scale,
                             block_q=block_q, block_kv=block_kv, sinks=sinks)


# xla, reference and blockwise are plain jnp/lax programs that XLA compiles for every
# backend; this repository has run them on CPU only (the test suite and the benchmarks).
_CPU_ONLY = {"cpu": "compiled by XLA: the test suite and the benchmarks"}
IMPLS.register("reference")(Implementation(
    reference_attention, doc="materialises scores; the oracle every path is tested against",
    dense=True, auto_rank={"gpu": 5, "tpu": 4, "cpu": 2}, tested_on=_CPU_ONLY, sinks=True))
IMPLS.register("xla")(Implementation(
    xla_attention, _xla_unsupported, doc="jax.nn.dot_product_attention(implementation='xla')",
    dense=True, auto_rank={"gpu": 4, "tpu": 3, "cpu": 1}, tested_on=_CPU_ONLY, sinks=True))
IMPLS.register("blockwise")(Implementation(
    _blockwise_fn, doc="pure-JAX tiled online softmax; O(N) memory; skips empty tiles",
    # measured on 2 CPU cores (N = 16k, 4 heads, d = 64, fwd+bwd; docs/bench_tiles.md):
    # 256 is the fastest dense tile (512 and 128 are slower), 64 the fastest for BigBird
    # blocks of 64; a tile step costs about half a 256 x 256 tile of scores
    options=(BLOCK_Q, BLOCK_KV), tiles=(64, 256, 2**15),
    auto_rank={"gpu": 6, "tpu": 5, "cpu": 3}, tested_on=_CPU_ONLY, sinks=True))

# Above this many score-matrix bytes, ``auto`` avoids the dense paths.
AUTO_DENSE_LIMIT_BYTES = 64 * 2**20
BACKENDS = ("gpu", "tpu", "cpu")


def auto_order(backend: str) -> tuple[str, ...]:
  """The implementations ``auto`` considers on ``backend``, in order of preference (each
  entry's ``auto_rank``)."""
  ranked = [(spec.auto_rank[backend], name) for name, spec in IMPLS.items()
            if backend in spec.auto_rank]
  return tuple(name for _, name in sorted(ranked))


def tested(backend: str) -> tuple[str, ...]:
  """The implementations this repository has run on ``backend`` (each entry's ``tested_on``)."""
  return tuple(name for name, spec in IMPLS.items() if backend in spec.tested_on)


def choose_impl(q, k, v, mask, score_mod, sinks: bool = False) -> tuple[str, str]:
  """``impl='auto'``: (chosen name, reason).

  With the sequence sharded over a mesh, the impl that shards it. Otherwise the first
  implementation of ``auto_order(backend)`` that serves the request (the dense ones only
  while the score matrix is under ``AUTO_DENSE_LIMIT_BYTES``), passing over a kernel of this
  repository (``own_kernel``) that has not run on the backend (``tested_on``); such a kernel
  is taken only when nothing else serves, and the reason says so. The reason also says
  whether attnlab has run the chosen one on the backend, and why the preferred ones were
  passed over.
  """
  if _sequence_shards() > 1:
    reasons = []
    for name, spec in IMPLS.items():
      if spec.shards_sequence:
        why_not = _sinks_refusal(name, spec, sinks) or spec.unsupported(q, k, v, mask, score_mod)
        if why_not is None:
          return name, f"the mesh shards the sequence over {_sequence_shards()} devices"
        reasons.append(why_not)
    raise ConfigError(f"the mesh shards the sequence, but no sequence-sharded impl can serve "
                      f"this request: {'; '.join(reasons) or 'none is registered'}")
  backend = jax.default_backend()
  backend = backend if backend in BACKENDS else "cpu"
  score_bytes = 4 * q.shape[0] * q.shape[2] * q.shape[1] * k.shape[1]
  passed, untried = [], []
  for name in auto_order(backend):
    spec = IMPLS.get(name)
    if spec.dense and score_bytes > AUTO_DENSE_LIMIT_BYTES:
      passed.append(f"{name}: the score matrix would take {score_bytes / 2**20:.0f} MiB")
      continue
    why_not = _sinks_refusal(name, spec, sinks) or spec.unsupported(q, k, v, mask, score_mod)
    if why_not:
      passed.append(f"{name}: {why_not}")
    elif spec.own_kernel and backend not in spec.tested_on:
      untried.append(name)
    else:
      ran = "" if backend in spec.tested_on else f" (attnlab has not run it on {backend})"
      return name, _reason(f"{name}: first in auto's {backend} order that serves the "
                           f"request{ran}", passed, untried, backend)
  if untried:
    name = untried[0]
    return name, _reason(f"{name}: nothing else serves this request; {name} is attnlab's own "
                         f"kernel and has not run on {backend}", passed, [], backend)
  raise ConfigError("no attention implementation serves this request: " + "; ".join(passed))


def _sinks_refusal(name: str, spec: Implementation, sinks: bool) -> str | None:
  if sinks and not spec.sinks:
    served = ", ".join(n for n, s in IMPLS.items() if s.sinks)
    return (f"impl={name!r} does not serve learned sinks (model.attention.sinks); impls that "
            f"do: {served}")
  return None


def _check_sinks(sinks, heads: int):
  """``sinks`` as float32 [heads], or a clear error."""
  sinks = jnp.asarray(sinks)
  if sinks.shape != (heads,) or not jnp.issubdtype(sinks.dtype, jnp.floating):
    raise ValueError(f"sinks must be a float array of shape ({heads},) (one logit per query "
                     f"head); got {sinks.dtype} {sinks.shape}")
  return sinks.astype(_F32)


def _reason(choice: str, passed: list[str], untried: list[str], backend: str) -> str:
  parts = [choice]
  if untried:
    parts.append(f"not chosen, attnlab's own kernel not yet run on {backend}: "
                 f"{', '.join(untried)}")
  if passed:
    parts.append("passed over: " + "; ".join(passed))
  return ". ".join(parts)


def _sequence_shards() -> int:
  """Size of the ``sequence`` axis of the mesh set by ``jax.set_mesh`` (1 if none)."""
  mesh = jax.sharding.get_abstract_mesh()
  return dict(zip(mesh.axis_names, mesh.axis_sizes)).get("sequence", 1) if mesh.axis_names else 1


_CHOICES_LOGGED: set[str] = set()


def _log_choice(name: str, reason: str) -> None:
  """Say once per distinct reason what ``auto`` chose on an accelerator and why (on CPU the
  choice is the documented size rule and is not logged)."""
  if jax.default_backend() != "cpu" and reason not in _CHOICES_LOGGED:
    _CHOICES_LOGGED.add(reason)
    logging.getLogger("attnlab").warning("impl='auto' chose %r: %s", name, reason)


def _check_shapes(q, k, v):
  if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
    raise ValueError(f"q, k, v must be [batch, seq, heads, head_dim]; got shapes "
                     f"{q.shape}, {k.shape}, {v.shape}")
  if k.shape[:3] != v.shape[:3]:
    raise ValueError(f"k and v must agree in batch, seq and heads; got {k.shape} and {v.shape}")
  if q.shape[0] != k.shape[0] or q.shape[-1] != k.shape[-1]:
    raise ValueError(f"q and k must agree in batch and head_dim; got {q.shape} and {k.shape}")
  if q.shape[2] % k.shape[2]:
    raise ValueError(f"kv heads ({k.shape[2]}) must divide query heads ({q.shape[2]}) for GQA/MQA")


def dot_product_attention(q, k, v, *, mask=None, bias=None, scale: float | None = None,
                          impl: str = "auto", block_q: int | None = None,
                          block_kv: int | None = None, sinks=None, **options):
  """Scaled dot-product attention through the chosen implementation.

  Args:
    q: [batch, q_len, heads, head_dim].
    k, v: [batch, kv_len, kv_heads, head_dim]; ``kv_heads`` divides ``heads``.
    mask: a ``masks.Mask`` pattern, a boolean array broadcastable to
      ``[batch, heads, q_len, kv_len]``, or None (all visible).
    bias: a ``score_mods.ScoreMod`` (e.g. ``positional.alibi_bias(heads)``), a float
      array broadcastable to ``[batch, heads, q_len, kv_len]``, or None.
    scale: logit scale, default ``1/sqrt(head_dim)``.
    impl: a name in ``IMPLS`` or ``"auto"``.
    block_q, block_kv: tile sizes of the tiled paths (``blockwise``, ``pallas``); None or
      0: chosen from the pattern for the implementation that runs (``masks.choose_tile``
      within its declared ``tiles``).
    sinks: float [heads] learned sink logits (the module docstring), or None.
    **options: passed to the implementation (e.g. ``ring_layout`` for ``impl="ring"``).

  Returns:
    [batch, q_len, heads, head_dim] in q's dtype.
  """
  _check_shapes(q, k, v)
  mask = masks_lib.as_mask(mask)
  if mask is not None:
    mask.validate(q.shape[1], k.shape[1])
  score_mod = score_mods.as_score_mod(bias)
  scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
  if sinks is not None:
    sinks = _check_sinks(sinks, q.shape[2])
  if impl == "auto":
    impl, why = choose_impl(q, k, v, mask, score_mod, sinks=sinks is not None)
    _log_choice(impl, why)
  elif impl not in IMPLS:
    raise ConfigError(f"impl={impl!r} is not valid; valid names: {', '.join(impl_names())}")
  implementation = IMPLS.get(impl)
  reason = (_sinks_refusal(impl, implementation, sinks is not None)
            or implementation.unsupported(q, k, v, mask, score_mod))
  if reason:
    raise ConfigError(reason)
  block_q, block_kv = block_q or None, block_kv or None     # 0 (the config's default): unset
  if implementation.tiles and not (block_q and block_kv):
    tile = masks_lib.choose_tile(mask, q.shape[1], k.shape[1], *implementation.tiles)
    block_q, block_kv = block_q or tile, block_kv or tile
  if sinks is not None:
    options["sinks"] = sinks
  return implementation.fn(q, k, v, mask=mask, score_mod=score_mod, scale=scale,
                           block_q=block_q, block_kv=block_kv, **options)


def impl_names() -> list[str]:
  """Valid values of ``model.attention.impl``."""
  return ["auto"] + IMPLS.names()
