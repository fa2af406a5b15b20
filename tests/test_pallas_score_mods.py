"""Any score modifier in the fused Pallas kernel (and in ``blockwise``), values and
gradients, against a float64 oracle written here.

The zoo below is written only as ``ScoreMod`` subclasses, as a researcher would write
them; none is known to the kernel. For each, ``impl="pallas"`` (interpret mode on CPU,
and the TPU interpreter) and ``impl="blockwise"`` must give the oracle's output, the
gradients of q, k, v and of every float leaf, with block-sparse patterns and GQA, in
float32 and bfloat16.

The oracle is numpy float64: dense scores, the zoo member's numpy formula, a masked
softmax, and the analytic softmax backward; the modifier's derivative in the score is a
central difference of its numpy formula, and each leaf's gradient a central difference
of the whole float64 loss. It shares no code with the kernel or the modifiers.
"""

from __future__ import annotations

import unittest.mock
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attnlab.attention import dot_product_attention, masks, pallas_impl, score_mods
from attnlab.attention.pytree import pytree_dataclass
from attnlab.attention.score_mods import AdditiveBias, ScoreMod
from attnlab.registry import ConfigError

import oracles

BLOCK = 16
F32 = jnp.float32


def _heads(x, first, count, axis=0):
  return jax.lax.dynamic_slice_in_dim(jnp.asarray(x), first, count, axis)


def _distance(q_idx, kv_idx):
  return jnp.abs(q_idx - kv_idx).astype(F32)


# ----------------------------------------------------------------------------- the zoo

@pytree_dataclass(data=("slopes",))
class Alibi(AdditiveBias):
  """-slope_h |i - j| with learned slopes."""
  slopes: Any

  def bias(self, q_idx, kv_idx):
    return -self.slopes[:, None, None] * _distance(q_idx, kv_idx)

  def select_heads(self, first, count):
    return Alibi(_heads(self.slopes, first, count))


@pytree_dataclass(data=("table",))
class T5(AdditiveBias):
  """table[bucket(j - i), h], causal buckets (max distance 20)."""
  table: Any

  def bias(self, q_idx, kv_idx):
    bucket = score_mods.t5_buckets(kv_idx - q_idx, bidirectional=False,
                                   num_buckets=self.table.shape[0], max_distance=20)
    return jnp.moveaxis(score_mods.lookup(self.table, bucket), -1, 0)

  def select_heads(self, first, count):
    return T5(_heads(self.table, first, count, axis=1))


@pytree_dataclass
class SoftCap(ScoreMod):
  """cap tanh(s / cap) (not additive; no leaves)."""
  cap: float

  def __call__(self, scores, q_idx, kv_idx):
    return self.cap * jnp.tanh(scores / self.cap)


@pytree_dataclass(data=("r1", "r2"))
class KerpleLog(AdditiveBias):
  """-r1_h log(1 + r2_h |i - j|), learned r1, r2 (Chi et al. 2022)."""
  r1: Any
  r2: Any

  def bias(self, q_idx, kv_idx):
    return -self.r1[:, None, None] * jnp.log1p(self.r2[:, None, None] * _distance(q_idx, kv_idx))

  def select_heads(self, first, count):
    return KerpleLog(_heads(self.r1, first, count), _heads(self.r2, first, count))


@pytree_dataclass(data=("tau",))
class Temperature(ScoreMod):
  """s * tau_h: a learned per-head temperature (multiplicative)."""
  tau: Any

  def __call__(self, scores, q_idx, kv_idx):
    return scores * self.tau[:, None, None]

  def select_heads(self, first, count):
    return Temperature(_heads(self.tau, first, count))


@pytree_dataclass(data=("a",))
class GatedDecay(AdditiveBias):
  """-softplus(a_h) log1p(|i - j|): a gated distance decay."""
  a: Any

  def bias(self, q_idx, kv_idx):
    return -jax.nn.softplus(self.a)[:, None, None] * jnp.log1p(_distance(q_idx, kv_idx))

  def select_heads(self, first, count):
    return GatedDecay(_heads(self.a, first, count))


