"""Make the tiny random Hugging Face checkpoints that tests/test_import_hf.py imports.

  pip install torch transformers tokenizers safetensors
  python scripts/make_hf_fixtures.py --out tests/data/hf

For each family (GPT-2, GPT-NeoX, LLaMA, Mistral, Qwen2, BLOOM, and the current families
Qwen3, Gemma-2, Gemma-3 (text), SmolLM3, gpt-oss) it writes
``<out>/<family>/``: ``config.json`` and ``model.safetensors`` (``save_pretrained`` of a
randomly initialised ``transformers`` model), ``tokenizer.json`` (a byte-level BPE trained
here on a few paragraphs of this file's own text) and ``reference.npz``: the input ids, the
model's float32 logits for them, and the greedy continuation ``generate`` makes of a
prompt with its KV cache. The test suite reads these files and needs neither torch nor
the network. Qwen2's weights are stored in bfloat16 (the reference is computed from the
same rounded weights), GPT-NeoX's, Mistral's and BLOOM's in float16 and GPT-2's and
LLaMA's in float32; Gemma-3's in bfloat16. The current families' sliding windows (4 to 6
tokens) are shorter than prompt plus continuation, their soft-caps small enough to bend
the scores, and Gemma's query_pre_attn_scalar differs from head_dim, so a mechanism
imported wrongly changes the logits.

``--families=qwen3,gemma2`` remakes only those (the others' files stay as committed).

``<out>/gemma3_text_variants/<name>/`` holds a ``config.json`` that changes one setting of
the Gemma-3 checkpoint (``GEMMA3_VARIANTS``) and the logits ``transformers`` computes with
it. ``<out>/llama_rope/<type>/`` holds, for each Hugging Face RoPE scaling type (linear,
dynamic, yarn, llama3), a ``config.json`` that applies it to the LLaMA checkpoint's
weights and ``reference.npz`` with the logits ``transformers`` computes with it, on a text
longer than the scaling's original context.
"""

from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np

TEXT = (__doc__ or "") * 4 + """
Attention is all you need, they said; and then the sequences grew longer than the
models had ever seen. Position interpolation, NTK-aware scaling and YaRN stretch the
rotary frequencies; ALiBi simply penalises distance. A sink token soaks up attention
that has nowhere else to go.
"""
PROMPT = "Attention is all you need, they"
SCORED = "Position interpolation, NTK-aware scaling and YaRN stretch the rotary frequencies."
TOKENIZER_VOCAB = 280   # 256 byte-level symbols + 24 merges
MODEL_VOCAB = 288       # padded beyond the tokenizer, as released models often are
NEW_TOKENS = 12
# RoPE scalings on the LLaMA weights: original context 16, evaluated on 24 tokens
ROPE_VARIANTS = {
    "linear": dict(rope_type="linear", factor=4.0),
    "dynamic": dict(rope_type="dynamic", factor=2.0),
    "yarn": dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=16),
    "llama3": dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                   original_max_position_embeddings=16),
}
SCORED_TOKENS = 24
# The Gemma-3 weights under other settings: transformers' Gemma-3 stores
# attn_logit_softcapping but does not apply it
GEMMA3_VARIANTS = {"attn_softcap": {"attn_logit_softcapping": 4.0}}
STORAGE = {"qwen2": "bfloat16", "gpt_neox": "float16", "mistral": "float16", "bloom": "float16",
           "gemma3_text": "bfloat16"}


def tokenizer():
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=TOKENIZER_VOCAB, show_progress=False,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator([TEXT], trainer)
  return tok


