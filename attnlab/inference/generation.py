"""Text generation with a preallocated KV cache: prefill, then a jit-compiled decode loop
(the library behind ``python -m attnlab.generate``; behaviour in full in docs/inference.md):

- Prompts: strings, encoded by the run's tokenizer (``data.tokenizer``: bytes, or a
  ``tokenizer.json`` of an imported model), one or more (``--prompt`` repeated: a batch). Every row advances in lockstep: the common prefix is prefilled in one pass,
  the rest of a longer prompt is fed one token per step. An empty prompt is an error
  (the models have no beginning-of-text token to start from).
- Cache: the model's own (full, or rolling for ``sliding_window`` / ``streaming``
  patterns), which reproduces the full forward pass exactly; or, with
  ``--streaming.window=W`` (and ``--streaming.sinks=S``), StreamingLLM: S first tokens
  + W latest, positions by place in the cache, for streams of any length.
- Length: a learned position table limits prompt + new tokens (a clear error);
  otherwise the cache grows with prompt + new tokens (rolling caches do not), and text
  beyond the training length relies on the position scheme's extrapolation.
- Sampling: ``--temperature=0`` is greedy and deterministic; otherwise temperature,
  then top-k, then top-p, with keys from (seed, position): the same seed gives the
  same text. A row stops after a stop token (which is included in its text).
- Programs: ``decode_program`` (prefill and decode loop, each compiled on its own) and
  ``recompute_program`` are the programs ``generate`` runs, so ``scripts/bench_decode.py``
  times the same code.
"""

from __future__ import annotations

import codecs
import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from attnlab import data, positional
from attnlab.attention import KINDS
from attnlab.inference.sampling import Sampling, sample
from attnlab.models import TransformerLM, kv_cache, model_settings, schedule
from attnlab.registry import ConfigError
from attnlab.runtime import compiled_cache


@dataclasses.dataclass(frozen=True)
class Streaming:
  """StreamingLLM cache: ``sinks`` first tokens + ``window`` latest (the current one included)."""
  sinks: int = 4
  window: int = 1020


@dataclasses.dataclass
class Generation:
  """tokens: the generated tokens of each prompt (int32 arrays, stop token included);
  stopped: whether each row ended on a stop token; seconds: wall time of the call."""
  tokens: list
  stopped: list
  seconds: float


def encode_prompts(prompts, tokenizer=data.ByteTokenizer) -> list[np.ndarray]:
  """Strings (encoded by ``tokenizer``) or int arrays -> int32 arrays; an empty prompt is an
  error."""
  if isinstance(prompts, str) or (isinstance(prompts, np.ndarray) and prompts.ndim == 1):
    prompts = [prompts]
  if not len(prompts):
    raise ConfigError("--prompt: no prompt given; pass at least one")
  out = []
  for i, p in enumerate(prompts):
    ids = tokenizer.encode(p) if isinstance(p, str) else np.asarray(p)
    if ids.size == 0:
      raise ConfigError(f"--prompt #{i}: the prompt is empty; the model has no "
                        f"beginning-of-text token, so give it at least one byte to continue")
    out.append(ids.astype(np.int32).reshape(-1))
  return out


def check_request(model_cfg, lengths, max_new_tokens, stop_tokens, streaming, use_cache) -> None:
  """Every problem with a generation request as a ``ConfigError``, before compiling."""
  arch = model_settings(model_cfg).arch
  if arch != "transformer":
    raise ConfigError(f"model.arch={arch!r}: generation runs Transformer language models "
                      f"(prefill, then decoding with a KV cache); this workdir holds another "
                      f"model")
  if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
    raise ConfigError(f"--max_new_tokens={max_new_tokens!r} must be an integer >= 1")
  vocab = int(model_cfg.vocab_size)
  bad = [t for t in stop_tokens if not (isinstance(t, (int, np.integer)) and 0 <= t < vocab)]
  if bad:
    raise ConfigError(f"--stop: tokens {bad} are not in the vocabulary [0, {vocab})")
  limit = positional.get_scheme(model_cfg.position).max_length()
  if limit is not None and streaming is None:
    longest = max(lengths)
    if longest > limit:
      raise ConfigError(f"--prompt of {longest} tokens exceeds model.position.max_len={limit}, "
                        f"the size of the learned position table")
    if longest + max_new_tokens - 1 > limit:
      raise ConfigError(
          f"a prompt of {longest} tokens plus --max_new_tokens={max_new_tokens} needs "
          f"{longest + max_new_tokens - 1} positions; model.position.max_len={limit} holds "
          f"{limit}: use --max_new_tokens <= {limit - longest + 1}")
  if use_cache:
    layout = None if streaming is None else kv_cache.streaming_layout(streaming.sinks,
                                                                     streaming.window)
    kv_cache.check_supported(model_cfg, layout)
  else:
    if streaming is not None:
      raise ConfigError("--streaming needs the KV cache (drop --nocache)")
    refusal = KINDS.get(model_cfg.attention.kind).generation_refusal
    if refusal:
      raise ConfigError(f"model.attention.kind={model_cfg.attention.kind!r} {refusal}")


