"""Fused Pallas attention kernels (GPU/TPU; interpret mode on CPU).

Depends on JAX alone. attnlab reaches these kernels only through its impl
registry (``attnlab.attention.IMPLS``, ``impl="pallas"``).

- ``flash``: block-sparse flash attention, forward and backward
  (``flash.flash_attention``; see ``docs/kernels.md``).
- ``decode``: split-K flash-decoding of a few query tokens against a long KV cache
  (``decode.flash_decode``).
"""

from pallas_kernels import flash
from pallas_kernels.flash import BlockSparsity, flash_attention
from pallas_kernels.decode import flash_decode

__all__ = ["BlockSparsity", "flash", "flash_attention", "flash_decode"]
