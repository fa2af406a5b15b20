"""RoPE frequency scalings for length extrapolation, partial rotary, and xPos.

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
- ``llama3`` (Meta's Llama 3.1): with wavelengths lambda_i, ``low = L_train / lf`` and
  ``high = L_train / hf`` (lf, hf = ``llama3_low_freq_factor`` 1, ``llama3_high_freq_factor``
  4): lambda_i < high keeps theta_i, lambda_i > low takes theta_i / s, and in between
  ``smooth = (L_train / lambda_i - lf) / (hf - lf)``,
  ``theta'_i = (1 - smooth) theta_i / s + smooth theta_i``. No temperature.

xPos (Sun et al. 2022): RoPE with per-pair scale zeta_i = (2i + 0.4 d) / (1.4 d);
queries are multiplied by zeta^(m / scale_base), keys by zeta^(-m / scale_base).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

ROPE_SCALINGS = ("none", "linear", "ntk", "dynamic_ntk", "yarn", "yarn_paper", "llama3")


def _frequencies(rotary_dim: int, theta: float) -> np.ndarray:
  return theta ** (-np.arange(0, rotary_dim, 2, dtype=np.float64) / rotary_dim)


def yarn_correction_range(rotary_dim: int, theta: float, original_max_len: int,
                          alpha: float, beta: float) -> tuple[int, int]:
  """(low, high) dims of YaRN's ramp as the authors' code finds them (see the module doc)."""
  def dim(rotations):
    return rotary_dim * math.log(original_max_len / (rotations * 2 * math.pi)) / (
        2 * math.log(theta))
  return max(math.floor(dim(beta)), 0), min(math.ceil(dim(alpha)), rotary_dim - 1)


def yarn_mscale(factor: float) -> float:
  """YaRN's q and k multiplier sqrt(1/t) = 0.1 ln(s) + 1 (1 for s <= 1)."""
  return 1.0 if factor <= 1 else 0.1 * math.log(factor) + 1.0


def scaled_frequencies(rotary_dim: int, theta: float = 10000.0, scaling: str = "none",
                       factor: float = 1.0, original_max_len: int | None = None,
                       seq_len: int | None = None, alpha: float = 1.0,
                       beta: float = 32.0, low_freq_factor: float = 1.0,
                       high_freq_factor: float = 4.0) -> tuple[np.ndarray, float]:
  """(theta'_i float64 ``[rotary_dim/2]``, q/k multiplier sqrt(1/t)) for a RoPE scaling."""
  if scaling not in ROPE_SCALINGS:
    raise ValueError(f"RoPE scaling={scaling!r} is not valid; valid: {', '.join(ROPE_SCALINGS)}")
  d = rotary_dim
  freqs = _frequencies(d, theta)
  if scaling == "none":
    return freqs, 1.0
  if scaling == "linear":
    return freqs / factor, 1.0
  if scaling == "ntk":
    return _frequencies(d, theta * factor ** (d / (d - 2))), 1.0
  if scaling == "dynamic_ntk":
    length = max(seq_len, original_max_len)
    grown = factor * length / original_max_len - (factor - 1)
    return _frequencies(d, theta * grown ** (d / (d - 2))), 1.0
  if scaling == "yarn":
    low, high = yarn_correction_range(d, theta, original_max_len, alpha, beta)
    ramp = np.clip((np.arange(d // 2, dtype=np.float64) - low)
                   / ((high + 0.001 if high == low else high) - low), 0.0, 1.0)
    return ramp * freqs / factor + (1 - ramp) * freqs, yarn_mscale(factor)
  if scaling == "llama3":
    wavelength = 2 * math.pi / freqs
    smooth = np.clip((original_max_len / wavelength - low_freq_factor)
                     / (high_freq_factor - low_freq_factor), 0.0, 1.0)
    return (1 - smooth) * freqs / factor + smooth * freqs, 1.0
  ratio = original_max_len / (2 * math.pi / freqs)           # yarn_paper
  gamma = np.clip((ratio - alpha) / (beta - alpha), 0.0, 1.0)
  return (1 - gamma) * freqs / factor + gamma * freqs, yarn_mscale(factor)


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
