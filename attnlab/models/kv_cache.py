"""A preallocated key/value cache for incremental decoding, as pure functions.

Layout (one per model, shared by its layers):

- ``layers[i] = (k, v, *state)``: ``[batch, capacity, kv_heads, head_dim]`` each, in the
  model's compute dtype (``common.cache_dims``: MLA stores one key head of latent + RoPE
  key and an empty value; differential attention stores its half-width keys as two heads
  each), then what the position scheme keeps per layer
  (``PositionScheme.cache_state``: FoX's cumulative forget gates of every slot). GQA/MQA store only ``kv_heads`` heads, so the cache
  shrinks by ``num_heads / num_kv_heads``.
- ``slot_pos``: int32 ``[capacity]``, the text position held by each slot (-1: empty).
- ``length``: int32 scalar, tokens consumed so far (every row of the batch
  advances in lockstep; ragged prompts are handled by the generator).

A token at text position ``p`` goes to slot ``p`` while it fits; a *rolling*
cache keeps the first ``pinned`` positions in slots ``0..pinned-1`` forever
(attention sinks) and cycles the later ones through the remaining
``capacity - pinned`` slots. Which layout a model needs follows from its
pattern (``layout_for``):

- ``causal`` and every pattern without a bounded look-back: one slot per position;
- ``sliding_window`` (window w): rolling, ``w + 1`` slots;
- ``streaming`` pattern (sinks s, window w): ``s`` pinned + ``w + 1`` rolling slots.

In all three the keys are stored after position encoding, at their text
positions, and attention applies the model's own mask predicate to
(query position, slot position), so cached decoding computes exactly what the
full forward pass computes.

*StreamingLLM mode* (Xiao et al. 2023; ``streaming_layout``) is different: the
cache keeps ``sinks`` first tokens plus the ``window`` most recent ones (the
current token included) and gives each cached token the position of its *place
in the cache* (0 .. sinks+window-1), not its place in the text. Keys are stored
before position encoding and re-encoded at their cache positions every step,
as in the paper.

A model step is ``plan_step`` (positions and slots, shared by the layers), then
``cached_attention`` in each layer, then ``finish_step``.

Everything the cache needs to know about the model's axes it asks their registry
entries: the pattern's ``lookback`` (which layout), the kind's and the position
scheme's ``cache_refusal`` and the scheme's ``streamable`` (whether it can decode at
all), and the impl's ``decode`` (a fast path for a decoding step on a full cache, e.g.
the Pallas split-K decode kernel), reached through ``attnlab.attention.IMPLS`` only.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from attnlab import positional
from attnlab.attention import (IMPLS, KINDS, PATTERNS, dot_product_attention, impl_options,
                               masks, score_mods)
from attnlab.attention.pytree import pytree_dataclass
from attnlab.models import schedule
from attnlab.models.common import DTYPES, attention_settings, cache_dims, head_dim
from attnlab.registry import ConfigError


@dataclasses.dataclass(frozen=True)
class CacheLayout:
  """Static description of a cache: slots, and how text positions map to them.

  ``capacity``: slots; ``pinned``: first positions that never leave (sinks);
  ``lookback``: the largest ``i - j`` a non-pinned key may be seen at (None: unbounded,
  so the cache must hold every position); ``streaming``: positions by place in the cache.
  """
  capacity: int
  pinned: int = 0
  lookback: int | None = None
  streaming: bool = False

  @property
  def rolling(self) -> int:
    """Slots that cycle (the others hold pinned positions)."""
    return self.capacity - self.pinned


def layouts_for(model_cfg, total_length: int) -> tuple[CacheLayout, ...]:
  """The cache of every layer (``layout_for`` of each): a model whose schedule
  (``model.layer_types``) has local layers caches a window in those layers only."""
  return tuple(layout_for(model_cfg, total_length, i) for i in range(int(model_cfg.num_layers)))


def layout_for(model_cfg, total_length: int, layer: int | None = None) -> CacheLayout:
  """The cache layer ``layer``'s own pattern needs to decode up to ``total_length``
  positions exactly (the pattern's declared ``lookback``: a rolling cache when the
  look-back is bounded). ``layer=None``: the layout every layer shares (``ValueError``
  when the schedule gives layers different ones; use ``layouts_for``)."""
  if layer is None:
    layouts = set(layouts_for(model_cfg, total_length))
    if len(layouts) > 1:
      raise ValueError("the layers of this model need different caches (model.layer_types "
                       "has local layers); use layouts_for")
    return layouts.pop()
  att = schedule.layer_attention(model_cfg, layer)
  bounded = PATTERNS.get(att.pattern).lookback(att)
  if bounded is None:
    return CacheLayout(capacity=total_length)
  pinned, lookback = bounded
  if pinned + lookback + 1 >= total_length:   # never wraps: a plain cache is the same
    return CacheLayout(capacity=total_length)
  # decoding one token at a time: the window before it, itself, and the pinned sinks
  return CacheLayout(capacity=min(total_length, pinned + lookback + 1), pinned=pinned,
                     lookback=lookback)


def streaming_layout(sinks: int, window: int) -> CacheLayout:
  """StreamingLLM: ``sinks`` first tokens + the ``window`` latest (the current one included)."""
  if isinstance(sinks, bool) or not isinstance(sinks, (int, np.integer)) or sinks < 0:
    raise ConfigError(f"streaming.sinks={sinks!r} must be an integer >= 0")
  if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
    raise ConfigError(f"streaming.window={window!r} must be an integer >= 1 (the most recent "
                      f"tokens kept, the current one included)")
  return CacheLayout(capacity=int(sinks) + int(window), pinned=int(sinks),
                     lookback=int(window) - 1, streaming=True)


def check_supported(model_cfg, layout: CacheLayout | None = None) -> None:
  """Raise ``ConfigError`` (naming the field) for a model the KV cache cannot decode exactly."""
  att, pos = model_cfg.attention, model_cfg.position
  refusal = KINDS.get(att.kind).cache_refusal
  if refusal:
    raise ConfigError(f"model.attention.kind={att.kind!r} {refusal}")
  scheme = positional.get_scheme(pos)
  refusal = scheme.cache_refusal()
  if refusal:
    raise ConfigError(refusal)
  if layout is not None and layout.streaming:
    if attention_settings(att).latent_rank:
      raise ConfigError(f"model.attention.latent_rank={att.latent_rank!r}: MLA caches its RoPE "
                        f"keys encoded at their text positions, so a StreamingLLM cache cannot "
                        f"re-position them; decode it with its own cache (leave "
                        f"streaming.sinks/window at 0)")
    if schedule.has_local(model_cfg):
      raise ConfigError(f"model.layer_types={model_cfg.layer_types!r} has local layers; a "
                        f"StreamingLLM cache replaces every layer's pattern by sinks + window, "
                        f"so this model decodes exactly only with its own cache (leave "
                        f"streaming.sinks/window at 0)")
    if not scheme.streamable():
      streamable = [n for n, cls in positional.POSITIONS.items() if cls.streamable()]
      raise ConfigError(
          f"model.position.kind={pos.kind!r} adds positions to the input embeddings, so a "
          f"StreamingLLM cache cannot re-position its keys by place in the cache; streaming "
          f"mode supports model.position.kind in {', '.join(streamable)}")
    if PATTERNS.get(att.pattern).build(att, 0) != masks.causal():
      raise ConfigError(
          f"model.attention.pattern={att.pattern!r}: StreamingLLM mode replaces the pattern by "
          f"sinks + window and needs a model trained with the plain causal pattern; this model "
          f"decodes exactly with its own cache (leave streaming.sinks/window at 0)")


# ----------------------------------------------------------------------------- the cache


@pytree_dataclass(data=("layers", "slot_pos", "length"))
class KVCache:
  """Keys and values of every layer plus slot bookkeeping (see the module docstring).

  Layers with the same layout form a group that shares its slot bookkeeping: a model with
  local layers (``model.layer_types``) has a full-cache group and a rolling-window group.
  """
  layers: tuple                 # ((k, v), ...) per layer, each [batch, capacity, kv_heads, head_dim]
  slot_pos: tuple               # per group: int32 [capacity], text position per slot, -1 = empty
  length: jax.Array             # int32 []: tokens consumed so far
  layouts: tuple                # per layer: its CacheLayout (static)

  @property
  def groups(self) -> tuple:
    """The distinct layouts, in order of first use."""
    return tuple(dict.fromkeys(self.layouts))

  @property
  def group_of(self) -> tuple:
    """Index into ``groups`` of each layer's layout."""
    return tuple(self.groups.index(layout) for layout in self.layouts)

  @property
  def layout(self) -> CacheLayout:
    """The layout every layer shares (``ValueError`` when the layers differ)."""
    if len(self.groups) != 1:
      raise ValueError(f"the layers of this cache have {len(self.groups)} layouts; read "
                       f"cache.layouts")
    return self.groups[0]

  def kv_bytes(self) -> int:
    """Bytes of the key and value arrays (the part that scales with layers and heads)."""
    return sum(int(x.size) * x.dtype.itemsize for kv in self.layers for x in kv)


