"""PyTorch reference of the official LeMeViT (ViTAE-Transformer/LeMeViT, models/lemevit.py).

Written from the facts in shared/notes/lemevit.md: torch only (no einops / timm / fairscale),
eval-mode forward identical to what the official code runs on torch 1.13 (where
F.scaled_dot_product_attention does not exist, so its custom fallback is used):

  * stem: Conv(3->C0/2, k3 s2 p1) BN GELU Conv(C0/2->C0, k3 s2 p1) BN          (downsample_layers.0)
  * downsample_layers.i (i>=1): Identity if attn_type[i-1] == "C", else Conv(k3 s2 p1) + BN
  * meta tokens [M, C0] repeated over the batch, and before every stage the meta-token MLP
    Linear(Cin, 4*Cin) LN(eps 1e-5) GELU Linear(4*Cin, Cout) LN(eps 1e-5)       (meta_token_downsample.i)
  * LeMeBlock, pre-norm, LN eps 1e-6, depthwise 3x3 CPE residual, norm1/norm2/mlp shared by x and c:
      "C"  cross attention  (q from c, k/v from x); updates c only, x leaves WITHOUT its CPE
      "D"  dual cross attention (x<-c with scale_x, c<-x with scale_c)
      "D2" dual cross attention v2 (shared q/k between the two directions)
      "S"  standard self-attention, run separately on x and on c with the same weights
  * softmax scales: S and C use head_dim^-0.5 (the fallback's default); D and D2 use
      scale_x = math.log(M, N) * C^-0.5 and scale_c = math.log(N, N) * C^-0.5
    with N the RUNTIME number of image tokens and C the full stage width.
  * final BatchNorm2d on x, LayerNorm(eps 1e-5) on c, mean over HW + mean over the M tokens, head.

Module and parameter names reproduce the official state-dict keys exactly (meta_tokens,
downsample_layers.i.*, meta_token_downsample.i.*, stages.i.j.*, norm, norm_c, head).

Training-only extras that do not change the eval forward or the keys: DropPath (stochastic
depth, as in the official drop_path_rate). Options of the official LeMeBlock that the released
variants leave off: layer scale (layer_scale_init_value > 0 adds stages.i.j.gamma1 / gamma2 of
shape [1, 1, C], multiplying the attention and the MLP branch) and pre_norm=False (post-norm:
the attention reads un-normalised tokens and norm1 / norm2 follow each residual sum).
"""

import math
from collections import OrderedDict

import torch
import torch.nn as nn

__all__ = [
    "LeMeViT", "LeMeBlock", "StandardAttention", "CrossAttention", "DualCrossAttention",
    "DualCrossAttention_v2", "scaled_dot_product_attention", "dca_scales", "build", "create",
    "VARIANTS", "lemevit_tiny", "lemevit_small", "lemevit_base", "lemevit_small_v2",
    "lemevit_tiny_v2", "vit_tiny", "randomize_", "collect_activations", "remap_legacy_keys",
    "unwrap_checkpoint",
]


# --------------------------------------------------------------------------------------------
# Attention primitives
# --------------------------------------------------------------------------------------------

def scaled_dot_product_attention(q, k, v, scale=None):
    """The official custom attention (the branch torch 1.13 runs).

    q: [B, h, Nq, d], k/v: [B, h, Nk, d].  `scale or d**-0.5`: like the official code, a scale
    of None *or 0.0* falls back to head_dim**-0.5.  Order of operations as in the original:
    (q @ k^T) * scale, softmax over keys, @ v.

    Attention modules look this name up in the module globals at call time, so tests can
    monkeypatch it (e.g. to record the scales actually used).
    """
    scale = scale or q.shape[-1] ** (-0.5)
    attn = q @ k.transpose(-1, -2) * scale
    attn = attn.softmax(dim=-1)
    return attn @ v


