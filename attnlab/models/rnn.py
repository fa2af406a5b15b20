"""Recurrent models: GRU / LSTM encoder–decoders with or without attention, and an RNN LM.

``RNNSeq2Seq`` reads the ``model`` config block (``model.rnn.*``):

- ``cell``: ``gru`` | ``lstm`` (registry ``CELLS``); ``hidden`` units per direction;
  ``bidirectional`` encoder (outputs are the two directions concatenated, width K).
- ``attention`` (registry ``DECODERS``):
  - ``none`` (Cho et al. 2014; Sutskever et al. 2014): the decoder sees the source only
    through one fixed vector, the final encoder state(s): it initialises the decoder
    and is fed at every step. This is the bottleneck.
  - ``bahdanau`` (Bahdanau et al. 2015): the previous decoder state ``s_{t-1}`` queries
    the encoder states with additive scores; the context enters the recurrence.
  - ``luong`` (Luong et al. 2015): the new decoder state ``s_t`` queries with
    ``luong_score`` (dot | general | concat); ``h~_t = tanh(W_c [c_t; s_t])`` predicts the
    token and, with ``input_feeding``, is fed to the next step.
- Training uses teacher forcing (``__call__``); ``generate`` decodes greedily. Both run
  the same scanned decoder step, which picks its input token per step from the given
  targets or from its own previous argmax.

Shapes: src int [batch, src_len] (``<pad>`` = 0 marks padding, at the end);
tgt_in int [batch, tgt_len] (``<bos>`` first) -> logits float32 [batch, tgt_len, vocab].
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from attnlab.data.tasks import BOS, PAD
from attnlab.models.classic_attention import SCORES, AdditiveAttention, MultiplicativeAttention
from attnlab.registry import Field, Registry

CELLS: Registry = Registry("model.rnn.cell")
CELLS.register("gru")(lambda features, name: nn.GRUCell(features, name=name))
CELLS.register("lstm")(lambda features, name: nn.OptimizedLSTMCell(features, name=name))

DECODERS = ("none", "bahdanau", "luong")


def _in(registry):
  return lambda value, context: None if value in registry else (
      f"is not valid; valid: {', '.join(registry.names())}")


# model.rnn.*: every default is here and only here.
RNN_FIELDS = (
    Field("cell", "gru", "gru | lstm (CELLS)", check=_in(CELLS)),
    Field("hidden", 64, "units per encoder direction (and per layer of the RNN LM)", minimum=1),
    Field("embed_dim", 32, "token embedding width", minimum=1),
    Field("bidirectional", True, "encoder reads both directions; the decoder state has the "
          "encoder output width"),
    Field("attention", "bahdanau", "decoder attention: none | bahdanau | luong",
          choices=DECODERS),
    Field("luong_score", "general", "luong: dot | general | concat (SCORES)", check=_in(SCORES)),
    Field("attention_dim", 64, "bahdanau (and luong concat): width A of the score MLP",
          minimum=1),
    Field("input_feeding", True, "luong: feed h~_{t-1} to the next step"),
)


def cell_output(carry):
  """The hidden state ``h`` of a GRU carry (h) or an LSTM carry ((c, h))."""
  return carry[1] if isinstance(carry, tuple) else carry


def key_width(r) -> int:
  """Width K of encoder outputs (and of the decoder state): hidden x directions."""
  return r.hidden * (2 if r.bidirectional else 1)


class RNNEncoder(nn.Module):
  """(Bi)directional RNN over embedded tokens.

  x: [batch, src, E]; lengths: int [batch] -> (outputs [batch, src, K], final [batch, K]).
  Padding after ``lengths`` is ignored: ``final`` is each sequence's last valid state
  (and, for the backward direction, the state after reading it from its true end).
  """
  cfg: Any

  @nn.compact
  def __call__(self, x, lengths):
    r = self.cfg.rnn
    fwd_carry, fwd = nn.RNN(CELLS.get(r.cell)(r.hidden, "forward_cell"), name="forward")(
        x, seq_lengths=lengths, return_carry=True)
    if not r.bidirectional:
      return fwd, cell_output(fwd_carry)
    bwd_carry, bwd = nn.RNN(CELLS.get(r.cell)(r.hidden, "backward_cell"), name="backward")(
        x, seq_lengths=lengths, return_carry=True, reverse=True, keep_order=True)
    return (jnp.concatenate([fwd, bwd], -1),
            jnp.concatenate([cell_output(fwd_carry), cell_output(bwd_carry)], -1))


class DecoderStep(nn.Module):
  """One decoder step, scanned over time.

  carry: {"state": cell carry, "prev": int [batch] (last emitted token), "feed": [batch, K]
  (Luong's h~ for input feeding)}; xs: (token int [batch], teacher bool [batch]);
  memory: (keys [batch, src, K], key_proj [batch, src, A] or None, mask bool [batch, src],
  summary [batch, K]). Returns (carry, (logits [batch, vocab], weights [batch, src])).
  """
  cfg: Any

  @nn.compact
  def __call__(self, carry, xs, memory):
    r, vocab = self.cfg.rnn, self.cfg.vocab_size
    token, teacher = xs
    keys, key_proj, mask, summary = memory
    prev = jnp.where(teacher, token, carry["prev"])
    emb = nn.Embed(vocab, r.embed_dim, name="embed")(prev)
    cell = CELLS.get(r.cell)(key_width(r), "cell")
    state = carry["state"]
    if r.attention == "luong":
      inputs = jnp.concatenate([emb, carry["feed"]], -1) if r.input_feeding else emb
      state, s = cell(state, inputs)
      context, weights = MultiplicativeAttention(r.luong_score, r.attention_dim,
                                                 name="attention")(s, keys, mask)
      out = jnp.tanh(nn.Dense(key_width(r), use_bias=False, name="W_c")(
          jnp.concatenate([context, s], -1)))
      feed = out
    else:
      if r.attention == "bahdanau":       # query: the previous state s_{t-1}
        context, weights = AdditiveAttention(r.attention_dim, name="attention")(
            cell_output(state), keys, mask, key_proj)
      else:                               # no attention: one fixed vector for the whole source
        context, weights = summary, jnp.zeros(mask.shape, jnp.float32)
      state, s = cell(state, jnp.concatenate([emb, context], -1))
      out = jnp.tanh(nn.Dense(key_width(r), name="readout")(jnp.concatenate([s, context, emb], -1)))
      feed = carry["feed"]
    logits = nn.Dense(vocab, name="logits")(out).astype(jnp.float32)
    new_carry = {"state": state, "prev": jnp.argmax(logits, -1).astype(prev.dtype), "feed": feed}
    return new_carry, (logits, weights)


_ScanDecoder = nn.scan(DecoderStep, variable_broadcast="params", split_rngs={"params": False},
                       in_axes=(1, nn.broadcast), out_axes=1)


class RNNSeq2Seq(nn.Module):
  """GRU/LSTM encoder–decoder (see the module docstring). Positions are ignored
  (recurrence encodes order); the arguments exist so every seq2seq model is called alike."""
  cfg: Any

  def setup(self):
    r = self.cfg.rnn
    self.src_embed = nn.Embed(self.cfg.vocab_size, r.embed_dim, name="src_embed")
    self.encoder = RNNEncoder(self.cfg, name="encoder")
    self.bridge = nn.Dense(key_width(r), name="bridge")
    if r.attention == "bahdanau":
      self.key_proj = nn.Dense(r.attention_dim, use_bias=False, name="attention_U")
    self.decoder = _ScanDecoder(self.cfg, name="decoder")

  def encode(self, src):
    """src [batch, src] -> memory (keys, key_proj, mask, summary)."""
    mask = src != PAD
    keys, summary = self.encoder(self.src_embed(src), mask.sum(-1))
    key_proj = self.key_proj(keys) if self.cfg.rnn.attention == "bahdanau" else None
    return keys, key_proj, mask, summary

  def _initial_carry(self, memory):
    summary = memory[3]
    h0 = jnp.tanh(self.bridge(summary))
    state = (jnp.zeros_like(h0), h0) if self.cfg.rnn.cell == "lstm" else h0
    batch = summary.shape[0]
    return {"state": state, "prev": jnp.full((batch,), BOS, jnp.int32), "feed": jnp.zeros_like(h0)}

  def __call__(self, src, tgt_in, src_positions=None, tgt_positions=None,
               deterministic: bool = True, return_weights: bool = False):
    """Teacher forcing: logits [batch, tgt, vocab] (and attention weights [batch, tgt, src])."""
    memory = self.encode(src)
    teacher = jnp.ones(tgt_in.shape, bool)
    _, (logits, weights) = self.decoder(self._initial_carry(memory), (tgt_in, teacher), memory)
    return (logits, weights) if return_weights else logits

  def generate(self, src, steps: int, src_positions=None):
    """Greedy decoding: int32 [batch, steps], each token the argmax given the ones before."""
    memory = self.encode(src)
    shape = (src.shape[0], steps)
    _, (logits, _) = self.decoder(self._initial_carry(memory),
                                  (jnp.zeros(shape, jnp.int32), jnp.zeros(shape, bool)), memory)
    return jnp.argmax(logits, -1).astype(jnp.int32)


class RNNLM(nn.Module):
  """A stacked GRU/LSTM language model baseline, called like ``TransformerLM``.

  tokens: int [batch, seq] -> logits float32 [batch, seq, vocab]. Reads ``model.vocab_size``,
  ``model.num_layers`` and ``model.rnn.{cell, hidden, embed_dim}``; ``positions`` is ignored.
  """
  cfg: Any

  @nn.compact
  def __call__(self, tokens, positions=None, deterministic: bool = True):
    r = self.cfg.rnn
    x = nn.Embed(self.cfg.vocab_size, r.embed_dim, name="embed")(tokens)
    for i in range(self.cfg.num_layers):
      x = nn.RNN(CELLS.get(r.cell)(r.hidden, f"cell_{i}"), name=f"rnn_{i}")(x)
    return nn.Dense(self.cfg.vocab_size, name="logits")(x).astype(jnp.float32)


__all__ = ["CELLS", "DECODERS", "DecoderStep", "RNNEncoder", "RNNLM", "RNNSeq2Seq", "cell_output",
           "key_width"]
