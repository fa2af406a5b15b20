"""scripts/bench_decode.py: the loop it times is ``attnlab.generate``'s (the decode half
of ``generation.decode_program``), it generates what recomputation generates (so the
speed-up compares equal work), and its cache bytes follow the formula."""

import importlib.util
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import REPO, tiny_config

from attnlab.inference import generation


@pytest.fixture(scope="module")
def bench():
  spec = importlib.util.spec_from_file_location("bench_decode",
                                                REPO / "scripts" / "bench_decode.py")
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module
  spec.loader.exec_module(module)
  return module


@pytest.mark.slow
def test_cached_loop_equals_recomputation_and_bytes_follow_the_formula(bench):
  config = tiny_config("rope")
  row = bench.measure(config, context=40, kv_heads=2, steps=8, repeats=1, check=8)
  assert row["greedy_tokens_agree"]
  # 2 * layers * kv_heads * head_dim * 4 bytes, 40 slots, batch 1
  assert row["cache_bytes"] == 2 * 2 * 2 * 8 * 4 * 40 == row["bytes_per_token"] * 40
  assert row["speedup"] == pytest.approx(row["recompute_ms_per_token"]
                                         / row["cached_ms_per_token"])
  # the timed decode loop is generate's: its tokens are what attnlab.generate returns ...
  cfg = bench.with_kv_heads(config, 2)
  model = bench.TransformerLM(cfg.model)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"]
  prompt = np.random.default_rng(5).integers(0, 256, (1, 32)).astype(np.int32)
  prefill, decode = bench.cached_decoder(cfg.model, prompt, 8)   # compiled by measure() above
  cache, logits = prefill(params)
  assert int(cache.length) == 32 and cache.layout.capacity == 40     # the timed half starts here
  out, counts, stopped, finite = jax.device_get(decode(params, cache, logits))
  assert finite and counts.tolist() == [8] and not stopped.any()
  np.testing.assert_array_equal(out[:, :32], prompt)
  tokens = bench.new_tokens((out, counts, stopped, finite), 32)
  generated = generation.generate(cfg, params, [prompt[0]], 8).tokens[0]
  np.testing.assert_array_equal(tokens[0], generated)
  # ... and the greedy continuation under the full forward pass (no cache, no attnlab.inference)
  seq = np.concatenate([prompt, tokens], axis=1)
  logits = np.asarray(model.apply({"params": params}, seq))
  np.testing.assert_array_equal(tokens, logits[:, 31:39].argmax(-1))
  # the recompute baseline is generate(use_cache=False): the same tokens
  recomputed = bench.recompute_decoder(cfg.model, prompt, 8)(params)
  np.testing.assert_array_equal(bench.new_tokens(recomputed, 32), tokens)



def test_speedup_pairs_the_cached_loop_with_the_recomputation_of_the_same_round(bench):
  # 8-token loops of 0.8 and 1.6 s (0.1 and 0.2 s per token) against single forward passes
  # of 2.0 and 2.0 s in the same two rounds: per round 20x and 10x; medians 2.0 / 0.15
  row = bench._with_ratios({"context": 64, "num_kv_heads": 2, "steps": 8, "batch": 1,
                            "cache_bytes": 10, "greedy_tokens_agree": True}, [0.8, 1.6],
                           [2.0, 2.0])
  assert row["paired_speedups"] == pytest.approx([20.0, 10.0])
  assert row["speedup"] == pytest.approx(2.0 / 0.15)
  assert (row["speedup_min"], row["speedup_max"]) == pytest.approx((10.0, 20.0))
  assert row["cached_ms_per_token"] == pytest.approx(150.0)
  assert row["recompute"]["times_s"] == [2.0, 2.0] and row["cached"]["max_s"] == 1.6
  # --runs pools rounds, keeping each pair of one round together
  again = bench._with_ratios({k: row[k] for k in ("context", "num_kv_heads", "steps", "batch",
                                                  "cache_bytes", "greedy_tokens_agree")},
                             [0.4], [4.0])                     # 0.05 s/token: 80x
  both = bench.combine([row, again])
  assert both["runs"] == 2 and both["rounds"] == 3
  assert both["paired_speedups"] == pytest.approx([20.0, 10.0, 80.0])
  assert both["speedup"] == pytest.approx(2.0 / 0.1)          # medians 2.0 and 0.1 s/token
  text = bench.markdown([row])
  assert "| 64 | 2 | 150.000 (100.000–200.000) | 2000.00 (2000.00–2000.00) |" in text
  assert "| 13x (10–20) | 2 |" in text


@pytest.mark.slow
def test_measure_times_both_sides_in_the_same_rounds(bench):
  row = bench.measure(tiny_config("rope"), context=24, kv_heads=2, steps=4, repeats=3, check=4)
  assert len(row["cached"]["times_s"]) == len(row["recompute"]["times_s"]) == row["rounds"] == 3
  assert row["speedup_min"] <= row["speedup"] * (1 + 1e-9) and \
      row["speedup"] <= row["speedup_max"] * (1 + 1e-9)