def _split_heads(t, parts, heads):
    """einops "B N (x h d) -> x B h N d" with x=parts, h=heads (contiguous, like the original)."""
    B, N, _ = t.shape
    return t.reshape(B, N, parts, heads, -1).permute(2, 0, 3, 1, 4).contiguous()


def _merge_heads(t):
    """einops "B h N d -> B N (h d)"."""
    B, h, N, d = t.shape
    return t.transpose(1, 2).reshape(B, N, h * d).contiguous()


def dca_scales(M, N, C):
    """(scale_x, scale_c) of a D/D2 block exactly as the official code computes them (Python
    doubles): scale_x = math.log(M, N) * C**-0.5, scale_c = math.log(N, N) * C**-0.5.
    N is the runtime number of image tokens; N == 1 raises ZeroDivisionError (as upstream)."""
    base = C ** (-0.5)
    return math.log(M, N) * base, math.log(N, N) * base


class StandardAttention(nn.Module):
    """"S": multi-head self-attention; qkv rows are [q | k | v], heads contiguous within each."""

    def __init__(self, dim, num_heads):
        super().__init__()
        assert dim % num_heads == 0, f"dim {dim} not divisible by num_heads {num_heads}"
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        q, k, v = _split_heads(self.qkv(x), 3, self.num_heads)
        x = scaled_dot_product_attention(q, k, v)  # default scale: head_dim**-0.5
        return self.proj(_merge_heads(x))


class CrossAttention(nn.Module):
    """"C": queries from the meta tokens c, keys/values from the image tokens x.
    kv rows are [k | v].  Returns the new c only."""

    def __init__(self, dim, num_heads):
        super().__init__()
        assert dim % num_heads == 0, f"dim {dim} not divisible by num_heads {num_heads}"
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, c):
        q = _split_heads(self.q(c), 1, self.num_heads)[0]
        k, v = _split_heads(self.kv(x), 2, self.num_heads)
        c = scaled_dot_product_attention(q, k, v)  # default scale: head_dim**-0.5
        return self.proj(_merge_heads(c))


class DualCrossAttention(nn.Module):
    """"D": x attends to c (q1 from x, k2/v2 from c, scale_x) and c attends to x (q2 from c,
    k1/v1 from x, scale_c).  Both directions read the pre-update x and c."""

    def __init__(self, dim, num_heads):
        super().__init__()
        assert dim % num_heads == 0, f"dim {dim} not divisible by num_heads {num_heads}"
        self.num_heads = num_heads
        self.scale = dim ** (-0.5)  # FULL channel width, not head_dim
        self.qkv1 = nn.Linear(dim, 3 * dim)  # applied to x
        self.qkv2 = nn.Linear(dim, 3 * dim)  # applied to c
        self.proj_x = nn.Linear(dim, dim)
        self.proj_c = nn.Linear(dim, dim)

    def forward(self, x, c):
        N, M = x.shape[1], c.shape[1]
        scale_x = math.log(M, N) * self.scale
        scale_c = math.log(N, N) * self.scale
        q1, k1, v1 = _split_heads(self.qkv1(x), 3, self.num_heads)
        q2, k2, v2 = _split_heads(self.qkv2(c), 3, self.num_heads)
        x = self.proj_x(_merge_heads(scaled_dot_product_attention(q1, k2, v2, scale=scale_x)))
        c = self.proj_c(_merge_heads(scaled_dot_product_attention(q2, k1, v1, scale=scale_c)))
        return x, c


