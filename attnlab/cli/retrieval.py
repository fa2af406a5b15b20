"""``python -m attnlab.retrieval --config=configs/retrieval.py --workdir=runs/retrieval``

Trains each variant on a synthetic retrieval task, then scores answer accuracy by context
length and needle depth; see ``attnlab.engine.retrieval_study``. The same as
``python -m attnlab.sweep`` with ``sweep.runner='retrieval'``.
"""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from attnlab.cli import common
from attnlab.engine import studies


def define_flags():
  config_flags.DEFINE_config_file("config", "configs/retrieval.py", "Retrieval study config.",
                                  lock_config=True)
  common.define_run_flags()
  flags.DEFINE_string("workdir", "runs/retrieval", "Output directory.")


def main(argv):
  del argv
  FLAGS = flags.FLAGS
  results = studies.run(FLAGS.config, FLAGS.workdir, name="retrieval", **common.run_options())
  print(studies.STUDIES.get("retrieval").markdown(results))
  print(f"wrote {FLAGS.workdir}/results.{{json,md,png}}")


if __name__ == "__main__":
  common.run(main, define_flags)
