"""``impl="tokamax"``: ``tokamax.dot_product_attention`` (JAX's recommended kernel library:
Mosaic-GPU, Triton, cuDNN, XLA and chunked-XLA implementations) for the requests it
expresses natively.

The request maps as follows: a pattern that is a band (``Mask.band``: full, causal,
sliding windows) -> ``is_causal`` / ``local_window_size``; a static dense boolean mask ->
``mask``; an additive score modifier (ALiBi, T5, KERPLE, dense arrays) -> a dense
``bias``; soft-capping -> ``logits_soft_cap`` (after the bias, as tokamax applies it);
GQA/MQA as is. It refuses, with the reason, what it cannot express: patterns that need
their block map (BigBird, random, dilated, strided ...: ``impl="pallas"`` or
``"blockwise"`` skip their empty tiles), traced masks (segments), and modifiers that are
neither additive nor a final soft-cap. ``model.attention.tokamax_implementation`` picks
tokamax's implementation (``auto``: tokamax's own choice). tokamax is an optional
dependency (``pip install -e ".[gpu]"``, also in ``".[test]"``); without it the impl is
refused with that instruction.
"""

from __future__ import annotations

import jax.numpy as jnp

from attnlab.attention import masks as masks_lib
from attnlab.attention import score_mods
from attnlab.attention.core import IMPLS, Implementation
from attnlab.registry import Field

IMPLEMENTATIONS = ("auto", "mosaic", "triton", "cudnn", "xla", "xla_chunked")
INSTALL = "impl='tokamax' needs the tokamax package: pip install -e '.[gpu]' (or pip install tokamax)"


def _tokamax():
  try:
    import tokamax
  except ImportError:
    return None
  # tokamax reads its absl options by parsing sys.argv when absl has not parsed it yet,
  # which fails under any other argument parser (pytest, a notebook): take the defaults.
  from absl import flags
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  return tokamax


def _pattern(mask):
  """kwargs for a pattern tokamax takes, or a sentence saying why it cannot."""
  if mask is None:
    return {}
  band = mask.band()
  if band is not None:
    left, right = band
    if band == (None, None):
      return {}
    if right == 0:
      return {"is_causal": True} if left is None else {"is_causal": True,
                                                       "local_window_size": (int(left), 0)}
    if left is None or right is None:
      return (f"impl='tokamax' takes windows bounded on both sides or causal ones; the band "
              f"({left}, {right}) needs impl='blockwise' or 'reference'")
    return {"local_window_size": (int(left), int(right))}
  if isinstance(mask, masks_lib.DenseMask) and mask.is_static():
    return {"dense": True}
  if not mask.is_static():
    return ("impl='tokamax' needs a static pattern; this mask holds traced arrays (segments or "
            "a traced boolean mask): use impl='blockwise'")
  return (f"impl='tokamax' takes full, causal and banded patterns (or a dense boolean mask); "
          f"{type(mask).__name__} needs its block map to skip tiles: impl='pallas' or "
          f"'blockwise'")


def _modifier(score_mod):
  """(additive part or None, soft cap or None), or a sentence saying why not."""
  if score_mod is None:
    return None, None
  if isinstance(score_mod, score_mods.AdditiveBias):
    return score_mod, None
  if isinstance(score_mod, score_mods.SoftCap):
    return None, score_mod.cap
  if (isinstance(score_mod, score_mods.Compose)
      and isinstance(score_mod.first, score_mods.AdditiveBias)
      and isinstance(score_mod.second, score_mods.SoftCap)):
    return score_mod.first, score_mod.second.cap
  return (f"impl='tokamax' takes additive biases and a final soft-cap; "
          f"{type(score_mod).__name__} needs impl='pallas', 'blockwise' or 'reference'")


def tokamax_unsupported(q, k, v, mask, score_mod) -> str | None:
  """Why tokamax cannot serve this request, or None."""
  if _tokamax() is None:
    return INSTALL
  for reason in (_pattern(mask), _modifier(score_mod)):
    if isinstance(reason, str):
      return reason
  if not q.dtype == k.dtype == v.dtype:
    return f"impl='tokamax' needs q, k, v of one dtype; got {q.dtype}, {k.dtype}, {v.dtype}"
  return None


def tokamax_attention(q, k, v, *, mask=None, score_mod=None, scale: float,
                      tokamax_implementation: str = "auto", **unused):
  """The impl contract on ``tokamax.dot_product_attention``."""
  tokamax = _tokamax()
  if tokamax is None:
    raise ValueError(INSTALL)
  kwargs = _pattern(mask)
  dense = kwargs.pop("dense", False)
  bias, cap = _modifier(score_mod)
  nq, nk = q.shape[1], k.shape[1]
  dense_mask = None
  if dense:
    dense_mask = mask.dense(nq, nk)
    dense_mask = dense_mask.reshape((1,) * (4 - dense_mask.ndim) + dense_mask.shape)
  bias_array = None
  if bias is not None:
    bias_array = bias.dense(nq, nk).astype(jnp.float32)
    bias_array = bias_array.reshape((1,) * (4 - bias_array.ndim) + bias_array.shape)
  out = tokamax.dot_product_attention(
      q, k, v, bias=bias_array, mask=dense_mask, scale=scale, logits_soft_cap=cap,
      implementation=None if tokamax_implementation == "auto" else tokamax_implementation,
      **kwargs)
  if dense_mask is not None:
    # tokamax averages the values of a row that sees no key; the contract says 0
    sees_any = jnp.broadcast_to(dense_mask, (q.shape[0], q.shape[2], nq, nk)).any(-1)
    out = out * sees_any.transpose(0, 2, 1)[..., None].astype(out.dtype)
  return out.astype(q.dtype)


IMPLS.register("tokamax")(Implementation(
    tokamax_attention, tokamax_unsupported,
    doc="tokamax.dot_product_attention (Mosaic-GPU, Triton, cuDNN, XLA, chunked XLA): banded "
        "patterns, additive biases, soft-cap; optional dependency",
    options=(Field("tokamax_implementation", "auto", "impl=tokamax: which of its "
                   "implementations (auto: tokamax chooses)", choices=IMPLEMENTATIONS),),
    # designed for accelerators; attnlab has run only its XLA implementations, on CPU,
    # where its mapping is tested against the reference (tests/test_tokamax.py); its
    # Mosaic, Triton and cuDNN kernels have never run here
    auto_rank={"gpu": 2, "tpu": 2},
    tested_on={"cpu": "its xla and xla_chunked implementations only (tests/test_tokamax.py)"}))
