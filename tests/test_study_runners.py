"""The registered studies of ``attnlab.studies`` (sinks, induction, streaming) end to end,
through the one entry point ``attnlab.engine.studies.run``: each one's fingerprint config,
cut further to a few seconds, writes its records, summary, tables, plots and provenance,
and one measured value is recomputed here from the trained checkpoint by hand. The
seeds axis: two seeds' summary mean is the mean of their values, and a rerun reuses the
trained runs.
"""

import json

import numpy as np
import pytest

from attnlab.engine import studies

OUTPUTS = ("results.json", "results.md", "results.png", "results.provenance.json")


def _written(path, extra=()):
  for name in OUTPUTS + tuple(extra):
    assert (path / name).stat().st_size > 0, name
  saved = json.loads((path / "results.json").read_text())
  assert set(saved) == {"study", "seeds", "seconds", "records", "summary"}
  return saved


def _tiny(cfg):
  """A study's model and training cut to seconds: 2 layers of width 32, 3 steps of 4 windows."""
  cfg.model.num_layers = 2
  cfg.model.d_model = 32
  cfg.data.seq_len = 32
  cfg.train.steps = cfg.train.eval_every = cfg.train.checkpoint_every = 3
  cfg.train.batch_size = 4
  cfg.train.warmup_steps = 1
  cfg.train.eval_batches = 1
  return cfg


# ----------------------------------------------------------------------------- sinks

def _sinks_config(**sinks):
  from configs import attention_sinks
  cfg = attention_sinks.get_config("bos,fingerprint")
  _tiny(cfg)
  cfg.sinks.schemes = ("none",)
  for k, v in sinks.items():
    cfg.sinks[k] = v
  return cfg


def test_sinks_fingerprint_config():
  from configs import attention_sinks
  cfg = attention_sinks.get_config("fingerprint")
  assert cfg.sweep.runner == "sinks" and cfg.sweep.seeds == 1 and cfg.train.steps <= 60
  assert attention_sinks.get_config().sweep.seeds == 3
  long, bos = attention_sinks.get_config("long"), attention_sinks.get_config("bos,fingerprint")
  assert (long.data.seq_len, long.train.steps, long.sinks.bos) == (128, 2000, -1)
  assert (bos.data.seq_len, bos.sinks.bos, bos.sweep.seeds) == (64, 0, 1)
  with pytest.raises(ValueError, match="unknown argument"):
    attention_sinks.get_config("short")


def test_sinks_study_writes_records_and_measures_the_captured_maps(tmp_path):
  """A marker-led (bos=0) run of the study: a record per (when, k, layer), the marker in
  results.md, the initial sink mass of NoPE (near-uniform maps at a tiny init) close to the
  uniform reference, and the trained ``mean`` of layer 1 equal to the sink mass computed
  here by hand from the trained checkpoint's maps on the same validation windows."""
  from attnlab import config_lib, data
  from attnlab.analysis import capture
  from attnlab.models import build_lm
  from attnlab.studies import sinks
  from attnlab.workdir import restore_params
  cfg = _sinks_config()
  results = studies.run(cfg, tmp_path, progress=False)
  saved = _written(tmp_path)
  assert saved["study"] == "sinks" and saved["seeds"] == [0]
  records = results["records"]
  cells = {(r["when"], r["k"], r["layer"]) for r in records}
  assert cells == {(w, k, l) for w in ("init", "trained") for k in (1, 4) for l in (0, 1)}
  assert len(records) == len(results["summary"]) == 8
  assert all(r["bos"] == 0 and r["variant"] == "none" and r["seed"] == 0 for r in records)
  for r in records:
    uniform = np.mean([r["k"] / (i + 1) for i in range(r["k"], 32)])     # by hand
    assert r["uniform"] == pytest.approx(uniform)
    if r["when"] == "init":
      assert r["mean"] == pytest.approx(uniform, rel=0.05)
  md = (tmp_path / "results.md").read_text()
  assert md.startswith("Every training and validation window starts with byte 0.")
  # the trained mass, by hand: the same windows (bos-led), the checkpoint's maps
  run_cfg, params, step = restore_params(tmp_path / "none")
  assert step == 3
  plain = data.make_batches(config_lib.resolve(sinks.scheme_config(cfg, "none")))
  windows = np.asarray(plain.valid(0)[0])
  windows = np.concatenate([np.zeros((len(windows), 1), windows.dtype), windows[:, :-1]], 1)
  _, maps = capture.capture_attention(build_lm(run_cfg.model), params, windows)
  by_hand = np.asarray(maps[1], np.float64)[:, :, 4:, :4].sum(-1).mean(-1).mean()
  got = next(r for r in records if (r["when"], r["k"], r["layer"]) == ("trained", 4, 1))
  assert got["mean"] == pytest.approx(by_hand, rel=1e-6)


