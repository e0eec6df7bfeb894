"""Faithful re-implementations (eval mode) of the CLIP image encoders, with the module names of
their projects so their state dicts have the real keys:

- OpenAI CLIP's VisionTransformer (clip/model.py): conv1 without bias, class_embedding,
  positional_embedding, ln_pre, transformer.resblocks (nn.MultiheadAttention on L x N x D, QuickGELU
  MLP c_fc/c_proj), ln_post on the class token, x @ proj; LayerNorm computed in float32.
  OpenCLIP's VisionTransformer has the same names; act='gelu', ls_init (ls_1/ls_2 LayerScale),
  pool_type ('tok' | 'avg': mean of the patch tokens) and final_ln_after_pool (ln_post on the
  pooled vector instead of every token) give its variants.
- a whole CLIP model: that tower as `visual` plus a text tower with OpenAI's names.
- Hugging Face CLIPVisionModel / CLIPVisionModelWithProjection / CLIPModel (vision_model.*,
  visual_projection, text_model.*)."""
from collections import OrderedDict

import torch
import torch.nn as nn


class LayerNorm(nn.LayerNorm):
    """OpenAI's subclass: normalise in float32, return the input's dtype."""

    def forward(self, x):
        t = x.dtype
        return super().forward(x.type(torch.float32)).type(t)


class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class LayerScale(nn.Module):
    def __init__(self, dim, init):
        super().__init__()
        self.gamma = nn.Parameter(init * torch.ones(dim))

    def forward(self, x):
        return x * self.gamma


class ResidualAttentionBlock(nn.Module):
    def __init__(self, d_model, n_head, act="quickgelu", ls_init=None, attn_mask=None):
        super().__init__()
        self.attn = nn.MultiheadAttention(d_model, n_head)
        self.ln_1 = LayerNorm(d_model)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(d_model, d_model * 4)),
            ("gelu", QuickGELU() if act == "quickgelu" else nn.GELU()),
            ("c_proj", nn.Linear(d_model * 4, d_model)),
        ]))
        self.ln_2 = LayerNorm(d_model)
        self.ls_1 = LayerScale(d_model, ls_init) if ls_init is not None else nn.Identity()
        self.ls_2 = LayerScale(d_model, ls_init) if ls_init is not None else nn.Identity()
        self.attn_mask = attn_mask

    def attention(self, x):
        m = self.attn_mask.to(dtype=x.dtype, device=x.device) if self.attn_mask is not None else None
        return self.attn(x, x, x, need_weights=False, attn_mask=m)[0]

    def forward(self, x):
        x = x + self.ls_1(self.attention(self.ln_1(x)))
        return x + self.ls_2(self.mlp(self.ln_2(x)))


class Transformer(nn.Module):
    def __init__(self, width, layers, heads, act="quickgelu", ls_init=None, attn_mask=None):
        super().__init__()
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads, act, ls_init, attn_mask)
                                         for _ in range(layers)])

    def forward(self, x):
        return self.resblocks(x)


class VisionTransformer(nn.Module):
    def __init__(self, input_resolution, patch_size, width, layers, heads, output_dim, act="quickgelu",
                 ls_init=None, pool_type="tok", final_ln_after_pool=False):
        super().__init__()
        self.pool_type, self.final_ln_after_pool = pool_type, final_ln_after_pool
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        scale = width ** -0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn((input_resolution // patch_size) ** 2 + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, layers, heads, act, ls_init)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    def forward(self, x):
        x = self.conv1(x)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls = self.class_embedding.to(x.dtype) + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype)
        x = torch.cat([cls, x], dim=1)
        x = x + self.positional_embedding.to(x.dtype)
        x = self.ln_pre(x)
        x = x.permute(1, 0, 2)  # NLD -> LND
        x = self.transformer(x)
        x = x.permute(1, 0, 2)
        pool = (lambda t: t[:, 1:].mean(dim=1)) if self.pool_type == "avg" else (lambda t: t[:, 0])
        x = self.ln_post(pool(x)) if self.final_ln_after_pool else pool(self.ln_post(x))
        if self.proj is not None:
            x = x @ self.proj
        return x


class CLIP(nn.Module):
    """The image tower and OpenAI's text tower (context 8, small vocabulary): the state dict of a
    whole CLIP checkpoint."""

    def __init__(self, visual, embed_dim, context_length=8, vocab_size=50, width=32, heads=2, layers=1):
        super().__init__()
        self.visual = visual
        mask = torch.full((context_length, context_length), float("-inf")).triu_(1)
        self.transformer = Transformer(width, layers, heads, attn_mask=mask)
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.randn(context_length, width) * 0.01)
        self.ln_final = LayerNorm(width)
        self.text_projection = nn.Parameter(torch.randn(width, embed_dim) * width ** -0.5)
        self.logit_scale = nn.Parameter(torch.ones([]) * 2.6592)

    def encode_image(self, image):
        return self.visual(image)


# ------------------------------------------------------------------------------ Hugging Face CLIP

