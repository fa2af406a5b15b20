"""Seq2seq models and the task trainer: learning reverse, greedy decoding, randomized
positions, config errors, the sweep runner, the RNN language model."""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from attnlab.models import build_seq2seq
from attnlab import workdir as workdir_lib
from attnlab import ConfigError, config_lib, positional
from attnlab.engine import sweeps as sweep
from attnlab.engine import tasks as tasks_train
from attnlab.data import tasks
from attnlab.models import rnn as rnn_lib
from attnlab.config_lib import load_config_file
from attnlab.engine.training import make_optimizer
from configs import bottleneck, seq2seq as seq2seq_configs
from helpers import set_fields


def small(preset="gru_bahdanau", **fields):
  c = seq2seq_configs.get_config(preset)
  c.model.d_model = 32
  c.model.num_layers = 1
  c.model.rnn.hidden = 32
  c.model.rnn.attention_dim = 32
  c.data.max_length = 8
  c.train.steps = 300
  c.train.warmup_steps = 20
  c.eval.lengths = (4, 8)
  c.eval.examples = 64
  return set_fields(c, **fields)


@pytest.mark.slow
def test_gru_bahdanau_learns_reverse_at_training_lengths(tmp_path):
  cfg, params = tasks_train.train(small(), tmp_path / "run", progress=False)
  records = tasks_train.evaluate(cfg, params)
  assert [r["eval_length"] for r in records] == [4, 8]
  assert all(r["seq_acc"] >= 0.95 for r in records), records


@pytest.mark.slow
def test_gru_bahdanau_reaches_95_percent_on_reverse_up_to_length_20(tmp_path):
  config = small(data__max_length=20, train__steps=600, eval__lengths=(10, 20), eval__examples=256,
                 model__rnn__hidden=64, model__rnn__attention_dim=64)
  cfg, params = tasks_train.train(config, tmp_path / "run", progress=False)
  assert all(r["seq_acc"] >= 0.95 for r in tasks_train.evaluate(cfg, params))


def test_score_counts_whole_sequences_and_tokens_including_eos():
  targets = np.array([[5, 6, tasks.EOS, 0], [7, tasks.EOS, 0, 0]])
  preds = np.array([[5, 6, tasks.EOS, 9], [7, 7, 3, 3]])   # padding positions are not scored
  seq, tok = tasks_train.score(preds, targets)
  np.testing.assert_array_equal(seq, [True, False])
  np.testing.assert_allclose(tok, [1.0, 0.5])


@pytest.mark.slow
@pytest.mark.parametrize("preset,rnn", [("lstm", {}), ("gru_luong", {"luong_score": "general"}),
                                        ("transformer", {})])
def test_greedy_decoding_equals_argmax_under_teacher_forcing_of_its_own_output(preset, rnn):
  c = small(preset)
  for k, v in rnn.items():
    c.model.rnn[k] = v
  cfg = tasks_train.resolve(c)
  model = build_seq2seq(cfg.model)
  batch = tasks.train_batch("reverse", 6, 8, seed=0, step=0)
  params = jax.jit(model.init)(jax.random.PRNGKey(1), batch["src"], batch["tgt_in"])["params"]
  out = tasks_train.make_generate(model)(params, batch["src"], 9)
  fed = jnp.concatenate([jnp.full((6, 1), tasks.BOS), out[:, :-1]], 1)
  logits = jax.jit(model.apply)({"params": params}, batch["src"], fed)
  np.testing.assert_array_equal(jnp.argmax(logits, -1), out)


@pytest.mark.slow
def test_randomized_positions_are_sorted_random_subsets_in_the_train_step():
  cfg = tasks_train.resolve(small("transformer", model__position__kind="sinusoidal",
                                  model__position__randomize=True,
                                  model__position__random_max_len=64))
  model = build_seq2seq(cfg.model)
  tx = make_optimizer(cfg.train)
  batch = tasks.train_batch("reverse", 4, 8, seed=0, step=0)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), batch["src"], batch["tgt_in"])["params"]
  key = jax.random.fold_in(jax.random.PRNGKey(cfg.train.seed), 0)
  src_pos = positional.randomized_positions(jax.random.fold_in(key, 1), 8, 64)
  tgt_pos = positional.randomized_positions(jax.random.fold_in(key, 2), 9, 64)
  apply = jax.jit(model.apply)

  def loss(src_p, tgt_p):
    return tasks_train.sequence_loss(apply({"params": params}, batch["src"], batch["tgt_in"],
                                           src_p, tgt_p), batch["tgt_out"])

  expected = loss(jnp.broadcast_to(src_pos, (4, 8)), jnp.broadcast_to(tgt_pos, (4, 9)))
  default = loss(None, None)
  state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}
  _, got = tasks_train.make_train_step(model, tx, cfg)(state, batch)
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  assert not np.allclose(got, default)                     # not the default 0..n-1
  assert np.all(np.diff(np.asarray(src_pos)) > 0) and int(src_pos[-1]) < 64


