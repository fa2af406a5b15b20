"""Length-extrapolation sweep: train short, evaluate at 1x..16x the training length.

  python -m attnlab.sweep --config=configs/extrapolation.py --workdir=runs/extrapolation
  python -m attnlab.sweep --config=configs/extrapolation.py:rope,alibi --workdir=runs/rope_vs_alibi
  python -m attnlab.sweep --config=configs/extrapolation.py:documents --workdir=runs/documents

``:documents`` is the document-masking ablation: RoPE trained on the same windows of the
same text for the same steps, with packed documents (a document mask and positions
restarting per document, ``data.documents``) and without (one stream), three seeds. The
text is tinyshakespeare, whose documents (speeches, separated by blank lines) are short
enough that many training windows span two; the built-in corpus's documents (whole
modules) are so long that a 64-byte window rarely crosses one. Both models are scored the
same way: document by document (``sweep.score_documents="always"``, the default here), and
again on the text as one stream with ``--config.sweep.score_documents=never`` (the trained
runs are reused).

Every variant is the base config (``configs/lm.py``) plus its overrides in
``sweep.variants``; all share seed, data and steps. Override anything from the
command line, e.g. ``--config.data.path=FILE`` or
``--config.sweep.variants.rope.model.position.scaling=yarn``.
"""

import pathlib

import ml_collections

from attnlab import config_lib
from attnlab.config_lib import load_module


def _lm():
  return load_module(pathlib.Path(__file__).with_name("lm.py"))


VARIANTS = {"rope": "rope", "alibi": "alibi", "sinusoidal": "sinusoidal", "nope": "none",
            "fox": "fox"}
DOCUMENT_VARIANTS = ("with_document_mask", "without_document_mask")


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  """``arg``: comma-separated variant names to keep (default: all five), or ``documents``
  (the document-masking ablation)."""
  c = _lm().base_config()
  c.data.seq_len = 64                 # train short ...
  c.train.lr = 3e-3
  c.train.eval_every = 500
  c.eval.max_tokens = 16384           # scored tokens per (length, protocol)

  if arg == "documents":
    return _documents(c)
  keep = [name.strip() for name in arg.split(",")] if arg else list(VARIANTS)
  unknown = sorted(set(keep) - set(VARIANTS))
  if unknown or not keep:
    raise ValueError(f"configs/extrapolation.py:{arg}: unknown variant(s) {unknown}; valid: "
                     f"{', '.join(sorted(VARIANTS))} (comma-separated)")
  c.sweep = ml_collections.ConfigDict()
  c.sweep.train = True                # False: only evaluate the runs already in --workdir
  # each variant sets the position kind; its other position fields are placeholders the
  # command line can set (config_lib.position_variant)
  c.sweep.variants = ml_collections.ConfigDict(
      {name: config_lib.position_variant(VARIANTS[name]) for name in keep})
  c.sweep.factors = (1, 2, 4, 8, 16)  # ... test long: evaluation lengths / data.seq_len
  c.sweep.protocols = ("non_overlapping", "sliding")
  c.sweep.stride = 32                 # sliding protocol: tokens scored per window
  c.sweep.sliding_tokens = 8192       # sliding protocol: scored tokens per length (cost ~ L / stride)
  return c


def _documents(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """RoPE with and without the document mask; the same windows, steps and seeds."""
  c.data.corpus = "tinyshakespeare"   # speeches: documents of a few hundred bytes
  c.sweep = ml_collections.ConfigDict()
  c.sweep.train = True
  c.sweep.seeds = 3
  c.sweep.variants = ml_collections.ConfigDict({
      "with_document_mask": {"data": {"documents": True}},
      "without_document_mask": {"data": {"documents": False}}})
  c.sweep.factors = (1, 2, 4, 8, 16)
  c.sweep.protocols = ("non_overlapping",)
  c.sweep.stride = 32
  c.sweep.sliding_tokens = 8192
  c.sweep.score_documents = "always"  # both scored document by document
  return c
