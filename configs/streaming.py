"""StreamingLLM study: models trained at 64 bytes read a 2048-byte stream (32x) with a
dense cache, a window-only cache and an attention-sink + window cache.

  python experiments/streaming/run.py --config=configs/streaming.py --workdir=runs/streaming

Variants are overrides of ``configs/lm.py``'s base (``sweep.variants``); the
``streaming`` block sets the stream and the caches compared.
"""

import pathlib

import ml_collections

from attnlab.config_lib import load_module


def _lm():
  return load_module(pathlib.Path(__file__).with_name("lm.py"))


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  del arg
  c = _lm().base_config()
  c.data.seq_len = 64                 # training length L
  c.train.steps = 1200
  c.train.lr = 3e-3
  c.train.eval_every = 600
  c.train.checkpoint_every = 600

  c.sweep = ml_collections.ConfigDict()
  c.sweep.variants = ml_collections.ConfigDict({
      "rope": {"model": {"position": {"kind": "rope"}}},
      "alibi": {"model": {"position": {"kind": "alibi"}}},
      "nope": {"model": {"position": {"kind": "none"}}},
  })
  c.sweep.factors = (1,)
  c.sweep.protocols = ()

  c.streaming = ml_collections.ConfigDict()
  c.streaming.stream_length = 2048    # tokens per stream (32 x the training length)
  c.streaming.num_streams = 8         # streams from the validation split, scored as a batch
  c.streaming.cache = 64              # cache size of the streaming methods (= L)
  c.streaming.sinks = (1, 4)          # sink counts compared with the window-only cache (0)
  c.streaming.smooth = 64             # moving-average width of the per-position plot
  c.streaming.sink_query_min = 16     # attention-on-first-token: queries at >= this position
  return c
