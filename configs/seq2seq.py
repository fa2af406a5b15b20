"""Sequence-to-sequence models on algorithmic tasks: ``get_config(preset)``.

  python -m attnlab.tasks_train --config=configs/seq2seq.py:gru_bahdanau --workdir=runs/rev \
      --config.data.task=reverse

Presets (``PRESETS``): ``gru``, ``lstm`` (no attention: the fixed-vector bottleneck),
``gru_bahdanau``, ``lstm_bahdanau``, ``gru_luong``, ``lstm_luong`` and ``transformer``
(encoder–decoder; any ``model.position`` scheme of ``configs/lm.py``).
"""

import pathlib

import ml_collections

from attnlab.config_lib import load_module

PRESETS = ("gru", "lstm", "gru_bahdanau", "lstm_bahdanau", "gru_luong", "lstm_luong", "transformer")


def base_config() -> ml_collections.ConfigDict:
  lm = load_module(pathlib.Path(__file__).with_name("lm.py")).base_config()
  c = ml_collections.ConfigDict()

  c.model = ml_collections.ConfigDict()
  c.model.arch = "transformer"        # transformer | rnn
  c.model.vocab_size = 0              # 0 means the task vocabulary (attnlab.data.tasks.VOCAB)
  # transformer (encoder and decoder each have num_layers blocks)
  c.model.num_layers = 2
  c.model.d_model = 64
  c.model.mlp = "gelu"
  c.model.mlp_ratio = 4
  c.model.norm = "layernorm"
  c.model.use_bias = False
  c.model.dropout = 0.0
  c.model.dtype = "float32"
  c.model.attention = ml_collections.ConfigDict()
  c.model.attention.num_heads = 4
  c.model.attention.impl = "auto"     # auto | reference | xla | blockwise
  c.model.position = lm.model.position  # every scheme and its fields, as for language models
  c.model.position.kind = "rope"
  c.model.position.bidirectional = True  # t5: buckets split by sign (the encoder is bidirectional)
  c.model.position.random_max_len = 256  # randomize=True: positions from [0, random_max_len)
  # rnn
  c.model.rnn = ml_collections.ConfigDict()
  c.model.rnn.cell = "gru"            # gru | lstm
  c.model.rnn.hidden = 64             # units per encoder direction
  c.model.rnn.embed_dim = 32
  c.model.rnn.bidirectional = True    # encoder; the decoder state has the encoder output width
  c.model.rnn.attention = "bahdanau"  # none | bahdanau | luong
  c.model.rnn.luong_score = "general"  # luong: dot | general | concat
  c.model.rnn.attention_dim = 64      # bahdanau (and luong concat): width A of the score MLP
  c.model.rnn.input_feeding = True    # luong: feed h~_{t-1} to the next step

  c.data = ml_collections.ConfigDict()
  c.data.task = "reverse"             # a name in attnlab.data.tasks.TASKS
  c.data.min_length = 1               # training input lengths are uniform in
  c.data.max_length = 20              # [min_length, max_length]

  c.train = ml_collections.ConfigDict()
  c.train.steps = 1500
  c.train.batch_size = 32
  c.train.seed = 0
  c.train.lr = 3e-3
  c.train.min_lr_ratio = 0.1
  c.train.warmup_steps = 100
  c.train.weight_decay = 0.0
  c.train.b1 = 0.9
  c.train.b2 = 0.99
  c.train.grad_clip = 1.0
  c.train.log_every = 100
  c.train.checkpoint_every = 500      # resumable: checkpoints in workdir/checkpoints
  c.train.keep_checkpoints = 2

  c.eval = ml_collections.ConfigDict()
  c.eval.lengths = (5, 10, 20, 40, 80)  # input lengths scored after training
  c.eval.examples = 128               # examples per length
  c.eval.batch_size = 128
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
