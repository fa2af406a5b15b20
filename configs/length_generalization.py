"""Length generalisation on algorithmic tasks: train on inputs of length 1..20, test to 80.

  python -m attnlab.sweep --config=configs/length_generalization.py --workdir=runs/length_generalization

Each task in ``sweep.tasks`` is learned by every variant in ``sweep.variants``: an
encoder–decoder Transformer with each position scheme (``randomized`` variants use
Ruoss et al.'s sorted random positions from [0, random_max_len) while training and
0..n-1 at test), NoPE, and a GRU encoder–decoder with Bahdanau attention. All share
seed, data, steps and batch size (``configs/seq2seq.py`` holds every field).
"""

import pathlib

import ml_collections

from attnlab.config_lib import load_module


def _transformer(kind: str, randomize: bool = False) -> dict:
  return {"model": {"arch": "transformer", "position": {"kind": kind, "randomize": randomize}}}


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  """``arg``: ``fingerprint`` for the study cut to a CPU minute (one seed, 30 steps)."""
  if arg not in ("", "fingerprint"):
    raise ValueError(f"configs/length_generalization.py:{arg}: valid arguments: fingerprint")
  c = load_module(pathlib.Path(__file__).with_name("seq2seq.py")).base_config()
  c.model.num_layers = 1              # one encoder and one decoder block: CPU minutes
  c.eval.lengths = (10, 20, 40, 80)   # ... test up to 4x longer
  c.train.steps = 800

  c.sweep = ml_collections.ConfigDict()
  c.sweep.runner = "tasks"
  c.sweep.seeds = 3                   # runs per (task, variant), seeds train.seed + 0, 1, 2
  # regular, deterministic context-free, context-sensitive (copy needs only the relative
  # alignment output t <-> input t)
  c.sweep.tasks = ("parity", "reverse", "copy")
  c.sweep.variants = ml_collections.ConfigDict({
      "nope": _transformer("none"),
      "rope": _transformer("rope"),
      "rope_randomized": _transformer("rope", True),
      "alibi": _transformer("alibi"),
      "gru_bahdanau": {"model": {"arch": "rnn", "rnn": {"cell": "gru", "attention": "bahdanau"}}},
  })
  if arg == "fingerprint":
    c.sweep.seeds = 1
    c.train.steps = 30
    c.sweep.tasks = ("reverse",)
    c.eval.lengths = (10, 40)
    c.eval.examples = 32
  return c