def head_dims(model_cfg) -> tuple[int, int]:
  """(kv_heads, head_dim) of a model config."""
  return int(model_cfg.attention.num_kv_heads), head_dim(model_cfg)


def init_cache(model_cfg, batch: int, layout, dtype=None) -> KVCache:
  """An empty cache for ``batch`` rows (zeros; every slot marked empty). ``layout``: one
  ``CacheLayout`` for every layer, or one per layer (``layouts_for``)."""
  layers_n = int(model_cfg.num_layers)
  layouts = tuple(layout) if isinstance(layout, (tuple, list)) else (layout,) * layers_n
  if len(layouts) != layers_n:
    raise ValueError(f"{len(layouts)} layouts for {layers_n} layers")
  (k_heads, k_dim), (v_heads, v_dim) = cache_dims(model_cfg)
  dtype = dtype or DTYPES[model_cfg.dtype]
  layers = []
  for i, lay in enumerate(layouts):
    state = positional.get_scheme(schedule.layer_position(model_cfg, i)).cache_state(
        batch, lay.capacity, int(model_cfg.attention.num_heads))
    layers.append((jnp.zeros((batch, lay.capacity, k_heads, k_dim), dtype),
                   jnp.zeros((batch, lay.capacity, v_heads, v_dim), dtype), *state))
  groups = tuple(dict.fromkeys(layouts))
  return KVCache(tuple(layers), tuple(jnp.full((g.capacity,), -1, jnp.int32) for g in groups),
                 jnp.zeros((), jnp.int32), layouts)


