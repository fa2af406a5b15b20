"""PNG heatmaps of attention maps (matplotlib, Agg backend)."""

from __future__ import annotations

import pathlib

import numpy as np


def token_label(token: int) -> str:
  """A short printable label for a byte token: the character, or an escape for others."""
  names = {10: "\\n", 9: "\\t", 13: "\\r", 32: "␣"}
  if token in names:
    return names[token]
  if 32 < token < 127:
    return chr(token)
  return f"\\x{token:02x}"


def _plain(label: str) -> str:
  """Escape ``$`` so matplotlib never reads a label as mathtext."""
  return label.replace("$", r"\$")


def plot_grid(maps: np.ndarray, path, title: str = "") -> pathlib.Path:
  """One small heatmap per (layer, head). maps: [layers, heads, q, k]; rows are layers."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  layers, heads = maps.shape[:2]
  fig, axes = plt.subplots(layers, heads, figsize=(2.2 * heads, 2.2 * layers), squeeze=False)
  for l in range(layers):
    for h in range(heads):
      ax = axes[l, h]
      ax.imshow(maps[l, h], cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
      ax.set_xticks([])
      ax.set_yticks([])
      ax.set_title(f"L{l} H{h}", fontsize=8)
  fig.suptitle(_plain(title), fontsize=10)
  fig.supxlabel("key position")
  fig.supylabel("query position")
  fig.tight_layout()
  path = pathlib.Path(path)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def plot_head(weights: np.ndarray, labels: list[str], path, title: str = "") -> pathlib.Path:
  """One head's map [q, k] with token labels on both axes and a colour bar."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  n = len(labels)
  size = min(18.0, max(4.0, 0.2 * n + 2.0))
  fig, ax = plt.subplots(figsize=(size + 1.0, size))
  image = ax.imshow(weights, cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
  plain = [_plain(s) for s in labels]
  ax.set_xticks(range(n), plain, rotation=90, fontsize=7, fontfamily="monospace")
  ax.set_yticks(range(n), plain, fontsize=7, fontfamily="monospace")
  ax.set_xlabel("key (attended) token")
  ax.set_ylabel("query token")
  ax.set_title(_plain(title))
  fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="attention weight")
  fig.tight_layout()
  path = pathlib.Path(path)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