@pytest.mark.parametrize("fields,message", [
    ({"model__rnn__attention": "additive"},
     r"model.rnn.attention='additive' is not valid; valid: none, bahdanau, luong"),
    ({"model__rnn__luong_score": "cosine"},
     r"model.rnn.luong_score='cosine' is not valid; valid: concat, dot, general"),
    ({"model__arch": "cnn"}, r"model.arch='cnn' is not valid; valid: rnn, transformer"),
    ({"data__task": "reverse_string"}, r"data.task='reverse_string' is not valid; valid: .*reverse"),
    ({"data__task": "binary_addition", "data__max_length": 2},
     r"data.max_length \(task 'binary_addition'\)=2 must be an integer >= 3"),
    ({"model__arch": "transformer", "model__position__kind": "t5", "model__position__randomize": True},
     r"model.position.kind \(with model.position.randomize=True\)='t5' is not valid; valid: "
     r"alibi, learned, rope, sinusoidal"),
    ({"model__arch": "transformer", "model__position__randomize": True,
      "model__position__random_max_len": 5},
     r"model.position.random_max_len=5 must be an integer >= 9, the longest training sequence"),
    ({"model__arch": "transformer", "model__position__kind": "learned", "model__position__max_len": 8},
     r"model.position.max_len=8 is shorter than the longest sequence \(9"),
])
def test_bad_config_names_field_value_and_valid_choices(fields, message):
  with pytest.raises(ConfigError, match=message):
    tasks_train.resolve(small(**fields))


def tiny_sweep():
  c = bottleneck.get_config()
  c.model.rnn.hidden = 16
  c.model.rnn.attention_dim = 16
  c.model.rnn.embed_dim = 8
  c.data.max_length = 6
  c.train.steps = 4
  c.train.warmup_steps = 1
  c.eval.lengths = (3, 9)
  c.eval.examples = 16
  c.sweep.tasks = ("copy",)
  c.sweep.variants = {"luong": {"model": {"rnn": {"attention": "luong"}}}}
  return c


