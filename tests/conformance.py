"""The checks of the conformance suite, as functions of a registry entry.

``tests/test_conformance_*.py`` walk the registries (patterns, position schemes, score
modifiers, kinds, implementations) and calls these checks on every entry, for every
combination its declarations say it supports; ``tests/test_conformance_catches.py`` calls
them on deliberately broken entries to show they fail. Each check raises
``AssertionError`` with what differed, and returns a reason string when the entry declares
it cannot be checked that way (the test then skips with that reason).

Oracles (``tests/oracles.py``) share no code with attnlab's implementations: an entry's own
predicate, bias or modifier is its definition, evaluated densely; softmax attention, its
backward pass, tile classes and derivatives are computed there independently.
"""

from __future__ import annotations

import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import oracles
from attnlab import config_lib, positional
from attnlab import workdir as workdir_lib
from attnlab.attention import IMPLS, KINDS, PATTERNS, dot_product_attention, masks
from attnlab.attention import score_mods as score_mods_lib
from attnlab.inference import generation
from attnlab.models import TransformerLM, kv_cache
from attnlab.registry import ConfigError, Field

# Small sizes: several tiles per axis, a padded last tile, GQA (two query heads per kv head).
BATCH, LENGTH, HEADS, KV_HEADS, HEAD_DIM = 2, 40, 4, 2, 8
# Tiles of the tiled impls at these sizes (the Pallas kernel's smallest tile is 16).
TILES = {"blockwise": (8, 16), "pallas": (16, 16)}
# Integer fields of a pattern whose defaults span more than a small test sequence are set
# to this, so the pattern's structure shows in 40 tokens (a window of 64 would be dense).
SMALL = 5
VALUES = dict(rtol=1e-5, atol=1e-5)


def _grad_close(actual, expected, what, rtol=1e-5):
  actual, expected = np.asarray(actual), np.asarray(expected)
  assert np.all(np.isfinite(actual)), f"{what}: non-finite gradient"
  atol = rtol * max(1.0, float(np.abs(expected).max()))
  np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=what)


def skip_if(reason):
  """Skip the test with the entry's own reason, if it gave one."""
  if reason:
    pytest.skip(reason[:300])


def slow(*values):
  """A parametrize case of the slow tier."""
  return pytest.param(*values, marks=pytest.mark.slow)


# ----------------------------------------------------------------------------- configs

def small_settings(fields) -> dict:
  """Test values for an entry's fields: integer defaults of 8 or more become ``SMALL`` (when
  the field accepts it), so windows, blocks and strides act inside a short sequence."""
  out = {}
  for f in fields:
    if (isinstance(f.default, int) and not isinstance(f.default, bool) and f.default >= 8
        and f.problem(SMALL, {}) is None):
      out[f.name] = SMALL
  return out


def attention_block(pattern="causal", kind="softmax", impl="auto", heads=HEADS,
                    kv_heads=KV_HEADS, **fields) -> ml_collections.ConfigDict:
  """``model.attention`` with the pattern's and kind's fields at small test values."""
  a = config_lib.attention_block()
  a.pattern, a.kind, a.impl, a.num_heads, a.num_kv_heads = pattern, kind, impl, heads, kv_heads
  a.update(small_settings(PATTERNS.get(pattern).fields))
  a.update(small_settings(KINDS.get(kind).fields))
  a.update(fields)
  return a


def model_config(pattern="causal", position="rope", kind="softmax", impl="auto",
                 kv_heads=KV_HEADS, seq_len=32, **position_fields) -> ml_collections.ConfigDict:
  """A tiny language model (1 layer, d = 32, 4 heads) with the given axes."""
  c = config_lib.lm_config()
  c.model.num_layers, c.model.d_model = 1, 32
  c.model.attention = attention_block(pattern, kind, impl, HEADS, kv_heads)
  c.model.position.kind = position
  c.model.position.update(position_fields)
  c.data.corpus, c.data.seq_len = "tinyshakespeare", seq_len
  c.train.steps, c.train.batch_size = 4, 2
  return c


