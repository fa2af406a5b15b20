"""Task generators against independent plain-Python solutions at random lengths."""

import numpy as np
import pytest

from attnlab import ConfigError
from attnlab.data import tasks


def solve_binary_addition(src):
  i = src.index("+")
  x = int("".join(src[:i])[::-1], 2)          # little-endian bits
  y = int("".join(src[i + 1:])[::-1], 2)
  return list(bin(x + y)[2:][::-1])            # little-endian, no trailing zeros ("0" for 0)


def solve_missing_duplicate(src):
  s = [c for c in src if c != "#"]
  half = len(s) // 2
  i = s.index("_")
  return [s[i + half] if i < half else s[i - half]]


def solve_associative_recall(src):
  s = [c for c in src if c != "#"]
  memory = {}
  for k, v in zip(s[:-1:2], s[1:-1:2]):
    memory[k] = v
  return [memory[s[-1]]]


def solve_even_pairs(src):
  s = "".join(src)
  pairs = sum(s[i:i + 2] in ("ab", "ba") for i in range(len(s) - 1))
  return ["1" if pairs % 2 == 0 else "0"]


def solve_cycle(src):
  position = 0
  for move in src:
    position = (position + {"l": -1, "s": 0, "r": 1}[move]) % 5
  return [str(position)]


SOLUTIONS = {
    "parity": lambda s: [str(sum(map(int, s)) % 2)],
    "even_pairs": solve_even_pairs,
    "cycle_navigation": solve_cycle,
    "modular_arithmetic": lambda s: [str(eval("".join(s)) % 5)],       # Python's own parser
    "modular_arithmetic_brackets": lambda s: [str(eval("".join(s)) % 5)],
    "reverse": lambda s: s[::-1],
    "copy": lambda s: list(s),
    "duplicate": lambda s: s + s,
    "sort": sorted,
    "binary_addition": solve_binary_addition,
    "missing_duplicate": solve_missing_duplicate,
    "associative_recall": solve_associative_recall,
}

ALPHABETS = {"parity": "01", "even_pairs": "ab", "cycle_navigation": "lsr", "reverse": "01",
             "duplicate": "01", "copy": "01234567", "sort": "01234", "binary_addition": "01+",
             "missing_duplicate": "01_#", "modular_arithmetic": "01234+-*",
             "modular_arithmetic_brackets": "01234+-*()"}


def test_every_registered_task_has_an_oracle():
  assert sorted(SOLUTIONS) == tasks.TASKS.names()


@pytest.mark.parametrize("task", sorted(SOLUTIONS))
def test_targets_match_plain_python_solution_at_random_lengths(task):
  rng = np.random.default_rng(sum(map(ord, task)))
  spec = tasks.TASKS.get(task)
  lengths = sorted({spec.min_length, spec.min_length + 1, *rng.integers(spec.min_length, 300, 25)})
  for n in lengths:
    for index in range(4):
      src, tgt = tasks.example(task, int(n), seed=int(rng.integers(1000)), index=index)
      assert len(src) == n
      assert tgt == SOLUTIONS[task](src), (task, n, src, tgt)
      assert len(tgt) <= spec.max_output(int(n))
      if task in ALPHABETS:
        assert set(src) <= set(ALPHABETS[task])


def test_examples_are_deterministic_per_seed_and_length():
  for task in tasks.TASKS.names():
    a = tasks.example(task, 17, seed=3, index=2)
    assert tasks.example(task, 17, seed=3, index=2) == a
    others = [tasks.example(task, 17, seed=s, index=2)[0] for s in range(4, 12)]
    assert any(o != a[0] for o in others)                  # the seed matters
  train = tasks.train_batch("sort", 8, 12, seed=0, step=5)
  again = tasks.train_batch("sort", 8, 12, seed=0, step=5)
  assert all(np.array_equal(train[k], again[k]) for k in train)


def test_modular_arithmetic_examples_of_deletang_et_al():
  assert tasks.evaluate_mod(list("1+2*3"), 5) == 2
  assert tasks.evaluate_mod(list("1-1-1"), 5) == 4
  assert tasks.evaluate_mod(list("0*1+4*3-2"), 5) == 0
  assert tasks.evaluate_mod(list("-(2-4)*3"), 5) == 1


def test_batches_put_bos_and_eos_around_the_answer_and_pad_with_zero():
  batch = tasks.train_batch("duplicate", 16, 9, seed=1, step=0, min_length=2)
  assert batch["src"].shape == (16, 9) and batch["tgt_in"].shape == (16, 19)
  for src, tgt_in, tgt_out in zip(batch["src"], batch["tgt_in"], batch["tgt_out"]):
    x = tasks.decode(src)
    assert 2 <= len(x) <= 9 and np.all(src[len(x):] == tasks.PAD)
    y = x + x
    assert tgt_in[0] == tasks.BOS and tasks.decode(tgt_in[1:]) == y
    assert tasks.decode(tgt_out[:len(y)]) == y and tgt_out[len(y)] == tasks.EOS
    assert np.all(tgt_out[len(y) + 1:] == tasks.PAD)


def test_lengths_below_a_tasks_minimum_are_refused_by_name():
  with pytest.raises(ConfigError, match=r"task 'binary_addition': length=2 must be an integer >= 3"):
    tasks.example("binary_addition", 2)
  with pytest.raises(ConfigError, match=r"data.task='revers' is not valid; valid names: .*reverse"):
    tasks.example("revers", 5)
