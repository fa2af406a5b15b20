"""scripts/bench_decode.py: the cached loop it times generates what recomputation
generates (so the speed-up compares equal work), and its cache bytes follow the formula."""

import importlib.util
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import REPO, tiny_config


@pytest.fixture(scope="module")
def bench():
  spec = importlib.util.spec_from_file_location("bench_decode",
                                                REPO / "scripts" / "bench_decode.py")
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module
  spec.loader.exec_module(module)
  return module


def test_cached_loop_equals_recomputation_and_bytes_follow_the_formula(bench):
  config = tiny_config("rope")
  row = bench.measure(config, context=40, kv_heads=2, steps=8, repeats=1, check=8)
  assert row["greedy_tokens_agree"]
  # 2 * layers * kv_heads * head_dim * 4 bytes, 40 slots, batch 1
  assert row["cache_bytes"] == 2 * 2 * 2 * 8 * 4 * 40 == row["bytes_per_token"] * 40
  assert row["speedup"] == pytest.approx(row["recompute_ms_per_token"]
                                         / row["cached_ms_per_token"])
  # the timed decode loop's tokens are the greedy continuation under the full forward pass
  cfg = bench.with_kv_heads(config, 2)
  model = bench.TransformerLM(cfg.model)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"]
  prompt = jnp.asarray(np.random.default_rng(5).integers(0, 256, (1, 32)), jnp.int32)
  prefill, decode = bench.cached_fns(cfg.model, 40, 8)      # compiled by measure() above
  tokens = np.asarray(decode(params, *prefill(params, prompt)))
  seq = np.concatenate([np.asarray(prompt), tokens], axis=1)
  logits = np.asarray(model.apply({"params": params}, seq))
  np.testing.assert_array_equal(tokens, logits[:, 31:39].argmax(-1))
