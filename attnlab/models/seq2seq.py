"""The encoder–decoder Transformer (``model.arch = "transformer"`` of the task trainer; the
registry ``attnlab.models.ARCHS`` gives each architecture's language-model and seq2seq
forms).

- ``transformer``: encoder–decoder Transformer (Vaswani et al. 2017), pre-norm, built from
  the language models' own attention layer (``transformer.SelfAttention``: the kind,
  pattern, GQA, impl and position scheme of ``model.attention`` / ``model.position``).
  The encoder attends with the ``full`` pattern over valid source tokens; each decoder
  block has self-attention with ``model.attention.pattern`` (causal, as a language
  model's), cross-attention to the encoder output, and an MLP. The position axis acts in
  the self-attention of both stacks (absolute embeddings, RoPE, ALiBi, ...);
  cross-attention is content-only, as in T5.
- ``rnn``: GRU / LSTM encoder–decoder with no, Bahdanau or Luong attention
  (``attnlab.models.rnn.RNNSeq2Seq``).

Every model is called alike: ``model(src, tgt_in, src_positions, tgt_positions)`` ->
logits float32 [batch, tgt, vocab] with teacher forcing, and
``model.generate(src, steps)`` -> int32 [batch, steps] by greedy decoding. Positions
default to 0..n-1 (randomized positional encodings pass sorted random ones while
training). ``<pad>`` = 0 marks padding at the end of ``src``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from attnlab import positional
from attnlab.data.tasks import BOS, PAD
from attnlab.models.common import NORMS, declared_params
from attnlab.models.transformer import MLP, SelfAttention


def _default_positions(tokens):
  return jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)


def padding_mask(src_valid, q_len: int):
  """Bool [batch, 1, q_len, src]: every query may see exactly the valid source tokens."""
  return jnp.broadcast_to(src_valid[:, None, None, :], (src_valid.shape[0], 1, q_len,
                                                        src_valid.shape[1]))


class EncoderBlock(nn.Module):
  """Pre-norm: x + attn(norm(x)) with the ``full`` pattern over valid source tokens, then
  the MLP. ``layer``: this block's index (seeds random features)."""
  cfg: Any
  layer: int = 0

  @nn.compact
  def __call__(self, x, mask, positions):
    norm = NORMS.get(self.cfg.norm)
    depth = 2 * self.cfg.num_layers
    h = norm(self.cfg, "norm_attention")(x)
    x = x + SelfAttention(self.cfg, self.layer, pattern="full", depth=depth,
                          name="attention")(h, positions, mask=mask)
    return x + MLP(self.cfg, name="mlp")(norm(self.cfg, "norm_mlp")(x))


class DecoderBlock(nn.Module):
  """Pre-norm: self-attention with ``model.attention.pattern`` (causal), cross-attention to
  the encoder output (valid source tokens), then the MLP."""
  cfg: Any
  layer: int = 0

  @nn.compact
  def __call__(self, x, memory, cross_mask, positions):
    norm = NORMS.get(self.cfg.norm)
    depth = 2 * self.cfg.num_layers
    h = norm(self.cfg, "norm_self")(x)
    x = x + SelfAttention(self.cfg, self.layer, depth=depth, name="self_attention")(h, positions)
    x = x + SelfAttention(self.cfg, self.layer, depth=depth, name="cross_attention")(
        norm(self.cfg, "norm_cross")(x), mask=cross_mask, memory=memory)
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
    self.encoder = [EncoderBlock(cfg, i, name=f"encoder_{i}") for i in range(cfg.num_layers)]
    self.decoder = [DecoderBlock(cfg, cfg.num_layers + i, name=f"decoder_{i}")
                    for i in range(cfg.num_layers)]
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
    cross_mask = padding_mask(valid, tgt_in.shape[1])
    for block in self.decoder:
      x = block(x, memory, cross_mask, positions)
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


__all__ = ["DecoderBlock", "EncoderBlock", "TransformerSeq2Seq", "padding_mask"]
