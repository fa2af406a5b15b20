"""Attention math, functional: patterns (masks), score modifiers, implementations, kinds."""

from attnlab.attention import masks, score_mods
from attnlab.attention.blockwise import blockwise_attention
from attnlab.attention.core import (IMPLS, Implementation, choose_impl, dot_product_attention,
                                    impl_names, impl_options, reference_attention,
                                    reference_weights, xla_attention)
from attnlab.attention.kinds import KINDS
from attnlab.attention.patterns import PATTERNS
from attnlab.attention.score_mods import SCORE_MODS

# Variants in modules of their own register themselves when imported:
from attnlab.attention import pallas_impl, ring  # noqa: F401,E402  impls 'pallas', 'ring'
from attnlab.attention import cudnn_impl  # noqa: F401,E402  impl 'cudnn'
from attnlab.attention import tokamax_impl  # noqa: F401,E402  impl 'tokamax'
from attnlab.attention import strided  # noqa: F401,E402  pattern 'strided'

__all__ = [
    "IMPLS", "Implementation", "KINDS", "PATTERNS", "SCORE_MODS", "blockwise_attention", "choose_impl",
    "dot_product_attention", "impl_names", "impl_options", "masks", "reference_attention", "reference_weights",
    "score_mods", "xla_attention",
]
