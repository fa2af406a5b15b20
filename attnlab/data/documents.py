"""Packed documents (``data.documents``): where documents start in a corpus, and batches
whose rows carry the document structure.

A row of a packed batch is a window of the token stream, as ``get_batch`` draws it (the
same windows: turning documents on changes only what comes with them). With documents, a
token attends only to tokens of its own document (``segment_ids``), its position counts
from its document's start (``positions``; a window that starts inside a document starts
that document at position 0), and a target that is the first token of the next document
(nothing in its input's document predicts it) has weight 0.

Boundaries (``data.document_separator``):

- ``""`` (the natural boundaries): for the built-in corpus, its ``# file: <path>`` header
  lines: a header starts a document, the file's source follows it. Other text
  (tinyshakespeare, a ``data.path`` file) has no markup, so ``""`` means blank lines,
  ``NATURAL_SEPARATOR`` (paragraphs; tinyshakespeare's speeches).
- any other string: the text is split on it (for every corpus; leftmost, non-overlapping
  matches); the separator ends the document it follows, so a model learns where a
  document ends.

Each split finds its documents in its own bytes (ids from 0; the first document of the
validation split is the tail of one cut by the split). With a ``tokenizer.json`` a token
belongs to the document of its first byte. A retrieval task's rows are one generated
example each, so one document each (``whole_rows``).

Pure numpy; ``document_positions`` also takes a JAX array (for use inside ``jit``).
"""

from __future__ import annotations

import re

import numpy as np

from attnlab.registry import ConfigError

HEADER = b"# file: "          # the built-in corpus's header line (``builtin_corpus_bytes``)
NATURAL_SEPARATOR = "\n\n"    # a blank line: the separator "" means in unmarked text
_SPLIT_TAG = {"train": 0, "valid": 1}   # as ``attnlab.data.get_batch``


# ----------------------------------------------------------------------------- boundaries


def header_starts(raw: bytes, header: bytes = HEADER) -> np.ndarray:
  """int64 [n_headers]: byte offsets of the lines of ``raw`` that begin with ``header``
  (offset 0 counts as a line start), increasing."""
  after_newline = (m.start() + 1 for m in re.finditer(re.escape(b"\n" + header), raw))
  first = [0] if raw.startswith(header) else []
  return np.fromiter([*first, *after_newline], np.int64)


def separator_starts(raw: bytes, separator: bytes) -> np.ndarray:
  """int64 [n_separators]: the byte offset just after each occurrence of ``separator`` in
  ``raw`` (non-overlapping, left to right), increasing: where the next document starts."""
  if not separator:
    raise ValueError("separator_starts: the separator must not be empty")
  return np.fromiter((m.end() for m in re.finditer(re.escape(separator), raw)), np.int64)


def ids_from_starts(n: int, starts: np.ndarray) -> np.ndarray:
  """int32 [n]: the document id of each of ``n`` items, given the offsets where documents
  start (``starts``, any order; offset 0 always starts document 0; offsets >= n ignored).
  Ids count from 0 and grow by one at each start: non-decreasing."""
  starts = np.asarray(starts, np.int64)
  bounds = np.unique(np.concatenate([[0], starts[(starts > 0) & (starts < n)], [n]]))
  return np.repeat(np.arange(len(bounds) - 1, dtype=np.int32), np.diff(bounds))


def boundary_rule(separator: str, builtin: bool) -> tuple[str, bytes]:
  """``("header" | "separator", marker bytes)``: how ``data.document_separator`` splits a
  corpus (``builtin``: the built-in corpus, whose natural boundary is its header lines)."""
  if separator:
    return "separator", separator.encode("utf-8")
  return ("header", HEADER) if builtin else ("separator", NATURAL_SEPARATOR.encode())


def describe_rule(separator: str, builtin: bool) -> str:
  """The boundary rule in words (what a run's data identity records)."""
  kind, marker = boundary_rule(separator, builtin)
  words = "lines starting with" if kind == "header" else "after each"
  return f"{words} {marker.decode('utf-8')!r}"


def byte_document_ids(raw: bytes, separator: str, builtin: bool) -> np.ndarray:
  """int32 [len(raw)]: the document id of every byte of ``raw`` (non-decreasing, from 0)
  under the rule ``boundary_rule(separator, builtin)`` names."""
  kind, marker = boundary_rule(separator, builtin)
  starts = header_starts(raw, marker) if kind == "header" else separator_starts(raw, marker)
  return ids_from_starts(len(raw), starts)


def check_boundaries(raw: bytes, separator: str, builtin: bool, source: str) -> None:
  """``ConfigError`` when the rule finds no boundary in ``raw`` (``source`` names the text):
  the whole text would be one document, almost surely not what was meant."""
  kind, marker = boundary_rule(separator, builtin)
  found = (header_starts(raw, marker) if kind == "header" else separator_starts(raw, marker))
  if len(found) == 0 or (kind == "header" and len(found) == 1 and found[0] == 0):
    hint = (" (it holds a backslash: a newline is passed as a real newline, e.g. "
            "$'\\n\\n' in bash, not '\\n')" if "\\" in separator else "")
    natural = "" if not separator else ", or '' for its natural boundaries"
    raise ConfigError(f"data.document_separator={separator!r} splits {source} nowhere "
                      f"({describe_rule(separator, builtin)}){hint}; valid: a string that "
                      f"occurs in the text{natural}")


