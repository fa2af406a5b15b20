"""The *pattern* axis as seen from a config: ``model.attention.pattern`` -> a ``Mask``.

Each entry builds the mask of one layer from the ``model.attention`` config block
and says whether it is causal (a language model may only use causal patterns: any
other lets a token see the one it must predict) and which config fields it reads.
The sparse patterns are built in their causal (decoder) form; random ones are
fixed per layer (``seed`` and the layer index) and per head.

To add a pattern: write the ``Mask`` in ``masks.py`` and register
``PatternSpec(build=lambda cfg, layer: ..., causal=..., params=(...))`` here.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from attnlab.attention import masks
from attnlab.registry import Registry


@dataclasses.dataclass(frozen=True)
class PatternSpec:
  build: Callable[..., masks.Mask]   # (attention_config, layer_index) -> Mask
  causal: bool
  params: tuple[str, ...] = ()       # config fields of model.attention it reads
  doc: str = ""


PATTERNS: Registry[PatternSpec] = Registry("model.attention.pattern")


def layer_seed(cfg, layer: int) -> int:
  """The seed of a layer's random pattern or features: distinct per (seed, layer), < 2**31."""
  return (int(cfg.seed) * 1_000_003 + layer) % 2**31


def _register(name, build, causal, params=(), doc=""):
  PATTERNS.register(name)(PatternSpec(build, causal, tuple(params), doc))


_register("causal", lambda cfg, layer: masks.causal(), True, doc="j <= i")
_register("full", lambda cfg, layer: masks.full(), False, doc="every key (encoders)")
_register("sliding_window", lambda cfg, layer: masks.sliding_window(cfg.window, 0), True,
          ("window",), "i - window <= j <= i")
_register("prefix_lm", lambda cfg, layer: masks.prefix_lm(cfg.prefix), False, ("prefix",),
          "bidirectional prefix, causal after")
_register("dilated", lambda cfg, layer: masks.dilated(cfg.window, cfg.dilation) & masks.causal(),
          True, ("window", "dilation"), "j = i - m * dilation for m = 0..window")
_register("block_local", lambda cfg, layer: masks.block_local(cfg.block) & masks.causal(), True,
          ("block",), "same block of `block` tokens, causal")
_register("global",
          lambda cfg, layer: (masks.global_tokens(cfg.global_tokens)
                              | masks.sliding_window(0, 0)) & masks.causal(),
          True, ("global_tokens",), "global tokens see and are seen by all (causally); each "
          "token also sees itself")
_register("random",
          lambda cfg, layer: masks.random(cfg.random_per_row, layer_seed(cfg, layer),
                                          num_heads=cfg.num_heads) | masks.sliding_window(0, 0),
          True, ("random_per_row", "seed"), "random_per_row random earlier keys per query and "
          "head, plus itself")
_register("bigbird",
          lambda cfg, layer: masks.bigbird(cfg.block, cfg.window_blocks, cfg.global_blocks,
                                           cfg.random_blocks, layer_seed(cfg, layer),
                                           num_heads=cfg.num_heads, causal=True),
          True, ("block", "window_blocks", "global_blocks", "random_blocks", "seed"),
          "window + global + random blocks, causal")
_register("longformer",
          lambda cfg, layer: masks.longformer(cfg.window, cfg.global_tokens, causal=True), True,
          ("window", "global_tokens"), "sliding window + global tokens, causal")
_register("streaming", lambda cfg, layer: masks.streaming(cfg.sinks, cfg.window), True,
          ("sinks", "window"), "first `sinks` keys + the last `window` keys (StreamingLLM)")
