"""A faithful re-implementation of timm's VisionTransformer / VisionTransformerDistilled (eval
mode) with timm's module names, so its state_dict has exactly the keys of a real timm checkpoint.

Options mirror timm's constructor: class_token, global_pool ('token' | 'avg'), fc_norm (None =
follow the pool), reg_tokens, no_embed_class, init_values (layer scale), qkv_bias, pre_norm,
final_norm, distilled, representation_size (the old Linear+Tanh pre_logits), dynamic_img_size
(pos_embed resampled per forward with bicubic antialias=True, as timm does), act_layer ('gelu',
'gelu_tanh', 'quick_gelu', 'relu') and block_fn ('pre': Block, 'res_post': ResPostBlock, whose
init_values set the norms' weights instead of a layer scale), qk_norm (LayerNorm(head_dim) on q and k),
scale_attn_norm / scale_mlp_norm (attn.norm before proj, mlp.norm before fc2), mlp_layer ('mlp',
'swiglu_packed': timm's GluMlp with gate_last=False, 'swiglu': fc1_g / fc1_x) and global_pool='map'
(timm's AttentionPoolLatent over the patch tokens, pool_include_prefix as timm), norm ('layernorm' |
'rmsnorm': timm's RmsNorm, x * rsqrt(mean(x^2) + eps) * weight, for every norm of the model), proj_bias
(the bias of attn.proj and of every MLP Linear, as timm's Block passes bias=proj_bias) , embed_norm
(patch_embed.norm, of the model's norm kind, as timm's embed_norm_layer) and the parallel blocks
(block_fn 'parallel': ParallelThingsBlock, 'parallel_scaling': ParallelScalingBlock,
'diff_parallel_scaling': DiffParallelScalingBlock) and attn_layer='diff' (timm's DiffAttention, differential
attention, lambda_init from the block's index)."""
import math
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F


class PatchEmbed(nn.Module):
    def __init__(self, img_size, patch_size, in_chans, embed_dim, bias=True, norm_layer=None):
        super().__init__()
        self.patch_size = (patch_size, patch_size)
        self.grid_size = (img_size // patch_size, img_size // patch_size)
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, patch_size, bias=bias)
        self.norm = norm_layer(embed_dim) if norm_layer is not None else nn.Identity()

    def forward(self, x):
        x = self.proj(x)
        return self.norm(x.flatten(2).transpose(1, 2))


class Attention(nn.Module):
    def __init__(self, dim, num_heads, qkv_bias, qk_norm=False, scale_norm=False, norm_layer=nn.LayerNorm,
                 proj_bias=True):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm = norm_layer(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = norm_layer(self.head_dim) if qk_norm else nn.Identity()
        self.norm = norm_layer(dim) if scale_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        q = q * self.scale
        attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        x = self.norm(x)
        return self.proj(x)


class DiffAttention(nn.Module):
    """timm's DiffAttention (attn_layer='diff'): q and k in 2 x num_heads heads of dim // num_heads // 2,
    v in num_heads heads of twice that; softmax(q1 k1) - lambda softmax(q2 k2) with lambda =
    exp(sum(lambda_q1 * lambda_k1)) - exp(sum(lambda_q2 * lambda_k2)) + lambda_init(depth), then
    sub_norm (RmsNorm, eps 1e-5) times (1 - lambda_init), the optional norm and proj."""

    def __init__(self, dim, num_heads, qkv_bias, qk_norm=False, scale_norm=False, norm_layer=None,
                 proj_bias=True, depth=0):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads // 2
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm = norm_layer(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = norm_layer(self.head_dim) if qk_norm else nn.Identity()
        self.norm = norm_layer(dim) if scale_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.lambda_q1 = nn.Parameter(torch.zeros(self.head_dim))
        self.lambda_k1 = nn.Parameter(torch.zeros(self.head_dim))
        self.lambda_q2 = nn.Parameter(torch.zeros(self.head_dim))
        self.lambda_k2 = nn.Parameter(torch.zeros(self.head_dim))
        self.sub_norm = RmsNorm(2 * self.head_dim, eps=1e-5)
        self.lambda_init = 0.8 - 0.6 * math.exp(-0.3 * depth)

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=2)
        q = q.reshape(B, N, 2 * self.num_heads, self.head_dim).transpose(1, 2)
        k = k.reshape(B, N, 2 * self.num_heads, self.head_dim).transpose(1, 2)
        v = v.reshape(B, N, self.num_heads, 2 * self.head_dim).transpose(1, 2)
        q, k = self.q_norm(q), self.k_norm(k)
        lam = torch.exp(torch.sum(self.lambda_q1 * self.lambda_k1, dim=-1)) - \
            torch.exp(torch.sum(self.lambda_q2 * self.lambda_k2, dim=-1)) + self.lambda_init
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1).view(B, self.num_heads, 2, N, N)
        x = (attn[:, :, 0] - lam * attn[:, :, 1]) @ v
        x = self.sub_norm(x) * (1 - self.lambda_init)
        x = x.transpose(1, 2).reshape(B, N, C)
        return self.proj(self.norm(x))