def test_sinks_study_checks_its_block():
  from attnlab.registry import ConfigError
  from attnlab.studies import sinks
  for field, value, match in (("schemes", ("rope", "nope"), "sinks.schemes"),
                              ("first_k", (0,), "sinks.first_k"),
                              ("first_k", (32,), "sinks.first_k"),
                              ("bos", 256, "sinks.bos"),
                              ("eval_batches", 0, "sinks.eval_batches")):
    with pytest.raises(ConfigError, match=match):
      sinks.check(_sinks_config(**{field: value}))


def test_two_seeds_summarize_to_the_mean_of_their_values_and_rerun_reuses_training(tmp_path):
  """sweep.seeds=2: each seed in workdir/seed<s> with its own data and init, the summary's
  mean of a cell is the mean of its two records (and sd, min, max theirs); running again
  retrains nothing and gives the same records."""
  cfg = _sinks_config(first_k=(1,), bos=-1)
  cfg.sweep.seeds = 2
  results = studies.run(cfg, tmp_path, progress=False)
  assert results["seeds"] == [0, 1]
  assert all((tmp_path / f"seed{s}" / "none" / "config.json").is_file() for s in (0, 1))
  records = results["records"]
  assert sorted({r["seed"] for r in records}) == [0, 1]
  assert len(results["summary"]) == len(records) // 2 == 4
  for row in results["summary"]:
    pair = [r for r in records
            if (r["when"], r["k"], r["layer"]) == (row["when"], row["k"], row["layer"])]
    assert [r["seed"] for r in pair] == [0, 1]
    for metric in ("mean", "max_head", "valid_loss"):
      vals = [r[metric] for r in pair]
      assert row[f"{metric}_values"] == vals
      assert row[metric] == pytest.approx((vals[0] + vals[1]) / 2)
      assert row[f"{metric}_sd"] == pytest.approx(abs(vals[0] - vals[1]) / np.sqrt(2))
      assert (row[f"{metric}_min"], row[f"{metric}_max"]) == (min(vals), max(vals))
  trained = [r for r in records if r["when"] == "trained" and r["layer"] == 0]
  assert trained[0]["mean"] != trained[1]["mean"]          # two seeds, two models
  assert "±" in (tmp_path / "results.md").read_text()
  metrics_log = (tmp_path / "seed0" / "none" / "metrics.jsonl").read_text()
  again = studies.run(cfg, tmp_path, progress=False)
  assert (tmp_path / "seed0" / "none" / "metrics.jsonl").read_text() == metrics_log
  strip = lambda rs: [{k: v for k, v in r.items() if k != "train_seconds"} for r in rs]  # noqa: E731
  assert strip(again["records"]) == strip(records)


# ----------------------------------------------------------------------------- induction

def _induction_config():
  from configs import induction as induction_config
  cfg = induction_config.get_config("fingerprint")
  cfg.sweep.variants = {"learned": cfg.sweep.variants.learned.to_dict()}
  cfg.data.seq_len = 32
  cfg.train.steps = cfg.train.checkpoint_every = 2
  cfg.train.eval_every = 1
  cfg.train.batch_size = 4
  cfg.train.warmup_steps = 0
  cfg.induction.eval_batch = 4
  cfg.induction.max_period = 16
  return cfg