def cache_layout(model_cfg, total_length: int, streaming: Streaming | None):
  """The cache ``generate`` decodes with: each layer's own (``kv_cache.layouts_for``: a
  local layer keeps its window), or StreamingLLM's for every layer."""
  return (kv_cache.layouts_for(model_cfg, total_length) if streaming is None
          else kv_cache.streaming_layout(streaming.sinks, streaming.window))


def _capacity(layout) -> int:
  """The smallest capacity of a layout or of per-layer layouts."""
  return min(x.capacity for x in (layout if isinstance(layout, tuple) else (layout,)))


def _streaming(layout) -> bool:
  return not isinstance(layout, tuple) and layout.streaming


def _pad(prompts: list[np.ndarray], width: int) -> np.ndarray:
  buf = np.zeros((len(prompts), width), np.int32)
  for i, p in enumerate(prompts):
    buf[i, :len(p)] = p
  return buf


def decode_loop(model, params, cache, prompts, lengths, key, *, start: int, total: int,
                max_new: int, sampling: Sampling, stop_tokens, logits, record: bool = False):
  """The jit-compiled loop after prefill. Position p = start, start+1, ...: a row takes its
  prompt token while it has one, else a sampled one, then the model advances one token.

  prompts: int32 [B, total] (prompt tokens, zero padded); lengths: int32 [B];
  logits: [B, vocab] after the prefill. Returns (tokens [B, total], generated counts [B],
  stopped [B], finite: whether every logit a token was chosen from was finite) and, with
  ``record=True``, the logits at every position after the prefill, float32
  [B, total, vocab] (positions < start are zero). With ``max_new=0`` it only reads the
  prompts through the cache (teacher forcing): the streaming study's loop.
  """
  stop = jnp.asarray(list(stop_tokens) or [-1], jnp.int32)
  reencode = None if kv_cache_streaming(cache) else reencode_position(model.cfg)

  def cond(state):
    i, _, _, _, count, done, _, _ = state
    prompt_left = start + i < jnp.max(lengths)
    return (i < total - start) & (jnp.any(~done & (count < max_new)) | prompt_left)

  def body(state):
    i, cache, last, buf, count, done, finite, recorded = state
    p = start + i
    finite = finite & jnp.all(jnp.isfinite(last))
    forced = p < lengths
    sampled = sample(jax.random.fold_in(key, p), last, sampling)
    generating = ~forced & ~done & (count < max_new)
    tok = jnp.where(forced, buf[:, p], jnp.where(generating, sampled, 0))
    buf = buf.at[:, p].set(tok)
    done = done | (generating & jnp.isin(tok, stop))
    count = count + generating
    if reencode is not None and start <= reencode < total:
      step_logits, cache = jax.lax.cond(
          p == reencode, lambda c: _reencoded(model, params, buf, c, reencode),
          lambda c: model.apply({"params": params}, tok[:, None], cache=c), cache)
    else:
      step_logits, cache = model.apply({"params": params}, tok[:, None], cache=cache)
    if record:
      recorded = recorded.at[:, p].set(step_logits[:, 0].astype(jnp.float32))
    return i + 1, cache, step_logits[:, 0], buf, count, done, finite, recorded

  batch = prompts.shape[0]
  recorded = jnp.zeros((batch, total, logits.shape[-1]) if record else (0,), jnp.float32)
  state = (jnp.int32(0), cache, logits, prompts, jnp.zeros(batch, jnp.int32),
           jnp.zeros(batch, bool), jnp.array(True), recorded)
  _, _, _, buf, count, done, finite, recorded = jax.lax.while_loop(cond, body, state)
  if record:
    return buf, count, done, finite, recorded
  return buf, count, done, finite


def reencode_position(model_cfg) -> int | None:
  """The text position at which a cached generation re-reads the whole text into a fresh
  cache (``PositionScheme.reencode_position`` of any layer's scheme: LongRoPE's switch to
  its long factors, as transformers' ``generate`` does for Phi-3), or None."""
  found = {positional.get_scheme(block).reencode_position()
           for block in schedule.distinct_positions(model_cfg)} - {None}
  return min(found) if found else None


def kv_cache_streaming(cache) -> bool:
  return any(layout.streaming for layout in cache.layouts)


