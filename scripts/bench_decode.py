"""Decode speed with the KV cache vs recomputing the whole prefix, and cache bytes.

  python scripts/bench_decode.py --config=configs/lm.py:rope --contexts=256,1024,4096 \
      --kv_heads=4,1 [--steps=64 --repeats=3 --json=docs/bench_decode.json]

For each context N and head layout (``num_kv_heads``) of the config's model (random
weights: speed does not depend on them):

- cached: prefill N - steps tokens, then time ``steps`` greedy decode steps (one jitted
  loop; each step attends over an N-slot cache): tokens/s = steps / time;
- recompute: one forward pass over N tokens per new token (what generation without a
  cache does): tokens/s = 1 / time of that pass;
- both continue the same prompt greedily, and the first ``check`` tokens must agree
  (the comparison is of equal work);
- cache bytes: the K/V arrays of the N-slot cache.

Times are medians of ``repeats`` runs after a compiling run.
"""

from __future__ import annotations

import functools
import json
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_flags
from tqdm import tqdm

from attnlab import config_lib, runtime
from attnlab.models import kv_cache
from attnlab.models import TransformerLM, num_params


def with_kv_heads(config, kv_heads: int):
  cfg = ml_collections.ConfigDict(config.to_dict())
  cfg.model.attention.num_kv_heads = kv_heads
  return config_lib.resolve(cfg)


@functools.lru_cache(maxsize=None)
def cached_fns(model_cfg, context: int, steps: int):
  """(prefill, decode): jitted greedy generation of ``steps`` tokens into an N-slot cache."""
  model = TransformerLM(model_cfg)
  layout = kv_cache.CacheLayout(capacity=context)

  @jax.jit
  def prefill(params, prompt):
    cache = kv_cache.init_cache(model_cfg, prompt.shape[0], layout)
    logits, cache = model.apply({"params": params}, prompt, cache=cache, prefill=True)
    return cache, logits[:, -1]

  @jax.jit
  def decode(params, cache, logits):
    def step(i, state):
      cache, logits, out = state
      tok = jnp.argmax(logits, -1).astype(jnp.int32)
      logits, cache = model.apply({"params": params}, tok[:, None], cache=cache)
      return cache, logits[:, 0], out.at[:, i].set(tok)
    out = jnp.zeros((logits.shape[0], steps), jnp.int32)
    return jax.lax.fori_loop(0, steps, step, (cache, logits, out))[2]

  return prefill, decode


@functools.lru_cache(maxsize=None)
def recompute_fn(model_cfg):
  """Jitted: the greedy token after position ``last`` from a full forward pass over
  ``tokens`` [B, N] (later tokens cannot change it: the model is causal)."""
  model = TransformerLM(model_cfg)

  @jax.jit
  def next_token(params, tokens, last):
    logits = model.apply({"params": params}, tokens)
    return jnp.argmax(jax.lax.dynamic_index_in_dim(logits, last, 1, False), -1).astype(jnp.int32)
  return next_token


def recompute_greedy(model_cfg, params, prompt, steps: int) -> np.ndarray:
  """Greedy continuation by recomputation, one token at a time: int32 [B, steps].
  Every step runs the model over the whole buffer (prompt + steps tokens, fixed shape)."""
  fwd = recompute_fn(model_cfg)
  n = prompt.shape[1]
  buf = np.zeros((prompt.shape[0], n + steps), np.int32)
  buf[:, :n] = np.asarray(prompt)
  for i in range(steps):
    buf[:, n + i] = np.asarray(fwd(params, jnp.asarray(buf), n + i - 1))
  return buf[:, n:]


