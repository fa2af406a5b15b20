"""Generation: sampling filters by hand, sampled frequencies against the formula, greedy
and sampled generation against step-by-step full forward passes, stop tokens, the CLI,
and clear errors for requests that cannot be served."""

import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import REPO, perturbed_model, tiny_config

from attnlab import workdir as workdir_lib
from attnlab import ConfigError, config_lib
from attnlab.inference import generation as generate
from attnlab.engine import training as train
from attnlab.inference import sampling as sampling_lib
from attnlab.inference.sampling import Sampling
from attnlab.models import TransformerLM, kv_cache

PROMPTS = ["To be, or", "ab", "the quick brown"]   # ragged: lengths 9, 2, 15


@pytest.fixture(scope="module")
def gqa():
  return perturbed_model("rope", model__attention__num_kv_heads=2)


def _next_token_logits(model, params, prompt, generated):
  """The oracle: one full forward pass over prompt + generated text; row i holds the
  logits that predict generated token i (from everything before it). The text is zero
  padded to 32 tokens so one compilation serves every call; the model is causal
  (tests/test_model.py), so the padding does not change these rows."""
  seq = np.concatenate([np.frombuffer(prompt.encode(), np.uint8), generated]).astype(np.int32)
  padded = np.zeros((1, 32), np.int32)
  padded[0, :len(seq)] = seq
  logits = np.asarray(_forward(model)(params, padded))[0]
  return logits[len(prompt) - 1:len(seq) - 1]


@functools.lru_cache(maxsize=None)
def _forward(model):
  return jax.jit(lambda params, tokens: model.apply({"params": params}, tokens))


# ----------------------------------------------------------------------------- filters


def test_top_k_keeps_the_k_largest_and_ties():
  logits = jnp.array([[1.0, 3.0, 2.0, 3.0, 0.0]])
  np.testing.assert_array_equal(sampling_lib.top_k_filter(logits, 2),
                                [[-np.inf, 3.0, -np.inf, 3.0, -np.inf]])
  np.testing.assert_array_equal(sampling_lib.top_k_filter(logits, 3),
                                [[-np.inf, 3.0, 2.0, 3.0, -np.inf]])
  np.testing.assert_array_equal(sampling_lib.top_k_filter(logits, 0), logits)


@pytest.mark.parametrize("p,kept", [(0.4, [2]), (0.75, [2, 0]), (0.85, [2, 0, 3]), (1.0, [0, 1, 2, 3])])
def test_top_p_keeps_the_smallest_set_reaching_p(p, kept):
  probs = np.array([0.3, 0.05, 0.5, 0.15])   # sorted: 0.5 (id 2), 0.3 (id 0), 0.15, 0.05
  out = np.asarray(sampling_lib.top_p_filter(jnp.log(jnp.asarray([probs])), p))[0]
  assert sorted(np.flatnonzero(np.isfinite(out)).tolist()) == sorted(kept)


def test_sampled_frequencies_match_the_filtered_softmax():
  logits = jnp.array([[2.0, 1.0, 0.5, 0.0, -1.0, 3.0]])
  s = Sampling(temperature=2.0, top_k=4, top_p=0.8)
  # by hand: /2 -> [1, .5, .25, 0, -.5, 1.5]; top-4 -> ids 5, 0, 1, 2;
  # softmax of [1.5, 1, .5, .25] = [.442, .268, .163, .127]; mass ranked above each:
  # 0, .442, .710, .873 -> top-p 0.8 keeps ids 5, 0, 1
  z = np.exp(np.array([1.5, 1.0, 0.5]))
  expected = np.zeros(6)
  expected[[5, 0, 1]] = z / z.sum()
  keys = jax.random.split(jax.random.PRNGKey(0), 20000)
  draws = jax.vmap(lambda k: sampling_lib.sample(k, logits, s))(keys)[:, 0]
  freq = np.bincount(np.asarray(draws), minlength=6) / len(keys)
  np.testing.assert_allclose(freq, expected, atol=0.015)


