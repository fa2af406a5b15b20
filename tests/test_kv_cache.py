"""KV-cache decoding against independent oracles.

- Cached decoding equals the full forward pass for every registered pattern, position
  scheme, RoPE scaling and kind in the conformance suite (``tests/test_conformance_*.py``);
  here: an MQA model with a deliberate position bug (the comparison can fail), the pinned
  slots of a sink + window pattern, decoding through blockwise.
- StreamingLLM mode equals a float64 numpy transformer that, for every new token,
  attends over exactly the cached tokens (sinks + latest window) at their places in
  the cache.
- Cache bytes equal 2 * layers * kv_heads * head_dim * bytes per element per token.
- Configurations the cache cannot decode exactly are ConfigErrors naming the field.
"""

import math

import jax
import numpy as np
import pytest
from conformance import TOL, _tokens, cached_and_full_logits, cached_logits
from helpers import perturbed_model, tiny_config

from attnlab import ConfigError, config_lib
from attnlab.inference import generation as generate
from attnlab.models import kv_cache

def test_cached_decoding_of_an_mqa_model_catches_a_position_off_by_one():
  """Cached decoding of an MQA model equals the full forward at every step (every position
  scheme and pattern, GQA: tests/test_conformance_*.py), and the comparison can fail:
  decoding positions shifted by one after the prefill is caught."""
  cfg, model, params = perturbed_model("rope", model__attention__num_kv_heads=1)
  tokens = _tokens()
  layout = kv_cache.layout_for(cfg.model, tokens.shape[1])
  got, cache, full = cached_and_full_logits(model, params, tokens, layout, prefill=9)
  np.testing.assert_allclose(got, full, **TOL)
  assert int(cache.length) == 24 and layout.capacity == 24
  wrong, _ = cached_logits(model, params, tokens, layout, prefill=9, gap=1)
  assert np.abs(wrong - full)[:, 9:].max() > 1e-2


def test_sink_and_window_pattern_keeps_pinned_slots():
  """A model trained with the ``streaming`` pattern (sinks + window, text positions)."""
  cfg, model, params = perturbed_model("rope", model__attention__num_kv_heads=2,
                              model__attention__pattern="streaming",
                              model__attention__sinks=2, model__attention__window=4)
  tokens = _tokens(length=30)
  layout = kv_cache.layout_for(cfg.model, 30)
  assert (layout.capacity, layout.pinned) == (7, 2)
  got, cache, full = cached_and_full_logits(model, params, tokens, layout, prefill=5)
  np.testing.assert_allclose(got, full, **TOL)
  # slots hold the sinks and the last window + 1 positions
  assert sorted(np.asarray(cache.slot_pos[0]).tolist()) == [0, 1, 25, 26, 27, 28, 29]


@pytest.mark.parametrize("impl", ["blockwise"])
def test_decoding_through_other_impls(impl):
  """The decode attention goes through the model's impl (default auto -> xla above)."""
  cfg, model, params = perturbed_model("alibi", model__attention__num_kv_heads=2,
                              model__attention__impl=impl, model__attention__block_q=8,
                              model__attention__block_kv=8)
  tokens = _tokens(length=20)
  got, _, full = cached_and_full_logits(model, params, tokens,
                                        kv_cache.layout_for(cfg.model, 20), prefill=7)
  np.testing.assert_allclose(got, full, **TOL)


# ----------------------------------------------------------------------------- StreamingLLM


def _layer_norm(x, scale, eps=1e-6):
  x = x - x.mean(-1, keepdims=True)
  return x / np.sqrt((x ** 2).mean(-1, keepdims=True) + eps) * scale


