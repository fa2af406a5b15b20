"""``impl="pallas"``: attnlab patterns and score modifiers on the fused Pallas kernel.

The adapter translates the impl contract into ``pallas_kernels.flash_attention``:

- a pattern becomes a ``BlockSparsity`` from its block map. Partial tiles of a
  pattern computable from indices alone (causal, windows, prefix, dilated,
  global tokens, sinks and their ``&``/``|``) are masked by evaluating the
  pattern in-kernel; other static patterns (BigBird, random keys, per-head
  draws, dense boolean masks) get a tile-mask table with one row per distinct
  partial tile; ``segments`` become in-kernel segment ids;
- a score modifier becomes the in-kernel terms it declares (``ScoreMod.kernel_terms``:
  ALiBi, T5, soft-cap and compositions of them), with gradients for the ALiBi slopes
  and the T5 table.

A cached decoding step (``decode``) runs the split-K decode kernel
``pallas_kernels.decode.flash_decode`` when the model's pattern is a causal band
(``Mask.band``: causal or a sliding window) and its modifier is at most ALiBi then
soft-cap.

``unsupported`` says in words what the kernel cannot serve (traced dense masks,
dense bias arrays, ALiBi with explicit positions, ...): ``impl="pallas"`` then
fails with that reason and ``impl="auto"`` falls back and logs it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from attnlab.attention import masks as masks_lib
from attnlab.attention.core import BLOCK_KV, BLOCK_Q, IMPLS, Implementation
from pallas_kernels import flash

# Largest tile of the Pallas path (CPU interpret mode and GPU alike).
MAX_BLOCK = 128


# ----------------------------------------------------------------------------- masks

def _conjuncts(mask) -> list:
  if isinstance(mask, masks_lib.And):
    return _conjuncts(mask.left) + _conjuncts(mask.right)
  return [mask]


def _index_only(mask, block_q: int, block_kv: int) -> bool:
  """True when the pattern is a function of the indices alone, the same for every head."""
  for leaf in jax.tree_util.tree_leaves(mask):
    if not isinstance(leaf, (bool, int, float, np.integer)):
      return False
  try:
    shape = jax.eval_shape(lambda: mask(jnp.zeros((block_q, 1), jnp.int32),
                                        jnp.zeros((1, block_kv), jnp.int32))).shape
  except Exception:  # noqa: BLE001 - any failure means: not evaluable in-kernel
    return False
  return len(shape) <= 2


def _split_mask(mask):
  """-> (pattern without segments or None, Segments or None, reason it cannot run or None)."""
  if mask is None:
    return None, None, None
  parts = _conjuncts(mask)
  segments = [p for p in parts if isinstance(p, masks_lib.Segments)]
  rest = [p for p in parts if not isinstance(p, masks_lib.Segments)]
  if len(segments) > 1:
    return None, None, "impl='pallas' takes at most one segments() pattern"
  if any(_contains_segments(p) for p in rest):
    return None, None, ("impl='pallas' takes segments() only as a top-level '&' term, "
                        "not inside '|'")
  pattern = functools.reduce(masks_lib.And, rest) if rest else None
  return pattern, (segments[0] if segments else None), None


def _contains_segments(mask) -> bool:
  if isinstance(mask, masks_lib.Segments):
    return True
  if isinstance(mask, (masks_lib.And, masks_lib.Or)):
    return _contains_segments(mask.left) or _contains_segments(mask.right)
  return False


def _tile_table(pattern, q_len: int, kv_len: int, bq: int, bk: int, heads: int):
  """Per-head tile codes and the table of distinct partial tiles of a static pattern."""
  block_map = pattern.block_map(q_len, kv_len, bq, bk)
  nq, nk = block_map.shape
  probe = jax.eval_shape(lambda: pattern(jnp.zeros((bq, 1), jnp.int32),
                                         jnp.zeros((1, nk * bk), jnp.int32))).shape
  per_head = int(np.prod(probe[:-2])) > 1
  codes = np.where(block_map == masks_lib.FULL, flash.FULL, flash.EMPTY).astype(np.int32)
  codes = np.repeat(codes[None], heads if per_head else 1, axis=0)      # [Hm, nq, nk]
  rows: dict[bytes, int] = {}
  kv_idx = np.arange(nk * bk)[None, :]
  for i in range(nq):
    partial = np.flatnonzero(block_map[i] == masks_lib.PARTIAL)
    if not len(partial):
      continue
    q_idx = (i * bq + np.arange(bq))[:, None]
    with jax.ensure_compile_time_eval():
      dense = np.asarray(pattern(q_idx, kv_idx), bool)
    dense = np.broadcast_to(dense.reshape((-1,) + dense.shape[-2:]),
                            (codes.shape[0], bq, nk * bk))              # [Hm, bq, nk * bk]
    for j in partial:
      for hm in range(codes.shape[0]):
        tile = dense[hm, :, j * bk:(j + 1) * bk]
        if not tile.any():
          codes[hm, i, j] = flash.EMPTY
        elif tile.all():
          codes[hm, i, j] = flash.FULL
        else:
          codes[hm, i, j] = rows.setdefault(tile.tobytes(), len(rows))
  tile_masks = None
  if rows:
    tile_masks = np.stack([np.frombuffer(key, bool).reshape(bq, bk) for key in rows])
  return flash.BlockSparsity(codes, tile_masks)


def _sparsity(pattern, q_len, kv_len, bq, bk, heads):
  """-> (BlockSparsity, in-kernel predicate or None)."""
  if pattern is None:
    return flash.BlockSparsity.dense(-(-q_len // bq), -(-kv_len // bk)), None
  if _index_only(pattern, bq, bk):
    return flash.BlockSparsity.from_block_map(pattern.block_map(q_len, kv_len, bq, bk)), pattern
  return _tile_table(pattern, q_len, kv_len, bq, bk, heads), None


# ----------------------------------------------------------------------------- score modifiers

def _terms(score_mod):
  """The modifier's in-kernel terms (it declares them), or a sentence saying why it has none."""
  return () if score_mod is None else score_mod.kernel_terms()