@pytest.mark.parametrize("kwargs,match", [
    (dict(temperature=-0.5), r"--temperature=-0\.5"), (dict(temperature=float("nan")), "--temperature=nan"),
    (dict(top_k=-1), "--top_k=-1"), (dict(top_k=300), r"--top_k=300 must be an integer in \[0, 256\]"),
    (dict(top_p=0.0), r"--top_p=0\.0 must be in \(0, 1\]"), (dict(top_p=1.5), r"--top_p=1\.5"),
])
def test_bad_sampling_parameters_are_clear_errors(gqa, kwargs, match):
  cfg, _, params = gqa
  with pytest.raises(ConfigError, match=match):
    generate.generate(cfg, params, "ab", 4, Sampling(**kwargs))


# ----------------------------------------------------------------------------- generation


def test_greedy_batch_of_ragged_prompts_equals_step_by_step_argmax(gqa):
  cfg, model, params = gqa
  out = generate.generate(cfg, params, PROMPTS, 10)
  for prompt, tokens in zip(PROMPTS, out.tokens):
    assert len(tokens) == 10
    assert tokens.tolist() == _next_token_logits(model, params, prompt, tokens).argmax(-1).tolist()
  # temperature 0 is deterministic and ignores the seed
  again = generate.generate(cfg, params, PROMPTS, 10, seed=123)
  assert [t.tolist() for t in again.tokens] == [t.tolist() for t in out.tokens]


def test_sampling_is_reproducible_and_the_cache_changes_nothing(gqa):
  cfg, model, params = gqa
  s = Sampling(temperature=1.0, top_k=5)
  a = generate.generate(cfg, params, PROMPTS, 12, s, seed=7)
  b = generate.generate(cfg, params, PROMPTS, 12, s, seed=7)
  c = generate.generate(cfg, params, PROMPTS, 12, s, seed=7, use_cache=False)
  d = generate.generate(cfg, params, PROMPTS, 12, s, seed=8)
  assert [t.tolist() for t in a.tokens] == [t.tolist() for t in b.tokens]
  assert [t.tolist() for t in a.tokens] == [t.tolist() for t in c.tokens]
  assert [t.tolist() for t in a.tokens] != [t.tolist() for t in d.tokens]
  # every sampled token is among the 5 most likely under the full forward pass
  for prompt, tokens in zip(PROMPTS, a.tokens):
    top5 = np.argsort(-_next_token_logits(model, params, prompt, tokens), axis=-1)[:, :5]
    assert all(tok in row for tok, row in zip(tokens, top5))


def test_stop_tokens_end_a_row_and_are_included(gqa):
  cfg, _, params = gqa
  free = generate.generate(cfg, params, PROMPTS, 10)
  stop = int(free.tokens[0][3])
  out = generate.generate(cfg, params, PROMPTS, 10, stop_tokens=[stop])
  for tokens, full in zip(out.tokens, free.tokens):
    hits = np.flatnonzero(full == stop)
    n = hits[0] + 1 if len(hits) else 10
    assert tokens.tolist() == full[:n].tolist()
  assert out.stopped[0] and len(out.tokens[0]) <= 4


@pytest.mark.parametrize("kind", ["linear", pytest.param("performer", marks=pytest.mark.slow)])
def test_recompute_mode_serves_efficient_kinds(kind):
  cfg, model, params = perturbed_model("rope", model__attention__kind=kind,
                              model__attention__num_features=16, model__attention__scan_chunk=8)
  with pytest.raises(ConfigError, match=rf"model\.attention\.kind='{kind}' has no KV cache"):
    generate.generate(cfg, params, "ab", 4)
  out = generate.generate(cfg, params, "abc", 6, use_cache=False)
  tokens = out.tokens[0]
  assert tokens.tolist() == _next_token_logits(model, params, "abc", tokens).argmax(-1).tolist()


