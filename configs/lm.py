"""Language-model configs: ``get_config(preset)``, preset one of ``PRESETS``.

Use with ``--config=configs/lm.py:alibi`` and override any field on the command
line, e.g. ``--config.model.attention.num_kv_heads=1``.
"""

import ml_collections

from attnlab import config_lib, positional

# One preset per position scheme ("nope" is kind "none"), plus nanoGPT's baby GPT.
PRESETS = tuple("nope" if name == "none" else name for name in positional.POSITIONS.names()) + (
    "baby_gpt",)


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()

  c.model = ml_collections.ConfigDict()
  c.model.vocab_size = 256            # byte-level
  c.model.num_layers = 4
  c.model.d_model = 128
  c.model.mlp = "gelu"                # gelu | swiglu
  c.model.mlp_ratio = 4
  c.model.norm = "layernorm"          # layernorm | rmsnorm
  c.model.use_bias = False
  c.model.tie_embeddings = True
  c.model.dropout = 0.0               # embedding and residual dropout
  c.model.dtype = "float32"           # compute dtype: float32 | bfloat16
  c.model.param_dtype = "float32"     # parameter dtype: float32 | bfloat16
  # what pretrained families need (docs/pretrained.md); the defaults are attnlab's own model
  c.model.norm_eps = 1e-6             # GPT-2, BLOOM, Pythia: 1e-5
  c.model.mlp_hidden = 0              # 0: mlp_ratio * d_model (gelu), 2/3 of it (swiglu)
  c.model.parallel_residual = False   # GPT-NeoX: x + attn(norm(x)) + mlp(norm'(x))
  c.model.qkv_bias = False            # Qwen2: biases on q/k/v only
  c.model.embed_norm = False          # BLOOM: a norm on the token embeddings

  # Every field the registered kinds, patterns, impls and position schemes declare, at
  # its declared default (docs/variants.md lists them; a new variant's fields appear here
  # by themselves). Override any with --config.model.attention.<field>=...
  c.model.attention = config_lib.attention_block()
  c.model.position = config_lib.position_block("rope")

  c.data = ml_collections.ConfigDict()
  c.data.corpus = "builtin"           # the Python standard library's source; or "tinyshakespeare"
  c.data.path = ""                    # a text file; when set it replaces the corpus
  c.data.tokenizer = "bytes"          # "bytes" (vocabulary 256) or a tokenizer.json path
  c.data.seq_len = 128
  c.data.valid_fraction = 0.1

  c.train = ml_collections.ConfigDict()
  c.train.steps = 1000
  c.train.batch_size = 12
  c.train.seed = 0
  c.train.lr = 2e-3
  c.train.min_lr_ratio = 0.1          # cosine decays to lr * min_lr_ratio
  c.train.warmup_steps = 100
  c.train.weight_decay = 0.1          # on matrices and embeddings only
  c.train.b1 = 0.9
  c.train.b2 = 0.99
  c.train.grad_clip = 1.0
  c.train.log_every = 50
  c.train.eval_every = 250
  c.train.eval_batches = 20
  c.train.checkpoint_every = 250
  c.train.keep_checkpoints = 3

  c.eval = ml_collections.ConfigDict()
  c.eval.max_tokens = 65536           # tokens scored per evaluation length
  c.eval.batch_tokens = 8192          # tokens per evaluation batch

  c.mesh = ml_collections.ConfigDict()  # device mesh; the product must equal the device count
  c.mesh.data = 1                     # data parallel (batch)
  c.mesh.fsdp = 1                     # batch + parameters and optimizer state sharded
  c.mesh.tensor = 1                   # attention heads and MLP hidden units
  c.mesh.sequence = 1                 # ring attention over the sequence (impl auto -> ring)
  c.mesh.coordinator_address = ""     # multi-host: "host:port" of process 0 (or JAX_* env)
  c.mesh.num_processes = 0
  c.mesh.process_id = -1
  return c


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
    c.train.batch_size = 12
    c.train.steps = 2000
    c.train.lr = 3e-3   # nanoGPT uses 1e-3; a higher peak converges further in 2000 steps
    c.train.warmup_steps = 100
    c.train.eval_every = 500
    c.train.eval_batches = 200
    c.train.checkpoint_every = 1000
  else:
    c.model.position.kind = preset
  return c
