"""Configs from the declarations: defaults, validation, resolution and run identity.

Every config field is declared once, with its default and valid range
(``attnlab.registry.Field``): the fields of ``model.attention`` and ``model.position`` by
the pattern, kind, impl or position scheme that reads them; ``model.*`` by the models
(``models.common.MODEL_FIELDS``); ``data.*`` by the data package; ``mesh.*`` by
``attnlab.parallel``; ``train.*`` and ``eval.*`` here. This module builds configs from
those declarations (``lm_config``, ``attention_block``, ``position_block``), validates a
config against them before anything compiles (``validate``: a bad value names the field,
the value and what would be valid), fills derived defaults (``resolve``), says which fields
a run trains (``run_identity``: a field the run does not use, or an evaluation setting,
neither blocks its resume nor invalidates its cached results) and describes every variant's
fields (``describe_variants``, the source of ``docs/variants.md``).
"""

from __future__ import annotations

import importlib.util
import json
import math
import pathlib
import re
from collections.abc import Mapping

import jax
import ml_collections

from attnlab import data, parallel, positional
from attnlab.attention import IMPLS, KINDS, PATTERNS, impl_names
from attnlab.data.retrieval_tasks import RETRIEVAL_TASKS
from attnlab.models import MLPS, MODEL_FIELDS, schedule
from attnlab.models.common import ATTENTION_FIELDS, head_dim
from attnlab.registry import ConfigError, Declared, Field, merge_fields, nearest

# model.attention fields that are not any one entry's: heads and the four axes' names.
CORE_ATTENTION_FIELDS = (
    Field("num_heads", 4, "query heads", minimum=1),
    Field("num_kv_heads", 4, "= num_heads: MHA; divides it: GQA; 1: MQA", minimum=1),
    Field("kind", "softmax", "what is computed (KINDS)"),
    Field("pattern", "causal", "who sees whom (PATTERNS)"),
    Field("impl", "auto", "how it is computed (IMPLS or auto)"),
) + ATTENTION_FIELDS
POSITION_KIND = Field("kind", "rope", "how order enters (POSITIONS)")


def _seed(value, context):
  return None if isinstance(value, int) and not isinstance(value, bool) else "must be an integer"


# train.*: the optimizer and the loop, shared by every trainer (LM, tasks, sweeps).
TRAIN_FIELDS = (
    Field("steps", 1000, "optimizer steps", minimum=1),
    Field("batch_size", 12, "sequences per step", minimum=1),
    Field("seed", 0, "parameters, data order and dropout derive from it", check=_seed),
    # the optimizer's ranges are checked by check_optimizer (one message per rule)
    Field("lr", 2e-3, "peak learning rate (AdamW), > 0"),
    Field("min_lr_ratio", 0.1, "cosine decays to lr * min_lr_ratio, in [0, 1]"),
    Field("warmup_steps", 100, "linear warmup steps", minimum=0),
    Field("weight_decay", 0.1, "AdamW decay, >= 0, on matrices and embeddings only"),
    Field("b1", 0.9, "AdamW's first-moment decay, in [0, 1)"),
    Field("b2", 0.99, "AdamW's second-moment decay, in [0, 1)"),
    Field("grad_clip", 1.0, "global gradient-norm clip, > 0"),
    Field("log_every", 50, "steps between training-loss records", minimum=1),
    Field("checkpoint_every", 250, "steps between checkpoints", minimum=1),
    Field("keep_checkpoints", 3, "checkpoints kept", minimum=1),
)
# ... and what the language-model trainer adds.
LM_TRAIN_FIELDS = (
    Field("eval_every", 250, "steps between validation losses", minimum=1),
    Field("eval_batches", 20, "validation batches per evaluation", minimum=1),
)
# eval.*: the language-model evaluation's budget.
EVAL_FIELDS = (
    Field("max_tokens", 65536, "tokens scored per evaluation length", minimum=1),
    Field("batch_tokens", 8192, "tokens per evaluation batch", minimum=1),
)


def lm_config() -> ml_collections.ConfigDict:
  """A language-model config with every declared field at its declared default: what
  ``configs/lm.py`` starts from (a preset states only what it changes)."""
  c = ml_collections.ConfigDict()
  c.model = _block({f.name: f for f in MODEL_FIELDS})
  c.model.attention = attention_block()
  c.model.position = position_block()
  c.data = _block({f.name: f for f in data.DATA_FIELDS})
  c.train = _block({f.name: f for f in TRAIN_FIELDS + LM_TRAIN_FIELDS})
  c.eval = _block({f.name: f for f in EVAL_FIELDS})
  c.mesh = _block({f.name: f for f in parallel.MESH_FIELDS})
  return c


