"""The *kind* axis: what function of q, k, v an attention layer computes.

A kind is ``fn(q, k, v, *, mask, bias, impl, block_q, block_kv) -> out`` with the
layout of ``dot_product_attention``. ``softmax`` is scaled dot-product attention;
register new kinds here (``@KINDS.register("name")``).
"""

from attnlab.attention.core import dot_product_attention
from attnlab.registry import Registry

KINDS = Registry("model.attention.kind")

KINDS.register("softmax")(dot_product_attention)
