"""A faithful re-implementation of timm's Eva (eva.py, eval mode) with timm's module names, so its
state_dict has exactly the keys of a real timm EVA / EVA-02 / RoPE-ViT checkpoint.

Written from timm HEAD's eva.py and layers/pos_embed_sincos.py: EvaAttention (q_bias / v_bias and a
zero k bias, or unfused q_proj / k_proj / v_proj; attn.norm when scale_attn_inner), AttentionRope
(attn_type='rope': qkv with a full bias), EvaBlock (layer scale gamma_1 / gamma_2) and
EvaBlockPostNorm, SwiGLU (fc1_g, fc1_x, sub-LN norm) / GluMlp (packed fc1) / Mlp, the rotary
embeddings RotaryEmbeddingCat (axial: temperature, ref_feat_shape, grid offset, 'ij' / 'xy') and
RotaryEmbeddingMixed (learned per-block, per-head frequencies rope.freqs) and RotaryEmbeddingDinoV3
(coordinates normalised per side, periods from the temperature, tiled for half rotation), applied to q and k of the
patch tokens only with apply_rot_embed_cat (interleaved pairs, or rotate_half). Pooling: 'avg' with
fc_norm, 'token' with the final norm; class token and register tokens; dynamic image size with the
rope recomputed for the run grid and pos_embed resampled (bicubic, antialias) as timm does; 'map' with
AttentionPoolLatent (layers/attention_pool.py) over every token, with its own attn_pool_num_heads and
attn_pool_mlp_ratio (Perception Encoder core)."""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .timm_vit import latent_pool, resample_pos_embed


def LayerNorm(dim, eps=1e-6):
    return nn.LayerNorm(dim, eps=eps)


# ---------------------------------------------------------------- rotary embedding (pos_embed_sincos.py)

def freq_bands(num_bands, temperature=10000.0, step=2):
    exp = torch.arange(0, num_bands, step, dtype=torch.int64).to(torch.float32) / num_bands
    return 1.0 / (temperature ** exp)


