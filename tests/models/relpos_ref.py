"""A faithful re-implementation (eval mode) of timm's vision_transformer_relpos.py
(VisionTransformerRelPos) and the pieces of timm/layers/pos_embed_rel.py it uses, with timm's module
names, so its state_dict has exactly the keys of a real timm checkpoint:

- RelPosBias: a table [(2gh-1)(2gw-1) + 3 * prefix, heads] indexed by gen_relative_position_index
  (BEiT's class-token rows when there is a class token);
- RelPosMlp: Mlp(2 -> hidden -> heads, ReLU) over log-spaced relative coordinates, mode 'cr'
  (sign * ln(1 + |d|), fc2 with bias) or 'swin' (8 d / (g - 1), sign * log2(1 + |.|) / log2(8),
  fc2 without bias, 16 * sigmoid); the bias is zero-padded for the prefix (class) token;
- shared_rel_pos (one module for every block) or one per block (attn.rel_pos);
- RelPosBlock (pre-norm, layer scale) and ResPostRelPosBlock (x + norm(f(x))), optional qk_norm;
- class_token, global_pool 'avg' / 'token', fc_norm (then no final norm).

The input size is fixed at construction, as timm's (img_size may be (h, w))."""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .timm_vit import LayerScale, Mlp, parallel_attention, parallel_in_layers, parallel_in_proj


def rel_index(gh, gw, class_token=False):
    """gen_relative_position_index: [T, T] table rows of every (query, key) token pair."""
    ys, xs = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    coords = torch.stack([ys.flatten(), xs.flatten()])                  # 2, G
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)    # G, G, 2
    rel[:, :, 0] += gh - 1
    rel[:, :, 1] += gw - 1
    rel[:, :, 0] *= 2 * gw - 1
    idx = rel.sum(-1)
    if class_token:
        n = (2 * gh - 1) * (2 * gw - 1)
        idx = F.pad(idx, [1, 0, 1, 0])
        idx[0, 0:] = n
        idx[0:, 0] = n + 1
        idx[0, 0] = n + 2
    return idx


def log_coords(gh, gw, mode):
    """gen_relative_log_coords with pretrained_win_size (0, 0): [2gh-1, 2gw-1, 2]; 'rw' as older
    timm had it (window-normalised, log2, over log2(9))."""
    ch = torch.arange(-(gh - 1), gh).to(torch.float32)
    cw = torch.arange(-(gw - 1), gw).to(torch.float32)
    t = torch.stack(torch.meshgrid(ch, cw, indexing="ij")).permute(1, 2, 0).contiguous()
    if mode == "swin":
        t[:, :, 0] /= (gh - 1)
        t[:, :, 1] /= (gw - 1)
        t *= 8
        return torch.sign(t) * torch.log2(1.0 + t.abs()) / math.log2(8)
    if mode == "rw":
        t[:, :, 0] /= (gh - 1)
        t[:, :, 1] /= (gw - 1)
        t *= 8
        t = torch.sign(t) * torch.log2(1.0 + t.abs())
        return t / math.log2(9)
    return torch.sign(t) * torch.log(1.0 + t.abs())


class RelPosBias(nn.Module):
    def __init__(self, grid, num_heads, prefix_tokens=0):
        super().__init__()
        self.grid, self.prefix_tokens = grid, prefix_tokens
        area = grid[0] * grid[1]
        self.bias_shape = (area + prefix_tokens,) * 2 + (num_heads,)
        n = (2 * grid[0] - 1) * (2 * grid[1] - 1) + 3 * prefix_tokens
        self.relative_position_bias_table = nn.Parameter(torch.zeros(n, num_heads))
        self.register_buffer("relative_position_index", rel_index(grid[0], grid[1], prefix_tokens > 0).view(-1),
                             persistent=False)

    def get_bias(self):
        b = self.relative_position_bias_table[self.relative_position_index].view(self.bias_shape).permute(2, 0, 1)
        return b.unsqueeze(0).contiguous()