def bytes_per_token(model_cfg, bytes_per_element: int | None = None) -> int:
  """KV-cache bytes per cached token when every layer caches every position: 2 (K and V) x
  layers x kv_heads x head_dim x element bytes; MLA: layers x (latent_rank +
  latent_rope_dim) x element bytes (``common.cache_dims``; ``cache_bytes``: a schedule's
  local layers cache only their window)."""
  (k_heads, k_dim), (v_heads, v_dim) = cache_dims(model_cfg)
  if bytes_per_element is None:
    bytes_per_element = jnp.dtype(DTYPES[model_cfg.dtype]).itemsize
  return int(model_cfg.num_layers) * (k_heads * k_dim + v_heads * v_dim) * bytes_per_element


def cache_bytes(model_cfg, batch: int, context: int, bytes_per_element: int | None = None) -> int:
  """K/V bytes of the cache that decodes ``context`` positions exactly: each layer holds
  ``layout_for(model_cfg, context, layer).capacity`` slots of 2 x kv_heads x head_dim."""
  per_layer_token = bytes_per_token(model_cfg, bytes_per_element) // int(model_cfg.num_layers)
  return batch * per_layer_token * sum(lay.capacity for lay in layouts_for(model_cfg, context))


def slot_of(pos, layout: CacheLayout):
  """Slot of text position ``pos`` (int array): pinned positions keep their index; the
  others cycle through the rolling slots."""
  rolled = layout.pinned + (pos - layout.pinned) % max(layout.rolling, 1)
  return jnp.where(pos < layout.pinned, pos, rolled)


# ----------------------------------------------------------------------------- one step


@pytree_dataclass(data=("text_pos", "q_pos", "key_text", "key_pos", "key_valid", "write_slots",
                        "slot_pos"))
class StepPlan:
  """Positions and slots of one model step over ``T`` new tokens (shared by every layer).

  text_pos, q_pos: int32 [T]: text positions of the new tokens, and the positions the
    queries are encoded at (equal, except in StreamingLLM mode: place in the cache).
  key_text, key_pos, key_valid: [K]: the keys attended to (the new tokens themselves at
    prefill, K = T; the cache slots after writing at decode, K = capacity), their text
    positions (for the pattern), encoding positions and whether they hold a token.
  write_slots: int32 [T]: slot of each new token, ``capacity`` for one that would be
    overwritten within this step (not written).
  slot_pos: int32 [capacity]: the cache's slot positions after the step.
  prefill, streaming: static flags of the step and the cache.
  slots_are_positions: static; slot j holds text position j (a full cache: no rolling
    slots, no pinned sinks, not StreamingLLM).
  """
  text_pos: jax.Array
  q_pos: jax.Array
  key_text: jax.Array
  key_pos: jax.Array
  key_valid: jax.Array
  write_slots: jax.Array
  slot_pos: jax.Array
  prefill: bool
  streaming: bool
  slots_are_positions: bool


