"""Importing Hugging Face checkpoints (attnlab.engine.hf_import).

The oracle is ``transformers`` itself: tests/data/hf/<family>/ holds a tiny random
checkpoint of each family with the logits and the cached greedy continuation that
``transformers`` computed for it (scripts/make_hf_fixtures.py). Neither torch nor the
network is needed here.
"""

import json
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from attnlab import config_lib, data
from attnlab.engine import evaluation, hf_import
from attnlab.inference import generation
from attnlab.models import build_lm
from attnlab.registry import ConfigError
from attnlab.workdir import restore_params

FIXTURES = pathlib.Path(__file__).parent / "data" / "hf"
FAMILIES = tuple(hf_import.FAMILIES.names())   # every registered family, no list to keep
# the same families under other settings (scripts/make_hf_fixtures.py EXTRA)
VARIANT_CHECKPOINTS = ("deepseek_v3_dense",)
ROOT = pathlib.Path(__file__).parents[1]


def test_every_registered_family_has_a_fixture_tested_here():
  for family in FAMILIES:
    assert (FIXTURES / family / "reference.npz").is_file(), family


def base_config():
  c = config_lib.load_module(ROOT / "configs" / "lm.py").base_config()
  c.data.corpus = "tinyshakespeare"
  c.eval.max_tokens = 512
  c.eval.batch_tokens = 1024
  return c


def reference(family):
  return np.load(FIXTURES / family / "reference.npz")


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
  """{family: (resolved config, params)}, each imported into a workdir and read back."""
  root = tmp_path_factory.mktemp("imported")
  out = {}
  for family in FAMILIES + VARIANT_CHECKPOINTS:
    hf_import.import_checkpoint(FIXTURES / family, root / family, base_config())
    cfg, params, step = restore_params(root / family)
    assert step == 0
    out[family] = (cfg, params, root / family)
  return out


