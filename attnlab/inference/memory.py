"""KV-cache memory report: bytes per token and per context for MHA, GQA and MQA variants.

  python -m attnlab.memory --config=configs/lm.py:rope [--contexts=1024,4096 --batch=1]
  python -m attnlab.memory --workdir=runs/rope

Bytes per cached token = 2 (K and V) x layers x kv_heads x head_dim x bytes per element
when every layer caches every position; a model with multi-head latent attention
(``attention.latent_rank``) also gets its own row, MLA: layers x (latent_rank +
latent_rope_dim) x bytes per element. A schedule with local layers (``model.layer_types``,
e.g. Gemma-3's 'local*5,global') caches only a window in those: the bytes for a context
are then the sum over layers of each layer's slots (``kv_cache.cache_bytes``). Every divisor of ``num_heads`` is a valid ``num_kv_heads``: the report lists each, MHA
(= num_heads) first and MQA (1) last, beside the bytes a cache of that model actually
allocates (``init_cache``), which must agree with the formula.
"""

from __future__ import annotations

import jax
import ml_collections

from attnlab.models import kv_cache, schedule
from attnlab.models.common import attention_settings


def head_variants(model_cfg) -> list[tuple[str, int]]:
  """(label, num_kv_heads) for every divisor of num_heads, largest first."""
  heads = int(model_cfg.attention.num_heads)
  out = []
  for kv in sorted((n for n in range(1, heads + 1) if heads % n == 0), reverse=True):
    label = "MHA" if kv == heads else ("MQA" if kv == 1 else f"GQA (heads/{heads // kv})")
    out.append((label, kv))
  return out


def _with_kv_heads(model_cfg, kv_heads: int, latent: bool = False):
  """The model with ``kv_heads`` key/value heads, with its multi-head latent attention
  (``latent``) or with plain projections of the same heads and head_dim."""
  cfg = ml_collections.ConfigDict(model_cfg.to_dict() if hasattr(model_cfg, "to_dict")
                                  else model_cfg)
  cfg.attention.num_kv_heads = kv_heads
  if not latent and "latent_rank" in cfg.attention:
    cfg.attention.latent_rank = 0
  return ml_collections.FrozenConfigDict(cfg)


def allocated_bytes(model_cfg, batch: int, context: int) -> int:
  """K/V bytes of the cache ``generate`` would allocate to decode ``context`` tokens
  (each layer's own layout; shapes only: nothing is allocated)."""
  layouts = kv_cache.layouts_for(model_cfg, context)
  cache = jax.eval_shape(lambda: kv_cache.init_cache(model_cfg, batch, layouts))
  return sum(int(x.size) * x.dtype.itemsize for layer in cache.layers for x in layer[:2])


def report(model_cfg, contexts=(1024, 4096), batch: int = 1) -> list[dict]:
  """One row per head layout: per-token bytes (formula), and per-context bytes, both by
  the formula and as allocated by ``init_cache``."""
  rows = []
  heads = int(model_cfg.attention.num_heads)
  variants = [(label, kv, False) for label, kv in head_variants(model_cfg)]
  if attention_settings(model_cfg.attention).latent_rank:     # the model's own MLA cache
    variants.append(("MLA", heads, True))
  for label, kv, latent in variants:
    cfg = _with_kv_heads(model_cfg, kv, latent)
    per_token = kv_cache.bytes_per_token(cfg)
    row = {"variant": label, "num_heads": heads, "num_kv_heads": kv,
           "layers": int(cfg.num_layers), "head_dim": kv_cache.head_dims(cfg)[1],
           "dtype": cfg.dtype, "bytes_per_token": per_token, "batch": batch,
           "layer_types": ",".join(schedule.types_of(cfg))}
    for n in contexts:
      row[f"bytes@{n}"] = kv_cache.cache_bytes(cfg, batch, n)
      row[f"allocated@{n}"] = allocated_bytes(cfg, batch, n)
    if latent:
      a = attention_settings(cfg.attention)
      row.update(num_kv_heads=0, latent=int(a.latent_rank) + int(a.latent_rope_dim))
    rows.append(row)
  return rows


def _human(n: int) -> str:
  for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
    if n >= size:
      return f"{n / size:.2f} {unit}"
  return f"{n} B"


def markdown(rows: list[dict], contexts) -> str:
  r0 = rows[0]
  lines = [f"KV cache of a {r0['layers']}-layer model, {r0['num_heads']} query heads of dim "
           f"{r0['head_dim']}, {r0['dtype']}, batch {r0['batch']}: bytes per token = 2 x "
           f"{r0['layers']} x kv_heads x {r0['head_dim']} x bytes per element.\n",
           *([] if set(r0["layer_types"].split(",")) <= {"global", "nope"} else [
               f"Layer schedule {r0['layer_types']}: local layers cache only their window, so "
               f"a cache holds fewer bytes than bytes/token x context (the cache columns are "
               f"what it allocates).\n"]),
           *([f"MLA caches per token and layer its latent and RoPE key, {rows[-1]['latent']} "
              f"numbers (latent_rank + latent_rope_dim), and no per-head key or value.\n"]
             if rows[-1]["variant"] == "MLA" else []),
           "| variant | kv_heads | bytes/token | " + " | ".join(f"cache @ {n}" for n in contexts)
           + " | vs MHA |", "|---|---|---|" + "---|" * len(contexts) + "---|"]
  for r in rows:
    assert all(r[f"bytes@{n}"] == r[f"allocated@{n}"] for n in contexts)   # formula = allocation
    cells = " | ".join(_human(r[f"bytes@{n}"]) for n in contexts)
    kv = "latent" if r["variant"] == "MLA" else r["num_kv_heads"]
    lines.append(f"| {r['variant']} | {kv} | {r['bytes_per_token']:,} | {cells} | "
                 f"{r['bytes_per_token'] / r0['bytes_per_token']:.3g}x |")
  return "\n".join(lines) + "\n"
