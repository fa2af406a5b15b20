"""Tokenizer, corpora, batches and evaluation windows."""

import numpy as np
import pytest
from helpers import SHAKESPEARE

from attnlab import ConfigError, data


def test_byte_tokenizer_round_trips_unicode():
  text = "Tú y yo — 東京 🚀\nend"
  ids = data.ByteTokenizer.encode(text)
  assert ids.tolist() == list(text.encode("utf-8"))
  assert data.ByteTokenizer.decode(ids) == text


def test_builtin_corpus_is_multi_megabyte_real_text_and_deterministic():
  files = data.builtin_corpus_files()
  assert len(files) > 300
  raw = data.builtin_corpus_bytes()
  assert len(raw) > 4 * 2**20
  assert b"def " in raw and b"import " in raw
  assert data.builtin_corpus_bytes() == raw
  paths = [f.as_posix() for f in files]
  assert not any("/test/" in p or "site-packages" in p for p in paths)


def test_split_is_first_ninety_percent_for_training():
  tokens = np.arange(1000) % 256
  train, valid = data.split_tokens(tokens, 0.1)
  assert len(train) == 900 and len(valid) == 100
  assert np.array_equal(np.concatenate([train, valid]), tokens)


def test_batches_are_a_pure_function_of_seed_and_step():
  tokens = np.random.default_rng(0).integers(0, 256, 10_000).astype(np.uint8)
  a = data.get_batch(tokens, 4, 16, seed=3, step=7)
  b = data.get_batch(tokens, 4, 16, seed=3, step=7)
  c = data.get_batch(tokens, 4, 16, seed=3, step=8)
  d = data.get_batch(tokens, 4, 16, seed=3, step=7, split="valid")
  assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
  assert not np.array_equal(a[0], c[0]) and not np.array_equal(a[0], d[0])
  inputs, targets = a
  assert np.array_equal(inputs[:, 1:], targets[:, :-1])
  for row_in, row_tg in zip(inputs, targets):   # each row is a real window of the text
    start = next(s for s in range(len(tokens) - 16) if np.array_equal(tokens[s:s + 16], row_in))
    assert np.array_equal(tokens[start + 1:start + 17], row_tg)


def test_non_overlapping_windows_score_every_token_once():
  tokens = np.arange(103, dtype=np.uint8)
  inputs, targets = data.non_overlapping_windows(tokens, 10)
  assert inputs.shape == (10, 10)
  assert targets.reshape(-1).tolist() == list(range(1, 101))
  assert inputs.reshape(-1).tolist() == list(range(0, 100))
  assert data.non_overlapping_windows(tokens, 10, max_windows=3)[0].shape == (3, 10)


def test_too_short_text_is_a_clear_error():
  with pytest.raises(ConfigError, match="data.seq_len=64 needs at least 65 tokens"):
    data.get_batch(np.zeros(10, np.uint8), 2, 64, 0, 0)


def test_text_file_corpus():
  import ml_collections
  corpus = data.load_corpus(ml_collections.ConfigDict(
      {"path": str(SHAKESPEARE), "corpus": "builtin", "valid_fraction": 0.1}))
  raw = SHAKESPEARE.read_bytes()
  assert len(corpus.train) == int(len(raw) * 0.9)
  assert bytes(corpus.train[:14]) == raw[:14] == b"First Citizen:"
