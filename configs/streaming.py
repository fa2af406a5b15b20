"""StreamingLLM study: models trained at 64 bytes read a 1024-byte stream (16x) with a
dense cache, a window-only cache and an attention-sink + window cache.

  python -m attnlab.sweep --config=configs/streaming.py --workdir=runs/streaming
  python -m attnlab.sweep --config=configs/streaming.py:fingerprint --workdir=runs/streaming_fingerprint

Variants are overrides of ``configs/lm.py``'s base (``sweep.variants``), each trained in
``workdir/<variant>`` (``workdir/seed<s>/<variant>`` with several seeds); the
``streaming`` block sets the stream and the caches compared (evaluation only: changing it
re-evaluates the trained models). ``arg``: ``fingerprint``: the same study cut to a few
steps, short streams and one seed.
"""

import pathlib

import ml_collections

from attnlab.config_lib import load_module

ARGS = ("fingerprint",)


def _lm():
  return load_module(pathlib.Path(__file__).with_name("lm.py"))


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  args = [a.strip() for a in arg.split(",") if a.strip()]
  unknown = sorted(set(args) - set(ARGS))
  if unknown:
    raise ValueError(f"configs/streaming.py:{arg}: unknown argument(s) {unknown}; valid: "
                     f"{', '.join(ARGS)} (comma-separated)")
  c = _lm().base_config()
  c.data.seq_len = 64                 # training length L
  c.train.steps = 600                 # (the first study trained 1200 steps with one seed)
  c.train.lr = 3e-3
  c.train.eval_every = 300
  c.train.checkpoint_every = 300

  c.sweep = ml_collections.ConfigDict()
  c.sweep.runner = "streaming"        # attnlab/studies/streaming.py
  c.sweep.seeds = 3                   # runs per variant, seeds train.seed + 0, 1, 2
  c.sweep.variants = ml_collections.ConfigDict({
      "rope": {"model": {"position": {"kind": "rope"}}},
      "alibi": {"model": {"position": {"kind": "alibi"}}},
      "nope": {"model": {"position": {"kind": "none"}}},
  })
  c.sweep.factors = (1,)
  c.sweep.protocols = ()

  c.streaming = ml_collections.ConfigDict()
  c.streaming.stream_length = 1024    # tokens per stream (16 x the training length)
  c.streaming.num_streams = 4         # streams from the validation split, scored as a batch
  c.streaming.cache = 64              # cache size of the streaming methods (= L)
  c.streaming.sinks = (1, 4)          # sink counts compared with the window-only cache (0)
  c.streaming.smooth = 32             # positions per point of the plotted loss curves
  c.streaming.sink_query_min = 16     # attention-on-first-token: queries at >= this position
  if "fingerprint" in args:
    _lm().fingerprint_cut(c)
    c.streaming.stream_length = 256
    c.streaming.num_streams = 2
  return c
