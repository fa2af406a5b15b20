"""Attention-sink study: the same small byte LM trained once per positional scheme.

  python experiments/attention_sinks/run.py --config=configs/attention_sinks.py \
      --workdir=runs/attention_sinks --out=experiments/attention_sinks

``sinks.schemes`` lists the ``model.position.kind`` values; each trains into
``workdir/<scheme>`` (finished runs are reused, not retrained).
"""

import ml_collections

from configs import lm


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  del arg
  c = lm.base_config()
  c.model.num_layers = 3
  c.model.d_model = 64
  c.data.seq_len = 64                   # built-in corpus (stdlib source), random crops, no BOS
  c.train.steps = 500
  c.train.batch_size = 16
  c.train.lr = 3e-3
  c.train.warmup_steps = 50
  c.train.eval_every = 500
  c.train.eval_batches = 10
  c.train.checkpoint_every = 500
  c.train.keep_checkpoints = 1
  c.sinks = ml_collections.ConfigDict()
  c.sinks.schemes = ("none", "sinusoidal", "learned", "rope", "alibi", "t5")
  c.sinks.eval_batches = 4              # validation batches (of train.batch_size windows)
  c.sinks.first_k = (1, 4)              # sink mass on the first k tokens
  c.sinks.bos = -1                      # >= 0: every window starts with this byte (0 never
                                        # occurs in the built-in corpus)
  return c
