"""Every bad config fails before compilation with a message naming field, value and valid choices."""

import pathlib

import pytest
from helpers import tiny_config

from attnlab import ConfigError, config_lib
from attnlab.engine import training as train
from configs import lm


@pytest.mark.parametrize("overrides, pattern", [
    ({"model__attention__kind": "softmaxx"}, r"model.attention.kind='softmaxx'.*valid.*softmax"),
    ({"model__attention__pattern": "diagonal"},
     r"model.attention.pattern='diagonal'.*valid.*causal.*sliding_window"),
    ({"model__attention__impl": "cuda"}, r"model.attention.impl='cuda'.*valid.*auto.*blockwise.*reference.*xla"),
    ({"model__position__kind": "rotary"}, r"model.position.kind='rotary'.*valid.*alibi.*rope"),
    ({"model__norm": "batchnorm"}, r"model.norm='batchnorm'.*layernorm.*rmsnorm"),
    ({"model__mlp": "relu"}, r"model.mlp='relu'.*gelu.*swiglu"),
    ({"model__attention__num_kv_heads": 3},
     r"model.attention.num_kv_heads=3 must divide model.attention.num_heads=4; valid: 1, 2, 4"),
    ({"model__d_model": 30}, r"model.d_model=30 must be divisible by model.attention.num_heads=4"),
    ({"model__attention__num_heads": 0}, r"model.attention.num_heads=0 must be an integer >= 1"),
    ({"data__seq_len": 0}, r"data.seq_len=0 must be an integer >= 1"),
    ({"model__attention__pattern": "full"}, r"model.attention.pattern='full'.*causal language model"),
    ({"model__attention__pattern": "sliding_window", "model__attention__window": 0},
     r"model.attention.window=0 must be an integer >= 1"),
    ({"train__warmup_steps": -1}, r"train.warmup_steps=-1 must be an integer >= 0"),
    ({"train__lr": -1.0}, r"train.lr=-1.0 must be > 0"),
    ({"mesh__tensor": 3}, r"mesh.tensor=3 must divide model.attention.num_heads=4.*valid: 1, 2, 4"),
    ({"mesh__sequence": 5}, r"mesh.sequence=5 must divide data.seq_len=32"),
    ({"mesh__data": 3}, r"train.batch_size=8 must be divisible by mesh.data x mesh.fsdp = 3"),
    ({"mesh__sequence": 2, "model__attention__impl": "xla"},
     r"mesh.sequence=2 shards the sequence, which needs model.attention.impl='ring'"),
    ({"mesh__data": 2}, r"mesh data=2 x fsdp=1 x tensor=1 x sequence=1 has 2 devices but JAX "
                        r"sees 1"),
    ({"model__attention__ring_layout": "spiral"},
     r"model.attention.ring_layout='spiral'.*contiguous, zigzag, striped"),
    ({"data__path": "/no/such/file.txt"}, r"data.path='/no/such/file.txt' is not a readable file"),
    ({"data__path": "", "data__corpus": "wikipedia"}, r"data.corpus='wikipedia'.*builtin"),
    ({"model__position__scaling": "ntk-aware"},
     r"model.position.scaling='ntk-aware'.*valid: dynamic_ntk, linear, llama3, longrope, none, ntk, yarn, yarn_paper"),
    ({"model__position__scale_factor": 0.5}, r"model.position.scale_factor=0.5 must be >= 1"),
    ({"model__position__rotary_fraction": 0.0}, r"model.position.rotary_fraction=0.0 must be in \(0, 1\]"),
    ({"model__position__scaling": "yarn", "model__position__yarn_beta": 0.5},
     r"model.position.yarn_beta=0.5 must exceed model.position.yarn_alpha=1.0"),
])
def test_bad_config_names_field_value_and_valid_choices(overrides, pattern, tmp_path):
  cfg = tiny_config("rope", **overrides)
  with pytest.raises(ConfigError, match=pattern):
    train.train_and_evaluate(cfg, tmp_path / "run", progress=False)
  # nothing was trained, checkpointed or written
  assert not (tmp_path / "run").exists()


def test_learned_table_limit_names_the_field():
  cfg = tiny_config("learned", model__position__max_len=16)   # seq_len 32 > 16
  with pytest.raises(ConfigError, match=r"data.seq_len=32 exceeds model.position.max_len=16"):
    config_lib.resolve(cfg)


def test_learned_table_defaults_to_the_training_length():
  assert config_lib.resolve(tiny_config("learned")).model.position.max_len == 32


@pytest.mark.parametrize("preset", lm.PRESETS)
def test_every_preset_is_valid(preset):
  config = lm.get_config(preset)
  cfg = config_lib.resolve(config)
  expected = {"nope": "none", "baby_gpt": "learned", **{m: "rope" for m in lm.MODERN}}.get(
      preset, preset)
  assert cfg.model.position.kind == expected


def test_unknown_preset_lists_the_valid_ones():
  with pytest.raises(ValueError, match=r"'bogus'.*valid: ") as info:
    lm.get_config("bogus")
  # one preset per registered position scheme (kind 'none' is the preset 'nope'), + baby_gpt
  for name in ("rope", "alibi", "sinusoidal", "nope", "learned", "xpos", "t5", "kerple",
               "baby_gpt"):
    assert name in str(info.value)


@pytest.mark.slow
def test_resuming_with_a_different_config_is_refused(tmp_path):
  train.train_and_evaluate(tiny_config("rope", train__steps=3, train__warmup_steps=1),
                           tmp_path, progress=False)
  with pytest.raises(ConfigError, match=r"model.d_model: 32 -> 64"):
    train.train_and_evaluate(tiny_config("rope", train__steps=3, train__warmup_steps=1,
                                         model__d_model=64), tmp_path, progress=False)


def test_a_failed_start_does_not_block_a_corrected_config(tmp_path):
  good = tiny_config("rope", train__steps=2, train__warmup_steps=1)
  bad = tiny_config("rope", train__steps=2, train__warmup_steps=1, data__seq_len=10**8)
  with pytest.raises(ConfigError, match="data.seq_len=100000000 needs at least"):
    train.train_and_evaluate(bad, tmp_path, progress=False)
  result = train.train_and_evaluate(good, tmp_path, progress=False)
  assert result["metrics"]["step"] == 2


def test_cli_reports_config_errors_without_a_traceback(tmp_path):
  import os
  import subprocess
  import sys
  repo = pathlib.Path(__file__).resolve().parents[1]
  result = subprocess.run(
      [sys.executable, "-m", "attnlab.train", "--config=configs/lm.py:rope",
       f"--workdir={tmp_path}", "--config.model.attention.num_kv_heads=3"],
      cwd=repo, capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert result.returncode != 0
  assert "error: model.attention.num_kv_heads=3 must divide" in result.stderr
  assert "Traceback" not in result.stderr
