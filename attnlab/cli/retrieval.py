"""``python -m attnlab.retrieval --config=configs/retrieval.py --workdir=runs/retrieval``

Trains each variant on a synthetic retrieval task, then scores answer accuracy by context
length and needle depth; see ``attnlab.engine.retrieval_study``.
"""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from attnlab.cli import common
from attnlab.engine import retrieval_study


def define_flags():
  config_flags.DEFINE_config_file("config", "configs/retrieval.py", "Retrieval study config.",
                                  lock_config=True)
  common.define_run_flags()
  flags.DEFINE_string("workdir", "runs/retrieval", "Output directory.")


def main(argv):
  del argv
  FLAGS = flags.FLAGS
  records = retrieval_study.run_study(FLAGS.config, FLAGS.workdir,
                                       **common.run_options())
  for metric in retrieval_study.METRICS:
    print(retrieval_study.results_markdown(records, metric))
  print(f"wrote {FLAGS.workdir}/results.{{json,md,png}}")


if __name__ == "__main__":
  common.run(main, define_flags)
