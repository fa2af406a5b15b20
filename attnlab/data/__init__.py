"""Tokenizers, corpora and batches.

- ``get_tokenizer(data_cfg)``: ``data.tokenizer`` = ``"bytes"`` (``ByteTokenizer``: UTF-8
  bytes, vocabulary 256, lossless on any text) or a ``tokenizer.json`` (``tokenization``).
- ``load_corpus(data_cfg)``: a named corpus (``builtin``: the Python standard
  library's own source, present wherever attnlab runs; ``tinyshakespeare``: shipped in
  ``attnlab/data/corpora/``; no download either way) or any text file (``data.path``),
  split deterministically into train (first 90% of its bytes) and valid, then tokenized.
- ``get_batch(tokens, ...)``: a pure function of (seed, step): resumed runs see
  exactly the batches an uninterrupted run would.
- ``documents``: packed documents (``data.documents``): where documents start, and batches
  whose rows carry segment ids, positions restarting in each document and weights.
- ``tasks``: algorithmic sequence-to-sequence tasks (Delétang et al. 2023) for length
  generalisation, deterministic for (seed, length); ``retrieval``: passkey and
  associative-recall language-model tasks.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import pathlib
import platform
from typing import Any
import sys
import sysconfig

import numpy as np

from attnlab.registry import ConfigError, Declared, Field

from attnlab.data.tokenization import (BYTE_VOCAB_SIZE, ByteTokenizer, HFTokenizer,
                                       get_tokenizer, tokenizer_vocab_size, train_bpe)

VOCAB_SIZE = BYTE_VOCAB_SIZE


@dataclasses.dataclass(frozen=True)
class Corpus:
  """A corpus's two splits as token ids and, for each token, the UTF-8 bytes it stands for
  (``*_bytes``; all ones for the byte tokenizer)."""
  name: str
  train: np.ndarray         # uint8 (bytes) or int32 (a tokenizer.json) [n_train]
  valid: np.ndarray         # [n_valid]
  train_bytes: np.ndarray | None = None   # int32 [n_train]; None: one byte per token
  valid_bytes: np.ndarray | None = None
  identity: dict = dataclasses.field(default_factory=dict)   # what it was read from (data_identity)
  train_documents: np.ndarray | None = None   # int32 [n_train]: each token's document
  valid_documents: np.ndarray | None = None   # (data.documents); None: not split

  def split(self, name: str) -> np.ndarray:
    if name not in ("train", "valid"):
      raise ValueError(f"split={name!r}; valid: 'train', 'valid'")
    return self.train if name == "train" else self.valid

  def token_bytes(self, name: str) -> np.ndarray:
    """int32 [n]: the UTF-8 bytes each token of split ``name`` stands for."""
    tokens, counts = self.split(name), self.train_bytes if name == "train" else self.valid_bytes
    return np.ones(len(tokens), np.int32) if counts is None else counts

  def documents(self, name: str) -> np.ndarray | None:
    """int32 [n]: the document of each token of split ``name`` (non-decreasing, from 0), or
    None when the corpus was loaded without ``data.documents``."""
    self.split(name)
    return self.train_documents if name == "train" else self.valid_documents


_STDLIB_SKIP = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test",
                          "__pycache__"})


def builtin_corpus_files() -> list[pathlib.Path]:
  """The ``.py`` files of this interpreter's standard library (tests excluded), sorted by path."""
  root = pathlib.Path(sysconfig.get_paths()["stdlib"])
  files = [p for p in root.rglob("*.py")
           if not _STDLIB_SKIP.intersection(p.relative_to(root).parts[:-1])]
  return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def builtin_corpus_bytes() -> bytes:
  """The built-in corpus: every standard-library source file, each headed by its path.

  Deterministic for a given Python version (about 12 MB on CPython 3.11).
  """
  root = pathlib.Path(sysconfig.get_paths()["stdlib"])
  parts = []
  for path in builtin_corpus_files():
    parts.append(f"# file: {path.relative_to(root).as_posix()}\n".encode())
    parts.append(path.read_bytes())
  return b"".join(parts)


def split_tokens(tokens: np.ndarray, valid_fraction: float) -> tuple[np.ndarray, np.ndarray]:
  """First ``1 - valid_fraction`` for training, the rest for validation (as nanoGPT)."""
  n_train = int(len(tokens) * (1.0 - valid_fraction))
  return tokens[:n_train], tokens[n_train:]


CORPUS_DIR = pathlib.Path(__file__).resolve().parent / "corpora"


@functools.lru_cache(maxsize=1)   # ~1.7 s to read; a sweep loads it once per variant and stage
def _python_stdlib() -> tuple[bytes, str]:
  return builtin_corpus_bytes(), f"python{sys.version_info[0]}.{sys.version_info[1]}-stdlib"


