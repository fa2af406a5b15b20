"""The *pattern* axis as seen from a config: ``model.attention.pattern`` -> a ``Mask``.

Each entry (``PatternSpec``) builds the mask of one layer from the ``model.attention``
config block and declares what the rest of attnlab needs to know about it:

- ``causal``: a language model may only use causal patterns (any other lets a token
  see the one it must predict);
- ``fields``: the config fields it reads, with defaults and valid ranges (config
  defaults, validation, flags and docs are built from them);
- ``lookback(cfg)``: what a KV cache must keep to decode it exactly: ``(pinned,
  lookback)`` when only the first ``pinned`` positions and keys at most ``lookback``
  behind the query are ever visible, or None (unbounded: keep every position).

The sparse patterns are built in their causal (decoder) form; random ones are fixed
per layer (``seed`` and the layer index) and per head.

To add a pattern: write its ``Mask`` (predicate and block map) and register a
``PatternSpec`` in a new module under ``attnlab/attention/`` imported by
``attnlab/attention/__init__.py`` (``strided.py`` is the worked example).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from attnlab.attention import masks
from attnlab.registry import Field, Registry


@dataclasses.dataclass(frozen=True)
class PatternSpec:
  build: Callable[..., masks.Mask]   # (attention_config, layer_index) -> Mask
  causal: bool
  fields: tuple[Field, ...] = ()     # config fields of model.attention it reads
  doc: str = ""
  lookback: Callable[..., tuple[int, int] | None] = lambda cfg: None

  @property
  def params(self) -> tuple[str, ...]:
    """Names of the fields it reads."""
    return tuple(f.name for f in self.fields)


PATTERNS: Registry[PatternSpec] = Registry("model.attention.pattern")


def layer_seed(cfg, layer: int) -> int:
  """The seed of a layer's random pattern or features: distinct per (seed, layer), < 2**31."""
  return (int(cfg.seed) * 1_000_003 + layer) % 2**31


def _global_tokens_problem(value, context) -> str | None:
  if not value or any(not isinstance(i, int) or isinstance(i, bool) for i in value):
    return "must be a non-empty tuple of integers, e.g. (0,)"
  seq_len = context.get("seq_len")
  bad = [i for i in value if seq_len is not None and not 0 <= i < seq_len]
  if bad:
    return f": {bad} out of range for data.seq_len={seq_len}; valid: 0..{seq_len - 1}"
  return None


def _odd(value, context) -> str | None:
  return None if value % 2 else ("must be odd (the block itself plus (window_blocks - 1) / 2 "
                                 "on each side)")


# Fields shared by several patterns (one name, one meaning, one default).
WINDOW = Field("window", 64, "sliding_window/longformer/streaming: keys i-window..i; dilated: "
               "window steps of `dilation` back", minimum=1)
PREFIX = Field("prefix", 0, "prefix_lm: bidirectional prefix length", minimum=0)
DILATION = Field("dilation", 2, "dilated: distance between visible keys", minimum=1)
BLOCK = Field("block", 64, "block_local, bigbird: tokens per block", minimum=1)
GLOBAL_TOKENS = Field("global_tokens", (0,), "global, longformer: positions of global tokens",
                      check=_global_tokens_problem)
RANDOM_PER_ROW = Field("random_per_row", 3, "random: random earlier keys per query and head",
                       minimum=1)
WINDOW_BLOCKS = Field("window_blocks", 3, "bigbird: blocks in the sliding window (odd)",
                      minimum=1, check=_odd)
GLOBAL_BLOCKS = Field("global_blocks", 1, "bigbird: leading global blocks", minimum=0)
RANDOM_BLOCKS = Field("random_blocks", 1, "bigbird: random blocks per query block", minimum=0)
SINKS = Field("sinks", 4, "streaming: attention-sink tokens kept", minimum=0)
SEED = Field("seed", 0, "random patterns, LSH rotations, Performer features", minimum=0)


def _register(name, build, causal, fields=(), doc="", lookback=None):
  spec = PatternSpec(build, causal, tuple(fields), doc)
  if lookback is not None:
    spec = dataclasses.replace(spec, lookback=lookback)
  PATTERNS.register(name)(spec)


_register("causal", lambda cfg, layer: masks.causal(), True, doc="j <= i")
_register("full", lambda cfg, layer: masks.full(), False, doc="every key (encoders)")
_register("sliding_window", lambda cfg, layer: masks.sliding_window(cfg.window, 0), True,
          (WINDOW,), "i - window <= j <= i", lookback=lambda cfg: (0, int(cfg.window)))
_register("prefix_lm", lambda cfg, layer: masks.prefix_lm(cfg.prefix), False, (PREFIX,),
          "bidirectional prefix, causal after")
_register("dilated", lambda cfg, layer: masks.dilated(cfg.window, cfg.dilation) & masks.causal(),
          True, (WINDOW, DILATION), "j = i - m * dilation for m = 0..window")
_register("block_local", lambda cfg, layer: masks.block_local(cfg.block) & masks.causal(), True,
          (BLOCK,), "same block of `block` tokens, causal")
_register("global",
          lambda cfg, layer: (masks.global_tokens(cfg.global_tokens)
                              | masks.sliding_window(0, 0)) & masks.causal(),
          True, (GLOBAL_TOKENS,), "global tokens see and are seen by all (causally); each "
          "token also sees itself")
_register("random",
          lambda cfg, layer: masks.random(cfg.random_per_row, layer_seed(cfg, layer),
                                          num_heads=cfg.num_heads) | masks.sliding_window(0, 0),
          True, (RANDOM_PER_ROW, SEED), "random_per_row random earlier keys per query and "
          "head, plus itself")
_register("bigbird",
          lambda cfg, layer: masks.bigbird(cfg.block, cfg.window_blocks, cfg.global_blocks,
                                           cfg.random_blocks, layer_seed(cfg, layer),
                                           num_heads=cfg.num_heads, causal=True),
          True, (BLOCK, WINDOW_BLOCKS, GLOBAL_BLOCKS, RANDOM_BLOCKS, SEED),
          "window + global + random blocks, causal")
_register("longformer",
          lambda cfg, layer: masks.longformer(cfg.window, cfg.global_tokens, causal=True), True,
          (WINDOW, GLOBAL_TOKENS), "sliding window + global tokens, causal")
_register("streaming", lambda cfg, layer: masks.streaming(cfg.sinks, cfg.window), True,
          (SINKS, WINDOW), "first `sinks` keys + the last `window` keys (StreamingLLM)",
          lookback=lambda cfg: (int(cfg.sinks), int(cfg.window)))
