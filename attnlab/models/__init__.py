"""Flax modules composed from the functional attention and position code.

``transformer``: the attention layer every Transformer here uses and the decoder-only
``TransformerLM``; ``kv_cache``: its KV cache for incremental decoding; ``common``: the
``model.*`` fields, dtypes, the norm and MLP registries and declared position parameters;
``seq2seq``: the encoder–decoder Transformer; ``rnn``: GRU/LSTM encoder–decoders with no,
Bahdanau or Luong attention (``classic_attention``) and a recurrent LM.

``ARCHS`` (``model.arch``): each architecture's language model (``attnlab.train``) and
encoder–decoder (``attnlab.tasks_train``).
"""

import dataclasses

from attnlab.models.common import DTYPES, MLPS, MODEL_FIELDS, NORMS, decay_mask, model_settings
from attnlab.models.transformer import MLP, Block, SelfAttention, TransformerLM, num_params
from attnlab.models import moe  # noqa: E402,F401  (registers mlp='moe')
from attnlab.models.classic_attention import AdditiveAttention, MultiplicativeAttention  # noqa: E402
from attnlab.models.rnn import RNNLM, RNNSeq2Seq  # noqa: E402
from attnlab.models.seq2seq import TransformerSeq2Seq  # noqa: E402
from attnlab.registry import Registry  # noqa: E402


@dataclasses.dataclass(frozen=True)
class ArchSpec:
  """An entry of ``ARCHS``: the Flax classes of one architecture, each built from the
  ``model`` config block."""
  lm: type          # decoder-only language model: tokens -> logits
  seq2seq: type     # encoder–decoder: (src, tgt_in) -> logits, and greedy ``generate``
  doc: str = ""


ARCHS: Registry[ArchSpec] = Registry("model.arch")
ARCHS.register("transformer")(ArchSpec(
    TransformerLM, TransformerSeq2Seq, "Transformer (the attention layer of attnlab.attention)"))
ARCHS.register("rnn")(ArchSpec(
    RNNLM, RNNSeq2Seq, "GRU / LSTM (encoder–decoder with no, Bahdanau or Luong attention)"))


def build_lm(model_cfg):
  """The language model named by ``model.arch``."""
  return ARCHS.get(model_settings(model_cfg).arch).lm(model_cfg)


def build_seq2seq(model_cfg):
  """The encoder–decoder named by ``model.arch``."""
  return ARCHS.get(model_cfg.arch).seq2seq(model_cfg)


__all__ = ["ARCHS", "AdditiveAttention", "ArchSpec", "Block", "DTYPES", "MLP", "MLPS",
           "MODEL_FIELDS", "MultiplicativeAttention", "NORMS", "RNNLM", "RNNSeq2Seq",
           "SelfAttention", "TransformerLM", "TransformerSeq2Seq", "build_lm",
           "build_seq2seq", "decay_mask", "model_settings", "num_params"]