def test_induction_fingerprint_config():
  from configs import induction as induction_config
  cfg = induction_config.get_config("fingerprint")
  assert cfg.sweep.runner == "induction" and cfg.sweep.seeds == 1 and cfg.train.steps <= 60
  real = induction_config.get_config()
  assert real.sweep.seeds == 3 and set(real.sweep.variants) == {"learned", "rope"}
  with pytest.raises(ValueError, match="unknown argument"):
    induction_config.get_config("rope")


def test_induction_study_measures_at_init_and_every_evaluation(tmp_path):
  """Two steps measured at 0, 1, 2: at step 0 every head is near-uniform (tiny random
  init), so its induction score is close to the uniform-attention value results.md quotes;
  the final probe loss on the repeat equals the cross-entropy computed here by hand from
  the trained checkpoint on the probe rebuilt by hand; the checkpoint is analysable; a
  rerun reuses the measurements, and a finished run without them is refused."""
  from attnlab.models import build_lm
  from attnlab.workdir import WorkdirError, restore_params
  cfg = _induction_config()
  results = studies.run(cfg, tmp_path, progress=False)
  saved = _written(tmp_path)
  assert saved["study"] == "induction"
  records = results["records"]
  heads = [r for r in records if r["measure"] == "heads"]
  losses = [r for r in records if r["measure"] == "losses"]
  run = [r for r in records if r["measure"] == "run"]
  assert len(heads) == 3 * 2 * 4 and len(losses) == 3 and len(run) == 1
  assert sorted({r["step"] for r in heads}) == [r["step"] for r in losses] == [0, 1, 2]
  assert len(results["summary"]) == len(records)
  period = 16
  uniform = np.mean([1 / (i + 1) for i in range(period, 2 * period)])
  assert run[0]["uniform"] == pytest.approx(uniform)
  np.testing.assert_allclose([r["induction"] for r in heads if r["step"] == 0], uniform,
                             rtol=0.05)
  assert losses[0]["train_loss"] is None and losses[1]["train_loss"] > 0
  assert f"{uniform:.3f}" in (tmp_path / "results.md").read_text()
  # the probe and its repeat loss, by hand
  run_cfg, params, step = restore_params(tmp_path / "learned")
  assert step == 2
  rng = np.random.default_rng([0, 10**6])
  first = np.stack([rng.permutation(127 - 32)[:period] + 32 for _ in range(4)])
  probe = np.concatenate([first, first], 1).astype(np.int32)
  logits = np.asarray(build_lm(run_cfg.model).apply({"params": params}, probe), np.float64)
  logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
      - logits.max(-1, keepdims=True)
  nll = -np.take_along_axis(logp[:, :-1], probe[:, 1:, None], -1)[..., 0]   # predicts i + 1
  assert losses[-1]["loss_repeat"] == pytest.approx(nll[:, period:].mean(), rel=1e-4)
  assert losses[-1]["loss_first"] == pytest.approx(nll[:, :period - 1].mean(), rel=1e-4)
  # reused: the same records without training; without its measurements a run is refused
  again = studies.run(cfg, tmp_path, progress=False)
  assert [r for r in again["records"] if r["measure"] != "run"] == \
      [r for r in records if r["measure"] != "run"]
  (tmp_path / "learned" / "induction_measurements.jsonl").unlink()
  with pytest.raises(WorkdirError, match="lacks the measurements of steps"):
    studies.run(cfg, tmp_path, progress=False)