@pytest.mark.parametrize("family", FAMILIES + VARIANT_CHECKPOINTS)
def test_logits_match_transformers(imported, family):
  cfg, params, _ = imported[family]
  ref = reference(family)
  logits = build_lm(cfg.model).apply({"params": params}, ref["ids"][None])[0]
  np.testing.assert_allclose(np.asarray(logits), ref["logits"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", FAMILIES + VARIANT_CHECKPOINTS)
def test_cached_greedy_decoding_reproduces_transformers(imported, family):
  cfg, params, _ = imported[family]
  ref = reference(family)
  result = generation.generate(cfg, params, [ref["prompt"]], len(ref["continuation"]))
  np.testing.assert_array_equal(result.tokens[0], ref["continuation"])


def test_mistral_window_and_qwen2_biases_are_mapped(imported):
  """Hugging Face's window W lets a query see W keys, itself included (i - j < W)."""
  mistral = imported["mistral"][0].model
  hf = json.loads((FIXTURES / "mistral" / "config.json").read_text())
  assert mistral.attention.pattern == "sliding_window"
  assert mistral.attention.window == hf["sliding_window"] - 1
  qwen = imported["qwen2"][1]["block_0"]["attention"]
  assert "bias" in qwen["qkv"] and "bias" not in qwen["out"]


def test_bfloat16_weights(tmp_path):
  """--dtype=bfloat16 keeps the weights in bfloat16; the logits stay near float32's."""
  cfg, params = hf_import.convert(FIXTURES / "llama", base_config(), dtype="bfloat16")
  assert {str(x.dtype) for x in jax.tree.leaves(params)} == {"bfloat16"}
  cfg = config_lib.resolve(cfg)
  ref = reference("llama")
  logits = np.asarray(build_lm(cfg.model).apply({"params": params}, ref["ids"][None])[0])
  scale = np.abs(ref["logits"]).max()
  assert np.abs(logits - ref["logits"]).max() < 0.05 * scale
  assert (logits.argmax(-1) == ref["logits"].argmax(-1)).mean() > 0.9


def _copy(family, tmp_path):
  return pathlib.Path(shutil.copytree(FIXTURES / family, tmp_path / family))


def test_sharded_checkpoint_imports_the_same_weights(tmp_path):
  from safetensors.numpy import load_file, save_file
  src = _copy("llama", tmp_path)
  tensors = load_file(src / "model.safetensors")
  names = sorted(tensors)
  shards = {"model-00001-of-00002.safetensors": names[::2],
            "model-00002-of-00002.safetensors": names[1::2]}
  for shard, keys in shards.items():
    save_file({k: tensors[k] for k in keys}, src / shard)
  (src / "model.safetensors").unlink()
  (src / "model.safetensors.index.json").write_text(json.dumps(
      {"metadata": {}, "weight_map": {k: s for s, keys in shards.items() for k in keys}}))
  _, sharded = hf_import.convert(src, base_config())
  _, whole = hf_import.convert(FIXTURES / "llama", base_config())
  for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(whole)):
    np.testing.assert_array_equal(a, b)


def test_missing_tensor_is_named(tmp_path):
  from safetensors.numpy import load_file, save_file
  src = _copy("llama", tmp_path)
  tensors = load_file(src / "model.safetensors")
  del tensors["model.layers.1.mlp.up_proj.weight"]
  save_file(tensors, src / "model.safetensors")
  with pytest.raises(ConfigError, match=r"lacks tensor 'model\.layers\.1\.mlp\.up_proj\.weight'"):
    hf_import.convert(src, base_config())


def test_unknown_architecture_is_named(tmp_path):
  src = _copy("llama", tmp_path)
  hf = json.loads((src / "config.json").read_text())
  hf.update(model_type="mamba", architectures=["MambaForCausalLM"])
  (src / "config.json").write_text(json.dumps(hf))
  with pytest.raises(ConfigError, match=r"model_type 'mamba'.*MambaForCausalLM.*supported: .*llama"):
    hf_import.convert(src, base_config())


def test_mismatched_shape_is_named(tmp_path):
  src = _copy("llama", tmp_path)
  hf = json.loads((src / "config.json").read_text())
  hf["intermediate_size"] = 44
  (src / "config.json").write_text(json.dumps(hf))
  with pytest.raises(ConfigError, match=r"gate_proj\.weight' has shape \(40, 32\).*\(44, 32\)"):
    hf_import.convert(src, base_config())


def test_cli_reports_a_bad_checkpoint_in_one_line(tmp_path):
  src = _copy("gpt2", tmp_path)
  (src / "tokenizer.json").unlink()
  result = subprocess.run(
      [sys.executable, "-m", "attnlab.import_hf", f"--checkpoint={src}",
       f"--workdir={tmp_path / 'w'}"], capture_output=True, text=True, cwd=ROOT,
      env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"}, timeout=300)
  assert result.returncode == 2, result.stderr
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert lines == [f"error: --checkpoint={str(src)!r} has no tokenizer.json"]
  assert not (tmp_path / "w").exists()      # nothing written


# ----------------------------------------------------------------------------- tokenizer


TEXTS = ("Attention is all you need.", "naïve café — 東京 🙂\n\ttabs  and  spaces\r\n",
         "def f(x):\n    return x ** 2  # émoji 🚀🚀")


@pytest.mark.parametrize("text", TEXTS)
def test_tokenizer_json_round_trips_and_counts_bytes(text):
  tok = data.HFTokenizer(FIXTURES / "gpt2" / "tokenizer.json")
  ids, counts = tok.encode_with_bytes(text)
  assert tok.decode(ids) == text
  assert np.array_equal(ids, tok.encode(text))
  assert counts.sum() == len(text.encode("utf-8"))
  assert len(ids) < len(text.encode("utf-8"))   # merges happened


def _direct_nats(model, params, tokens, length, windows):
  """Summed next-token nats of ``windows`` consecutive windows, in float64 numpy."""
  total = 0.0
  for w in range(windows):
    chunk = tokens[w * length:(w + 1) * length + 1]
    logits = np.asarray(model.apply({"params": params}, chunk[None, :-1].astype(np.int32))[0],
                        np.float64)
    logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    total += float((logz - logits[np.arange(length), chunk[1:]]).sum())
  return total


@pytest.mark.parametrize("family", ["llama", "bloom"])
def test_evaluation_per_token_and_per_byte_agree_with_a_direct_computation(imported, family):
  cfg, params, _ = imported[family]
  tok = data.get_tokenizer(cfg.data)
  corpus = data.load_corpus(cfg.data)
  length, windows = 32, 4
  record, = evaluation.evaluate_lengths(cfg, params, corpus.valid, [length],
                                        max_tokens=length * windows, progress=False,
                                        token_bytes=corpus.token_bytes("valid"))
  nats = _direct_nats(build_lm(cfg.model), params, corpus.valid, length, windows)
  targets = np.concatenate([corpus.valid[w * length + 1:(w + 1) * length + 1]
                            for w in range(windows)])
  scored_bytes = sum(len(tok.decode([t]).encode("utf-8")) for t in targets)  # ASCII text
  assert record["tokens"] == length * windows and record["bytes"] == scored_bytes
  np.testing.assert_allclose(record["loss"], nats / (length * windows), rtol=1e-5)
  np.testing.assert_allclose(record["bpb"], nats / scored_bytes / np.log(2), rtol=1e-5)
  assert scored_bytes > length * windows      # BPE tokens stand for more than a byte


def test_extrapolation_evaluator_applies_each_rope_scaling(imported, tmp_path):
  _, _, workdir = imported["llama"]
  scalings = ["none", "linear", "ntk", "dynamic_ntk", "yarn", "llama3"]
  records = evaluation.evaluate_workdir(workdir, [64, 128], out=tmp_path, progress=False,
                                        rope_scalings=scalings)
  by = {(r["variant"], r["eval_length"]): r for r in records}
  assert set(by) == {(s, n) for s in scalings for n in (64, 128)}
  for s in scalings:   # at the trained context every scaling is the identity (factor 1)
    np.testing.assert_allclose(by[(s, 64)]["loss"], by[("none", 64)]["loss"], rtol=1e-6)
    assert np.isfinite(by[(s, 128)]["loss"])
  assert by[("linear", 128)]["scale_factor"] == 2.0
  assert by[("dynamic_ntk", 128)]["scale_factor"] == 1.0
  for s in ("linear", "ntk", "yarn", "llama3"):   # beyond it they change the model
    # by more than rounding (~1e-7); this near-uniform model's loss moves 2e-6 (yarn) to 8e-6
    assert by[(s, 128)]["loss"] != pytest.approx(by[("none", 128)]["loss"], rel=5e-7)
  assert (tmp_path / "eval.md").read_text().startswith("| variant | L=64 | L=128 |")


def test_extrapolation_evaluator_runs_bloom_alibi_and_refuses_rope_scalings(imported, tmp_path):
  cfg, params, workdir = imported["bloom"]
  records = evaluation.evaluate_workdir(workdir, [32, 64], out=tmp_path, progress=False)
  assert [r["eval_length"] for r in records] == [32, 64]
  corpus = data.load_corpus(cfg.data)
  windows = min(512 // 64, (len(corpus.valid) - 1) // 64)
  nats = _direct_nats(build_lm(cfg.model), params, corpus.valid, 64, windows)
  np.testing.assert_allclose(records[1]["loss"], nats / (64 * windows), rtol=1e-5)
  with pytest.raises(ConfigError, match="model.position.kind='alibi' has no RoPE"):
    evaluation.evaluate_workdir(workdir, [64], out=tmp_path, rope_scalings=["yarn"])


def test_evaluation_only_sweep_scores_imported_runs_at_their_own_context(imported, tmp_path):
  from attnlab.engine import sweeps
  for family in ("llama", "bloom"):
    shutil.copytree(imported[family][2], tmp_path / family)
  config = config_lib.load_module(ROOT / "configs" / "extrapolation.py").get_config("rope")
  config.sweep.train = False
  config.sweep.factors = (1,)
  config.sweep.protocols = ("non_overlapping",)
  config.eval.max_tokens = 2048
  records = sweeps.run_sweep(config, tmp_path, progress=False)
  by = {r["variant"]: r for r in records}
  assert by["llama"]["eval_length"] == 64 and by["bloom"]["eval_length"] == 2048
  cfg, params, _ = imported["llama"]
  corpus = data.load_corpus(cfg.data)
  direct, = evaluation.evaluate_lengths(cfg, params, corpus.valid, [64], max_tokens=2048,
                                        batch_tokens=config.eval.batch_tokens, progress=False,
                                        token_bytes=corpus.token_bytes("valid"))
  # exact: the sweep calls evaluation.evaluate_lengths with these arguments (the sweep's
  # evaluation settings) on the values it restores from the workdir, so the same program
  # scores the same windows in the same batches
  assert by["llama"]["loss"] == direct["loss"] and by["llama"]["bytes"] == direct["bytes"]
  assert "perplexity per token (bits per byte)" in (tmp_path / "results.md").read_text()
  with pytest.raises(ConfigError, match="holds none"):
    sweeps.run_sweep(config, tmp_path / "empty", progress=False)


def test_an_imported_workdir_can_be_moved(imported, tmp_path):
  _, params, workdir = imported["gpt2"]
  moved = pathlib.Path(shutil.copytree(workdir, tmp_path / "elsewhere"))
  assert json.loads((moved / "config.json").read_text())["data"]["tokenizer"] == "tokenizer.json"
  cfg, moved_params, _ = restore_params(moved)
  assert cfg.data.tokenizer == str(moved / "tokenizer.json")
  for a, b in zip(jax.tree.leaves(moved_params), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("rope_type", ["linear", "dynamic", "yarn", "llama3"])
def test_rope_scalings_match_transformers(tmp_path, rope_type):
  """The LLaMA weights under each Hugging Face rope_scaling type, on 24 tokens beyond the
  original context of 16: attnlab's scaled frequencies give transformers' logits."""
  src = _copy("llama", tmp_path)
  variant = FIXTURES / "llama_rope" / rope_type
  shutil.copyfile(variant / "config.json", src / "config.json")
  cfg, params = hf_import.convert(src, base_config())
  cfg = config_lib.resolve(cfg)
  ref = np.load(variant / "reference.npz")
  logits = build_lm(cfg.model).apply({"params": params}, ref["ids"][None])[0]
  np.testing.assert_allclose(np.asarray(logits), ref["logits"], atol=1e-4, rtol=0)
  unscaled = np.load(FIXTURES / "llama" / "reference.npz")["logits"]
  assert np.abs(unscaled - ref["logits"]).max() > 1e-2      # the scaling changes the model


def test_sliding_windows_follow_transformers_rules():
  windows = hf_import._sliding_layers   # noqa: SLF001 - the rule itself, on config dicts
  qwen = dict(model_type="qwen2", num_hidden_layers=4, use_sliding_window=True,
              sliding_window=4096)
  assert windows({**qwen, "max_window_layers": 4}, "Qwen2") == [None] * 4   # no layer >= 4
  assert windows({**qwen, "max_window_layers": 0}, "Qwen2") == [4096] * 4    # every layer
  assert windows({**qwen, "use_sliding_window": False, "max_window_layers": 0},
                 "Qwen2") == [None] * 4
  assert windows({**qwen, "max_window_layers": 2}, "Qwen2") == [None, None, 4096, 4096]
  mistral = dict(model_type="mistral", num_hidden_layers=2)
  assert windows(mistral, "Mistral") == [4096] * 2                          # MistralConfig default
  assert windows({**mistral, "sliding_window": None}, "Mistral") == [None] * 2
  assert windows(dict(model_type="llama", num_hidden_layers=2, sliding_window=8),
                 "LLaMA") == [None] * 2
  gemma3 = dict(model_type="gemma3_text", num_hidden_layers=8, sliding_window=16)  # no layer_types
  assert windows(gemma3, "Gemma-3") == [16] * 5 + [None] + [16] * 2
  with pytest.raises(ConfigError, match="layer_types"):
    windows({**gemma3, "layer_types": ["sliding_attention"]}, "Gemma-3")


def test_per_layer_windows_and_rope_become_the_shortest_repeating_schedule():
  schedule = hf_import._schedule   # noqa: SLF001 - the rule itself
  # SmolLM3 with windows on alternate layers and RoPE off on every third (checked once
  # against transformers on such a checkpoint: logits within 5e-7, same greedy tokens)
  assert schedule({}, "x", [6, None] * 3, [True, True, False] * 2) == {
      "layer_types": "local,global,local_nope,global,local,nope", "local_window": 5}
  assert schedule({}, "x", [4] * 5 + [None] + [4] * 2, [True] * 8) == {
      "layer_types": "local*5,global", "local_window": 3}            # the unit wraps
  assert schedule({}, "x", [5] * 3, [True] * 3) == {
      "attention": {"pattern": "sliding_window", "window": 4}}      # every layer: the pattern
  assert schedule({}, "x", [None] * 4, [True] * 3 + [False]) == {"layer_types": "global*3,nope"}
  assert schedule({}, "x", [None] * 2, [True] * 2) == {}
  with pytest.raises(ConfigError, match="different sizes"):
    schedule({}, "x", [4, 8], [True, True])


@pytest.mark.parametrize("family,layer_types,extra", [
    ("qwen3", "global*2,local*2", dict(local_window=5, head_dim=16)),
    ("gemma2", "local,global", dict(local_window=4, head_dim=16, logit_softcap=3.0,
                                    post_norms=True, embed_scale=True, mlp="geglu")),
    ("gemma3_text", "local*5,global", dict(local_window=3, local_rope_theta=1e4, head_dim=16)),
    ("smollm3", "global*3,nope", dict(head_dim=0)),
    ("gpt_oss", "local,global", dict(local_window=3, head_dim=16, mlp="moe", moe_experts=4,
                                     moe_top_k=2, moe_router="softmax_topk",
                                     moe_expert="clamped_swiglu", moe_bias=True,
                                     moe_swiglu_limit=1.0)),
])
def test_current_families_map_their_schedules_and_mechanisms(imported, family, layer_types, extra):
  """What each config.json states becomes the declared field that implements it."""
  m = imported[family][0].model
  hf = json.loads((FIXTURES / family / "config.json").read_text())
  assert m.layer_types == layer_types
  for key, value in extra.items():
    assert m[key] == value, key
  assert m.attention.qk_norm == (family in ("qwen3", "gemma3_text"))
  if family.startswith("gemma"):
    np.testing.assert_allclose(m.attention.score_scale, hf["query_pre_attn_scalar"] ** -0.5)
    assert m.attention.softcap == (hf["attn_logit_softcapping"] or 0.0)
  assert m.attention.sink_logit == ("learned" if family == "gpt_oss" else "none")
  if family == "gpt_oss":   # YaRN without truncating the ramp's ends
    assert (m.position.scaling, m.position.scale_factor, m.position.original_max_len,
            m.position.yarn_truncate) == ("yarn", 4.0, 16, False)
  if family == "gemma3_text":   # the global layers' RoPE: base 1e6 with linear scaling
    assert (m.position.theta, m.position.scaling, m.position.scale_factor) == (1e6, "linear", 8.0)


def test_gemma3_with_attn_logit_softcapping_set_matches_transformers(tmp_path):
  """transformers' Gemma-3 stores attn_logit_softcapping but never applies it (Gemma-2
  does): the Gemma-3 weights under a config that sets it give transformers' logits."""
  variant = FIXTURES / "gemma3_text_variants" / "attn_softcap"
  src = _copy("gemma3_text", tmp_path)
  shutil.copyfile(variant / "config.json", src / "config.json")
  assert json.loads((src / "config.json").read_text())["attn_logit_softcapping"] == 4.0
  cfg, params = hf_import.convert(src, base_config())
  cfg = config_lib.resolve(cfg)
  assert cfg.model.attention.softcap == 0.0
  ref = np.load(variant / "reference.npz")
  logits = build_lm(cfg.model).apply({"params": params}, ref["ids"][None])[0]
  np.testing.assert_allclose(np.asarray(logits), ref["logits"], atol=1e-4, rtol=0)
  hf2 = json.loads((FIXTURES / "gemma2" / "config.json").read_text())
  assert hf_import.FAMILIES.get("gemma2").model(hf2)[0]["attention"]["softcap"] == 5.0


def test_a_five_to_one_schedule_caches_a_window_in_five_layers_of_six(imported):
  """attnlab.inference.memory reports the bytes the cache allocates: the local layers hold
  local_window + 1 slots, the global layers the whole context."""
  from attnlab.inference import memory
  m = imported["gemma3_text"][0].model      # 7 layers: local*5, global, local
  context, dh = 40, m.head_dim
  rows = memory.report(m, contexts=(context,))
  mha = rows[0]
  local = 6 * (m.local_window + 1)
  want = 2 * mha["num_kv_heads"] * dh * 4 * (local + 1 * context)
  assert mha["bytes@40"] == mha["allocated@40"] == want
  assert mha["bytes@40"] < mha["bytes_per_token"] * context
  assert "Layer schedule" in memory.markdown(rows, (context,))


def test_gpt_neox_without_rotary_pct_rotates_a_quarter_like_transformers():
  hf = json.loads((FIXTURES / "gpt_neox" / "config.json").read_text())
  hf.pop("rope_parameters")
  model, _ = hf_import.FAMILIES.get("gpt_neox").model(hf)
  assert model["position"]["rotary_fraction"] == 0.25


def test_a_tied_checkpoint_may_store_its_head_if_it_equals_the_embedding(tmp_path):
  from safetensors.numpy import load_file, save_file
  src = _copy("bloom", tmp_path)
  tensors = load_file(src / "model.safetensors")
  tensors["lm_head.weight"] = tensors["transformer.word_embeddings.weight"].copy()
  save_file(tensors, src / "model.safetensors")
  cfg, params = hf_import.convert(src, base_config())
  logits = build_lm(config_lib.resolve(cfg).model).apply(
      {"params": params}, reference("bloom")["ids"][None])[0]
  np.testing.assert_allclose(np.asarray(logits), reference("bloom")["logits"], atol=1e-4, rtol=0)
  tensors["lm_head.weight"][0, 0] += 1
  save_file(tensors, src / "model.safetensors")
  with pytest.raises(ConfigError, match="lm_head.weight differs from the token embedding"):
    hf_import.convert(src, base_config())


def test_deepseek_v3_maps_latent_attention_and_its_layers(imported):
  """MLA's ranks and head dims, the dense layers before first_k_dense_replace and the routed
  ones after it; the dense variant routes nowhere and has a full-rank query."""
  hf = json.loads((FIXTURES / "deepseek_v3" / "config.json").read_text())
  m = imported["deepseek_v3"][0].model
  a = m.attention
  assert (a.latent_rank, a.latent_query_rank, a.latent_rope_dim, m.head_dim) == (
      hf["kv_lora_rank"], hf["q_lora_rank"], hf["qk_rope_head_dim"], hf["qk_nope_head_dim"])
  assert (a.latent_value_dim or m.head_dim) == hf["v_head_dim"]
  assert m.mlp == "moe" and m.moe_first_dense == hf["first_k_dense_replace"]
  params = imported["deepseek_v3"][1]
  assert "router" in params["block_1"]["mlp"] and "router" not in params["block_0"]["mlp"]
  dense = imported["deepseek_v3_dense"][0].model
  assert dense.mlp == "swiglu" and dense.attention.latent_query_rank == 0


def test_phi3_prompt_is_longer_than_the_original_context(imported):
  """The fixture's prompt already exceeds original_max_position_embeddings: every call of
  the reference used LongRoPE's long factors."""
  m = imported["phi3"][0].model
  assert m.position.scaling == "longrope"
  assert len(reference("phi3")["prompt"]) > m.position.original_max_len


@pytest.mark.parametrize("use_cache", [True, False])
def test_phi3_generation_crossing_the_original_context_reproduces_transformers(tmp_path,
                                                                                use_cache):
  """The original context 3 tokens beyond the prompt: transformers' generate starts with the
  short factors and, at the crossing, recomputes the whole text with the long ones; attnlab
  re-reads the text into a fresh cache there (and without a cache runs each step on the text
  so far): the same tokens."""
  src = _copy("phi3", tmp_path)
  shutil.copy(FIXTURES / "phi3_crossing" / "config.json", src / "config.json")
  cfg, params = hf_import.convert(src, base_config())
  cfg = config_lib.resolve(cfg)
  ref = np.load(FIXTURES / "phi3_crossing" / "reference.npz")
  assert len(ref["prompt"]) < cfg.model.position.original_max_len < len(ref["prompt"]) + len(
      ref["continuation"])
  result = generation.generate(cfg, params, [ref["prompt"]], len(ref["continuation"]),
                               use_cache=use_cache)
  np.testing.assert_array_equal(result.tokens[0], ref["continuation"])