class RmsNorm(nn.Module):
    """timm's RmsNorm (affine): x * rsqrt(mean(x^2) + eps) * weight."""

    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps) * self.weight


class LayerScale(nn.Module):
    def __init__(self, dim, init_values):
        super().__init__()
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x):
        return x * self.gamma


class QuickGELU(nn.Module):
    """timm's QuickGELU (CLIP): x * sigmoid(1.702 x)."""

    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


ACTS = {"gelu": nn.GELU, "gelu_tanh": lambda: nn.GELU(approximate="tanh"), "quick_gelu": QuickGELU, "relu": nn.ReLU,
        "silu": nn.SiLU}


class Mlp(nn.Module):
    def __init__(self, dim, hidden, act="gelu", norm_layer=None, bias=True):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.act = ACTS[act]()
        self.norm = norm_layer(hidden) if norm_layer is not None else nn.Identity()
        self.fc2 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x):
        return self.fc2(self.norm(self.act(self.fc1(x))))


class GluMlp(nn.Module):
    """timm's GluMlp as SwiGLUPacked builds it (gate_last=False): fc1 gives `hidden` features, split
    in halves a, c; act(a) * c, then the optional norm over hidden // 2 and fc2."""

    def __init__(self, dim, hidden, act="silu", norm_layer=None, bias=True):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.act = ACTS[act]()
        self.norm = norm_layer(hidden // 2) if norm_layer is not None else nn.Identity()
        self.fc2 = nn.Linear(hidden // 2, dim, bias=bias)

    def forward(self, x):
        a, c = self.fc1(x).chunk(2, dim=-1)
        return self.fc2(self.norm(self.act(a) * c))


class SwiGLU(nn.Module):
    """timm's SwiGLU: separate fc1_g (gate) and fc1_x; act(fc1_g(x)) * fc1_x(x), norm, fc2."""

    def __init__(self, dim, hidden, act="silu", norm_layer=None, bias=True):
        super().__init__()
        self.fc1_g = nn.Linear(dim, hidden, bias=bias)
        self.fc1_x = nn.Linear(dim, hidden, bias=bias)
        self.act = ACTS[act]()
        self.norm = norm_layer(hidden) if norm_layer is not None else nn.Identity()
        self.fc2 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x):
        return self.fc2(self.norm(self.act(self.fc1_g(x)) * self.fc1_x(x)))


MLPS = {"mlp": Mlp, "swiglu_packed": GluMlp, "swiglu": SwiGLU}


def latent_pool(pool, x):
    """AttentionPoolLatent's forward (one latent query, no qk_norm, no pos_embed, pool_type 'token'):
    attention of the latent's q over x's k / v, proj, then x + mlp(norm(x)); the one query's output."""
    B, N, C = x.shape
    q = pool.q(pool.latent.expand(B, -1, -1)).reshape(B, 1, pool.num_heads, pool.head_dim).transpose(1, 2)
    kv = pool.kv(x).reshape(B, N, 2, pool.num_heads, pool.head_dim).permute(2, 0, 3, 1, 4)
    k, v = kv.unbind(0)
    attn = ((q * pool.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
    x = pool.proj((attn @ v).transpose(1, 2).reshape(B, 1, C))
    x = x + pool.mlp(pool.norm(x))
    return x[:, 0]


class AttentionPoolLatent(nn.Module):
    """timm's AttentionPoolLatent as VisionTransformer builds it for global_pool='map': one latent
    query, q and kv Linears, proj, then x + mlp(norm(x)); the model's heads, mlp_ratio, norm and act."""

    def __init__(self, dim, num_heads, mlp_ratio, norm_layer, act):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.latent = nn.Parameter(torch.zeros(1, 1, dim))
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, dim * 2)
        self.proj = nn.Linear(dim, dim)
        self.norm = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act)

    def forward(self, x):
        return latent_pool(self, x)


class Block(nn.Module):
    def __init__(self, dim, num_heads, mlp_ratio, qkv_bias, init_values, norm_layer, act="gelu", qk_norm=False,
                 scale_attn_norm=False, scale_mlp_norm=False, mlp_layer="mlp", proj_bias=True, attn_layer="attn",
                 depth=0):
        super().__init__()
        self.norm1 = norm_layer(dim)
        if attn_layer == "diff":
            self.attn = DiffAttention(dim, num_heads, qkv_bias, qk_norm, scale_attn_norm, norm_layer, proj_bias, depth)
        else:
            self.attn = Attention(dim, num_heads, qkv_bias, qk_norm, scale_attn_norm, norm_layer, proj_bias)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = MLPS[mlp_layer](dim, int(dim * mlp_ratio), act, norm_layer if scale_mlp_norm else None, proj_bias)
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()

    def forward(self, x):
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class ResPostBlock(nn.Module):
    """timm's ResPostBlock: the norm on each branch's output, before the residual add."""

    def __init__(self, dim, num_heads, mlp_ratio, qkv_bias, init_values, norm_layer, act="gelu", **unused):
        super().__init__()
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm1 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act)
        self.norm2 = norm_layer(dim)
        if init_values is not None:
            nn.init.constant_(self.norm1.weight, init_values)
            nn.init.constant_(self.norm2.weight, init_values)

    def forward(self, x):
        x = x + self.norm1(self.attn(x))
        return x + self.norm2(self.mlp(x))


