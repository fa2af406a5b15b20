"""``python -m attnlab.analyze --workdir=runs/rope --text="def f(x): return x" --out=analysis/rope``

Writes attention maps, head metrics and an interactive viewer into ``--out``; see
``attnlab.analysis.report``.
"""

from __future__ import annotations

from absl import flags

from attnlab.analysis import metrics, report
from attnlab.cli import common


def define_flags():
  flags.DEFINE_string("workdir", None, "Training workdir (config.json + checkpoints).")
  flags.DEFINE_string("text", None, "Text to analyse (at most data.seq_len bytes).")
  flags.DEFINE_string("out", None, "Output folder.")
  flags.DEFINE_integer("induction_batch", 8, "Repeated random sequences for the induction score.")
  flags.DEFINE_integer("sink_k", 1, "Sink mass counts attention on the first sink_k tokens.")
  flags.DEFINE_integer("seed", 0, "Seed of the random induction sequences.")


def main(argv):
  del argv
  f = flags.FLAGS
  result = report.analyze(f.workdir, f.text, f.out, induction_batch=f.induction_batch,
                          sink_k=f.sink_k, seed=f.seed)
  print(metrics.markdown_table(result["records"]))
  print(f"wrote {len(result['files'])} files into {f.out}")


if __name__ == "__main__":
  common.run(main, define_flags)