# numpy float64 definitions: (leaves dict, s [B, H, q, k], i [q, 1], j [1, k]) -> s'
def _np_t5_bucket(rel, buckets=8, max_distance=20):
  """T5's causal bucket of rel = j - i (Raffel et al. 2020), element by element."""
  out = np.zeros(rel.shape, int)
  exact = buckets // 2
  for idx, r in np.ndenumerate(rel):
    n = max(-int(r), 0)
    out[idx] = n if n < exact else min(
        buckets - 1, exact + int(np.log(n / exact) / np.log(max_distance / exact) * (buckets - exact)))
  return out


def _per_head(x):
  return np.asarray(x, np.float64)[:, None, None]


NUMPY = {
    "alibi": lambda p, s, i, j: s - _per_head(p["slopes"]) * np.abs(i - j),
    "t5": lambda p, s, i, j: s + np.moveaxis(np.asarray(p["table"], np.float64)[
        _np_t5_bucket(np.broadcast_to(j - i, (s.shape[-2], s.shape[-1])))], -1, 0),
    "softcap": lambda p, s, i, j: 2.0 * np.tanh(s / 2.0),
    "kerple": lambda p, s, i, j: s - _per_head(p["r1"]) * np.log1p(_per_head(p["r2"]) * np.abs(i - j)),
    "temperature": lambda p, s, i, j: s * _per_head(p["tau"]),
    "gated": lambda p, s, i, j: s - np.log1p(np.exp(_per_head(p["a"]))) * np.log1p(np.abs(i - j)),
}


def make_zoo(name: str, heads: int, seed: int = 0):
  """-> (ScoreMod, its leaves as a dict of float64 numpy arrays, numpy formula)."""
  rng = np.random.default_rng(seed)
  u = lambda lo, hi, shape=(heads,): rng.uniform(lo, hi, shape)  # noqa: E731
  leaves = {"alibi": {"slopes": u(0.05, 0.6)}, "t5": {"table": u(-1, 1, (8, heads))},
            "softcap": {}, "kerple": {"r1": u(0.3, 1.5), "r2": u(0.1, 0.9)},
            "temperature": {"tau": u(0.5, 2.0)}, "gated": {"a": u(-1, 1)}}[name]
  j = {key: jnp.asarray(val, F32) for key, val in leaves.items()}
  mod = {"alibi": lambda: Alibi(j.get("slopes")), "t5": lambda: T5(j.get("table")),
         "softcap": lambda: SoftCap(2.0), "kerple": lambda: KerpleLog(j.get("r1"), j.get("r2")),
         "temperature": lambda: Temperature(j.get("tau")),
         "gated": lambda: GatedDecay(j.get("a"))}[name]()
  return mod, leaves, NUMPY[name]


def compose(first, second):
  """(mod, leaves, numpy formula) of ``second(first(s))``; leaf names are prefixed."""
  (m1, l1, f1), (m2, l2, f2) = first, second
  leaves = {**{"1." + k: v for k, v in l1.items()}, **{"2." + k: v for k, v in l2.items()}}

  def formula(p, s, i, j):
    p1 = {k[2:]: v for k, v in p.items() if k.startswith("1.")}
    p2 = {k[2:]: v for k, v in p.items() if k.startswith("2.")}
    return f2(p2, f1(p1, s, i, j), i, j)

  return score_mods.Compose(m1, m2), leaves, formula


def leaf_grads_by_name(mod, grads) -> dict:
  """The gradient pytree of a zoo member (or a Compose of two) as {leaf name: array}."""
  if isinstance(mod, score_mods.Compose):
    return {**{"1." + k: v for k, v in leaf_grads_by_name(mod.first, grads.first).items()},
            **{"2." + k: v for k, v in leaf_grads_by_name(mod.second, grads.second).items()}}
  fields = {"Alibi": ["slopes"], "T5": ["table"], "SoftCap": [], "KerpleLog": ["r1", "r2"],
            "Temperature": ["tau"], "GatedDecay": ["a"]}[type(mod).__name__]
  return {f: np.asarray(getattr(grads, f), np.float64) for f in fields}


