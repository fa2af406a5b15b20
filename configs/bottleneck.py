"""The fixed-context-vector bottleneck: GRU encoder–decoder without attention vs Bahdanau vs
Luong attention on copy and reverse, accuracy by input length.

  python -m attnlab.sweep --config=configs/bottleneck.py --workdir=runs/bottleneck

All three variants have the same bidirectional GRU encoder and decoder width; only how the
decoder sees the source differs (one final-state vector, or attention over all encoder states).
They train on lengths 1..40 and are scored at lengths inside (and, at 60, beyond) that range.
"""

import pathlib

import ml_collections

from attnlab.config_lib import load_module


def _rnn(attention: str) -> dict:
  return {"model": {"arch": "rnn", "rnn": {"attention": attention}}}


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  """``arg``: ``fingerprint`` for the study cut to a CPU minute (30 steps, two lengths)."""
  if arg not in ("", "fingerprint"):
    raise ValueError(f"configs/bottleneck.py:{arg}: valid arguments: fingerprint")
  c = load_module(pathlib.Path(__file__).with_name("seq2seq.py")).base_config()
  c.model.arch = "rnn"
  c.data.max_length = 40
  c.eval.lengths = (5, 10, 15, 20, 25, 30, 35, 40, 60)
  c.eval.examples = 256
  c.train.steps = 1000

  c.sweep = ml_collections.ConfigDict()
  c.sweep.runner = "tasks"
  c.sweep.tasks = ("copy", "reverse")
  c.sweep.variants = ml_collections.ConfigDict({
      "no_attention": _rnn("none"),
      "bahdanau": _rnn("bahdanau"),
      "luong": _rnn("luong"),
  })
  c.sweep.seeds = 1                   # one seed: the page says so
  if arg == "fingerprint":
    c.train.steps = 30
    c.sweep.tasks = ("reverse",)
    c.eval.lengths = (10, 40)
    c.eval.examples = 32
  return c
