"""Packed documents (``data.documents``): boundaries, packed rows, the document mask and
restarting positions in the model, training, evaluation, config and resume.

Oracles: naive Python loops over hand-made streams with known boundaries; each document
run alone through the model; per-document scoring by running each piece alone.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import perturbed_model, tiny_config

from attnlab import config_lib, data, parallel
from attnlab import workdir as workdir_lib
from attnlab.data import documents
from attnlab.engine import evaluation, training
from attnlab.registry import ConfigError
from attnlab.workdir import WorkdirError

# ragged documents, two of length 1, adjacent and at the end
LENGTHS = (5, 1, 7, 3, 1, 12, 2, 9, 4, 1)


def _ids_from_lengths(lengths) -> np.ndarray:
  """Document id of every token of documents of ``lengths``, laid end to end."""
  out = []
  for doc, n in enumerate(lengths):
    out += [doc] * n
  return np.asarray(out, np.int32)


def _naive_row(docs, start: int, seq_len: int):
  """(segment ids, positions, weights) of the window of ``seq_len`` inputs at ``start``."""
  segment, position, weight = [], [], []
  seg, pos = 0, 0
  for j in range(seq_len):
    if j > 0 and docs[start + j] != docs[start + j - 1]:
      seg, pos = seg + 1, 0
    segment.append(seg)
    position.append(pos)
    pos += 1
    weight.append(1.0 if docs[start + j + 1] == docs[start + j] else 0.0)
  return segment, position, weight


# ----------------------------------------------------------------------------- packing


def test_rows_match_a_naive_loop():
  docs = _ids_from_lengths(LENGTHS)
  tokens = np.arange(len(docs), dtype=np.int32)   # a token is its own offset
  seq_len, batch = 8, 24
  starts_mid = lengths_one = 0
  layouts = set()
  for step in range(3):
    inputs, targets, weights, segment_ids, positions = documents.document_batch(
        tokens, docs, batch, seq_len, seed=5, step=step)
    plain = data.get_batch(tokens, batch, seq_len, 5, step)   # documents change no window
    np.testing.assert_array_equal(inputs, plain[0])
    np.testing.assert_array_equal(targets, plain[1])
    assert segment_ids.dtype == positions.dtype == np.int32 and weights.dtype == np.float32
    for r in range(batch):
      start = int(inputs[r, 0])
      segment, position, weight = _naive_row(docs, start, seq_len)
      assert segment_ids[r].tolist() == segment
      assert positions[r].tolist() == position
      assert weights[r].tolist() == weight
      starts_mid += start > 0 and docs[start - 1] == docs[start]
      runs = np.bincount(segment_ids[r])
      lengths_one += bool((runs[1:-1] == 1).any())     # a whole length-1 document inside
      layouts.add(tuple(segment))
  assert starts_mid and lengths_one and len(layouts) > 3   # the cases this test is about


def test_document_positions_numpy_and_jax():
  ids = np.array([[0, 0, 1, 1, 1, 2], [3, 4, 4, 4, 4, 4], [7, 7, 7, 7, 7, 7]], np.int32)
  want = np.array([[0, 1, 0, 1, 2, 0], [0, 0, 1, 2, 3, 4], [0, 1, 2, 3, 4, 5]], np.int32)
  np.testing.assert_array_equal(documents.document_positions(ids), want)
  got = jax.jit(documents.document_positions)(jnp.asarray(ids))
  assert isinstance(got, jax.Array) and got.dtype == jnp.int32
  np.testing.assert_array_equal(np.asarray(got), want)


def test_boundaries_of_text_match_a_naive_split():
  parts = ["First:\nHello there.", "", "x", "Second:\nIs it\nyou?\n", "end"]
  text = "\n\n".join(parts)
  got = documents.byte_document_ids(text.encode(), "\n\n", builtin=False)
  # oracle: str.split's pieces (leftmost matches first), each with the separator ending it
  pieces = text.split("\n\n")
  want = _ids_from_lengths([len(p) + 2 for p in pieces[:-1]] + [len(pieces[-1])])
  np.testing.assert_array_equal(got, want)
  # "" in plain text means blank lines; in the built-in corpus, its header lines
  np.testing.assert_array_equal(documents.byte_document_ids(text.encode(), "", False), want)
  files = ["# file: a.py\nx = 1\n", "# file: b/c.py\ns = '# file: not a header'\n",
           "# file: empty.py\n", "# file: d.py\ny = 2  # file: nor this\n"]
  heads = documents.byte_document_ids("".join(files).encode(), "", builtin=True)
  np.testing.assert_array_equal(heads, _ids_from_lengths([len(f) for f in files]))


def test_token_documents_follow_each_tokens_first_byte():
  byte_ids = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2], np.int32)
  counts = np.array([2, 2, 1, 3, 1], np.int32)        # tokens over bytes 0-1, 2-3, 4, 5-7, 8
  want = [byte_ids[sum(counts[:i])] for i in range(len(counts))]
  assert documents.token_document_ids(byte_ids, counts).tolist() == want
  with pytest.raises(ValueError, match="stand for 8 bytes"):
    documents.token_document_ids(byte_ids, counts[:-1])


def test_a_bpe_corpus_gives_each_token_the_document_of_its_first_byte(tmp_path):
  paragraphs = [f"Speaker {i}:\n" + "word " * (i % 5 + 1) + "and more." for i in range(30)]
  text = "\n\n".join(paragraphs)
  path = tmp_path / "text.txt"
  path.write_text(text, encoding="utf-8")
  tok = data.train_bpe(text, 300, tmp_path / "tokenizer.json")
  cfg = tiny_config("rope", data__path=str(path), data__tokenizer=str(tmp_path / "tokenizer.json"),
                    data__valid_fraction=0.2, data__documents=True).data
  corpus = data.load_corpus(cfg)
  raw = path.read_bytes()
  cut = int(len(raw) * 0.8)
  for split, part in (("train", raw[:cut]), ("valid", raw[cut:])):
    # oracle: bytes.split; the text is ASCII, so the decoded tokens before a token have
    # exactly the bytes before it
    pieces = part.split(b"\n\n")
    byte_doc = _ids_from_lengths([len(p) + 2 for p in pieces[:-1]] + [len(pieces[-1])])
    ids = corpus.split(split)
    want = [byte_doc[len(tok.decode(ids[:i]).encode())] for i in range(len(ids))]
    assert corpus.documents(split).tolist() == want
  assert corpus.identity["documents"] == documents.describe_rule("", builtin=False)


# ----------------------------------------------------------------------------- the model


def _packed_rows():
  """Two rows of 16 tokens: documents of lengths (5, 1, 10) and (9, 7)."""
  segment_ids = np.array([[0] * 5 + [1] + [2] * 10, [0] * 9 + [1] * 7], np.int32)
  tokens = np.random.default_rng(0).integers(0, 256, segment_ids.shape).astype(np.int32)
  positions = np.array([list(range(5)) + [0] + list(range(10)),
                        list(range(9)) + list(range(7))], np.int32)
  return tokens, segment_ids, positions


@pytest.mark.parametrize("position", ["rope", pytest.param("alibi", marks=pytest.mark.slow),
                                      pytest.param("learned", marks=pytest.mark.slow)])
def test_no_attention_crosses_a_document_and_each_document_reads_as_alone(position):
  cfg, model, params = perturbed_model(position)
  tokens, segment_ids, positions = _packed_rows()
  logits, state = model.apply({"params": params}, tokens, positions, segment_ids=segment_ids,
                              mutable=["intermediates"])
  weights = [np.asarray(w) for path, w in jax.tree_util.tree_leaves_with_path(state)
             if "attention_weights" in jax.tree_util.keystr(path)]
  assert len(weights) == cfg.model.num_layers
  other = segment_ids[:, None, :, None] != segment_ids[:, None, None, :]   # [b, 1, q, k]
  for w in weights:                                                      # [b, heads, q, k]
    assert w.shape == (2, cfg.model.attention.num_heads, 16, 16)
    assert np.abs(np.where(other, w, 0.0)).max() <= 1e-30
    np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-5, atol=1e-5)
  # oracle: each document alone at the start of a row (default positions 0..; what comes
  # after it cannot reach it under the causal mask), all in one batch
  pieces = [(r, s) for r in range(2) for s in np.unique(segment_ids[r])]
  alone = np.zeros((len(pieces), 16), np.int32)
  for i, (r, s) in enumerate(pieces):
    doc = tokens[r][segment_ids[r] == s]
    alone[i, :len(doc)] = doc
  alone_logits = np.asarray(model.apply({"params": params}, alone))
  merged = np.asarray(model.apply({"params": params}, tokens))   # no documents: control
  differs = False
  for i, (r, s) in enumerate(pieces):
    inside = segment_ids[r] == s
    n = int(inside.sum())
    np.testing.assert_allclose(np.asarray(logits)[r][inside], alone_logits[i, :n],
                               rtol=1e-5, atol=1e-5)
    differs |= not np.allclose(merged[r][inside], alone_logits[i, :n], rtol=1e-3, atol=1e-3)
  assert differs      # the oracle can tell: without documents the later ones read otherwise


def test_token_loss_and_steps_take_documents():
  cfg, model, params = perturbed_model("rope")
  tokens, segment_ids, positions = _packed_rows()
  targets = np.roll(tokens, -1, axis=1)
  weights = np.ones(tokens.shape, np.float32)
  loss = training.token_loss(model, params, tokens, targets, weights, positions=positions,
                             segment_ids=segment_ids)
  logits = model.apply({"params": params}, tokens, positions, segment_ids=segment_ids)
  want = optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()
  np.testing.assert_allclose(float(loss), float(want), rtol=1e-5)
  eval_loss = training.make_eval_step(model)(params, tokens, targets, weights, segment_ids,
                                             positions)
  np.testing.assert_allclose(float(eval_loss), float(want), rtol=1e-5)
  tx = training.make_optimizer(cfg.train, cfg.model)
  own = jax.tree.map(jnp.copy, params)          # the step donates its state
  step = training.make_train_step(model, tx, seed=0, dropout=False)
  _, metrics = step({"step": jnp.zeros((), jnp.int32), "params": own, "opt_state": tx.init(own)},
                    tokens, targets, weights, segment_ids, positions)
  np.testing.assert_allclose(float(metrics["loss"]), float(want), rtol=1e-5)
  mesh = parallel.make_mesh(cfg)
  put = parallel.put_batch((tokens, None, segment_ids), mesh)
  assert put[1] is None and np.array_equal(np.asarray(put[2]), segment_ids)


# ----------------------------------------------------------------------------- training


def _documents_config(**fields):
  fields = {"data__documents": True, "data__corpus": "builtin", "model__num_layers": 1,
            "data__seq_len": 16, "train__batch_size": 4, "train__steps": 3,
            "train__warmup_steps": 1, "train__eval_every": 3, "train__eval_batches": 1,
            "train__checkpoint_every": 3, "train__log_every": 1, **fields}
  return tiny_config("rope", **fields)


def test_training_on_builtin_documents_and_resume_checks(tmp_path):
  cfg = _documents_config()
  result = training.train_and_evaluate(cfg, tmp_path, progress=False)
  records = workdir_lib.read_metrics(tmp_path)
  losses = [r["loss"] for r in records]
  assert {r["split"] for r in records} == {"train", "valid"}
  assert all(np.isfinite(losses)) and result["metrics"]
  recorded = json.loads((tmp_path / "data.json").read_text())[-1]
  assert recorded["documents"] == documents.describe_rule("", builtin=True)
  (record,) = evaluation.evaluate_workdir(tmp_path, [16], out=tmp_path / "eval", progress=False)
  assert record["documents"] and np.isfinite(record["loss"]) and 0 < record["tokens"]
  # the same text without documents is other data for the resume check ...
  plain = {k: v for k, v in recorded.items() if k not in ("documents", "from_step")}
  with pytest.raises(WorkdirError, match="packed documents"):
    workdir_lib.check_data(tmp_path, plain, 3)
  # ... and another config
  with pytest.raises(ConfigError, match="data.documents"):
    workdir_lib.write_or_check_config(config_lib.resolve(_documents_config(data__documents=False)),
                                      tmp_path)


def test_evaluation_scores_each_document_alone():
  """evaluate_lengths with documents == each piece of each window run alone (oracle)."""
  cfg, model, params = perturbed_model("rope")
  docs = _ids_from_lengths(LENGTHS)[:41]
  tokens = np.random.default_rng(1).integers(0, 256, len(docs)).astype(np.int32)
  length = 8
  for mode, stride in (("non_overlapping", None), ("sliding", 4)):
    (record,) = evaluation.evaluate_lengths(cfg, params, tokens, [length], mode=mode,
                                            stride=stride, max_tokens=64, batch_tokens=16,
                                            progress=False, documents=docs)
    pieces, last, targets = [], [], []     # each scored target: its context alone
    for w, start in enumerate(range(0, len(tokens) - length, stride or length)):
      first_scored = 0 if (mode == "non_overlapping" or w == 0) else length - stride
      for j in range(first_scored, length):
        i = start + j                              # input i, target i + 1
        if docs[i + 1] != docs[i]:
          continue
        begin = max(start, int(np.flatnonzero(docs == docs[i])[0]))   # within the window
        piece = np.zeros(length, np.int32)
        piece[:i + 1 - begin] = tokens[begin:i + 1]
        pieces.append(piece)
        last.append(i - begin)
        targets.append(tokens[i + 1])
    logits = np.asarray(model.apply({"params": params}, np.stack(pieces)))
    nll = optax.softmax_cross_entropy_with_integer_labels(
        logits[np.arange(len(pieces)), last], np.asarray(targets))
    assert record["documents"] and record["tokens"] == len(pieces)
    np.testing.assert_allclose(record["loss"], float(np.mean(nll)), rtol=1e-5)


def test_retrieval_examples_are_one_document_each():
  c = tiny_config("rope", data__corpus="passkey", data__seq_len=96)
  plain = data.make_batches(config_lib.resolve(c))
  packed = data.make_batches(config_lib.resolve(tiny_config(
      "rope", data__corpus="passkey", data__seq_len=96, data__documents=True)))
  for got, base in ((packed.train(2), plain.train(2)), (packed.valid(0), plain.valid(0))):
    assert len(got) == 5
    for a, b in zip(got[:3], base):
      np.testing.assert_array_equal(a, b)
    assert not got[3].any()
    np.testing.assert_array_equal(got[4], np.broadcast_to(np.arange(96), got[4].shape))


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize("fields,match", [
    ({"data__document_separator": 3}, r"data\.document_separator=3 must be a string"),
    ({"data__documents": "yes"}, r"data\.documents='yes' must be True or False"),
    ({"data__document_separator": "x", "data__corpus": "passkey"},
     r"data\.document_separator='x' is not valid with data\.corpus='passkey'"),
    ({"data__document_separator": "\ud800"}, r"data\.document_separator=.*UTF-8"),
    ({"model__position__randomize": True, "model__position__random_max_len": 64},
     r"model\.position\.randomize=True"),
    ({"model__attention__kind": "linear"}, r"model\.attention\.kind='linear'"),
])
def test_bad_document_settings_are_one_line_config_errors(fields, match):
  c = tiny_config("rope", data__documents=True).to_dict()   # a plain dict takes any type
  for key, value in fields.items():
    *parents, leaf = key.split("__")
    node = c
    for part in parents:
      node = node[part]
    node[leaf] = value
  with pytest.raises(ConfigError, match=match) as e:
    config_lib.resolve(c)
  assert "\n" not in str(e.value)


def test_a_separator_that_splits_nothing_is_refused_with_a_hint():
  cfg = config_lib.resolve(tiny_config("rope", data__documents=True,
                                       data__document_separator="\\n\\n"))
  with pytest.raises(ConfigError, match=r"data\.document_separator='\\\\n\\\\n' splits "
                                        r"data\.corpus='tinyshakespeare' nowhere.*bash") as e:
    data.make_batches(cfg)
  assert "\n" not in str(e.value)


def test_old_configs_resume_and_keep_their_identity(tmp_path):
  new = config_lib.resolve(tiny_config("rope"))
  old = config_lib.as_plain(new)
  for name in ("documents", "document_separator"):
    del old["data"][name]                        # written before the fields existed
  (tmp_path / "config.json").write_text(json.dumps(old))
  workdir_lib.write_or_check_config(new, tmp_path)          # resumes
  assert config_lib.run_identity(old) == config_lib.run_identity(new)
  assert config_lib.resolve(old).data.documents is False      # defaults filled in
  # a separator the run does not read changes nothing; with documents it is read
  idle = config_lib.resolve(tiny_config("rope", data__document_separator="\n"))
  assert config_lib.run_identity(idle) == config_lib.run_identity(new)
  on = config_lib.run_identity(config_lib.resolve(tiny_config("rope", data__documents=True)))
  assert on["data.documents"] is True and on["data.document_separator"] == ""
