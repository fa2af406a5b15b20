"""Algorithmic sequence-to-sequence tasks with exact answers, for length generalisation.

Following Delétang et al. (ICLR 2023, "Neural Networks and the Chomsky Hierarchy")
and Ruoss et al. (ACL 2023), plus copy and associative recall. Each task maps an
input of exactly ``length`` symbols to an output sequence; ``TASKS`` holds them
by name (the ``data.task`` config field):

| task | level | input (length n) | output |
|---|---|---|---|
| ``parity`` | regular | bits | ``1`` if the number of 1s is odd, else ``0`` |
| ``even_pairs`` | regular | string over {a, b} | ``1`` if #ab + #ba is even (first == last) |
| ``cycle_navigation`` | regular | moves ``l`` / ``s`` / ``r`` on a 5-cycle from 0 | final position |
| ``modular_arithmetic`` | regular | ``d op d op ...`` over 0..4, + - * (unary ``-`` first when n is even) | value mod 5 |
| ``reverse`` | DCF | bits | the bits reversed |
| ``modular_arithmetic_brackets`` | DCF | expression with ( ), unary and binary + - * | value mod 5 |
| ``copy`` | CS* | symbols from an alphabet | the same symbols |
| ``duplicate`` | CS | bits | the bits twice |
| ``sort`` | CS | symbols from 0..4 | sorted ascending (bucket sort) |
| ``binary_addition`` | CS | ``x+y``, little-endian bits | x + y, little-endian, no trailing zeros |
| ``missing_duplicate`` | CS | ``ww`` with one symbol replaced by ``_`` (``#`` pad if n odd) | that symbol |
| ``associative_recall`` | (recall) | ``k v k v ... k`` (``#`` pad if n even) | value of the last pair with the asked key |

(*copy is a finite-state transduction for a transducer that may delay its output; it
is here as the easiest memory task and for the bottleneck experiment.)

Every example is a pure function of ``(seed, length, index)``: ``example(task, length,
seed)`` always gives the same pair. Tokens are strings; ``encode`` maps them to ids
of one shared vocabulary ``VOCAB`` (``<pad>`` = 0, ``<bos>`` = 1, ``<eos>`` = 2).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from attnlab.registry import ConfigError, Field, Registry

PAD, BOS, EOS = 0, 1, 2
DIGITS = [str(i) for i in range(10)]
LETTERS = [chr(c) for c in range(ord("a"), ord("z") + 1)]
VOCAB: tuple[str, ...] = ("<pad>", "<bos>", "<eos>", *DIGITS, "+", "-", "*", "(", ")", "_", "#",
                          *LETTERS)
TOKEN_ID = {t: i for i, t in enumerate(VOCAB)}
MODULUS = 5
CYCLE = 5
SORT_SYMBOLS = 5


@dataclasses.dataclass(frozen=True)
class Task:
  """``generate(rng, n) -> (input tokens [n], output tokens)``; ``max_output(n)`` bounds the
  output length; ``min_length`` is the shortest input the task defines."""
  generate: Callable[[np.random.Generator, int], tuple[list[str], list[str]]]
  max_output: Callable[[int], int]
  level: str
  min_length: int = 1
  alphabet: int = 0          # > 0: symbols drawn from the first `alphabet` digits


TASKS: Registry[Task] = Registry("data.task")

# data.* of the task trainer: every default is here and only here.
TASK_DATA_FIELDS = (
    Field("task", "reverse", "a name in attnlab.data.tasks.TASKS", check=lambda v, c: None if (
        v in TASKS) else f"is not valid; valid: {', '.join(TASKS.names())}"),
    Field("min_length", 1, "training input lengths are uniform in [min_length, ...", minimum=1),
    Field("max_length", 20, "... max_length]", minimum=1),
)


def _symbols(rng: np.random.Generator, n: int, k: int) -> list[str]:
  return [DIGITS[i] for i in rng.integers(0, k, n)]


# ----------------------------------------------------------------------------- regular


def _parity(rng, n):
  bits = _symbols(rng, n, 2)
  return bits, [str(bits.count("1") % 2)]


def _even_pairs(rng, n):
  s = [LETTERS[i] for i in rng.integers(0, 2, n)]
  # #ab + #ba is even exactly when the string starts and ends with the same letter
  return s, ["1" if s[0] == s[-1] else "0"]


def _cycle_navigation(rng, n):
  moves = [("l", "s", "r")[i] for i in rng.integers(0, 3, n)]
  step = {"l": -1, "s": 0, "r": 1}
  return moves, [str(sum(step[m] for m in moves) % CYCLE)]


def _modular_arithmetic(rng, n):
  """Alternating numbers and operators (Delétang et al.); an even length starts with unary -."""
  body_len = n - (n % 2 == 0)
  tokens = []
  for i in range(body_len):
    tokens.append(DIGITS[rng.integers(0, MODULUS)] if i % 2 == 0 else "+-*"[rng.integers(0, 3)])
  if n % 2 == 0:
    tokens = ["-"] + tokens
  return tokens, [str(evaluate_mod(tokens, MODULUS))]


# ----------------------------------------------------------------------------- context-free


def _reverse(rng, n):
  bits = _symbols(rng, n, 2)
  return bits, bits[::-1]


def _random_expression(rng, n: int) -> list[str]:
  """A random expression of exactly ``n`` tokens: E -> d | -E | (E) | E op E."""
  if n == 1:
    return [DIGITS[rng.integers(0, MODULUS)]]
  rules = ["neg"] + (["paren", "binary"] if n >= 3 else [])
  rule = rules[rng.integers(0, len(rules))]
  if rule == "neg":
    return ["-"] + _random_expression(rng, n - 1)
  if rule == "paren":
    return ["("] + _random_expression(rng, n - 2) + [")"]
  left = int(rng.integers(1, n - 1))
  return (_random_expression(rng, left) + ["+-*"[rng.integers(0, 3)]]
          + _random_expression(rng, n - 1 - left))


def _modular_arithmetic_brackets(rng, n):
  tokens = _random_expression(rng, n)
  return tokens, [str(evaluate_mod(tokens, MODULUS))]


def evaluate_mod(tokens: list[str], modulus: int) -> int:
  """Value mod ``modulus`` of an expression with + - * (binary and unary -), brackets and
  single digits, with the usual precedence (unary -, then *, then + and -, left to right)."""
  pos = 0

  def expr():
    nonlocal pos
    value = term()
    while pos < len(tokens) and tokens[pos] in "+-":
      op = tokens[pos]
      pos += 1
      value = value + term() if op == "+" else value - term()
    return value % modulus

  def term():
    nonlocal pos
    value = factor()
    while pos < len(tokens) and tokens[pos] == "*":
      pos += 1
      value = value * factor() % modulus
    return value

  def factor():
    nonlocal pos
    tok = tokens[pos]
    pos += 1
    if tok == "-":
      return -factor() % modulus
    if tok == "(":
      value = expr()
      pos += 1  # ")"
      return value
    return int(tok)

  value = expr()
  if pos != len(tokens):
    raise ValueError(f"evaluate_mod: trailing tokens in {''.join(tokens)!r}")
  return value


# ----------------------------------------------------------------------------- context-sensitive


def _copy(alphabet):
  def generate(rng, n):
    s = _symbols(rng, n, alphabet)
    return s, list(s)
  return generate


def _duplicate(rng, n):
  bits = _symbols(rng, n, 2)
  return bits, bits + bits


def _sort(rng, n):
  s = _symbols(rng, n, SORT_SYMBOLS)
  counts = [s.count(d) for d in DIGITS[:SORT_SYMBOLS]]     # bucket sort
  return s, [d for d, c in zip(DIGITS, counts) for _ in range(c)]


def _to_bits_le(x: int, width: int) -> list[str]:
  return [str((x >> i) & 1) for i in range(width)]


def _binary_addition(rng, n):
  """``x+y`` with x of a random width in [1, n-2] and y of the rest (Delétang et al.)."""
  width_x = int(rng.integers(1, n - 1))
  width_y = n - 1 - width_x
  x = int.from_bytes(rng.bytes(width_x // 8 + 1), "little") % (1 << width_x)
  y = int.from_bytes(rng.bytes(width_y // 8 + 1), "little") % (1 << width_y)
  total = x + y
  out = _to_bits_le(total, max(total.bit_length(), 1))
  return _to_bits_le(x, width_x) + ["+"] + _to_bits_le(y, width_y), out


def _missing_duplicate(rng, n):
  half = _symbols(rng, n // 2, 2)
  s = half + half
  i = int(rng.integers(0, len(s)))
  answer = s[i]
  s[i] = "_"
  return s + ["#"] * (n % 2), [answer]


def _associative_recall(rng, n):
  """Pairs (letter key, digit value), keys may repeat; the asked key's latest value wins."""
  pairs = (n - 1) // 2
  keys = [LETTERS[i] for i in rng.integers(0, 8, pairs)]
  values = _symbols(rng, pairs, 10)
  query = keys[int(rng.integers(0, pairs))]
  answer = [v for k, v in zip(keys, values) if k == query][-1]
  body = [t for kv in zip(keys, values) for t in kv]
  return ["#"] * ((n - 1) % 2) + body + [query], [answer]