# ----------------------------------------------------------------------------- dense views

def dense_mask(mask, nq: int, nk: int) -> np.ndarray:
  """A pattern's predicate on the whole grid: bool [b, h, nq, nk] (b, h may be 1)."""
  with jax.ensure_compile_time_eval():
    m = np.asarray(mask(jnp.arange(nq)[:, None], jnp.arange(nk)[None, :]), bool)
  m = np.broadcast_to(m, m.shape[:-2] + (nq, nk))
  return m.reshape((1,) * (4 - m.ndim) + m.shape)


def modifier_view(score_mod, nq: int, nk: int):
  """(bias, score_fn) for ``oracles.attention``: an additive modifier's bias evaluated on the
  grid, or a general modifier as a function of float64 logits."""
  if score_mod is None:
    return None, None
  q_idx, kv_idx = jnp.arange(nq)[:, None], jnp.arange(nk)[None, :]
  if (isinstance(score_mod, score_mods_lib.AdditiveBias)
          and type(score_mod).__call__ is score_mods_lib.AdditiveBias.__call__):
    b = np.asarray(score_mod.bias(q_idx, kv_idx), np.float64)
    return b.reshape((1,) * (4 - b.ndim) + b.shape), None
  return None, lambda s: np.asarray(score_mod(jnp.asarray(s, jnp.float32), q_idx, kv_idx),
                                    np.float64)


def float_leaves(tree) -> list:
  return [x for x in jax.tree_util.tree_leaves(tree)
          if hasattr(x, "dtype") and jnp.issubdtype(jnp.result_type(x), jnp.floating)]


def with_float_leaves(tree, leaves):
  """``tree`` with its float leaves replaced, in ``float_leaves`` order."""
  flat, treedef = jax.tree_util.tree_flatten(tree)
  it = iter(leaves)
  flat = [next(it) if hasattr(x, "dtype") and jnp.issubdtype(jnp.result_type(x), jnp.floating)
          else x for x in flat]
  return jax.tree_util.tree_unflatten(treedef, flat)


# ----------------------------------------------------------------------------- patterns

def check_block_map(mask, nq: int, nk: int, block_q: int, block_kv: int, what: str = "") -> None:
  """Every tile the block map calls EMPTY holds no visible pair, every FULL tile only
  visible pairs (PARTIAL is always safe)."""
  got = np.asarray(mask.block_map(nq, nk, block_q, block_kv))
  want = oracles.tile_classes(dense_mask(mask, nq, nk), block_q, block_kv)
  assert got.shape == want.shape, f"{what}: block map shape {got.shape} != {want.shape}"
  wrong_empty = np.argwhere((got == masks.EMPTY) & (want != oracles.EMPTY))
  assert not len(wrong_empty), (f"{what}: tiles {wrong_empty[:3].tolist()} are marked EMPTY "
                                f"but hold visible pairs ({nq}x{nk}, tiles {block_q}x{block_kv})")
  wrong_full = np.argwhere((got == masks.FULL) & (want != oracles.FULL))
  assert not len(wrong_full), (f"{what}: tiles {wrong_full[:3].tolist()} are marked FULL but "
                               f"hold masked pairs ({nq}x{nk}, tiles {block_q}x{block_kv})")


def check_band(mask, nq: int, nk: int, what: str = "") -> None:
  """A pattern that says it is a band (``Mask.band``) is exactly that band."""
  band = mask.band()
  if band is None:
    return
  left, right = band
  i, j = np.arange(nq)[:, None], np.arange(nk)[None, :]
  want = np.ones((nq, nk), bool)
  if left is not None:
    want &= j >= i - left
  if right is not None:
    want &= j <= i + right
  got = dense_mask(mask, nq, nk)
  assert np.array_equal(got, np.broadcast_to(want, got.shape)), f"{what}: not the band {band}"


