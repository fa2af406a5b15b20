"""Per-layer schedules: which layers attend locally and which layers encode positions.

``model.layer_types`` names a repeating unit of layer types, e.g. ``"local*5,global"``
(Gemma-3: five sliding-window layers, then one global), ``"local,global"`` (Gemma-2) or
``"global*3,nope"`` (SmolLM3: RoPE off on every fourth layer). Layer ``i`` has type
``unit[i % len(unit)]``; a unit as long as the model lists every layer (an imported
checkpoint's ``layer_types``).

Everything per layer is read from here, once: the layer's attention block
(``layer_attention``: its pattern), its position block (``layer_position``: its scheme and
RoPE base) and, through them, the KV cache each layer keeps (a local layer caches its
window; ``kv_cache.layouts_for``) and the bytes ``attnlab.inference.memory`` reports.

A new layer type is one ``LAYER_TYPES`` entry: whether it replaces the model's pattern by a
sliding window of ``model.local_window`` keys, and whether it encodes positions.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import re

import ml_collections

from attnlab.registry import ConfigError, Declared, Field, Registry


@dataclasses.dataclass(frozen=True)
class LayerType:
  """An entry of ``LAYER_TYPES``.

  ``local``: the layer sees the ``model.local_window`` keys before each query and itself
  (pattern ``sliding_window``) instead of ``model.attention.pattern``; it uses
  ``model.local_rope_theta`` as its RoPE base when that is set. ``positions``: the layer
  applies ``model.position`` (False: NoPE, no position encoding in this layer).
  """
  local: bool
  positions: bool
  doc: str = ""


LAYER_TYPES: Registry[LayerType] = Registry("model.layer_types")
LAYER_TYPES.register("global")(LayerType(False, True, "model.attention.pattern, model.position"))
LAYER_TYPES.register("local")(LayerType(True, True, "sliding window of model.local_window keys"))
LAYER_TYPES.register("nope")(LayerType(False, False, "model.attention.pattern, no positions"))
LAYER_TYPES.register("local_nope")(LayerType(True, False, "sliding window, no positions"))

_ENTRY = re.compile(r"([a-z_]+)(?:\*([0-9]+))?")


VALID = ("comma-separated entries of {names}, each optionally '*count' (e.g. "
         "'local*5,global')")


def problem(text) -> str | None:
  """What is wrong with a ``model.layer_types`` value (None: nothing)."""
  valid = VALID.format(names=", ".join(LAYER_TYPES.names()))
  if not isinstance(text, str) or not text.strip():
    return f"is not valid; valid: {valid}"
  for entry in text.split(","):
    match = _ENTRY.fullmatch(entry.strip())
    if not match or match.group(1) not in LAYER_TYPES or match.group(2) == "0":
      return f"entry {entry.strip()!r} is not valid; valid: {valid}"
  return None


@functools.lru_cache(maxsize=256)
def parse(text) -> tuple[str, ...]:
  """``"local*5,global"`` -> ``("local",) * 5 + ("global",)``; ``ConfigError`` naming the
  field, the value and what is valid."""
  reason = problem(text)
  if reason:
    raise ConfigError(f"model.layer_types={text!r} {reason}")
  out = []
  for entry in text.split(","):
    match = _ENTRY.fullmatch(entry.strip())
    out += [match.group(1)] * int(match.group(2) or 1)
  return tuple(out)


def _layer_types_problem(value, context):
  return problem(value)


def _finite_nonnegative(value, context):
  ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < float("inf")
  return None if ok else "must be a finite number >= 0"


def _transformer(block) -> bool:
  return block["arch"] == "transformer"


def _has_local(block) -> bool:
  return _transformer(block) and problem(block["layer_types"]) is None and any(
      LAYER_TYPES.get(t).local for t in parse(block["layer_types"]))


# The schedule's ``model.*`` fields (part of ``common.MODEL_FIELDS``).
SCHEDULE_FIELDS = (
    Field("layer_types", "global", "per-layer schedule: a repeating unit of layer types "
          "(attnlab.models.schedule.LAYER_TYPES), e.g. 'local*5,global' (Gemma-3), "
          "'global*3,nope' (SmolLM3)", check=_layer_types_problem, applies=_transformer),
    Field("local_window", 64, "local layers: keys i-local_window..i (Hugging Face's "
          "sliding_window - 1)", minimum=1, applies=_has_local),
    Field("local_rope_theta", 0.0, "local layers' RoPE base, with no scaling; 0: "
          "model.position's (Gemma-3: 1e4 local, 1e6 global)", check=_finite_nonnegative,
          applies=_has_local),
)


def types_of(model_cfg) -> tuple[str, ...]:
  """The type of every layer: ``model.layer_types`` repeated over ``model.num_layers``."""
  unit = parse(_settings(model_cfg).layer_types)
  return tuple(unit[i % len(unit)] for i in range(int(model_cfg.num_layers)))


def has_local(model_cfg) -> bool:
  return any(LAYER_TYPES.get(t).local for t in parse(_settings(model_cfg).layer_types))


def layer_type(model_cfg, layer: int) -> LayerType:
  unit = parse(_settings(model_cfg).layer_types)
  return LAYER_TYPES.get(unit[layer % len(unit)])


def layer_attention(model_cfg, layer: int):
  """Layer ``layer``'s ``model.attention`` block: the model's, with pattern
  ``sliding_window`` and ``window = model.local_window`` for a local layer."""
  att = model_cfg.attention
  if not layer_type(model_cfg, layer).local:
    return att
  window = int(_settings(model_cfg).local_window)
  return Declared(collections.ChainMap({"pattern": "sliding_window", "window": window}, att), ())


def layer_position(model_cfg, layer: int):
  """Layer ``layer``'s ``model.position`` block: the model's; kind ``none`` for a NoPE
  layer; for a local layer with ``model.local_rope_theta`` set, RoPE at that base with no
  scaling (Gemma-3's local layers)."""
  kind = layer_type(model_cfg, layer)
  pos = model_cfg.position
  if not kind.positions:
    return _frozen({"kind": "none"})
  theta = float(_settings(model_cfg).local_rope_theta)
  if kind.local and theta > 0:
    return _frozen({**_plain(pos), "theta": theta, "scaling": "none"})
  return pos


def _plain(block) -> dict:
  return block.to_dict() if hasattr(block, "to_dict") else dict(block)


def _frozen(d: dict):
  return ml_collections.FrozenConfigDict(d)


def _settings(model_cfg):
  return model_cfg if isinstance(model_cfg, Declared) else Declared(model_cfg, SCHEDULE_FIELDS)


def distinct_positions(model_cfg) -> list:
  """Each distinct position block the layers use (for declared parameters' decay)."""
  out = []
  for i in range(int(model_cfg.num_layers)):
    block = layer_position(model_cfg, i)
    if all(_plain(block) != _plain(b) for b in out):
      out.append(block)
  return out