# ----------------------------------------------------------------------------- the oracle

def oracle(q, k, v, w, visible, formula, leaves, *, leaf_grads=True):
  """float64 (out, dq, dk, dv, {leaf: grad}) of loss = sum(w * attention(q, k, v)).

  visible: bool broadcastable to [H, q, k]. Rows that see no key give 0.
  """
  q, k, v, w = (np.asarray(jnp.asarray(x, F32), np.float64) for x in (q, k, v, w))
  b, nq, h, d = q.shape
  nk, hkv = k.shape[1], k.shape[2]
  g = h // hkv
  kr, vr = np.repeat(k, g, axis=2), np.repeat(v, g, axis=2)
  i, j = np.arange(nq)[:, None], np.arange(nk)[None, :]
  vis = np.broadcast_to(np.asarray(visible, bool), (b, h, nq, nk))
  scale = d ** -0.5

  def forward(lv):
    s = np.einsum("bqhd,bkhd->bhqk", q, kr) * scale
    sm = np.where(vis, formula(lv, s, i, j), -np.inf)
    m = sm.max(axis=-1, keepdims=True)
    p = np.exp(sm - np.where(np.isfinite(m), m, 0.0))
    denom = p.sum(axis=-1, keepdims=True)
    p = p / np.where(denom == 0, 1.0, denom)
    return s, p, np.einsum("bhqk,bkhd->bqhd", p, vr)

  s, p, out = forward(leaves)
  dp = np.einsum("bqhd,bkhd->bhqk", w, vr)
  ds_mod = p * (dp - (p * dp).sum(axis=-1, keepdims=True))
  eps = 1e-6
  slope = (formula(leaves, s + eps, i, j) - formula(leaves, s - eps, i, j)) / (2 * eps)
  ds = np.where(vis, ds_mod * slope, 0.0)
  dq = np.einsum("bhqk,bkhd->bqhd", ds, kr) * scale
  dk = (np.einsum("bhqk,bqhd->bkhd", ds, q) * scale).reshape(b, nk, hkv, g, d).sum(3)
  dv = np.einsum("bhqk,bqhd->bkhd", p, w).reshape(b, nk, hkv, g, -1).sum(3)
  grads = {}
  if leaf_grads:
    loss = lambda lv: float(np.sum(forward(lv)[2] * w))  # noqa: E731
    for name, value in leaves.items():
      grad = np.zeros_like(value)
      for idx in np.ndindex(value.shape):
        plus, minus = dict(leaves), dict(leaves)
        plus[name], minus[name] = value.copy(), value.copy()
        plus[name][idx] += eps
        minus[name][idx] -= eps
        grad[idx] = (loss(plus) - loss(minus)) / (2 * eps)
      grads[name] = grad
  return out, dq, dk, dv, grads


def run(impl, q, k, v, w, mask, mod, *, dtype=F32, **options):
  """(out, dq, dk, dv, leaf grads pytree) through ``dot_product_attention``."""
  def loss(q, k, v, mod):
    out = dot_product_attention(q, k, v, mask=mask, bias=mod, impl=impl, block_q=BLOCK,
                                block_kv=BLOCK, **options)
    return jnp.sum(out.astype(F32) * w), out

  cast = lambda x: jnp.asarray(x, dtype)  # noqa: E731
  (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True))(
      cast(q), cast(k), cast(v), mod)
  return (np.asarray(out.astype(F32)), *(np.asarray(g.astype(F32)) for g in grads[:3]), grads[3])


def assert_close(got, want, what, rtol):
  got = np.asarray(got, np.float64)
  assert np.all(np.isfinite(got)), f"{what}: non-finite"
  np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * max(1.0, np.abs(want).max()),
                             err_msg=what)


