"""Inference: generation (``generation``: prefill, then a jit-compiled decode loop over the
model's KV cache, ``attnlab.models.kv_cache``), sampling (``sampling``) and the cache memory
report (``memory``). The command line is ``python -m attnlab.generate``."""