def test_induction_study_checks_its_block():
  from attnlab.registry import ConfigError
  from attnlab.studies import induction
  for field, value, match in (("max_period", 2, "induction.max_period"),
                              ("token_high", 20, "induction.token_high"),
                              ("eval_batch", 0, "induction.eval_batch"),
                              ("token_low", -1, "induction.token_low")):
    cfg = _induction_config()
    cfg.induction.min_period = 4
    cfg.induction[field] = value
    with pytest.raises(ConfigError, match=match):
      induction.check(cfg)
  cfg = _induction_config()
  cfg.data.seq_len = 33
  with pytest.raises(ConfigError, match="data.seq_len"):
    induction.check(cfg)


# ----------------------------------------------------------------------------- streaming

def _streaming_config():
  from configs import streaming as streaming_config
  cfg = streaming_config.get_config("fingerprint")
  _tiny(cfg)
  cfg.sweep.variants = {"rope": cfg.sweep.variants["rope"]}
  cfg.streaming.stream_length = 96
  cfg.streaming.cache = 32
  cfg.streaming.sinks = (4,)
  cfg.streaming.smooth = 16
  cfg.streaming.sink_query_min = 8
  return cfg


def test_streaming_fingerprint_config():
  from configs import streaming as streaming_config
  cfg = streaming_config.get_config("fingerprint")
  assert cfg.sweep.runner == "streaming" and cfg.sweep.seeds == 1 and cfg.train.steps <= 60
  assert streaming_config.get_config().sweep.seeds == 3
  with pytest.raises(ValueError, match="unknown argument"):
    streaming_config.get_config("long")


def test_streaming_study_reads_streams_through_each_cache(tmp_path):
  """Before the cache fills, every method sees the same tokens at the same positions, so
  all of them have the dense loss there (an identity); after it, the window-only cache
  differs from dense. The dense loss is recomputed by hand in float64 from the checkpoint
  on the streams rebuilt from the validation split."""
  from attnlab import data
  from attnlab.models import build_lm
  from attnlab.workdir import restore_params
  cfg = _streaming_config()
  results = studies.run(cfg, tmp_path, progress=False)
  saved = _written(tmp_path, extra=("attention.png",))
  assert saved["study"] == "streaming"
  nll = {(r["method"], r["positions"]): r["nll"] for r in results["records"]
         if r["measure"] == "nll"}
  methods = {m for m, _ in nll}
  assert methods == {"dense", "recompute", "window", "sinks=4"}
  for m in methods:
    assert nll[m, "0-32"] == pytest.approx(nll["dense", "0-32"], rel=1e-4), m
  assert abs(nll["window", "after_eviction"] - nll["dense", "after_eviction"]) > 1e-4
  run_cfg, params, _ = restore_params(tmp_path / "rope")
  valid = data.load_corpus(run_cfg.data).valid
  starts = np.linspace(0, len(valid) - 97, 2).astype(np.int64)
  windows = np.stack([valid[s:s + 97] for s in starts]).astype(np.int32)
  logits = np.asarray(build_lm(run_cfg.model).apply({"params": params}, windows[:, :-1]),
                      np.float64)
  top = logits.max(-1, keepdims=True)
  logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
  by_hand = -np.take_along_axis(logp, windows[:, 1:, None], -1)[..., 0]
  assert nll["dense", "32-96"] == pytest.approx(by_hand[:, 32:].mean(), rel=1e-4)
  first = [r for r in results["records"] if r["measure"] == "first_token"]
  assert len(first) == 2 and all(0 < r["mean"] <= r["max_head"] <= 1 for r in first)
  assert "sinks=4" in (tmp_path / "results.md").read_text()


def test_streaming_study_checks_its_block():
  from attnlab.registry import ConfigError
  from attnlab.studies import streaming
  for field, value, match in (("cache", 0, "streaming.cache"),
                              ("stream_length", 32, "streaming.stream_length"),
                              ("sinks", (40,), "streaming.sinks"),
                              ("sink_query_min", 64, "streaming.sink_query_min")):
    cfg = _streaming_config()
    cfg.streaming[field] = value
    with pytest.raises(ConfigError, match=match):
      streaming.check(cfg)
