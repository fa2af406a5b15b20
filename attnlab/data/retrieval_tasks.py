"""Synthetic retrieval tasks for length extrapolation: train on short contexts, test long.

Every example is ``length + 1`` bytes: inputs are the first ``length``, targets
the last ``length``, and ``weights`` mark the answer bytes (the only ones scored).

- ``passkey`` (Mohtashami & Jaggi 2023): a 5-digit key hidden at a chosen depth
  inside repetitive filler text, asked for at the end.
- ``associative_recall``: ``key=value`` pairs (3 lowercase letters, 3 digits),
  then one of the keys is asked for.

Examples are pure functions of their ``numpy`` generator, and batches of
(seed, step, split), like the text batches. ``RETRIEVAL_TASKS`` is the registry of the
task functions, under the config field ``data.corpus`` (which also names text corpora);
the algorithmic seq2seq tasks are ``attnlab.data.tasks.TASKS``, a different registry.
"""

from __future__ import annotations

import numpy as np

from attnlab.registry import ConfigError, Registry

FILLER = (b"The grass is green. The sky is blue. The sun is yellow. "
          b"Here we go. There and back again. ")
_SPLIT_TAG = {"train": 0, "valid": 1}

# data.corpus names a text corpus (attnlab.data.CORPORA) or one of these tasks.
RETRIEVAL_TASKS: Registry = Registry("data.corpus")


def _example(prefix: bytes, answer: bytes, length: int):
  seq = np.frombuffer(prefix + answer, np.uint8).astype(np.int32)
  assert len(seq) == length + 1, (len(seq), length)
  weights = np.zeros(length, np.float32)
  weights[length - len(answer):] = 1.0
  return seq[:-1], seq[1:], weights


@RETRIEVAL_TASKS.register("passkey")
def passkey(rng: np.random.Generator, length: int, depth: float | None = None):
  """One passkey example. ``depth`` in [0, 1] places the needle (None: uniform).

  Returns int32 inputs, targets ``[length]`` and float32 weights ``[length]``.
  """
  key = b"%05d" % rng.integers(0, 100_000)
  needle = b" The pass key is " + key + b". Remember it. "
  question = b" What is the pass key? The pass key is "
  fill = length + 1 - len(needle) - len(question) - len(key)
  if fill < 0:
    raise ConfigError(f"passkey: length={length} is too short; it needs at least "
                      f"{length - fill} tokens")
  depth = rng.random() if depth is None else depth
  offset = int(rng.integers(0, len(FILLER)))
  filler = (FILLER * (fill // len(FILLER) + 2))[offset:offset + fill]
  at = int(round(depth * fill))
  return _example(filler[:at] + needle + filler[at:] + question, key, length)


@RETRIEVAL_TASKS.register("associative_recall")
def associative_recall(rng: np.random.Generator, length: int, depth: float | None = None):
  """``k1=v1 k2=v2 ... kq?`` -> ``v``; ``depth`` in [0, 1] picks which pair is asked for."""
  letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", np.uint8)
  pair_len = len(b"abc=123 ")
  tail = len(b" abc?=") + 3
  n_pairs = (length + 1 - tail) // pair_len
  if n_pairs < 1:
    raise ConfigError(f"associative_recall: length={length} is too short; it needs at least "
                      f"{pair_len + tail - 1} tokens")
  keys = set()
  while len(keys) < n_pairs:
    keys.add(bytes(rng.choice(letters, 3)))
  keys = sorted(keys, key=lambda _: rng.random())
  values = [b"%03d" % v for v in rng.integers(0, 1000, n_pairs)]
  depth = rng.random() if depth is None else depth
  asked = min(n_pairs - 1, int(depth * n_pairs))
  pad = b" " * (length + 1 - tail - n_pairs * pair_len)
  body = pad + b"".join(k + b"=" + v + b" " for k, v in zip(keys, values))
  return _example(body + b" " + keys[asked] + b"?=", values[asked], length)


def task_batch(task: str, batch_size: int, length: int, seed: int, step: int,
               split: str = "train", depth: float | None = None):
  """A batch of ``task`` examples, a pure function of (seed, step, split, depth).

  Returns int32 ``inputs, targets [batch, length]`` and float32 ``weights [batch, length]``.
  """
  if task not in RETRIEVAL_TASKS:   # data.corpus also names text corpora: say which kind
    raise ConfigError(f"data.corpus={task!r} is not a retrieval task; valid: "
                      f"{', '.join(RETRIEVAL_TASKS.names())}")
  make = RETRIEVAL_TASKS.get(task)
  rng = np.random.default_rng([seed, step, _SPLIT_TAG[split], 7])
  examples = [make(rng, length, depth) for _ in range(batch_size)]
  return tuple(np.stack(parts) for parts in zip(*examples))