def test_length_limits_and_empty_prompts_are_clear_errors(gqa):
  cfg, _, params = gqa
  with pytest.raises(ConfigError, match="the prompt is empty"):
    generate.generate(cfg, params, "", 4)
  with pytest.raises(ConfigError, match="--prompt #1: the prompt is empty"):
    generate.generate(cfg, params, ["a", ""], 4)
  with pytest.raises(ConfigError, match="--max_new_tokens=0 must be an integer >= 1"):
    generate.generate(cfg, params, "ab", 0)
  with pytest.raises(ConfigError, match=r"--stop: tokens \[256\]"):
    generate.generate(cfg, params, "ab", 4, stop_tokens=[256])
  lcfg, _, lparams = perturbed_model("learned")   # a learned table of 32 positions
  with pytest.raises(ConfigError, match=r"--prompt of 40 tokens exceeds model\.position\.max_len=32"):
    generate.generate(lcfg, lparams, "x" * 40, 1)
  with pytest.raises(ConfigError, match=r"needs 39 positions; model\.position\.max_len=32 holds "
                                        r"32: use --max_new_tokens <= 13"):
    generate.generate(lcfg, lparams, "x" * 20, 20)
  fits = generate.generate(lcfg, lparams, "x" * 20, 13).tokens[0]   # exactly fits
  assert len(fits) == 13
  assert generate.generate(lcfg, lparams, "x" * 20, 13, use_cache=False).tokens[0].tolist() == \
      fits.tolist()


def test_parse_stop():
  assert generate.parse_stop(["\\n", "."]) == (10, 46)
  with pytest.raises(ConfigError, match="--stop='ab' must be one token"):
    generate.parse_stop(["ab"])


# ----------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A training workdir in the trainer's own layout (config.json + an orbax checkpoint of
  the initial state), written without compiling a training step."""
  workdir = tmp_path_factory.mktemp("gen") / "rope"
  workdir.mkdir()
  cfg = config_lib.resolve(tiny_config("rope"))
  (workdir / "config.json").write_text(cfg.to_json())
  model = TransformerLM(cfg.model)
  checkpointer = workdir_lib.Checkpointer(workdir / "checkpoints", 1)
  checkpointer.save(1, train.init_state(model, train.make_optimizer(cfg.train), cfg))
  checkpointer.close()
  return workdir


def _cli(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "attnlab.generate", *args], cwd=REPO, env=env,
                        capture_output=True, text=True)


@pytest.mark.slow
def test_cli_prints_the_greedy_continuation(workdir):
  from attnlab import data
  cfg, params, _ = workdir_lib.restore_params(workdir)
  expected = generate.generate(cfg, params, "Thou art", 12)
  result = _cli(f"--workdir={workdir}", "--prompt=Thou art", "--max_new_tokens=12",
                "--temperature=0", "--streaming.window=0")
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout == data.ByteTokenizer.decode(expected.tokens[0]) + "\n"
  assert "12 tokens in" in result.stderr
  bad = _cli(f"--workdir={workdir}", "--prompt=a", "--top_p=2")
  assert bad.returncode != 0 and "error: --top_p=2.0 must be in (0, 1]" in bad.stderr


def test_stream_logits_is_the_cache_read_one_token_at_a_time():
  """generation.stream_logits (the decode loop, teacher forced: the streaming study's path)
  equals the prefill + scan of single-token steps in tests/conformance.py, and, with a cache
  that never evicts, the full forward pass."""
  from conformance import cached_logits, full_logits
  cfg, model, params = perturbed_model("alibi")
  tokens = np.random.default_rng(5).integers(0, 256, (2, 20)).astype(np.int32)
  layout = kv_cache.streaming_layout(2, 5)
  got = np.asarray(generate.stream_logits(cfg.model, params, tokens, layout))
  want, _ = cached_logits(model, params, tokens, layout, prefill=layout.capacity)
  # the same steps compiled as two programs (XLA may fuse them differently): equal to rounding;
  # a slot or position bug moves the logits by more than 1e-2 (test_kv_cache)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  full = np.asarray(generate.stream_logits(cfg.model, params, tokens, kv_cache.CacheLayout(20)))
  np.testing.assert_allclose(full, full_logits(model, params, tokens), rtol=2e-5, atol=2e-5)
