"""``python -m attnlab.evaluate --workdir=runs/rope --lengths=128,256,512,1024
[--rope_scalings=none,linear,ntk,dynamic_ntk,yarn]``

Scores the validation split at each length and writes ``eval.{json,md,png}``; see
``attnlab.engine.evaluation``.
"""

from __future__ import annotations

from absl import app, flags

from attnlab import workdir as workdir_lib
from attnlab.cli import common
from attnlab.engine import evaluation


def define_flags():
  flags.DEFINE_string("workdir", None, "Training workdir to evaluate.")
  flags.DEFINE_list("lengths", None, "Evaluation lengths; default 1x..8x training length.")
  flags.DEFINE_string("out", None, "Where to write eval.{json,md,png}; default the workdir.")
  flags.DEFINE_list("rope_scalings", None, "RoPE scalings to apply at evaluation time, each "
                    "at factor length / trained context (none, linear, ntk, dynamic_ntk, yarn, "
                    "yarn_paper, llama3); default: the model as it is.")


def main(argv):
  del argv
  FLAGS = flags.FLAGS
  if not FLAGS.workdir:
    raise app.UsageError("--workdir is required")
  if FLAGS.lengths:
    try:
      lengths = [int(x) for x in FLAGS.lengths]
    except ValueError:
      common.fail(f"--lengths={','.join(FLAGS.lengths)}: every entry must be a positive integer")
  else:
    n = workdir_lib.load_config(FLAGS.workdir).data.seq_len
    lengths = [n, 2 * n, 4 * n, 8 * n]
  records = evaluation.evaluate_workdir(FLAGS.workdir, lengths, FLAGS.out,
                                        rope_scalings=FLAGS.rope_scalings or ())
  print(evaluation.markdown_table(records))


if __name__ == "__main__":
  common.run(main, define_flags)
