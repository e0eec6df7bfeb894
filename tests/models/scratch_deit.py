"""A distilled DeiT written from scratch, the way tutorials build one without timm:

  patches cut as (p1 p2 c) and projected by an nn.Linear (einops 'b c (h p1) (w p2) -> b (h w)
  (p1 p2 c)'), a class token of shape [1, D] and a distillation token of shape [D], the position
  table an nn.Embedding(N + 2, D) (token order: class, distillation, patches), pre-norm blocks
  whose attention has one nn.Linear per head for q, k and v, an MLP whose first layer is a raw
  [in, out] Parameter used as x @ W + b, a final LayerNorm, and the DeiT heads averaged at
  inference.  LayerNorm eps is torch's default 1e-5; GELU is the exact one.  Keys:
  to_patch.{weight,bias}, cls_token [1, D], dist_token [D], pos_table.weight [N + 2, D],
  layers.N.ln1.*, layers.N.attn.heads.H.{q,k,v}.{weight,bias}, layers.N.attn.out.*, layers.N.ln2.*,
  layers.N.ff.w_in [D, hidden], layers.N.ff.b_in, layers.N.ff.out.*, ln.*, head.*, head_dist.*
Convert checkpoints of this model with tools/mappings/scratch_deit.json.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


class Head(nn.Module):
    def __init__(self, dim, head_dim):
        super(Head, self).__init__()
        self.q = nn.Linear(dim, head_dim)
        self.k = nn.Linear(dim, head_dim)
        self.v = nn.Linear(dim, head_dim)

    def forward(self, x):
        q, k, v = self.q(x), self.k(x), self.v(x)
        a = torch.softmax(q @ k.transpose(-2, -1) / (q.shape[-1] ** 0.5), dim=-1)
        return a @ v


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super(Attention, self).__init__()
        self.heads = nn.ModuleList([Head(dim, dim // heads) for _ in range(heads)])
        self.out = nn.Linear(dim, dim)

    def forward(self, x):
        return self.out(torch.cat([h(x) for h in self.heads], dim=-1))


class FeedForward(nn.Module):
    def __init__(self, dim, hidden):
        super(FeedForward, self).__init__()
        self.w_in = nn.Parameter(torch.randn(dim, hidden) * 0.02)   # [in, out]
        self.b_in = nn.Parameter(torch.zeros(hidden))
        self.out = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.out(F.gelu(x @ self.w_in + self.b_in))


class Layer(nn.Module):
    def __init__(self, dim, heads, hidden):
        super(Layer, self).__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, hidden)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.ff(self.ln2(x))


class ScratchDeiT(nn.Module):
    def __init__(self, img_size=32, patch_size=4, in_chans=3, num_classes=10, dim=64, depth=2, heads=4, hidden=128):
        super(ScratchDeiT, self).__init__()
        self.p = patch_size
        n = (img_size // patch_size) ** 2
        self.to_patch = nn.Linear(patch_size * patch_size * in_chans, dim)
        self.cls_token = nn.Parameter(torch.randn(1, dim) * 0.02)
        self.dist_token = nn.Parameter(torch.randn(dim) * 0.02)
        self.pos_table = nn.Embedding(n + 2, dim)
        self.layers = nn.ModuleList([Layer(dim, heads, hidden) for _ in range(depth)])
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        self.head_dist = nn.Linear(dim, num_classes)

    def forward(self, x):
        b, c, h, w = x.shape
        p = self.p
        x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)
        x = self.to_patch(x)
        tokens = torch.cat([self.cls_token.expand(b, 1, -1), self.dist_token.expand(b, 1, -1), x], dim=1)
        x = tokens + self.pos_table(torch.arange(tokens.shape[1]))
        for layer in self.layers:
            x = layer(x)
        x = self.ln(x)
        return (self.head(x[:, 0]) + self.head_dist(x[:, 1])) / 2


def build(img_size=32, patch_size=4, in_chans=3, num_classes=10, dim=64, depth=2, heads=4, hidden=128):
    return ScratchDeiT(img_size, patch_size, in_chans, num_classes, dim, depth, heads, hidden)