def configs():
  import transformers as tf
  common = dict(vocab_size=MODEL_VOCAB)
  return {
      "gpt2": tf.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64, **common),
      "gpt_neox": tf.GPTNeoXConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                   intermediate_size=64, max_position_embeddings=64,
                                   rotary_pct=0.5, use_parallel_residual=True,
                                   tie_word_embeddings=False, **common),
      "llama": tf.LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=2, intermediate_size=40,
                              max_position_embeddings=64, rms_norm_eps=1e-5,
                              rope_theta=500.0, tie_word_embeddings=False, **common),
      "mistral": tf.MistralConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=1, intermediate_size=48,
                                  max_position_embeddings=64, sliding_window=8,
                                  tie_word_embeddings=False, **common),
      "qwen2": tf.Qwen2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=2, intermediate_size=48,
                              max_position_embeddings=64, tie_word_embeddings=True, **common),
      "bloom": tf.BloomConfig(hidden_size=32, n_layer=2, n_head=4, **common),
      # QK-norm, head_dim 16 != hidden / heads, sliding windows on the last two layers only
      "qwen3": tf.Qwen3Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                              num_key_value_heads=2, head_dim=16, intermediate_size=48,
                              max_position_embeddings=64, use_sliding_window=True,
                              sliding_window=6, max_window_layers=2, tie_word_embeddings=False,
                              **common),
      # local/global 1:1, both soft-caps, sandwich norms, sqrt(d) embeddings, GELU-tanh GLU
      "gemma2": tf.Gemma2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                                num_key_value_heads=2, head_dim=16, intermediate_size=48,
                                max_position_embeddings=64, sliding_window=5,
                                query_pre_attn_scalar=24, attn_logit_softcapping=5.0,
                                final_logit_softcapping=3.0, **common),
      # local/global 5:1 (seven layers: the pattern wraps), QK-norm, a RoPE base per layer
      # type with linear scaling on the global layers
      "gemma3_text": tf.Gemma3TextConfig(
          hidden_size=32, num_hidden_layers=7, num_attention_heads=4, num_key_value_heads=1,
          head_dim=16, intermediate_size=48, max_position_embeddings=64, sliding_window=4,
          query_pre_attn_scalar=12, rope_parameters={
              "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
              "full_attention": {"rope_type": "linear", "factor": 8.0,
                                 "rope_theta": 1000000.0}}, **common),
      # RoPE off on every fourth layer (NoPE)
      "smollm3": tf.SmolLM3Config(hidden_size=32, num_hidden_layers=8, num_attention_heads=4,
                                  num_key_value_heads=2, intermediate_size=48,
                                  max_position_embeddings=64, no_rope_layer_interval=4,
                                  pad_token_id=0,
                                  **common),
      # learned sinks, sliding/full 1:1 with a window of 4, YaRN without truncation from an
      # original context of 16, four routed experts (two per token) with a clamp that acts
      "gpt_oss": tf.GptOssConfig(
          hidden_size=32, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
          head_dim=16, intermediate_size=24, num_local_experts=4, num_experts_per_tok=2,
          max_position_embeddings=64, sliding_window=4, swiglu_limit=1.0,
          rope_parameters={"rope_type": "yarn", "factor": 4.0, "beta_fast": 32.0,
                           "beta_slow": 1.0, "truncate": False,
                           "original_max_position_embeddings": 16, "rope_theta": 10000.0},
          **common),
      # LongRoPE from an original context of 8, shorter than the prompt: every call uses the
      # long factors (the "crossing" variant below starts short and crosses)
      "phi3": tf.Phi3Config(
          hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
          intermediate_size=48, max_position_embeddings=64, original_max_position_embeddings=8,
          rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0,
                           "short_factor": [1.0, 1.3, 2.1, 3.5],
                           "long_factor": [1.2, 2.5, 6.0, 11.0]},
          pad_token_id=0, bos_token_id=1, eos_token_id=2, **common),
      # multi-head latent attention (low-rank query, value dim != nope dim, interleaved RoPE),
      # one dense layer, then two routed layers (grouped sigmoid router, a shared expert)
      "deepseek_v3": tf.DeepseekV3Config(
          hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4,
          q_lora_rank=12, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4,
          v_head_dim=6, intermediate_size=48, moe_intermediate_size=16, n_routed_experts=4,
          num_experts_per_tok=2, n_group=2, topk_group=1, n_shared_experts=1,
          first_k_dense_replace=1, routed_scaling_factor=2.5, max_position_embeddings=64,
          pad_token_id=0, bos_token_id=1, eos_token_id=2, **common),
  }