def plan_step(cache: KVCache, num_new: int, prefill: bool) -> tuple[StepPlan, ...]:
  """Where ``num_new`` tokens go and which keys they see: one ``StepPlan`` per group of
  layers sharing a layout (``cache.groups``; layer i uses ``plans[cache.group_of[i]]``).

  ``prefill=True`` requires an empty cache: the new tokens attend among themselves (any
  number of them), then the ones that survive are written. ``prefill=False`` writes first
  and attends over the cache, which is exact when no new token evicts a key an earlier one
  of the same step still needs; that holds for one token at a time (checked here).
  """
  return tuple(_plan(layout, slot_pos, cache.length, num_new, prefill)
               for layout, slot_pos in zip(cache.groups, cache.slot_pos))


def _plan(layout: CacheLayout, slot_pos, length, num_new: int, prefill: bool) -> StepPlan:
  """``plan_step`` for one group: its layout and slot positions, the cache's length."""
  if not prefill and layout.lookback is not None:
    most = 1 if layout.streaming else layout.rolling - layout.lookback
    if num_new > most:
      raise ValueError(f"this rolling cache decodes at most {most} token(s) per step; "
                       f"got {num_new}")
  if prefill and layout.streaming and num_new > layout.capacity:
    raise ValueError(f"StreamingLLM prefill of {num_new} tokens exceeds the cache "
                     f"({layout.capacity}); feed the rest one token at a time")
  text_pos = length + jnp.arange(num_new, dtype=jnp.int32)
  end = length + num_new
  # a new token survives the step unless a later one of the same step takes its slot
  survives = (text_pos < layout.pinned) | (text_pos >= end - layout.rolling)
  write_slots = jnp.where(survives, slot_of(text_pos, layout), layout.capacity).astype(jnp.int32)
  slot_pos = slot_pos.at[write_slots].set(text_pos, mode="drop")
  if layout.streaming:
    evicted = jnp.maximum(0, end - layout.capacity)           # tokens dropped from the window
    place = lambda p: jnp.where(p < layout.pinned, p, p - evicted)   # noqa: E731
    q_pos = place(text_pos)
  else:
    place, q_pos = (lambda p: p), text_pos                     # noqa: E731
  if prefill:
    key_text, key_pos, key_valid = text_pos, q_pos, jnp.ones((num_new,), bool)
  else:
    key_text, key_pos, key_valid = slot_pos, place(slot_pos), slot_pos >= 0
  slots_are_positions = (layout.lookback is None and layout.pinned == 0
                         and not layout.streaming)
  return StepPlan(text_pos, q_pos, key_text, key_pos, key_valid, write_slots, slot_pos,
                  prefill, layout.streaming, slots_are_positions)


def finish_step(cache: KVCache, plans, layers) -> KVCache:
  """The cache after a step: new layers, slot positions (``plans``: ``plan_step``'s) and
  length."""
  return KVCache(tuple(layers), tuple(p.slot_pos for p in plans),
                 cache.length + plans[0].text_pos.shape[0], cache.layouts)


def _write(buffer, new, slots):
  """buffer [B, C, H, D] with new [B, T, H, D] at ``slots`` [T] (``C`` = drop)."""
  if new.shape[1] == 1:   # decode: one in-place slice update
    return jax.lax.dynamic_update_slice_in_dim(buffer, new.astype(buffer.dtype), slots[0], axis=1)
  return buffer.at[:, slots].set(new.astype(buffer.dtype), mode="drop")


@pytree_dataclass(data=("inner", "q_pos", "k_pos"))
class AtPositions(score_mods.AdditiveBias):
  """An additive position bias evaluated at explicit positions: query row ``i`` is at
  ``q_pos[i]`` and key column ``j`` at ``k_pos[j]`` (cache slots are not in text order)."""
  inner: Any
  q_pos: Any
  k_pos: Any

  explicit_positions = True

  def bias(self, q_idx, kv_idx):
    return self.inner.bias(jnp.take(self.q_pos, q_idx, mode="clip"),
                           jnp.take(self.k_pos, kv_idx, mode="clip"))