def check_against_oracle(impl, zoo, mask, visible, *, heads=4, kv_heads=2, n=40, seed=0,
                         dtype=F32, rtol=1e-4):
  mod, leaves, formula = zoo
  q, k, v, w = oracles.make_qkv(seed, 1, n, n, heads, kv_heads, d=16, q_scale=2.0)
  if dtype != F32:   # the oracle sees the same rounded inputs
    q, k, v = (np.asarray(jnp.asarray(x, dtype).astype(F32)) for x in (q, k, v))
  out, dq, dk, dv, dmod = run(impl, q, k, v, w, mask, mod, dtype=dtype)
  ref = oracle(q, k, v, w, visible, formula, leaves)
  for name, got, want in zip(("out", "dq", "dk", "dv"), (out, dq, dk, dv), ref[:4]):
    assert_close(got, want, f"{impl} {name}", rtol)
  got_leaves = leaf_grads_by_name(mod, dmod)
  assert set(got_leaves) == set(ref[4])
  for name, want in ref[4].items():
    # central differences carry ~1e-7 absolute error of their own
    assert_close(got_leaves[name], want, f"{impl} d{name}", max(rtol, 2e-4))


ZOO = ["alibi", "t5", "softcap", "kerple", "temperature", "gated"]
CAUSAL = oracles.dense_np(oracles.np_causal, 40, 40)


# registered modifiers (ALiBi, T5, soft-cap, KERPLE) run through every impl in the
# conformance suite; here the zoo's own classes, temperature through the kernel by default
@pytest.mark.parametrize("name,impl", [
    pytest.param(name, impl, id=f"{name}-{impl}",
                 marks=() if (name, impl) in (("alibi", "pallas"), ("t5", "blockwise"),
                                               ("temperature", "pallas")) else pytest.mark.slow)
    for name in ZOO for impl in ("pallas", "blockwise")])
def test_zoo_causal_gqa_float32(name, impl):
  check_against_oracle(impl, make_zoo(name, 4), masks.causal(), CAUSAL)


def _patterns():
  bigbird = masks.bigbird(8, window_blocks=3, global_blocks=1, random_blocks=1, seed=5,
                          causal=True)
  block_level = bigbird.left if isinstance(bigbird, masks.And) else bigbird
  return {
      "sliding_window": (masks.sliding_window(5), oracles.dense_np(oracles.np_window(5, 0), 40, 40)),
      "dilated": (masks.dilated(4, 3) & masks.causal(),
                  oracles.dense_np(lambda i, j: oracles.np_dilated(4, 3)(i, j) & (j <= i), 40, 40)),
      # the oracle's mask from BigBird's block-level definition, token by token
      "bigbird": (bigbird, oracles.np_bigbird(block_level, 40, 40, True)),
  }


# (modifier(s), pattern, kv_heads): every zoo member meets a block-sparse pattern
SPARSE_CASES = [
    ("gated", "sliding_window", 2), ("kerple", "bigbird", 1), ("t5", "dilated", 4),
    ("temperature+softcap", "bigbird", 2), ("alibi+softcap", "dilated", 2),
    ("t5+temperature", "sliding_window", 1),
]


def _zoo_or_composition(spec: str, heads: int):
  parts = [make_zoo(name, heads, seed) for seed, name in enumerate(spec.split("+"))]
  return parts[0] if len(parts) == 1 else compose(*parts)


@pytest.mark.parametrize("spec,pattern,kv_heads", [SPARSE_CASES[0]] + [
    pytest.param(*case, marks=pytest.mark.slow) for case in SPARSE_CASES[1:]])
def test_zoo_with_block_sparse_patterns(spec, pattern, kv_heads):
  mask, visible = _patterns()[pattern]
  check_against_oracle("pallas", _zoo_or_composition(spec, 4), mask, visible, kv_heads=kv_heads)


