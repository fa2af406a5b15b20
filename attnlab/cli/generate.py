"""``python -m attnlab.generate --workdir=runs/rope --prompt="def " --max_new_tokens=200 \\
      --temperature=0.8 [--top_k=40 --top_p=0.95 --seed=0 --stop='\\n'] \\
      [--streaming.sinks=4 --streaming.window=60] [--nocache]``

Prints the generated text (the continuation of each prompt) on stdout and a line of
statistics on stderr; see ``attnlab.inference.generation`` and docs/inference.md.
"""

from __future__ import annotations

import sys

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from attnlab import data, workdir
from attnlab.attention import PATTERNS
from attnlab.cli import common
from attnlab.inference import generation
from attnlab.inference.sampling import Sampling


def define_flags():
  flags.DEFINE_string("workdir", None, "Training workdir (config.json + checkpoints).")
  flags.DEFINE_multi_string("prompt", None, "Prompt text; repeat for a batch of prompts.")
  flags.DEFINE_integer("max_new_tokens", 200, "Tokens to generate per prompt (>= 1).")
  flags.DEFINE_float("temperature", 0.0, "0 = greedy; otherwise softmax temperature.")
  flags.DEFINE_integer("top_k", 0, "Keep the k most likely tokens (0 = off).")
  flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass in (0, 1] (1 = off).")
  flags.DEFINE_integer("seed", 0, "Sampling seed.")
  flags.DEFINE_multi_string("stop", None, "Stop token: one token (byte), escapes allowed ('\\n').")
  flags.DEFINE_bool("cache", True, "Use the KV cache (--nocache recomputes the prefix).")
  config_flags.DEFINE_config_dict(
      "streaming", ml_collections.ConfigDict({"sinks": 0, "window": 0}),
      "StreamingLLM cache: --streaming.window=W (latest tokens, current included) and "
      "--streaming.sinks=S (first tokens kept); window 0 = off (the model's own cache).")


def check_text(flag: str, values) -> None:
  """Every value of a text flag is valid UTF-8 (the shell passes bytes; Python keeps bytes
  that are not UTF-8 as surrogates, which no tokenizer can encode)."""
  for value in values or ():
    try:
      value.encode("utf-8")
    except UnicodeEncodeError:
      raw = value.encode("utf-8", "surrogateescape")
      raise common.ConfigError(f"{flag}={raw!r} is not valid UTF-8; give UTF-8 text (for "
                               f"--stop one character, or an escape such as '\\n')") from None


def main(argv):
  del argv
  FLAGS = flags.FLAGS
  if not FLAGS.workdir or FLAGS.prompt is None:
    raise app.UsageError("--workdir and --prompt are required")
  check_text("--prompt", FLAGS.prompt)
  check_text("--stop", FLAGS.stop)
  streaming = generation.streaming_from_flags(FLAGS.streaming)
  sampling = Sampling(FLAGS.temperature, FLAGS.top_k, FLAGS.top_p)
  cfg, params, step = workdir.restore_params(FLAGS.workdir)
  tokenizer = data.get_tokenizer(cfg.data)
  stop = generation.parse_stop(FLAGS.stop, tokenizer)
  result = generation.generate(cfg, params, FLAGS.prompt, FLAGS.max_new_tokens, sampling,
                               seed=FLAGS.seed, stop_tokens=stop, streaming=streaming,
                               use_cache=FLAGS.cache)
  for i, tokens in enumerate(result.tokens):
    if len(result.tokens) > 1:
      print(f"--- prompt {i} ---")
    print(tokenizer.decode(tokens))
  longest = max(len(tokenizer.encode(p)) for p in FLAGS.prompt) + FLAGS.max_new_tokens
  trained = cfg.data.seq_len
  note = ""
  unbounded = PATTERNS.get(cfg.model.attention.pattern).lookback(cfg.model.attention) is None
  if streaming is None and unbounded and longest > trained:
    note = (f"; note: {longest} positions exceed the training length {trained} "
            f"(quality then depends on the position scheme's extrapolation)")
  generated = sum(len(t) for t in result.tokens)
  print(f"[{generated} tokens in {result.seconds:.2f} s including compilation, step {step}, "
        f"cache={'streaming' if streaming else ('model' if FLAGS.cache else 'none')}{note}]",
        file=sys.stderr)


if __name__ == "__main__":
  common.run(main, define_flags)
