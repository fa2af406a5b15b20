"""Flax modules composed from the functional attention and position code.

``transformer``: the decoder-only ``TransformerLM``; ``kv_cache``: its KV cache for
incremental decoding; ``common``: dtypes, norms and declared position parameters. ``seq2seq``: encoder–decoders by
``model.arch`` (Transformer, or ``rnn``: GRU/LSTM with no, Bahdanau or Luong attention,
from ``rnn`` and ``classic_attention``), and ``rnn.RNNLM``, a recurrent LM baseline.
"""

from attnlab.models.common import DTYPES, MLPS, MODEL_FIELDS, NORMS, decay_mask
from attnlab.models.transformer import MLP, Block, SelfAttention, TransformerLM, num_params
from attnlab.models.classic_attention import AdditiveAttention, MultiplicativeAttention  # noqa: E402
from attnlab.models.rnn import RNNLM, RNNSeq2Seq  # noqa: E402
from attnlab.models.seq2seq import ARCHS, TransformerSeq2Seq  # noqa: E402
from attnlab.registry import Registry  # noqa: E402

LM_ARCHS: Registry = Registry("model.arch")
LM_ARCHS.register("transformer")(TransformerLM)
LM_ARCHS.register("rnn")(RNNLM)


def build_lm(model_cfg):
  """The language model named by ``model.arch`` (default ``transformer``; ``rnn``: ``RNNLM``)."""
  return LM_ARCHS.get(model_cfg.get("arch", "transformer"))(model_cfg)


__all__ = ["ARCHS", "AdditiveAttention", "Block", "DTYPES", "LM_ARCHS", "MLP", "MLPS", "MODEL_FIELDS", "decay_mask",
           "MultiplicativeAttention", "NORMS", "RNNLM", "RNNSeq2Seq", "SelfAttention",
           "TransformerLM", "TransformerSeq2Seq", "build_lm", "num_params"]