def check_lookback(spec, att, length: int, what: str = "") -> None:
  """A pattern's declared look-back covers what its predicate shows: a visible key is a
  pinned one or at most ``lookback`` behind its query (else a rolling cache would have
  evicted it)."""
  bounded = spec.lookback(att)
  if bounded is None:
    return
  pinned, lookback = bounded
  seen = dense_mask(spec.build(att, 0), length, length).any(axis=(0, 1))
  i, j = np.nonzero(seen)
  bad = (j >= pinned) & (i - j > lookback)
  assert not bad.any(), (f"{what}: query {i[bad][0]} sees key {j[bad][0]}, "
                         f"{i[bad][0] - j[bad][0]} behind, beyond the declared look-back "
                         f"(pinned={pinned}, lookback={lookback})")


# ----------------------------------------------------------------------------- impls

def qkvw(seed: int, nq=LENGTH, nk=LENGTH, heads=HEADS, kv_heads=KV_HEADS, d=HEAD_DIM,
         batch=BATCH, q_scale=1.0, dv=None):
  """Test inputs at the suite's sizes (``oracles.make_qkv``; ``dv``: a value head dim other
  than the query/key one)."""
  return oracles.make_qkv(seed, batch, nq, nk, heads, kv_heads, d=d, q_scale=q_scale, dv=dv)


def run_impl(impl: str, q, k, v, w, mask=None, score_mod=None, tiles=None):
  """(out, (dq, dk, dv), d float leaves of score_mod) of loss = sum(w * attention) through
  ``impl``, jit-compiled with the pattern as a static value (as a model passes it)."""
  block_q, block_kv = tiles or TILES.get(impl, (None, None))
  leaves = float_leaves(score_mod) if score_mod is not None else []

  def loss(q, k, v, leaves):
    mod = None if score_mod is None else with_float_leaves(score_mod, leaves)
    out = dot_product_attention(q, k, v, mask=mask, bias=mod, impl=impl, block_q=block_q,
                                block_kv=block_kv)
    return jnp.sum(out.astype(jnp.float32) * w), out

  fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True))
  (_, out), (dq, dk, dv, dleaves) = fn(q, k, v, leaves)
  return np.asarray(out), tuple(np.asarray(g) for g in (dq, dk, dv)), dleaves


def check_impl(impl: str, mask=None, score_mod=None, *, seed=0, nq=LENGTH, nk=LENGTH,
               heads=HEADS, kv_heads=KV_HEADS, what="", tiles=None, dv=None) -> str | None:
  """Values and gradients (q, k, v and every float leaf of the modifier) of ``impl``
  against the float64 oracle. Returns the impl's own reason when it declares it cannot
  serve the request (nothing is checked then)."""
  what = what or impl
  score_mod = score_mods_lib.as_score_mod(score_mod)
  q, k, v, w = qkvw(seed, nq, nk, heads, kv_heads, dv=dv)
  reason = IMPLS.get(impl).unsupported(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v),
                                       masks.as_mask(mask), score_mods_lib.as_score_mod(score_mod))
  if reason:
    return reason
  out, (dq, dk, dv), dmod = run_impl(impl, q, k, v, w, mask, score_mod, tiles)
  mask_np = None if mask is None else dense_mask(masks.as_mask(mask), nq, nk)
  bias, score_fn = modifier_view(score_mods_lib.as_score_mod(score_mod), nq, nk)
  ref, rdq, rdk, rdv, dlogits = oracles.attention(q, k, v, mask=mask_np, bias=bias,
                                                  score_fn=score_fn, d_out=w)
  assert np.all(np.isfinite(out)), f"{what}: non-finite output"
  np.testing.assert_allclose(out, ref, err_msg=f"{what}: output", **VALUES)
  rtol = 1e-5 if score_fn is None else 2e-4      # a general modifier's derivative: differences
  _grad_close(dq, rdq, f"{what}: dq", rtol)
  _grad_close(dk, rdk, f"{what}: dk", rtol)
  _grad_close(dv, rdv, f"{what}: dv")
  if score_mod is not None and float_leaves(score_mod):
    check_leaf_gradients(score_mod, dmod, dlogits, oracles.scaled_logits(q, k), what)
  return None


