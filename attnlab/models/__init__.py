"""Flax modules composed from the functional attention and position code.

``transformer``: the decoder-only ``TransformerLM``. ``seq2seq``: encoder–decoders by
``model.arch`` (Transformer, or ``rnn``: GRU/LSTM with no, Bahdanau or Luong attention,
from ``rnn`` and ``classic_attention``), and ``rnn.RNNLM``, a recurrent LM baseline.
"""

from attnlab.models.transformer import (DTYPES, MLP, NORMS, Block, SelfAttention, TransformerLM,
                                        num_params)
from attnlab.models.classic_attention import AdditiveAttention, MultiplicativeAttention  # noqa: E402
from attnlab.models.rnn import RNNLM, RNNSeq2Seq  # noqa: E402
from attnlab.models.seq2seq import ARCHS, TransformerSeq2Seq  # noqa: E402

__all__ = ["ARCHS", "AdditiveAttention", "DTYPES", "MLP", "MultiplicativeAttention", "NORMS",
           "Block", "RNNLM", "RNNSeq2Seq", "SelfAttention", "TransformerLM", "TransformerSeq2Seq",
           "num_params"]