class DualCrossAttention_v2(nn.Module):
    """"D2": q and v1 from x (qv1), k and v2 from c (kv2); x_out = attn(q, k, v2, scale_x),
    c_out = attn(k, q, v1, scale_c).  (The official code passes the scales in every branch; a
    blog copy of it that drops them in the torch/fallback branches is not the official code.)"""

    def __init__(self, dim, num_heads):
        super().__init__()
        assert dim % num_heads == 0, f"dim {dim} not divisible by num_heads {num_heads}"
        self.num_heads = num_heads
        self.scale = dim ** (-0.5)
        self.qv1 = nn.Linear(dim, 2 * dim)  # applied to x: rows [q | v1]
        self.kv2 = nn.Linear(dim, 2 * dim)  # applied to c: rows [k | v2]
        self.proj_x = nn.Linear(dim, dim)
        self.proj_c = nn.Linear(dim, dim)

    def forward(self, x, c):
        N, M = x.shape[1], c.shape[1]
        scale_x = math.log(M, N) * self.scale
        scale_c = math.log(N, N) * self.scale
        q, v1 = _split_heads(self.qv1(x), 2, self.num_heads)
        k, v2 = _split_heads(self.kv2(c), 2, self.num_heads)
        x = self.proj_x(_merge_heads(scaled_dot_product_attention(q, k, v2, scale=scale_x)))
        c = self.proj_c(_merge_heads(scaled_dot_product_attention(k, q, v1, scale=scale_c)))
        return x, c


# --------------------------------------------------------------------------------------------
# Block
# --------------------------------------------------------------------------------------------

class DropPath(nn.Module):
    """Stochastic depth per sample (training only; identity in eval).  No parameters."""

    def __init__(self, drop_prob=0.0):
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x):
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep


def _to_tokens(x):
    """NCHW -> [B, H*W, C] (einops "N C H W -> N (H W) C")."""
    return x.flatten(2).transpose(1, 2)


def _to_map(x, H, W):
    """[B, H*W, C] -> NCHW (einops "N (H W) C -> N C H W").  Like einops this is a view
    (reshape + permute), i.e. an NCHW tensor with channels-last strides, so the following
    convolutions see the same memory layout as in the official code."""
    B, N, C = x.shape
    return x.reshape(B, H, W, C).permute(0, 3, 1, 2)


class LeMeBlock(nn.Module):
    """One LeMeViT block: pre-norm (every released variant) or post-norm (pre_norm=False)."""

    def __init__(self, dim, attn_type, num_heads, mlp_ratio=4, drop_path=0.0, cpe_ks=3,
                 layer_scale_init_value=-1, pre_norm=True):
        super().__init__()
        self.pre_norm = pre_norm
        if cpe_ks > 0:
            # padding=1 is hard-coded upstream whatever cpe_ks is
            self.pos_embed = nn.Conv2d(dim, dim, kernel_size=cpe_ks, padding=1, groups=dim)
        else:
            self.pos_embed = None
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn_type = attn_type
        if attn_type == "D":
            self.attn = DualCrossAttention(dim, num_heads)
        elif attn_type == "D2":
            self.attn = DualCrossAttention_v2(dim, num_heads)
        elif attn_type == "S":
            self.attn = StandardAttention(dim, num_heads)
        elif attn_type == "C":
            self.attn = CrossAttention(dim, num_heads)
        else:
            raise ValueError(f"unknown attn_type {attn_type!r}")
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        hidden = int(mlp_ratio * dim)
        # index 1 is the (disabled) DWConv slot, so the keys are mlp.0 and mlp.3
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.Identity(), nn.GELU(),
                                 nn.Linear(hidden, dim))
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        if layer_scale_init_value > 0:
            self.gamma1 = nn.Parameter(layer_scale_init_value * torch.ones((1, 1, dim)))
            self.gamma2 = nn.Parameter(layer_scale_init_value * torch.ones((1, 1, dim)))
        else:
            self.gamma1 = self.gamma2 = None

    def _cpe(self, x):
        return x + self.pos_embed(x) if self.pos_embed is not None else x

    def _ls1(self, t):
        return t if self.gamma1 is None else self.gamma1 * t

    def _ls2(self, t):
        return t if self.gamma2 is None else self.gamma2 * t

    def _post(self, t, branch):
        """post-norm: t = norm1(t + ls1(branch)); t = norm2(t + ls2(mlp(t)))"""
        t = self.norm1(t + self.drop_path(self._ls1(branch)))
        return self.norm2(t + self.drop_path(self._ls2(self.mlp(t))))

    def forward(self, x, c):
        B, C, H, W = x.shape
        if not self.pre_norm:  # the official "else" branches: attention on the raw tokens
            xs = _to_tokens(self._cpe(x))
            if self.attn_type == "C":
                return x, self._post(c, self.attn(xs, c))
            if self.attn_type in ("D", "D2"):
                _x, _c = self.attn(xs, c)
            else:
                _x, _c = self.attn(xs), self.attn(c)
            return _to_map(self._post(xs, _x), H, W), self._post(c, _c)
        if self.attn_type == "C":
            xs = _to_tokens(self._cpe(x))
            c = c + self.drop_path(self._ls1(self.attn(self.norm1(xs), self.norm1(c))))
            c = c + self.drop_path(self._ls2(self.mlp(self.norm2(c))))
            return x, c  # x leaves unchanged (without its CPE)
        xs = _to_tokens(self._cpe(x))
        if self.attn_type in ("D", "D2"):
            _x, _c = self.attn(self.norm1(xs), self.norm1(c))
            xs = xs + self.drop_path(self._ls1(_x))
            xs = xs + self.drop_path(self._ls2(self.mlp(self.norm2(xs))))
            c = c + self.drop_path(self._ls1(_c))
            c = c + self.drop_path(self._ls2(self.mlp(self.norm2(c))))
        else:  # "S": same weights, x and c never interact
            xs = xs + self.drop_path(self._ls1(self.attn(self.norm1(xs))))
            xs = xs + self.drop_path(self._ls2(self.mlp(self.norm2(xs))))
            c = c + self.drop_path(self._ls1(self.attn(self.norm1(c))))
            c = c + self.drop_path(self._ls2(self.mlp(self.norm2(c))))
        return _to_map(xs, H, W), c


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------