def _tinyshakespeare() -> tuple[bytes, str]:
  return (CORPUS_DIR / "tinyshakespeare.txt").read_bytes(), "tinyshakespeare"


# data.corpus -> () -> (raw bytes, name); each needs nothing beyond the installed package
CORPORA = {"builtin": _python_stdlib, "tinyshakespeare": _tinyshakespeare}


def _separator_problem(value: str, context) -> str | None:
  """Why ``data.document_separator`` cannot be ``value`` (a string) in its data block."""
  from attnlab.data.retrieval_tasks import RETRIEVAL_TASKS
  block = Declared(context.get("block", {}), DATA_FIELDS)
  try:
    value.encode("utf-8")
  except UnicodeEncodeError:
    return "is not valid; valid: a string that encodes as UTF-8 (no lone surrogates)"
  if value and block.documents and not block.path and block.corpus in RETRIEVAL_TASKS:
    return (f"is not valid with data.corpus={block.corpus!r}: each generated example is one "
            f"document; valid: ''")
  return None


# data.* of a language-model run: every default is here and only here.
DATA_FIELDS = (
    Field("corpus", "builtin", "builtin (the running Python's standard library source), "
          "tinyshakespeare, or a retrieval task (passkey, associative_recall)"),
    Field("path", "", "a text file; when set it replaces the corpus"),
    Field("tokenizer", "bytes", "bytes (vocabulary 256) or a tokenizer.json path"),
    Field("seq_len", 128, "training sequence length", minimum=1),
    Field("valid_fraction", 0.1, "the last fraction of the text is validation data",
          check=lambda v, c: None if 0.0 < v < 1.0 else "must be in (0, 1)"),
    # read only when True: a run without documents has the identity it had before them
    Field("documents", False, "pack documents: a token attends only within its document, "
          "positions restart at each document start, a target in the next document is not "
          "scored (attnlab.data.documents)", applies=lambda d: d["documents"] is True),
    Field("document_separator", "", "with documents: the text between separators is a "
          "document; '' = natural boundaries: the built-in corpus's '# file:' header lines, "
          "blank lines ('\\n\\n') in other text; a retrieval task's examples are documents",
          check=_separator_problem, applies=lambda d: d["documents"] is True),
)


def load_corpus(data_cfg, splits=("train", "valid")) -> Corpus:
  """Load the corpus named by the ``data`` config block (``data.path`` wins when set).

  ``splits``: the splits to tokenize with a ``tokenizer.json`` (evaluation needs only
  ``valid``; a split left out is empty). Byte-level corpora have both at no cost.
  """
  if data_cfg.path:
    path = pathlib.Path(data_cfg.path).expanduser()
    if not path.is_file():
      raise ConfigError(f"data.path={data_cfg.path!r} is not a readable file")
    try:
      raw, name = path.read_bytes(), path.name
    except OSError as e:
      raise ConfigError(f"data.path={data_cfg.path!r} cannot be read: "
                        f"{e.strerror or e}") from None
  elif data_cfg.corpus in CORPORA:
    raw, name = CORPORA[data_cfg.corpus]()
  else:
    raise ConfigError(f"data.corpus={data_cfg.corpus!r} is not valid; valid: "
                      f"{', '.join(map(repr, CORPORA))} (or set data.path=FILE for a text file)")
  identity = data_identity(data_cfg, raw)
  train, valid = split_tokens(np.frombuffer(raw, np.uint8), data_cfg.valid_fraction)
  tokenizer = get_tokenizer(data_cfg)
  if Declared(data_cfg, DATA_FIELDS).documents:
    return _with_documents(data_cfg, raw, name, identity, train, valid, tokenizer, splits)
  if isinstance(tokenizer, ByteTokenizer):
    return Corpus(name, train, valid, identity=identity)
  empty = (np.zeros(0, np.int32), np.zeros(0, np.int32))
  (train, train_bytes), (valid, valid_bytes) = (
      tokenizer.encode_with_bytes(part.tobytes().decode("utf-8", errors="replace"))
      if split in splits else empty for split, part in (("train", train), ("valid", valid)))
  return Corpus(f"{name} ({tokenizer.name})", train, valid, train_bytes, valid_bytes,
                identity=identity)


