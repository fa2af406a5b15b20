"""Attention-sink study: the same small byte LM trained once per positional scheme.

  python -m attnlab.sweep --config=configs/attention_sinks.py --workdir=runs/attention_sinks
  python -m attnlab.sweep --config=configs/attention_sinks.py:long --workdir=runs/attention_sinks_long
  python -m attnlab.sweep --config=configs/attention_sinks.py:bos --workdir=runs/attention_sinks_bos
  python -m attnlab.sweep --config=configs/attention_sinks.py:fingerprint \
      --workdir=runs/attention_sinks_fingerprint

``sinks.schemes`` lists the ``model.position.kind`` values; each trains into
``workdir/<scheme>`` (``workdir/seed<s>/<scheme>`` with several seeds; finished runs are
reused, not retrained). ``arg``, comma-separated:

- ``long``: 2000 steps at 128 bytes (instead of 500 at 64);
- ``bos``: every window led by byte 0 (absent from the built-in corpus; combines with
  ``long``);
- ``fingerprint``: the same study cut to a few steps and one seed (combines with the others).
"""

import ml_collections

from configs import lm

ARGS = ("long", "bos", "fingerprint")


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  args = [a.strip() for a in arg.split(",") if a.strip()]
  unknown = sorted(set(args) - set(ARGS))
  if unknown:
    raise ValueError(f"configs/attention_sinks.py:{arg}: unknown argument(s) {unknown}; valid: "
                     f"{', '.join(ARGS)} (comma-separated)")
  c = lm.base_config()
  c.model.num_layers = 3
  c.model.d_model = 64
  long = "long" in args
  c.data.seq_len = 128 if long else 64  # built-in corpus (stdlib source), random crops, no BOS
  c.train.steps = 2000 if long else 500
  c.train.batch_size = 16
  c.train.lr = 3e-3
  c.train.warmup_steps = 50
  c.train.eval_every = c.train.steps
  c.train.eval_batches = 10
  c.train.checkpoint_every = c.train.steps
  c.train.keep_checkpoints = 1

  c.sweep = ml_collections.ConfigDict()
  c.sweep.runner = "sinks"              # attnlab/studies/sinks.py
  c.sweep.seeds = 3                     # runs per scheme, seeds train.seed + 0, 1, 2

  c.sinks = ml_collections.ConfigDict()
  c.sinks.schemes = ("none", "sinusoidal", "learned", "rope", "alibi", "t5")
  c.sinks.eval_batches = 4              # validation batches (of train.batch_size windows)
  c.sinks.first_k = (1, 4)              # sink mass on the first k tokens
  c.sinks.bos = -1                      # >= 0: every window starts with this byte (0 never
                                        # occurs in the built-in corpus)
  if "bos" in args:
    c.sinks.bos = 0
  if "fingerprint" in args:
    lm.fingerprint_cut(c)
    c.sinks.eval_batches = 1
  return c
