"""Decode speed with the KV cache vs recomputing the whole prefix, and cache bytes.

  python scripts/bench_decode.py --config=configs/lm.py:rope --contexts=256,1024,4096 \
      --kv_heads=4,1 [--steps=64 --repeats=5 --runs=1 --json=docs/bench_decode.json]
  python scripts/bench_decode.py --quick       # tiny smoke test, JSON to the temp dir

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

Timing (``attnlab.benchtime``): both programs are compiled and run once untimed, then
``--repeats`` rounds each time the cached loop and then the recomputation, so the two sides
alternate (A B A B ...). A row's times are medians over its rounds (``--runs`` > 1 pools the
rounds of that many measurements), with their ranges; the speed-up is the ratio of the
per-token medians, and its range the smallest and largest ratio of two times from the same
round. The table has every (context, kv_heads) row: the whole curve, no single headline.
"""

from __future__ import annotations

import pathlib
import sys
import tempfile

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_flags
from tqdm import tqdm

from attnlab import benchtime, config_lib, runtime
from attnlab.inference import generation
from attnlab.models import kv_cache
from attnlab.models import TransformerLM, num_params
from attnlab.provenance import provenance

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


def measure(config, context: int, kv_heads: int, *, steps: int = 64, repeats: int = 5,
            check: int = 4, batch: int = 1, seed: int = 0) -> dict:
  """One row of the benchmark (see the module docstring).

  Both programs are compiled and run once untimed; then ``repeats`` rounds each time the
  cached decode loop and then the recomputation (``benchtime.alternate``), so the speed-up's
  two sides alternate within this one measurement: ``cached`` / ``recompute`` are
  ``benchtime.spread`` of their rounds (seconds of the whole ``steps``-token loop, and of one
  forward pass), ``speedup`` the ratio of the per-token medians and ``speedup_min`` /
  ``speedup_max`` the extremes of the per-round ratios.
  """
  cfg = with_kv_heads(config, kv_heads)
  model = TransformerLM(cfg.model)
  params = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, 8), jnp.int32))["params"]
  rng = np.random.default_rng(seed)
  n = context - steps
  prompt = rng.integers(0, cfg.model.vocab_size, (batch, n)).astype(np.int32)
  prefill, decode = cached_decoder(cfg.model, prompt, steps)
  cache, logits = prefill(params)
  full = rng.integers(0, cfg.model.vocab_size, (batch, context - 1)).astype(np.int32)
  recompute = recompute_decoder(cfg.model, full, 1)        # the N-th token, no cache
  times = benchtime.alternate(
      {"cached": lambda: jax.block_until_ready(decode(params, cache, logits)),
       "recompute": lambda: jax.block_until_ready(recompute(params))}, repeats)
  cached_tokens = new_tokens(decode(params, cache, logits), n)
  agree = np.array_equal(cached_tokens[:, :check],
                         new_tokens(recompute_decoder(cfg.model, prompt, check)(params), n))
  row = {"context": context, "num_heads": int(cfg.model.attention.num_heads),
         "num_kv_heads": kv_heads, "params": num_params(params), "batch": batch, "steps": steps,
         "cache_bytes": cache.kv_bytes(), "bytes_per_token": kv_cache.bytes_per_token(cfg.model),
         "greedy_tokens_agree": bool(agree), "impl": cfg.model.attention.impl}
  return _with_ratios(row, times["cached"], times["recompute"])


def _with_ratios(row: dict, cached_s, recompute_s) -> dict:
  """``row`` with both sides' spreads and the paired speed-up: ``cached_s`` are seconds of
  ``row['steps']``-token decode loops, ``recompute_s`` of single forward passes, from the
  same rounds (equally many, in order)."""
  steps, batch = row["steps"], row["batch"]
  per_token = [t / steps for t in cached_s]
  speed = benchtime.paired(list(recompute_s), per_token)
  cached, recompute = benchtime.spread(cached_s), benchtime.spread(recompute_s)
  return {**row, "cached": cached, "recompute": recompute, "rounds": len(per_token),
          "cached_ms_per_token": 1e3 * cached["median_s"] / steps,
          "recompute_ms_per_token": 1e3 * recompute["median_s"],
          "cached_tokens_per_s": batch * steps / cached["median_s"],
          "recompute_tokens_per_s": batch / recompute["median_s"],
          "speedup": speed["ratio"], "speedup_min": speed["ratio_min"],
          "speedup_max": speed["ratio_max"], "paired_speedups": speed["paired_ratios"]}


def combine(runs: list[dict]) -> dict:
  """One row from repeated measurements of the same row: all their rounds together (each
  run's rounds alternate within it, so every paired ratio still divides two times of one
  round); ``runs`` counts the measurements."""
  first = runs[0]
  row = {k: v for k, v in first.items() if k not in _DERIVED}
  row = _with_ratios(row, [t for r in runs for t in r["cached"]["times_s"]],
                     [t for r in runs for t in r["recompute"]["times_s"]])
  row["runs"] = len(runs)
  row["greedy_tokens_agree"] = all(r["greedy_tokens_agree"] for r in runs)
  return row


_DERIVED = ("cached", "recompute", "rounds", "cached_ms_per_token", "recompute_ms_per_token",
            "cached_tokens_per_s", "recompute_tokens_per_s", "speedup", "speedup_min",
            "speedup_max", "paired_speedups", "runs")