# ----------------------------------------------------------------------------- declarations

def _attention_groups():
  groups = [("model.attention", CORE_ATTENTION_FIELDS)]
  groups += [(f"pattern {n!r}", spec.fields) for n, spec in PATTERNS.items()]
  groups += [(f"kind {n!r}", spec.fields) for n, spec in KINDS.items()]
  groups += [(f"impl {n!r}", spec.options) for n, spec in IMPLS.items()]
  return groups


def _position_groups():
  return ([("model.position", positional.COMMON_FIELDS)]
          + [(f"position {n!r}", cls.fields) for n, cls in positional.POSITIONS.items()])


def attention_fields() -> dict[str, Field]:
  """Every ``model.attention`` field any registered entry declares, by name."""
  return merge_fields(_attention_groups())


def position_fields() -> dict[str, Field]:
  """Every ``model.position`` field any registered scheme declares, by name (``kind`` aside)."""
  return merge_fields(_position_groups())


def _block(fields: dict[str, Field]) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  for name, f in fields.items():
    c[name] = f.default
  return c


def attention_block() -> ml_collections.ConfigDict:
  """``model.attention`` with every declared field at its default."""
  return _block(attention_fields())


def position_block(kind: str = POSITION_KIND.default) -> ml_collections.ConfigDict:
  """``model.position`` for scheme ``kind`` with every declared field at its default."""
  c = ml_collections.ConfigDict({"kind": kind})
  c.update(_block(position_fields()))
  return c


def with_declared_defaults(config) -> ml_collections.ConfigDict:
  """A copy of ``config`` in which ``model.attention`` / ``model.position`` hold every
  declared field (missing ones at their defaults): configs written before a variant was
  added keep loading."""
  config = ml_collections.ConfigDict(config.to_dict() if hasattr(config, "to_dict") else config)
  m = config.model
  if Declared(m, MODEL_FIELDS).arch == "transformer" and "num_layers" in m:
    for f in MODEL_FIELDS:
      if f.name not in m:
        m[f.name] = f.default
  if "data" in config and "corpus" in config.data:   # a language model's data block
    for f in data.DATA_FIELDS:
      if f.name not in config.data:
        config.data[f.name] = f.default
  for block, fields in (("attention", attention_fields()), ("position", position_fields())):
    if block in m:
      for name, f in fields.items():
        if name not in m[block]:
          m[block][name] = f.default
  return config


def position_variant(kind: str) -> dict:
  """A sweep variant's overrides that set ``model.position.kind`` and hold every other
  position field as a typed placeholder (None: the base's value), so that the command line
  can set any of them, e.g. ``--config.sweep.variants.rope.model.position.scaling=yarn``."""
  from ml_collections import config_dict
  fields = {name: config_dict.placeholder(type(f.default))
            for name, f in position_fields().items()}
  return {"model": {"position": {**fields, "kind": kind}}}


def describe_variants() -> str:
  """Markdown: every registered kind, pattern, impl, position scheme, RoPE scaling, MLP and
  layer type with the fields it reads (defaults and meaning), and every other declared section,
  generated from the declarations."""
  def rows(fields):
    return [f"  - `{f.name}` = `{f.default!r}`: {f.doc}" for f in fields]
  out = ["# Variants and their config fields", "",
         "Generated from the declarations by "
         "`python -m attnlab.config_lib > docs/variants.md`; a test keeps it current.", ""]
  for title, field_path, items in (
      ("Kinds", "model.attention.kind", [(n, s.doc, s.fields) for n, s in KINDS.items()]),
      ("Patterns", "model.attention.pattern",
       [(n, s.doc, s.fields) for n, s in PATTERNS.items()]),
      ("Implementations", "model.attention.impl",
       [(n, s.doc, s.options) for n, s in IMPLS.items()]),
      ("Position schemes", "model.position.kind",
       [(n, (cls.__doc__ or "").strip().splitlines()[0], cls.fields)
        for n, cls in positional.POSITIONS.items()]),
      ("RoPE scalings", "model.position.scaling",
       [(n, s.doc, s.fields) for n, s in positional.ROPE_SCALINGS.items()]),
      ("MLPs", "model.mlp", [(n, s.doc, ()) for n, s in MLPS.items()]),
      ("Layer types", "model.layer_types",
       [(n, s.doc, ()) for n, s in schedule.LAYER_TYPES.items()])):
    out += [f"## {title} (`{field_path}`)", ""]
    for name, doc, fields in items:
      out.append(f"- **`{name}`**: {doc}")
      out += rows(fields)
    out.append("")
  out += ["## Shared fields", ""]
  out += rows(CORE_ATTENTION_FIELDS) + rows((POSITION_KIND,) + positional.COMMON_FIELDS)
  for title, fields in (("Model fields (`model.*`)", MODEL_FIELDS),
                        ("Data (`data.*`)", data.DATA_FIELDS),
                        ("Training (`train.*`)", TRAIN_FIELDS + LM_TRAIN_FIELDS),
                        ("Evaluation (`eval.*`)", EVAL_FIELDS),
                        ("Mesh (`mesh.*`)", parallel.MESH_FIELDS)):
    out += ["", f"## {title}", ""]
    out += rows(fields)
  return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------- run identity

