"""Small configs shared by the tests (tiny models that compile and train in seconds)."""

import pathlib

import ml_collections

from configs import lm

REPO = pathlib.Path(__file__).resolve().parents[1]
SHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"


def tiny_config(position: str = "rope", **overrides) -> ml_collections.ConfigDict:
  """A 2-layer, d=32 model on tinyshakespeare (or the built-in corpus if it is absent)."""
  c = lm.get_config("nope" if position == "none" else position)
  c.model.num_layers = 2
  c.model.d_model = 32
  c.model.attention.num_heads = 4
  c.model.attention.num_kv_heads = 4
  c.data.seq_len = 32
  c.data.path = str(SHAKESPEARE) if SHAKESPEARE.exists() else ""
  c.train.steps = 20
  c.train.batch_size = 8
  c.train.warmup_steps = 2
  c.train.log_every = 5
  c.train.eval_every = 10
  c.train.eval_batches = 2
  c.train.checkpoint_every = 10
  c.eval.max_tokens = 2048
  for key, value in overrides.items():
    node = c
    *parents, leaf = key.split("__")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c
