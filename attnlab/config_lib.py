"""Config validation and resolution, run before anything is compiled.

``validate(config)`` raises ``ConfigError`` naming the field, the bad value and
what would be valid. ``resolve(config)`` fills derived defaults (a learned
position table sized to ``data.seq_len``) and returns a frozen copy.
"""

from __future__ import annotations

import importlib.util
import pathlib

import ml_collections

from attnlab import positional
from attnlab.attention import KINDS, PATTERNS, impl_names
from attnlab.data.retrieval import TASKS
from attnlab.models import DTYPES, NORMS
from attnlab.registry import ConfigError

MLPS = ("gelu", "swiglu", "none")   # none: attention-only blocks
CORPORA = ("builtin",)
RANDOMIZABLE = ("sinusoidal", "learned", "rope", "alibi")


def _positive_int(value, field):
  if not isinstance(value, int) or isinstance(value, bool) or value < 1:
    raise ConfigError(f"{field}={value!r} must be an integer >= 1")


def _choice(value, field, valid):
  valid = list(valid)
  if value not in valid:
    raise ConfigError(f"{field}={value!r} is not valid; valid: {', '.join(map(str, valid))}")


# model.attention parameters: minimum value (integers) and what else they must satisfy.
_ATTENTION_INT_MINIMUM = {"window": 1, "prefix": 0, "dilation": 1, "block": 1,
                          "random_per_row": 1, "window_blocks": 1, "global_blocks": 0,
                          "random_blocks": 0, "sinks": 0, "seed": 0, "lsh_buckets": 1,
                          "lsh_hashes": 1, "lsh_chunk": 1, "num_features": 1, "scan_chunk": 1}


def _check_attention_params(a, params, seq_len, position_kind) -> None:
  """The fields the chosen pattern and kind read, and their combinations."""
  for name in params:
    field = f"model.attention.{name}"
    if name in _ATTENTION_INT_MINIMUM:
      low = _ATTENTION_INT_MINIMUM[name]
      if not isinstance(a[name], int) or isinstance(a[name], bool) or a[name] < low:
        raise ConfigError(f"{field}={a[name]!r} must be an integer >= {low} with "
                          f"pattern={a.pattern!r}, kind={a.kind!r}")
  if "window_blocks" in params and a.window_blocks % 2 == 0:
    raise ConfigError(f"model.attention.window_blocks={a.window_blocks} must be odd (the block "
                      f"itself plus (window_blocks - 1) / 2 on each side)")
  if "global_tokens" in params:
    g = a.global_tokens
    if (not isinstance(g, (tuple, list)) or not g
        or any(not isinstance(i, int) or isinstance(i, bool) for i in g)):
      raise ConfigError(f"model.attention.global_tokens={g!r} must be a non-empty tuple of "
                        f"integers, e.g. (0,)")
    bad = [i for i in g if not 0 <= i < seq_len]
    if bad:
      raise ConfigError(f"model.attention.global_tokens={tuple(g)!r}: {bad} out of range for "
                        f"data.seq_len={seq_len}; valid: 0..{seq_len - 1}")
  if "lsh_buckets" in params and a.lsh_buckets > 1 and a.lsh_buckets % 2:
    raise ConfigError(f"model.attention.lsh_buckets={a.lsh_buckets} must be 1 or even "
                      f"(angular LSH: argmax over [xR, -xR])")
  kind = KINDS.get(a.kind)
  if kind.patterns is not None and a.pattern not in kind.patterns:
    raise ConfigError(f"model.attention.kind={a.kind!r} takes pattern one of "
                      f"{', '.join(kind.patterns)}; got model.attention.pattern={a.pattern!r}")
  if not kind.takes_bias and position_kind in ("alibi", "t5"):
    raise ConfigError(f"model.attention.kind={a.kind!r} never forms the score matrix, so it "
                      f"cannot add the {position_kind!r} bias; model.position.kind valid with it: "
                      f"none, sinusoidal, learned, rope, xpos")
  if kind.shared_qk and position_kind == "xpos":
    raise ConfigError(f"model.attention.kind={a.kind!r} shares queries and keys, which xPos "
                      f"scales in opposite directions; model.position.kind valid with it: "
                      f"none, sinusoidal, learned, rope")
  if kind.shared_qk and a.num_kv_heads != a.num_heads:
    raise ConfigError(f"model.attention.kind={a.kind!r} shares queries and keys, so "
                      f"model.attention.num_kv_heads={a.num_kv_heads} must equal "
                      f"num_heads={a.num_heads}")


