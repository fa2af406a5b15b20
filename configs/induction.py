"""Induction-head study: a 2-layer attention-only byte LM on repeated random segments,
with learned absolute positions and with RoPE.

  python -m attnlab.sweep --config=configs/induction.py --workdir=runs/induction
  python -m attnlab.sweep --config=configs/induction.py:fingerprint --workdir=runs/induction_fingerprint

Every training sequence is a random segment of ``induction.min_period..max_period``
distinct bytes repeated to fill ``data.seq_len``; the repeats are predictable only by
looking back to the previous occurrence (an induction head), and the period varies, so
a fixed-offset positional head cannot do it. Each variant of ``sweep.variants`` trains in
``workdir/<variant>`` (``workdir/seed<s>/<variant>`` with several seeds). ``arg``:
``fingerprint``: the same study cut to a few steps and one seed.
"""

import ml_collections

from configs import lm

ARGS = ("fingerprint",)


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  args = [a.strip() for a in arg.split(",") if a.strip()]
  unknown = sorted(set(args) - set(ARGS))
  if unknown:
    raise ValueError(f"configs/induction.py:{arg}: unknown argument(s) {unknown}; valid: "
                     f"{', '.join(ARGS)} (comma-separated)")
  c = lm.base_config()
  c.model.num_layers = 2
  c.model.d_model = 64
  c.model.mlp = "none"                 # attention-only, as in Olsson et al.
  c.model.attention.impl = "reference"
  c.model.position.kind = "learned"    # the variants set it
  c.data.seq_len = 64
  c.train.steps = 2500
  c.train.batch_size = 32
  c.train.lr = 1e-3
  c.train.weight_decay = 0.0
  c.train.checkpoint_every = 2500
  c.train.keep_checkpoints = 1
  c.train.eval_every = 50              # steps between measurements of the heads
  c.train.eval_batches = 2             # validation batches (held-out segments) per measurement

  c.sweep = ml_collections.ConfigDict()
  c.sweep.runner = "induction"         # attnlab/studies/induction.py
  c.sweep.seeds = 3                    # runs per variant, seeds train.seed + 0, 1, 2
  c.sweep.variants = ml_collections.ConfigDict({
      # absolute positions make a previous-token head easy: induction heads by ~step 1200
      "learned": {"model": {"position": {"kind": "learned"}}},
      # at this width (64) RoPE formed none in 2500 steps (experiments/induction_heads)
      "rope": {"model": {"position": {"kind": "rope"}}},
  })
  c.sweep.factors = (1,)               # (the variants are checked at the training length)
  c.sweep.protocols = ()

  c.induction = ml_collections.ConfigDict()
  c.induction.min_period = 4           # segment lengths drawn uniformly from [min, max]
  c.induction.max_period = 32
  c.induction.token_low = 32           # segment bytes drawn from [token_low, token_high)
  c.induction.token_high = 127
  c.induction.loss_on_repeats = True   # train only on the predictable (repeated) tokens
  c.induction.eval_batch = 32          # probe sequences: period seq_len // 2, repeated once
  if "fingerprint" in args:
    c.sweep.seeds = 1
    c.train.steps = c.train.checkpoint_every = 60
    c.train.eval_every = 20
    c.train.log_every = 20
    c.train.warmup_steps = 10
    c.induction.eval_batch = 8
  return c
