"""Sequence-to-sequence models on algorithmic tasks: ``get_config(preset)``.

  python -m attnlab.tasks_train --config=configs/seq2seq.py:gru_bahdanau --workdir=runs/rev \
      --config.data.task=reverse

Presets (``PRESETS``): ``gru``, ``lstm`` (no attention: the fixed-vector bottleneck),
``gru_bahdanau``, ``lstm_bahdanau``, ``gru_luong``, ``lstm_luong`` and ``transformer``
(encoder–decoder; any ``model.position`` scheme of ``configs/lm.py``, and the attention
kind, pattern, GQA and impl of ``model.attention``, as for language models).

Every field and its default is declared by the code that reads it; ``base_config`` states
what this family changes.
"""

import ml_collections

from attnlab.engine import tasks as tasks_engine

PRESETS = ("gru", "lstm", "gru_bahdanau", "lstm_bahdanau", "gru_luong", "lstm_luong", "transformer")


def base_config() -> ml_collections.ConfigDict:
  """The task trainer's declared defaults (``attnlab.engine.tasks.default_config``) and what
  this family changes: a small encoder–decoder (2 + 2 blocks, d=64) on the task
  vocabulary, bidirectional T5 buckets (the encoder sees both sides), a shorter random
  position range, and its own optimizer schedule."""
  c = tasks_engine.default_config()
  c.model.vocab_size = 0              # 0 means the task vocabulary (attnlab.data.tasks.VOCAB)
  c.model.num_layers = 2              # encoder and decoder each have num_layers blocks
  c.model.d_model = 64
  c.model.position.bidirectional = True  # t5: buckets split by sign (the encoder is bidirectional)
  c.model.position.random_max_len = 256  # randomize=True: positions from [0, random_max_len)
  c.train.steps = 1500
  c.train.batch_size = 32
  c.train.lr = 3e-3
  c.train.weight_decay = 0.0
  c.train.log_every = 100
  c.train.checkpoint_every = 500      # resumable: checkpoints in workdir/checkpoints
  c.train.keep_checkpoints = 2
  return c


def get_config(arg: str = "transformer") -> ml_collections.ConfigDict:
  preset = arg or "transformer"
  if preset not in PRESETS:
    raise ValueError(f"configs/seq2seq.py: preset {preset!r} is not valid; valid: "
                     f"{', '.join(PRESETS)}")
  c = base_config()
  if preset == "transformer":
    return c
  c.model.arch = "rnn"
  cell, _, attention = preset.partition("_")
  c.model.rnn.cell = cell
  c.model.rnn.attention = attention or "none"
  return c
