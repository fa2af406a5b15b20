"""T5 relative position bias (Raffel et al. 2020): a learned scalar per (bucket, head).

The modifier and its bucketing live in ``attnlab.attention.score_mods`` (implementations
use them without depending on the position axis); the scheme is ``positional.T5``.
"""

from attnlab.attention.score_mods import T5Bias, t5_buckets

__all__ = ["T5Bias", "t5_buckets"]