def token_document_ids(byte_ids: np.ndarray, token_bytes: np.ndarray) -> np.ndarray:
  """int32 [n_tokens]: each token's document, the document of its first byte.

  ``byte_ids`` int [n_bytes] (``byte_document_ids``); ``token_bytes`` int [n_tokens], the
  bytes each token stands for, summing to ``n_bytes`` (``Corpus.token_bytes``).
  """
  token_bytes = np.asarray(token_bytes, np.int64)
  if token_bytes.sum() != len(byte_ids):
    raise ValueError(f"token_document_ids: the tokens stand for {token_bytes.sum()} bytes, "
                     f"the text has {len(byte_ids)}")
  if not len(token_bytes):
    return np.zeros(0, np.int32)
  first = np.concatenate([[0], np.cumsum(token_bytes)[:-1]])
  return np.asarray(byte_ids, np.int32)[np.minimum(first, max(len(byte_ids) - 1, 0))]


# ----------------------------------------------------------------------------- rows


def document_positions(segment_ids):
  """int [batch, seq] -> int32 [batch, seq]: 0 at the first token and wherever the id
  changes from the token before, counting up within a run of equal ids.

  A numpy array gives numpy; a JAX array gives JAX (traceable under ``jit``).
  """
  if isinstance(segment_ids, np.ndarray):
    xp, cummax = np, lambda a: np.maximum.accumulate(a, axis=-1)
  else:
    import jax
    import jax.numpy as jnp
    xp, cummax = jnp, lambda a: jax.lax.cummax(a, axis=a.ndim - 1)
  seq = segment_ids.shape[-1]
  index = xp.broadcast_to(xp.arange(seq, dtype=np.int32), segment_ids.shape)
  starts = xp.concatenate([xp.ones_like(segment_ids[..., :1], dtype=bool),
                           segment_ids[..., 1:] != segment_ids[..., :-1]], axis=-1)
  return (index - cummax(xp.where(starts, index, 0))).astype(np.int32)


def window_layout(input_docs: np.ndarray, target_docs: np.ndarray):
  """The document structure of windows, from the documents of their tokens.

  ``input_docs``, ``target_docs``: int [batch, seq], the document of each input token and
  of its target (the next token of the stream). Returns int32 ``segment_ids [batch, seq]``
  (from 0 in each row, +1 at each document start), int32 ``positions [batch, seq]``
  (``document_positions``) and float32 ``weights [batch, seq]``: 0 where the target is in
  another document than its input (the first token of the next document), else 1.
  """
  input_docs, target_docs = np.asarray(input_docs), np.asarray(target_docs)
  changes = input_docs[:, 1:] != input_docs[:, :-1]
  segment_ids = np.concatenate([np.zeros_like(changes[:, :1], np.int32),
                                np.cumsum(changes, axis=1, dtype=np.int32)], axis=1)
  weights = (input_docs == target_docs).astype(np.float32)
  return segment_ids, document_positions(segment_ids), weights


def window_starts(n_tokens: int, batch_size: int, seq_len: int, seed: int, step: int,
                  split: str = "train") -> np.ndarray:
  """int64 [batch_size]: where ``get_batch`` starts its windows of ``seq_len + 1`` tokens
  for (seed, step, split): the same draw, so packed rows are the same windows."""
  if n_tokens < seq_len + 1:
    raise ConfigError(f"data.seq_len={seq_len} needs at least {seq_len + 1} tokens in the "
                      f"{split} split, which has {n_tokens}")
  rng = np.random.default_rng([seed, step, _SPLIT_TAG[split]])
  return rng.integers(0, n_tokens - seq_len, size=batch_size)


def document_batch(tokens: np.ndarray, docs: np.ndarray, batch_size: int, seq_len: int,
                   seed: int, step: int, split: str = "train"):
  """Random windows with their documents, a pure function of (seed, step, split).

  ``tokens`` [n] and ``docs`` int [n] (each token's document, non-decreasing). Returns
  int32 ``inputs, targets [batch, seq_len]`` (``get_batch``'s), float32 ``weights``, int32
  ``segment_ids`` and ``positions`` ``[batch, seq_len]`` (``window_layout``).
  """
  if len(docs) != len(tokens):
    raise ValueError(f"document_batch: {len(tokens)} tokens but {len(docs)} document ids")
  starts = window_starts(len(tokens), batch_size, seq_len, seed, step, split)
  index = starts[:, None] + np.arange(seq_len + 1)
  windows, ids = tokens[index].astype(np.int32), docs[index]
  segment_ids, positions, weights = window_layout(ids[:, :-1], ids[:, 1:])
  return windows[:, :-1], windows[:, 1:], weights, segment_ids, positions


def whole_rows(batch_size: int, seq_len: int):
  """int32 ``segment_ids`` (all 0) and ``positions`` (0..seq_len-1) ``[batch, seq_len]``: each
  row one document (a generated example, e.g. a retrieval task's)."""
  segment_ids = np.zeros((batch_size, seq_len), np.int32)
  positions = np.broadcast_to(np.arange(seq_len, dtype=np.int32), (batch_size, seq_len)).copy()
  return segment_ids, positions
