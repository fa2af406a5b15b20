"""What every model shares: compute dtypes, norms, initialisers, and the parameters a
position scheme declares (``positional.ParamSpec``), created and weight-decayed as declared."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from attnlab import positional
from attnlab.registry import Registry

NORMS: Registry = Registry("model.norm")
NORMS.register("layernorm")(lambda cfg, name: nn.LayerNorm(use_bias=cfg.use_bias, name=name))
NORMS.register("rmsnorm")(lambda cfg, name: nn.RMSNorm(name=name))

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
MLPS = ("gelu", "swiglu", "none")   # none: attention-only blocks


def normal_init(std: float):
  return nn.initializers.normal(stddev=std)


def flat(x):
  """[batch, seq, d] -> [batch * seq, d]: XLA:CPU differentiates 2-D matmuls much faster."""
  return x.reshape(-1, x.shape[-1])


def declared_params(module: nn.Module, specs: dict) -> dict:
  """Create the parameters a position scheme declares (``{name: ParamSpec}``) in ``module``."""
  return {name: module.param(name, spec.init, spec.shape) for name, spec in specs.items()}


def decay_mask(model_cfg):
  """``params -> bool tree``: which parameters AdamW decays.

  A parameter a position scheme declares (``ParamSpec.decay``) follows its declaration;
  every other one is decayed when its rank is >= 2 (matrices, embeddings), as in nanoGPT.
  """
  declared = {}
  if "position" in model_cfg:
    scheme = positional.get_scheme(model_cfg.position)
    specs = {**scheme.embedding_params(int(model_cfg.d_model)),
             **scheme.attention_params(int(model_cfg.attention.num_heads))}
    declared = {name: spec.decay for name, spec in specs.items()}

  def mask(params):
    def decide(path, p):
      name = getattr(path[-1], "key", None)
      return declared.get(name, p.ndim >= 2)
    return jax.tree_util.tree_map_with_path(decide, params)

  return mask
