"""The *pattern* axis as seen from a config: ``model.attention.pattern`` -> a ``Mask``.

Each entry builds a mask from the ``model.attention`` config block and says
whether it is causal (a language model may only use causal patterns: any other
lets a token see the one it must predict).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from attnlab.attention import masks
from attnlab.registry import Registry


@dataclasses.dataclass(frozen=True)
class PatternSpec:
  build: Callable[..., masks.Mask]   # (attention_config) -> Mask
  causal: bool
  params: tuple[str, ...] = ()       # config fields of model.attention it reads


PATTERNS: Registry[PatternSpec] = Registry("model.attention.pattern")

PATTERNS.register("causal")(PatternSpec(lambda cfg: masks.causal(), causal=True))
PATTERNS.register("full")(PatternSpec(lambda cfg: masks.full(), causal=False))
PATTERNS.register("sliding_window")(PatternSpec(
    lambda cfg: masks.sliding_window(cfg.window, 0), causal=True, params=("window",)))
PATTERNS.register("prefix_lm")(PatternSpec(
    lambda cfg: masks.prefix_lm(cfg.prefix), causal=False, params=("prefix",)))