def sink_logits(heads=HEADS, seed=5) -> np.ndarray:
  """Test sink logits [heads]: spread so that one head's sink dominates and another's is
  negligible."""
  return (np.random.default_rng(seed).standard_normal(heads) * 2.0
          + np.linspace(-3.0, 3.0, heads)).astype(np.float32)


def check_impl_sinks(impl: str, mask=None, bias=None, *, seed=0, nq=LENGTH, nk=LENGTH,
                     heads=HEADS, kv_heads=KV_HEADS, what="", tiles=None) -> str | None:
  """Learned sinks: values and gradients (q, k, v and the sink logits) of ``impl`` against
  the float64 definition (``oracles.attention_with_sinks``). ``bias``: an additive
  modifier or None. An impl that does not declare sinks must refuse them with a
  ``ConfigError`` naming them (returns that reason: nothing else is checked)."""
  what = what or f"{impl}/sinks"
  bias = score_mods_lib.as_score_mod(bias)
  q, k, v, w = qkvw(seed, nq, nk, heads, kv_heads)
  sinks = sink_logits(heads)
  spec = IMPLS.get(impl)
  block_q, block_kv = tiles or TILES.get(impl, (None, None))

  def loss(q, k, v, sinks):
    out = dot_product_attention(q, k, v, mask=mask, bias=bias, impl=impl, block_q=block_q,
                                block_kv=block_kv, sinks=sinks)
    return jnp.sum(out.astype(jnp.float32) * w), out

  if not spec.sinks:
    with pytest.raises(ConfigError, match="sinks"):
      loss(q, k, v, sinks)
    return f"impl={impl!r} declares no sinks and refuses them"
  reason = spec.unsupported(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v),
                            masks.as_mask(mask), bias)
  if reason:
    return reason
  fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True))
  (_, out), grads = fn(q, k, v, sinks)
  mask_np = None if mask is None else dense_mask(masks.as_mask(mask), nq, nk)
  bias_np, score_fn = modifier_view(bias, nq, nk)
  assert score_fn is None, f"{what}: the sinks oracle takes additive biases only"
  ref, *ref_grads = oracles.attention_with_sinks(q, k, v, sinks, mask=mask_np, bias=bias_np,
                                                 d_out=w)
  assert np.all(np.isfinite(np.asarray(out))), f"{what}: non-finite output"
  np.testing.assert_allclose(np.asarray(out), ref, err_msg=f"{what}: output", **VALUES)
  for name, got, want in zip(("dq", "dk", "dv", "d sinks"), grads, ref_grads):
    _grad_close(got, want, f"{what}: {name}")
  return None


def check_leaf_gradients(score_mod, dmod, dlogits, raw, what, seed=1) -> None:
  # dmod: the gradients of score_mod's float leaves (float_leaves order); raw: the scaled
  # logits the modifier was applied to, float64 [B, H, Nq, Nk]
  """d loss / d leaves along random directions equals the oracle's: the logits' cotangent
  (exact, from the oracle's backward) times the modifier's own change along the direction,
  by finite differences of its definition (so a wrong gradient rule is caught)."""
  leaves = [np.asarray(x, np.float64) for x in float_leaves(score_mod)]
  grads = [np.asarray(x, np.float64) for x in dmod]
  q_idx, kv_idx = jnp.arange(raw.shape[2])[:, None], jnp.arange(raw.shape[3])[None, :]

  def contracted(new_leaves):
    mod = with_float_leaves(score_mod, [jnp.asarray(x, jnp.float32) for x in new_leaves])
    s = np.asarray(mod(jnp.asarray(raw, jnp.float32), q_idx, kv_idx), np.float64)
    return float(np.sum(dlogits * np.broadcast_to(s, dlogits.shape)))

  rng = np.random.default_rng(seed)
  for trial in range(2):
    direction = [rng.standard_normal(x.shape) for x in leaves]
    norm = np.sqrt(sum(float(np.sum(u * u)) for u in direction))
    direction = [u / norm for u in direction]
    got = sum(float(np.sum(g * u)) for g, u in zip(grads, direction))
    scale = 1.0 + max(float(np.abs(x).max()) for x in leaves)
    want = oracles.directional_derivative(contracted, leaves, direction, 1e-2 * scale)
    assert abs(got - want) <= 2e-3 * max(1.0, abs(want)), (
        f"{what}: gradient of the modifier's leaves along a random direction is {got:.6g}, "
        f"the oracle's {want:.6g}")