def _with_documents(data_cfg, raw: bytes, name: str, identity: dict, train: np.ndarray,
                    valid: np.ndarray, tokenizer, splits) -> Corpus:
  """``load_corpus`` with ``data.documents``: each split's tokens and each token's document
  (found in the split's own bytes, so each split's ids start at 0)."""
  d = Declared(data_cfg, DATA_FIELDS)
  builtin = not d.path and d.corpus == "builtin"
  documents.check_boundaries(raw, d.document_separator, builtin,
                             f"data.path={d.path!r}" if d.path else f"data.corpus={d.corpus!r}")
  parts = {}
  for split, part in (("train", train), ("valid", valid)):
    if isinstance(tokenizer, ByteTokenizer):
      ids, counts, text = part, None, part.tobytes()
    elif split in splits:
      decoded = part.tobytes().decode("utf-8", errors="replace")
      ids, counts = tokenizer.encode_with_bytes(decoded)
      text = decoded.encode("utf-8")     # the bytes the counts add up to
    else:
      parts[split] = (np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.int32))
      continue
    byte_ids = documents.byte_document_ids(text, d.document_separator, builtin)
    docs = byte_ids if counts is None else documents.token_document_ids(byte_ids, counts)
    parts[split] = (ids, counts, docs)
  (train, train_bytes, train_docs), (valid, valid_bytes, valid_docs) = (
      parts["train"], parts["valid"])
  label = name if isinstance(tokenizer, ByteTokenizer) else f"{name} ({tokenizer.name})"
  return Corpus(label, train, valid, train_bytes, valid_bytes, identity=identity,
                train_documents=train_docs, valid_documents=valid_docs)


