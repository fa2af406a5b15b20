"""The conformance suite for per-layer schedules (``schedule.LAYER_TYPES``) and the shared
attention-layer mechanisms (``common.ATTENTION_FIELDS``: QK-norm, score soft-cap, score
scale; and the block's: sandwich norms, embedding scale, final-logit soft-cap, head width,
MLP): every registered layer type and every declared mechanism is tested because it is
registered or declared (the checks and tiers: ``tests/conformance.py``).

Each runs in a 3-layer language model: the impls give the loss and every parameter's
gradient of ``reference`` (the Pallas kernel in interpret mode where the layer type is a mask
or the mechanism a score modifier), and reading the text through the KV cache, past a
rolling local window, gives the full forward pass's logits. What each mechanism computes is
checked against the models that use it (transformers' Qwen3, Gemma-2, Gemma-3, SmolLM3:
tests/test_import_hf.py).
"""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

import conformance as C
from attnlab.models import MLPS, schedule
from attnlab.models.common import ATTENTION_FIELDS

LAYER_TYPES = schedule.LAYER_TYPES.names()
# a value that turns each mechanism on (a declared field without a case fails below)
MECHANISMS = {
    "attention.qk_norm": True,
    "attention.softcap": 2.0,           # scores of these sharp models reach ~10: capped hard
    "attention.score_scale": 0.5,
    "attention.sink_logit=off_by_one": "off_by_one",
    "attention.sink_logit": "learned",       # after off_by_one: the all-at-once model learns them
    "post_norms": True,
    "embed_scale": True,
    "logit_softcap": 3.0,
    "head_dim": 12,
    # every registered MLP other than the default
    **{f"mlp={name}": name for name in MLPS.names() if name != C.config_lib.lm_config().model.mlp},
    "attention.output_gate": "elementwise",
    "attention.output_gate=headwise": "headwise",
}
# variants that replace the projections or the softmax path: each excludes the others (and MLA
# QK-norm), so the all-at-once model takes the others with each in turn. A dict value is
# several changes at once.
VARIANTS = {
    "attention.differential": True,
    "attention.latent_rank": 12,
    "attention.latent_query_rank": {"attention.latent_rank": 12, "attention.latent_query_rank": 10},
    "attention.latent_rope_dim": {"attention.latent_rank": 12, "attention.latent_rope_dim": 6},
    "attention.latent_value_dim": {"attention.latent_rank": 12, "attention.latent_value_dim": 6},
}
ALL_AT_ONCE = dict(MECHANISMS)
MECHANISMS.update(VARIANTS)
# mechanisms the kernel applies to the scores or its softmax, and the variants whose value
# head dim differs from the key's (MLA, differential): the fused kernel is checked on them
SCORE_MODIFIERS = ("attention.softcap", "attention.sink_logit", "attention.sink_logit=off_by_one",
                   *VARIANTS)


def layered_config(layer_types="global", layers=3, **changes):
  """The conformance model with ``layers`` layers, a local window of 5 and ``changes``
  (dotted ``model`` paths) applied."""
  c = C.model_config("causal", "rope", seq_len=C.LENGTH)
  c.model.num_layers, c.model.layer_types, c.model.local_window = layers, layer_types, C.SMALL
  for key, value in changes.items():
    for path, v in (value.items() if isinstance(value, dict) else [(key, value)]):
      *blocks, name = path.split("=")[0].split(".")
      target = c.model
      for block in blocks:
        target = target[block]
      target[name] = v
  return c


def test_every_shared_attention_field_has_a_case():
  declared = {f"attention.{f.name}" for f in ATTENTION_FIELDS}
  missing = declared - set(MECHANISMS)
  assert not missing, f"give these declared fields a MECHANISMS case: {sorted(missing)}"
  assert {f"mlp={name}" for name in MLPS.names()} - set(MECHANISMS) == {"mlp=gelu"}