@pytest.mark.parametrize("spec", [pytest.param(s, marks=pytest.mark.slow)
                                  for s in ("alibi", "kerple", "gated")] + ["t5+temperature"])
def test_zoo_bfloat16(spec):
  check_against_oracle("pallas", _zoo_or_composition(spec, 4), masks.sliding_window(9),
                       oracles.dense_np(oracles.np_window(9, 0), 40, 40), dtype=jnp.bfloat16, rtol=3e-2)


@pytest.mark.slow   # the kernel's TPU path in the interpreter: tests/test_pallas.py
@pytest.mark.parametrize("name", ["kerple", "t5"])
def test_zoo_in_the_tpu_interpreter(name, monkeypatch):
  # the TPU variant of the kernel (tables in SMEM, TPU memory semantics), run by JAX's
  # TPU interpreter on CPU; called below the impl registry to pass interpret=
  from jax.experimental.pallas import tpu as pltpu
  mod, leaves, formula = make_zoo(name, 2)
  q, k, v, w = oracles.make_qkv(3, 1, 40, 40, 2, 1, d=16)
  monkeypatch.setattr(jax, "default_backend", lambda: "tpu")

  def loss(q, k, v, mod):
    out = pallas_impl.pallas_attention(q, k, v, mask=masks.causal(), score_mod=mod,
                                       scale=16 ** -0.5, block_q=16, block_kv=16,
                                       interpret=pltpu.InterpretParams())
    return jnp.sum(out * w)

  grads = jax.grad(loss, argnums=(0, 1, 2, 3))(q, k, v, mod)
  ref = oracle(q, k, v, w, CAUSAL, formula, leaves)
  for name_, got, want in zip(("dq", "dk", "dv"), grads[:3], ref[1:4]):
    assert_close(got, want, f"tpu-interpret {name_}", 1e-4)
  for leaf, got in leaf_grads_by_name(mod, grads[3]).items():
    assert_close(got, ref[4][leaf], f"tpu-interpret d{leaf}", 2e-4)


# ----------------------------------------------------------------------------- lowering and refusals

def test_every_allowed_primitive_has_a_lowering_rule_on_both_backends():
  try:   # JAX internals: the rule tables move between versions
    from jax._src.pallas.mosaic import core as tpu_core
    from jax._src.pallas.mosaic import lowering as mosaic
    from jax._src.pallas.triton import lowering as triton
  except ImportError as e:
    pytest.skip(f"this JAX keeps its Pallas lowering rules elsewhere: {e}")
  triton_rules = {p.name for p in triton.triton_lowering_rules}
  mosaic_rules = {p.name for p in mosaic.lowering_rules[tpu_core.CoreType.TC]}
  aliases = {"pjit": "jit", "copy_p": "copy"}
  for name in pallas_impl.LOWERABLE:
    name = aliases.get(name, name)
    if name == "copy":   # copies are elided before lowering on both backends
      continue
    assert name in triton_rules and name in mosaic_rules, name
  for refused in ("gather", "scatter-add", "dynamic_slice", "sort", "cumsum"):
    assert refused not in pallas_impl.LOWERABLE