def data_identity(data_cfg, raw: bytes) -> dict:
  """What a text corpus is, for the resume check (``workdir.check_data``): the field that
  names it, its source, the sha256 of its bytes and of the tokenizer file; for the built-in
  corpus also the Python version whose standard library it is."""
  d = Declared(data_cfg, DATA_FIELDS)
  field, source = ("data.path", str(d.path)) if d.path else ("data.corpus", d.corpus)
  identity = {"field": field, "source": source, "sha256": hashlib.sha256(raw).hexdigest(),
              "tokenizer": d.tokenizer}
  if d.tokenizer != "bytes":
    path = pathlib.Path(d.tokenizer).expanduser()
    if path.is_file():
      identity["tokenizer_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
  if not d.path and d.corpus == "builtin":
    identity["python"] = platform.python_version()
  if d.documents:   # absent without documents: the identity runs had before them
    identity["documents"] = documents.describe_rule(d.document_separator,
                                                    not d.path and d.corpus == "builtin")
  return identity


_SPLIT_TAG = {"train": 0, "valid": 1}


def get_batch(tokens: np.ndarray, batch_size: int, seq_len: int, seed: int, step: int,
              split: str = "train") -> tuple[np.ndarray, np.ndarray]:
  """Random windows, a pure function of (seed, step, split).

  Returns int32 ``inputs [batch, seq_len]`` and ``targets [batch, seq_len]`` (inputs shifted by one).
  """
  if len(tokens) < seq_len + 1:
    raise ConfigError(f"data.seq_len={seq_len} needs at least {seq_len + 1} tokens in the "
                      f"{split} split, which has {len(tokens)}")
  rng = np.random.default_rng([seed, step, _SPLIT_TAG[split]])
  starts = rng.integers(0, len(tokens) - seq_len, size=batch_size)
  windows = tokens[starts[:, None] + np.arange(seq_len + 1)].astype(np.int32)
  return windows[:, :-1], windows[:, 1:]


def non_overlapping_windows(tokens: np.ndarray, length: int, max_windows: int | None = None):
  """Consecutive, non-overlapping windows of ``length`` predictions each.

  Returns int32 ``inputs [n, length]`` and ``targets [n, length]``; window w covers
  tokens ``[w*length, (w+1)*length]``. Every target token is scored once.
  """
  n = (len(tokens) - 1) // length
  if max_windows is not None:
    n = min(n, max_windows)
  if n < 1:
    raise ConfigError(f"evaluation length {length} needs at least {length + 1} tokens; "
                      f"the split has {len(tokens)}")
  idx = np.arange(n)[:, None] * length + np.arange(length + 1)
  windows = tokens[idx].astype(np.int32)
  return windows[:, :-1], windows[:, 1:]


@dataclasses.dataclass(frozen=True)
class Batches:
  """The training data of a run: ``train(step)`` and ``valid(i)`` give
  ``(inputs, targets)`` or, for tasks, ``(inputs, targets, weights)``; with
  ``data.documents``, ``(inputs, targets, weights, segment_ids, positions)``
  (``documents.document_batch``)."""
  train: Any
  valid: Any
  description: str
  bytes_per_token: float = 1.0   # mean over the validation split (bits per byte = nats/token
                                 # / (ln 2 * bytes_per_token))
  identity: dict | None = None   # what the data is (a corpus's data_identity); None: the
                                 # trainer fingerprints the first batches


def make_batches(cfg) -> Batches:
  """Batches for a resolved config: a text corpus, or a synthetic retrieval task."""
  from attnlab.data.retrieval_tasks import RETRIEVAL_TASKS, task_batch
  d, t = cfg.data, cfg.train
  if Declared(d, DATA_FIELDS).documents:
    return _document_batches(cfg)
  if not d.path and d.corpus in RETRIEVAL_TASKS:
    def batch(step, split):
      return task_batch(d.corpus, t.batch_size, d.seq_len, t.seed, step, split)
    return Batches(lambda step: batch(step, "train"), lambda i: batch(i, "valid"),
                   f"task {d.corpus} at length {d.seq_len}")   # generated: fingerprinted
  corpus = load_corpus(d)
  return Batches(
      lambda step: get_batch(corpus.train, t.batch_size, d.seq_len, t.seed, step, "train"),
      lambda i: get_batch(corpus.valid, t.batch_size, d.seq_len, t.seed, i, "valid"),
      f"{corpus.name} ({len(corpus.train):,} train / {len(corpus.valid):,} valid "
      f"{'bytes' if corpus.train_bytes is None else 'tokens'})",
      float(corpus.token_bytes("valid").mean()), corpus.identity)


def _document_batches(cfg) -> Batches:
  """``make_batches`` with ``data.documents``: 5-tuples (``documents.document_batch``); a
  retrieval task's rows are one example, so one document, each."""
  from attnlab.data.retrieval_tasks import RETRIEVAL_TASKS, task_batch
  d, t = cfg.data, cfg.train
  if not d.path and d.corpus in RETRIEVAL_TASKS:
    def example(step, split):
      return (*task_batch(d.corpus, t.batch_size, d.seq_len, t.seed, step, split),
              *documents.whole_rows(t.batch_size, d.seq_len))
    return Batches(lambda step: example(step, "train"), lambda i: example(i, "valid"),
                   f"task {d.corpus} at length {d.seq_len}, one document per example")
  corpus = load_corpus(d)

  def batch(split, step):
    return documents.document_batch(corpus.split(split), corpus.documents(split), t.batch_size,
                                    d.seq_len, t.seed, step, split)
  counts = [int(corpus.documents(s)[-1]) + 1 if len(corpus.split(s)) else 0
            for s in ("train", "valid")]
  return Batches(
      lambda step: batch("train", step), lambda i: batch("valid", i),
      f"{corpus.name} ({len(corpus.train):,} train / {len(corpus.valid):,} valid "
      f"{'bytes' if corpus.train_bytes is None else 'tokens'}; {counts[0]:,} / {counts[1]:,} "
      f"packed documents)",
      float(corpus.token_bytes("valid").mean()), corpus.identity)


def sliding_windows(tokens: np.ndarray, length: int, stride: int, max_scored: int | None = None):
  """Windows of ``length`` advancing by ``stride``; each scores only its last ``stride`` targets.

  The first window scores all its targets, so every target token is scored once,
  with between ``length - stride`` and ``length`` tokens of context (all it can
  have near the start). Returns int32 ``inputs, targets [n, length]`` and float32
  ``weights [n, length]`` (1 where a target is scored).
  """
  if not 1 <= stride <= length:
    raise ConfigError(f"sliding stride={stride} must be in [1, evaluation length={length}]")
  if len(tokens) < length + 1:
    raise ConfigError(f"evaluation length {length} needs at least {length + 1} tokens; "
                      f"the split has {len(tokens)}")
  n = 1 + (len(tokens) - 1 - length) // stride
  if max_scored is not None:
    n = min(n, max(1, 1 + (max_scored - length) // stride))
  idx = np.arange(n)[:, None] * stride + np.arange(length + 1)
  windows = tokens[idx].astype(np.int32)
  weights = np.zeros((n, length), np.float32)
  weights[0] = 1.0
  weights[1:, length - stride:] = 1.0
  return windows[:, :-1], windows[:, 1:], weights


from attnlab.data import tasks  # noqa: E402  (algorithmic seq2seq tasks)
from attnlab.data import documents  # noqa: E402  (packed documents)
from attnlab.data.documents import document_positions  # noqa: E402

__all__ = ["tasks", "documents", "document_positions", "ByteTokenizer", "HFTokenizer", "get_tokenizer", "tokenizer_vocab_size", "train_bpe", "CORPORA", "CORPUS_DIR", "Corpus", "VOCAB_SIZE", "builtin_corpus_bytes", "builtin_corpus_files",
           "Batches", "get_batch", "load_corpus", "make_batches", "non_overlapping_windows", "sliding_windows", "split_tokens"]
