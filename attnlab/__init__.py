"""attnlab: a JAX/Flax research framework for attention in transformers.

Four independent axes describe every attention layer (see README):
kind (what is computed), pattern (who sees whom), position (how order enters)
and impl (how it is computed).
"""

from attnlab.registry import ConfigError
from attnlab.runtime import clear_compiled_caches

__version__ = "0.1.0"

__all__ = ["ConfigError", "__version__", "clear_compiled_caches"]
