"""Induction-head study: a 2-layer attention-only byte LM on repeated random segments.

  python experiments/induction_heads/run.py --config=configs/induction.py --workdir=runs/induction

Every training sequence is a random segment of ``induction.min_period..max_period``
distinct bytes repeated to fill ``data.seq_len``; the repeats are predictable only by
looking back to the previous occurrence (an induction head), and the period varies, so
a fixed-offset positional head cannot do it.
"""

import ml_collections

from configs import lm


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  del arg
  c = lm.base_config()
  c.model.num_layers = 2
  c.model.d_model = 64
  c.model.mlp = "none"                 # attention-only, as in Olsson et al.
  c.model.attention.impl = "reference"
  c.model.position.kind = "learned"    # absolute positions make a previous-token head easy
  c.data.seq_len = 64
  c.train.steps = 2500
  c.train.batch_size = 32
  c.train.lr = 1e-3
  c.train.weight_decay = 0.0
  c.train.checkpoint_every = 2500
  c.train.keep_checkpoints = 1
  c.train.eval_every = 50              # steps between measurements of the heads
  c.train.eval_batches = 2             # validation batches (held-out segments) per measurement
  c.induction = ml_collections.ConfigDict()
  c.induction.min_period = 4           # segment lengths drawn uniformly from [min, max]
  c.induction.max_period = 32
  c.induction.token_low = 32           # segment bytes drawn from [token_low, token_high)
  c.induction.token_high = 127
  c.induction.loss_on_repeats = True   # train only on the predictable (repeated) tokens
  c.induction.eval_batch = 32          # probe sequences: period seq_len // 2, repeated once
  return c
