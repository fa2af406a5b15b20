"""Inference: a preallocated KV cache (``kv_cache``), sampling (``sampling``) and the
cache memory report (``memory``). The generation loop and CLI are ``attnlab.generate``."""
