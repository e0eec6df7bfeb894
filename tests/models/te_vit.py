"""A ViT classifier built on torch's own nn.TransformerEncoder, the way many users write one:

  conv patch embedding (Conv2d k=stride=patch) -> flatten -> class token FIRST -> + learnable
  pos_embed -> nn.TransformerEncoder(nn.TransformerEncoderLayer(d, heads, 4d, activation='relu'
  (default), batch_first=True, norm_first=False)) -> head on token 0.

nn.TransformerEncoderLayer with norm_first=False is post-norm: x = norm1(x + sa(x));
x = norm2(x + ff(x)); LayerNorm eps is torch's default 1e-5 and there is no final norm.  Keys:
  patch_embed.{weight,bias}, cls_token, pos_embed,
  encoder.layers.N.self_attn.in_proj_weight / in_proj_bias / out_proj.{weight,bias},
  encoder.layers.N.linear1.*, linear2.*, norm1.*, norm2.*, head.*
Convert checkpoints of this model with tools/mappings/torch_transformer_encoder.json.
"""

import torch
import torch.nn as nn


class TEViT(nn.Module):
    def __init__(self, img_size=32, patch_size=8, in_chans=3, num_classes=10, dim=64, depth=2, heads=4):
        super(TEViT, self).__init__()
        self.patch_embed = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)
        n = (img_size // patch_size) ** 2
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, n + 1, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.1, batch_first=True, norm_first=False)
        self.encoder = nn.TransformerEncoder(layer, depth)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.encoder(x)
        return self.head(x[:, 0])


def build(img_size=32, patch_size=8, in_chans=3, num_classes=10, dim=64, depth=2, heads=4):
    return TEViT(img_size, patch_size, in_chans, num_classes, dim, depth, heads)
