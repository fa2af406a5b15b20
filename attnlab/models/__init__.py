"""Flax modules composed from the functional attention and position code."""

from attnlab.models.transformer import (DTYPES, MLP, NORMS, Block, SelfAttention, TransformerLM,
                                        num_params)

__all__ = ["DTYPES", "MLP", "NORMS", "Block", "SelfAttention", "TransformerLM", "num_params"]
