"""A faithful re-implementation (eval mode) of facebookresearch/dinov2's DinoVisionTransformer
(dinov2/models/vision_transformer.py, the hub model: block_chunks 0, MLP FFN, LayerScale,
LayerNorm eps 1e-6, optional register tokens), with its module names, so its state dict has the
hub files' keys.  forward() returns x_norm_clstoken, as the hub model (head = Identity) does."""
import math

import torch
import torch.nn as nn

from .timm_vit import LayerScale, Mlp


class PatchEmbed(nn.Module):
    def __init__(self, patch_size, in_chans, embed_dim):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.Identity()

    def forward(self, x):
        x = self.proj(x).flatten(2).transpose(1, 2)
        return self.norm(x)


class Attention(nn.Module):
    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim, bias=True)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj(x)


class SwiGLUFFNFused(nn.Module):
    """dinov2/layers/swiglu_ffn.py: w12 gives [x1; x2], w3(silu(x1) * x2); the fused form rounds the
    hidden width to 2/3 of it, up to a multiple of 8."""

    def __init__(self, dim, hidden):
        super().__init__()
        hidden = (int(hidden * 2 / 3) + 7) // 8 * 8
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x):
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        return self.w3(nn.functional.silu(x1) * x2)


class Block(nn.Module):
    def __init__(self, dim, num_heads, mlp_ratio, init_values, ffn_layer="mlp"):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.ls1 = LayerScale(dim, init_values)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = (SwiGLUFFNFused if ffn_layer == "swiglufused" else Mlp)(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, init_values)

    def forward(self, x):
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class DinoVisionTransformer(nn.Module):
    def __init__(self, img_size=56, patch_size=14, embed_dim=64, depth=2, num_heads=4, mlp_ratio=4.0,
                 init_values=1.0, num_register_tokens=0, interpolate_offset=0.1, ffn_layer="mlp"):
        super().__init__()
        self.patch_size = patch_size
        self.patch_embed = PatchEmbed(patch_size, 3, embed_dim)
        num_patches = (img_size // patch_size) ** 2
        self.num_tokens = 1
        self.num_register_tokens = num_register_tokens
        self.interpolate_offset = interpolate_offset
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))
        self.register_tokens = (nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim))
                                if num_register_tokens else None)
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio, init_values, ffn_layer)
                                     for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Identity()
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))

    def interpolate_pos_encoding(self, x, w, h):
        npatch = x.shape[1] - 1
        N = self.pos_embed.shape[1] - 1
        if npatch == N and w == h:
            return self.pos_embed
        pos_embed = self.pos_embed.float()
        class_pos_embed, patch_pos_embed = pos_embed[:, 0], pos_embed[:, 1:]
        dim = x.shape[-1]
        w0, h0 = w // self.patch_size, h // self.patch_size
        M = int(math.sqrt(N))
        sx, sy = float(w0 + self.interpolate_offset) / M, float(h0 + self.interpolate_offset) / M
        patch_pos_embed = nn.functional.interpolate(
            patch_pos_embed.reshape(1, M, M, dim).permute(0, 3, 1, 2), scale_factor=(sx, sy), mode="bicubic",
            antialias=False)
        patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).view(1, -1, dim)
        return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1).to(x.dtype)

    def prepare_tokens(self, x):
        B, nc, w, h = x.shape
        x = self.patch_embed(x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = x + self.interpolate_pos_encoding(x, w, h)
        if self.register_tokens is not None:
            x = torch.cat((x[:, :1], self.register_tokens.expand(x.shape[0], -1, -1), x[:, 1:]), dim=1)
        return x

    def forward(self, x):
        x = self.prepare_tokens(x)
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x)[:, 0])


# ------------------------------------------------------------------------------ Hugging Face Dinov2Model

