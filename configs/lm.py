"""Language-model configs: ``get_config(preset)``, preset one of ``PRESETS``.

Use with ``--config=configs/lm.py:alibi`` and override any field on the command
line, e.g. ``--config.model.attention.num_kv_heads=1``.
"""

import ml_collections

PRESETS = ("rope", "alibi", "sinusoidal", "nope", "learned", "xpos", "t5", "baby_gpt")


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
  c.model.dtype = "float32"           # compute dtype: float32 | bfloat16 (params stay float32)

  c.model.attention = ml_collections.ConfigDict()
  c.model.attention.num_heads = 4
  c.model.attention.num_kv_heads = 4  # = num_heads: MHA; divides it: GQA; 1: MQA
  c.model.attention.kind = "softmax"  # softmax | lsh | performer | linear
  # causal | sliding_window | dilated | block_local | global | random | bigbird | longformer
  # | streaming (decoder patterns); full | prefix_lm (encoders)
  c.model.attention.pattern = "causal"
  c.model.attention.impl = "auto"     # auto | reference | xla | blockwise | pallas (kind=softmax)
  c.model.attention.block_q = 512     # tile sizes of the blockwise paths
  c.model.attention.block_kv = 512
  c.model.attention.ring_layout = "zigzag"  # impl=ring: zigzag | striped | contiguous
  # pattern parameters (each pattern reads only its own; see attnlab/attention/patterns.py)
  c.model.attention.window = 64       # sliding_window/longformer/streaming: keys i-window..i;
                                      # dilated: window steps of `dilation` back
  c.model.attention.prefix = 0        # prefix_lm: bidirectional prefix length
  c.model.attention.dilation = 2      # dilated
  c.model.attention.block = 64        # block_local, bigbird: tokens per block
  c.model.attention.global_tokens = (0,)  # global, longformer: positions of global tokens
  c.model.attention.random_per_row = 3    # random: random keys per query
  c.model.attention.window_blocks = 3     # bigbird: blocks in the sliding window (odd)
  c.model.attention.global_blocks = 1     # bigbird: leading global blocks
  c.model.attention.random_blocks = 1     # bigbird: random blocks per query block
  c.model.attention.sinks = 4         # streaming: attention-sink tokens kept
  c.model.attention.seed = 0          # random patterns, LSH rotations, Performer features
  # kind parameters
  c.model.attention.lsh_buckets = 8   # lsh: buckets per hash (1 or even)
  c.model.attention.lsh_hashes = 2    # lsh: hash rounds
  c.model.attention.lsh_chunk = 64    # lsh: chunk length in sorted order
  c.model.attention.num_features = 256    # performer: random features
  c.model.attention.feature_redraw = False  # performer: new features every training step
  c.model.attention.scan_chunk = 128  # performer/linear causal: chunk of the prefix-sum scan

  c.model.position = ml_collections.ConfigDict()
  c.model.position.kind = "rope"      # none | sinusoidal | learned | rope | xpos | alibi | t5
  c.model.position.theta = 10000.0    # rope / xpos base
  c.model.position.base = 10000.0     # sinusoidal base
  c.model.position.embed_scale = 0.02  # sinusoidal: RMS of the encoding (= token init std)
  c.model.position.max_len = 0        # learned table rows; 0 means data.seq_len
  c.model.position.scaling = "none"   # rope: none | linear | ntk | dynamic_ntk | yarn
  c.model.position.scale_factor = 1.0  # rope scaling s = L_new / L_train
  c.model.position.original_max_len = 0  # rope scaling L_train; 0 means data.seq_len
  c.model.position.yarn_alpha = 1.0
  c.model.position.yarn_beta = 32.0
  c.model.position.rotary_fraction = 1.0  # rope: fraction of head dims rotated
  c.model.position.xpos_scale_base = 512.0
  c.model.position.num_buckets = 32   # t5
  c.model.position.max_distance = 128  # t5
  c.model.position.bidirectional = False  # t5 buckets split by sign (encoders)
  c.model.position.randomize = False  # Ruoss et al.: train on sorted random positions ...
  c.model.position.random_max_len = 2048  # ... drawn from [0, random_max_len)

  c.data = ml_collections.ConfigDict()
  c.data.corpus = "builtin"           # the Python standard library's source; no download
  c.data.path = ""                    # a text file; when set it replaces the corpus
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
    c.data.path = "../shared/data/tinyshakespeare.txt"
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
