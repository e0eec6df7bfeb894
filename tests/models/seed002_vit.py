"""The from-scratch ViT of seed 002 ("Vision Transfomer系列第一节---从0到1的源码实现"), rebuilt in
PyTorch so tests can save checkpoints whose keys look like a real user's.

What the seed shows, kept as is:
  * PatchLayer: Conv2d(3, D, k=stride=patch), flatten(2), permute(0, 2, 1), LayerNorm(D)
    (default eps 1e-5);
  * the class token is concatenated LAST, then a learnable pos_embed (num_patches + 1 rows) is
    added; the head reads the last token (`query[:, -1, :]`);
  * blocks are mmcv-style BaseTransformerLayer with operation_order
    ('self_attn', 'norm', 'ffn', 'norm'), i.e. post-norm:
        x = LN(x + MHA(x));  x = LN(x + FFN(x))
    with FFN = Linear(D, 4D) - ReLU - Linear(4D, D); there is no final norm.

What the seed does not show, written the obvious (mmcv) way:
  * `hand` = patch embedding, cat cls last, + pos_embed; `extract_feature` = the blocks;
  * module names follow mmcv so state-dict keys read
        blocks.N.attentions.0.attn.in_proj_weight / in_proj_bias / out_proj.{weight,bias}
        blocks.N.norms.0.{weight,bias}, blocks.N.norms.1.*
        blocks.N.ffns.0.layers.0.0.{weight,bias}  (Linear D->4D; layers.0 = Sequential(Linear, ReLU, Dropout))
        blocks.N.ffns.0.layers.1.{weight,bias}    (Linear 4D->D)
  * attention is nn.MultiheadAttention with batch_first=False (mmcv's default); the wrapper
    transposes (B, N, D) <-> (N, B, D) around it and adds the residual, as mmcv does.

Convert checkpoints of this model with tools/mappings/seed002_vit.json.
"""

import torch
import torch.nn as nn


class PatchLayer(nn.Module):
    def __init__(self, img_size, patch_size=20, embeding_dim=64):
        super(PatchLayer, self).__init__()
        self.grid_size = (img_size[0] // patch_size, img_size[1] // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_channels=3, out_channels=embeding_dim, kernel_size=(patch_size, patch_size),
                              stride=patch_size, padding=0)
        self.norm = nn.LayerNorm(normalized_shape=embeding_dim)

    def forward(self, img):
        img = self.proj(img)
        img = img.flatten(start_dim=2)
        img = img.permute(0, 2, 1)  # [b, wh, c]
        img = self.norm(img)
        return img


class MultiheadAttention(nn.Module):
    """mmcv.cnn.bricks.transformer.MultiheadAttention: nn.MultiheadAttention + residual."""

    def __init__(self, embed_dim, num_heads, attn_drop=0.0, proj_drop=0.0, batch_first=True):
        super(MultiheadAttention, self).__init__()
        self.batch_first = batch_first
        self.attn = nn.MultiheadAttention(embed_dim, num_heads, dropout=attn_drop)  # batch_first=False
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, query):
        identity = query
        x = query.transpose(0, 1) if self.batch_first else query
        out = self.attn(x, x, x, need_weights=False)[0]
        if self.batch_first:
            out = out.transpose(0, 1)
        return identity + self.proj_drop(out)


class FFN(nn.Module):
    """mmcv FFN (num_fcs=2): Sequential(Sequential(Linear, act, Dropout), Linear, Dropout) + residual."""

    def __init__(self, embed_dim, feedforward_channels, act_cfg="ReLU", ffn_drop=0.0):
        super(FFN, self).__init__()
        act = {"ReLU": nn.ReLU, "GELU": nn.GELU}[act_cfg]
        self.layers = nn.Sequential(
            nn.Sequential(nn.Linear(embed_dim, feedforward_channels), act(), nn.Dropout(ffn_drop)),
            nn.Linear(feedforward_channels, embed_dim), nn.Dropout(ffn_drop))

    def forward(self, x):
        return x + self.layers(x)


class BaseTransformerLayer(nn.Module):
    def __init__(self, attn_cfgs, fnn_cfg, operation_order=("self_attn", "norm", "ffn", "norm")):
        super(BaseTransformerLayer, self).__init__()
        self.operation_order = operation_order
        self.attentions = nn.ModuleList([MultiheadAttention(**cfg) for cfg in attn_cfgs])
        self.ffns = nn.ModuleList([FFN(**fnn_cfg)])
        dim = attn_cfgs[0]["embed_dim"]
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for op in operation_order if op == "norm"])

    def forward(self, query):
        a = f = n = 0
        for op in self.operation_order:
            if op == "self_attn":
                query = self.attentions[a](query)
                a += 1
            elif op == "ffn":
                query = self.ffns[f](query)
                f += 1
            elif op == "norm":
                query = self.norms[n](query)
                n += 1
        return query


class Vit(nn.Module):
    def __init__(self, img_size=(224, 224), patch_size=16, num_classes=1000, embed_dim=768, depth=12, num_heads=12):
        super(Vit, self).__init__()
        self.patch_embed = PatchLayer(img_size, patch_size, embed_dim)
        num_patches = self.patch_embed.num_patches
        self.blocks = nn.Sequential(*[
            BaseTransformerLayer(attn_cfgs=[dict(embed_dim=embed_dim, num_heads=num_heads)],
                                 fnn_cfg=dict(embed_dim=embed_dim, feedforward_channels=4 * embed_dim,
                                              act_cfg="ReLU", ffn_drop=0.0),
                                 operation_order=("self_attn", "norm", "ffn", "norm"))
            for _ in range(depth)])
        self.cls_token = nn.Parameter(torch.zeros(size=[1, 1, embed_dim]))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))
        self.head = nn.Linear(embed_dim, num_classes)
        self.loss_class = nn.CrossEntropyLoss()
        self.init_weights()

    def init_weights(self):
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.02)

    def hand(self, img):
        x = self.patch_embed(img)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat((x, cls), dim=1)  # class token LAST
        return x + self.pos_embed

    def extract_feature(self, query):
        return self.blocks(query)

    def forward(self, img):
        query = self.hand(img)
        query = self.extract_feature(query)
        cls_fea = query[:, -1, :]
        return self.head(cls_fea)


def build(img_size=32, patch_size=8, num_classes=5, embed_dim=64, depth=2, num_heads=4):
    if isinstance(img_size, int):
        img_size = (img_size, img_size)
    return Vit(img_size=list(img_size), patch_size=patch_size, num_classes=num_classes, embed_dim=embed_dim,
               depth=depth, num_heads=num_heads)