def markdown(rows: list[dict]) -> str:
  """Every row (every context: the whole curve, no single headline). Each side's time is its
  median per token with the range over the rounds; the speed-up is the ratio of the medians
  with the range of the per-round ratios (both sides timed in the same round)."""
  if rows and "cached" not in rows[0]:
    return _legacy_markdown(rows)
  lines = ["| context | kv_heads | cached ms/token: median (range) | recompute ms/token: median "
           "(range) | cached tok/s | recompute tok/s | speed-up: ratio of medians (per-round "
           "range) | rounds | cache bytes | greedy tokens agree |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    steps = r["steps"]
    per_token = {k: r["cached"][k] / steps for k in ("median_s", "min_s", "max_s")}
    lines.append(f"| {r['context']} | {r['num_kv_heads']} | "
                 f"{benchtime.time_text(per_token, digits=3)} | "
                 f"{benchtime.time_text(r['recompute'], digits=2)} | "
                 f"{r['cached_tokens_per_s']:,.0f} | {r['recompute_tokens_per_s']:,.1f} | "
                 f"{r['speedup']:.0f}x ({r['speedup_min']:.0f}–{r['speedup_max']:.0f}) | "
                 f"{r['rounds']} | "
                 f"{r['cache_bytes']:,} | {'yes' if r['greedy_tokens_agree'] else 'NO'} |")
  return "\n".join(lines) + "\n"


def _legacy_markdown(rows: list[dict]) -> str:
  """Rows written before the paired timing (docs/bench_decode.json until it is rerun): each
  side timed in its own block, the speed-up's range over ``runs`` separate measurements."""
  lines = ["| context | kv_heads | cached ms/token | recompute ms/token | cached tok/s | "
           "recompute tok/s | speed-up | cache bytes | greedy tokens agree |",
           "|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    speedup = (f"{r['speedup']:.0f}x ({r['speedup_min']:.0f}–{r['speedup_max']:.0f})"
               if r.get("runs", 1) > 1 else f"{r['speedup']:.0f}x")
    lines.append(f"| {r['context']} | {r['num_kv_heads']} | {r['cached_ms_per_token']:.3f} | "
                 f"{r['recompute_ms_per_token']:.2f} | {r['cached_tokens_per_s']:,.0f} | "
                 f"{r['recompute_tokens_per_s']:,.1f} | {speedup} | "
                 f"{r['cache_bytes']:,} | {'yes' if r['greedy_tokens_agree'] else 'NO'} |")
  return "\n".join(lines) + "\n"


# --quick: a tiny run (well under a minute on 2 CPU cores) to smoke-test the script; flags
# given explicitly still win
QUICK = {"contexts": ["96", "160"], "kv_heads": ["1"], "steps": 16, "repeats": 3,
         "json": str(pathlib.Path(tempfile.gettempdir()) / "bench_decode_quick.json")}


def define_flags():
  config_flags.DEFINE_config_file("config", "configs/lm.py:rope", "Model config.",
                                  lock_config=True)
  flags.DEFINE_list("contexts", ["256", "1024", "4096"], "Context lengths N.")
  flags.DEFINE_list("kv_heads", ["4", "1"], "num_kv_heads values (each must divide num_heads).")
  flags.DEFINE_integer("steps", 64, "Decode steps timed per run.")
  flags.DEFINE_integer("repeats", 5, "Timed rounds inside one measurement; each round times "
                       "the cached loop, then the recomputation.")
  flags.DEFINE_integer("runs", 1, "Measurements per row, one after another; the row pools "
                       "their rounds (medians and ranges over all of them).")
  flags.DEFINE_integer("batch", 1, "Sequences decoded together.")
  flags.DEFINE_string("json", None, "Also write the rows to this JSON file (atomically, with "
                      "provenance).")
  flags.DEFINE_bool("quick", False, "A tiny run to smoke-test the script: " + ", ".join(
      f"--{k}={','.join(v) if isinstance(v, list) else v}" for k, v in QUICK.items()))


def main(argv):
  del argv
  FLAGS = flags.FLAGS
  if FLAGS.quick:
    for name, value in QUICK.items():
      if not FLAGS[name].present:
        setattr(FLAGS, name, value)
  contexts = [int(n) for n in FLAGS.contexts]
  if any(n <= FLAGS.steps for n in contexts):
    sys.exit(f"error: every context must exceed --steps={FLAGS.steps}; got {contexts}")
  rows, load = [], {"start": benchtime.load_average()}
  jobs = [(n, int(h)) for h in FLAGS.kv_heads for n in contexts]
  for n, h in tqdm(jobs, desc="bench_decode"):
    rows.append(combine([measure(FLAGS.config, n, h, steps=FLAGS.steps, repeats=FLAGS.repeats,
                                 batch=FLAGS.batch) for _ in range(FLAGS.runs)]))
  load["end"] = benchtime.load_average()
  print(f"{jax.devices()[0].platform}, {rows[0]['params']:,} parameters, batch {FLAGS.batch}, "
        f"impl {rows[0]['impl']}; {FLAGS.steps} decode steps timed per cached run; "
        f"{FLAGS.runs} x {FLAGS.repeats} rounds per row, each timing the cached loop, then the "
        "recomputation; times in ms: median (smallest–largest); speed-up: ratio of medians "
        "(smallest–largest per-round ratio)")
  print(markdown(rows) + benchtime.load_text(load))
  if FLAGS.json:
    benchtime.write_json(FLAGS.json, {"rows": rows, "load_average": load}, provenance())
    print(f"wrote {FLAGS.json}")


if __name__ == "__main__":
  runtime.configure()
  define_flags()
  app.run(main)
