"""Language-model configs: ``get_config(preset)``, preset one of ``PRESETS``.

Use with ``--config=configs/lm.py:alibi`` and override any field on the command
line, e.g. ``--config.model.attention.num_kv_heads=1``.

Every field and its default is declared by the code that reads it (``docs/variants.md``
lists them): ``base_config()`` is those defaults (``attnlab.config_lib.lm_config``), and a
preset states only what it changes.
"""

import ml_collections

from attnlab import config_lib, positional

# One preset per position scheme ("nope" is kind "none"), plus nanoGPT's baby GPT.
PRESETS = tuple("nope" if name == "none" else name for name in positional.POSITIONS.names()) + (
    "baby_gpt",)


def base_config() -> ml_collections.ConfigDict:
  """Every declared field at its default (RoPE, 4 layers, d=128, 128 bytes, 1000 steps)."""
  return config_lib.lm_config()


def get_config(arg: str = "rope") -> ml_collections.ConfigDict:
  preset = arg or "rope"
  if preset not in PRESETS:
    raise ValueError(f"configs/lm.py: preset {preset!r} is not valid; valid: {', '.join(PRESETS)}")
  c = base_config()
  if preset == "nope":
    c.model.position.kind = "none"
  elif preset == "baby_gpt":
    # nanoGPT's CPU "baby GPT" on tinyshakespeare (README): 4 layers, 4 heads, d=128,
    # context 64, batch 12, learned positions, 2000 iterations, dropout 0.
    c.model.position.kind = "learned"
    c.data.corpus = "tinyshakespeare"   # shipped in attnlab/data/corpora/
    c.data.seq_len = 64
    c.train.steps = 2000
    c.train.lr = 3e-3   # nanoGPT uses 1e-3; a higher peak converges further in 2000 steps
    c.train.eval_every = 500
    c.train.eval_batches = 200
    c.train.checkpoint_every = 1000
  elif preset != "rope":
    c.model.position.kind = preset
  return c


def fingerprint_cut(c: ml_collections.ConfigDict, steps: int = 40) -> ml_collections.ConfigDict:
  """A study's ``:fingerprint`` training cut: one seed, ``steps`` steps evaluated and
  checkpointed once at the end, a short warmup, two evaluation batches."""
  c.sweep.seeds = 1
  c.train.steps = c.train.eval_every = c.train.checkpoint_every = steps
  c.train.warmup_steps = 10
  c.train.log_every = 20
  c.train.eval_batches = 2
  return c