# the same families under other settings, each its own checkpoint directory
EXTRA = {
    # every layer dense, a full-rank query
    "deepseek_v3_dense": ("deepseek_v3", dict(first_k_dense_replace=3, q_lora_rank=None)),
}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="tests/data/hf")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--families", default="", help="comma-separated; default: all")
  args = parser.parse_args()
  import torch
  import transformers as tf

  tok = tokenizer()
  prompt = tok.encode(PROMPT).ids
  scored = tok.encode(SCORED).ids
  assert tok.decode(scored) == SCORED
  scored = scored[:SCORED_TOKENS]
  wanted = [f for f in args.families.split(",") if f]
  all_configs = configs()
  for name, (family, changes) in EXTRA.items():
    cfg = type(all_configs[family]).from_dict({**all_configs[family].to_dict(), **changes})
    all_configs[name] = cfg
  for family, config in all_configs.items():
    if wanted and family not in wanted:
      continue
    torch.manual_seed(args.seed)
    model = tf.AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    with torch.no_grad():
      for p in model.parameters():   # larger than the 0.02 init, so the logits differ by token
        p.copy_(torch.randn_like(p) * 0.2)
      if family in STORAGE:
        model = model.to(getattr(torch, STORAGE[family]))
    out = pathlib.Path(args.out) / family
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save(str(out / "tokenizer.json"))
    # the reference runs the saved (rounded) weights in float32, reloaded so that buffers
    # such as Gemma's embedding scale are float32 too, as when loading in float32
    model = tf.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32,
                                                    attn_implementation="eager").eval()
    with torch.no_grad():
      logits = model(torch.tensor([scored])).logits[0].numpy().astype(np.float32)
      generated = model.generate(torch.tensor([prompt]), max_new_tokens=NEW_TOKENS,
                                 do_sample=False, use_cache=True, pad_token_id=0)
    continuation = generated[0, len(prompt):].numpy().astype(np.int32)
    np.savez_compressed(out / "reference.npz", ids=np.asarray(scored, np.int32),
                        logits=logits, prompt=np.asarray(prompt, np.int32),
                        continuation=continuation)
    (out / "generation_config.json").unlink(missing_ok=True)
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"{family:10s} {size / 1024:7.1f} KiB  "
          f"{json.loads((out / 'config.json').read_text())['architectures'][0]}")
    if family == "llama":
      rope_variants(model, config, scored, pathlib.Path(args.out) / "llama_rope")
    if family == "gemma3_text":
      config_variants(out, scored, pathlib.Path(args.out) / "gemma3_text_variants",
                      GEMMA3_VARIANTS)
    if family == "phi3":
      crossing(out, prompt, pathlib.Path(args.out) / "phi3_crossing")


def crossing(checkpoint: pathlib.Path, prompt, out: pathlib.Path):
  """Phi-3's weights with an original context 3 tokens longer than the prompt: cached
  greedy generation starts with the short factors and crosses to the long ones (keys cached
  before the crossing keep their rotation). ``out``: config.json and reference.npz (the
  prompt and transformers' continuation)."""
  import torch
  import transformers as tf
  cfg = tf.AutoConfig.from_pretrained(checkpoint)
  cfg.original_max_position_embeddings = len(prompt) + 3
  cfg.rope_parameters["original_max_position_embeddings"] = len(prompt) + 3
  model = tf.AutoModelForCausalLM.from_pretrained(checkpoint, config=cfg, dtype=torch.float32,
                                                  attn_implementation="eager").eval()
  out.mkdir(parents=True, exist_ok=True)
  cfg.save_pretrained(out)
  (out / "generation_config.json").unlink(missing_ok=True)
  with torch.no_grad():
    generated = model.generate(torch.tensor([prompt]), max_new_tokens=NEW_TOKENS,
                               do_sample=False, use_cache=True, pad_token_id=0)
  np.savez_compressed(out / "reference.npz", prompt=np.asarray(prompt, np.int32),
                      continuation=generated[0, len(prompt):].numpy().astype(np.int32))
  print(f"{out.name}: original context {cfg.original_max_position_embeddings}")


def config_variants(checkpoint: pathlib.Path, ids, root: pathlib.Path, variants: dict):
  """The saved weights under other config.json settings: config.json and transformers'
  float32 logits for each (the weights stay in ``checkpoint``)."""
  import torch
  import transformers as tf
  for name, changes in variants.items():
    cfg = tf.AutoConfig.from_pretrained(checkpoint)
    for key, value in changes.items():
      setattr(cfg, key, value)
    model = tf.AutoModelForCausalLM.from_pretrained(checkpoint, config=cfg, dtype=torch.float32,
                                                    attn_implementation="eager").eval()
    _save_variant(root / name, cfg, model, ids)
    print(f"{root.name}/{name}: {changes}")


def _save_variant(out: pathlib.Path, cfg, model, ids) -> None:
  """``out/config.json`` and ``out/reference.npz`` (the ids and the model's float32 logits)."""
  import torch
  out.mkdir(parents=True, exist_ok=True)
  cfg.save_pretrained(out)
  (out / "generation_config.json").unlink(missing_ok=True)
  with torch.no_grad():
    logits = model(torch.tensor([ids])).logits[0].numpy().astype(np.float32)
  np.savez_compressed(out / "reference.npz", ids=np.asarray(ids, np.int32), logits=logits)


def rope_variants(model, config, ids, root: pathlib.Path):
  """The LLaMA weights under each RoPE scaling: config.json and transformers' logits."""
  import transformers as tf
  for name, params in ROPE_VARIANTS.items():
    cfg = tf.LlamaConfig(**{**config.to_dict(), "max_position_embeddings": 16,
                            "rope_parameters": {"rope_theta": 500.0, **params}})
    scaled = tf.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    scaled.load_state_dict(model.state_dict())
    out = root / name
    _save_variant(out, cfg, scaled, ids)
    print(f"llama_rope/{name}: {json.loads((out / 'config.json').read_text())['rope_parameters']}")


if __name__ == "__main__":
  main()
