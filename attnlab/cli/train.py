"""``python -m attnlab.train --config=configs/lm.py:rope --workdir=runs/rope [--config.x=y ...]``

Trains (or resumes) the run in ``--workdir``; see ``attnlab.engine.training``.
"""

from __future__ import annotations

import json

from absl import app, flags
from ml_collections import config_flags

from attnlab import parallel
from attnlab.cli import common
from attnlab.engine import training


def define_flags():
  config_flags.DEFINE_config_file(
      "config", None, "Config file, e.g. configs/lm.py:rope; override any field with "
      "--config.a.b=value (each variant's fields: docs/variants.md or "
      "python -m attnlab.config_lib).", lock_config=True)
  flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")
  common.define_run_flags()


def main(argv):
  del argv
  FLAGS = flags.FLAGS
  if FLAGS.config is None or not FLAGS.workdir:
    raise app.UsageError("--config and --workdir are required")
  try:
    parallel.initialize_distributed(FLAGS.config)
    result = training.train_and_evaluate(FLAGS.config, FLAGS.workdir, **common.run_options())
  except training.TrainingDiverged as e:
    common.fail(str(e))
  print(json.dumps(result["metrics"]))


if __name__ == "__main__":
  common.run(main, define_flags)
