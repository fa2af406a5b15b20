"""Sequence-to-sequence models selected by ``model.arch`` (registry ``ARCHS``).

- ``transformer``: encoder–decoder Transformer (Vaswani et al. 2017), pre-norm. The
  encoder attends bidirectionally over valid source tokens; each decoder block has
  causal self-attention, cross-attention to the encoder output, and an MLP. All
  attention goes through ``attnlab.attention.dot_product_attention`` (the same core,
  ``model.attention.impl``), with the position axis of ``model.position`` applied in
  the self-attention of both stacks (absolute embeddings, RoPE, ALiBi, ...; cross-attention
  is content-only, as in T5).
- ``rnn``: GRU / LSTM encoder–decoder with no, Bahdanau or Luong attention
  (``attnlab.models.rnn.RNNSeq2Seq``).

Every model is called alike: ``model(src, tgt_in, src_positions, tgt_positions)`` ->
logits float32 [batch, tgt, vocab] with teacher forcing, and
``model.generate(src, steps)`` -> int32 [batch, steps] by greedy decoding. Positions
default to 0..n-1 (randomized positional encodings pass sorted random ones while
training). ``<pad>`` = 0 marks padding at the end of ``src``.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from attnlab import positional
from attnlab.attention import dot_product_attention, impl_options
from attnlab.data.tasks import BOS, PAD
from attnlab.models.common import NORMS, declared_params
from attnlab.models.rnn import RNNSeq2Seq
from attnlab.models.transformer import MLP
from attnlab.registry import Registry


def _default_positions(tokens):
  return jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)


def padding_mask(src_valid, q_len: int):
  """Bool [batch, 1, q_len, src]: every query may see exactly the valid source tokens."""
  return jnp.broadcast_to(src_valid[:, None, None, :], (src_valid.shape[0], 1, q_len,
                                                        src_valid.shape[1]))


def causal_mask(length: int):
  """Bool [1, 1, length, length]: query i sees keys j <= i."""
  return jnp.tril(jnp.ones((length, length), bool))[None, None]


class Attention(nn.Module):
  """Multi-head attention through the shared core.

  x_q: [batch, q, d]; x_kv: [batch, k, d]; mask: bool [batch or 1, 1, q, k];
  positions: int [batch, q] for self-attention (then q == k and the position scheme
  applies), None for cross-attention -> [batch, q, d].
  """
  cfg: Any
  layers: int

  @nn.compact
  def __call__(self, x_q, x_kv, mask, positions=None):
    cfg, att = self.cfg, self.cfg.attention
    heads, d = att.num_heads, cfg.d_model
    head_dim = d // heads
    dense = lambda n, name, std=0.02: nn.Dense(  # noqa: E731
        n, use_bias=cfg.use_bias, kernel_init=nn.initializers.normal(std), name=name)
    batch, q_len, _ = x_q.shape
    k_len = x_kv.shape[1]
    # projections on [batch * len, d]: XLA:CPU differentiates 2-D matmuls much faster
    q = dense(d, "query")(x_q.reshape(-1, d)).reshape(batch, q_len, heads, head_dim)
    kv = dense(2 * d, "key_value")(x_kv.reshape(-1, d)).reshape(batch, k_len, 2 * heads, head_dim)
    k, v = kv[:, :, :heads], kv[:, :, heads:]
    bias = None
    if positions is not None:
      scheme = positional.get_scheme(cfg.position)
      q, k = scheme.rotate_qk(q, k, positions)
      bias = scheme.score_mod(heads, declared_params(self, scheme.attention_params(heads)),
                              positions)
    out = dot_product_attention(q, k, v, mask=mask, bias=bias, impl=att.impl,
                                **impl_options(att))
    out = dense(d, "out", 0.02 / math.sqrt(2 * self.layers))(out.reshape(batch * q_len, d))
    return out.reshape(batch, q_len, d)


class EncoderBlock(nn.Module):
  cfg: Any

  @nn.compact
  def __call__(self, x, mask, positions):
    norm = NORMS.get(self.cfg.norm)
    layers = 2 * self.cfg.num_layers
    h = norm(self.cfg, "norm_attention")(x)
    x = x + Attention(self.cfg, layers, name="attention")(h, h, mask, positions)
    return x + MLP(self.cfg, name="mlp")(norm(self.cfg, "norm_mlp")(x))


class DecoderBlock(nn.Module):
  cfg: Any

  @nn.compact
  def __call__(self, x, memory, self_mask, cross_mask, positions):
    norm = NORMS.get(self.cfg.norm)
    layers = 2 * self.cfg.num_layers
    h = norm(self.cfg, "norm_self")(x)
    x = x + Attention(self.cfg, layers, name="self_attention")(h, h, self_mask, positions)
    x = x + Attention(self.cfg, layers, name="cross_attention")(
        norm(self.cfg, "norm_cross")(x), memory, cross_mask)
    return x + MLP(self.cfg, name="mlp")(norm(self.cfg, "norm_mlp")(x))


class TransformerSeq2Seq(nn.Module):
  """Encoder–decoder Transformer with ``num_layers`` blocks in each stack, tied embeddings."""
  cfg: Any

  def setup(self):
    cfg = self.cfg
    self.embed = nn.Embed(cfg.vocab_size, cfg.d_model,
                          embedding_init=nn.initializers.normal(0.02), name="embed")
    scheme = positional.get_scheme(cfg.position)
    self.position_params = declared_params(self, scheme.embedding_params(cfg.d_model))
    self.encoder = [EncoderBlock(cfg, name=f"encoder_{i}") for i in range(cfg.num_layers)]
    self.decoder = [DecoderBlock(cfg, name=f"decoder_{i}") for i in range(cfg.num_layers)]
    self.norm_encoder = NORMS.get(cfg.norm)(cfg, "norm_encoder")
    self.norm_decoder = NORMS.get(cfg.norm)(cfg, "norm_decoder")

  def _embed(self, tokens, positions):
    scheme = positional.get_scheme(self.cfg.position)
    x = self.embed(tokens)
    absolute = scheme.embed(positions, self.cfg.d_model, self.position_params)
    return x if absolute is None else x + absolute.astype(x.dtype)

  def encode(self, src, src_positions=None):
    """src [batch, S] -> (memory [batch, S, d], valid bool [batch, S])."""
    positions = _default_positions(src) if src_positions is None else src_positions
    positional.check_length(self.cfg.position, src.shape[1], "source length")
    valid = src != PAD
    x = self._embed(src, positions)
    mask = padding_mask(valid, src.shape[1])
    for block in self.encoder:
      x = block(x, mask, positions)
    return self.norm_encoder(x), valid

  def decode(self, memory, valid, tgt_in, tgt_positions=None):
    """Logits float32 [batch, T, vocab] for decoder inputs ``tgt_in`` [batch, T]."""
    positions = _default_positions(tgt_in) if tgt_positions is None else tgt_positions
    positional.check_length(self.cfg.position, tgt_in.shape[1], "target length")
    x = self._embed(tgt_in, positions)
    self_mask, cross_mask = causal_mask(tgt_in.shape[1]), padding_mask(valid, tgt_in.shape[1])
    for block in self.decoder:
      x = block(x, memory, self_mask, cross_mask, positions)
    return self.embed.attend(self.norm_decoder(x)).astype(jnp.float32)

  def __call__(self, src, tgt_in, src_positions=None, tgt_positions=None,
               deterministic: bool = True):
    memory, valid = self.encode(src, src_positions)
    return self.decode(memory, valid, tgt_in, tgt_positions)

  def generate(self, src, steps: int, src_positions=None):
    """Greedy decoding: ``steps`` full decoder passes over a growing prefix (causal masking
    makes the not-yet-written slots irrelevant). -> int32 [batch, steps]."""
    memory, valid = self.encode(src, src_positions)
    tokens = jnp.zeros((src.shape[0], steps), jnp.int32).at[:, 0].set(BOS)

    def step(t, carry):
      tokens, out = carry
      nxt = jnp.argmax(self.decode(memory, valid, tokens)[:, t], -1).astype(jnp.int32)
      out = out.at[:, t].set(nxt)
      tokens = tokens.at[:, jnp.minimum(t + 1, steps - 1)].set(
          jnp.where(t + 1 < steps, nxt, tokens[:, steps - 1]))
      return tokens, out

    _, out = jax.lax.fori_loop(0, steps, step, (tokens, jnp.zeros_like(tokens)))
    return out


ARCHS: Registry = Registry("model.arch")
ARCHS.register("transformer")(TransformerSeq2Seq)
ARCHS.register("rnn")(RNNSeq2Seq)


def build(model_cfg) -> nn.Module:
  """The seq2seq model named by ``model_cfg.arch``."""
  return ARCHS.get(model_cfg.arch)(model_cfg)


__all__ = ["ARCHS", "Attention", "DecoderBlock", "EncoderBlock", "TransformerSeq2Seq", "build",
           "causal_mask", "padding_mask"]
