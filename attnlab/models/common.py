"""What every model shares: compute dtypes, norms, initialisers, and the parameters a
position scheme declares (``positional.ParamSpec``), created and weight-decayed as declared."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from attnlab import positional
from attnlab.registry import Registry

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# gelu: tanh approximation (GPT-2's gelu_new); gelu_exact: erf (GPT-NeoX); none: attention only
MLPS = ("gelu", "gelu_exact", "swiglu", "none")


def param_dtype(cfg):
  """The dtype parameters are stored in (``model.param_dtype``; float32 unless set)."""
  return DTYPES[cfg.get("param_dtype", "float32")]


def norm_eps(cfg) -> float:
  """``model.norm_eps`` (Flax's 1e-6 unless set; GPT-2 and BLOOM use 1e-5)."""
  return float(cfg.get("norm_eps", 1e-6))


NORMS: Registry = Registry("model.norm")
NORMS.register("layernorm")(lambda cfg, name: nn.LayerNorm(
    epsilon=norm_eps(cfg), use_bias=cfg.use_bias, param_dtype=param_dtype(cfg), name=name))
NORMS.register("rmsnorm")(lambda cfg, name: nn.RMSNorm(
    epsilon=norm_eps(cfg), param_dtype=param_dtype(cfg), name=name))


def normal_init(std: float):
  return nn.initializers.normal(stddev=std)


def flat(x):
  """[batch, seq, d] -> [batch * seq, d]: XLA:CPU differentiates 2-D matmuls much faster."""
  return x.reshape(-1, x.shape[-1])


def declared_params(module: nn.Module, specs: dict, dtype=jnp.float32) -> dict:
  """Create the parameters a position scheme declares (``{name: ParamSpec}``) in ``module``."""
  return {name: module.param(name, spec.init, spec.shape, dtype) for name, spec in specs.items()}


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