def resolve(config) -> ml_collections.FrozenConfigDict:
  """Validated, with derived defaults filled in, frozen (hashable for Flax modules)."""
  config = ml_collections.ConfigDict(config.to_dict() if hasattr(config, "to_dict") else config)
  p = config.model.position
  if p.kind == "learned" and p.max_len == 0:
    p.max_len = p.random_max_len if p.get("randomize", False) else config.data.seq_len
  if "original_max_len" in p and p.original_max_len == 0:
    p.original_max_len = config.data.seq_len
  validate(config)
  return ml_collections.FrozenConfigDict(config)


def validate(config) -> None:
  """Check every field that could fail later; raise the first problem as ``ConfigError``."""
  m, a, p, d, t = config.model, config.model.attention, config.model.position, config.data, config.train

  _choice(a.kind, "model.attention.kind", KINDS.names())
  _choice(a.pattern, "model.attention.pattern", PATTERNS.names())
  _choice(a.impl, "model.attention.impl", impl_names())
  _choice(p.kind, "model.position.kind", positional.POSITIONS.names())
  _choice(m.norm, "model.norm", NORMS.names())
  _choice(m.mlp, "model.mlp", MLPS)
  _choice(m.dtype, "model.dtype", DTYPES)

  for field in ("num_layers", "d_model", "vocab_size", "mlp_ratio"):
    _positive_int(m[field], f"model.{field}")
  for field in ("num_heads", "num_kv_heads", "block_q", "block_kv"):
    _positive_int(a[field], f"model.attention.{field}")
  if a.num_heads % a.num_kv_heads:
    divisors = [n for n in range(1, a.num_heads + 1) if a.num_heads % n == 0]
    raise ConfigError(
        f"model.attention.num_kv_heads={a.num_kv_heads} must divide "
        f"model.attention.num_heads={a.num_heads}; valid: {', '.join(map(str, divisors))}")
  if m.d_model % a.num_heads:
    raise ConfigError(f"model.d_model={m.d_model} must be divisible by "
                      f"model.attention.num_heads={a.num_heads}")
  head_dim = m.d_model // a.num_heads
  if p.kind == "rope" and head_dim % 2:
    raise ConfigError(f"model.position.kind='rope' needs an even head dim; "
                      f"model.d_model / num_heads = {head_dim}")
  if p.kind == "sinusoidal" and m.d_model % 2:
    raise ConfigError(f"model.position.kind='sinusoidal' needs an even model.d_model; got {m.d_model}")
  if not 0.0 <= m.dropout < 1.0:
    raise ConfigError(f"model.dropout={m.dropout!r} must be in [0, 1)")

  spec = PATTERNS.get(a.pattern)
  if not spec.causal:
    causal = [n for n in PATTERNS.names() if PATTERNS.get(n).causal]
    raise ConfigError(
        f"model.attention.pattern={a.pattern!r} lets a token see the token it must predict, "
        f"which a causal language model cannot use; valid: {', '.join(causal)}")
  _check_attention_params(a, PATTERNS.get(a.pattern).params + KINDS.get(a.kind).params,
                          d.seq_len, p.kind)

  _positive_int(d.seq_len, "data.seq_len")
  if d.path and not pathlib.Path(d.path).expanduser().is_file():
    raise ConfigError(f"data.path={d.path!r} is not a readable file")
  if not d.path:
    _choice(d.corpus, "data.corpus", CORPORA + tuple(TASKS))
  if not 0.0 < d.valid_fraction < 1.0:
    raise ConfigError(f"data.valid_fraction={d.valid_fraction!r} must be in (0, 1)")
  if p.kind == "rope" and "scaling" in p:
    _choice(p.scaling, "model.position.scaling", positional.ROPE_SCALINGS)
    if not p.scale_factor >= 1.0:
      raise ConfigError(f"model.position.scale_factor={p.scale_factor!r} must be >= 1 "
                        f"(s = new length / training length)")
    if p.scaling in ("dynamic_ntk", "yarn"):
      _positive_int(p.original_max_len, "model.position.original_max_len")
    if p.scaling == "yarn" and not p.yarn_beta > p.yarn_alpha:
      raise ConfigError(f"model.position.yarn_beta={p.yarn_beta!r} must exceed "
                        f"model.position.yarn_alpha={p.yarn_alpha!r}")
    if not 0.0 < p.rotary_fraction <= 1.0 or int(head_dim * p.rotary_fraction) < 2:
      raise ConfigError(f"model.position.rotary_fraction={p.rotary_fraction!r} must be in (0, 1] "
                        f"and rotate at least 2 of the {head_dim} head dims")
  if p.kind == "xpos" and head_dim % 2:
    raise ConfigError(f"model.position.kind='xpos' needs an even head dim; got {head_dim}")
  if p.kind == "t5":
    _positive_int(p.num_buckets, "model.position.num_buckets")
    if p.num_buckets < (4 if p.bidirectional else 2) or p.max_distance <= p.num_buckets // (4 if p.bidirectional else 2):
      raise ConfigError(f"model.position.max_distance={p.max_distance!r} must exceed the exact "
                        f"buckets (num_buckets={p.num_buckets}, bidirectional={p.bidirectional})")
  if p.get("randomize", False):
    _choice(p.kind, "model.position.kind (with model.position.randomize=True)", RANDOMIZABLE)
    if not isinstance(p.random_max_len, int) or p.random_max_len < d.seq_len:
      raise ConfigError(f"model.position.random_max_len={p.random_max_len!r} must be an integer "
                        f">= data.seq_len={d.seq_len}")
  if p.kind == "learned":
    _positive_int(p.max_len, "model.position.max_len")
    positional.check_length(p, d.seq_len, "data.seq_len")

  for field in ("steps", "batch_size", "log_every", "eval_every", "eval_batches",
                "checkpoint_every", "keep_checkpoints"):
    _positive_int(t[field], f"train.{field}")
  if not isinstance(t.seed, int):
    raise ConfigError(f"train.seed={t.seed!r} must be an integer")
  if not t.lr > 0:
    raise ConfigError(f"train.lr={t.lr!r} must be > 0")
  if not (isinstance(t.warmup_steps, int) and 0 <= t.warmup_steps < t.steps):
    raise ConfigError(f"train.warmup_steps={t.warmup_steps!r} must be an integer in "
                      f"[0, train.steps={t.steps})")
  if not 0.0 <= t.min_lr_ratio <= 1.0:
    raise ConfigError(f"train.min_lr_ratio={t.min_lr_ratio!r} must be in [0, 1]")
  if not t.grad_clip > 0:
    raise ConfigError(f"train.grad_clip={t.grad_clip!r} must be > 0")

  for field in ("max_tokens", "batch_tokens"):
    _positive_int(config.eval[field], f"eval.{field}")

  from attnlab import parallel  # the device-count check waits for parallel.make_mesh
  ring_layout = a.get("ring_layout", "zigzag")
  from attnlab.attention.ring import LAYOUTS
  _choice(ring_layout, "model.attention.ring_layout", LAYOUTS)
  parallel.check_mesh(config)


def load_module(path):
  """Import a config file (or any Python file) by path; configs use it to build on each other."""
  spec = importlib.util.spec_from_file_location(f"attnlab_config_{pathlib.Path(path).stem}", path)
  if spec is None or not pathlib.Path(path).is_file():
    raise ConfigError(f"--config={str(path)!r} is not a readable config file")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_config_file(path: str, arg: str = ""):
  """``get_config(arg)`` of a config file, as ``--config=path:arg`` would load it."""
  return load_module(path).get_config(arg)
