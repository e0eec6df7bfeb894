"""A faithful re-implementation of OpenCLIP's timm image tower (open_clip/timm_model.py, TimmModel) around
the timm Eva of eva_ref.py, the timm VisionTransformer of timm_vit.py or the VisionTransformerRelPos of
relpos_ref.py, and of a CustomTextCLIP holding it (open_clip/model.py: visual, text, logit_scale),
so the state dicts have exactly the keys of OpenCLIP's EVA-02 checkpoints (EVA02-B-16, EVA02-L-14, ...:
vision_cfg timm_model_name eva02_*_clip_*, timm_pool 'token', timm_proj null) and of its SigLIP ones
(ViT-B-16-SigLIP, ViT-SO400M-14-SigLIP, ...: vit_*_siglip_*, timm_pool 'map', timm_proj 'none').

TimmModel, as written there:
- proj not 'linear' / 'mlp' and no attention pool: trunk = create_model(name, num_classes=embed_dim (0 for
  proj 'none'), global_pool=pool): the trunk's own classifier head, a biased Linear, is the projection;
  self.head is empty.
- proj 'linear' / 'mlp': trunk = create_model(name) with its registered pooling, then
  reset_classifier(0, global_pool=pool) (pool '' keeps the registered one; fc_norm stays as built; a
  VisionTransformer drops its attention pool for any pool but 'map');
  head.proj = Linear(num_features, embed_dim, bias=proj_bias), or head.mlp = timm Mlp(D, 2E, E).
forward(x) = head(trunk(x)): the image embedding (CLIP.encode_image(normalize=False))."""
from collections import OrderedDict

import torch
import torch.nn as nn

from . import eva_ref, relpos_ref, timm_vit


class Mlp(nn.Module):
    """timm layers.Mlp (fc1, GELU, fc2), as TimmModel's 'mlp' projection builds it."""

    def __init__(self, dim, hidden, out, bias=(True, False)):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=bias[0])
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, out, bias=bias[1])

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class TimmModel(nn.Module):
    def __init__(self, trunk_kwargs, embed_dim, pool="avg", proj="linear", proj_bias=False, registered_pool="token",
                 trunk="eva"):
        super().__init__()
        extra_proj = proj in ("linear", "mlp")
        if trunk in ("vit", "relpos"):   # timm VisionTransformer(RelPos): the registered pooling is a kwarg
            kw = dict(trunk_kwargs)
            registered_pool = kw.pop("global_pool", "token")
            cls = timm_vit.VisionTransformer if trunk == "vit" else relpos_ref.VisionTransformerRelPos
            make = lambda **k: cls(**dict(kw, **k))  # noqa: E731
        else:
            make = lambda **k: eva_ref.Eva(**dict(trunk_kwargs, **k))  # noqa: E731
        if not extra_proj:
            proj_dim = 0 if proj == "none" else embed_dim
            self.trunk = make(num_classes=proj_dim, global_pool=pool)
            prev = embed_dim
        else:
            self.trunk = make(num_classes=0, global_pool=registered_pool)
            if pool:   # reset_classifier(0, global_pool=pool)
                self.trunk.global_pool = pool
                if trunk == "vit" and pool != "map":
                    self.trunk.attn_pool = None
            prev = trunk_kwargs.get("embed_dim", 768)   # the trunk's num_features
        head = OrderedDict()
        if proj == "linear":
            head["drop"] = nn.Dropout(0.0)
            head["proj"] = nn.Linear(prev, embed_dim, bias=proj_bias)
        elif proj == "mlp":
            head["mlp"] = Mlp(prev, 2 * embed_dim, embed_dim, bias=(True, proj_bias))
        self.head = nn.Sequential(head)

    def forward(self, x):
        return self.head(self.trunk(x))


class TextTransformer(nn.Module):
    """OpenCLIP's TextTransformer parameters (only their names and shapes matter here: the image
    tower is what is converted and compared)."""

    def __init__(self, embed_dim, context_length=8, vocab_size=50, width=32, heads=2, layers=1, proj_bias=False):
        super().__init__()
        from .clip_ref import Transformer, LayerNorm
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.randn(context_length, width) * 0.01)
        self.transformer = Transformer(width, layers, heads)
        self.ln_final = LayerNorm(width)
        if proj_bias:   # text_cfg proj_bias (the SigLIP configs): a biased nn.Linear
            self.text_projection = nn.Linear(width, embed_dim)
        else:
            self.text_projection = nn.Parameter(torch.randn(width, embed_dim) * width ** -0.5)


class CustomTextCLIP(nn.Module):
    def __init__(self, visual, embed_dim, siglip=False):
        super().__init__()
        self.visual = visual
        self.text = TextTransformer(embed_dim, proj_bias=siglip)
        self.logit_scale = nn.Parameter(torch.ones([]) * 2.6592)
        if siglip:   # init_logit_bias in the SigLIP configs
            self.logit_bias = nn.Parameter(torch.ones([]) * -10.0)

    def encode_image(self, image):
        return self.visual(image)