@pytree_dataclass(data=("inner", "q_pos", "k_pos"))
class ScoreModAtPositions(score_mods.ScoreMod):
  """A general (non-additive) score modifier at explicit positions."""
  inner: Any
  q_pos: Any
  k_pos: Any

  explicit_positions = True

  def __call__(self, scores, q_idx, kv_idx):
    return self.inner(scores, jnp.take(self.q_pos, q_idx, mode="clip"),
                      jnp.take(self.k_pos, kv_idx, mode="clip"))


def capped(att, score_mod):
  """``score_mod`` after the attention soft-cap ``model.attention.softcap`` (when set):
  scores are capped first, then the position modifier applies (an ALiBi bias stays
  unbounded). ``score_mod``: a ScoreMod or None."""
  cap = float(attention_settings(att).softcap)
  if not cap:
    return score_mod
  first = score_mods.SoftCap(cap)
  return first if score_mod is None else score_mods.Compose(first, score_mod)


def position_bias(scheme, num_heads: int, params, q_pos, k_pos):
  """The scheme's score modifier at explicit query / key positions, or None.

  Relies on the score-modifier contract: ``score_mod(s, q_idx, kv_idx)`` reads its index
  arguments as absolute positions (they are 0..n-1 in a full forward pass).
  """
  inner = scheme.score_mod(num_heads, params, None)
  if inner is None:
    return None
  if isinstance(inner, score_mods.AdditiveBias):
    return AtPositions(inner, q_pos, k_pos)
  return ScoreModAtPositions(inner, q_pos, k_pos)


def decode_mask(plan: StepPlan, att, layer: int):
  """Boolean ``[T, K]`` or ``[heads, T, K]``: may new token i see key j?

  The model's own pattern at (query text position, key text position), restricted to
  filled slots and to keys not after the query. StreamingLLM mode sees every cached key.
  """
  q, k = plan.text_pos[:, None], plan.key_text[None, :]
  visible = plan.key_valid[None, :] & (k <= q)
  if plan.streaming:
    return visible
  return PATTERNS.get(att.pattern).build(att, layer)(q, k) & visible


def decode_attention(q, k, v, *, mask, bias, att, sinks=None):
  """Attention of the new queries over the keys through ``dot_product_attention``.

  The configured impl serves the step unless it refuses it (e.g. the fused kernel plans
  its tiles statically and a decode mask is traced); then ``auto`` chooses.

  q: [B, T, heads, D]; k, v: [B, K, kv_heads, D]; mask: a Mask, or bool [T, K] or
  [heads, T, K]; bias: a ScoreMod or None; sinks: float [heads] or None.
  Returns [B, T, heads, D].
  """
  impl = att.impl
  if impl != "auto" and IMPLS.get(impl).unsupported(
      q, k, v, masks.as_mask(mask), score_mods.as_score_mod(bias)):
    impl = "auto"
  if impl != "auto" and sinks is not None and not IMPLS.get(impl).sinks:
    impl = "auto"
  return dot_product_attention(q, k, v, mask=mask, bias=bias, impl=impl, sinks=sinks,
                               **impl_options(att))