def _reencoded(model, params, buf, cache, position: int):
  """(logits [B, 1, vocab] at ``position``, a fresh cache holding positions 0..position):
  the text so far read again in one pass, so every key is encoded as a call that holds
  ``position`` encodes it."""
  fresh = kv_cache.init_cache(model.cfg, buf.shape[0], cache.layouts)
  logits, fresh = model.apply({"params": params}, buf[:, :position + 1], cache=fresh,
                              prefill=True)
  return logits[:, -1:], fresh


def _prefill(model, params, tokens, layout):
  """An empty cache of ``layout`` after reading ``tokens`` (int32 [B, n]) in one pass:
  (cache, logits [B, n, vocab])."""
  cache = kv_cache.init_cache(model.cfg, tokens.shape[0], layout)
  logits, cache = model.apply({"params": params}, tokens, cache=cache, prefill=True)
  return cache, logits


def _halves(model_cfg, layout, start, total, max_new, sampling, stop_tokens):
  """``generate``'s cached program as two functions (not compiled): prefill(params, prompts)
  -> (cache, logits [B, vocab] of position start - 1), and decode(params, cache, logits,
  prompts, lengths, key) -> ``decode_loop``'s (tokens, counts, stopped, finite)."""
  model = TransformerLM(model_cfg)

  def prefill(params, prompts):
    cache, logits = _prefill(model, params, prompts[:, :start], layout)
    return cache, logits[:, -1]

  def decode(params, cache, logits, prompts, lengths, key):
    return decode_loop(model, params, cache, prompts, lengths, key, start=start, total=total,
                       max_new=max_new, sampling=sampling, stop_tokens=stop_tokens,
                       logits=logits)
  return prefill, decode


@compiled_cache(maxsize=16)
def _compiled(model_cfg, layout, batch, start, total, max_new, sampling, stop_tokens):
  del batch                               # a cache key: one program per batch size
  prefill, decode = _halves(model_cfg, layout, start, total, max_new, sampling, stop_tokens)

  @jax.jit
  def run(params, prompts, lengths, key):
    return decode(params, *prefill(params, prompts), prompts, lengths, key)
  return run


@compiled_cache(maxsize=16)
def decode_program(model_cfg, layout, batch: int, start: int, total: int, max_new: int,
                   sampling: Sampling = Sampling(), stop_tokens: tuple = ()):
  """``generate``'s cached program in its two halves, each jit-compiled on its own, so that
  the decode loop can be timed without the prefill (``scripts/bench_decode.py``):

  - ``prefill(params, prompts) -> (cache, logits)``: prompts int32 [batch, total] (zero
    padded); reads ``prompts[:, :start]`` into an empty cache of ``layout`` (e.g.
    ``cache_layout(model_cfg, total, None)``, the one ``generate`` uses); logits
    [batch, vocab] of position ``start - 1``;
  - ``decode(params, cache, logits, prompts, lengths, key)``: ``decode_loop`` from
    position ``start``: (tokens int32 [batch, total], generated counts, stopped, finite).

  ``generate`` runs ``decode(params, *prefill(params, prompts), prompts, lengths, key)`` as
  one program: the same functions, so the tokens are the same.
  """
  del batch                               # a cache key, as in ``_compiled``
  prefill, decode = _halves(model_cfg, layout, start, total, max_new, sampling,
                            tuple(stop_tokens))
  return jax.jit(prefill), jax.jit(decode)


@compiled_cache(maxsize=16)
def _stream(model_cfg, layout, batch: int, total: int):
  model = TransformerLM(model_cfg)
  start = min(_capacity(layout), total)   # a StreamingLLM prefill must not evict

  @jax.jit
  def run(params, tokens):
    cache, logits = _prefill(model, params, tokens[:, :start], layout)
    *_, recorded = decode_loop(model, params, cache, tokens, jnp.full((batch,), total, jnp.int32),
                               jax.random.PRNGKey(0), start=start, total=total, max_new=0,
                               sampling=Sampling(), stop_tokens=(), logits=logits[:, -1],
                               record=True)
    return jnp.concatenate([logits.astype(jnp.float32), recorded[:, start:]], axis=1)
  return run


def stream_logits(model_cfg, params, tokens, layout) -> jax.Array:
  """Logits at every position of ``tokens`` (int32 [B, N]) read through a KV cache of
  ``layout`` (e.g. StreamingLLM's): prefill up to the cache's capacity, then the decode
  loop of ``generate`` one token at a time. float32 [B, N, vocab]."""
  tokens = jnp.asarray(tokens, jnp.int32)
  return _stream(model_cfg, layout, tokens.shape[0], tokens.shape[1])(params, tokens)


