"""Small configs shared by the tests (tiny models that compile and train in seconds)."""

import functools
import pathlib

import jax
import jax.numpy as jnp
import ml_collections

from configs import lm

REPO = pathlib.Path(__file__).resolve().parents[1]
SHAKESPEARE = REPO / "attnlab" / "data" / "corpora" / "tinyshakespeare.txt"


def tiny_config(position: str = "rope", **overrides) -> ml_collections.ConfigDict:
  """A 2-layer, d=32 model on tinyshakespeare (shipped with attnlab)."""
  c = lm.get_config("nope" if position == "none" else position)
  c.model.num_layers = 2
  c.model.d_model = 32
  c.model.attention.num_heads = 4
  c.model.attention.num_kv_heads = 4
  c.data.seq_len = 32
  c.data.corpus = "tinyshakespeare"
  c.train.steps = 20
  c.train.batch_size = 8
  c.train.warmup_steps = 2
  c.train.log_every = 5
  c.train.eval_every = 10
  c.train.eval_batches = 2
  c.train.checkpoint_every = 10
  c.eval.max_tokens = 2048
  return set_fields(c, **overrides)


def set_fields(config: ml_collections.ConfigDict, **fields) -> ml_collections.ConfigDict:
  """Sets ``a__b__c=value`` as ``config.a.b.c = value``; returns ``config``."""
  for key, value in fields.items():
    node = config
    *parents, leaf = key.split("__")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


@functools.lru_cache(maxsize=None)
def perturbed_model(position: str = "rope", **overrides):
  """(resolved config, TransformerLM, params) of ``tiny_config`` with its weights perturbed
  to be large: sharp attention, so a wrong position, mask or cache slot changes the logits
  far beyond float32 tolerance."""
  from attnlab import config_lib
  from attnlab.models import TransformerLM
  cfg = config_lib.resolve(tiny_config(position, **overrides))
  model = TransformerLM(cfg.model)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"]
  leaves, tree = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
  leaves = [x + 0.3 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
  return cfg, model, jax.tree_util.tree_unflatten(tree, leaves)


def tiny_sweep_config():
  """The extrapolation sweep (rope and alibi) at a size that trains in seconds."""
  from attnlab import config_lib
  c = config_lib.load_config_file(str(REPO / "configs" / "extrapolation.py"), "")
  c.model.num_layers = 1
  c.model.d_model = 32
  c.data.seq_len = 16
  c.data.corpus = "tinyshakespeare"
  c.train.steps = 6
  c.train.warmup_steps = 1
  c.train.checkpoint_every = 3
  c.train.eval_every = 6
  c.train.eval_batches = 1
  c.eval.max_tokens = 256
  c.sweep.factors = (1, 2, 4)
  c.sweep.stride = 8
  c.sweep.sliding_tokens = 128
  c.sweep.variants = {"rope": {"model": {"position": {"kind": "rope"}}},
                      "alibi": {"model": {"position": {"kind": "alibi"}}}}
  return c


def train_losses(config, workdir) -> list[float]:
  """Train ``config`` for 12 steps of 8 sequences of 32 tokens of tinyshakespeare into
  ``workdir`` (no progress bar) and return its logged training losses, in order."""
  import json
  from attnlab.engine import training
  config.data.corpus, config.data.seq_len = "tinyshakespeare", 32
  config.train.steps, config.train.batch_size, config.train.warmup_steps = 12, 8, 2
  config.train.log_every = config.train.eval_every = config.train.checkpoint_every = 4
  config.train.eval_batches = 1
  training.train_and_evaluate(config, workdir, progress=False)
  return [json.loads(line)["loss"] for line in (workdir / "metrics.jsonl").read_text().splitlines()
          if json.loads(line)["split"] == "train"]