def lower_for_gpu(fn, *args):
  """Lower ``fn`` for a CUDA GPU through Pallas' Triton lowering, on this CPU machine
  (cross-platform export; the kernels are compiled to Triton IR, not run)."""
  from jax import export
  with unittest.mock.patch.object(jax, "default_backend", lambda: "gpu"):
    return export.export(jax.jit(fn), platforms=["cuda"], disabled_checks=[
        export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")])(*args)


@pytest.mark.parametrize("spec", ZOO + ["t5+temperature"])
def test_zoo_lowers_to_triton_forward_and_backward(spec):
  mod = _zoo_or_composition(spec, 4)[0]
  q = jnp.zeros((1, 256, 4, 64), F32)

  def grads(q, k, v, mod):
    return jax.grad(lambda *a: dot_product_attention(*a[:3], mask=masks.causal(), bias=a[3],
                                                     impl="pallas").sum(),
                    argnums=(0, 1, 2, 3))(q, k, v, mod)

  exported = lower_for_gpu(grads, q, q, q, mod)
  text = exported.mlir_module()
  assert text.count("xla.gpu.triton") >= 3        # forward, dq and dk/dv kernels


@pytree_dataclass(data=("table",))
class GatheringT5(AdditiveBias):
  """T5 written with plain indexing (a gather): lowers nowhere in a kernel."""
  table: Any

  def bias(self, q_idx, kv_idx):
    bucket = score_mods.t5_buckets(kv_idx - q_idx, bidirectional=False, num_buckets=8,
                                   max_distance=20)
    return jnp.moveaxis(self.table[bucket], -1, 0)

  def select_heads(self, first, count):
    return GatheringT5(_heads(self.table, first, count, axis=1))


@pytree_dataclass(data=("tau",))
class ForgotSelectHeads(ScoreMod):
  """A per-head leaf not declared ``per_head``: one head's tile would see every head."""
  tau: Any

  def __call__(self, scores, q_idx, kv_idx):
    return scores * self.tau[:, None, None]


@pytree_dataclass(data=("shift",))
class IntegerLeaf(AdditiveBias):
  shift: Any

  def bias(self, q_idx, kv_idx):
    return jnp.zeros((1, 1, 1)) + self.shift


@pytree_dataclass(data=("big",))
class HugeLeaf(AdditiveBias):
  big: Any

  def bias(self, q_idx, kv_idx):
    return jnp.sum(self.big) * jnp.zeros((1, 1, 1))


@pytest.mark.parametrize("mod,reason", [
    (GatheringT5(jnp.zeros((8, 2))), r"cannot lower GatheringT5 into the kernel: it uses "
                                     r"`gather`.*score_mods.lookup"),
    (ForgotSelectHeads(jnp.ones(2)), r"returned \[1, 2, 16, 16\]: declare its per-head leaves"),
    (IntegerLeaf(jnp.ones((), jnp.int32)), r"IntegerLeaf.shift is int32"),
    (HugeLeaf(jnp.zeros(5000)), r"HugeLeaf.big has 5000 per head"),
])
def test_unlowerable_modifiers_are_refused_and_auto_falls_back(mod, reason, caplog):
  q = jnp.asarray(np.random.default_rng(0).standard_normal((1, 16, 2, 8)), F32)
  with pytest.raises(ConfigError, match=reason + r".*impl='blockwise'"):
    dot_product_attention(q, q, q, mask=masks.causal(), bias=mod, impl="pallas")
  with caplog.at_level("INFO"):
    auto = dot_product_attention(q, q, q, mask=masks.causal(), bias=mod, impl="auto")
  ref = dot_product_attention(q, q, q, mask=masks.causal(), bias=mod, impl="reference")
  np.testing.assert_allclose(auto, ref, rtol=1e-6, atol=1e-6)


def test_lookup_is_a_gather_outside_kernels_and_selects_inside():
  table = jnp.asarray(np.random.default_rng(1).standard_normal((8, 3)), F32)
  index = jnp.asarray(np.random.default_rng(2).integers(0, 8, (5, 7)), jnp.int32)
  want = np.asarray(table)[np.asarray(index)]                      # [5, 7, 3]
  # fresh functions: make_jaxpr caches traces per function, and the choice is made at trace time
  outside = jax.make_jaxpr(lambda t, i: score_mods.lookup(t, i))(table, index)
  with score_mods.in_kernel():
    inside = jax.make_jaxpr(lambda t, i: score_mods.lookup(t, i))(table, index)
    got_inside = score_mods.lookup(table, index)
  assert "gather" in str(outside) and "gather" not in str(inside)
  np.testing.assert_array_equal(score_mods.lookup(table, index), want)
  np.testing.assert_array_equal(got_inside, want)                  # bitwise: one term per row
