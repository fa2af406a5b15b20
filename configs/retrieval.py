"""Retrieval study: passkey (or associative recall) trained at 128 bytes, tested to 8x.

  python -m attnlab.sweep --config=configs/retrieval.py --workdir=runs/retrieval

``--config.data.corpus=associative_recall`` switches the task.
"""

import pathlib

import ml_collections

from attnlab.config_lib import load_module


def _lm():
  return load_module(pathlib.Path(__file__).with_name("lm.py"))


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  """``arg``: ``fingerprint`` for the study cut to a CPU minute (one seed, 40 steps)."""
  if arg not in ("", "fingerprint"):
    raise ValueError(f"configs/retrieval.py:{arg}: valid arguments: fingerprint")
  c = _lm().base_config()
  c.data.corpus = "passkey"           # or associative_recall
  c.model.num_layers = 2              # 2 layers, d=128: three seeds of three variants in
  c.train.steps = 800                 # about a quarter hour of 2 CPU cores
  c.train.lr = 3e-3
  c.train.eval_every = 400
  c.train.checkpoint_every = 400

  c.sweep = ml_collections.ConfigDict()
  c.sweep.runner = "retrieval"
  c.sweep.seeds = 3                   # runs per variant, seeds train.seed + 0, 1, 2
  c.sweep.variants = ml_collections.ConfigDict({
      "rope": {"model": {"position": {"kind": "rope"}}},
      "alibi": {"model": {"position": {"kind": "alibi"}}},
      "nope": {"model": {"position": {"kind": "none"}}},
  })
  c.sweep.factors = (1, 2, 4, 8)      # test lengths / data.seq_len
  c.sweep.protocols = ()              # (perplexity protocols are not used here)
  c.sweep.stride = 1

  c.retrieval = ml_collections.ConfigDict()
  c.retrieval.depths = (0.0, 0.25, 0.5, 0.75, 1.0)
  c.retrieval.trials = 32             # examples per (length, depth)
  if arg == "fingerprint":
    c.sweep.seeds = 1
    c.train.steps = c.train.eval_every = c.train.checkpoint_every = 40
    c.train.warmup_steps = 10
    c.sweep.factors = (1, 2)
    c.retrieval.depths = (0.0, 1.0)
    c.retrieval.trials = 8
  return c