# ----------------------------------------------------------------------------- models

def perturbed_params(model, seed: int = 0, scale: float = 0.3):
  """Initial parameters plus ``scale`` * normal noise: sharp attention, so a wrong
  position, mask or cache slot moves the logits far beyond float32 tolerance."""
  @jax.jit
  def make(key):
    params = model.init(key, jnp.zeros((1, 8), jnp.int32))["params"]
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.fold_in(key, 1), len(leaves))
    return jax.tree_util.tree_unflatten(
        tree, [x + scale * jax.random.normal(kk, x.shape, x.dtype) for x, kk in zip(leaves, keys)])
  return make(jax.random.PRNGKey(seed))


@functools.lru_cache(maxsize=32)
def _forward(model):
  return jax.jit(lambda params, tokens: model.apply({"params": params}, tokens))


def tokens(batch=2, length=24, seed=0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (batch, length)).astype(np.int32)


def built(config):
  """(resolved config, TransformerLM, perturbed parameters), once per distinct config."""
  return _built(workdir_lib.config_json(config_lib.resolve(config)))


@functools.lru_cache(maxsize=32)
def _built(text: str):
  cfg = config_lib.resolve(ml_collections.ConfigDict(json.loads(text)))
  model = TransformerLM(cfg.model)
  return cfg, model, perturbed_params(model)


def check_causal(config, what="", length=24) -> None:
  """Changing tokens after position t leaves the logits up to t unchanged."""
  cfg, model, params = built(config)
  x = tokens(length=length)
  y = x.copy()
  cut = length // 2
  y[:, cut:] = (y[:, cut:] + 1 + np.arange(length - cut)) % 256
  a, b = np.asarray(_forward(model)(params, x)), np.asarray(_forward(model)(params, y))
  np.testing.assert_allclose(a[:, :cut], b[:, :cut], rtol=1e-5, atol=1e-5,
                             err_msg=f"{what}: later tokens changed earlier logits")
  assert np.abs(a[:, cut:] - b[:, cut:]).max() > 1e-3, f"{what}: the logits ignore the input"


def check_cached_decoding(config, what="", length=24) -> str | None:
  """Reading a text through the KV cache (prefill up to the cache's capacity, then
  ``generate``'s decode loop one token at a time, past a rolling cache's window) gives the
  full forward pass's logits at every position. Returns the model's reason when it
  declares it cannot be cached."""
  cfg, model, params = built(config)
  try:
    kv_cache.check_supported(cfg.model)
  except ConfigError as e:
    return str(e)
  layout = kv_cache.layouts_for(cfg.model, length)     # each layer its own (a schedule's
  x = tokens(length=length)                            # local layers roll a window)
  full = np.asarray(_forward(model)(params, x))
  if generation.reencode_position(cfg.model) is not None:
    # the encoding depends on the length of the text a call holds (LongRoPE): position p's
    # oracle is the forward of the text up to p, or of the whole prefill for p inside it
    # (positions past that repeat its last: causal, never read)
    start = min(generation._capacity(layout), length)
    full = np.stack([np.asarray(_forward_at(model)(
        params, x, np.minimum(np.arange(length), max(p, start - 1))))[:, p]
        for p in range(length)], axis=1)
  got = np.asarray(generation.stream_logits(cfg.model, params, x, layout))
  np.testing.assert_allclose(got, full, rtol=2e-5, atol=2e-5,
                             err_msg=f"{what}: cached decoding ({layout}) != full forward")
  return None


