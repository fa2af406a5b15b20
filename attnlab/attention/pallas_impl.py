"""``impl="pallas"``: attnlab patterns and score modifiers on the fused Pallas kernel.

The adapter translates the impl contract into ``pallas_kernels.flash_attention``:

- a pattern becomes a ``BlockSparsity`` from its block map. Partial tiles of a
  pattern computable from indices alone (causal, windows, prefix, dilated,
  global tokens, sinks and their ``&``/``|``) are masked by evaluating the
  pattern in-kernel; other static patterns (BigBird, random keys, per-head
  draws, dense boolean masks) get a tile-mask table with one row per distinct
  partial tile; ``segments`` become in-kernel segment ids;
- a score modifier runs in the kernel when it can lower there (``score_mod_problem``): its
  value and derivative on one head's tile use only the primitives of ``LOWERABLE``
  (elementwise arithmetic and math, comparisons, selects, iota, reductions, reshapes,
  ``dot_general``), its leaves are floats of at most ``MAX_LEAF_ELEMENTS`` per head, and it
  reads token indices, not explicit positions. Its per-head leaves (declared,
  ``ScoreMod.per_head``) are split by head (``select_heads``), and the kernel calls the modifier for one head on each visited
  tile and differentiates it there (``jax.vjp``), so every float leaf gets gradients.
  A modifier that cannot lower (a gather, a dynamic or static slice, a sort, a cumulative
  op, random numbers, a non-float or oversized leaf) is refused with the reason.

A cached decoding step (``decode``) runs the split-K decode kernel
``pallas_kernels.decode.flash_decode`` when the model's pattern is a causal band
(``Mask.band``: causal or a sliding window), with any modifier the kernel can lower.

``unsupported`` says in words what the kernel cannot serve (traced dense masks,
dense bias arrays, ALiBi with explicit positions, ...): ``impl="pallas"`` then
fails with that reason and ``impl="auto"`` falls back and logs it.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from attnlab.attention import masks as masks_lib
from attnlab.attention import operands
from attnlab.attention import score_mods
from attnlab.attention.pytree import pytree_dataclass
from attnlab.attention.core import BLOCK_KV, BLOCK_Q, IMPLS, Implementation
from attnlab.runtime import compiled_cache
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
  """-> (static pattern or None, Segments or None, patterns with per-position operands).

  The first top-level ``segments()`` term becomes the kernel's segment ids (compared
  in-kernel, and classifying tiles at run time); any other term that carries per-position
  operands (another ``segments()``, an ``|`` holding one, a user's pattern) runs in the
  kernel as a modifier that sets hidden scores to -inf (``MaskBias``)."""
  if mask is None:
    return None, None, []
  parts = _conjuncts(mask)
  segments = next((p for p in parts if isinstance(p, masks_lib.Segments)), None)
  rest = [p for p in parts if p is not segments]
  dynamic = [p for p in rest if operands.has_operands(p)]
  static = [p for p in rest if not operands.has_operands(p)]
  pattern = functools.reduce(masks_lib.And, static) if static else None
  return pattern, segments, dynamic


@pytree_dataclass(data=("mask",))
class MaskBias(score_mods.ScoreMod):
  """A pattern with per-position operands as a modifier: -inf where it hides a key."""
  mask: Any

  def __call__(self, scores, q_idx, kv_idx):
    return jnp.where(self.mask(q_idx, kv_idx), scores, -jnp.inf)


def _kernel_mod(score_mod, dynamic_masks):
  """The modifier the kernel evaluates: ``score_mod`` then each operand pattern."""
  for mask in dynamic_masks:
    score_mod = MaskBias(mask) if score_mod is None else score_mods.Compose(score_mod,
                                                                            MaskBias(mask))
  return score_mod


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
# Any ScoreMod runs in the kernel: its float leaves are split by head outside the kernel
# (``select_heads`` under vmap, so autodiff maps their gradients back), and the kernel
# calls the modifier for one head on each visited tile and differentiates it there.

# Largest leaf, in elements per head, passed to the kernel (it is held on chip).
MAX_LEAF_ELEMENTS = 4096
# A probe tile for the plan-time checks (shapes and primitives do not depend on its size).
_PROBE = 16

# Primitives with lowering rules in both Pallas backends (GPU Triton and TPU Mosaic;
# tests/test_pallas_score_mods.py checks each against JAX's rule tables). Not here, so
# refused: gather/scatter/dynamic_slice (indexing with traced indices), slice (no
# Triton rule), sort, cumulative ops, random numbers.
LOWERABLE = frozenset("""
    abs add add_any and atan2 broadcast_in_dim ceil clamp concatenate cond
    convert_element_type cos custom_jvp_call div dot_general eq erf_inv exp exp2 floor ge gt
    integer_pow iota is_finite jit le log log1p logistic lt max min mul ne neg not or pjit
    pow reduce_max reduce_min reduce_sum rem reshape rsqrt select_n sign sin sqrt square
    squeeze stop_gradient sub tan tanh transpose xor copy copy_p
""".split())

_HINTS = {
    "gather": " (indexing an array with traced indices: look tables up with "
              "attnlab.attention.score_mods.lookup)",
    "dynamic_slice": " (slicing at a traced offset)",
    "slice": " (a static slice such as x[0] of a leaf: give each per-head value its own leaf)",
}


def _per_head(score_mod, heads: int):
  """The modifier with every leaf stacked by head: leaf ``[heads, ...]`` holds
  ``score_mod.select_heads(h, 1)``'s leaf for each head h."""
  return jax.vmap(lambda h: score_mod.select_heads(h, 1))(jnp.arange(heads))


def _tile_fn(treedef, slots=None, ranks=()):
  """``ScoreFn.fn``: one head's modifier (rebuilt from its leaves and, with ``slots``, from
  its tile of each per-position operand) on one tile."""
  def fn(leaves, s, q_idx, kv_idx, q_ops=(), kv_ops=()):
    mod = jax.tree_util.tree_unflatten(treedef, leaves)
    if slots is not None:
      mod = operands.insert(mod, slots, _tile_operands(slots, ranks, q_ops, kv_ops))
    with score_mods.in_kernel():
      return mod(s[None, None], q_idx, kv_idx).reshape(s.shape)
  return fn


def _tile_operands(slots, ranks, q_ops, kv_ops):
  """The kernel's tile vectors ([rows] / [cols], one batch row and head) in the layout of the
  leaves they replace: ``[1, n]``, or ``[1, n, 1]`` for a leaf with a head axis."""
  q_it, kv_it = iter(q_ops), iter(kv_ops)
  out = []
  for side, rank in zip(slots.sides, ranks):
    x = next(q_it) if side == "q" else next(kv_it)
    out.append(x.reshape((1, -1) + (1,) * (rank - 2)))
  return out


def _sub_jaxprs(value):
  """The jaxprs an equation parameter holds (a jaxpr, a closed jaxpr, or a sequence)."""
  if hasattr(value, "eqns"):
    return [value]
  if hasattr(value, "jaxpr") and hasattr(value.jaxpr, "eqns"):
    return [value.jaxpr]
  if isinstance(value, (list, tuple)):
    return [j for v in value for j in _sub_jaxprs(v)]
  return []


def _primitives(jaxpr) -> set[str]:
  """Names of every primitive in a jaxpr and its sub-jaxprs."""
  names = set()
  for eqn in jaxpr.eqns:
    names.add(eqn.primitive.name)
    for value in eqn.params.values():
      for sub in _sub_jaxprs(value):
        names |= _primitives(sub)
  return names


@compiled_cache(maxsize=256)   # a trace-time check: per backend and mesh, cleared with the programs
def _score_mod_problem(treedef, avals: tuple, heads: int) -> str | None:
  """Why a modifier (given by its treedef and leaf shapes) cannot run in the kernel."""
  mod = jax.tree_util.tree_unflatten(treedef, [jax.ShapeDtypeStruct(*a) for a in avals])
  name = type(mod).__name__
  refusal = "; use impl='blockwise' (any ScoreMod, tile by tile) or 'reference'"
  mod, arrays, slots = operands.strip(mod)
  for x in arrays:
    if len(x.shape) not in (2, 3) or (len(x.shape) == 3 and x.shape[2] not in (1, heads)):
      return (f"impl='pallas' takes per-position operands [batch, len] or [batch, len, heads]; "
              f"{name} has one of shape {tuple(x.shape)}" + refusal)
  probes = [jax.ShapeDtypeStruct((1, _PROBE) + (1,) * (len(x.shape) - 2), x.dtype)
            for x in arrays]
  float_ops = [n for n, x in enumerate(arrays) if jnp.issubdtype(x.dtype, jnp.floating)]
  try:
    per_head = jax.eval_shape(lambda m: _per_head(m, heads), mod)
  except Exception as e:  # noqa: BLE001 - the modifier's own code failed
    return f"impl='pallas': {name}.select_heads failed ({type(e).__name__}: {e})" + refusal
  flat, head_treedef = jax.tree_util.tree_flatten_with_path(per_head)
  for path, leaf in flat:
    where = f"{name}{jax.tree_util.keystr(path)}"
    if not jnp.issubdtype(leaf.dtype, jnp.floating):
      return (f"impl='pallas' passes float leaves to the kernel; {where} is {leaf.dtype}"
              + refusal)
    size = int(np.prod(leaf.shape[1:]))
    if size > MAX_LEAF_ELEMENTS:
      return (f"impl='pallas' holds a modifier's leaves on chip (at most {MAX_LEAF_ELEMENTS} "
              f"elements per head); {where} has {size} per head (shape {leaf.shape[1:]})"
              + refusal)
  leaves = [jax.ShapeDtypeStruct(x.shape[1:], x.dtype) for _, x in flat]
  s = jax.ShapeDtypeStruct((_PROBE, _PROBE), jnp.float32)
  q_idx = jax.ShapeDtypeStruct((_PROBE, 1), jnp.int32)
  kv_idx = jax.ShapeDtypeStruct((1, _PROBE), jnp.int32)
  treedef_1 = jax.tree_util.tree_structure(per_head)

  def one_head(leaves, s, q_idx, kv_idx, ops):
    head = jax.tree_util.tree_unflatten(treedef_1, leaves)
    if arrays:
      head = operands.insert(head, slots, ops)
    with score_mods.in_kernel():
      return head(s[None, None], q_idx, kv_idx)

  try:
    out = jax.eval_shape(one_head, leaves, s, q_idx, kv_idx, probes)
  except Exception as e:  # noqa: BLE001
    return f"impl='pallas': {name} failed on one head's tile ({type(e).__name__}: {e})" + refusal
  if out.shape != (1, 1, _PROBE, _PROBE):
    return (f"impl='pallas' evaluates {name} one head at a time; for one head's tile of "
            f"scores [1, 1, {_PROBE}, {_PROBE}] it returned {list(out.shape)}: declare its "
            f"per-head leaves (pytree_dataclass(data=..., per_head=...)) so that "
            f"select_heads(first, count) restricts them" + refusal)

  def value_and_grads(leaves, s, q_idx, kv_idx, ops):
    def f(s_, l_, floats):
      merged = list(ops)
      for n, x in zip(float_ops, floats):
        merged[n] = x
      return one_head(l_, s_, q_idx, kv_idx, merged)
    out, back = jax.vjp(f, s, leaves, [ops[n] for n in float_ops])
    return out, back(jnp.ones_like(out))

  jaxpr = jax.make_jaxpr(value_and_grads)(leaves, s, q_idx, kv_idx, probes)
  missing = sorted(_primitives(jaxpr.jaxpr) - LOWERABLE)
  if missing:
    return (f"impl='pallas' cannot lower {name} into the kernel: it uses "
            f"{', '.join(f'`{m}`' for m in missing)}{_HINTS.get(missing[0], '')}" + refusal)
  return None


def score_mod_problem(score_mod, heads: int) -> str | None:
  """Why the kernel cannot evaluate ``score_mod`` for ``heads`` heads, or None (cached per
  modifier structure)."""
  if score_mod is None:
    return None
  if score_mod.explicit_positions:
    return (f"impl='pallas' evaluates modifiers on token indices; {type(score_mod).__name__} "
            f"reads explicit positions (randomized positions): use impl='blockwise' or "
            f"'reference'")
  leaves, treedef = jax.tree_util.tree_flatten(score_mod)
  avals = tuple((tuple(np.shape(x)), jnp.result_type(x)) for x in leaves)
  try:
    return _score_mod_problem(treedef, avals, heads)
  except TypeError:   # static fields that cannot be hashed: check without the cache
    return _score_mod_problem.__wrapped__(treedef, avals, heads)


def _score_fn(score_mod, heads: int):
  """The kernel's ``ScoreFn`` for a modifier (None for none): per-head leaves stacked by
  head, per-position operands passed as the kernel's operands."""
  if score_mod is None:
    return None
  stripped, arrays, slots = operands.strip(score_mod)
  leaves, treedef = jax.tree_util.tree_flatten(_per_head(stripped, heads))
  if not arrays:
    return flash.ScoreFn(_tile_fn(treedef), leaves)
  ranks = tuple(jnp.ndim(x) for x in arrays)
  q_ops = tuple(x for x, side in zip(arrays, slots.sides) if side == "q")
  kv_ops = tuple(x for x, side in zip(arrays, slots.sides) if side == "kv")
  return flash.ScoreFn(_tile_fn(treedef, slots, ranks), leaves, q_ops, kv_ops)


# ----------------------------------------------------------------------------- the impl

def _blocks(q_len: int, kv_len: int, block_q: int, block_kv: int) -> tuple[int, int]:
  """Tiles: powers of two in [16, MAX_BLOCK], no larger than the padded lengths need."""
  def pick(length, requested):
    return max(16, min(MAX_BLOCK, requested, 1 << max(0, (length - 1).bit_length())))
  return pick(q_len, block_q), pick(kv_len, block_kv)


def pallas_unsupported(q, k, v, mask, score_mod) -> str | None:
  """Why the Pallas kernel cannot serve this request, or None."""
  pattern, _, dynamic = _split_mask(mask)
  if pattern is not None and not pattern.is_static():
    return ("impl='pallas' needs a static pattern (its tiles are planned before the kernel "
            "runs); this mask holds traced arrays: use impl='blockwise'")
  reason = score_mod_problem(_kernel_mod(score_mod, dynamic), q.shape[2])
  if reason:
    return reason
  for x, name in ((q, "q"), (k, "k"), (v, "v")):
    if x.dtype not in (jnp.float32, jnp.bfloat16, jnp.float16):
      return f"impl='pallas' takes float32, bfloat16 or float16; {name} is {x.dtype}"
  return None


def pallas_attention(q, k, v, *, mask=None, score_mod=None, scale: float,
                     block_q: int = MAX_BLOCK, block_kv: int = MAX_BLOCK, interpret=None,
                     sinks=None, **unused):
  """The impl contract on ``pallas_kernels.flash_attention`` (see the module docstring)."""
  pattern, segments, dynamic = _split_mask(mask)
  score_mod = _kernel_mod(score_mod, dynamic)
  q_len, kv_len, heads = q.shape[1], k.shape[1], q.shape[2]
  operands.check_lengths(score_mod, q_len, kv_len, "impl='pallas'")
  operands.check_lengths(segments, q_len, kv_len, "impl='pallas' segments")
  bq, bk = _blocks(q_len, kv_len, block_q, block_kv)
  sparsity, predicate = _sparsity(pattern, q_len, kv_len, bq, bk, heads)
  segment_ids = None
  if segments is not None:
    batch = q.shape[0]
    segment_ids = (jnp.broadcast_to(jnp.asarray(segments.q_ids), (batch, q_len)),
                   jnp.broadcast_to(jnp.asarray(segments.kv_ids), (batch, kv_len)))
  return flash.flash_attention(q, k, v, sparsity=sparsity, predicate=predicate,
                               segment_ids=segment_ids, score_fn=_score_fn(score_mod, heads), scale=scale,
                               block_q=bq, block_kv=bk, interpret=interpret, sinks=sinks)


def pallas_decode(q, k, v, *, lengths, mask, score_mod, scale, block_kv: int = MAX_BLOCK,
                  interpret=None, sinks=None, **unused):
  """A cached decoding step on ``pallas_kernels.decode.flash_decode`` (the
  ``Implementation.decode`` contract), or None when the kernel cannot serve it."""
  from pallas_kernels import decode as decode_kernels
  band = None if mask is None else mask.band()
  if mask is not None and (band is None or band[1] != 0):
    return None              # the kernel's only pattern: p - window <= j <= p
  heads = q.shape[2]
  if operands.has_operands(score_mod) or score_mod_problem(score_mod, heads):
    return None              # per-position operands: the cache path serves them
  return decode_kernels.flash_decode(
      q, k, v, lengths, scale=scale, score_fn=_score_fn(score_mod, heads),
      window=None if band is None else band[0], block_kv=min(int(block_kv or MAX_BLOCK), MAX_BLOCK),
      interpret=interpret, sinks=sinks)


IMPLS.register("pallas")(Implementation(
    pallas_attention, pallas_unsupported,
    doc="fused Pallas flash attention, written for GPU (Triton) and TPU (Mosaic) but run "
        "only in interpret mode on CPU: block-sparse, custom backward, score modifiers "
        "in-kernel when they lower (elementwise JAX of the tile and float leaves of at most "
        "4096 elements per head; no gathers or slices)",
    options=(BLOCK_Q, BLOCK_KV), decode=pallas_decode, sinks=True,
    tiles=(64, MAX_BLOCK, 2**13),    # per-tile overhead not yet measured on a GPU
    # designed for TPU and GPU: first in TPU's order, third in GPU's, but auto takes it there
    # only once a committed run on that backend exists (tested_on; docs/gpu/*.json), else
    # only when nothing else serves. It has run only on CPU, interpreted; its TPU export
    # does not lower yet (tests/test_pallas.py::test_tpu_export_status)
    auto_rank={"gpu": 3, "tpu": 1},
    tested_on={"cpu": "interpret mode (Pallas' CPU interpreter, and the TPU code path in JAX's "
                      "TPU interpreter): the test suite"},
    own_kernel=True))
