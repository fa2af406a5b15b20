"""``python -m attnlab.import_hf --checkpoint=DIR --workdir=W [--dtype=bfloat16]``

Imports a Hugging Face checkpoint directory (``config.json``, ``model.safetensors`` or
sharded safetensors with ``model.safetensors.index.json``, ``tokenizer.json``) into an
attnlab workdir that ``evaluate``, ``generate``, ``analyze`` and the sweep read as they read
a trained run; see ``attnlab.engine.hf_import`` and docs/pretrained.md. Needs no network
and no torch.
"""

from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from attnlab.cli import common
from attnlab.engine import hf_import


def define_flags():
  flags.DEFINE_string("checkpoint", None, "Hugging Face checkpoint directory.")
  flags.DEFINE_string("workdir", None, "New attnlab workdir to write.")
  flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"],
                    "Parameter and compute dtype of the imported model.")
  config_flags.DEFINE_config_file(
      "config", "configs/lm.py", "Config whose data, train and eval blocks the workdir keeps "
      "(its model block comes from the checkpoint), e.g. --config.data.path=FILE.",
      lock_config=False)


def main(argv):
  del argv
  FLAGS = flags.FLAGS
  if not FLAGS.checkpoint or not FLAGS.workdir:
    raise app.UsageError("--checkpoint and --workdir are required")
  record = hf_import.import_checkpoint(FLAGS.checkpoint, FLAGS.workdir, FLAGS.config, FLAGS.dtype)
  print(f"imported {record['model_type']} from {record['source']} into {FLAGS.workdir} "
        f"({record['dtype']})")


if __name__ == "__main__":
  common.run(main, define_flags)
