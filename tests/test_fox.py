"""The Forgetting Transformer (``position.kind="fox"``) against its paper's definition.

The oracle is a float64 loop over (i, j) that multiplies the forget gates
``f_l = sigmoid(w . x_l + b)`` for ``l = j+1 .. i`` and adds ``log`` of the product to the
logit: no cumulative sums, no per-position operands. The library computes ``F_i - F_j``
from cumulative sums, tile by tile (``blockwise``), in the fused kernel (``pallas``, with
the gradients of the gate parameters through the kernel's operand gradients) and densely.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import conformance as C
from attnlab import config_lib
from attnlab import workdir as workdir_lib
from attnlab.attention import dot_product_attention, masks
from attnlab.engine import training
from attnlab.positional import get_scheme

B, N, H, D, DM = 2, 37, 2, 8, 12


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  q, k, v = (rng.standard_normal((B, N, H, D)) for _ in range(3))
  x = rng.standard_normal((B, N, DM))
  w = 0.3 * rng.standard_normal((DM, H))
  b = 1.5 + 0.5 * rng.standard_normal(H)
  return q, k, v, x, w, b


def naive_fox(q, k, v, x, w, b):
  """float64 [B, N, H, D]: softmax_j(q_i.k_j / sqrt(D) + log prod_{l=j+1}^{i} f_l) v_j, j <= i."""
  f = 1.0 / (1.0 + np.exp(-(np.einsum("bnd,dh->bnh", x, w) + b)))      # [B, N, H]
  out = np.zeros(q.shape)
  for bb in range(B):
    for h in range(H):
      for i in range(N):
        logits = np.empty(i + 1)
        for j in range(i + 1):
          logits[j] = q[bb, i, h] @ k[bb, j, h] / np.sqrt(D) + np.log(np.prod(f[bb, j + 1:i + 1, h]))
        p = np.exp(logits - logits.max())
        out[bb, i, h] = (p / p.sum()) @ v[bb, :i + 1, h]
  return out


def _attend(impl, q, k, v, x, w, b):
  scheme = get_scheme(config_lib.position_block("fox"))
  bias = scheme.score_mod(H, {"forget_weight": w, "forget_bias": b}, None, inputs=x)
  return dot_product_attention(q, k, v, mask=masks.causal(), bias=bias, impl=impl,
                               block_q=16, block_kv=16)


@pytest.mark.parametrize("impl", ["reference", "blockwise", C.slow("xla"), C.slow("pallas")])
def test_fox_values_and_gate_gradients_match_the_papers_definition(impl):
  q, k, v, x, w, b = _inputs()
  want = naive_fox(q, k, v, x, w, b)
  f32 = [jnp.asarray(a, jnp.float32) for a in (q, k, v, x, w, b)]
  got = np.asarray(_attend(impl, *f32))
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)

  # d sum(out * u) / d (w, b) along a random direction, against central differences of the
  # float64 definition
  u = np.random.default_rng(1).standard_normal(want.shape)
  grads = jax.grad(lambda w_, b_: jnp.sum(_attend(impl, *f32[:4], w_, b_) * u),
                   argnums=(0, 1))(f32[4], f32[5])
  rng = np.random.default_rng(2)
  dw, db = rng.standard_normal(w.shape), rng.standard_normal(b.shape)
  norm = np.sqrt((dw ** 2).sum() + (db ** 2).sum())
  dw, db = dw / norm, db / norm
  eps = 1e-5
  plus = np.sum(naive_fox(q, k, v, x, w + eps * dw, b + eps * db) * u)
  minus = np.sum(naive_fox(q, k, v, x, w - eps * dw, b - eps * db) * u)
  want_dir = (plus - minus) / (2 * eps)
  got_dir = float(np.sum(np.asarray(grads[0]) * dw) + np.sum(np.asarray(grads[1]) * db))
  assert abs(got_dir) > 1e-2                       # the gates matter to this loss
  assert abs(got_dir - want_dir) <= 1e-3 * max(1.0, abs(want_dir)), (got_dir, want_dir)


def test_fox_is_not_shift_invariant_like_a_position_bias():
  """The bias depends on the text between two tokens, not their distance: the same pair of
  positions gets a different bias when the tokens between them change."""
  q, k, v, x, w, b = _inputs()
  y = x.copy()
  y[:, 10:20] += 3.0
  a = naive_fox(q, k, v, x, w, b)
  c = np.asarray(_attend("blockwise", *[jnp.asarray(t, jnp.float32) for t in (q, k, v, y, w, b)]))
  assert np.abs(a[:, 25:] - c[:, 25:]).max() > 1e-2
  np.testing.assert_allclose(a[:, :10], c[:, :10], rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("pattern", [C.slow("causal"), "sliding_window"])
def test_fox_decodes_from_its_cache_as_the_full_forward(pattern):
  """Prefill then one token at a time (past a rolling window's wrap) equals the full pass:
  the cache continues F from the last token it read."""
  config = C.model_config(pattern, "fox")
  C.check_causal(config, f"fox/{pattern}")
  assert C.check_cached_decoding(config, f"fox/{pattern}") is None


@pytest.mark.parametrize("impl", ["auto", C.slow("pallas")])
def test_fox_trains_and_its_gates_move(impl, tmp_path):
  """A baby FoX model trains (through the fused kernel, interpreted, in the slow tier): the
  loss falls and the forget-gate parameters receive updates."""
  c = C.model_config("causal", "fox", impl=impl, seq_len=32)
  c.train.steps, c.train.batch_size, c.train.eval_every = 8, 4, 8
  c.train.checkpoint_every, c.train.warmup_steps, c.train.lr = 8, 2, 3e-3
  c.train.log_every = 1
  state = training.train_and_evaluate(c, tmp_path / "run", progress=False)["state"]
  losses = [r["loss"] for r in workdir_lib.read_metrics(tmp_path / "run") if r["split"] == "train"]
  assert len(losses) >= 2 and np.isfinite(losses).all()
  assert losses[-1] < losses[0]
  gate = state["params"]["block_0"]["attention"]["forget_bias"]
  assert np.abs(np.asarray(gate)).max() > 0        # moved from its initial 0