def check_model_impl(config, impl: str, what="", length=LENGTH, tiles=(16, 16)) -> None:
  """A language model's loss and the gradient of every parameter under ``impl`` equal
  those under ``reference`` (tiles of ``tiles``: several per axis at ``length``)."""
  grads = {}
  for name in ("reference", impl):
    c = ml_collections.ConfigDict(config.to_dict())
    c.model.attention.impl = name
    c.model.attention.block_q, c.model.attention.block_kv = tiles
    cfg, model, params = built(c)
    grads[name] = _loss_and_grads(model)(params, jnp.asarray(tokens(length=length + 1)))
  (want_loss, want), (got_loss, got) = grads["reference"], grads[impl]
  np.testing.assert_allclose(got_loss, want_loss, **VALUES, err_msg=f"{what}: loss")
  for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
    _grad_close(g, w, f"{what}: d loss / d {jax.tree_util.keystr(path)}", rtol=1e-4)


@functools.lru_cache(maxsize=32)
def _loss_and_grads(model):
  def loss(params, text):
    logits = model.apply({"params": params}, text[:, :-1])
    logp = jax.nn.log_softmax(logits, -1)
    return -jnp.take_along_axis(logp, text[:, 1:, None], -1).mean()
  return jax.jit(jax.value_and_grad(loss))


def check_generation(config, what="", prompt_length=6, new=6) -> str | None:
  """Greedy generation continues each prompt with the argmax of the full forward pass over
  the prompt and what it generated so far (teacher forcing of its own output)."""
  cfg, model, params = built(config)
  try:
    generation.check_request(cfg.model, [prompt_length], new, (), None, True)
    use_cache = True
  except ConfigError:
    try:
      generation.check_request(cfg.model, [prompt_length], new, (), None, False)
      use_cache = False
    except ConfigError as e:
      return str(e)
  prompts = [row for row in tokens(length=prompt_length)]
  result = generation.generate(cfg, params, prompts, new, use_cache=use_cache)
  for prompt, out in zip(prompts, result.tokens):
    assert len(out) == new, f"{what}: generated {len(out)} tokens, asked for {new}"
    text = np.zeros((1, max(24, prompt_length + new)), np.int32)   # causal: padding after
    text[0, :prompt_length + new] = np.concatenate([prompt, out])  # the text changes nothing
    logits = np.asarray(_forward(model)(params, text))[0]
    want = logits[prompt_length - 1:prompt_length + new - 1].argmax(-1)
    assert np.array_equal(out, want), f"{what}: generated {out.tolist()}, argmax {want.tolist()}"
  return None


# ----------------------------------------------------------------------------- decoding by hand
# prefill, then a scan of one-token steps, in one program, with an optional deliberate
# position bug (``gap``): for the tests of the cache itself

TOL = dict(rtol=2e-5, atol=2e-5)   # cached decoding against the full forward


@functools.partial(jax.jit, static_argnames=("model", "layout", "prefill"))
def _decode_all(params, tokens, gap, *, model, layout, prefill):
  cache = kv_cache.init_cache(model.cfg, tokens.shape[0], layout)
  logits, cache = model.apply({"params": params}, tokens[:, :prefill], cache=cache, prefill=True)
  cache = dataclasses.replace(cache, length=cache.length + gap)

  def step(cache, tok):
    step_logits, cache = model.apply({"params": params}, tok[:, None], cache=cache)
    return cache, step_logits[:, 0]

  cache, steps = jax.lax.scan(step, cache, tokens[:, prefill:].T)
  full = model.apply({"params": params}, tokens)   # the oracle, compiled in the same program
  return jnp.concatenate([logits, steps.transpose(1, 0, 2)], axis=1), cache, full