def test_every_mechanism_and_layer_type_at_once():
  """The default tier's one model: every mechanism on, schedule 'local,nope,global'
  (Gemma-3-like): the cache past a rolling window, and blockwise's loss and gradients.
  Each mechanism and layer type alone: the slow tier below."""
  config = layered_config("local,nope,global", **ALL_AT_ONCE)
  C.check_causal(config, "all")
  C.skip_if(C.check_cached_decoding(config, "all"))


@pytest.mark.parametrize("variant", ["attention.differential", "attention.latent_value_dim"])
def test_each_variant_with_every_other_mechanism(variant):
  """MLA (its latent cache, the absorbed form) and differential attention, each with every
  mechanism it composes with (MLA normalises latents, not heads: no QK-norm) and the
  'local,nope,global' schedule: causal, and cached decoding equals the full forward."""
  others = {k: v for k, v in ALL_AT_ONCE.items()
            if not (k == "attention.qk_norm" and "latent" in variant)}
  config = layered_config("local,nope,global", **others, **{variant: VARIANTS[variant]})
  C.check_causal(config, variant)
  C.skip_if(C.check_cached_decoding(config, variant))


@pytest.mark.slow
def test_every_mechanism_and_layer_type_at_once_values_and_gradients():
  C.check_model_impl(layered_config("local,nope,global", **ALL_AT_ONCE), "blockwise",
                     "all/blockwise")


@pytest.mark.slow
@pytest.mark.parametrize("layer_type", LAYER_TYPES)
def test_layer_type_decodes_like_the_full_forward(layer_type):
  """``{type},global`` over 3 layers (the unit wraps); the window of 5 rolls over 24 tokens."""
  config = layered_config(f"{layer_type},global")
  C.check_causal(config, layer_type)
  C.skip_if(C.check_cached_decoding(config, layer_type))
  C.skip_if(C.check_generation(config, layer_type))


@pytest.mark.slow
@pytest.mark.parametrize("impl", ["blockwise", "pallas"])
@pytest.mark.parametrize("layer_type", LAYER_TYPES)
def test_layer_type_values_and_gradients(layer_type, impl):
  if impl == "pallas" and not schedule.LAYER_TYPES.get(layer_type).local:
    pytest.skip(f"{layer_type!r} changes no mask: the kernel sees the model's own pattern")
  C.check_model_impl(layered_config(f"{layer_type},global"), impl, f"{layer_type}/{impl}")


def test_local_layers_keep_only_their_window_in_the_cache():
  """A 'local*2,global' model at 40 positions: local layers roll local_window + 1 slots."""
  from attnlab.models import kv_cache
  cfg = C.config_lib.resolve(layered_config("local*2,global"))
  layouts = kv_cache.layouts_for(cfg.model, 40)
  assert [x.capacity for x in layouts] == [C.SMALL + 1, C.SMALL + 1, 40]
  cache = jax.eval_shape(lambda: kv_cache.init_cache(cfg.model, 1, layouts))
  assert [layer[0].shape[1] for layer in cache.layers] == [C.SMALL + 1, C.SMALL + 1, 40]


@pytest.mark.slow
@pytest.mark.parametrize("mechanism", list(MECHANISMS))
def test_mechanism_decodes_like_the_full_forward(mechanism):
  config = layered_config("local,global", **{mechanism: MECHANISMS[mechanism]})
  C.check_causal(config, mechanism)
  C.skip_if(C.check_cached_decoding(config, mechanism))


@pytest.mark.slow
@pytest.mark.parametrize("mechanism", list(MECHANISMS))
def test_mechanism_values_and_gradients(mechanism):
  impls = ["blockwise"] + (["pallas"] if mechanism in SCORE_MODIFIERS else [])
  config = layered_config("local,global", **{mechanism: MECHANISMS[mechanism]})
  for impl in impls:
    C.check_model_impl(config, impl, f"{mechanism}/{impl}")