@compiled_cache(maxsize=16)
def recompute_program(model_cfg, batch: int, start: int, total: int, max_new: int,
                      sampling: Sampling = Sampling(), stop_tokens: tuple = ()):
  """``generate(use_cache=False)``'s program, jit-compiled: run(params, prompts, lengths,
  key) -> (tokens int32 [batch, total], generated counts, stopped, finite), as
  ``decode_program``'s halves give. The same loop without a cache: every step runs the
  model over the whole buffer but its last slot, [B, total - 1] (fixed shape; causal, so
  later padding does not matter; the last token is only ever predicted), and reads the
  logits of the last real position."""
  model = TransformerLM(model_cfg)

  @jax.jit
  def run(params, prompts, lengths, key):
    stop = jnp.asarray(list(stop_tokens) or [-1], jnp.int32)

    def body(p, state):
      buf, count, done, finite = state
      # positions past p - 1 (never read: causal) repeat p - 1, so a call's longest position
      # is the text's, as when the text so far is run alone (LongRoPE's switch reads it)
      positions = jnp.broadcast_to(jnp.minimum(jnp.arange(total - 1), p - 1), (batch, total - 1))
      logits = model.apply({"params": params}, buf[:, :total - 1], positions)
      last = jax.lax.dynamic_index_in_dim(logits, p - 1, axis=1, keepdims=False)
      finite = finite & jnp.all(jnp.isfinite(last))
      forced = p < lengths
      generating = ~forced & ~done & (count < max_new)
      sampled = sample(jax.random.fold_in(key, p), last, sampling)
      tok = jnp.where(forced, buf[:, p], jnp.where(generating, sampled, 0))
      done = done | (generating & jnp.isin(tok, stop))
      return buf.at[:, p].set(tok), count + generating, done, finite

    state = (prompts, jnp.zeros(batch, jnp.int32), jnp.zeros(batch, bool), jnp.array(True))
    return jax.lax.fori_loop(start, total, body, state)
  return run


def generate(cfg, params, prompts, max_new_tokens: int, sampling: Sampling = Sampling(), *,
             seed: int = 0, stop_tokens=(), streaming: Streaming | None = None,
             use_cache: bool = True) -> Generation:
  """Continue each prompt by up to ``max_new_tokens`` tokens.

  cfg: a resolved config (``cfg.model`` is used); prompts: a string, or a list of strings
  or int arrays (a batch). Raises ``ConfigError`` for a request it cannot serve.
  """
  model_cfg = cfg.model if "model" in cfg else cfg
  prompts = encode_prompts(prompts, data.get_tokenizer(cfg.data if "data" in cfg else None))
  lengths = [len(p) for p in prompts]
  stop_tokens = tuple(int(t) for t in stop_tokens)
  sampling.validate(int(model_cfg.vocab_size))
  check_request(model_cfg, lengths, max_new_tokens, stop_tokens, streaming, use_cache)
  total = max(lengths) + max_new_tokens
  layout = cache_layout(model_cfg, total, streaming)
  start = min(lengths)
  if _streaming(layout):
    start = min(start, layout.capacity)    # no eviction inside the prefill
  buf = jnp.asarray(_pad(prompts, total))
  lens = jnp.asarray(lengths, jnp.int32)
  key = jax.random.PRNGKey(seed)
  t0 = time.perf_counter()
  if use_cache:
    run = _compiled(model_cfg, layout, len(prompts), start, total, max_new_tokens, sampling,
                    stop_tokens)
  else:
    run = recompute_program(model_cfg, len(prompts), start, total, max_new_tokens, sampling,
                            stop_tokens)
  out, count, done, finite = jax.device_get(run(params, buf, lens, key))
  if not finite:
    raise ConfigError("the model's logits are not finite on this input (its parameters "
                      "overflow); nothing was generated")
  seconds = time.perf_counter() - t0
  tokens = [out[i, n:n + c] for i, (n, c) in enumerate(zip(lengths, count))]
  return Generation(tokens, [bool(d) for d in done], seconds)


def parse_stop(values, tokenizer=data.ByteTokenizer) -> tuple[int, ...]:
  """``--stop`` values (Python escapes allowed, e.g. '\\n') -> tokens; each value must be
  one token (one byte for byte-level models)."""
  out = []
  for value in values or ():
    text = codecs.decode(value, "unicode_escape")
    ids = tokenizer.encode(text)
    if len(ids) != 1:
      raise ConfigError(f"--stop={value!r} must be one token (one ASCII character, or an escape "
                        f"such as '\\n'); give --stop several times for several stop tokens")
    out.append(int(ids[0]))
  return tuple(out)


def streaming_from_flags(cfg) -> Streaming | None:
  """``--streaming.sinks/window`` -> a ``Streaming`` (None when both are 0), validated."""
  if cfg.window == 0 and cfg.sinks == 0:
    return None
  kv_cache.streaming_layout(cfg.sinks, cfg.window)   # validates both fields
  return Streaming(int(cfg.sinks), int(cfg.window))