class ParallelThingsBlock(nn.Module):
    """timm's ParallelThingsBlock (the *_18x2 models): two attention branches summed into the residual,
    then two MLP branches; each branch is a Sequential of norm, attn / mlp and ls."""

    def __init__(self, dim, num_heads, mlp_ratio, qkv_bias, init_values, norm_layer, act="gelu", qk_norm=False,
                 scale_attn_norm=False, scale_mlp_norm=False, mlp_layer="mlp", proj_bias=True, num_parallel=2,
                 **unused):
        super().__init__()
        self.attns, self.ffns = nn.ModuleList(), nn.ModuleList()
        for _ in range(num_parallel):
            self.attns.append(nn.Sequential(OrderedDict([
                ("norm", norm_layer(dim)),
                ("attn", Attention(dim, num_heads, qkv_bias, qk_norm, scale_attn_norm, norm_layer, proj_bias)),
                ("ls", LayerScale(dim, init_values) if init_values else nn.Identity())])))
            self.ffns.append(nn.Sequential(OrderedDict([
                ("norm", norm_layer(dim)),
                ("mlp", MLPS[mlp_layer](dim, int(dim * mlp_ratio), act, norm_layer if scale_mlp_norm else None,
                                        proj_bias)),
                ("ls", LayerScale(dim, init_values) if init_values else nn.Identity())])))

    def forward(self, x):
        x = x + torch.stack([attn(x) for attn in self.attns]).sum(dim=0)
        return x + torch.stack([ffn(x) for ffn in self.ffns]).sum(dim=0)


def parallel_in_layers(block, dim, hidden, qkv_bias, norm_layer, qk_norm):
    """ParallelScalingBlock's input layers, in timm's order: in_norm, in_proj to [MLP hidden | q | k | v]
    (mlp_bias when qkv_bias is off), q_norm / k_norm over block.head_dim when qk_norm."""
    block.in_norm = norm_layer(dim)
    block.in_proj = nn.Linear(dim, hidden + 3 * dim, bias=qkv_bias)
    block.in_split = [hidden] + [dim] * 3
    block.mlp_bias = None if qkv_bias else nn.Parameter(torch.zeros(hidden))
    block.q_norm = norm_layer(block.head_dim) if qk_norm else nn.Identity()
    block.k_norm = norm_layer(block.head_dim) if qk_norm else nn.Identity()


