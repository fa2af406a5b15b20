"""The experiment runner: variants, protocols, result files, resume after a kill, bad entries."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from helpers import REPO, tiny_sweep_config

from attnlab import workdir as workdir_lib
from attnlab import ConfigError, data
from attnlab.engine import evaluation as evaluate
from attnlab.engine import sweeps as sweep


def test_sliding_windows_score_each_token_once_with_full_context():
  tokens = np.arange(200) % 256
  inputs, targets, weights = data.sliding_windows(tokens, length=32, stride=8)
  scored = targets[weights > 0]
  assert scored.tolist() == list(range(1, 1 + len(scored)))        # each target once, in order
  for w in range(1, len(inputs)):                                   # later windows: >= 24 of context
    first_scored = np.flatnonzero(weights[w])[0]
    assert first_scored == 24 and inputs[w, 0] == 8 * w


def test_sweep_results_equal_direct_evaluation(tmp_path):
  config = tiny_sweep_config()
  config.sweep.factors = (1, 2)                # two lengths: each compiles its evaluation
  records = sweep.run_sweep(config, tmp_path, progress=False)
  assert {(r["variant"], r["eval_mode"]) for r in records} == {
      (v, m) for v in ("rope", "alibi") for m in ("non_overlapping", "sliding")}
  assert sorted({r["eval_length"] for r in records}) == [16, 32]
  for name in ("rope", "alibi"):
    cfg, params, _ = workdir_lib.restore_params(tmp_path / name)
    assert cfg.model.position.kind == name
    tokens = data.load_corpus(cfg.data).valid
    direct = evaluate.evaluate_lengths(cfg, params, tokens, [16, 32], mode="sliding",
                                       stride=8, max_tokens=128, progress=False)
    got = [r for r in records if r["variant"] == name and r["eval_mode"] == "sliding"]
    # exact: the sweep calls evaluate_lengths with these arguments on the parameters it saved,
    # so the same program scores the same windows
    assert [r["loss"] for r in got] == [r["loss"] for r in direct]
  saved = json.loads((tmp_path / "results.json").read_text())
  assert saved["study"] == "lm" and saved["seeds"] == [0] and saved["records"] == records
  assert all(r["seed"] == 0 for r in records)
  # one seed: the summary's mean is the value itself and its spread is zero
  for row in saved["summary"]:
    rec = next(r for r in records if all(r[k] == row[k] for k in ("variant", "eval_mode",
                                                                     "eval_length")))
    assert row["ppl"] == rec["ppl"] and row["ppl_sd"] == 0 and row["ppl_values"] == [rec["ppl"]]
  written_by = json.loads((tmp_path / "results.provenance.json").read_text())["provenance"]
  assert written_by["jax"] == jax.__version__ and written_by["machine"]["cores"] == os.cpu_count()
  csv_lines = (tmp_path / "results.csv").read_text().splitlines()
  assert csv_lines[0].startswith("seed,variant,eval_length,eval_mode,loss,ppl,bpb")
  assert len(csv_lines) == 1 + len(records)
  md = (tmp_path / "results.md").read_text()
  assert "| variant | params | L=16 | L=32 |" in md and "**sliding** (stride 8)" in md
  assert (tmp_path / "results.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow   # ~90 s on 2 cores; resume is in the default suite via test_train
def test_killed_sweep_resumes_without_retraining_finished_variants(tmp_path):
  args = ["--config=configs/extrapolation.py:alibi,nope", "--config.model.num_layers=1",
          "--config.model.d_model=32", "--config.data.seq_len=16", "--config.train.steps=150",
          "--config.train.warmup_steps=1", "--config.train.checkpoint_every=10",
          "--config.train.eval_every=150", "--config.train.eval_batches=1",
          "--config.eval.max_tokens=128", "--config.sweep.factors=(1, 2)", "--config.sweep.stride=8"]
  args.append("--config.data.corpus=tinyshakespeare")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  cmd = lambda d: [sys.executable, "-m", "attnlab.sweep", f"--workdir={d}", *args]  # noqa: E731
  subprocess.run(cmd(tmp_path / "straight"), cwd=REPO, env=env, check=True, capture_output=True)
  proc = subprocess.Popen(cmd(tmp_path / "killed"), cwd=REPO, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  # kill once the first variant has finished and the second has started checkpointing
  first, second = "alibi", "nope"          # variants run in the config's (sorted) order
  deadline = time.time() + 300
  def steps(name):
    d = tmp_path / "killed" / name / "checkpoints"
    return [int(p.name) for p in d.iterdir() if p.name.isdigit()] if d.exists() else []
  while time.time() < deadline and not steps(second):
    time.sleep(0.2)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert max(steps(first)) == 150 and max(steps(second)) < 150
  finished_metrics = (tmp_path / "killed" / first / "metrics.jsonl").read_text()
  result = subprocess.run(cmd(tmp_path / "killed"), cwd=REPO, env=env, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr[-2000:]
  assert f"{first}: resuming from the checkpoint at step 150" in result.stdout
  assert (tmp_path / "killed" / first / "metrics.jsonl").read_text() == finished_metrics
  straight = json.loads((tmp_path / "straight" / "results.json").read_text())
  killed = json.loads((tmp_path / "killed" / "results.json").read_text())
  assert killed == straight


def test_bad_sweep_entries_name_the_field_before_training(tmp_path):
  config = tiny_sweep_config()
  config.sweep.variants = {"rope": {"model": {"positon": {"kind": "rope"}}}}
  with pytest.raises(ConfigError, match=r"sweep.variants.rope.model.positon: no such config field"):
    sweep.run_sweep(config, tmp_path, progress=False)
  config = tiny_sweep_config()
  config.sweep.variants = {"ok": {"model": {"position": {"kind": "rope"}}},
                           "bad": {"model": {"attention": {"num_kv_heads": 3}}}}
  with pytest.raises(ConfigError, match=r"sweep.variants.bad: model.attention.num_kv_heads=3 must divide"):
    sweep.run_sweep(config, tmp_path, progress=False)
  config = tiny_sweep_config()
  config.sweep.protocols = ("non_overlapping", "strided")
  with pytest.raises(ConfigError, match=r"sweep.protocols: 'strided' is not valid; valid: non_overlapping, sliding"):
    sweep.run_sweep(config, tmp_path, progress=False)
  assert not any(tmp_path.iterdir())      # nothing was trained


@pytest.mark.slow
def test_learned_variant_beyond_its_table_fails_before_training(tmp_path):
  config = tiny_sweep_config()
  config.sweep.variants = {"rope": {"model": {"position": {"kind": "rope"}}},
                           "learned": {"model": {"position": {"kind": "learned"}}}}
  with pytest.raises(ConfigError, match=r"sweep.variants.learned: evaluation length=64 exceeds "
                                        r"model.position.max_len=16"):
    sweep.run_sweep(config, tmp_path, progress=False)
  assert not any(tmp_path.iterdir())
  # a table that covers 4x the training length works
  config.sweep.variants = {"learned": {"model": {"position": {"kind": "learned",
                                                              "max_len": 64}}}}
  records = sweep.run_sweep(config, tmp_path, progress=False)
  assert {r["variant"] for r in records} == {"learned"}


def test_extrapolation_config_selects_variants_by_name():
  from configs import extrapolation
  assert sorted(extrapolation.get_config().sweep.variants) == ["alibi", "fox", "nope", "rope",
                                                                "sinusoidal"]
  picked = extrapolation.get_config("rope, alibi").sweep.variants
  assert sorted(picked) == ["alibi", "rope"]
  assert picked.alibi.model.position.kind == "alibi"
  with pytest.raises(ValueError, match=r"unknown variant\(s\) \['xpos'\]; valid: alibi, fox, "
                                       r"nope, rope, sinusoidal"):
    extrapolation.get_config("rope,xpos")
  ablation = extrapolation.get_config("documents")
  assert sorted(ablation.sweep.variants) == ["with_document_mask", "without_document_mask"]
  assert ablation.sweep.variants.with_document_mask.data.documents is True
  assert ablation.sweep.seeds == 3 and ablation.sweep.score_documents == "always"
