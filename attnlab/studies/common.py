"""Small pieces the registered studies of this package share: per-seed values of a summary
row, their "mean ± sd" text, a plotted mean with its min–max band, and integer checks."""

from __future__ import annotations

import math

import ml_collections

from attnlab.registry import ConfigError


def values(row: dict, metric: str) -> list[float]:
  """The per-seed values of ``metric`` in a summary row (seed order)."""
  return [float(v) for v in row[f"{metric}_values"]]


def mean_sd(vals) -> tuple[float, float]:
  """Mean and sample standard deviation (0 for one value) of ``vals``."""
  vals = [float(v) for v in vals]
  mean = sum(vals) / len(vals)
  if len(vals) < 2:
    return mean, 0.0
  return mean, math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))


def fmt(vals, spec: str = ".3f") -> str:
  """``"mean ± sd"`` of per-seed values (just the value for one seed), as ``studies.spread``
  writes a summary row's metric."""
  vals = list(vals)
  if any(v is None for v in vals) or not vals:
    return "—"
  mean, sd = mean_sd(vals)
  return format(mean, spec) if len(vals) < 2 else f"{format(mean, spec)} ± {format(sd, spec)}"


def band(ax, x, rows: list[dict], metric: str, style: str = "-", **kwargs):
  """Plot the seed mean of ``metric`` over ``rows`` (one per x) and, with several seeds,
  shade between its per-seed min and max. Returns the line."""
  mean = [r[metric] for r in rows]
  line, = ax.plot(x, mean, style, **kwargs)
  if rows and rows[0].get("seeds", 1) > 1:
    ax.fill_between(x, [r[f"{metric}_min"] for r in rows], [r[f"{metric}_max"] for r in rows],
                    color=line.get_color(), alpha=0.15, lw=0)
  return line


def without(config, *blocks: str) -> ml_collections.ConfigDict:
  """A copy of ``config`` without the top-level ``blocks`` (those it has)."""
  c = ml_collections.ConfigDict(config.to_dict())
  for block in blocks:
    if block in c:
      del c[block]
  return c


def check_int(value, field: str, low: int, high: int | None = None, what: str = "") -> None:
  """``value`` an integer in [low, high] (no upper bound when ``high`` is None), else a
  ``ConfigError`` naming ``field``, the value and the valid range."""
  ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
  if ok and high is not None:
    ok = value <= high
  if not ok:
    valid = f">= {low}" if high is None else f"in [{low}, {high}]"
    raise ConfigError(f"{field}={value!r} must be an integer {valid}" + (f" ({what})" if what else ""))


def check_ints(value, field: str, low: int, high: int | None = None, what: str = "") -> None:
  """``value`` a non-empty list of distinct integers, each in [low, high]."""
  if not isinstance(value, (list, tuple)) or not value or len(set(value)) != len(value):
    raise ConfigError(f"{field}={value!r} must be a non-empty list of distinct integers"
                      + (f" ({what})" if what else ""))
  for v in value:
    check_int(v, f"{field} entry", low, high, what)