_one = lambda n: 1  # noqa: E731
TASKS.register("parity")(Task(_parity, _one, "regular"))
TASKS.register("even_pairs")(Task(_even_pairs, _one, "regular"))
TASKS.register("cycle_navigation")(Task(_cycle_navigation, _one, "regular"))
TASKS.register("modular_arithmetic")(Task(_modular_arithmetic, _one, "regular"))
TASKS.register("reverse")(Task(_reverse, lambda n: n, "dcf"))
TASKS.register("modular_arithmetic_brackets")(Task(_modular_arithmetic_brackets, _one, "dcf"))
TASKS.register("copy")(Task(_copy(8), lambda n: n, "cs", alphabet=8))
TASKS.register("duplicate")(Task(_duplicate, lambda n: 2 * n, "cs"))
TASKS.register("sort")(Task(_sort, lambda n: n, "cs"))
TASKS.register("binary_addition")(Task(_binary_addition, lambda n: n - 1, "cs", min_length=3))
TASKS.register("missing_duplicate")(Task(_missing_duplicate, _one, "cs", min_length=2))
TASKS.register("associative_recall")(Task(_associative_recall, _one, "recall", min_length=3))


# ----------------------------------------------------------------------------- sampling

_SPLIT_TAG = {"train": 0, "valid": 1, "test": 2}


