"""``python -m attnlab.sweep --config=configs/extrapolation.py --workdir=runs/extrapolation``

Trains every variant of a sweep config, then evaluates them; ``sweep.runner`` names the study and ``sweep.seeds`` how many seeds each
variant trains with (``attnlab.engine.studies``).
"""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from attnlab import engine
from attnlab.cli import common


def define_flags():
  config_flags.DEFINE_config_file("config", "configs/extrapolation.py", "Sweep config file.",
                                  lock_config=True)
  common.define_run_flags()
  flags.DEFINE_string("workdir", "runs/extrapolation", "Output directory.")


def main(argv):
  del argv
  FLAGS = flags.FLAGS
  results = engine.studies.run(FLAGS.config, FLAGS.workdir, **common.run_options())
  print(engine.studies.STUDIES.get(results["study"]).markdown(results))
  print(f"wrote {FLAGS.workdir}/results.*")


if __name__ == "__main__":
  common.run(main, define_flags)
