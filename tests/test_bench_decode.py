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

