"""``python -m attnlab.tasks_train --config=configs/seq2seq.py:gru_bahdanau --workdir=runs/rev``

Trains one sequence-to-sequence model on an algorithmic task and scores it by input
length; see ``attnlab.engine.tasks``.
"""

from __future__ import annotations

import pathlib

from absl import app, flags
from ml_collections import config_flags

from attnlab.cli import common
from attnlab.engine import tasks


def define_flags():
  config_flags.DEFINE_config_file("config", "configs/seq2seq.py", "Config file.", lock_config=True)
  flags.DEFINE_string("workdir", None, "Output directory.")
  common.define_run_flags()


def main(argv):
  del argv
  FLAGS = flags.FLAGS
  if not FLAGS.workdir:
    raise app.UsageError("--workdir is required")
  records = tasks.train_and_evaluate(FLAGS.config, FLAGS.workdir, **common.run_options())
  for r in records:
    r["variant"] = pathlib.Path(FLAGS.workdir).name
  print(tasks.results_markdown(records))


if __name__ == "__main__":
  common.run(main, define_flags)
