"""Fused Pallas attention kernels (GPU/TPU; interpret mode on CPU).

Depends on JAX alone. attnlab reaches these kernels only through its impl
registry (``attnlab.attention.IMPLS``). No kernel is registered yet: see the
project's issue on Pallas kernels.
"""
