"""``python -m attnlab.memory --config=configs/lm.py:rope [--contexts=1024,4096 --batch=1]``
or ``--workdir=runs/rope``: KV-cache bytes for the MHA, GQA and MQA variants of a model;
see ``attnlab.inference.memory``."""

from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from attnlab import config_lib, workdir
from attnlab.cli import common
from attnlab.inference import memory


def define_flags():
  config_flags.DEFINE_config_file("config", None, "Model config, e.g. configs/lm.py:rope.",
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, "Or: a training workdir (its config.json).")
  flags.DEFINE_list("contexts", ["1024", "4096"], "Context lengths to size the cache for.")
  flags.DEFINE_integer("batch", 1, "Sequences in the batch.")


def main(argv):
  del argv
  FLAGS = flags.FLAGS
  if FLAGS.workdir:
    cfg = config_lib.resolve(workdir.load_config(FLAGS.workdir))
  elif FLAGS.config is not None:
    cfg = config_lib.resolve(FLAGS.config)
  else:
    raise app.UsageError("--config or --workdir is required")
  try:
    contexts = [int(n) for n in FLAGS.contexts]
  except ValueError:
    contexts = [0]
  if any(n < 1 for n in contexts) or FLAGS.batch < 1:
    common.fail(f"--contexts={','.join(FLAGS.contexts)} and --batch={FLAGS.batch} must be "
                f"positive integers")
  print(memory.markdown(memory.report(cfg.model, contexts, FLAGS.batch), contexts))


if __name__ == "__main__":
  common.run(main, define_flags)
