"""nanoGPT's CPU "baby GPT" on tinyshakespeare, at two peak learning rates.

  python -m attnlab.sweep --config=configs/baby_gpt.py --workdir=runs/baby_gpt

The model and schedule of ``configs/lm.py:baby_gpt`` (nanoGPT's README setup: 4 layers, 4
heads, d=128, context 64, batch 12, learned positions, 2000 steps), trained at attnlab's
peak learning rate 3e-3 and at nanoGPT's 1e-3, each scored on the validation split in
non-overlapping windows of the training length.
"""

import pathlib

import ml_collections

from attnlab.config_lib import load_module


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  """``arg``: ``fingerprint`` for the study cut to a CPU minute (40 steps)."""
  if arg not in ("", "fingerprint"):
    raise ValueError(f"configs/baby_gpt.py:{arg}: valid arguments: fingerprint")
  c = load_module(pathlib.Path(__file__).with_name("lm.py")).get_config("baby_gpt")
  c.sweep = ml_collections.ConfigDict()
  c.sweep.seeds = 1                   # one seed: the page says so
  c.sweep.variants = ml_collections.ConfigDict({
      "lr3e-3": {"train": {"lr": 3e-3}},
      "lr1e-3": {"train": {"lr": 1e-3}},
  })
  c.sweep.factors = (1,)
  c.sweep.protocols = ("non_overlapping",)
  c.sweep.stride = 32
  c.sweep.sliding_tokens = 8192
  if arg == "fingerprint":
    c.train.steps = c.train.eval_every = c.train.checkpoint_every = 40
    c.train.warmup_steps = 10
    c.train.eval_batches = 10
    c.eval.max_tokens = 4096
  return c