class RelMlp(nn.Module):
    """timm Mlp(2, hidden, heads, act ReLU, bias=(True, fc2_bias))."""

    def __init__(self, hidden, heads, fc2_bias):
        super().__init__()
        self.fc1 = nn.Linear(2, hidden)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(hidden, heads, bias=fc2_bias)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class RelPosMlp(nn.Module):
    def __init__(self, grid, num_heads, hidden_dim=128, prefix_tokens=0, mode="cr"):
        super().__init__()
        self.grid, self.num_heads, self.prefix_tokens, self.mode = grid, num_heads, prefix_tokens, mode
        area = grid[0] * grid[1]
        self.bias_shape = (area, area, num_heads)
        self.mlp = RelMlp(hidden_dim, num_heads, mode != "swin")
        self.register_buffer("relative_position_index", rel_index(grid[0], grid[1]).view(-1), persistent=False)
        self.register_buffer("rel_coords_log", log_coords(grid[0], grid[1], mode), persistent=False)

    def get_bias(self):
        b = self.mlp(self.rel_coords_log)
        b = b.view(-1, self.num_heads)[self.relative_position_index].view(self.bias_shape).permute(2, 0, 1)
        if self.mode == "swin":
            b = 16 * torch.sigmoid(b)
        elif self.mode == "rw":
            b = 4 * torch.tanh(b)
        if self.prefix_tokens:
            b = F.pad(b, [self.prefix_tokens, 0, self.prefix_tokens, 0])
        return b.unsqueeze(0).contiguous()


class RelPosAttention(nn.Module):
    def __init__(self, dim, num_heads, qkv_bias, qk_norm, rel_pos_cls, norm_layer):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm = norm_layer(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = norm_layer(self.head_dim) if qk_norm else nn.Identity()
        self.rel_pos = rel_pos_cls(num_heads=num_heads) if rel_pos_cls else None
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, shared_rel_pos=None):
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        if self.rel_pos is not None:
            attn = attn + self.rel_pos.get_bias()
        elif shared_rel_pos is not None:
            attn = attn + shared_rel_pos
        x = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj(x)


class RelPosBlock(nn.Module):
    def __init__(self, dim, num_heads, mlp_ratio, qkv_bias, qk_norm, rel_pos_cls, init_values, norm_layer):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = RelPosAttention(dim, num_heads, qkv_bias, qk_norm, rel_pos_cls, norm_layer)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()

    def forward(self, x, shared_rel_pos=None):
        x = x + self.ls1(self.attn(self.norm1(x), shared_rel_pos=shared_rel_pos))
        return x + self.ls2(self.mlp(self.norm2(x)))


class ResPostRelPosBlock(nn.Module):
    def __init__(self, dim, num_heads, mlp_ratio, qkv_bias, qk_norm, rel_pos_cls, init_values, norm_layer):
        super().__init__()
        self.attn = RelPosAttention(dim, num_heads, qkv_bias, qk_norm, rel_pos_cls, norm_layer)
        self.norm1 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.norm2 = norm_layer(dim)

    def forward(self, x, shared_rel_pos=None):
        x = x + self.norm1(self.attn(x, shared_rel_pos=shared_rel_pos))
        return x + self.norm2(self.mlp(x))