@pytest.mark.slow
def test_task_sweep_results_equal_direct_evaluation(tmp_path):
  records = sweep.run_sweep(tiny_sweep(), tmp_path, progress=False)
  assert [(r["variant"], r["task"], r["eval_length"]) for r in records] == [
      ("luong", "copy", 3), ("luong", "copy", 9)]
  for name in ("luong",):
    config = tiny_sweep()
    config.data.task = "copy"
    config_lib.merge_overrides(config, config.sweep.variants[name], "v")
    del config["sweep"]
    cfg, params = tasks_train.train(config, tmp_path / "copy" / name, progress=False)  # reloads
    direct = tasks_train.evaluate(cfg, params)
    got = [r for r in records if r["variant"] == name]
    assert [r["seq_acc"] for r in got] == [r["seq_acc"] for r in direct]
    assert [r["token_acc"] for r in got] == [r["token_acc"] for r in direct]
  assert json.loads((tmp_path / "results.json").read_text())["records"] == records
  assert "| variant | params | train s | n=3 | n=9* |" in (tmp_path / "results.md").read_text()
  assert (tmp_path / "results.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_task_sweep_entries_fail_before_training(tmp_path):
  config = tiny_sweep()
  config.sweep.variants = {"ok": {"model": {"rnn": {"attention": "none"}}},
                           "bad": {"model": {"rnn": {"cell": "rnn_tanh"}}}}
  with pytest.raises(ConfigError, match=r"sweep.variants.bad \(task 'copy'\): model.rnn.cell="
                                        r"'rnn_tanh' is not valid; valid: gru, lstm"):
    sweep.run_sweep(config, tmp_path, progress=False)
  config = tiny_sweep()
  config.sweep.tasks = ("copy", "revers")
  with pytest.raises(ConfigError, match=r"sweep.tasks entry='revers' is not valid"):
    sweep.run_sweep(config, tmp_path, progress=False)
  config.sweep.runner = "seq"
  with pytest.raises(ConfigError, match=r"sweep.runner='seq' is not valid; valid names: .*lm.*tasks"):
    sweep.run_sweep(config, tmp_path, progress=False)
  assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_rnn_language_model_is_causal(cell):
  cfg = ml_collections.FrozenConfigDict({"vocab_size": 11, "num_layers": 2, "rnn": {
      "cell": cell, "hidden": 8, "embed_dim": 4}})
  model = rnn_lib.RNNLM(cfg)
  tokens = np.random.default_rng(0).integers(0, 11, (2, 9))
  params = jax.jit(model.init)(jax.random.PRNGKey(0), tokens)
  apply = jax.jit(model.apply)
  logits = apply(params, tokens)
  changed = tokens.copy()
  changed[:, 5:] = (changed[:, 5:] + 1) % 11                   # change only the future of t=4
  logits2 = apply(params, changed)
  np.testing.assert_allclose(logits2[:, :5], logits[:, :5], atol=1e-6)
  assert not np.allclose(logits2[:, 5:], logits[:, 5:])


@pytest.mark.slow
def test_rnn_lm_preset_trains_and_evaluates_through_the_lm_trainer(tmp_path):
  from helpers import tiny_config
  from attnlab import data
  from attnlab.engine import evaluation as evaluate
  from attnlab.engine import training as train
  from attnlab.models import RNNLM
  config = tiny_config("rope")
  lm = load_config_file("configs/rnn_lm.py")
  config.model.arch, config.model.rnn = lm.model.arch, lm.model.rnn
  config.model.position.kind = "none"
  config.model.rnn.hidden, config.model.rnn.embed_dim = 16, 8
  config.train.steps = 10
  train.train_and_evaluate(config, tmp_path, progress=False)
  cfg, params, step = workdir_lib.restore_params(tmp_path)
  assert step == 10 and set(params) == {"embed", "cell_0", "cell_1", "logits"}
  tokens = data.load_corpus(cfg.data).valid[:257]
  got = evaluate.evaluate_lengths(cfg, params, tokens, [64], progress=False)[0]["loss"]
  inputs, targets = data.non_overlapping_windows(tokens, 64)
  logits = np.asarray(RNNLM(cfg.model).apply({"params": params}, inputs), np.float64)
  logp = logits - logits.max(-1, keepdims=True)
  logp -= np.log(np.exp(logp).sum(-1, keepdims=True))                 # numpy log-softmax
  expected = -np.take_along_axis(logp, targets[..., None], -1).mean()
  np.testing.assert_allclose(got, expected, rtol=1e-5)


# ----------------------------------------------------------------------------- the shared layer


def _transformer(**fields):
  cfg = tasks_train.resolve(small("transformer", **fields))
  model = build_seq2seq(cfg.model)
  batch = tasks.train_batch("reverse", 3, 8, seed=0, step=0)
  params = jax.jit(model.init)(jax.random.PRNGKey(2), batch["src"], batch["tgt_in"])["params"]
  return cfg, model, params, batch


def test_encoder_decoder_uses_the_language_models_attention_layer():
  """GQA, a sliding-window decoder pattern and the impl axis reach the seq2seq Transformer
  through the one attention layer (``models.transformer.SelfAttention``)."""
  fields = dict(model__attention__num_kv_heads=2, model__attention__pattern="sliding_window",
                model__attention__window=2)
  cfg, model, params, batch = _transformer(**fields)
  layer = params["decoder_0"]
  heads, head_dim = 4, cfg.model.d_model // 4
  # self-attention: one fused q|k|v projection with 2 kv heads; cross: query + key_value
  assert layer["self_attention"]["qkv"]["kernel"].shape == (cfg.model.d_model,
                                                            (heads + 2 * 2) * head_dim)
  assert layer["cross_attention"]["key_value"]["kernel"].shape == (cfg.model.d_model,
                                                                   2 * 2 * head_dim)
  logits = {impl: np.asarray(jax.jit(build_seq2seq(tasks_train.resolve(small(
      "transformer", model__attention__impl=impl, **fields)).model).apply)(
          {"params": params}, batch["src"], batch["tgt_in"]))
            for impl in ("reference", "blockwise", "xla")}
  np.testing.assert_allclose(logits["blockwise"], logits["reference"], rtol=2e-5, atol=2e-5)
  np.testing.assert_allclose(logits["xla"], logits["reference"], rtol=2e-5, atol=2e-5)
  # the decoder's window: output t does not depend on target inputs before t - window
  # (one decoder block; the encoder and cross-attention do not see the targets)
  changed = np.asarray(batch["tgt_in"]).copy()
  changed[:, 0] = (changed[:, 0] + 1) % 10 + 3
  apply = jax.jit(model.apply)
  a = np.asarray(apply({"params": params}, batch["src"], batch["tgt_in"]))
  b = np.asarray(apply({"params": params}, batch["src"], changed))
  assert np.abs(a[:, :3] - b[:, :3]).max() > 1e-4          # positions 0..2 see target 0
  np.testing.assert_allclose(a[:, 3:], b[:, 3:], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fields,match", [
    ({"model__attention__num_kv_heads": 3}, r"model.attention.num_kv_heads=3 must divide"),
    ({"model__attention__pattern": "full"}, r"model.attention.pattern='full' lets a token see"),
    ({"model__attention__kind": "performer"},
     r"model.attention.kind='performer' cannot mask the source's padding"),
    ({"model__attention__window": 0}, None),            # a field the causal pattern does not read
    ({"model__attention__pattern": "sliding_window", "model__attention__window": 0},
     r"model.attention.window=0 must be an integer >= 1"),
    ({"model__mlp": "relu2"}, r"model.mlp='relu2' is not valid; valid: geglu, gelu, gelu_exact, moe, none"),
])
def test_encoder_decoder_configs_get_the_language_models_validation(fields, match):
  config = small("transformer", **fields)
  if match is None:
    tasks_train.resolve(config)
    return
  with pytest.raises(ConfigError, match=match):
    tasks_train.resolve(config)
