"""A recurrent language-model baseline (``attnlab.models.rnn.RNNLM``) for the LM trainer.

  python -m attnlab.train --config=configs/rnn_lm.py --workdir=runs/rnn_lm [--config.model.rnn.cell=gru]

``configs/lm.py``'s base config with ``model.arch = "rnn"``: ``model.num_layers`` stacked
LSTM (or GRU) layers of ``model.rnn.hidden`` units over ``model.rnn.embed_dim``-dim byte
embeddings; the attention and position fields are unused (recurrence encodes order).
"""

import pathlib

import ml_collections

from attnlab.config_lib import load_module


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  del arg
  c = load_module(pathlib.Path(__file__).with_name("lm.py")).base_config()
  c.model.arch = "rnn"                # transformer | rnn (attnlab.models.ARCHS)
  c.model.rnn = ml_collections.ConfigDict({"cell": "lstm", "hidden": 256, "embed_dim": 128})
  c.model.num_layers = 2
  c.model.position.kind = "none"
  return c