def _meta_mlp(cin, cout):
    """Linear(cin, 4*cin) LN GELU Linear(4*cin, cout) LN; both LNs use the default eps 1e-5."""
    return nn.Sequential(nn.Linear(cin, cin * 4), nn.LayerNorm(cin * 4), nn.GELU(),
                         nn.Linear(cin * 4, cout), nn.LayerNorm(cout))


class LeMeViT(nn.Module):
    def __init__(self, depth, embed_dim, head_dim=32, mlp_ratios=4,
                 attn_type=("C", "D", "D", "S", "S"), queries_len=16, num_classes=1000,
                 in_chans=3, cpe_ks=3, drop_path_rate=0.0, layer_scale_init_value=-1, pre_norm=True):
        super().__init__()
        attn_type = list(attn_type)
        n = len(attn_type)
        depth, embed_dim = list(depth), list(embed_dim)
        if isinstance(mlp_ratios, (int, float)):
            mlp_ratios = [mlp_ratios] * n
        mlp_ratios = list(mlp_ratios)
        assert len(depth) == len(embed_dim) == len(mlp_ratios) == n, "one entry per stage"
        self.num_classes = num_classes
        self.num_stages = n
        self.embed_dim = embed_dim
        self.num_features = embed_dim[-1]
        self.attn_type = attn_type
        self.queries_len = queries_len
        self.head_dim = head_dim

        # downsample layers (index 0 is the stem; Identity after a "C" stage)
        self.downsample_layers = nn.ModuleList()
        self.downsample_layers.append(nn.Sequential(
            nn.Conv2d(in_chans, embed_dim[0] // 2, kernel_size=3, stride=2, padding=1),
            nn.BatchNorm2d(embed_dim[0] // 2),
            nn.GELU(),
            nn.Conv2d(embed_dim[0] // 2, embed_dim[0], kernel_size=3, stride=2, padding=1),
            nn.BatchNorm2d(embed_dim[0]),
        ))
        for i in range(n - 1):
            if attn_type[i] == "C":
                self.downsample_layers.append(nn.Identity())
            else:
                self.downsample_layers.append(nn.Sequential(
                    nn.Conv2d(embed_dim[i], embed_dim[i + 1], kernel_size=3, stride=2, padding=1),
                    nn.BatchNorm2d(embed_dim[i + 1])))

        # meta tokens and their per-stage MLPs (stage 0 maps C0 -> C0)
        self.meta_tokens = nn.Parameter(torch.randn(queries_len, embed_dim[0]))
        self.meta_token_downsample = nn.ModuleList([_meta_mlp(embed_dim[0], embed_dim[0])])
        for i in range(n - 1):
            self.meta_token_downsample.append(_meta_mlp(embed_dim[i], embed_dim[i + 1]))

        # stages
        dpr = [v.item() for v in torch.linspace(0, drop_path_rate, sum(depth))]
        self.stages = nn.ModuleList()
        cur = 0
        for i in range(n):
            self.stages.append(nn.ModuleList([
                LeMeBlock(embed_dim[i], attn_type[i], embed_dim[i] // head_dim,
                          mlp_ratio=mlp_ratios[i], drop_path=dpr[cur + j], cpe_ks=cpe_ks,
                          layer_scale_init_value=layer_scale_init_value, pre_norm=pre_norm)
                for j in range(depth[i])]))
            cur += depth[i]

        self.norm = nn.BatchNorm2d(embed_dim[-1])
        self.norm_c = nn.LayerNorm(embed_dim[-1])
        self.head = nn.Linear(embed_dim[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m):
        # as upstream: Linear trunc_normal(std .02, cut at +-2) / bias 0; LayerNorm 1 / 0;
        # convs and BN keep PyTorch defaults; meta_tokens ~ randn.
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02, a=-2.0, b=2.0)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.LayerNorm):
            nn.init.constant_(m.bias, 0)
            nn.init.constant_(m.weight, 1.0)

    def forward_features(self, x):
        c = self.meta_tokens.repeat(x.shape[0], 1, 1)
        for i in range(self.num_stages):
            x = self.downsample_layers[i](x)
            c = self.meta_token_downsample[i](c)
            for block in self.stages[i]:
                x, c = block(x, c)
        x = self.norm(x)
        c = self.norm_c(c)
        return x.flatten(2).mean(-1) + c.transpose(-2, -1).contiguous().mean(-1)

    def forward(self, x):
        return self.head(self.forward_features(x))


# --------------------------------------------------------------------------------------------
# Variants
# --------------------------------------------------------------------------------------------

VARIANTS = OrderedDict([
    ("lemevit_tiny", dict(depth=[1, 2, 2, 8, 2], embed_dim=[64, 64, 128, 192, 320],
                          mlp_ratios=4, attn_type=["C", "D", "D", "S", "S"])),
    ("lemevit_small", dict(depth=[1, 2, 2, 6, 2], embed_dim=[96, 96, 192, 320, 384],
                           mlp_ratios=4, attn_type=["C", "D", "D", "S", "S"])),
    ("lemevit_base", dict(depth=[2, 4, 4, 18, 4], embed_dim=[96, 96, 192, 384, 512],
                          mlp_ratios=4, attn_type=["C", "D", "D", "S", "S"])),
    ("lemevit_small_v2", dict(depth=[1, 2, 2, 8, 2], embed_dim=[64, 64, 128, 256, 512],
                              mlp_ratios=3, attn_type=["C", "D", "D", "S", "S"])),
    ("lemevit_tiny_v2", dict(depth=[2, 2, 2, 4, 2], embed_dim=[96, 96, 192, 320, 384],
                             mlp_ratios=4, attn_type=["C", "D2", "D2", "S", "S"])),
    ("vit_tiny", dict(depth=[2, 2, 4, 2], embed_dim=[96, 192, 320, 384],
                      mlp_ratios=4, attn_type=["S", "S", "S", "S"])),
])


def build(depth, embed_dim, mlp_ratios=4, attn_type=("C", "D", "D", "S", "S"), head_dim=32,
          queries_len=16, num_classes=1000, **kwargs):
    """Arbitrary configuration, e.g. build(depth=[1,1,1,1,1], embed_dim=[32,32,64,64,96])."""
    return LeMeViT(depth=depth, embed_dim=embed_dim, mlp_ratios=mlp_ratios, attn_type=attn_type,
                   head_dim=head_dim, queries_len=queries_len, num_classes=num_classes, **kwargs)


def create(name, **kwargs):
    """Build a registered variant by name; kwargs (num_classes, drop_path_rate, ...) override."""
    if name not in VARIANTS:
        raise KeyError(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}")
    cfg = dict(VARIANTS[name])
    cfg.update(kwargs)
    return build(**cfg)


def lemevit_tiny(**kw):
    return create("lemevit_tiny", **kw)


def lemevit_small(**kw):
    return create("lemevit_small", **kw)


def lemevit_base(**kw):
    return create("lemevit_base", **kw)


def lemevit_small_v2(**kw):
    return create("lemevit_small_v2", **kw)


def lemevit_tiny_v2(**kw):
    return create("lemevit_tiny_v2", **kw)


def vit_tiny(**kw):
    return create("vit_tiny", **kw)


# --------------------------------------------------------------------------------------------
# Test helpers
# --------------------------------------------------------------------------------------------

@torch.no_grad()
def randomize_(model, seed=0, gain=1.0):
    """Give every parameter and buffer non-trivial, seeded values (in place) so that parity
    tests exercise everything: weights ~ N(0, gain^2/fan_in), biases ~ N(0, 0.1^2), norm
    weights ~ 1 + N(0, 0.2^2), BN running_mean ~ N(0, 0.2^2), running_var ~ U(0.5, 2.0)
    (positive), num_batches_tracked random, meta_tokens ~ N(0, 1).  Deterministic for a given
    seed and model structure (CPU generator, state-dict order).  Returns the model."""
    g = torch.Generator().manual_seed(int(seed))
    owners = {}
    for mname, mod in model.named_modules():
        for pname, _ in mod.named_parameters(recurse=False):
            owners[f"{mname}.{pname}" if mname else pname] = mod
        for bname, _ in mod.named_buffers(recurse=False):
            owners[f"{mname}.{bname}" if mname else bname] = mod
    for key, t in model.state_dict(keep_vars=True).items():
        mod = owners[key]
        leaf = key.rsplit(".", 1)[-1]
        shape = t.shape
        if t.dtype in (torch.int64, torch.int32):
            t.fill_(int(torch.randint(1, 1000, (1,), generator=g)))
            continue
        randn = torch.randn(shape, generator=g, dtype=torch.float64)
        if isinstance(mod, (nn.LayerNorm, nn.BatchNorm2d)):
            if leaf == "weight":
                val = 1.0 + 0.2 * randn
            elif leaf == "bias":
                val = 0.1 * randn
            elif leaf == "running_mean":
                val = 0.2 * randn
            elif leaf == "running_var":
                val = 0.5 + 1.5 * torch.rand(shape, generator=g, dtype=torch.float64)
            else:
                raise KeyError(key)
        elif leaf == "bias":
            val = 0.1 * randn
        elif leaf == "meta_tokens":
            val = randn
        elif leaf in ("gamma1", "gamma2"):
            val = 1.0 + 0.2 * randn
        else:  # Linear / Conv weights
            fan_in = t[0].numel() if t.dim() > 1 else 1
            val = randn * (gain / math.sqrt(fan_in))
        t.copy_(val.to(t.dtype))
    return model


@torch.no_grad()
def collect_activations(model, x):
    """Run model(x) (call model.eval() first for eval semantics) and return an OrderedDict of
    intermediate tensors, in execution order, captured with forward hooks:

      downsample.{i}      x after downsample_layers[i]            NCHW
      meta.{i}            c after meta_token_downsample[i]        [B, M, C_i]
      stages.{i}.{j}.x    x after block j of stage i              NCHW
      stages.{i}.{j}.c    c after block j of stage i              [B, M, C_i]
      norm                x after the final BatchNorm2d            NCHW
      norm_c              c after the final LayerNorm              [B, M, C]
      pooled              mean_HW(norm) + mean_M(norm_c)           [B, C]  (the head input)
      logits              model output                             [B, num_classes]
    """
    acts = OrderedDict()
    handles = []

    def save(name):
        def hook(_mod, _inp, out):
            if isinstance(out, tuple):
                acts[name + ".x"] = out[0].detach().clone()
                acts[name + ".c"] = out[1].detach().clone()
            else:
                acts[name] = out.detach().clone()
        return hook

    for i in range(model.num_stages):
        handles.append(model.downsample_layers[i].register_forward_hook(save(f"downsample.{i}")))
        handles.append(model.meta_token_downsample[i].register_forward_hook(save(f"meta.{i}")))
        for j, blk in enumerate(model.stages[i]):
            handles.append(blk.register_forward_hook(save(f"stages.{i}.{j}")))
    handles.append(model.norm.register_forward_hook(save("norm")))
    handles.append(model.norm_c.register_forward_hook(save("norm_c")))

    def pre_head(_mod, inp):
        acts["pooled"] = inp[0].detach().clone()
    handles.append(model.head.register_forward_pre_hook(pre_head))
    try:
        out = model(x)
    finally:
        for h in handles:
            h.remove()
    acts["logits"] = out.detach().clone()
    return acts


def remap_legacy_keys(state_dict):
    """Training-era checkpoints (models/mixformer.py) name two tensors differently:
    prototypes -> meta_tokens, prototype_downsample.* -> meta_token_downsample.*.
    Also strips a leading 'module.' (DataParallel / DDP)."""
    out = OrderedDict()
    for k, v in state_dict.items():
        if k.startswith("module."):
            k = k[len("module."):]
        if k == "prototypes":
            k = "meta_tokens"
        elif k.startswith("prototype_downsample."):
            k = "meta_token_downsample." + k[len("prototype_downsample."):]
        out[k] = v
    return out


def unwrap_checkpoint(obj, use_ema=False):
    """Return the state dict inside a timm/DeiT-style checkpoint: state_dict_ema / model_ema
    (only with use_ema), then state_dict, then model, else the object itself."""
    if isinstance(obj, dict):
        keys = (["state_dict_ema", "model_ema"] if use_ema else []) + ["state_dict", "model"]
        for k in keys:
            if k in obj and isinstance(obj[k], dict):
                return remap_legacy_keys(obj[k])
    return remap_legacy_keys(obj)


def reference_traces(acts, model):
    """The activations of image 0 from collect_activations() under the names lemevit.h traces them
    (token-major HWC), for comparing block by block."""
    out = {}
    hwc = lambda t: t[0].permute(1, 2, 0).numpy()  # noqa: E731
    out["stem"] = hwc(acts["downsample.0"])
    for i in range(model.num_stages):
        out[f"stages.{i}.in_x"] = hwc(acts[f"downsample.{i}"])
        out[f"stages.{i}.in_c"] = acts[f"meta.{i}"][0].numpy()
        for j in range(len(model.stages[i])):
            out[f"stages.{i}.{j}.x"] = hwc(acts[f"stages.{i}.{j}.x"])
            out[f"stages.{i}.{j}.c"] = acts[f"stages.{i}.{j}.c"][0].numpy()
    out["features"] = acts["pooled"][0].numpy()
    return out
