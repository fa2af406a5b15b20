"""Language-model configs: ``get_config(preset)``, preset one of ``PRESETS``.

Use with ``--config=configs/lm.py:alibi`` and override any field on the command
line, e.g. ``--config.model.attention.num_kv_heads=1``.

Every field and its default is declared by the code that reads it (``docs/variants.md``
lists them): ``base_config()`` is those defaults (``attnlab.config_lib.lm_config``), and a
preset states only what it changes.
"""

import ml_collections

from attnlab import config_lib, positional

# The mechanisms of current models at baby size (4-6 layers, d=128), each stating only what
# it changes: QK-norm (Qwen3, OLMo-2), soft-caps (Gemma-2), and the layer recipes of
# Gemma-2 (local/global 1:1, sandwich norms, sqrt(d) embeddings, GELU-gated MLP, both
# soft-caps), Gemma-3 (5:1 with QK-norm and a RoPE base per layer type) and SmolLM3 (RoPE
# off on every fourth layer).
_GEMMA = {"model.norm": "rmsnorm", "model.mlp": "geglu", "model.post_norms": True,
          "model.embed_scale": True, "model.attention.num_kv_heads": 2,
          "model.local_window": 32}
MODERN = {
    "qk_norm": {"model.attention.qk_norm": True},
    "softcap": {"model.attention.softcap": 20.0, "model.logit_softcap": 30.0},
    "gemma2": {**_GEMMA, "model.layer_types": "local,global", "model.attention.softcap": 50.0,
               "model.logit_softcap": 30.0},
    "gemma3": {**_GEMMA, "model.num_layers": 6, "model.layer_types": "local*5,global",
               "model.attention.qk_norm": True, "model.position.theta": 1e6,
               "model.local_rope_theta": 1e4},
    "smollm3": {"model.norm": "rmsnorm", "model.mlp": "swiglu",
                "model.attention.num_kv_heads": 2, "model.layer_types": "global*3,nope"},
    # learned sinks, sliding/full 1:1, routed experts (gpt-oss's router and clamped SwiGLU)
    "gpt_oss": {"model.norm": "rmsnorm", "model.attention.num_kv_heads": 2,
                "model.attention.sink_logit": "learned", "model.layer_types": "local,global",
                "model.local_window": 64, "model.mlp": "moe", "model.moe_experts": 8,
                "model.moe_top_k": 2, "model.moe_expert": "clamped_swiglu",
                "model.moe_bias": True, "model.mlp_hidden": 128},
    # multi-head latent attention (a latent KV cache), one dense block then routed experts
    # with DeepSeek-V3's grouped sigmoid router and a shared expert
    "deepseek_v3": {"model.norm": "rmsnorm", "model.attention.latent_rank": 32,
                    "model.attention.latent_query_rank": 48, "model.attention.latent_rope_dim": 16,
                    "model.mlp": "moe", "model.moe_router": "sigmoid_grouped",
                    "model.moe_experts": 8, "model.moe_top_k": 2, "model.moe_groups": 4,
                    "model.moe_topk_groups": 2, "model.moe_shared_experts": 1,
                    "model.moe_first_dense": 1, "model.moe_expert_hidden": 64},
    # differential attention (Differential Transformer), and Qwen3-Next's output gate
    "differential": {"model.norm": "rmsnorm", "model.mlp": "swiglu",
                     "model.attention.differential": True},
    "gated": {"model.norm": "rmsnorm", "model.mlp": "swiglu", "model.attention.qk_norm": True,
              "model.attention.output_gate": "elementwise"},
}

# One preset per position scheme ("nope" is kind "none"), nanoGPT's baby GPT, and MODERN.
PRESETS = tuple("nope" if name == "none" else name for name in positional.POSITIONS.names()) + (
    "baby_gpt",) + tuple(MODERN)


def base_config() -> ml_collections.ConfigDict:
  """Every declared field at its default (RoPE, 4 layers, d=128, 128 bytes, 1000 steps)."""
  return config_lib.lm_config()


def get_config(arg: str = "rope") -> ml_collections.ConfigDict:
  preset = arg or "rope"
  if preset not in PRESETS:
    raise ValueError(f"configs/lm.py: preset {preset!r} is not valid; valid: {', '.join(PRESETS)}")
  c = base_config()
  if preset == "nope":
    c.model.position.kind = "none"
  elif preset == "baby_gpt":
    # nanoGPT's CPU "baby GPT" on tinyshakespeare (README): 4 layers, 4 heads, d=128,
    # context 64, batch 12, learned positions, 2000 iterations, dropout 0.
    c.model.position.kind = "learned"
    c.data.corpus = "tinyshakespeare"   # shipped in attnlab/data/corpora/
    c.data.seq_len = 64
    c.train.steps = 2000
    c.train.lr = 3e-3   # nanoGPT uses 1e-3; a higher peak converges further in 2000 steps
    c.train.eval_every = 500
    c.train.eval_batches = 200
    c.train.checkpoint_every = 1000
  elif preset in MODERN:
    for path, value in MODERN[preset].items():
      *blocks, name = path.split(".")
      target = c
      for block in blocks:
        target = target[block]
      target[name] = value
  elif preset != "rope":
    c.model.position.kind = preset
  return c


def fingerprint_cut(c: ml_collections.ConfigDict, steps: int = 40) -> ml_collections.ConfigDict:
  """A study's ``:fingerprint`` training cut: one seed, ``steps`` steps evaluated and
  checkpointed once at the end, a short warmup, two evaluation batches."""
  c.sweep.seeds = 1
  c.train.steps = c.train.eval_every = c.train.checkpoint_every = steps
  c.train.warmup_steps = 10
  c.train.log_every = 20
  c.train.eval_batches = 2
  return c
