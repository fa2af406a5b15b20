"""Fused Pallas attention kernels (GPU/TPU; interpret mode on CPU).

Depends on JAX alone. attnlab reaches these kernels only through its impl
registry (``attnlab.attention.IMPLS``, ``impl="pallas"``).

- ``flash``: block-sparse flash attention, forward and backward
  (``flash.flash_attention``; see ``docs/kernels.md``).
"""

from pallas_kernels import flash
from pallas_kernels.flash import BlockSparsity, flash_attention

__all__ = ["BlockSparsity", "flash", "flash_attention"]