def _median_seconds(fn, repeats: int) -> float:
  jax.block_until_ready(fn())                  # compile and warm up
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def measure(config, context: int, kv_heads: int, *, steps: int = 64, repeats: int = 3,
            check: int = 4, batch: int = 1, seed: int = 0) -> dict:
  """One row of the benchmark (see the module docstring)."""
  cfg = with_kv_heads(config, kv_heads)
  model = TransformerLM(cfg.model)
  params = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, 8), jnp.int32))["params"]
  rng = np.random.default_rng(seed)
  prompt = jnp.asarray(rng.integers(0, cfg.model.vocab_size, (batch, context - steps)), jnp.int32)
  prefill, decode = cached_fns(cfg.model, context, steps)
  cache, logits = prefill(params, prompt)
  cached_s = _median_seconds(lambda: decode(params, cache, logits), repeats)
  cached_tokens = np.asarray(decode(params, cache, logits))
  full = jnp.asarray(rng.integers(0, cfg.model.vocab_size, (batch, context)), jnp.int32)
  fwd = recompute_fn(cfg.model)
  recompute_s = _median_seconds(lambda: fwd(params, full, context - 1), repeats)
  agree = np.array_equal(cached_tokens[:, :check],
                         recompute_greedy(cfg.model, params, prompt, check))
  per_token_cached = cached_s / steps
  return {"context": context, "num_heads": int(cfg.model.attention.num_heads),
          "num_kv_heads": kv_heads, "params": num_params(params), "batch": batch,
          "cached_ms_per_token": 1e3 * per_token_cached,
          "recompute_ms_per_token": 1e3 * recompute_s,
          "cached_tokens_per_s": batch / per_token_cached,
          "recompute_tokens_per_s": batch / recompute_s,
          "speedup": recompute_s / per_token_cached,
          "cache_bytes": cache.kv_bytes(), "bytes_per_token": kv_cache.bytes_per_token(cfg.model),
          "greedy_tokens_agree": bool(agree), "impl": cfg.model.attention.impl}


def combine(runs: list[dict]) -> dict:
  """One row from repeated measurements: medians of the timings, the speed-up's range."""
  row = dict(runs[0])
  for key in ("cached_ms_per_token", "recompute_ms_per_token", "cached_tokens_per_s",
              "recompute_tokens_per_s", "speedup"):
    row[key] = float(np.median([r[key] for r in runs]))
  row["speedup_min"] = min(r["speedup"] for r in runs)
  row["speedup_max"] = max(r["speedup"] for r in runs)
  row["runs"] = len(runs)
  row["greedy_tokens_agree"] = all(r["greedy_tokens_agree"] for r in runs)
  return row


def markdown(rows: list[dict]) -> str:
  lines = ["| context | kv_heads | cached ms/token | recompute ms/token | cached tok/s | "
           "recompute tok/s | speed-up | cache bytes | greedy tokens agree |",
           "|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['context']} | {r['num_kv_heads']} | {r['cached_ms_per_token']:.3f} | "
                 f"{r['recompute_ms_per_token']:.2f} | {r['cached_tokens_per_s']:,.0f} | "
                 f"{r['recompute_tokens_per_s']:,.1f} | {_speedup(r)} | "
                 f"{r['cache_bytes']:,} | {'yes' if r['greedy_tokens_agree'] else 'NO'} |")
  return "\n".join(lines) + "\n"


def _speedup(r) -> str:
  if r.get("runs", 1) > 1:
    return f"{r['speedup']:.0f}x ({r['speedup_min']:.0f}–{r['speedup_max']:.0f})"
  return f"{r['speedup']:.0f}x"


def define_flags():
  config_flags.DEFINE_config_file("config", "configs/lm.py:rope", "Model config.",
                                  lock_config=True)
  flags.DEFINE_list("contexts", ["256", "1024", "4096"], "Context lengths N.")
  flags.DEFINE_list("kv_heads", ["4", "1"], "num_kv_heads values (each must divide num_heads).")
  flags.DEFINE_integer("steps", 64, "Decode steps timed per run.")
  flags.DEFINE_integer("repeats", 3, "Timed runs (median) inside one measurement.")
  flags.DEFINE_integer("runs", 1, "Measurements per row, one after another; the "
                       "row reports their medians and the speed-up's range.")
  flags.DEFINE_integer("batch", 1, "Sequences decoded together.")
  flags.DEFINE_string("json", None, "Also write the rows to this JSON file.")


def main(argv):
  del argv
  FLAGS = flags.FLAGS
  contexts = [int(n) for n in FLAGS.contexts]
  if any(n <= FLAGS.steps for n in contexts):
    sys.exit(f"error: every context must exceed --steps={FLAGS.steps}; got {contexts}")
  rows = []
  jobs = [(n, int(h)) for h in FLAGS.kv_heads for n in contexts]
  for n, h in tqdm(jobs, desc="bench_decode"):
    rows.append(combine([measure(FLAGS.config, n, h, steps=FLAGS.steps, repeats=FLAGS.repeats,
                                 batch=FLAGS.batch) for _ in range(FLAGS.runs)]))
  print(f"{jax.devices()[0].platform}, {rows[0]['params']:,} parameters, batch {FLAGS.batch}, "
        f"impl {rows[0]['impl']}")
  print(markdown(rows))
  if FLAGS.json:
    from attnlab.provenance import provenance
    pathlib.Path(FLAGS.json).write_text(json.dumps(
        {"provenance": provenance(), "rows": rows}, indent=2))


if __name__ == "__main__":
  runtime.configure()
  define_flags()
  app.run(main)
