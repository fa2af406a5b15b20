"""A self-contained interactive HTML viewer of attention maps.

One file, no network resources: the maps travel as JSON inside the page (with ``<``,
``>`` and ``&`` escaped so no token text can close the script element), and the script
writes token text only through ``textContent``, so ``<script>`` in the text shows as text.
"""

from __future__ import annotations

import html
import json
import pathlib

import numpy as np

_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
#controls { margin-bottom: 1em; }
#tokens { font-family: monospace; font-size: 15px; line-height: 2.1; max-width: 70em; }
.tok { padding: 2px 1px; margin: 0 1px; border: 1px solid #ddd; border-radius: 3px;
       cursor: pointer; white-space: pre; }
.tok.query { outline: 2px solid #d62728; }
#info { margin: 1em 0; min-height: 1.5em; font-family: monospace; }
#map { border: 1px solid #ccc; image-rendering: pixelated; }
"""

_SCRIPT = r"""
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("attn-data").textContent);
  var layerSel = document.getElementById("layer"), headSel = document.getElementById("head");
  var tokensDiv = document.getElementById("tokens"), info = document.getElementById("info");
  var canvas = document.getElementById("map"), ctx = canvas.getContext("2d");
  var n = data.tokens.length, spans = [], current = -1;

  function option(select, value) {
    var o = document.createElement("option");
    o.value = String(value); o.textContent = String(value); select.appendChild(o);
  }
  for (var l = 0; l < data.num_layers; l++) option(layerSel, l);
  for (var h = 0; h < data.num_heads; h++) option(headSel, h);

  function weights() { return data.weights[+layerSel.value][+headSel.value]; }

  function shade(span, w) {
    span.style.backgroundColor = "rgba(31, 119, 180, " + Math.min(1, w).toFixed(3) + ")";
    span.style.color = w > 0.5 ? "#fff" : "#222";
  }

  function showQuery(i) {
    current = i;
    var row = weights()[i], best = 0;
    for (var j = 0; j < n; j++) {
      shade(spans[j], row[j]);
      spans[j].classList.toggle("query", j === i);
      if (row[j] > row[best]) best = j;
    }
    info.textContent = "layer " + layerSel.value + ", head " + headSel.value + ": token " + i +
        " " + JSON.stringify(data.tokens[i]) + " attends most to token " + best + " " +
        JSON.stringify(data.tokens[best]) + " (weight " + row[best].toFixed(3) + ")";
    drawMap();
  }

  function drawMap() {
    var w = weights(), cell = Math.max(2, Math.floor(480 / n));
    canvas.width = canvas.height = cell * n;
    for (var i = 0; i < n; i++) {
      for (var j = 0; j < n; j++) {
        var v = Math.round(255 * (1 - Math.min(1, w[i][j])));
        ctx.fillStyle = "rgb(" + v + "," + v + ",255)";
        ctx.fillRect(j * cell, i * cell, cell, cell);
      }
    }
    if (current >= 0) {
      ctx.strokeStyle = "#d62728"; ctx.lineWidth = 1;
      ctx.strokeRect(0.5, current * cell + 0.5, n * cell - 1, cell - 1);
    }
  }

  data.tokens.forEach(function (text, i) {
    var span = document.createElement("span");
    span.className = "tok"; span.textContent = text; span.title = "token " + i;
    span.addEventListener("mouseover", function () { showQuery(i); });
    tokensDiv.appendChild(span); spans.push(span);
  });
  canvas.addEventListener("mousemove", function (e) {
    var i = Math.floor(e.offsetY / (canvas.height / n));
    if (i >= 0 && i < n && i !== current) showQuery(i);
  });
  layerSel.addEventListener("change", function () { showQuery(Math.max(current, 0)); });
  headSel.addEventListener("change", function () { showQuery(Math.max(current, 0)); });
  showQuery(n - 1);
  document.body.setAttribute("data-ready", "1");
})();
"""


def _script_safe_json(obj) -> str:
  """JSON that cannot end a ``<script>`` element or open a comment inside it."""
  text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
  return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def viewer_html(maps: np.ndarray, tokens: list[str], title: str = "attention") -> str:
  """The page for maps [layers, heads, q, k] over ``tokens`` (one display string each)."""
  layers, heads, nq, nk = maps.shape
  if not nq == nk == len(tokens):
    raise ValueError(f"viewer_html: maps {maps.shape} do not match {len(tokens)} tokens")
  payload = {"num_layers": layers, "num_heads": heads, "tokens": list(tokens),
             "weights": np.round(np.asarray(maps, np.float64), 4).tolist()}
  return (
      "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
      f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
      f"<h1>{html.escape(title)}</h1>\n"
      "<div id=\"controls\"><label>layer <select id=\"layer\"></select></label>\n"
      "<label>head <select id=\"head\"></select></label>\n"
      "<span>— hover a token (or a row of the map) to see where it attends</span></div>\n"
      "<div id=\"tokens\"></div>\n<div id=\"info\"></div>\n<canvas id=\"map\"></canvas>\n"
      f"<script id=\"attn-data\" type=\"application/json\">{_script_safe_json(payload)}</script>\n"
      f"<script>{_SCRIPT}</script>\n</body>\n</html>\n")


def write_viewer(maps: np.ndarray, tokens: list[str], path, title: str = "attention") -> pathlib.Path:
  """Write ``viewer_html`` to ``path`` (UTF-8)."""
  path = pathlib.Path(path)
  path.write_text(viewer_html(maps, tokens, title), encoding="utf-8")
  return path
