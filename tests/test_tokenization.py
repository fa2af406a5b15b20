"""Tokenizers by data.tokenizer: the trained byte-level BPE round-trips any text, and a
from-scratch run with it reports bits per byte from the bytes its tokens stand for."""

import math
import pathlib

import numpy as np
import pytest

from attnlab import config_lib, data
from attnlab.engine import training
from attnlab.registry import ConfigError
from attnlab.workdir import read_metrics

ROOT = pathlib.Path(__file__).parents[1]
UNSEEN = "Ünïcödé that Shakespeare never wrote: 東京, 🙂, tabs\tand\r\nnewlines  \x00 end"


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
  text = (data.CORPUS_DIR / "tinyshakespeare.txt").read_text()[:200_000]
  return data.train_bpe(text, 300, tmp_path_factory.mktemp("bpe") / "tokenizer.json")


def test_trained_bpe_round_trips_unseen_text_exactly(bpe):
  assert bpe.vocab_size == 300
  for text in (UNSEEN, "ROMEO:\nBut soft, what light", ""):
    ids, counts = bpe.encode_with_bytes(text)
    assert bpe.decode(ids) == text
    assert counts.sum() == len(text.encode("utf-8"))
  ids = bpe.encode("the king and the queen")
  assert len(ids) < len("the king and the queen")        # merges learned from the corpus


def test_bad_vocab_size_and_tokenizer_path_are_one_line_errors(tmp_path):
  with pytest.raises(ConfigError, match=r"--vocab_size=10 must be an integer >= 256"):
    data.train_bpe("abc", 10, tmp_path / "t.json")
  cfg = config_lib.load_module(ROOT / "configs" / "lm.py").get_config("rope")
  cfg.data.tokenizer = str(tmp_path / "missing.json")
  with pytest.raises(ConfigError, match=r"data.tokenizer='.*missing.json' is not valid; valid: "
                                        r"'bytes' or the path of a tokenizer.json file"):
    config_lib.resolve(cfg)


def test_vocab_size_must_hold_the_tokenizer(bpe):
  cfg = config_lib.load_module(ROOT / "configs" / "lm.py").get_config("rope")
  cfg.data.tokenizer = bpe.path
  with pytest.raises(ConfigError, match=r"model.vocab_size=256 must be >= 300: data.tokenizer="):
    config_lib.resolve(cfg)


def test_a_bpe_run_reports_bits_per_byte_of_its_text(bpe, tmp_path):
  cfg = config_lib.load_module(ROOT / "configs" / "lm.py").get_config("baby_gpt")
  cfg.data.tokenizer = bpe.path
  cfg.model.vocab_size = 300
  cfg.model.num_layers, cfg.model.d_model = 1, 32
  cfg.train.steps = cfg.train.eval_every = cfg.train.checkpoint_every = 2
  cfg.train.eval_batches = 2
  training.train_and_evaluate(config_lib.resolve(cfg), tmp_path / "run", progress=False)
  valid = [r for r in read_metrics(tmp_path / "run") if r.get("split") == "valid"][-1]
  raw = (data.CORPUS_DIR / "tinyshakespeare.txt").read_bytes()
  valid_text = raw[int(len(raw) * (1 - cfg.data.valid_fraction)):].decode("utf-8")
  bytes_per_token = len(valid_text.encode("utf-8")) / len(bpe.encode(valid_text))
  assert bytes_per_token > 1.2          # 44 merges: tokens stand for more than a byte
  np.testing.assert_allclose(valid["bpb"], valid["loss"] / (math.log(2) * bytes_per_token),
                             rtol=1e-6)


def test_a_relative_tokenizer_path_stays_relative_to_where_the_run_started(bpe, tmp_path,
                                                                          monkeypatch):
  import json
  import shutil
  from attnlab import workdir as workdir_lib
  monkeypatch.chdir(tmp_path)
  shutil.copyfile(bpe.path, tmp_path / "bpe.json")
  cfg = config_lib.load_module(ROOT / "configs" / "lm.py").get_config("rope")
  cfg.data.tokenizer, cfg.model.vocab_size = "bpe.json", 300
  (tmp_path / "run").mkdir()
  (tmp_path / "run" / "config.json").write_text(json.dumps(cfg.to_dict()))
  assert workdir_lib.load_config(tmp_path / "run").data.tokenizer == "bpe.json"
  assert config_lib.resolve(workdir_lib.load_config(tmp_path / "run")).model.vocab_size == 300


def test_a_saved_tokenizer_with_truncation_still_encodes_whole_texts(bpe, tmp_path):
  import tokenizers
  tok = tokenizers.Tokenizer.from_file(bpe.path)
  tok.enable_truncation(max_length=8)
  tok.save(str(tmp_path / "truncating.json"))
  text = "ROMEO:\nBut soft, what light through yonder window breaks?\n" * 4
  ids, counts = data.HFTokenizer(tmp_path / "truncating.json").encode_with_bytes(text)
  assert len(ids) > 8 and counts.sum() == len(text.encode())


def test_evaluation_tokenizes_only_the_split_it_scores(bpe):
  cfg = config_lib.load_module(ROOT / "configs" / "lm.py").get_config("baby_gpt")
  cfg.data.tokenizer = bpe.path
  both, valid_only = data.load_corpus(cfg.data), data.load_corpus(cfg.data, splits=("valid",))
  assert len(valid_only.train) == 0 and len(both.train) > 0
  assert np.array_equal(valid_only.valid, both.valid)
  assert np.array_equal(valid_only.token_bytes("valid"), both.token_bytes("valid"))