def cached_logits(model, params, tokens, layout, prefill: int, gap: int = 0):
  """Logits [B, N, V] from prefilling ``prefill`` tokens, then decoding one at a time
  (one jit: prefill + a scan of decode steps). ``gap`` > 0 skips that many positions
  after the prefill: a deliberate position bug, to show the tests can fail."""
  logits, cache, _ = _decode_all(params, jnp.asarray(tokens), gap, model=model, layout=layout,
                                 prefill=prefill)
  return np.asarray(logits), cache


def cached_and_full_logits(model, params, tokens, layout, prefill: int, gap: int = 0):
  """``cached_logits`` and the full forward pass over ``tokens`` (one compilation)."""
  logits, cache, full = _decode_all(params, jnp.asarray(tokens), gap, model=model,
                                    layout=layout, prefill=prefill)
  return np.asarray(logits), cache, np.asarray(full)


@functools.lru_cache(maxsize=None)
def _forward_at(model):
  return jax.jit(lambda params, tokens, positions: model.apply(
      {"params": params}, tokens, jnp.broadcast_to(positions, tokens.shape)))


@functools.lru_cache(maxsize=None)
def _jit_forward(model):
  return jax.jit(lambda params, tokens: model.apply({"params": params}, tokens))


def full_logits(model, params, tokens):
  """The oracle: one forward pass over the whole sequence."""
  return np.asarray(_jit_forward(model)(params, jnp.asarray(tokens)))


def _tokens(batch=2, length=24, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (batch, length)).astype(np.int32)


# ----------------------------------------------------------------------------- declarations

def invalid_values(f: Field) -> list:
  """Values a declared field must refuse: wrong type, below its minimum, above its
  maximum, outside its choices."""
  default = f.default
  out = []
  if isinstance(default, bool):
    out.append("yes")
  elif isinstance(default, (int, float)):
    out.append("many")
    if f.minimum is not None:
      out.append(type(default)(f.minimum) - (1 if isinstance(default, int) else 0.5))
    if f.maximum is not None:
      out.append(type(default)(f.maximum) + (1 if isinstance(default, int) else 0.5))
  elif isinstance(default, str):
    out.append(3)
    if f.choices is not None:
      out.append("no_such_choice")
  elif isinstance(default, tuple):
    out.append(5)
  return out


def check_field_validation(block, path: str, fields, validate, what="") -> None:
  """Every declared field of an entry refuses invalid values before anything compiles, with
  one ``ConfigError`` naming the field and the value.

  block: the config block the fields live in (e.g. ``model.attention``), at valid values;
  path: its dotted path; validate(block): the check the configs run on it.
  """
  validate(block)                                   # the valid block passes
  for f in fields:
    for bad in invalid_values(f):
      c = ml_collections.ConfigDict(block.to_dict(), type_safe=False)
      c[f.name] = bad
      try:
        validate(c)
      except ConfigError as e:
        assert f"{path}.{f.name}=" in str(e), (
            f"{what}: {path}.{f.name}={bad!r} was refused, but the message does not name it: "
            f"{e}")
        assert "\n" not in str(e), f"{what}: the message is not one line: {e}"
      else:
        raise AssertionError(f"{what}: {path}.{f.name}={bad!r} was accepted")


def attention_validator(position: str = "rope", seq_len: int = LENGTH):
  """``config_lib.check_attention`` as the configs run it on ``model.attention``."""
  return lambda block: config_lib.check_attention(block, seq_len, position)


def position_validator(head_dim: int = 8, d_model: int = 32, seq_len: int = LENGTH):
  """``config_lib.check_position`` on ``model.position`` (derived defaults filled first)."""
  def validate(block):
    block = ml_collections.ConfigDict(block.to_dict(), type_safe=False)
    if block.kind in positional.POSITIONS:
      try:
        positional.POSITIONS.get(block.kind).resolve(block, seq_len)
      except TypeError:
        pass                                        # a mistyped field: validation says so
    config_lib.check_position(block, head_dim=head_dim, d_model=d_model, seq_len=seq_len,
                              trained_length=seq_len)
  return validate


