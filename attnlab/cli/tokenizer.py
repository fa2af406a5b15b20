"""``python -m attnlab.tokenizer --config=configs/lm.py --vocab_size=1024 --out=runs/bpe.json``

Trains a byte-level BPE ``tokenizer.json`` on the training split of the config's corpus
(``data.corpus`` or ``data.path``), for from-scratch runs that compare tokenizations:
``python -m attnlab.train --config=configs/lm.py --config.data.tokenizer=runs/bpe.json
--config.model.vocab_size=1024``. Evaluation reports bits per byte, so such a run and a
byte-level one compare directly.
"""

from __future__ import annotations

import pathlib

from absl import app, flags
from ml_collections import config_flags

from attnlab import data
from attnlab.cli import common


def define_flags():
  config_flags.DEFINE_config_file("config", "configs/lm.py", "Config naming the corpus.",
                                  lock_config=False)
  flags.DEFINE_integer("vocab_size", 1024, "Tokens in the vocabulary (>= 256).")
  flags.DEFINE_string("out", None, "Where to write tokenizer.json.")


def main(argv):
  del argv
  FLAGS = flags.FLAGS
  if not FLAGS.out:
    raise app.UsageError("--out is required")
  if pathlib.Path(FLAGS.out).is_dir():
    common.fail(f"--out={FLAGS.out!r} is a directory; give the path of the tokenizer.json "
                f"file to write")
  d = FLAGS.config.data
  d.tokenizer = "bytes"
  corpus = data.load_corpus(d)
  text = corpus.train.tobytes().decode("utf-8", errors="replace")
  tok = data.train_bpe(text, FLAGS.vocab_size, FLAGS.out)
  ids = tok.encode(text[:100_000])
  print(f"wrote {FLAGS.out}: {tok.vocab_size} tokens, {len(text[:100_000].encode()) / len(ids):.2f} "
        f"bytes per token on the first 100,000 characters of {corpus.name}")


if __name__ == "__main__":
  common.run(main, define_flags)