class PatchEmbed(nn.Module):
    def __init__(self, img_size, patch_size, in_chans, dim):
        super().__init__()
        self.grid_size = (img_size[0] // patch_size, img_size[1] // patch_size)
        self.proj = nn.Conv2d(in_chans, dim, patch_size, patch_size)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class VisionTransformerRelPos(nn.Module):
    def __init__(self, img_size=224, patch_size=16, in_chans=3, num_classes=1000, global_pool="avg", embed_dim=768,
                 depth=12, num_heads=12, mlp_ratio=4.0, qkv_bias=True, qk_norm=False, init_values=1e-6,
                 class_token=False, fc_norm=False, rel_pos_type="mlp", rel_pos_dim=None, shared_rel_pos=False,
                 block_fn="pre"):
        super().__init__()
        img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        norm_layer = lambda d: nn.LayerNorm(d, eps=1e-6)  # noqa: E731
        self.global_pool = global_pool
        self.num_prefix_tokens = 1 if class_token else 0
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        grid = self.patch_embed.grid_size
        args = dict(prefix_tokens=self.num_prefix_tokens)
        if rel_pos_type.startswith("mlp"):
            if rel_pos_dim:
                args["hidden_dim"] = rel_pos_dim
            if "swin" in rel_pos_type:
                args["mode"] = "swin"
            elif "rw" in rel_pos_type:
                args["mode"] = "rw"
            rel_pos_cls = lambda num_heads: RelPosMlp(grid, num_heads, **args)  # noqa: E731
        else:
            rel_pos_cls = lambda num_heads: RelPosBias(grid, num_heads, **args)  # noqa: E731
        self.shared_rel_pos = None
        if shared_rel_pos:
            self.shared_rel_pos = rel_pos_cls(num_heads=num_heads)
            rel_pos_cls = None
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        block = RelPosBlock if block_fn == "pre" else ResPostRelPosBlock
        self.blocks = nn.ModuleList([block(embed_dim, num_heads, mlp_ratio, qkv_bias, qk_norm, rel_pos_cls, init_values,
                                           norm_layer) for _ in range(depth)])
        self.norm = norm_layer(embed_dim) if not fc_norm else nn.Identity()
        self.fc_norm = norm_layer(embed_dim) if fc_norm else nn.Identity()
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x):
        x = self.patch_embed(x)
        if self.cls_token is not None:
            x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        shared = self.shared_rel_pos.get_bias() if self.shared_rel_pos is not None else None
        for blk in self.blocks:
            x = blk(x, shared_rel_pos=shared)
        return self.norm(x)

    def forward_head(self, x, pre_logits=False):
        if self.global_pool:
            x = x[:, self.num_prefix_tokens:].mean(dim=1) if self.global_pool == "avg" else x[:, 0]
        x = self.fc_norm(x)
        return x if pre_logits else self.head(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


class ParallelThingsBlock(nn.Module):
    """timm vision_transformer.py ParallelThingsBlock (eval): `num_parallel` attention branches
    attns.K = Sequential(norm, attn, ls) summed onto x, then as many MLP branches ffns.K =
    Sequential(norm, mlp, ls), every branch reading the same input."""

    def __init__(self, dim, num_heads, num_parallel=2, mlp_ratio=4.0, qkv_bias=False, init_values=None, qk_norm=False,
                 eps=1e-6):
        super().__init__()
        from collections import OrderedDict

        from .timm_vit import Attention
        norm_layer = lambda d: nn.LayerNorm(d, eps=eps)  # noqa: E731
        self.attns, self.ffns = nn.ModuleList(), nn.ModuleList()
        for _ in range(num_parallel):
            self.attns.append(nn.Sequential(OrderedDict([
                ("norm", norm_layer(dim)),
                ("attn", Attention(dim, num_heads, qkv_bias, qk_norm, False, norm_layer)),
                ("ls", LayerScale(dim, init_values) if init_values else nn.Identity())])))
            self.ffns.append(nn.Sequential(OrderedDict([
                ("norm", norm_layer(dim)),
                ("mlp", Mlp(dim, int(dim * mlp_ratio))),
                ("ls", LayerScale(dim, init_values) if init_values else nn.Identity())])))

    def forward(self, x):
        x = x + torch.stack([attn(x) for attn in self.attns]).sum(dim=0)
        return x + torch.stack([ffn(x) for ffn in self.ffns]).sum(dim=0)


def parallel_vit(depth, num_parallel, embed_dim, num_heads, init_values=1e-5, qkv_bias=True, qk_norm=False, **kw):
    """timm's VisionTransformer with block_fn=ParallelThingsBlock (vit_*_18x2_*): the timm ViT
    reference with its blocks replaced."""
    from .timm_vit import VisionTransformer
    m = VisionTransformer(embed_dim=embed_dim, depth=depth, num_heads=num_heads, init_values=init_values,
                          qkv_bias=qkv_bias, **kw)
    m.blocks = nn.Sequential(*[ParallelThingsBlock(embed_dim, num_heads, num_parallel, qkv_bias=qkv_bias,
                                                   init_values=init_values, qk_norm=qk_norm) for _ in range(depth)])
    return m


class ParallelScalingBlock(nn.Module):
    """timm vision_transformer.py ParallelScalingBlock (eval), LayerNorm variant: one in_norm, a fused
    in_proj giving [mlp hidden | q | k | v] (its bias, or a separate mlp_bias without qkv_bias),
    optional q_norm / k_norm, attn_out_proj + mlp_out_proj or one fused out_proj over
    [attention | mlp], one layer scale on their sum."""

    def __init__(self, dim, num_heads, mlp_ratio=4.0, qkv_bias=False, qk_norm=False, init_values=None,
                 fuse_out_proj=False, eps=1e-6):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = self.head_dim ** -0.5
        hidden = int(mlp_ratio * dim)
        parallel_in_layers(self, dim, hidden, qkv_bias, lambda d: nn.LayerNorm(d, eps=eps), qk_norm)
        self.mlp_act = nn.GELU()
        if fuse_out_proj:
            self.out_proj = nn.Linear(dim + hidden, dim)
            self.attn_out_proj = self.mlp_out_proj = None
        else:
            self.out_proj = None
            self.attn_out_proj = nn.Linear(dim, dim)
            self.mlp_out_proj = nn.Linear(hidden, dim)
        self.ls = LayerScale(dim, init_values) if init_values is not None else nn.Identity()

    def forward(self, x):
        x_mlp, q, k, v = parallel_in_proj(self, x)
        x_attn = parallel_attention(self, q, k, v)
        x_mlp = self.mlp_act(x_mlp)
        if self.out_proj is not None:
            y = self.out_proj(torch.cat((x_attn, x_mlp), dim=-1))
        else:
            y = self.attn_out_proj(x_attn) + self.mlp_out_proj(x_mlp)
        return x + self.ls(y)


def scaling_vit(depth, embed_dim, num_heads, mlp_ratio=4.0, qkv_bias=True, qk_norm=False, init_values=None,
                fuse_out_proj=False, **kw):
    """timm's VisionTransformer with block_fn=ParallelScalingBlock (vit_pwee_*, LayerNorm)."""
    from .timm_vit import VisionTransformer
    m = VisionTransformer(embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                          init_values=init_values, qkv_bias=qkv_bias, **kw)
    m.blocks = nn.Sequential(*[ParallelScalingBlock(embed_dim, num_heads, mlp_ratio, qkv_bias, qk_norm, init_values,
                                                    fuse_out_proj) for _ in range(depth)])
    return m


class RmsNorm(nn.Module):
    """timm layers/norm.py RmsNorm (its rms_norm fallback): x * rsqrt(mean(x^2) + eps) * weight."""

    def __init__(self, channels, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))

    def forward(self, x):
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return x * self.weight