def _check(task: str, length: int) -> Task:
  spec = TASKS.get(task)
  if not isinstance(length, (int, np.integer)) or length < spec.min_length:
    raise ConfigError(f"task {task!r}: length={length!r} must be an integer >= "
                      f"{spec.min_length}")
  return spec


def example(task: str, length: int, seed: int = 0, index: int = 0,
            split: str = "train") -> tuple[list[str], list[str]]:
  """The ``index``-th example of ``task`` at input length ``length``: a pure function of
  (seed, length, index, split). Returns (input tokens [length], output tokens)."""
  spec = _check(task, length)
  rng = np.random.default_rng([seed, _SPLIT_TAG[split], int(length), index])
  src, tgt = spec.generate(rng, int(length))
  assert len(src) == length and len(tgt) <= spec.max_output(length), (task, length)
  return src, tgt


def encode(tokens: list[str]) -> np.ndarray:
  """Token strings -> int32 ids in ``VOCAB``."""
  return np.asarray([TOKEN_ID[t] for t in tokens], np.int32)


def decode(ids) -> list[str]:
  """Ids -> token strings (padding dropped)."""
  return [VOCAB[int(i)] for i in ids if int(i) != PAD]


def target_width(task: str, max_length: int) -> int:
  """Decoder steps for inputs up to ``max_length``: the longest output plus ``<eos>``."""
  spec = TASKS.get(task)
  return max(spec.max_output(n) for n in range(spec.min_length, max_length + 1)) + 1


def pack(pairs: list[tuple[list[str], list[str]]], src_width: int, tgt_width: int) -> dict:
  """Pad a list of (input, output) token lists into arrays.

  Returns int32 ``src [B, src_width]``, ``tgt_in [B, tgt_width]`` (``<bos>`` + output),
  ``tgt_out [B, tgt_width]`` (output + ``<eos>``), all padded with ``<pad>`` = 0.
  """
  batch = len(pairs)
  src = np.zeros((batch, src_width), np.int32)
  tgt_in = np.zeros((batch, tgt_width), np.int32)
  tgt_out = np.zeros((batch, tgt_width), np.int32)
  for b, (x, y) in enumerate(pairs):
    if len(x) > src_width or len(y) + 1 > tgt_width:
      raise ValueError(f"pack: example of input {len(x)} / output {len(y)} exceeds widths "
                       f"{src_width} / {tgt_width}")
    ids = encode(y)
    src[b, :len(x)] = encode(x)
    tgt_in[b, 0] = BOS
    tgt_in[b, 1:len(y) + 1] = ids
    tgt_out[b, :len(y)] = ids
    tgt_out[b, len(y)] = EOS
  return {"src": src, "tgt_in": tgt_in, "tgt_out": tgt_out}


def train_batch(task: str, batch_size: int, max_length: int, seed: int, step: int,
                min_length: int = 1) -> dict:
  """A training batch: input lengths uniform in [max(min_length, task minimum), max_length],
  padded to ``max_length`` / ``target_width``. A pure function of (seed, step)."""
  spec = _check(task, max_length)
  low = max(min_length, spec.min_length)
  rng = np.random.default_rng([seed, step, 17])
  lengths = rng.integers(low, max_length + 1, batch_size)
  pairs = [example(task, int(n), seed, index=step * batch_size + b)
           for b, n in enumerate(lengths)]
  return pack(pairs, max_length, target_width(task, max_length))


def eval_batch(task: str, length: int, count: int, seed: int, split: str = "test") -> dict:
  """``count`` examples at exactly ``length``, from a split disjoint from training seeds."""
  spec = _check(task, length)
  pairs = [example(task, length, seed, index=i, split=split) for i in range(count)]
  return pack(pairs, length, max(spec.max_output(length), 1) + 1)


__all__ = ["BOS", "EOS", "PAD", "TASKS", "TOKEN_ID", "Task", "VOCAB", "decode", "encode",
           "eval_batch", "evaluate_mod", "example", "pack", "target_width", "train_batch"]