def _gelu(x):
  return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def _rotate(x, pos, theta=10000.0, sign=0.0):
  """RoPE (half-split) of x [heads, D] at position pos; xPos scale zeta^(sign*pos/512)."""
  d = x.shape[-1]
  i = np.arange(d // 2)
  ang = pos * theta ** (-2.0 * i / d)
  x1, x2 = x[:, :d // 2], x[:, d // 2:]
  out = np.concatenate([x1 * np.cos(ang) - x2 * np.sin(ang), x1 * np.sin(ang) + x2 * np.cos(ang)],
                       -1)
  if sign:
    zeta = (2 * i + 0.4 * d) / (1.4 * d)
    out = out * np.tile(zeta ** (sign * pos / 512.0), 2)
  return out


def _t5_bucket(n, buckets=32, max_distance=128):
  """Causal T5 bucket of distance n = query - key >= 0 (Raffel et al.)."""
  exact = buckets // 2
  if n < exact:
    return n
  return min(exact + int(math.log(n / exact) / math.log(max_distance / exact)
                         * (buckets - exact)), buckets - 1)


def streaming_oracle(cfg, params, tokens, sinks, window):
  """float64 numpy model over one stream: token t attends over the first ``sinks`` tokens
  and the latest ``window`` (itself included), each at its place in that list."""
  m = cfg.model
  heads, kv_heads = m.attention.num_heads, m.attention.num_kv_heads
  d = m.d_model // heads
  kind = m.position.kind
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  slopes = 2.0 ** (-8.0 / heads * np.arange(1, heads + 1))   # heads a power of two
  raw_k = [[] for _ in range(m.num_layers)]
  values = [[] for _ in range(m.num_layers)]
  out = []
  for t, tok in enumerate(tokens):
    x = p["embed"]["embedding"][tok]
    kept = [j for j in range(t + 1) if j < sinks or j > t - window]
    place = {j: r for r, j in enumerate(kept)}
    for layer in range(m.num_layers):
      blk = p[f"block_{layer}"]
      qkv = (_layer_norm(x, blk["norm_attention"]["scale"]) @ blk["attention"]["qkv"]["kernel"])
      qkv = qkv.reshape(heads + 2 * kv_heads, d)
      q, k, v = qkv[:heads], qkv[heads:heads + kv_heads], qkv[heads + kv_heads:]
      raw_k[layer].append(k)
      values[layer].append(v)
      heads_out = []
      for h in range(heads):
        g = h // (heads // kv_heads)
        qh = q[h:h + 1]
        keys = np.stack([raw_k[layer][j][g] for j in kept])           # [K, D]
        if kind in ("rope", "xpos"):
          sign = 1.0 if kind == "xpos" else 0.0
          qh = _rotate(qh, place[t], sign=sign)
          keys = np.concatenate([_rotate(keys[r:r + 1], r, sign=-sign) for r in range(len(kept))])
        s = (keys @ qh[0]) / math.sqrt(d)
        dist = np.array([place[t] - r for r in range(len(kept))], np.float64)
        if kind == "alibi":
          s = s - slopes[h] * dist
        elif kind == "t5":
          s = s + np.array([blk["attention"]["position_bias"][_t5_bucket(int(n)), h]
                            for n in dist])
        w = np.exp(s - s.max())
        w /= w.sum()
        heads_out.append(w @ np.stack([values[layer][j][g] for j in kept]))
      x = x + np.concatenate(heads_out) @ blk["attention"]["out"]["kernel"]
      h = _layer_norm(x, blk["norm_mlp"]["scale"])
      x = x + _gelu(h @ blk["mlp"]["up"]["kernel"]) @ blk["mlp"]["down"]["kernel"]
    out.append(_layer_norm(x, p["norm_final"]["scale"]) @ p["embed"]["embedding"].T)
  return np.stack(out)


@pytest.mark.parametrize("position,kv_heads,sinks,window", [
    ("rope", 4, 2, 5), pytest.param("rope", 2, 0, 6, marks=pytest.mark.slow),
    pytest.param("alibi", 2, 2, 5, marks=pytest.mark.slow),
    pytest.param("none", 1, 1, 4, marks=pytest.mark.slow),
    pytest.param("xpos", 2, 2, 5, marks=pytest.mark.slow),
    pytest.param("t5", 1, 3, 4, marks=pytest.mark.slow)])
def test_streaming_mode_equals_attention_over_exactly_the_cached_tokens(position, kv_heads,
                                                                        sinks, window):
  cfg, model, params = perturbed_model(position, model__attention__num_kv_heads=kv_heads)
  tokens = _tokens(batch=1, length=26, seed=3)
  layout = kv_cache.streaming_layout(sinks, window)
  prefill = 4   # within the cache: no eviction yet
  got, cache, full = cached_and_full_logits(model, params, tokens, layout, prefill)
  expected = streaming_oracle(cfg, params, tokens[0], sinks, window)
  np.testing.assert_allclose(got[0], expected, rtol=1e-4, atol=1e-4)
  assert cache.kv_bytes() == 2 * 2 * kv_heads * 8 * 4 * (sinks + window)
  # before any eviction it is the ordinary model; afterwards it is not
  full = full[0]
  n = sinks + window
  np.testing.assert_allclose(got[0, :n], full[:n], **TOL)
  assert np.abs(got[0, n:] - full[n:]).max() > 1e-2


def test_generation_in_streaming_mode_runs_past_the_cache():
  """Greedy StreamingLLM generation equals argmax of the streaming oracle, step by step."""
  cfg, model, params = perturbed_model("rope", model__attention__num_kv_heads=2)
  out = generate.generate(cfg, params, "ab", 14, streaming=generate.Streaming(1, 4))
  stream = np.concatenate([np.frombuffer(b"ab", np.uint8), out.tokens[0]]).astype(np.int32)
  expected = streaming_oracle(cfg, params, stream, 1, 4)
  assert out.tokens[0].tolist() == expected[1:-1].argmax(-1).tolist()


# ----------------------------------------------------------------------------- memory


def test_cache_bytes_follow_the_formula_and_gqa_divides_them():
  sizes = {}
  for kv_heads in (4, 1):
    cfg = config_lib.resolve(tiny_config("rope", model__num_layers=3,
                                         model__attention__num_kv_heads=kv_heads))
    per_token = kv_cache.bytes_per_token(cfg.model)
    assert per_token == 2 * 3 * kv_heads * 8 * 4          # 2 * layers * kv_heads * head_dim * 4
    cache = kv_cache.init_cache(cfg.model, 3, kv_cache.CacheLayout(capacity=50))
    assert cache.kv_bytes() == per_token * 3 * 50
    sizes[kv_heads] = cache.kv_bytes()
  assert sizes[4] == 4 * sizes[1]
  bf16 = config_lib.resolve(tiny_config("rope", model__dtype="bfloat16"))
  assert kv_cache.bytes_per_token(bf16.model) == 2 * 2 * 4 * 8 * 2


# ----------------------------------------------------------------------------- rejections


@pytest.mark.parametrize("overrides,streaming,match", [
    (dict(model__attention__kind="performer"), None, r"model\.attention\.kind='performer'"),
    (dict(model__attention__kind="linear"), None, r"model\.attention\.kind='linear'"),
    (dict(model__attention__kind="lsh"), None, r"model\.attention\.kind='lsh'"),
    (dict(model__position__scaling="dynamic_ntk"), None, r"model\.position\.scaling='dynamic_ntk'"),
    (dict(position="learned"), (4, 8), r"model\.position\.kind='learned'"),
    (dict(position="sinusoidal"), (4, 8), r"model\.position\.kind='sinusoidal'"),
    (dict(model__attention__pattern="sliding_window"), (4, 8),
     r"model\.attention\.pattern='sliding_window'"),
])
def test_unsupported_models_are_config_errors_naming_the_field(overrides, streaming, match):
  overrides = dict(overrides)
  cfg = config_lib.resolve(tiny_config(overrides.pop("position", "rope"), **overrides))
  layout = None if streaming is None else kv_cache.streaming_layout(*streaming)
  with pytest.raises(ConfigError, match=match):
    kv_cache.check_supported(cfg.model, layout)


@pytest.mark.parametrize("sinks,window,match", [(-1, 8, "streaming.sinks=-1"),
                                                (4, 0, "streaming.window=0"),
                                                (2.5, 8, "streaming.sinks=2.5")])
def test_bad_streaming_sizes_are_config_errors(sinks, window, match):
  with pytest.raises(ConfigError, match=match):
    kv_cache.streaming_layout(sinks, window)


def test_memory_report_lists_mha_gqa_mqa_with_allocated_bytes():
  from attnlab.inference import memory
  cfg = config_lib.resolve(tiny_config("rope", model__d_model=64,
                                       model__attention__num_heads=8,
                                       model__attention__num_kv_heads=8))
  rows = memory.report(cfg.model, contexts=(100,), batch=2)
  assert [(r["variant"], r["num_kv_heads"]) for r in rows] == [
      ("MHA", 8), ("GQA (heads/2)", 4), ("GQA (heads/4)", 2), ("MQA", 1)]
  for r in rows:   # 2 * 2 layers * kv_heads * head_dim 8 * 4 bytes; 100 tokens x batch 2
    assert r["bytes_per_token"] == 2 * 2 * r["num_kv_heads"] * 8 * 4
    assert r["allocated@100"] == r["bytes@100"] == r["bytes_per_token"] * 200
  assert rows[0]["allocated@100"] == 4 * rows[2]["allocated@100"]
  assert "| GQA (heads/4) | 2 | 256 | 50.00 KiB | 0.25x |" in memory.markdown(rows, (100,))
