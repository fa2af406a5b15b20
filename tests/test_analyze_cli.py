"""``python -m attnlab.analyze``: outputs agree with the captured maps, bad input is named."""

import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from attnlab import workdir as workdir_lib
from attnlab import config_lib
from attnlab.analysis import report as analyze
from attnlab.engine import training as train
from attnlab.analysis import capture, metrics
from attnlab.models import TransformerLM
from attnlab.registry import ConfigError
from helpers import REPO, tiny_config

TEXT = "def f(x):\n  return <script>alert(1)</script> & x"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A training workdir in the trainer's layout (config.json + an orbax checkpoint of the
  initial state), written without compiling a training step; learned positions (limit 32)."""
  workdir = tmp_path_factory.mktemp("analyze") / "learned"
  workdir.mkdir()
  cfg = config_lib.resolve(tiny_config("learned", data__seq_len=64))
  (workdir / "config.json").write_text(cfg.to_json())
  checkpointer = workdir_lib.Checkpointer(workdir / "checkpoints", 1)
  checkpointer.save(3, train.init_state(TransformerLM(cfg.model), train.make_optimizer(cfg.train),
                                        cfg))
  checkpointer.close()
  return workdir


@pytest.mark.slow
def test_cli_writes_maps_metrics_and_viewer(workdir, tmp_path):
  out = tmp_path / "out"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-m", "attnlab.analyze", f"--workdir={workdir}",
                           f"--text={TEXT}", f"--out={out}", "--induction_batch=2"],
                          cwd=REPO, env=env, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr[-3000:]
  # oracle: the maps captured in this process, scored by the metric formulas
  cfg, model, params, step = capture.restore_model(workdir)
  tokens = np.frombuffer(TEXT.encode(), np.uint8).astype(np.int32)[None]
  _, maps = capture.capture_attention(model, params, tokens)          # [L, 1, H, n, n]
  saved = json.loads((out / "metrics.json").read_text())
  assert saved["step"] == step == 3 and len(saved["heads"]) == 2 * 4
  for r in saved["heads"]:
    head = maps[r["layer"], 0, r["head"]]
    n = head.shape[0]
    assert r["previous_token"] == pytest.approx(np.mean([head[i, i - 1] for i in range(1, n)]),
                                                abs=1e-6)
    assert r["sink_mass"] == pytest.approx(head[1:, 0].mean(), abs=1e-6)
    assert r["diagonal"] == pytest.approx(np.trace(head) / n, abs=1e-6)
  # the induction score is measured on repeated random printable bytes
  period = saved["induction_period"]
  rep = metrics.induction_tokens(np.random.default_rng(0), 2, period, 127, 32)
  _, rep_maps = capture.capture_attention(model, params, rep)
  rows = np.arange(period, 2 * period)
  expected = rep_maps[:, :, :, rows, rows - period + 1].mean((1, 3))  # [L, H]
  for r in saved["heads"]:
    assert r["induction"] == pytest.approx(expected[r["layer"], r["head"]], abs=1e-6)
  # viewer: the page's data are the captured maps and the token text, HTML-safe
  page = (out / "viewer.html").read_text(encoding="utf-8")
  payload = json.loads(re.search(r'type="application/json">(.*?)</script>', page, re.S).group(1))
  np.testing.assert_allclose(payload["weights"], maps[:, 0], atol=6e-5)
  assert "".join(payload["tokens"]) == TEXT.replace("\n", "\\n")
  assert page.count("<script") == 2
  # PNGs: the grid and one per head, real images
  pngs = sorted(p.name for p in (out / "heads").glob("*.png"))
  assert pngs == sorted(f"L{l}_H{h}.png" for l in range(2) for h in range(4))
  for png in [out / "attention_grid.png", *(out / "heads").glob("*.png")]:
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert "| layer | head | entropy |" in (out / "metrics.md").read_text()


def test_bad_input_names_the_argument(workdir, tmp_path):
  with pytest.raises(ConfigError, match=r"--workdir='/nonexistent/run' is not a training workdir"):
    analyze.analyze("/nonexistent/run", "abc", tmp_path)
  with pytest.raises(ConfigError, match=r"--text='' is empty"):
    analyze.analyze(workdir, "", tmp_path)
  with pytest.raises(ConfigError, match=r"--text has 65 tokens .* limit of 64 \(data.seq_len"):
    analyze.analyze(workdir, "x" * 65, tmp_path)
  with pytest.raises(ConfigError, match=r"--out is required"):
    analyze.analyze(workdir, "abc", "")


def test_maps_unavailable_for_recurrent_models():
  cfg = tiny_config("rope", model__arch="rnn")
  with pytest.raises(capture.CaptureUnavailable, match="model.arch='rnn' has no attention layers"):
    capture.check_capturable(cfg.model)


def test_cli_exit_message_for_a_missing_workdir(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-m", "attnlab.analyze", "--workdir=/no/such/dir",
                           "--text=abc", f"--out={tmp_path}"], cwd=REPO, env=env,
                          capture_output=True, text=True)
  assert result.returncode != 0
  assert "error: --workdir='/no/such/dir' is not a training workdir" in result.stderr
  assert not pathlib.Path(tmp_path, "metrics.json").exists()
