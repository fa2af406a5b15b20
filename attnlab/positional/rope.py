"""RoPE frequency scalings for length extrapolation, partial rotary, and xPos.

Formulas from the YaRN paper (Peng et al. 2023), with s = L_new / L_train and
wavelength lambda_i = 2 pi / theta_i:

- ``linear`` (position interpolation, Chen et al. 2023): m -> m / s, i.e. theta_i / s.
- ``ntk``: base b -> b * s^(d / (d - 2)); positions unchanged.
- ``dynamic_ntk``: ``ntk`` with s = max(1, l / L_train) from the current length l.
- ``yarn``: NTK-by-parts, r_i = L_train / lambda_i,
  gamma_i = clip((r_i - alpha) / (beta - alpha), 0, 1),
  theta'_i = (1 - gamma_i) theta_i / s + gamma_i theta_i; plus an attention
  temperature t with sqrt(1/t) = 0.1 ln(s) + 1 (q and k are each multiplied by sqrt(1/t)).

xPos (Sun et al. 2022): RoPE with per-pair scale zeta_i = (2i + 0.4 d) / (1.4 d);
queries are multiplied by zeta^(m / scale_base), keys by zeta^(-m / scale_base).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

ROPE_SCALINGS = ("none", "linear", "ntk", "dynamic_ntk", "yarn")


def _frequencies(rotary_dim: int, theta: float) -> np.ndarray:
  return theta ** (-np.arange(0, rotary_dim, 2, dtype=np.float64) / rotary_dim)


def scaled_frequencies(rotary_dim: int, theta: float = 10000.0, scaling: str = "none",
                       factor: float = 1.0, original_max_len: int | None = None,
                       seq_len: int | None = None, alpha: float = 1.0,
                       beta: float = 32.0) -> tuple[np.ndarray, float]:
  """(theta'_i float64 ``[rotary_dim/2]``, q/k multiplier sqrt(1/t)) for a RoPE scaling."""
  if scaling not in ROPE_SCALINGS:
    raise ValueError(f"RoPE scaling={scaling!r} is not valid; valid: {', '.join(ROPE_SCALINGS)}")
  d = rotary_dim
  if scaling == "none":
    return _frequencies(d, theta), 1.0
  if scaling == "linear":
    return _frequencies(d, theta) / factor, 1.0
  if scaling == "ntk":
    return _frequencies(d, theta * factor ** (d / (d - 2))), 1.0
  if scaling == "dynamic_ntk":
    s = max(1.0, seq_len / original_max_len)
    return _frequencies(d, theta * s ** (d / (d - 2))), 1.0
  freqs = _frequencies(d, theta)                 # yarn
  ratio = original_max_len / (2 * math.pi / freqs)
  gamma = np.clip((ratio - alpha) / (beta - alpha), 0.0, 1.0)
  return (1 - gamma) * freqs / factor + gamma * freqs, 0.1 * math.log(factor) + 1.0


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
