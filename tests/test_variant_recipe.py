"""The "Adding a variant" recipe holds end to end: the strided pattern and KERPLE (each one
new file) flow, with no edits elsewhere, through the sweep runner, the command line and the
generated field docs."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from helpers import REPO, tiny_config
from helpers import tiny_sweep_config

from attnlab import ConfigError, config_lib, data
from attnlab import workdir as workdir_lib
from attnlab.engine import evaluation, sweeps, training
from attnlab.models import num_params


@pytest.mark.slow
def test_a_sweep_trains_and_evaluates_new_variants(tmp_path):
  config = tiny_sweep_config()
  config.sweep.protocols = ("non_overlapping",)
  config.sweep.factors = (1,)
  config.sweep.variants = {
      "strided": {"model": {"attention": {"pattern": "strided", "stride": 4}}},
      "kerple": {"model": {"position": {"kind": "kerple"}}}}
  records = sweeps.run_sweep(config, tmp_path, progress=False)
  assert {r["variant"] for r in records} == {"strided", "kerple"}
  for name in ("strided", "kerple"):
    cfg, params, step = workdir_lib.restore_params(tmp_path / name)
    assert step == config.train.steps
    rs = {r["eval_length"]: r for r in records if r["variant"] == name}
    # the sweep's figure is the model's own loss on the same windows (a direct evaluation)
    direct = evaluation.evaluate_lengths(cfg, params, data.load_corpus(cfg.data).valid, [16],
                                         max_tokens=config.eval.max_tokens, progress=False)[0]
    assert math.isclose(rs[16]["loss"], direct["loss"], rel_tol=1e-6)
    assert rs[16]["params"] == num_params(params)
  kerple, strided = (workdir_lib.restore_params(tmp_path / n)[1] for n in ("kerple", "strided"))
  # KERPLE adds r1, r2 per head per layer; the strided pattern adds no parameter
  assert num_params(kerple) - num_params(strided) == 2 * 4 * config.model.num_layers
  assert workdir_lib.load_config(tmp_path / "strided").model.attention.stride == 4


def _train_cli(*flags, workdir):
  return subprocess.run(
      [sys.executable, "-m", "attnlab.train", "--config=configs/lm.py:rope",
       f"--workdir={workdir}", *flags], cwd=REPO, capture_output=True, text=True,
      env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"}, timeout=300)


def test_cli_errors_are_one_line_naming_field_and_valid_values(tmp_path):
  bad = _train_cli("--config.model.attention.pattern=strided", "--config.model.attention.stride=0",
                   workdir=tmp_path / "a")
  assert bad.returncode == 2
  assert bad.stderr.strip() == ("error: model.attention.stride=0 must be an integer >= 1 "
                                "(pattern 'strided')")
  assert not (tmp_path / "a").exists()
  typo = _train_cli("--config.train.stepz=5", workdir=tmp_path / "b")
  assert typo.returncode == 2
  lines = typo.stderr.strip().splitlines()
  assert len(lines) == 1 and "Traceback" not in typo.stderr
  assert lines[0].startswith("error: --config.train.stepz: config.train has no field 'stepz'; "
                             "nearest: steps")


def test_field_docs_are_generated_from_the_declarations():
  text = (REPO / "docs" / "variants.md").read_text()
  assert text == config_lib.describe_variants(), \
      "docs/variants.md is stale: python -m attnlab.config_lib > docs/variants.md"
  for field in ("`stride` = `16`", "**`kerple`**", "**`cudnn`**"):
    assert field in text
  assert np.all([name in text for name in ("window", "lsh_buckets", "ring_layout", "theta")])


@pytest.mark.slow
def test_a_workdir_written_before_a_variant_existed_still_resumes_and_evaluates(tmp_path):
  """Fields a variant adds (here: strided's ``stride``) are absent from older config.json
  files; such a run resumes (the field is at its default) and restores."""
  cfg = tiny_config("rope", train__steps=4, train__warmup_steps=1, train__checkpoint_every=2,
                    train__eval_every=4)
  training.train_and_evaluate(cfg, tmp_path, stop_after=2, progress=False)
  saved = json.loads((tmp_path / "config.json").read_text())
  del saved["model"]["attention"]["stride"]                     # as written before strided.py
  (tmp_path / "config.json").write_text(json.dumps(saved))
  result = training.train_and_evaluate(cfg, tmp_path, progress=False)
  assert result["metrics"]["step"] == 4
  assert workdir_lib.restore_params(tmp_path)[0].model.attention.stride == 16
  # a real difference is still refused
  changed = tiny_config("rope", train__steps=4, train__warmup_steps=1, model__d_model=64)
  with pytest.raises(ConfigError, match=r"model.d_model: 32 -> 64"):
    training.train_and_evaluate(changed, tmp_path, progress=False)