def check_round_trip(config, tmp_path, what="") -> None:
  """A resolved config written as ``config.json`` loads back to the same run identity, and
  resolving it again changes nothing."""
  cfg = config_lib.resolve(config)
  tmp_path.mkdir(parents=True, exist_ok=True)
  (tmp_path / "config.json").write_text(workdir_lib.config_json(cfg))
  loaded = config_lib.resolve(workdir_lib.load_config(tmp_path))
  assert config_lib.run_identity(loaded) == config_lib.run_identity(cfg), what
  assert json.loads(workdir_lib.config_json(loaded)) == json.loads(workdir_lib.config_json(cfg)), what


# ----------------------------------------------------------------------------- entries

def pattern_mask(name: str, heads=HEADS, layer=0, **fields):
  """The registered pattern's mask at small test settings."""
  att = attention_block(name, heads=heads, **fields)
  return PATTERNS.get(name).build(att, layer), att


def example_position_mod(kind: str, heads=HEADS, seed=0):
  """A position scheme's score modifier with its declared parameters initialised as the
  model would and then perturbed (so learned zeros do not hide a wrong lookup)."""
  p = config_lib.position_block(kind)
  scheme = positional.get_scheme(p)
  d_model = 32
  specs = scheme.layer_params(heads, d_model)
  key = jax.random.PRNGKey(seed)
  params = {}
  for i, (name, spec) in enumerate(sorted(specs.items())):
    k1, k2 = jax.random.split(jax.random.fold_in(key, i))
    init = spec.init(k1, spec.shape, jnp.float32)
    params[name] = init + 0.5 * jax.random.normal(k2, spec.shape, jnp.float32)
  if scheme.reads_input:   # FoX: a layer input of the suite's batch and length
    inputs = jax.random.normal(jax.random.fold_in(key, 99), (BATCH, LENGTH, d_model))
    return scheme.score_mod(heads, params, None, inputs=inputs)
  return scheme.score_mod(heads, params, None)


def replace_entry(registry, name, **changes):
  """A copy of a registry entry with ``changes`` (a frozen dataclass)."""
  return dataclasses.replace(registry.get(name), **changes)


# ----------------------------------------------------------------------------- per-position operands

def document_ids(layout: str) -> np.ndarray:
  """Segment ids int32 [BATCH, LENGTH] of a named layout of packed documents: ragged
  lengths with a document of one token, each batch row a different layout."""
  if layout == "ragged":          # rows of different layouts; documents of length 1
    lengths = [[1, 12, 27], [20, 19, 1]]
  elif layout == "many":          # many short documents (several per tile)
    lengths = [[3, 5, 1, 7, 2, 9, 4, 9], [6] * 6 + [4]]
  elif layout == "one":           # a single document: the plain pattern
    lengths = [[LENGTH], [LENGTH]]
  elif layout == "not_monotone":  # ids that repeat out of order: correct, tiles not skipped
    return np.stack([np.arange(LENGTH) % 3, (np.arange(LENGTH) // 7) % 2]).astype(np.int32)
  else:
    raise ValueError(layout)
  return np.stack([np.repeat(np.arange(len(row)), row) for row in lengths]).astype(np.int32)


DOCUMENT_LAYOUTS = ("ragged", "many", "one", "not_monotone")


def operand_cases() -> dict:
  """name -> () -> (mask, score_mod): packed documents under causal and bidirectional
  attention, alone and with a modifier of per-position operands (FoX's forget gates)."""
  from attnlab.attention import SCORE_MODS

  def forget():
    return SCORE_MODS.get("forget_gate").example(HEADS, BATCH, LENGTH, jax.random.PRNGKey(3))

  cases = {}
  for layout in DOCUMENT_LAYOUTS:
    ids = document_ids(layout)
    cases[f"causal_documents/{layout}"] = (
        lambda ids=ids: (masks.causal() & masks.segments(ids), None))
    cases[f"documents/{layout}"] = lambda ids=ids: (masks.segments(ids), None)
    cases[f"causal_documents_forget_gate/{layout}"] = (
        lambda ids=ids: (masks.causal() & masks.segments(ids), forget()))
  return cases