class HFEmbeddings(nn.Module):
    def __init__(self, hidden, image_size, patch_size):
        super().__init__()
        self.class_embedding = nn.Parameter(torch.randn(hidden))
        self.patch_embedding = nn.Conv2d(3, hidden, kernel_size=patch_size, stride=patch_size, bias=False)
        n = (image_size // patch_size) ** 2 + 1
        self.position_embedding = nn.Embedding(n, hidden)
        self.register_buffer("position_ids", torch.arange(n).expand((1, -1)), persistent=True)

    def forward(self, pixel_values):
        b = pixel_values.shape[0]
        patches = self.patch_embedding(pixel_values).flatten(2).transpose(1, 2)
        cls = self.class_embedding.expand(b, 1, -1)
        return torch.cat([cls, patches], dim=1) + self.position_embedding(self.position_ids)


class HFAttention(nn.Module):
    def __init__(self, hidden, heads):
        super().__init__()
        self.heads, self.head_dim = heads, hidden // heads
        self.scale = self.head_dim ** -0.5
        self.q_proj = nn.Linear(hidden, hidden)
        self.k_proj = nn.Linear(hidden, hidden)
        self.v_proj = nn.Linear(hidden, hidden)
        self.out_proj = nn.Linear(hidden, hidden)

    def forward(self, x):
        b, n, d = x.shape
        sh = lambda t: t.view(b, n, self.heads, self.head_dim).transpose(1, 2)  # noqa: E731
        q, k, v = sh(self.q_proj(x)), sh(self.k_proj(x)), sh(self.v_proj(x))
        w = torch.softmax(torch.matmul(q, k.transpose(2, 3)) * self.scale, dim=-1)
        o = torch.matmul(w, v).transpose(1, 2).reshape(b, n, d)
        return self.out_proj(o)


HF_ACTS = {"quick_gelu": QuickGELU, "gelu": nn.GELU}


class HFMLP(nn.Module):
    def __init__(self, hidden, inter, act):
        super().__init__()
        self.activation_fn = HF_ACTS[act]()
        self.fc1 = nn.Linear(hidden, inter)
        self.fc2 = nn.Linear(inter, hidden)

    def forward(self, x):
        return self.fc2(self.activation_fn(self.fc1(x)))


class HFEncoderLayer(nn.Module):
    def __init__(self, hidden, heads, inter, act, eps):
        super().__init__()
        self.self_attn = HFAttention(hidden, heads)
        self.layer_norm1 = nn.LayerNorm(hidden, eps=eps)
        self.mlp = HFMLP(hidden, inter, act)
        self.layer_norm2 = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x):
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class HFEncoder(nn.Module):
    def __init__(self, hidden, heads, inter, layers, act, eps):
        super().__init__()
        self.layers = nn.ModuleList([HFEncoderLayer(hidden, heads, inter, act, eps) for _ in range(layers)])


class HFVisionTransformer(nn.Module):
    def __init__(self, hidden, heads, inter, layers, image_size, patch_size, act, eps):
        super().__init__()
        self.embeddings = HFEmbeddings(hidden, image_size, patch_size)
        self.pre_layrnorm = nn.LayerNorm(hidden, eps=eps)
        self.encoder = HFEncoder(hidden, heads, inter, layers, act, eps)
        self.post_layernorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x):
        h = self.pre_layrnorm(self.embeddings(x))
        for layer in self.encoder.layers:
            h = layer(h)
        return self.post_layernorm(h[:, 0, :])   # pooler_output


class HFCLIPVision(nn.Module):
    """CLIPVisionModel (projection_dim None) or CLIPVisionModelWithProjection; with_text adds a
    text model, text_projection and logit_scale: the keys of a CLIPModel."""

    def __init__(self, hidden=64, heads=4, inter=128, layers=2, image_size=32, patch_size=8, act="quick_gelu",
                 eps=1e-5, projection_dim=None, with_text=False):
        super().__init__()
        self.vision_model = HFVisionTransformer(hidden, heads, inter, layers, image_size, patch_size, act, eps)
        self.visual_projection = nn.Linear(hidden, projection_dim, bias=False) if projection_dim else None
        if with_text:
            self.text_model = nn.Module()
            self.text_model.embeddings = nn.Module()
            self.text_model.embeddings.token_embedding = nn.Embedding(50, 32)
            self.text_model.final_layer_norm = nn.LayerNorm(32)
            self.text_projection = nn.Linear(32, projection_dim, bias=False)
            self.logit_scale = nn.Parameter(torch.tensor(2.6592))

    def forward(self, x):
        y = self.vision_model(x)
        return self.visual_projection(y) if self.visual_projection is not None else y

    def config(self, act, eps, heads, image_size, patch_size, projection_dim, nested):
        vc = {"hidden_act": act, "layer_norm_eps": eps, "num_attention_heads": heads, "image_size": image_size,
              "patch_size": patch_size, "model_type": "clip_vision_model"}
        if nested:
            return {"model_type": "clip", "projection_dim": projection_dim, "vision_config": vc,
                    "text_config": {"hidden_act": "quick_gelu"}}
        return vc
