"""Attention math, functional: patterns (masks), score modifiers, implementations, kinds."""

from attnlab.attention import masks, score_mods
from attnlab.attention.blockwise import blockwise_attention
from attnlab.attention.core import (IMPLS, Implementation, choose_impl, dot_product_attention,
                                    impl_names, reference_attention, reference_weights,
                                    xla_attention)
from attnlab.attention import pallas_impl, ring  # noqa: F401  (register 'pallas', 'ring')
from attnlab.attention.kinds import KINDS
from attnlab.attention.patterns import PATTERNS

__all__ = [
    "IMPLS", "Implementation", "KINDS", "PATTERNS", "blockwise_attention", "choose_impl",
    "dot_product_attention", "impl_names", "masks", "reference_attention", "reference_weights",
    "score_mods", "xla_attention",
]