def cached_attention(q, k, v, layer_kv, plan: StepPlan, *, scheme, params, att, layer: int,
                     inputs=None, sinks=None, rotated: bool = False, values=None):
  """One attention layer of a cached step.

  q: [B, T, heads, D]; k, v: [B, T, kv_heads, D], projections of the new tokens before
  position encoding; layer_kv: this layer's cached (k, v, *state); params: the layer's
  position parameters (``scheme.attention_params``) by name; inputs: the layer's input
  [B, T, d_model] (read by ``reads_input`` schemes); sinks: the layer's sink logits
  float [heads] or None. ``rotated``: q and k are already encoded at their text positions
  (MLA encodes only its RoPE dims; not with StreamingLLM, which re-encodes keys).
  ``values(keys, stored_values) -> values``: the values attended over, from what the
  cache holds (None: the stored values; MLA's are the latent part of its keys,
  differential attention's are shared by each head's two halves). Returns the attention
  output [B, T, heads, Dv] and the layer's updated (k, v, *state).
  """
  k_cache, v_cache, *state = layer_kv
  if rotated and plan.streaming:
    raise ValueError("cached_attention: keys encoded before the cache cannot be re-encoded "
                     "at their place in a StreamingLLM cache")
  if rotated:
    scheme = _Encoded(scheme)
  if scheme.reads_input:
    return _cached_with_state(q, k, v, k_cache, v_cache, state, plan, scheme=scheme,
                              params=params, att=att, layer=layer, inputs=inputs, sinks=sinks,
                              values=values)
  if plan.streaming:      # store keys as projected; encode them at their place each step
    q = scheme.rotate_qk(q, q, _rows(plan.q_pos, q))[0]
    k_cache, v_cache = _write(k_cache, k, plan.write_slots), _write(v_cache, v, plan.write_slots)
    if plan.prefill:
      keys, stored = k, v
    else:
      keys, stored = k_cache, v_cache
    keys = scheme.rotate_qk(keys, keys, _rows(plan.key_pos, keys))[1]
  else:                   # store keys encoded at their (fixed) text positions
    q, k = scheme.rotate_qk(q, k, _rows(plan.q_pos, q))
    k_cache, v_cache = _write(k_cache, k, plan.write_slots), _write(v_cache, v, plan.write_slots)
    keys, stored = (k, v) if plan.prefill else (k_cache, v_cache)
  values = stored if values is None else values(keys, stored)
  heads = q.shape[2]
  if plan.prefill:
    # the cache was empty: positions are 0..T-1, so the pattern and modifier apply as in a
    # full forward pass (static objects, which every impl, the fused kernel too, can plan)
    mask = masks.causal()
    if not plan.streaming:
      mask = PATTERNS.get(att.pattern).build(att, layer) & mask
    out = decode_attention(q, keys, values, mask=mask,
                           bias=capped(att, scheme.score_mod(heads, params, None)), att=att,
                           sinks=sinks)
    return out, (k_cache, v_cache)
  out = None
  decode = IMPLS.get(att.impl).decode if att.impl in IMPLS else None
  if sinks is not None and att.impl in IMPLS and not IMPLS.get(att.impl).sinks:
    decode = None
  if keys.shape != values.shape:
    decode = None          # the decode kernels take keys and values of one shape
  if decode is not None and plan.slots_are_positions:
    # slot j holds text position j and the new queries are the last T filled slots
    lengths = jnp.broadcast_to(plan.text_pos[-1] + 1, (q.shape[0],)).astype(jnp.int32)
    out = decode(q, keys, values, lengths=lengths,
                 mask=PATTERNS.get(att.pattern).build(att, layer),
                 score_mod=capped(att, scheme.score_mod(heads, params, None)),
                 scale=1.0 / float(np.sqrt(q.shape[-1])),
                 **impl_options(att), **({} if sinks is None else {"sinks": sinks}))
  if out is None:
    out = decode_attention(q, keys, values, mask=decode_mask(plan, att, layer),
                           bias=capped(att, position_bias(scheme, heads, params, plan.q_pos,
                                                          plan.key_pos)),
                           att=att, sinks=sinks)
  return out, (k_cache, v_cache)


def _cached_with_state(q, k, v, k_cache, v_cache, state, plan, *, scheme, params, att, layer,
                       inputs, sinks=None, values=None):
  """A cached step of a scheme whose modifier reads the layer input and keeps state per slot
  (FoX): its modifier's operands are aligned with the keys attended to (the new tokens at
  prefill, the cache slots at decode), so no position lookup is involved."""
  k_cache, v_cache = _write(k_cache, k, plan.write_slots), _write(v_cache, v, plan.write_slots)
  bias, state = scheme.cached_score_mod(q.shape[2], params, inputs, tuple(state), plan, _write)
  bias = capped(att, bias)
  if plan.prefill:
    keys, stored = k, v
    mask = PATTERNS.get(att.pattern).build(att, layer) & masks.causal()
  else:
    keys, stored, mask = k_cache, v_cache, decode_mask(plan, att, layer)
  out = decode_attention(q, keys, stored if values is None else values(keys, stored), mask=mask,
                         bias=bias, att=att, sinks=sinks)
  return out, (k_cache, v_cache, *state)


class _Encoded:
  """A position scheme whose rotation the layer has already applied (``rotated=True``): its
  score modifier and flags, rotation the identity."""

  def __init__(self, scheme):
    self._scheme = scheme

  def __getattr__(self, name):
    return getattr(self._scheme, name)

  def rotate_qk(self, q, k, positions):
    return q, k


def _rows(pos, x):
  """Positions [N] broadcast to x's [batch, N]."""
  return jnp.broadcast_to(pos, x.shape[:2])