def as_plain(config) -> dict:
  """A config (``ConfigDict``, ``FrozenConfigDict`` or dict) as plain JSON data."""
  if hasattr(config, "to_json"):
    return json.loads(config.to_json())
  return json.loads(json.dumps(config))


def flatten(tree: Mapping, prefix: str = "") -> dict:
  """``{"a.b.c": leaf}`` of a nested mapping."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      out.update(flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def _unread(block: Mapping, declared: Mapping[str, Field], read: set[str], path: str) -> set:
  """Paths of the declared fields of ``block`` that the run does not read: not in ``read``
  (their owner is not chosen), or whose ``applies`` says no."""
  out = set()
  view = Declared(block, declared.values())       # an absent field reads as its default
  for name in block:
    field = declared.get(name)
    if field is None:
      continue                      # undeclared: kept (we cannot tell)
    if name not in read or (field.applies is not None and not field.applies(view)):
      out.add(f"{path}.{name}")
  return out


def unused_fields(config) -> set[str]:
  """Dotted paths of the fields a run does not read: a pattern's, kind's, impl's or
  position scheme's fields when another one is chosen, a field whose ``applies`` says it
  is idle (a YaRN field without YaRN, ``data.documents`` and its separator when off), the
  attention and position blocks of a recurrent model, the recurrent block of a
  Transformer, and ``mesh.*`` (how to run, not what)."""
  raw = as_plain(config)
  unused = {f"mesh.{k}" for k in raw.get("mesh", {})}
  data_fields = {f.name: f for f in data.DATA_FIELDS}
  if "corpus" in raw.get("data", {}):      # a language model's data block
    unused |= _unread(raw["data"], data_fields, set(data_fields), "data")
  m = raw.get("model", {})
  arch = Declared(m, MODEL_FIELDS).arch
  model_fields = {f.name: f for f in MODEL_FIELDS}
  unused |= _unread(m, model_fields, set(model_fields), "model")
  if arch != "transformer":
    unused |= {f"model.{k}" for k in flatten({"attention": m.get("attention", {}),
                                              "position": m.get("position", {})})}
  else:
    a = m.get("attention")
    if a is not None and a.get("pattern") in PATTERNS and a.get("kind") in KINDS:
      read = {f.name for f in CORE_ATTENTION_FIELDS}
      read |= {f.name for f in PATTERNS.get(a["pattern"]).fields}
      read |= {f.name for f in KINDS.get(a["kind"]).fields}
      impl = Declared(a, CORE_ATTENTION_FIELDS).impl
      impls = IMPLS.names() if impl == "auto" else [impl]
      read |= {f.name for n in impls if n in IMPLS for f in IMPLS.get(n).options}
      unused |= _unread(a, attention_fields(), read, "model.attention")
    p = m.get("position")
    if p is not None and p.get("kind") in positional.POSITIONS:
      scheme = positional.POSITIONS.get(p["kind"])
      read = {"kind"} | {f.name for f in positional.COMMON_FIELDS + tuple(scheme.fields)}
      declared = {f.name: f for f in positional.COMMON_FIELDS + tuple(scheme.fields)}
      declared.update({n: f for n, f in position_fields().items() if n not in declared})
      unused |= _unread(p, declared, read, "model.position")
    if "rnn" in m:
      unused |= {f"model.rnn.{k}" for k in m["rnn"]}
  return unused


# Config blocks that say how a trained model is evaluated, not what is trained: ``eval.*``
# (the LM evaluation's budget; the task trainer's lengths, examples and batch size) and
# ``retrieval.*`` (the retrieval study's depths and trials). They are not part of a run's
# identity: changing them re-evaluates a finished run and keeps its training. (A sweep's own
# ``sweep.*`` block, with its evaluation factors and protocols, is never part of a variant's
# config.) Every evaluation cache (a sweep's ``sweep_eval.json``, the task trainer's
# ``eval.json``) records the evaluation settings it was computed with (its ``spec``) and is
# recomputed when they change. What an evaluation setting decides about the model itself is
# in the resolved model block (the task trainer sizes a learned ``model.position.max_len``
# from ``eval.lengths``), so that still counts.
EVALUATION_BLOCKS = ("eval", "retrieval")


def run_identity(config) -> dict:
  """What a run trains, as ``{dotted path: value}``: the config with its declared fields
  filled in, the fields it does not read (``unused_fields``) and the evaluation settings
  (``EVALUATION_BLOCKS``) left out. Two configs with the same identity train the same
  model: a resume compares identities, and a cached result's fingerprint hashes it (beside
  the evaluation settings the cache records itself)."""
  raw = as_plain(config)
  filled = as_plain(with_declared_defaults(raw)) if "model" in raw else raw
  unused = unused_fields(filled)
  return {k: v for k, v in flatten(filled).items()
          if k not in unused and k.split(".", 1)[0] not in EVALUATION_BLOCKS}


# Characters of a name that becomes a directory (a sweep variant's workdir).
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def check_plain_name(name, field: str) -> None:
  """A config value that becomes a directory name must be a plain name: letters, digits,
  ``_``, ``-`` and ``.``, not starting with ``.`` (so not ``.``, ``..`` or hidden), so it
  can neither leave the directory it is made in nor hide in it; otherwise ``ConfigError``
  naming ``field`` and the value."""
  if not (isinstance(name, str) and _PLAIN_NAME.fullmatch(name) and not name.startswith(".")):
    raise ConfigError(f"{field}: {name!r} cannot name a directory; valid: a plain name of "
                      f"letters, digits, '_', '-' and '.', not starting with '.' (no '/', "
                      f"not '.' or '..', not an absolute path)")


# ----------------------------------------------------------------------------- validation

def _positive_int(value, field):
  if not isinstance(value, int) or isinstance(value, bool) or value < 1:
    raise ConfigError(f"{field}={value!r} must be an integer >= 1")


def _choice(value, field, valid):
  valid = list(valid)
  if value not in valid:
    raise ConfigError(f"{field}={value!r} is not valid; valid: {', '.join(map(str, valid))}")


def check_attention(a, seq_len: int, position_kind: str) -> None:
  """The fields the chosen pattern, kind and impls read, and the combinations of the axes."""
  _choice(a.kind, "model.attention.kind", KINDS.names())
  _choice(a.pattern, "model.attention.pattern", PATTERNS.names())
  _choice(a.impl, "model.attention.impl", impl_names())
  context = {"block": a, "seq_len": seq_len}
  pattern, kind = PATTERNS.get(a.pattern), KINDS.get(a.kind)
  for owner, fields in ((f"pattern {a.pattern!r}", pattern.fields),
                        (f"kind {a.kind!r}", kind.fields),
                        *((f"impl {n!r}", spec.options) for n, spec in IMPLS.items())):
    for f in fields:
      if f.name in a:
        f.validate(a[f.name], f"model.attention.{f.name}", context, owner)
  if kind.patterns is not None and a.pattern not in kind.patterns:
    raise ConfigError(f"model.attention.kind={a.kind!r} takes pattern one of "
                      f"{', '.join(kind.patterns)}; got model.attention.pattern={a.pattern!r}")
  scheme = positional.POSITIONS.get(position_kind)
  if scheme.biases and not kind.honours_score_mods:
    valid = [n for n, cls in positional.POSITIONS.items() if not cls.biases]
    raise ConfigError(f"model.attention.kind={a.kind!r} never forms the score matrix, so it "
                      f"cannot add the {position_kind!r} bias; model.position.kind valid with it: "
                      f"{', '.join(valid)}")
  if kind.shared_qk and not scheme.symmetric_qk:
    valid = [n for n, cls in positional.POSITIONS.items()
             if cls.symmetric_qk and not (cls.biases and not kind.honours_score_mods)]
    raise ConfigError(f"model.attention.kind={a.kind!r} shares queries and keys, which "
                      f"{position_kind!r} transforms differently; model.position.kind valid "
                      f"with it: {', '.join(valid)}")
  if kind.shared_qk and a.num_kv_heads != a.num_heads:
    raise ConfigError(f"model.attention.kind={a.kind!r} shares queries and keys, so "
                      f"model.attention.num_kv_heads={a.num_kv_heads} must equal "
                      f"num_heads={a.num_heads}")


def check_position(p, *, head_dim: int, d_model: int, seq_len: int, trained_length: int,
                   trained_what: str = "") -> None:
  """The scheme's declared fields, its own cross-field checks and randomization.

  ``seq_len``: the longest sequence the model must encode; ``trained_length``: the longest
  training sequence (randomized positions must cover it), ``trained_what`` its name.
  """
  _choice(p.kind, "model.position.kind", positional.POSITIONS.names())
  cls = positional.POSITIONS.get(p.kind)
  context = {"block": p, "seq_len": seq_len}
  for f in positional.COMMON_FIELDS + cls.fields:
    if f.name in p:
      f.validate(p[f.name], f"model.position.{f.name}", context, f"position {p.kind!r}")
  if Declared(p, positional.COMMON_FIELDS).randomize:
    randomizable = [n for n, c in positional.POSITIONS.items() if c.randomizable]
    _choice(p.kind, "model.position.kind (with model.position.randomize=True)", randomizable)
    if p.random_max_len < trained_length:
      what = trained_what or f"{trained_length}, the longest training sequence"
      raise ConfigError(f"model.position.random_max_len={p.random_max_len!r} must be an integer "
                        f">= {what}")
  cls(p).validate(head_dim, d_model, seq_len)


def resolve(config) -> ml_collections.FrozenConfigDict:
  """Validated, with derived defaults filled in, frozen (hashable for Flax modules)."""
  config = with_declared_defaults(config)
  p = config.model.position
  _choice(p.kind, "model.position.kind", positional.POSITIONS.names())
  positional.POSITIONS.get(p.kind).resolve(p, config.data.seq_len)
  validate(config)
  return ml_collections.FrozenConfigDict(config)


def check_fields(block, fields, path: str, context: Mapping | None = None) -> None:
  """Validate every declared field present in ``block`` (a config block at ``path``)."""
  context = {"block": block, **(context or {})}
  for f in fields:
    if f.name in block:
      f.validate(block[f.name], f"{path}.{f.name}", context)


def check_model(m, *, seq_len: int, trained_length: int, trained_what: str = "",
                position=None) -> None:
  """A Transformer's ``model`` block: its declared fields, heads, the attention block (the
  pattern must be causal: a language model, or a seq2seq decoder's self-attention) and the
  position block (``position``: a resolved copy of ``m.position``; default ``m.position``).
  ``seq_len``: the longest sequence it must encode; ``trained_length``: the longest it trains
  on (``trained_what`` names it)."""
  a, p = m.attention, m.position if position is None else position
  check_fields(m, MODEL_FIELDS, "model")
  for field in ("num_heads", "num_kv_heads"):
    _positive_int(a[field], f"model.attention.{field}")
  if a.num_heads % a.num_kv_heads:
    divisors = [n for n in range(1, a.num_heads + 1) if a.num_heads % n == 0]
    raise ConfigError(
        f"model.attention.num_kv_heads={a.num_kv_heads} must divide "
        f"model.attention.num_heads={a.num_heads}; valid: {', '.join(map(str, divisors))}")
  if not Declared(m, MODEL_FIELDS).head_dim and m.d_model % a.num_heads:
    raise ConfigError(f"model.d_model={m.d_model} must be divisible by "
                      f"model.attention.num_heads={a.num_heads} (or set model.head_dim)")
  _choice(a.pattern, "model.attention.pattern", PATTERNS.names())
  if not PATTERNS.get(a.pattern).causal:
    causal = [n for n, spec in PATTERNS.items() if spec.causal]
    raise ConfigError(
        f"model.attention.pattern={a.pattern!r} lets a token see the token it must predict, "
        f"which a causal language model cannot use; valid: {', '.join(causal)}")
  _choice(p.kind, "model.position.kind", positional.POSITIONS.names())
  check_attention(a, seq_len, p.kind)
  check_position(p, head_dim=rotated_dim(m), d_model=m.d_model, seq_len=seq_len,
                 trained_length=trained_length, trained_what=trained_what)
  check_schedule(m, p)
  check_attention_variants(m, p)
  check_moe(m)


def rotated_dim(m) -> int:
  """Width of the query/key heads the position scheme encodes: head_dim, MLA's
  ``latent_rope_dim``, or half of head_dim under differential attention."""
  a = Declared(m.attention, CORE_ATTENTION_FIELDS)
  if a.latent_rank:
    return int(a.latent_rope_dim)
  return head_dim(m) // 2 if a.differential else head_dim(m)


def check_attention_variants(m, p) -> None:
  """MLA and differential attention against the other axes (``model.attention``'s
  ``latent_rank``, ``differential``)."""
  a = Declared(m.attention, CORE_ATTENTION_FIELDS)
  kind, scheme = KINDS.get(a.kind), positional.POSITIONS.get(p.kind)
  softmax = [n for n, spec in KINDS.items() if spec.uses_impl]
  for field, on in (("latent_rank", a.latent_rank), ("differential", a.differential)):
    if not on:
      continue
    if not kind.uses_impl:
      raise ConfigError(f"model.attention.{field}={on!r} needs a kind computed by "
                        f"dot_product_attention; model.attention.kind={a.kind!r}; valid: "
                        f"{', '.join(softmax)}")
    if scheme.reads_input:
      valid = [n for n, cls in positional.POSITIONS.items() if not cls.reads_input]
      raise ConfigError(f"model.attention.{field}={on!r} does not take model.position.kind="
                        f"{p.kind!r} (its gates read the layer input per head); valid: "
                        f"{', '.join(valid)}")
  if (a.latent_rank or a.differential) and a.impl in IMPLS:
    # both attend with value heads of another width than their query/key heads: ask the impl
    field = "latent_rank" if a.latent_rank else "differential"
    q = jax.ShapeDtypeStruct((1, 8, 2, 4), jax.numpy.float32)
    v = jax.ShapeDtypeStruct((1, 8, 2, 8), jax.numpy.float32)
    spec = IMPLS.get(a.impl)
    reason = spec.unsupported(q, q, v, None, None)
    if reason and not spec.unsupported(q, q, q, None, None):   # the width alone, not the host
      raise ConfigError(f"model.attention.{field}={a[field]!r} attends with value heads of "
                        f"another width than its query/key heads, which "
                        f"model.attention.impl={a.impl!r} refuses ({reason})")
  if a.latent_rank and a.differential:
    raise ConfigError("model.attention.differential=True with model.attention.latent_rank="
                      f"{a.latent_rank}: choose one (differential attention splits the plain "
                      "projections' heads)")
  if a.latent_rank and a.qk_norm:
    raise ConfigError(f"model.attention.qk_norm=True with model.attention.latent_rank="
                      f"{a.latent_rank}: MLA normalises its latents, not its heads; valid: False")
  if a.differential:
    if head_dim(m) % 2 or head_dim(m) < 2:
      raise ConfigError(f"model.attention.differential=True splits each head in two halves; "
                        f"the head dim {head_dim(m)} must be even")
    if scheme.biases:
      valid = [n for n, cls in positional.POSITIONS.items()
               if not cls.biases and not cls.reads_input]
      raise ConfigError(f"model.attention.differential=True: model.position.kind={p.kind!r} "
                        f"biases the scores per head, which the two maps of a head would "
                        f"have to share; valid: {', '.join(valid)}")


def check_moe(m) -> None:
  """The routed MLP's fields against each other (``model.mlp="moe"``)."""
  view = Declared(m, MODEL_FIELDS)
  if view.mlp != "moe":
    return
  e, k = int(view.moe_experts), int(view.moe_top_k)
  if k > e:
    raise ConfigError(f"model.moe_top_k={k} must be at most model.moe_experts={e}")
  if view.moe_router == "sigmoid_grouped":
    groups, topk_groups = int(view.moe_groups), int(view.moe_topk_groups)
    if e % groups or e // groups < 2:
      raise ConfigError(f"model.moe_groups={groups} must divide model.moe_experts={e} into "
                        f"groups of at least 2 experts (a group scores by its best two)")
    if topk_groups > groups:
      raise ConfigError(f"model.moe_topk_groups={topk_groups} must be at most "
                        f"model.moe_groups={groups}")
    if k > topk_groups * (e // groups):
      raise ConfigError(f"model.moe_top_k={k} exceeds the experts of the chosen groups "
                        f"(moe_topk_groups x experts per group = {topk_groups * (e // groups)})")


def check_schedule(m, p) -> None:
  """``model.layer_types`` and what its layer types need of the other axes, and the
  shared attention fields that only some kinds can honour."""
  view = Declared(m, MODEL_FIELDS)
  a = Declared(m.attention, CORE_ATTENTION_FIELDS)
  kind = KINDS.get(a.kind)
  if a.softcap and not kind.honours_score_mods:
    valid = [n for n, spec in KINDS.items() if spec.honours_score_mods]
    raise ConfigError(f"model.attention.softcap={a.softcap!r}: kind {a.kind!r} never forms the "
                      f"score matrix, so it cannot cap scores; valid kinds: {', '.join(valid)}")
  if a.sink_logit != "none" and not kind.sinks:
    valid = [n for n, spec in KINDS.items() if spec.sinks]
    raise ConfigError(f"model.attention.sink_logit={a.sink_logit!r}: kind {a.kind!r} has no softmax "
                      f"denominator to add a sink to; valid kinds with sinks: {', '.join(valid)}")
  if a.sink_logit != "none" and a.impl not in ("auto", *[n for n, s in IMPLS.items() if s.sinks]):
    valid = [n for n, s in IMPLS.items() if s.sinks]
    raise ConfigError(f"model.attention.sink_logit={a.sink_logit!r}: impl {a.impl!r} does not serve "
                      f"sinks; valid impls with sinks: auto, {', '.join(valid)}")
  if a.score_scale and kind.shared_qk:
    raise ConfigError(f"model.attention.score_scale={a.score_scale!r}: kind {a.kind!r} shares "
                      f"queries and keys, so scaling the queries would scale the keys; valid "
                      f"with it: 0")
  types = set(schedule.parse(view.layer_types))
  specs = [schedule.LAYER_TYPES.get(t) for t in types]
  scheme = positional.POSITIONS.get(p.kind)
  if any(not s.positions for s in specs) and scheme.embeds:
    valid = [n for n, cls in positional.POSITIONS.items() if not cls.embeds]
    raise ConfigError(f"model.layer_types={view.layer_types!r} has layers without positions, "
                      f"but model.position.kind={p.kind!r} adds positions to the input "
                      f"embeddings (every layer sees them); valid position kinds with NoPE "
                      f"layers: {', '.join(valid)}")
  if any(s.local for s in specs):
    if kind.patterns is not None and "sliding_window" not in kind.patterns:
      raise ConfigError(f"model.layer_types={view.layer_types!r} has local (sliding-window) "
                        f"layers, which model.attention.kind={a.kind!r} cannot take (it takes "
                        f"only {', '.join(kind.patterns)})")
    if view.local_rope_theta and "theta" not in {f.name for f in scheme.fields}:
      valid = [n for n, cls in positional.POSITIONS.items()
               if "theta" in {f.name for f in cls.fields}]
      raise ConfigError(f"model.local_rope_theta={view.local_rope_theta!r} sets the rotary "
                        f"base of local layers, but model.position.kind={p.kind!r} has none; "
                        f"valid: 0, or model.position.kind in {', '.join(valid)}")


def validate(config) -> None:
  """Check every field that could fail later; raise the first problem as ``ConfigError``."""
  m, d, t = config.model, config.data, config.train
  check_fields(m, MODEL_FIELDS, "model")
  tokens = data.tokenizer_vocab_size(d)
  if m.vocab_size < tokens or (d.tokenizer == "bytes" and m.vocab_size != tokens):
    what = ("the data are UTF-8 bytes (ids 0..255)" if d.tokenizer == "bytes"
            else f"data.tokenizer={d.tokenizer!r} has {tokens} tokens")
    need = f"must be {tokens}" if d.tokenizer == "bytes" else f"must be >= {tokens}"
    raise ConfigError(f"model.vocab_size={m.vocab_size} {need}: {what}")
  check_fields(d, data.DATA_FIELDS, "data")
  check_model(m, seq_len=d.seq_len, trained_length=d.seq_len,
              trained_what=f"data.seq_len={d.seq_len}")
  if d.path and not pathlib.Path(d.path).expanduser().is_file():
    raise ConfigError(f"data.path={d.path!r} is not a readable file")
  if not d.path:
    _choice(d.corpus, "data.corpus", tuple(data.CORPORA) + tuple(RETRIEVAL_TASKS))
  check_documents(config)

  check_optimizer(t)
  check_fields(t, TRAIN_FIELDS + LM_TRAIN_FIELDS, "train")
  check_fields(config.eval, EVAL_FIELDS, "eval")
  parallel.check_mesh(config)


def check_documents(config) -> None:
  """With ``data.documents``: what packed documents need of the model and the mesh. The
  attention must take the document mask (a kind that takes only its own patterns ignores
  masks), positions must restart per document (randomized positions are drawn per row),
  and a sequence-sharded mesh is not supported (ring attention itself serves segments, but
  training with documents over a ``mesh.sequence`` > 1 has not been tested)."""
  if not Declared(config.data, data.DATA_FIELDS).documents:
    return
  m = config.model
  arch = Declared(m, MODEL_FIELDS).arch
  if arch != "transformer":
    raise ConfigError(f"data.documents=True needs model.arch='transformer', not {arch!r} (a "
                      f"recurrent model carries its state across documents)")
  kind = KINDS.get(m.attention.kind)
  if kind.patterns is not None:
    valid = [n for n, spec in KINDS.items() if spec.patterns is None]
    raise ConfigError(f"data.documents=True: model.attention.kind={m.attention.kind!r} takes "
                      f"only the patterns {', '.join(kind.patterns)}, not a document mask; "
                      f"valid kinds with documents: {', '.join(valid)}")
  if Declared(m.position, positional.COMMON_FIELDS).randomize:
    raise ConfigError("data.documents=True: model.position.randomize=True draws positions per "
                      "row, not per document; valid with documents: model.position.randomize="
                      "False")
  sequence = int(Declared(config.get("mesh", {}), parallel.MESH_FIELDS).sequence)
  if sequence > 1:
    raise ConfigError(f"data.documents=True: mesh.sequence={sequence} (ring attention) is not "
                      f"supported with documents yet; valid with documents: mesh.sequence=1")


def _number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_optimizer(t) -> None:
  """``train.lr``, warmup, schedule, AdamW's betas and decay, clipping: finite and in range.
  A warmup longer than the run is allowed (it warms up for the steps it has)."""
  if not (_number(t.lr) and t.lr > 0):
    raise ConfigError(f"train.lr={t.lr!r} must be > 0 and finite")
  if not (isinstance(t.warmup_steps, int) and not isinstance(t.warmup_steps, bool)
          and t.warmup_steps >= 0):
    raise ConfigError(f"train.warmup_steps={t.warmup_steps!r} must be an integer >= 0")
  if "min_lr_ratio" in t and not (_number(t.min_lr_ratio) and 0.0 <= t.min_lr_ratio <= 1.0):
    raise ConfigError(f"train.min_lr_ratio={t.min_lr_ratio!r} must be in [0, 1]")
  if "grad_clip" in t and not (_number(t.grad_clip) and t.grad_clip > 0):
    raise ConfigError(f"train.grad_clip={t.grad_clip!r} must be > 0 and finite")
  for field in ("b1", "b2"):
    if field in t and not (_number(t[field]) and 0.0 <= t[field] < 1.0):
      raise ConfigError(f"train.{field}={t[field]!r} must be in [0, 1) (AdamW's decay rate)")
  if "weight_decay" in t and not (_number(t.weight_decay) and t.weight_decay >= 0):
    raise ConfigError(f"train.weight_decay={t.weight_decay!r} must be >= 0 and finite")


def merge_overrides(base: ml_collections.ConfigDict, overrides, path: str) -> None:
  """Set every leaf of ``overrides`` in ``base``; unknown fields are errors naming the path.
  A leaf that is None keeps the base's value (a variant lists a field only so that the
  command line can set it: ``--config.sweep.variants.rope.model.position.scaling=yarn``)."""
  for key, value in overrides.items():
    if value is None:
      continue
    if key not in base:
      close = nearest(key, base.keys())
      hint = f"; nearest: {', '.join(close)}" if close else ""
      raise ConfigError(f"{path}.{key}: no such config field{hint}; valid: "
                        f"{', '.join(sorted(base.keys()))}")
    if isinstance(value, (dict, ml_collections.ConfigDict)):
      merge_overrides(base[key], value, f"{path}.{key}")
    else:
      try:
        base[key] = value
      except TypeError as e:
        raise ConfigError(f"{path}.{key}={value!r}: {e}") from None


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


if __name__ == "__main__":
  print(describe_variants(), end="")