# ----------------------------------------------------------------------------- the impl

def _blocks(q_len: int, kv_len: int, block_q: int, block_kv: int) -> tuple[int, int]:
  """Tiles: powers of two in [16, MAX_BLOCK], no larger than the padded lengths need."""
  def pick(length, requested):
    return max(16, min(MAX_BLOCK, requested, 1 << max(0, (length - 1).bit_length())))
  return pick(q_len, block_q), pick(kv_len, block_kv)


def pallas_unsupported(q, k, v, mask, score_mod) -> str | None:
  """Why the Pallas kernel cannot serve this request, or None."""
  pattern, _, reason = _split_mask(mask)
  if reason:
    return reason
  if pattern is not None and not pattern.is_static():
    return ("impl='pallas' needs a static pattern (its tiles are planned before the kernel "
            "runs); this mask holds traced arrays: use impl='blockwise'")
  terms = _terms(score_mod)
  if isinstance(terms, str):
    return terms
  for x, name in ((q, "q"), (k, "k"), (v, "v")):
    if x.dtype not in (jnp.float32, jnp.bfloat16, jnp.float16):
      return f"impl='pallas' takes float32, bfloat16 or float16; {name} is {x.dtype}"
  return None


def pallas_attention(q, k, v, *, mask=None, score_mod=None, scale: float,
                     block_q: int = MAX_BLOCK, block_kv: int = MAX_BLOCK, interpret=None,
                     **unused):
  """The impl contract on ``pallas_kernels.flash_attention`` (see the module docstring)."""
  pattern, segments, _ = _split_mask(mask)
  terms = _terms(score_mod)
  q_len, kv_len, heads = q.shape[1], k.shape[1], q.shape[2]
  bq, bk = _blocks(q_len, kv_len, block_q, block_kv)
  sparsity, predicate = _sparsity(pattern, q_len, kv_len, bq, bk, heads)
  segment_ids = None
  if segments is not None:
    batch = q.shape[0]
    segment_ids = (jnp.broadcast_to(jnp.asarray(segments.q_ids), (batch, q_len)),
                   jnp.broadcast_to(jnp.asarray(segments.kv_ids), (batch, kv_len)))
  return flash.flash_attention(q, k, v, sparsity=sparsity, predicate=predicate,
                               segment_ids=segment_ids, terms=terms, scale=scale,
                               block_q=bq, block_kv=bk, interpret=interpret)


def pallas_decode(q, k, v, *, lengths, mask, score_mod, scale, block_kv: int = MAX_BLOCK,
                  interpret=None, **unused):
  """A cached decoding step on ``pallas_kernels.decode.flash_decode`` (the
  ``Implementation.decode`` contract), or None when the kernel cannot serve it."""
  from pallas_kernels import decode as decode_kernels
  band = None if mask is None else mask.band()
  if mask is not None and (band is None or band[1] != 0):
    return None              # the kernel's only pattern: p - window <= j <= p
  terms = _terms(score_mod)
  if isinstance(terms, str):
    return None
  names = [type(t).__name__ for t in terms]
  if names not in ([], ["Alibi"], ["SoftCap"], ["Alibi", "SoftCap"]):
    return None              # the kernel applies ALiBi, then soft-cap
  slopes = terms[0].slopes if names[:1] == ["Alibi"] else None
  cap = terms[-1].cap if names[-1:] == ["SoftCap"] else None
  # on visible slots (j <= p) the kernel's -slope * (p - j) is ALiBi's -slope * |p - j|
  return decode_kernels.flash_decode(
      q, k, v, lengths, scale=scale, alibi_slopes=slopes, soft_cap=cap,
      window=None if band is None else band[0], block_kv=min(int(block_kv), MAX_BLOCK),
      interpret=interpret)


IMPLS.register("pallas")(Implementation(
    pallas_attention, pallas_unsupported,
    doc="fused Pallas flash attention (GPU; CPU in interpret mode): block-sparse, ALiBi/T5/"
        "soft-cap in-kernel, custom backward",
    options=(BLOCK_Q, BLOCK_KV), decode=pallas_decode))