@pytest.mark.parametrize("mechanism", [m for m in MECHANISMS if m != "head_dim"])
def test_mechanism_changes_the_model(mechanism):
  """The field is read: with the same parameters (those the default model has), turning the
  mechanism on changes the logits."""
  _, on_model, on_params = C.built(layered_config(layers=1,
                                                  **{mechanism: MECHANISMS[mechanism]}))
  _, off_model, off_params = C.built(layered_config(layers=1))
  shared = _restrict(on_params, off_params)
  x = C.tokens()
  on = C.full_logits(on_model, on_params, x)
  off = C.full_logits(off_model, shared, x)
  assert np.abs(on - off).max() > 1e-3, f"{mechanism}: turning it on changed nothing"


def _restrict(params, like):
  """``params`` restricted to the tree of ``like`` (a parameter ``like`` lacks is dropped;
  one ``params`` lacks is taken from ``like``)."""
  if not isinstance(like, dict):
    return params if getattr(params, "shape", None) == like.shape else like
  if not isinstance(params, dict):    # a parameter where ``like`` has a module (mlp="moe")
    return like
  return {k: _restrict(params[k], v) if k in params else v for k, v in like.items()}


def test_attention_maps_follow_each_layers_type():
  """``attnlab.analysis`` captures what each layer computes: a local layer's rows are zero
  beyond its window, a global layer's are not; every row sums to 1 (no sinks here: a sink
  takes mass, tests/test_analysis_metrics.py); capturing leaves the logits unchanged."""
  from attnlab.analysis import capture
  no_sinks = {m: v for m, v in ALL_AT_ONCE.items() if not m.startswith("attention.sink_logit")}
  _, model, params = C.built(layered_config("local,nope,global", **no_sinks))
  x = C.tokens()
  logits, maps = capture.capture_attention(model, params, x)   # [layers, B, H, N, N]
  np.testing.assert_allclose(logits, C.full_logits(model, params, x), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(maps.sum(-1), 1.0, atol=1e-5)
  n = x.shape[1]
  far = np.tril(np.ones((n, n), bool), -(C.SMALL + 1))        # keys more than window back
  assert np.abs(maps[0][..., far]).max() == 0.0               # local
  assert maps[1][..., far].max() > 1e-4 and maps[2][..., far].max() > 1e-4   # nope, global


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["qk_norm", "softcap", "gemma2", "gemma3", "smollm3",
                                    "gpt_oss", "deepseek_v3", "differential", "gated"])
def test_modern_presets_train_alike_under_each_impl(preset, tmp_path):
  """Each modern preset (at d=32, windows of 8 over 32 tokens) trains: the loss falls over
  12 steps, and blockwise (and the kernel, for the presets whose mechanisms are masks or
  score modifiers) logs the losses reference logs."""
  from configs import lm
  from attnlab.engine import training
  assert preset in lm.MODERN
  impls = ["reference", "blockwise"] + (["pallas"] if preset in (
      "softcap", "gemma2", "gpt_oss", "deepseek_v3", "differential") else [])
  losses = {}
  for impl in impls:
    c = lm.get_config(preset)
    c.model.num_layers = min(int(c.model.num_layers), 6)
    c.model.d_model, c.model.attention.num_heads = 32, 4
    c.model.attention.num_kv_heads = 2
    c.model.local_window = 8
    c.model.attention.impl = impl
    c.model.attention.block_q = c.model.attention.block_kv = 16
    c.data.corpus, c.data.seq_len = "tinyshakespeare", 32
    c.train.steps, c.train.batch_size, c.train.warmup_steps = 12, 8, 2
    c.train.log_every = c.train.eval_every = c.train.checkpoint_every = 4
    c.train.eval_batches = 1
    training.train_and_evaluate(c, tmp_path / impl, progress=False)
    records = [json.loads(line) for line in
               (tmp_path / impl / "metrics.jsonl").read_text().splitlines()]
    losses[impl] = np.array([r["loss"] for r in records if r["split"] == "train"])
  assert losses["reference"][-1] < losses["reference"][0] - 0.05, losses["reference"]
  for impl in impls[1:]:
    np.testing.assert_allclose(losses[impl], losses["reference"], rtol=2e-4, err_msg=impl)
