"""RoPE frequency scalings for length extrapolation, partial rotary, and xPos.

Each scaling is an entry of the registry ``ROPE_SCALINGS`` (``model.position.scaling``)
that declares the fields it reads; a new scaling is one ``RopeScaling`` registered here or
in a module of its own imported by ``attnlab/positional/__init__.py``.

With s = L_new / L_train (``scale_factor``), d the rotary dim, theta_i = b^(-2i/d) and
wavelength lambda_i = 2 pi / theta_i:

- ``linear`` (position interpolation, Chen et al. 2023): m -> m / s, i.e. theta_i / s.
- ``ntk``: base b -> b * s^(d / (d - 2)); positions unchanged.
- ``dynamic_ntk``: at the current length l (at least L_train), base
  b -> b * ((s l / L_train) - (s - 1))^(d / (d - 2)), the formula of the reference
  implementation (Hugging Face ``transformers``' dynamic NTK); s = 1 gives
  b * (l / L_train)^(d / (d - 2)).
- ``yarn``: YaRN as its authors' code computes it (Peng et al. 2023, and every YaRN
  checkpoint made with that code): correction dims
  ``dim(r) = d ln(L_train / (2 pi r)) / (2 ln b)``, ``low = floor(dim(beta))``,
  ``high = ceil(dim(alpha))`` clamped to [0, d - 1] (``beta`` = ``yarn_beta`` = 32, the
  code's beta_fast; ``alpha`` = ``yarn_alpha`` = 1, its beta_slow); a ramp *linear in the
  dimension index* ``ramp_i = clip((i - low) / (high - low), 0, 1)`` (high += 0.001 if
  equal) and ``theta'_i = ramp_i theta_i / s + (1 - ramp_i) theta_i``; plus an attention
  temperature: q and k are each multiplied by ``0.1 ln(s) + 1`` (1 when s <= 1).
- ``yarn_paper``: the paper's continuous form, a ramp *linear in r_i = L_train /
  lambda_i*: gamma_i = clip((r_i - alpha) / (beta - alpha), 0, 1),
  theta'_i = (1 - gamma_i) theta_i / s + gamma_i theta_i, with the same temperature.
  It differs from ``yarn`` in the transition band (``docs/attention.md``).
- ``longrope`` (LongRoPE, Ding et al. 2024; Phi-3): per-dimension rescale factors
  ``theta'_i = theta_i / f_i``, with ``f`` = ``longrope_short_factor`` while the longest
  position + 1 of a forward call is at most L_train and ``longrope_long_factor`` beyond it
  (both ``[rotary_dim / 2]``; unset: 1, and s beyond: position interpolation), and q and k each multiplied by the attention factor
  ``longrope_attention_factor`` (0: ``sqrt(1 + ln s / ln L_train)``, 1 when s <= 1), as
  transformers' ``longrope`` computes them. The switch is per forward call; a cached
  generation that crosses L_train re-reads the whole text into a fresh cache at that point,
  as transformers' ``generate`` does for Phi-3 (``PositionScheme.reencode_position``;
  ``docs/attention.md``).
- ``llama3`` (Meta's Llama 3.1): with wavelengths lambda_i, ``low = L_train / lf`` and
  ``high = L_train / hf`` (lf, hf = ``llama3_low_freq_factor`` 1, ``llama3_high_freq_factor``
  4): lambda_i < high keeps theta_i, lambda_i > low takes theta_i / s, and in between
  ``smooth = (L_train / lambda_i - lf) / (hf - lf)``,
  ``theta'_i = (1 - smooth) theta_i / s + smooth theta_i``. No temperature.

p-RoPE (Barbero et al. 2024, ``partial_rotary="p_rope"``): full RoPE's frequencies on every
pair, but the lowest 1 - ``rotary_fraction`` of them set to 0 (those pairs are not rotated);
NeoX's partial rotary instead rotates the first fraction of dims with a ladder of its own.

xPos (Sun et al. 2022): RoPE with per-pair scale zeta_i = (2i + 0.4 d) / (1.4 d);
queries are multiplied by zeta^(m / scale_base), keys by zeta^(-m / scale_base).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Callable

import jax.numpy as jnp
import numpy as np

from attnlab.registry import Field, Registry

@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """A RoPE frequency scaling (an entry of ``ROPE_SCALINGS``, ``model.position.scaling``).

  ``frequencies(freqs, rotary_dim, theta, s, seq_len) -> (theta'_i, multiplier)``: the
  scaled frequencies (float64 ``[rotary_dim/2]``) from the unscaled ``freqs`` and the
  ``model.position`` settings ``s`` (a mapping holding every field below), and the
  multiplier sqrt(1/t) applied to q and k (1.0: none).
  ``fields``: the ``model.position`` fields it reads (they apply only when it is chosen).
  ``needs_original_len``: it reads ``original_max_len`` (which must be >= 1).
  ``check_dims(s, rotary_dim)``: why the settings do not fit ``rotary_dim`` rotated dims.
  ``check(s)``: why the settings are invalid across fields (a sentence), or None.
  ``cache_refusal``: why a KV cache cannot decode with it, or None.
  """
  frequencies: Callable[..., tuple[np.ndarray, float]]
  fields: tuple[Field, ...] = ()
  doc: str = ""
  needs_original_len: bool = False
  check: Callable[[Mapping], str | None] = lambda s: None
  cache_refusal: str | None = None
  # frequencies switch when a forward call's longest position + 1 exceeds
  # ``original_max_len`` (LongRoPE): ``frequencies`` is asked for both sets and the
  # rotation picks per call, from the positions it is given
  switches_at_original_len: bool = False
  check_dims: Callable[[Mapping, int], str | None] = lambda s, rotary_dim: None


ROPE_SCALINGS: Registry[RopeScaling] = Registry("model.position.scaling")


def _positive(value, context):
  return None if value > 0 else "must be > 0"


SCALE_FACTOR = Field("scale_factor", 1.0, "rope scaling s = L_new / L_train", minimum=1.0)
ORIGINAL_MAX_LEN = Field("original_max_len", 0, "rope scaling L_train; 0 means the training "
                         "length", minimum=0)
YARN_ALPHA = Field("yarn_alpha", 1.0, "yarn: rotations below which dims interpolate (beta_slow)")
YARN_BETA = Field("yarn_beta", 32.0, "yarn: rotations above which dims keep theta (beta_fast)")
YARN_TRUNCATE = Field("yarn_truncate", True, "yarn: round the ramp's ends to whole dims (floor, "
                      "ceil: the authors' code); False keeps them fractional (gpt-oss)")
LLAMA3_LOW = Field("llama3_low_freq_factor", 1.0, "llama3: wavelengths above L_train / this "
                   "interpolate", check=_positive)
LLAMA3_HIGH = Field("llama3_high_freq_factor", 4.0, "llama3: wavelengths below L_train / this "
                    "keep theta", check=_positive)


def unscaled_frequencies(rotary_dim: int, theta: float) -> np.ndarray:
  """``theta^(-2i/rotary_dim)`` for i < rotary_dim/2, float64."""
  return theta ** (-np.arange(0, rotary_dim, 2, dtype=np.float64) / rotary_dim)


def yarn_correction_range(rotary_dim: int, theta: float, original_max_len: int,
                          alpha: float, beta: float, truncate: bool = True) -> tuple[float, float]:
  """(low, high) dims of YaRN's ramp as the authors' code finds them (see the module doc);
  ``truncate=False``: without rounding them to whole dims (gpt-oss)."""
  def dim(rotations):
    return rotary_dim * math.log(original_max_len / (rotations * 2 * math.pi)) / (
        2 * math.log(theta))
  low, high = dim(beta), dim(alpha)
  if truncate:
    low, high = math.floor(low), math.ceil(high)
  return max(low, 0), min(high, rotary_dim - 1)


def yarn_mscale(factor: float) -> float:
  """YaRN's q and k multiplier sqrt(1/t) = 0.1 ln(s) + 1 (1 for s <= 1)."""
  return 1.0 if factor <= 1 else 0.1 * math.log(factor) + 1.0


def _none(freqs, d, theta, s, seq_len):
  return freqs, 1.0


def _linear(freqs, d, theta, s, seq_len):
  return freqs / s["scale_factor"], 1.0


def _ntk(freqs, d, theta, s, seq_len):
  return unscaled_frequencies(d, theta * s["scale_factor"] ** (d / (d - 2))), 1.0


def _dynamic_ntk(freqs, d, theta, s, seq_len):
  factor, original = s["scale_factor"], s["original_max_len"]
  length = max(seq_len, original)
  grown = factor * length / original - (factor - 1)
  return unscaled_frequencies(d, theta * grown ** (d / (d - 2))), 1.0


def _yarn(freqs, d, theta, s, seq_len):
  low, high = yarn_correction_range(d, theta, s["original_max_len"], s["yarn_alpha"],
                                    s["yarn_beta"], s["yarn_truncate"])
  ramp = np.clip((np.arange(d // 2, dtype=np.float64) - low)
                 / ((high + 0.001 if high == low else high) - low), 0.0, 1.0)
  factor = s["scale_factor"]
  return ramp * freqs / factor + (1 - ramp) * freqs, yarn_mscale(factor)


def _yarn_paper(freqs, d, theta, s, seq_len):
  ratio = s["original_max_len"] / (2 * math.pi / freqs)
  alpha, beta, factor = s["yarn_alpha"], s["yarn_beta"], s["scale_factor"]
  gamma = np.clip((ratio - alpha) / (beta - alpha), 0.0, 1.0)
  return (1 - gamma) * freqs / factor + gamma * freqs, yarn_mscale(factor)


def _llama3(freqs, d, theta, s, seq_len):
  low, high = s["llama3_low_freq_factor"], s["llama3_high_freq_factor"]
  wavelength = 2 * math.pi / freqs
  smooth = np.clip((s["original_max_len"] / wavelength - low) / (high - low), 0.0, 1.0)
  factor = s["scale_factor"]
  return (1 - smooth) * freqs / factor + smooth * freqs, 1.0


def longrope_attention_factor(s) -> float:
  """LongRoPE's q and k multiplier: ``longrope_attention_factor``, or
  sqrt(1 + ln s / ln L_train) (1 when s <= 1)."""
  if s["longrope_attention_factor"]:
    return float(s["longrope_attention_factor"])
  factor, original = s["scale_factor"], s["original_max_len"]
  return 1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(original))


def _longrope(freqs, d, theta, s, seq_len):
  long = seq_len is not None and seq_len > s["original_max_len"]
  factors = s["longrope_long_factor" if long else "longrope_short_factor"]
  if not len(factors):      # unset: 1 up to L_train, s beyond (position interpolation)
    factors = [s["scale_factor"] if long else 1.0] * len(freqs)
  return freqs / np.asarray(factors, np.float64), longrope_attention_factor(s)


def _positive_numbers(value, context):
  ok = all(isinstance(x, (int, float)) and not isinstance(x, bool) and 0 < x < float("inf")
           for x in value)
  return None if ok else "must hold finite numbers > 0"


def _longrope_dims(s, rotary_dim):
  for name in ("longrope_short_factor", "longrope_long_factor"):
    if len(s[name]) and len(s[name]) != rotary_dim // 2:
      return (f"model.position.{name} has {len(s[name])} factors; the {rotary_dim} rotated "
              f"dims need {rotary_dim // 2} (one per pair)")
  return None


def _yarn_check(s):
  if not s["yarn_beta"] > s["yarn_alpha"]:
    return (f"model.position.yarn_beta={s['yarn_beta']!r} must exceed "
            f"model.position.yarn_alpha={s['yarn_alpha']!r}")
  return None


def _llama3_check(s):
  if not s["llama3_high_freq_factor"] > s["llama3_low_freq_factor"]:
    return (f"model.position.llama3_high_freq_factor={s['llama3_high_freq_factor']!r} must "
            f"exceed model.position.llama3_low_freq_factor={s['llama3_low_freq_factor']!r}")
  return None


_YARN_FIELDS = (SCALE_FACTOR, ORIGINAL_MAX_LEN, YARN_ALPHA, YARN_BETA, YARN_TRUNCATE)
ROPE_SCALINGS.register("none")(RopeScaling(_none, doc="plain RoPE"))
ROPE_SCALINGS.register("linear")(RopeScaling(
    _linear, (SCALE_FACTOR,), "position interpolation: theta_i / s"))
ROPE_SCALINGS.register("ntk")(RopeScaling(
    _ntk, (SCALE_FACTOR,), "NTK-aware: base b * s^(d / (d - 2))"))
ROPE_SCALINGS.register("dynamic_ntk")(RopeScaling(
    _dynamic_ntk, (SCALE_FACTOR, ORIGINAL_MAX_LEN), "NTK base grown with the current length "
    "(transformers' dynamic NTK)", needs_original_len=True,
    cache_refusal=("model.position.scaling='dynamic_ntk' rescales every key with the current "
                   "length, so keys cached at shorter lengths would be stale")))
ROPE_SCALINGS.register("yarn")(RopeScaling(
    _yarn, _YARN_FIELDS, "YaRN as its authors' code computes it (ramp in the dimension index, "
    "temperature)", needs_original_len=True, check=_yarn_check))
ROPE_SCALINGS.register("yarn_paper")(RopeScaling(
    _yarn_paper, _YARN_FIELDS, "YaRN's paper form (ramp in r_i = L_train / lambda_i, "
    "temperature)", needs_original_len=True, check=_yarn_check))
ROPE_SCALINGS.register("longrope")(RopeScaling(
    _longrope, (SCALE_FACTOR, ORIGINAL_MAX_LEN,
                Field("longrope_short_factor", (), "longrope: per-pair factors up to "
                      "original_max_len (rotary_dim / 2 numbers; empty: all 1)",
                      check=_positive_numbers),
                Field("longrope_long_factor", (), "longrope: per-pair factors beyond "
                      "original_max_len (empty: all scale_factor, position interpolation)",
                      check=_positive_numbers),
                Field("longrope_attention_factor", 0.0, "longrope: q and k multiplier; 0: "
                      "sqrt(1 + ln(scale_factor) / ln(original_max_len))", minimum=0.0)),
    "LongRoPE (Phi-3): per-pair factors, short or long by the longest position of a call",
    needs_original_len=True, switches_at_original_len=True, check_dims=_longrope_dims))
ROPE_SCALINGS.register("llama3")(RopeScaling(
    _llama3, (SCALE_FACTOR, ORIGINAL_MAX_LEN, LLAMA3_LOW, LLAMA3_HIGH), "Llama 3.1: keep "
    "short wavelengths, interpolate long ones, blend between", needs_original_len=True,
    check=_llama3_check))


def scaling_fields() -> tuple[Field, ...]:
  """Every field a registered scaling reads, each applying when a scaling that reads it is
  chosen (``model.position.scaling``)."""
  owners: dict[str, list[str]] = {}
  fields: dict[str, Field] = {}
  for name, entry in ROPE_SCALINGS.items():
    for f in entry.fields:
      fields.setdefault(f.name, f)
      owners.setdefault(f.name, []).append(name)
  return tuple(dataclasses.replace(f, applies=_scaling_in(tuple(owners[n])))
               for n, f in fields.items())


def _scaling_in(names: tuple[str, ...]):
  return lambda block: block["scaling"] in names


def scaled_frequencies(rotary_dim: int, theta: float = 10000.0, scaling: str = "none",
                       factor: float = 1.0, original_max_len: int | None = None,
                       seq_len: int | None = None, alpha: float = 1.0,
                       beta: float = 32.0, low_freq_factor: float = 1.0,
                       high_freq_factor: float = 4.0,
                       truncate: bool = True, short_factor=(), long_factor=(),
                       attention_factor: float = 0.0) -> tuple[np.ndarray, float]:
  """(theta'_i float64 ``[rotary_dim/2]``, q/k multiplier sqrt(1/t)) for a RoPE scaling."""
  if scaling not in ROPE_SCALINGS:
    raise ValueError(f"RoPE scaling={scaling!r} is not valid; valid: "
                     f"{', '.join(ROPE_SCALINGS.names())}")
  settings = {"scale_factor": factor, "original_max_len": original_max_len,
              "yarn_alpha": alpha, "yarn_beta": beta, "yarn_truncate": truncate,
              "llama3_low_freq_factor": low_freq_factor,
              "llama3_high_freq_factor": high_freq_factor,
              "longrope_short_factor": tuple(short_factor),
              "longrope_long_factor": tuple(long_factor),
              "longrope_attention_factor": attention_factor}
  entry = ROPE_SCALINGS.get(scaling)
  return entry.frequencies(unscaled_frequencies(rotary_dim, theta), rotary_dim, theta,
                           settings, seq_len)


def rotate_half_split(x, angles, scale=None):
  """Rotate pairs (i, i + r/2) of the first r = 2 * angles.shape[-1] dims; pass the rest through.

  x: [batch, seq, heads, head_dim]; angles: [batch or 1, seq, r/2] (float32);
  scale: optional per-pair multiplier, same shape as angles (xPos).
  """
  half = angles.shape[-1]
  xf = x.astype(jnp.float32)
  rot, rest = xf[..., :2 * half], xf[..., 2 * half:]
  cos, sin = jnp.cos(angles)[:, :, None, :], jnp.sin(angles)[:, :, None, :]
  x1, x2 = rot[..., :half], rot[..., half:]
  out1, out2 = x1 * cos - x2 * sin, x1 * sin + x2 * cos
  if scale is not None:
    s = scale[:, :, None, :]
    out1, out2 = out1 * s, out2 * s
  return jnp.concatenate([out1, out2, rest], axis=-1).astype(x.dtype)


def p_rope_kept(head_dim: int, fraction: float) -> int:
  """p-RoPE (Barbero et al. 2024): how many of the head_dim / 2 frequencies, highest first,
  keep rotating: the largest count <= fraction * head_dim / 2, at least 1."""
  return max(1, int(fraction * (head_dim // 2)))


def rotary_dim(head_dim: int, fraction: float) -> int:
  """Rotated dims for a partial-rotary fraction: the largest even number <= fraction * head_dim."""
  return max(2, int(head_dim * fraction) // 2 * 2)


def xpos_zeta(rotary_dim: int) -> np.ndarray:
  """xPos per-pair decay base zeta_i = (2i + 0.4 d) / (1.4 d), float64 ``[d/2]``."""
  i = np.arange(rotary_dim // 2, dtype=np.float64)
  return (2 * i + 0.4 * rotary_dim) / (1.4 * rotary_dim)


def xpos_scale(positions, rotary_dim: int, scale_base: float = 512.0, sign: float = 1.0):
  """zeta_i^(sign * m / scale_base): float32 ``[..., seq, d/2]``."""
  m = jnp.asarray(positions, jnp.float32)[..., None]
  return jnp.power(xpos_zeta(rotary_dim).astype(np.float32), sign * m / scale_base)