def parallel_in_proj(block, x):
    """The first step of timm's ParallelScalingBlock and its variants: in_norm, then in_proj split into
    the MLP hidden (plus mlp_bias when there is one) and q, k, v."""
    x_mlp, q, k, v = torch.split(block.in_proj(block.in_norm(x)), block.in_split, dim=-1)
    if block.mlp_bias is not None:
        x_mlp = x_mlp + block.mlp_bias
    return x_mlp, q, k, v


def parallel_attention(block, q, k, v):
    """ParallelScalingBlock's attention over q, k, v as in_proj gives them ([B, N, C]): per-head q_norm /
    k_norm, softmax(q k^T * scale) v, the heads joined again."""
    B, N, C = q.shape
    q = block.q_norm(q.view(B, N, block.num_heads, block.head_dim)).transpose(1, 2)
    k = block.k_norm(k.view(B, N, block.num_heads, block.head_dim)).transpose(1, 2)
    v = v.view(B, N, block.num_heads, block.head_dim).transpose(1, 2)
    attn = ((q * block.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
    return (attn @ v).transpose(1, 2).reshape(B, N, C)


class ParallelScalingBlock(nn.Module):
    """timm's ParallelScalingBlock (ViT-22B style, the *_xp_* models): one in_norm, one in_proj giving
    the MLP hidden and q, k, v (mlp_bias when qkv_bias is off), attention and act(MLP) side by side,
    attn_out_proj + mlp_out_proj, one layer scale."""

    def __init__(self, dim, num_heads, mlp_ratio, qkv_bias, init_values, norm_layer, act="gelu", qk_norm=False,
                 scale_attn_norm=False, scale_mlp_norm=False, mlp_layer="mlp", proj_bias=True, **unused):
        super().__init__()
        assert not scale_attn_norm and not scale_mlp_norm
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        hidden = int(mlp_ratio * dim)
        parallel_in_layers(self, dim, hidden, qkv_bias, norm_layer, qk_norm)
        self.mlp_act = ACTS[act]()
        self.attn_out_proj = nn.Linear(dim, dim, bias=proj_bias)
        self.mlp_out_proj = nn.Linear(hidden, dim, bias=proj_bias)
        self.ls = LayerScale(dim, init_values) if init_values is not None else nn.Identity()

    def forward(self, x):
        x_mlp, q, k, v = parallel_in_proj(self, x)
        x_attn = parallel_attention(self, q, k, v)
        y = self.attn_out_proj(x_attn) + self.mlp_out_proj(self.mlp_act(x_mlp))
        return x + self.ls(y)


class DiffParallelScalingBlock(nn.Module):
    """timm's DiffParallelScalingBlock (the vit_dpwee_* models): ParallelScalingBlock's one in_norm and one
    in_proj (MLP hidden, q, k, v; mlp_bias when qkv_bias is off) with differential attention as DiffAttention
    computes it (2 x num_heads q / k heads of dim // num_heads // 2, v in num_heads heads of twice that,
    lambda from lambda_q1/k1/q2/k2 or, with dual_lambda, exp(lambda_a) - exp(lambda_b), plus lambda_init of
    the block's index; sub_norm RmsNorm eps 1e-5 times (1 - lambda_init)), act(MLP) beside it, one fused
    out_proj over [attention, MLP] and one layer scale."""

    def __init__(self, dim, num_heads, mlp_ratio, qkv_bias, init_values, norm_layer, act="gelu", qk_norm=False,
                 scale_attn_norm=False, scale_mlp_norm=False, mlp_layer="mlp", proj_bias=True, depth=0,
                 dual_lambda=False, **unused):
        super().__init__()
        assert dim % num_heads == 0
        assert not scale_attn_norm and not scale_mlp_norm
        self.num_heads = num_heads
        self.head_dim = dim // num_heads // 2
        self.scale = self.head_dim ** -0.5
        hidden = int(mlp_ratio * dim)
        parallel_in_layers(self, dim, hidden, qkv_bias, norm_layer, qk_norm)
        self.sub_norm = RmsNorm(2 * self.head_dim, eps=1e-5)
        self.dual_lambda = dual_lambda
        if dual_lambda:
            self.lambda_a = nn.Parameter(torch.zeros(()))
            self.lambda_b = nn.Parameter(torch.zeros(()))
            self.lambda_q1 = self.lambda_k1 = self.lambda_q2 = self.lambda_k2 = None
        else:
            self.lambda_a = self.lambda_b = None
            self.lambda_q1 = nn.Parameter(torch.zeros(self.head_dim))
            self.lambda_k1 = nn.Parameter(torch.zeros(self.head_dim))
            self.lambda_q2 = nn.Parameter(torch.zeros(self.head_dim))
            self.lambda_k2 = nn.Parameter(torch.zeros(self.head_dim))
        self.mlp_act = ACTS[act]()
        self.out_proj = nn.Linear(dim + hidden, dim, bias=proj_bias)
        self.ls = LayerScale(dim, init_values) if init_values is not None else nn.Identity()
        self.lambda_init = 0.8 - 0.6 * math.exp(-0.3 * depth)

    def _compute_lambda(self):
        if self.lambda_a is not None:
            lambda_1, lambda_2 = torch.exp(self.lambda_a), torch.exp(self.lambda_b)
        else:
            lambda_1 = torch.exp(torch.sum(self.lambda_q1 * self.lambda_k1, dim=-1).float())
            lambda_2 = torch.exp(torch.sum(self.lambda_q2 * self.lambda_k2, dim=-1).float())
        return lambda_1 - lambda_2 + self.lambda_init

    def forward(self, x):
        B, N, C = x.shape
        x_mlp, q, k, v = parallel_in_proj(self, x)
        q = q.reshape(B, N, 2 * self.num_heads, self.head_dim).transpose(1, 2)
        k = k.reshape(B, N, 2 * self.num_heads, self.head_dim).transpose(1, 2)
        v = v.reshape(B, N, self.num_heads, 2 * self.head_dim).transpose(1, 2)
        q, k = self.q_norm(q), self.k_norm(k)
        lam = self._compute_lambda().type_as(q)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1).view(B, self.num_heads, 2, N, N)
        x_attn = (attn[:, :, 0] - lam * attn[:, :, 1]) @ v
        x_attn = self.sub_norm(x_attn) * (1 - self.lambda_init)
        x_attn = x_attn.transpose(1, 2).reshape(B, N, C)
        y = self.out_proj(torch.cat((x_attn, self.mlp_act(x_mlp)), dim=-1))
        return x + self.ls(y)


def resample_pos_embed(pos, old_grid, new_grid, num_prefix):
    """timm's resample_abs_pos_embed: the grid part of pos ([1, prefix + gh * gw, C], after num_prefix
    tokens left as they are) resized bicubic with antialias from old_grid to new_grid."""
    prefix, g = pos[:, :num_prefix], pos[:, num_prefix:]
    g = g.reshape(1, old_grid[0], old_grid[1], -1).permute(0, 3, 1, 2)
    g = F.interpolate(g, size=tuple(new_grid), mode="bicubic", antialias=True, align_corners=False)
    return torch.cat([prefix, g.permute(0, 2, 3, 1).flatten(1, 2)], dim=1)


class VisionTransformer(nn.Module):
    def __init__(self, img_size=224, patch_size=16, in_chans=3, num_classes=1000, global_pool="token",
                 embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0, qkv_bias=True, init_values=None,
                 class_token=True, no_embed_class=False, reg_tokens=0, pre_norm=False, fc_norm=None,
                 final_norm=True, distilled=False, representation_size=None, dynamic_img_size=False, eps=1e-6,
                 act_layer="gelu", block_fn="pre", qk_norm=False, scale_attn_norm=False, scale_mlp_norm=False,
                 mlp_layer="mlp", pool_include_prefix=False, norm="layernorm", proj_bias=True, embed_norm=False,
                 attn_layer="attn"):
        super().__init__()
        self.pool_include_prefix = pool_include_prefix
        if norm == "rmsnorm":
            norm_layer = lambda d: RmsNorm(d, eps=eps)  # noqa: E731
        else:
            norm_layer = lambda d: nn.LayerNorm(d, eps=eps)  # noqa: E731
        use_fc_norm = global_pool == "avg" if fc_norm is None else fc_norm
        self.global_pool = global_pool
        self.num_prefix_tokens = (1 if class_token else 0) + reg_tokens + (1 if distilled else 0)
        self.no_embed_class = no_embed_class
        self.dynamic_img_size = dynamic_img_size
        self.distilled = distilled
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, bias=not pre_norm,
                                      norm_layer=norm_layer if embed_norm else None)
        num_patches = self.patch_embed.grid_size[0] * self.patch_embed.grid_size[1]
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        self.dist_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if distilled else None
        self.reg_token = nn.Parameter(torch.zeros(1, reg_tokens, embed_dim)) if reg_tokens else None
        embed_len = num_patches if no_embed_class else num_patches + self.num_prefix_tokens
        self.pos_embed = nn.Parameter(torch.randn(1, embed_len, embed_dim) * 0.02)
        self.norm_pre = norm_layer(embed_dim) if pre_norm else nn.Identity()
        block = {"pre": Block, "res_post": ResPostBlock, "parallel": ParallelThingsBlock,
                 "parallel_scaling": ParallelScalingBlock, "diff_parallel_scaling": DiffParallelScalingBlock}[block_fn]
        self.blocks = nn.Sequential(*[block(embed_dim, num_heads, mlp_ratio, qkv_bias, init_values, norm_layer, act_layer,
                                            qk_norm=qk_norm, scale_attn_norm=scale_attn_norm,
                                            scale_mlp_norm=scale_mlp_norm, mlp_layer=mlp_layer, proj_bias=proj_bias,
                                            attn_layer=attn_layer, depth=i)
                                      for i in range(depth)])
        self.norm = norm_layer(embed_dim) if final_norm and not use_fc_norm else nn.Identity()
        self.attn_pool = AttentionPoolLatent(embed_dim, num_heads, mlp_ratio, norm_layer, act_layer) \
            if global_pool == "map" else None
        self.fc_norm = norm_layer(embed_dim) if final_norm and use_fc_norm else nn.Identity()
        if representation_size:
            self.pre_logits = nn.Sequential()
            self.pre_logits.add_module("fc", nn.Linear(embed_dim, representation_size))
            self.pre_logits.add_module("act", nn.Tanh())
            head_in = representation_size
        else:
            self.pre_logits = nn.Identity()
            head_in = embed_dim
        self.head = nn.Linear(head_in, num_classes) if num_classes else nn.Identity()
        if distilled:
            self.head_dist = nn.Linear(head_in, num_classes) if num_classes else nn.Identity()

    def _pos_embed(self, x, grid):
        pos = self.pos_embed
        if self.dynamic_img_size and tuple(grid) != tuple(self.patch_embed.grid_size):
            pre = 0 if self.no_embed_class else self.num_prefix_tokens
            pos = resample_pos_embed(pos, self.patch_embed.grid_size, grid, pre)
        toks = []
        if self.cls_token is not None:
            toks.append(self.cls_token.expand(x.shape[0], -1, -1))
        if self.dist_token is not None:
            toks.append(self.dist_token.expand(x.shape[0], -1, -1))
        if self.reg_token is not None:
            toks.append(self.reg_token.expand(x.shape[0], -1, -1))
        if self.no_embed_class:
            x = x + pos
            return torch.cat(toks + [x], dim=1) if toks else x
        return torch.cat(toks + [x], dim=1) + pos

    def forward_features(self, x):
        grid = (x.shape[2] // self.patch_embed.patch_size[0], x.shape[3] // self.patch_embed.patch_size[1])
        x = self.patch_embed(x)
        x = self._pos_embed(x, grid)
        x = self.norm_pre(x)
        x = self.blocks(x)
        return self.norm(x)

    def forward_head(self, x, pre_logits=False):
        if self.distilled:
            x, x_dist = x[:, 0], x[:, 1]
            if pre_logits:
                return (x + x_dist) / 2
            return (self.head(x) + self.head_dist(x_dist)) / 2
        if self.attn_pool is not None:
            x = self.attn_pool(x if self.pool_include_prefix else x[:, self.num_prefix_tokens:])
        elif self.global_pool == "avg":
            x = x[:, self.num_prefix_tokens:].mean(dim=1)
        else:
            x = x[:, 0]
        x = self.fc_norm(x)
        x = self.pre_logits(x)
        return x if pre_logits else self.head(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def randomize_(model, seed=0):
    """Give every parameter a seeded non-trivial value (random init zeroes heads and tokens)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and ("norm" in name or "ln" in name) and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif "gamma" in name:
                p.copy_(0.5 + 0.3 * torch.randn(p.shape, generator=g))
            else:
                fan_in = p.shape[-1] if p.dim() > 1 else 1
                std = 1.0 / math.sqrt(fan_in) if p.dim() > 1 else 0.1
                p.copy_(std * torch.randn(p.shape, generator=g))
    return model
