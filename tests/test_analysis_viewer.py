"""The HTML viewer: self-contained, opens in headless Chromium without errors, and shows
token text (``<script>`` included) as text.

Chromium is looked up on PATH (``chromium``, ``chromium-browser``, ``google-chrome``); the
browser test is skipped, saying so, where none is installed.
"""

import html
import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from attnlab.analysis import viewer

# Installed by the test setup on Debian (apt-get install chromium); absent on CI machines.
BROWSER = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")
                if shutil.which(b)), None)

EVIL = "<script>alert(1)</script>"

# Injected at the top of <head> by the test only: records errors and alerts, then hovers
# token HOVER and reports what the page shows in a <pre id="test-report">.
PROBE = """<script>
var report = {errors: [], alerted: false};
window.onerror = function (msg) { report.errors.push(String(msg)); };
window.alert = function () { report.alerted = true; };
window.addEventListener("load", function () {
  var spans = document.querySelectorAll("#tokens .tok");
  spans[HOVER].dispatchEvent(new MouseEvent("mouseover", {bubbles: true}));
  report.ready = document.body.getAttribute("data-ready");
  report.tokens = Array.prototype.map.call(spans, function (s) { return s.textContent; });
  report.alphas = Array.prototype.map.call(spans, function (s) { return s.style.backgroundColor; });
  report.info = document.getElementById("info").textContent;
  report.scripts = document.querySelectorAll("script").length;
  report.layers = document.getElementById("layer").options.length;
  report.heads = document.getElementById("head").options.length;
  var pre = document.createElement("pre"); pre.id = "test-report";
  pre.textContent = JSON.stringify(report); document.body.appendChild(pre);
});
</script>"""


def _previous_token_maps(n: int, layers: int = 2, heads: int = 3) -> np.ndarray:
  """[layers, heads, n, n]: every head attends to the previous token (row 0 to itself)."""
  p = np.zeros((n, n))
  p[0, 0] = 1.0
  p[np.arange(1, n), np.arange(n - 1)] = 1.0
  return np.broadcast_to(p, (layers, heads, n, n)).copy()


def _tokens():
  return ["a", EVIL, "</script><script>alert(2)</script>", "&amp;", "b", "\"q\"", "z"]


def test_page_is_self_contained_and_escapes_token_text():
  tokens = _tokens()
  page = viewer.viewer_html(_previous_token_maps(len(tokens)), tokens, title=f"t {EVIL}")
  # no network resources: no src/href attributes and no URLs at all
  assert not re.search(r"\b(src|href)\s*=", page)
  assert "http://" not in page and "https://" not in page
  # exactly the two script elements the viewer writes; token text never opens another
  assert page.count("<script") == 2 and page.count("</script>") == 2
  assert html.escape(f"t {EVIL}") in page
  data = re.search(r'<script id="attn-data" type="application/json">(.*?)</script>', page, re.S)
  payload = json.loads(data.group(1))
  assert payload["tokens"] == tokens
  np.testing.assert_allclose(payload["weights"], _previous_token_maps(len(tokens)))


def test_viewer_rejects_maps_that_do_not_match_the_tokens():
  with pytest.raises(ValueError, match="do not match 3 tokens"):
    viewer.viewer_html(_previous_token_maps(4), ["a", "b", "c"])


@pytest.mark.skipif(BROWSER is None, reason="no chromium/chromium-browser/google-chrome on PATH "
                                            "(Debian: apt-get install chromium)")
def test_viewer_in_headless_chromium(tmp_path):
  tokens = _tokens()
  hover = 4
  page = viewer.viewer_html(_previous_token_maps(len(tokens)), tokens, title=EVIL)
  page = page.replace("<head>\n", "<head>\n" + PROBE.replace("HOVER", str(hover)) + "\n", 1)
  path = tmp_path / "viewer.html"
  path.write_text(page, encoding="utf-8")
  result = subprocess.run(
      [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
       f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
       "--virtual-time-budget=3000", "--dump-dom", path.as_uri()],
      capture_output=True, text=True, timeout=90)
  assert result.returncode == 0, result.stderr[-2000:]
  console = [line for line in result.stderr.splitlines() if "CONSOLE" in line]
  assert not [line for line in console if "Uncaught" in line or "Error" in line], console
  found = re.search(r'<pre id="test-report">(.*?)</pre>', result.stdout, re.S)
  assert found, result.stdout[-2000:]
  report = json.loads(html.unescape(found.group(1)))
  assert report["errors"] == [] and report["alerted"] is False
  assert report["ready"] == "1"
  assert report["scripts"] == 3                   # the probe and the viewer's two
  assert report["tokens"] == tokens               # "<script>..." shown as text
  assert (report["layers"], report["heads"]) == (2, 3)
  # hovering token 4 of a previous-token head lights token 3 fully and nothing else
  assert report["alphas"][hover - 1] == "rgb(31, 119, 180)"
  assert all(a == "rgba(31, 119, 180, 0)" for j, a in enumerate(report["alphas"]) if j != hover - 1)
  assert f"token {hover} " in report["info"] and f"attends most to token {hover - 1} " in report["info"]
  # and the page's own markup holds no element made from token text
  assert "<script>alert(1)</script>" not in result.stdout.split('<pre id="test-report">')[0].split(
      '<script id="attn-data"')[0]