def build_rotary_pos_embed(feat_shape, dim, temperature, ref_feat_shape=None, grid_offset=0.0, grid_indexing="ij"):
    """in_pixels=False: [N, dim] sin and cos, each band repeated for its channel pair."""
    bands = freq_bands(dim // 4, temperature=temperature, step=1)
    if grid_indexing == "xy":
        feat_shape = [feat_shape[1], feat_shape[0]]
        if ref_feat_shape is not None:
            ref_feat_shape = [ref_feat_shape[1], ref_feat_shape[0]]
    t = [torch.arange(s, dtype=torch.int64).to(torch.float32) + grid_offset for s in feat_shape]
    if ref_feat_shape is not None:
        t = [x / f * r for x, f, r in zip(t, feat_shape, ref_feat_shape)]
    grid = torch.stack(torch.meshgrid(t, indexing=grid_indexing), dim=-1).unsqueeze(-1)
    pos = grid * bands
    n = feat_shape[0] * feat_shape[1]
    sin_emb = pos.sin().reshape(n, -1).repeat_interleave(2, -1)
    cos_emb = pos.cos().reshape(n, -1).repeat_interleave(2, -1)
    return sin_emb, cos_emb


class RotaryEmbeddingCat(nn.Module):
    def __init__(self, dim, temperature=10000.0, ref_feat_shape=None, grid_offset=0.0, grid_indexing="ij"):
        super().__init__()
        self.dim, self.temperature, self.ref_feat_shape = dim, temperature, ref_feat_shape
        self.grid_offset, self.grid_indexing = grid_offset, grid_indexing

    def get_embed(self, shape):
        return torch.cat(build_rotary_pos_embed(list(shape), self.dim, self.temperature, self.ref_feat_shape,
                                                self.grid_offset, self.grid_indexing), -1)


def init_random_2d_freqs(head_dim, depth, num_heads, temperature=10.0):
    mag = 1.0 / (temperature ** (torch.arange(0, head_dim, 4, dtype=torch.float32) / head_dim))
    mag = mag.unsqueeze(0).unsqueeze(0)
    angles = torch.rand(depth, num_heads, 1) * 2 * torch.pi
    fx = torch.cat([mag * torch.cos(angles), mag * torch.cos(angles + torch.pi / 2)], dim=-1)
    fy = torch.cat([mag * torch.sin(angles), mag * torch.sin(angles + torch.pi / 2)], dim=-1)
    return torch.stack([fx, fy], dim=0)


class RotaryEmbeddingMixed(nn.Module):
    def __init__(self, dim, depth, num_heads, temperature=10.0, grid_indexing="xy"):
        super().__init__()
        self.grid_indexing = grid_indexing
        self.freqs = nn.Parameter(init_random_2d_freqs(dim // num_heads, depth, num_heads, temperature))

    def get_embed(self, shape):
        shape = list(shape)
        if self.grid_indexing == "xy":
            shape = [shape[1], shape[0]]
        x_pos, y_pos = torch.meshgrid(torch.arange(shape[0], dtype=torch.float32),
                                      torch.arange(shape[1], dtype=torch.float32), indexing=self.grid_indexing)
        t_x, t_y = x_pos.flatten(), y_pos.flatten()
        freqs = self.freqs.float()
        combined = (t_x.unsqueeze(-1) @ freqs[0].unsqueeze(-2)) + (t_y.unsqueeze(-1) @ freqs[1].unsqueeze(-2))
        sin_emb = torch.sin(combined).repeat_interleave(2, -1)
        cos_emb = torch.cos(combined).repeat_interleave(2, -1)
        return torch.cat([sin_emb, cos_emb], dim=-1)   # (depth, heads, N, 2 * head_dim)


class RotaryEmbeddingDinoV3(nn.Module):
    """Eval mode, normalize_coords='separate', periods from the temperature."""
    def __init__(self, dim, temperature=100.0, grid_offset=0.0, grid_indexing="ij", rotate_half=True):
        super().__init__()
        self.dim, self.grid_offset, self.grid_indexing, self.rotate_half = dim, grid_offset, grid_indexing, rotate_half
        n = dim // 4
        exponents = 2.0 * torch.arange(n, dtype=torch.float32) / (dim // 2)
        self.register_buffer("periods", float(temperature) ** exponents, persistent=False)

    def get_embed(self, shape):
        H, W = shape
        coords_h = (torch.arange(0.5, H, dtype=torch.float32) + self.grid_offset) / float(H)
        coords_w = (torch.arange(0.5, W, dtype=torch.float32) + self.grid_offset) / float(W)
        if self.grid_indexing == "xy":
            grid_w, grid_h = torch.meshgrid(coords_w, coords_h, indexing="xy")
            coords = torch.stack([grid_h, grid_w], dim=-1)
        else:
            coords = torch.stack(torch.meshgrid(coords_h, coords_w, indexing="ij"), dim=-1)
        coords = 2.0 * coords.flatten(0, 1) - 1.0
        angles = (2 * math.pi * coords[:, :, None] / self.periods[None, None, :]).flatten(1)
        angles = angles.tile(2) if self.rotate_half else angles.repeat_interleave(2, dim=-1)
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


def rot(x):
    return torch.stack([-x[..., 1::2], x[..., ::2]], -1).reshape(x.shape)


def rope_rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rot_embed_cat(x, emb, half=False):
    sin_emb, cos_emb = emb.chunk(2, -1)
    if half:
        return x * cos_emb + rope_rotate_half(x) * sin_emb
    return x * cos_emb + rot(x) * sin_emb


# ---------------------------------------------------------------- MLPs (layers/mlp.py)

class Mlp(nn.Module):
    def __init__(self, dim, hidden, act_layer=nn.GELU, norm_layer=None):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = act_layer()
        self.norm = norm_layer(hidden) if norm_layer else nn.Identity()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.norm(self.act(self.fc1(x))))


class GluMlp(nn.Module):
    """gate_last=False: act(first half) * second half."""
    def __init__(self, dim, hidden2, norm_layer=None):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden2)
        self.act = nn.SiLU()
        self.norm = norm_layer(hidden2 // 2) if norm_layer else nn.Identity()
        self.fc2 = nn.Linear(hidden2 // 2, dim)

    def forward(self, x):
        x = self.fc1(x)
        x1, x2 = x.chunk(2, dim=-1)
        return self.fc2(self.norm(self.act(x1) * x2))


class SwiGLU(nn.Module):
    def __init__(self, dim, hidden, norm_layer=None):
        super().__init__()
        self.fc1_g = nn.Linear(dim, hidden)
        self.fc1_x = nn.Linear(dim, hidden)
        self.act = nn.SiLU()
        self.norm = norm_layer(hidden) if norm_layer else nn.Identity()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.norm(self.act(self.fc1_g(x)) * self.fc1_x(x)))


# ---------------------------------------------------------------- attention and blocks

class EvaAttention(nn.Module):
    def __init__(self, dim, num_heads, qkv_bias=True, qkv_fused=True, num_prefix_tokens=1, norm_layer=None,
                 scale_norm=False, rotate_half=False, rope_attn=False):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.num_prefix_tokens, self.rotate_half, self.rope_attn = num_prefix_tokens, rotate_half, rope_attn
        self.q_bias = self.v_bias = None
        self.qkv = self.q_proj = self.k_proj = self.v_proj = None
        if rope_attn:   # timm AttentionRope: an ordinary qkv Linear (or q/k/v_proj all with a bias)
            if qkv_fused:
                self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
            else:
                self.q_proj = nn.Linear(dim, dim, bias=qkv_bias)
                self.k_proj = nn.Linear(dim, dim, bias=qkv_bias)
                self.v_proj = nn.Linear(dim, dim, bias=qkv_bias)
        elif qkv_fused:
            self.qkv = nn.Linear(dim, dim * 3, bias=False)
            if qkv_bias:
                self.q_bias = nn.Parameter(torch.zeros(dim))
                self.register_buffer("k_bias", torch.zeros(dim), persistent=False)
                self.v_bias = nn.Parameter(torch.zeros(dim))
            else:
                self.k_bias = None
        else:
            self.q_proj = nn.Linear(dim, dim, bias=qkv_bias)
            self.k_proj = nn.Linear(dim, dim, bias=False)
            self.v_proj = nn.Linear(dim, dim, bias=qkv_bias)
        if not hasattr(self, "k_bias"):
            self.k_bias = None
        self.norm = norm_layer(dim) if scale_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, rope=None):
        B, N, C = x.shape
        if self.qkv is not None:
            if self.q_bias is None:
                qkv = self.qkv(x)
            else:
                qkv = F.linear(x, self.qkv.weight, torch.cat((self.q_bias, self.k_bias, self.v_bias)))
            q, k, v = qkv.reshape(B, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        else:
            q = self.q_proj(x).reshape(B, N, self.num_heads, -1).transpose(1, 2)
            k = self.k_proj(x).reshape(B, N, self.num_heads, -1).transpose(1, 2)
            v = self.v_proj(x).reshape(B, N, self.num_heads, -1).transpose(1, 2)
        if rope is not None:
            npt = self.num_prefix_tokens
            q = torch.cat([q[:, :, :npt, :], apply_rot_embed_cat(q[:, :, npt:, :], rope, self.rotate_half)], 2).type_as(v)
            k = torch.cat([k[:, :, :npt, :], apply_rot_embed_cat(k[:, :, npt:, :], rope, self.rotate_half)], 2).type_as(v)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj(self.norm(x))


def make_mlp(dim, hidden, swiglu_mlp, scale_mlp, norm_layer, align_to=0):
    if swiglu_mlp:
        if scale_mlp or align_to:   # timm: separate gate and x linears, the width rounded up to align_to
            if align_to:
                hidden += -hidden % align_to
            return SwiGLU(dim, hidden, norm_layer=norm_layer if scale_mlp else None)
        return GluMlp(dim, hidden * 2)
    return Mlp(dim, hidden, norm_layer=norm_layer if scale_mlp else None)


class EvaBlock(nn.Module):
    def __init__(self, dim, num_heads, qkv_bias, qkv_fused, mlp_ratio, swiglu_mlp, scale_mlp, scale_attn_inner,
                 num_prefix_tokens, attn_type, rotate_half, init_values, norm_layer, swiglu_align_to=0):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = EvaAttention(dim, num_heads, qkv_bias, qkv_fused, num_prefix_tokens, norm_layer, scale_attn_inner,
                                 rotate_half, rope_attn=attn_type == "rope")
        self.gamma_1 = nn.Parameter(init_values * torch.ones(dim)) if init_values is not None else None
        self.norm2 = norm_layer(dim)
        self.mlp = make_mlp(dim, int(dim * mlp_ratio), swiglu_mlp, scale_mlp, norm_layer, swiglu_align_to)
        self.gamma_2 = nn.Parameter(init_values * torch.ones(dim)) if init_values is not None else None

    def forward(self, x, rope=None):
        if self.gamma_1 is None:
            x = x + self.attn(self.norm1(x), rope=rope)
            return x + self.mlp(self.norm2(x))
        x = x + self.gamma_1 * self.attn(self.norm1(x), rope=rope)
        return x + self.gamma_2 * self.mlp(self.norm2(x))


class EvaBlockPostNorm(nn.Module):
    def __init__(self, dim, num_heads, qkv_bias, qkv_fused, mlp_ratio, swiglu_mlp, scale_mlp, scale_attn_inner,
                 num_prefix_tokens, attn_type, rotate_half, init_values, norm_layer, swiglu_align_to=0):
        super().__init__()
        self.attn = EvaAttention(dim, num_heads, qkv_bias, qkv_fused, num_prefix_tokens, norm_layer, scale_attn_inner,
                                 rotate_half, rope_attn=attn_type == "rope")
        self.norm1 = norm_layer(dim)
        self.mlp = make_mlp(dim, int(dim * mlp_ratio), swiglu_mlp, scale_mlp, norm_layer, swiglu_align_to)
        self.norm2 = norm_layer(dim)

    def forward(self, x, rope=None):
        x = x + self.norm1(self.attn(x, rope=rope))
        return x + self.norm2(self.mlp(x))


# ---------------------------------------------------------------- attention pool (layers/attention_pool.py)

class AttentionPoolLatent(nn.Module):
    """timm's AttentionPoolLatent as Eva builds it for global_pool='map': one latent query (latent_len 1),
    q and kv Linears with bias, no qk_norm, no pos_embed, proj, then x + mlp(norm(x)) with the model's
    norm_layer and nn.GELU; its own num_heads and mlp_ratio; pool_type 'token' (the one query)."""

    def __init__(self, in_features, num_heads=8, mlp_ratio=4.0, norm_layer=None, act_layer=nn.GELU):
        super().__init__()
        embed_dim = in_features
        assert embed_dim % num_heads == 0
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.latent = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.q = nn.Linear(embed_dim, embed_dim)
        self.kv = nn.Linear(embed_dim, embed_dim * 2)
        self.proj = nn.Linear(embed_dim, embed_dim)
        self.norm = norm_layer(embed_dim) if norm_layer is not None else nn.Identity()
        self.mlp = Mlp(embed_dim, int(embed_dim * mlp_ratio), act_layer)

    def forward(self, x):
        return latent_pool(self, x)


class PatchEmbed(nn.Module):
    def __init__(self, img_size, patch_size, in_chans, embed_dim, bias=True):
        super().__init__()
        self.grid_size = (img_size[0] // patch_size, img_size[1] // patch_size)
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, patch_size, bias=bias)

    def forward(self, x):
        return self.proj(x).permute(0, 2, 3, 1)   # NHWC (dynamic_img_size)


class Eva(nn.Module):
    def __init__(self, img_size=224, patch_size=16, in_chans=3, num_classes=1000, global_pool="avg", embed_dim=768,
                 depth=12, num_heads=12, qkv_bias=True, qkv_fused=True, mlp_ratio=4.0, swiglu_mlp=False,
                 scale_mlp=False, scale_attn_inner=False, attn_type="eva", norm_layer=LayerNorm, init_values=None,
                 class_token=True, num_reg_tokens=0, no_embed_class=False, use_abs_pos_emb=True,
                 use_rot_pos_emb=False, rope_type="cat", rope_grid_offset=0.0, rope_grid_indexing="ij",
                 rope_temperature=10000.0, rope_rotate_half=False, use_post_norm=False, use_pre_transformer_norm=False,
                 use_post_transformer_norm=None, use_fc_norm=None, ref_feat_shape=None, swiglu_align_to=0,
                 attn_pool_num_heads=None, attn_pool_mlp_ratio=None):
        super().__init__()
        img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.global_pool = global_pool
        self.num_prefix_tokens = (1 if class_token else 0) + num_reg_tokens
        self.no_embed_class = no_embed_class
        fc_norm = use_fc_norm if use_fc_norm is not None else global_pool == "avg"
        post_norm = use_post_transformer_norm if use_post_transformer_norm is not None else not fc_norm
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, bias=not use_pre_transformer_norm)
        num_patches = self.patch_embed.grid_size[0] * self.patch_embed.grid_size[1]
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        self.reg_token = nn.Parameter(torch.zeros(1, num_reg_tokens, embed_dim)) if num_reg_tokens else None
        npos = num_patches if no_embed_class else num_patches + self.num_prefix_tokens
        self.pos_embed = nn.Parameter(torch.zeros(1, npos, embed_dim)) if use_abs_pos_emb else None
        self.rope_mixed = False
        if use_rot_pos_emb:
            ref = (ref_feat_shape, ref_feat_shape) if isinstance(ref_feat_shape, int) else ref_feat_shape
            if rope_type == "mixed":
                self.rope = RotaryEmbeddingMixed(embed_dim, depth, num_heads, rope_temperature, rope_grid_indexing)
                self.rope_mixed = True
            elif rope_type == "dinov3":
                self.rope = RotaryEmbeddingDinoV3(embed_dim // num_heads, rope_temperature, rope_grid_offset,
                                                  rope_grid_indexing, rope_rotate_half)
            else:
                self.rope = RotaryEmbeddingCat(embed_dim // num_heads, rope_temperature, ref, rope_grid_offset,
                                               rope_grid_indexing)
        else:
            self.rope = None
        self.norm_pre = norm_layer(embed_dim) if use_pre_transformer_norm else nn.Identity()
        block_fn = EvaBlockPostNorm if use_post_norm else EvaBlock
        self.blocks = nn.ModuleList([
            block_fn(embed_dim, num_heads, qkv_bias, qkv_fused, mlp_ratio, swiglu_mlp, scale_mlp, scale_attn_inner,
                     self.num_prefix_tokens, attn_type, rope_rotate_half, init_values, norm_layer, swiglu_align_to)
            for _ in range(depth)])
        self.norm = norm_layer(embed_dim) if post_norm else nn.Identity()
        if global_pool == "map":
            self.attn_pool = AttentionPoolLatent(embed_dim, num_heads=attn_pool_num_heads or num_heads,
                                                 mlp_ratio=attn_pool_mlp_ratio or mlp_ratio, norm_layer=norm_layer,
                                                 act_layer=nn.GELU)
        else:
            self.attn_pool = None
        self.fc_norm = norm_layer(embed_dim) if fc_norm else nn.Identity()
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def _pos_embed(self, x):
        B, H, W, C = x.shape
        pos_embed = None
        if self.pos_embed is not None:
            pos_embed = self.pos_embed
            npt = 0 if self.no_embed_class else self.num_prefix_tokens
            old = self.patch_embed.grid_size
            if H * W + npt != pos_embed.shape[1] or H != W:
                pos_embed = resample_pos_embed(pos_embed, old, (H, W), npt)
        x = x.reshape(B, H * W, C)
        rope = self.rope.get_embed((H, W)) if self.rope is not None else None
        to_cat = []
        if self.cls_token is not None:
            to_cat.append(self.cls_token.expand(B, -1, -1))
        if self.reg_token is not None:
            to_cat.append(self.reg_token.expand(B, -1, -1))
        if self.no_embed_class:
            if pos_embed is not None:
                x = x + pos_embed
            x = torch.cat(to_cat + [x], 1)
        else:
            x = torch.cat(to_cat + [x], 1)
            if pos_embed is not None:
                x = x + pos_embed
        return x, rope

    def forward_features(self, x):
        x, rope = self._pos_embed(self.patch_embed(x))
        x = self.norm_pre(x)
        for i, blk in enumerate(self.blocks):
            x = blk(x, rope=rope[i] if self.rope_mixed else rope)
        return self.norm(x)

    def forward_head(self, x, pre_logits=False):
        if self.attn_pool is not None:   # over every token, the prefix tokens included
            x = self.attn_pool(x)
        elif self.global_pool == "avg":
            x = x[:, self.num_prefix_tokens:].mean(dim=1)
        else:
            x = x[:, 0]
        x = self.fc_norm(x)
        return x if pre_logits else self.head(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))
