"""A PyTorch GPT equivalent to an attnlab ``TransformerLM`` config, for side-by-side
speed measurements (``scripts/bench_train.py --torch``). Benchmark-only: attnlab never
imports it, and PyTorch is an optional benchmark dependency.

Written from the architecture nanoGPT uses (pre-LayerNorm blocks, causal softmax
attention through ``scaled_dot_product_attention``, a 4x GELU MLP, learned positions,
weights tied between the embedding and the output head, AdamW with decay on matrices
and embeddings, gradient clipping), with attnlab's sizes, biases and optimizer settings
read from the config, so one training step does the same arithmetic.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class Block(nn.Module):
  def __init__(self, d: int, heads: int, mlp_ratio: int, bias: bool):
    super().__init__()
    self.heads = heads
    self.ln1 = nn.LayerNorm(d, eps=1e-6, bias=bias)          # flax's epsilon
    self.qkv = nn.Linear(d, 3 * d, bias=bias)
    self.proj = nn.Linear(d, d, bias=bias)
    self.ln2 = nn.LayerNorm(d, eps=1e-6, bias=bias)
    self.up = nn.Linear(d, mlp_ratio * d, bias=bias)
    self.down = nn.Linear(mlp_ratio * d, d, bias=bias)

  def forward(self, x):
    b, n, d = x.shape
    q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
    q, k, v = (t.view(b, n, self.heads, d // self.heads).transpose(1, 2) for t in (q, k, v))
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    x = x + self.proj(y.transpose(1, 2).reshape(b, n, d))
    return x + self.down(F.gelu(self.up(self.ln2(x)), approximate="tanh"))   # as attnlab


class GPT(nn.Module):
  def __init__(self, vocab: int, context: int, d: int, layers: int, heads: int,
               mlp_ratio: int = 4, bias: bool = False):
    super().__init__()
    self.tok = nn.Embedding(vocab, d)
    self.pos = nn.Embedding(context, d)
    self.blocks = nn.ModuleList(Block(d, heads, mlp_ratio, bias) for _ in range(layers))
    self.ln_f = nn.LayerNorm(d, eps=1e-6, bias=bias)
    self.head = nn.Linear(d, vocab, bias=False)
    self.head.weight = self.tok.weight                       # tied
    for name, p in self.named_parameters():
      if p.dim() >= 2:
        std = 0.02 / math.sqrt(2 * layers) if name.endswith(("proj.weight", "down.weight")) else 0.02
        nn.init.normal_(p, 0.0, std)

  def forward(self, tokens, targets):
    n = tokens.shape[1]
    x = self.tok(tokens) + self.pos(torch.arange(n, device=tokens.device))
    for block in self.blocks:
      x = block(x)
    logits = self.head(self.ln_f(x))
    return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.reshape(-1))


def from_config(cfg):
  """(model, optimizer, step(tokens, targets) -> loss) for an attnlab config."""
  m, t = cfg.model, cfg.train
  model = GPT(m.vocab_size, cfg.data.seq_len, m.d_model, m.num_layers, m.attention.num_heads,
              m.mlp_ratio, m.use_bias)
  decay = [p for p in model.parameters() if p.dim() >= 2]
  no_decay = [p for p in model.parameters() if p.dim() < 2]
  opt = torch.optim.AdamW([{"params": decay, "weight_decay": t.weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=t.lr, betas=(t.b1, t.b2))

  def step(tokens, targets):
    loss = model(tokens, targets)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
    opt.step()
    return loss.detach()

  return model, opt, step
