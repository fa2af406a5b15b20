"""Decode speed with the KV cache vs recomputing the whole prefix, and cache bytes.

  python scripts/bench_decode.py --config=configs/lm.py:rope --contexts=256,1024,4096 \
      --kv_heads=4,1 [--steps=64 --repeats=3 --json=docs/bench_decode.json]

For each context N and head layout (``num_kv_heads``) of the config's model (random
weights: speed does not depend on them), what ``attnlab.generate`` runs
(``attnlab.inference.generation``), greedy:

- cached: prefill N - steps tokens, then time the decode loop for ``steps`` tokens (the
  second half of ``generation.decode_program``: one jitted loop; each step attends over
  the model's N-slot cache): tokens/s = steps / time;
- recompute: generation without a cache (``generation.recompute_program``) for the N-th
  token: one forward pass over the N - 1 tokens before it: tokens/s = 1 / time;
- both continue the same prompt, and the first ``check`` tokens must agree (the
  comparison is of equal work);
- cache bytes: the K/V arrays of that cache (N slots; a pattern with a bounded look-back,
  such as ``sliding_window``, decodes with a rolling cache of its window).

Times are medians of ``repeats`` runs after a compiling run.
"""

from __future__ import annotations

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
from attnlab.inference import generation
from attnlab.models import kv_cache
from attnlab.models import TransformerLM, num_params

GREEDY = generation.Sampling()          # temperature 0: argmax


def with_kv_heads(config, kv_heads: int):
  cfg = ml_collections.ConfigDict(config.to_dict())
  cfg.model.attention.num_kv_heads = kv_heads
  return config_lib.resolve(cfg)


def _buffer(prompt, total: int) -> jax.Array:
  """The prompt, zero padded to ``total`` tokens: int32 [B, total] (generate's buffer)."""
  prompt = jnp.asarray(prompt, jnp.int32)
  return jnp.pad(prompt, ((0, 0), (0, total - prompt.shape[1])))


def cached_decoder(model_cfg, prompt, steps: int):
  """``generate``'s cached program for ``steps`` greedy tokens after ``prompt`` (int32
  [B, n]), in the cache it would use (n + steps slots for a full-attention model):
  (prefill(params) -> (cache, logits), decode(params, cache, logits) -> decode_loop's
  outputs; ``new_tokens`` reads the int32 [B, steps] tokens from them)."""
  batch, n = prompt.shape
  total = n + steps
  layout = generation.cache_layout(model_cfg, total, None)
  prefill, decode = generation.decode_program(model_cfg, layout, batch, n, total, steps, GREEDY)
  buf, lengths = _buffer(prompt, total), jnp.full((batch,), n, jnp.int32)
  key = jax.random.PRNGKey(0)
  return (lambda params: prefill(params, buf),
          lambda params, cache, logits: decode(params, cache, logits, buf, lengths, key))


def new_tokens(outputs, n: int) -> np.ndarray:
  """The generated tokens of a program's outputs (tokens, counts, stopped, finite): int32
  [B, total - n]; every logit they were chosen from must be finite."""
  tokens, _, _, finite = jax.device_get(outputs)
  if not finite:
    raise FloatingPointError("the model's logits are not finite")
  return np.asarray(tokens)[:, n:]


def recompute_decoder(model_cfg, prompt, steps: int):
  """``generate(use_cache=False)``'s program for ``steps`` greedy tokens after ``prompt``
  (int32 [B, n]): run(params) -> its outputs (``new_tokens`` reads them). Every step is one
  forward pass over n + steps - 1 tokens."""
  batch, n = prompt.shape
  run = generation.recompute_program(model_cfg, batch, n, n + steps, steps, GREEDY)
  buf, lengths = _buffer(prompt, n + steps), jnp.full((batch,), n, jnp.int32)
  key = jax.random.PRNGKey(0)
  return lambda params: run(params, buf, lengths, key)


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
  n = context - steps
  prompt = rng.integers(0, cfg.model.vocab_size, (batch, n)).astype(np.int32)
  prefill, decode = cached_decoder(cfg.model, prompt, steps)
  cache, logits = prefill(params)
  cached_s = _median_seconds(lambda: decode(params, cache, logits), repeats)
  cached_tokens = new_tokens(decode(params, cache, logits), n)
  full = rng.integers(0, cfg.model.vocab_size, (batch, context - 1)).astype(np.int32)
  recompute = recompute_decoder(cfg.model, full, 1)        # the N-th token, no cache
  recompute_s = _median_seconds(lambda: recompute(params), repeats)
  agree = np.array_equal(cached_tokens[:, :check],
                         new_tokens(recompute_decoder(cfg.model, prompt, check)(params), n))
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
