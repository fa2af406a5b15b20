"""Tokenizers by ``data.tokenizer``: ``"bytes"`` (UTF-8 bytes, vocabulary 256) or the path of
a Hugging Face ``tokenizer.json`` (BPE and the other models of the ``tokenizers`` library).

Both give ``encode(text) -> int32 [n]``, ``decode(ids) -> str`` and
``encode_with_bytes(text) -> (ids, bytes_per_token)``: how many UTF-8 bytes of the text
each token stands for (the text from its start to the next token's start, so the counts sum
to the text's length). Evaluation divides nats by those bytes, so bits per byte compare
byte-level and BPE models on the same text.
"""

from __future__ import annotations

import functools
import os
import pathlib

import numpy as np

from attnlab.registry import ConfigError, Declared

BYTE_VOCAB_SIZE = 256


class ByteTokenizer:
  """Text <-> UTF-8 byte ids in [0, 256); lossless on any text."""
  name = "bytes"
  vocab_size = BYTE_VOCAB_SIZE

  @staticmethod
  def encode(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), np.uint8).copy()

  @staticmethod
  def decode(ids) -> str:
    return bytes(np.asarray(ids, np.uint8).tolist()).decode("utf-8", errors="replace")

  @classmethod
  def encode_with_bytes(cls, text: str) -> tuple[np.ndarray, np.ndarray]:
    ids = cls.encode(text)
    return ids, np.ones(len(ids), np.int32)

  @staticmethod
  def labels(ids) -> list[str]:
    """A printable label per token (the viewer's axes)."""
    return [chr(i) if 32 <= i < 127 else f"\\x{i:02x}" for i in np.asarray(ids).tolist()]


class HFTokenizer:
  """A ``tokenizer.json`` read with the ``tokenizers`` library; no special tokens are added."""

  def __init__(self, path):
    import tokenizers
    self.path = str(path)
    self.name = pathlib.Path(path).name
    try:
      self._tok = tokenizers.Tokenizer.from_file(self.path)
    except Exception as e:  # noqa: BLE001 - the library raises plain Exceptions
      why = (str(e).splitlines() or [type(e).__name__])[0]
      raise ConfigError(f"data.tokenizer={self.path!r} is not a readable tokenizer.json "
                        f"({why})") from None
    self._tok.no_truncation()    # a saved tokenizer may truncate or pad; corpora must not be
    self._tok.no_padding()
    self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self._tok.encode(text, add_special_tokens=False).ids, np.int32)

  def decode(self, ids) -> str:
    return self._tok.decode([int(i) for i in np.asarray(ids).reshape(-1)],
                            skip_special_tokens=False)

  def encode_with_bytes(self, text: str) -> tuple[np.ndarray, np.ndarray]:
    encoding = self._tok.encode(text, add_special_tokens=False)
    ids = np.asarray(encoding.ids, np.int32)
    if not len(ids):
      return ids, np.zeros(0, np.int32)
    # byte offset of every character, then of every token's start
    char_bytes = np.fromiter((len(c.encode("utf-8")) for c in text), np.int64, len(text))
    byte_at = np.concatenate([[0], np.cumsum(char_bytes)])
    starts = np.maximum.accumulate(np.asarray([s for s, _ in encoding.offsets], np.int64))
    starts[0] = 0
    bounds = np.append(byte_at[starts], byte_at[-1])
    return ids, np.diff(bounds).astype(np.int32)

  def labels(self, ids) -> list[str]:
    """Each token's own text (its vocabulary entry when that decodes to nothing)."""
    return [self.decode([i]) or self._tok.id_to_token(int(i)) or f"<{int(i)}>"
            for i in np.asarray(ids).tolist()]


@functools.lru_cache(maxsize=8)
def _load(path: str) -> HFTokenizer:
  return HFTokenizer(path)


def get_tokenizer(data_cfg=None):
  """The tokenizer ``data.tokenizer`` names (its declared default when absent)."""
  from attnlab.data import DATA_FIELDS   # the package declares data.*; imported when called
  name = Declared(data_cfg or {}, DATA_FIELDS).tokenizer
  if name == "bytes":
    return ByteTokenizer()
  path = pathlib.Path(name).expanduser()
  if not path.is_file():
    raise ConfigError(f"data.tokenizer={name!r} is not valid; valid: 'bytes' or the path of a "
                      f"tokenizer.json file")
  return _load(str(path.resolve()))


def train_bpe(text: str, vocab_size: int, path) -> HFTokenizer:
  """Train a byte-level BPE (GPT-2's scheme: every byte is a symbol, so any text encodes and
  decodes exactly) of ``vocab_size`` tokens on ``text`` and write it to ``path``
  (``tokenizer.json``)."""
  import tokenizers
  from tokenizers import decoders, models, pre_tokenizers, trainers
  alphabet = pre_tokenizers.ByteLevel.alphabet()
  if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < len(alphabet):
    raise ConfigError(f"--vocab_size={vocab_size!r} must be an integer >= {len(alphabet)} (the "
                      f"byte alphabet)")
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator([text], trainers.BpeTrainer(
      vocab_size=vocab_size, initial_alphabet=alphabet, show_progress=False))
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  try:                              # written aside and renamed: never a partial tokenizer.json
    tok.save(str(tmp))
    os.replace(tmp, path)
  finally:
    tmp.unlink(missing_ok=True)
  return HFTokenizer(path)


def tokenizer_vocab_size(data_cfg) -> int:
  """How many token ids ``data.tokenizer`` produces (the least ``model.vocab_size``)."""
  return get_tokenizer(data_cfg).vocab_size