class HFDinov2Embeddings(nn.Module):
    """Dinov2Embeddings / Dinov2WithRegistersEmbeddings: cls + patches + position embedding (resampled
    to the input's grid unless it is the stored one on a square input), then the register tokens
    inserted after the class token.  Dinov2 resamples bicubic, the with-registers model bicubic with
    antialias=True."""

    def __init__(self, hidden, image_size, patch_size, registers=0, antialias=False):
        super().__init__()
        self.patch_size, self.antialias = patch_size, antialias
        self.cls_token = nn.Parameter(torch.randn(1, 1, hidden))
        self.mask_token = nn.Parameter(torch.zeros(1, hidden))
        if registers:
            self.register_tokens = nn.Parameter(torch.randn(1, registers, hidden))
        self.patch_embeddings = nn.Module()
        self.patch_embeddings.projection = nn.Conv2d(3, hidden, kernel_size=patch_size, stride=patch_size)
        self.position_embeddings = nn.Parameter(torch.randn(1, (image_size // patch_size) ** 2 + 1, hidden))

    def pos(self, n, h, w):
        stored = self.position_embeddings.shape[1] - 1
        if n == stored and h == w:
            return self.position_embeddings
        g = int(stored ** 0.5)
        d = self.position_embeddings.shape[-1]
        grid = self.position_embeddings[:, 1:].reshape(1, g, g, d).permute(0, 3, 1, 2)
        grid = nn.functional.interpolate(grid, size=(h // self.patch_size, w // self.patch_size), mode="bicubic",
                                         align_corners=False, antialias=self.antialias)
        return torch.cat((self.position_embeddings[:, :1], grid.permute(0, 2, 3, 1).reshape(1, -1, d)), dim=1)

    def forward(self, x):
        p = self.patch_embeddings.projection(x).flatten(2).transpose(1, 2)
        e = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), p), dim=1)
        e = e + self.pos(p.shape[1], x.shape[2], x.shape[3])
        if hasattr(self, "register_tokens"):
            e = torch.cat((e[:, :1], self.register_tokens.expand(x.shape[0], -1, -1), e[:, 1:]), dim=1)
        return e


class HFSelfAttention(nn.Module):
    def __init__(self, hidden, heads):
        super().__init__()
        self.heads, self.head_dim = heads, hidden // heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)

    def forward(self, x):
        b, n, d = x.shape
        sh = lambda t: t.view(b, n, self.heads, self.head_dim).transpose(1, 2)  # noqa: E731
        q, k, v = sh(self.query(x)), sh(self.key(x)), sh(self.value(x))
        w = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim), dim=-1)
        return torch.matmul(w, v).permute(0, 2, 1, 3).reshape(b, n, d)


class HFLayerScale(nn.Module):
    def __init__(self, hidden, init):
        super().__init__()
        self.lambda1 = nn.Parameter(init * torch.ones(hidden))

    def forward(self, x):
        return x * self.lambda1


class HFSwiGLUFFN(nn.Module):
    """Dinov2SwiGLUFFN: weights_in gives [x1; x2], weights_out(silu(x1) * x2); hidden width
    int(hidden * mlp_ratio) taken to 2/3, rounded up to a multiple of 8."""

    def __init__(self, hidden, mlp_ratio):
        super().__init__()
        h = (int(int(hidden * mlp_ratio) * 2 / 3) + 7) // 8 * 8
        self.weights_in = nn.Linear(hidden, 2 * h)
        self.weights_out = nn.Linear(h, hidden)

    def forward(self, x):
        x1, x2 = self.weights_in(x).chunk(2, dim=-1)
        return self.weights_out(nn.functional.silu(x1) * x2)


class HFLayer(nn.Module):
    def __init__(self, hidden, heads, eps, init, swiglu=False, mlp_ratio=4):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, eps=eps)
        self.attention = nn.Module()
        self.attention.attention = HFSelfAttention(hidden, heads)
        self.attention.output = nn.Module()
        self.attention.output.dense = nn.Linear(hidden, hidden)
        self.layer_scale1 = HFLayerScale(hidden, init)
        self.norm2 = nn.LayerNorm(hidden, eps=eps)
        self.mlp = HFSwiGLUFFN(hidden, mlp_ratio) if swiglu else Mlp(hidden, int(hidden * mlp_ratio))
        self.layer_scale2 = HFLayerScale(hidden, init)

    def forward(self, x):
        a = self.attention.output.dense(self.attention.attention(self.norm1(x)))
        x = x + self.layer_scale1(a)
        return x + self.layer_scale2(self.mlp(self.norm2(x)))


class HFDinov2Model(nn.Module):
    """Dinov2Model (registers=0) or Dinov2WithRegistersModel: forward returns pooler_output,
    layernorm(sequence)[:, 0]; sequence() the whole normed sequence."""

    def __init__(self, hidden=64, heads=4, layers=2, image_size=56, patch_size=14, eps=1e-6, init=1.0, registers=0,
                 swiglu=False, mlp_ratio=4):
        super().__init__()
        self.registers = registers
        self.embeddings = HFDinov2Embeddings(hidden, image_size, patch_size, registers, antialias=registers > 0)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList([HFLayer(hidden, heads, eps, init, swiglu, mlp_ratio)
                                            for _ in range(layers)])
        self.layernorm = nn.LayerNorm(hidden, eps=eps)

    def sequence(self, x):
        h = self.embeddings(x)
        for layer in self.encoder.layer:
            h = layer(h)
        return self.layernorm(h)

    def forward(self, x):
        return self.sequence(x)[:, 0]


class HFDinov2ForImageClassification(nn.Module):
    """Dinov2ForImageClassification (backbone under dinov2.) or Dinov2WithRegistersForImageClassification
    (dinov2_with_registers.): classifier(concat(class token, mean of the patch tokens)); the
    register tokens are not averaged."""

    def __init__(self, num_labels, **kw):
        super().__init__()
        backbone = HFDinov2Model(**kw)
        self.prefix = "dinov2_with_registers" if backbone.registers else "dinov2"
        setattr(self, self.prefix, backbone)
        self.classifier = nn.Linear(2 * kw["hidden"], num_labels)

    def forward(self, x):
        m = getattr(self, self.prefix)
        s = m.sequence(x)
        return self.classifier(torch.cat((s[:, 0], s[:, 1 + m.registers:].mean(dim=1)), dim=1))