def to_rms(model, eps=1e-6):
    """Every nn.LayerNorm of a model replaced by an RmsNorm of its width (timm norm_layer=RmsNorm)."""
    for name, mod in list(model.named_modules()):
        for cname, child in list(mod.named_children()):
            if isinstance(child, nn.LayerNorm):
                setattr(mod, cname, RmsNorm(child.normalized_shape[0], eps))
    return model


def aimv2_vit(depth, embed_dim, num_heads, mlp_ratio=2.75, eps=1e-5, **kw):
    """timm's aimv2_* ViTs: RmsNorm everywhere (also on the patch embedding), SwiGLU MLP with SiLU, no
    qkv / projection biases, no class token, final norm then mean pooling."""
    from .timm_vit import VisionTransformer
    m = VisionTransformer(embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=False,
                          class_token=False, global_pool="avg", fc_norm=False, act_layer="silu", mlp_layer="swiglu",
                          eps=eps, **kw)
    to_rms(m, eps)
    m.patch_embed.norm = RmsNorm(embed_dim, eps)
    for mod in m.modules():
        for lname in ("proj", "fc1_g", "fc1_x", "fc2"):
            lin = getattr(mod, lname, None)
            if isinstance(lin, nn.Linear) and mod is not m.patch_embed:
                lin.bias = None
    return m
