"""A Swin Transformer V2 reference in PyTorch, written from timm's swin_transformer_v2.py (module
names give timm's state-dict keys) and, with era="ms", Microsoft's official
models/swin_transformer_v2.py (window and shift decided by min(H, W), downsample at the end of a
stage, buffers saved), or with era="hf" Hugging Face's modeling_swinv2.py (window and shift fixed
at construction from config.image_size: min(config-map height, window), no shift when that height
is not larger; pad, then roll).  Otherwise window, shift and the continuous position bias are
worked out from the map each block actually sees (what timm does after set_input_size / with a
dynamic mask).

Block (res-post-norm): x = x + norm1(attn(x)); x = x + norm2(mlp(x)).
Attention: cosine similarity of L2-normalised q and k times exp(clamp(logit_scale, max=log 100)),
plus 16 * sigmoid(cpb_mlp(log-spaced relative coordinates)), q_bias / v_bias and no k bias.
PatchMerging: 2x2 concat (x0 (0,0), x1 (1,0), x2 (0,1), x3 (1,1)), Linear(4C -> 2C), LayerNorm(2C)."""
import math
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

from .timm_vit import Mlp


def coords_table(wh, ww, pwh, pww):
    """The (2wh-1, 2ww-1, 2) log-spaced relative coordinates."""
    ys = torch.arange(-(wh - 1), wh, dtype=torch.float32)
    xs = torch.arange(-(ww - 1), ww, dtype=torch.float32)
    t = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1)
    if pwh > 0:
        t[..., 0] /= (pwh - 1)
        t[..., 1] /= (pww - 1)
    else:
        t[..., 0] /= (wh - 1)
        t[..., 1] /= (ww - 1)
    t = t * 8
    return torch.sign(t) * torch.log2(t.abs() + 1.0) / math.log2(8)


def position_index(wh, ww):
    ys, xs = torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij")
    flat = torch.stack([ys.flatten(), xs.flatten()])          # 2, N
    rel = (flat[:, :, None] - flat[:, None, :]).permute(1, 2, 0)
    return (rel[..., 0] + wh - 1) * (2 * ww - 1) + (rel[..., 1] + ww - 1)   # N, N


def partition(x, wh, ww):
    B, H, W, C = x.shape
    x = x.view(B, H // wh, wh, W // ww, ww, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, wh * ww, C)


def unpartition(w, wh, ww, H, W):
    C = w.shape[-1]
    x = w.view(-1, H // wh, W // ww, wh, ww, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, H, W, C)


def shift_mask(Hp, Wp, wh, ww, sh, sw):
    img = torch.zeros(1, Hp, Wp, 1)
    n = 0
    for hs in ((0, -wh), (-wh, -sh), (-sh, None)):
        for ws in ((0, -ww), (-ww, -sw), (-sw, None)):
            img[:, hs[0]:hs[1], ws[0]:ws[1], :] = n
            n += 1
    mw = partition(img, wh, ww).squeeze(-1)
    m = mw.unsqueeze(1) - mw.unsqueeze(2)
    return m.masked_fill(m != 0, -100.0).masked_fill(m == 0, 0.0)


class WindowAttention(nn.Module):
    def __init__(self, dim, num_heads, pretrained_window=0, qkv_bias=True, cpb_hidden=512):
        super().__init__()
        self.num_heads = num_heads
        self.pretrained_window = pretrained_window
        self.logit_scale = nn.Parameter(torch.log(10 * torch.ones(num_heads, 1, 1)))
        self.cpb_mlp = nn.Sequential(nn.Linear(2, cpb_hidden, bias=True), nn.ReLU(inplace=True),
                                     nn.Linear(cpb_hidden, num_heads, bias=False))
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        if qkv_bias:
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        else:
            self.q_bias = self.v_bias = None
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, wh, ww, mask=None):
        B_, N, C = x.shape
        bias = None
        if self.q_bias is not None:
            bias = torch.cat((self.q_bias, torch.zeros_like(self.q_bias), self.v_bias))
        qkv = F.linear(x, self.qkv.weight, bias).reshape(B_, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        attn = attn * torch.clamp(self.logit_scale, max=math.log(1.0 / 0.01)).exp()
        p = self.pretrained_window
        table = self.cpb_mlp(coords_table(wh, ww, p, p)).view(-1, self.num_heads)
        rpb = table[position_index(wh, ww).view(-1)].view(N, N, -1).permute(2, 0, 1)
        attn = attn + 16 * torch.sigmoid(rpb).unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(-1, nw, self.num_heads, N, N) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.num_heads, N, N)
        attn = attn.softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B_, N, C))


class SwinV2Block(nn.Module):
    def __init__(self, dim, num_heads, window_size, shifted, pretrained_window=0, mlp_ratio=4.0, era="timm",
                 cfg_res=None):
        super().__init__()
        self.window_size, self.shifted, self.era, self.cfg_res = window_size, shifted, era, cfg_res
        self.res = None
        self.attn = WindowAttention(dim, num_heads, pretrained_window)
        self.norm1 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.norm2 = nn.LayerNorm(dim)

    def geometry(self, H, W):
        w = self.window_size
        s = w // 2 if self.shifted else 0
        if self.era == "hf":     # Swinv2Layer._compute_window_shift on the config's map, height only
            r = self.cfg_res[0]
            wh = min(r, w)
            return wh, wh, (0 if r <= wh else s), (0 if r <= wh else s)
        if self.era == "timm":   # per axis (timm _calc_window_shift)
            wh, ww = min(H, w), min(W, w)
            return wh, ww, (0 if H <= wh else s), (0 if W <= ww else s)
        if min(H, W) <= w:       # Microsoft: one square window, no shift
            return min(H, W), min(H, W), 0, 0
        return w, w, s, s

    def _attn(self, x):
        B, H, W, C = x.shape
        # timm / Microsoft build the block for the patch grid floor-halved per stage (self.res);
        # PatchMerging pads an odd map, so the map itself may be one larger
        wh, ww, sh, sw = self.geometry(*(self.res or (H, W)))
        if self.era == "hf":     # pad, then roll the padded map
            ph, pw = (wh - H % wh) % wh, (ww - W % ww) % ww
            x = F.pad(x, (0, 0, 0, pw, 0, ph))
            Hp, Wp = H + ph, W + pw
            if sh or sw:
                x = torch.roll(x, shifts=(-sh, -sw), dims=(1, 2))
            mask = shift_mask(Hp, Wp, wh, ww, sh, sw) if (sh or sw) else None
            y = unpartition(self.attn(partition(x, wh, ww), wh, ww, mask), wh, ww, Hp, Wp)
            if sh or sw:
                y = torch.roll(y, shifts=(sh, sw), dims=(1, 2))
            return y[:, :H, :W, :]
        if sh or sw:
            x = torch.roll(x, shifts=(-sh, -sw), dims=(1, 2))
        ph, pw = (wh - H % wh) % wh, (ww - W % ww) % ww     # timm: roll, then pad
        x = F.pad(x, (0, 0, 0, pw, 0, ph))
        Hp, Wp = H + ph, W + pw
        mask = shift_mask(Hp, Wp, wh, ww, sh, sw) if (sh or sw) else None
        y = self.attn(partition(x, wh, ww), wh, ww, mask)
        y = unpartition(y, wh, ww, Hp, Wp)[:, :H, :W, :]
        if sh or sw:
            y = torch.roll(y, shifts=(sh, sw), dims=(1, 2))
        return y

    def forward(self, x):
        x = x + self.norm1(self._attn(x))
        return x + self.norm2(self.mlp(x))


class PatchMerging(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(2 * dim)

    def forward(self, x):
        B, H, W, C = x.shape
        x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
        B, H, W, C = x.shape
        x = x.reshape(B, H // 2, 2, W // 2, 2, C).permute(0, 1, 3, 4, 2, 5).flatten(3)
        return self.norm(self.reduction(x))


class SwinV2Stage(nn.Module):
    def __init__(self, dim, depth, num_heads, window_size, downsample, pretrained_window=0, era="timm", cfg_res=None):
        super().__init__()
        self.downsample = PatchMerging(dim // 2) if downsample else nn.Identity()
        self.blocks = nn.ModuleList([SwinV2Block(dim, num_heads, window_size, j % 2 == 1, pretrained_window, era=era,
                                                 cfg_res=cfg_res) for j in range(depth)])


class PatchEmbed(nn.Module):
    def __init__(self, patch, in_chans, dim):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, patch, patch)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class Head(nn.Module):
    def __init__(self, dim, n):
        super().__init__()
        self.fc = nn.Linear(dim, n)


class SwinTransformerV2(nn.Module):
    """timm's module tree; window_size and pretrained_window_sizes may differ per stage."""

    def __init__(self, patch_size=4, in_chans=3, num_classes=10, embed_dim=32, depths=(2, 2, 2), num_heads=(2, 4, 8),
                 window_size=4, pretrained_window_sizes=0, era="timm", img_size=None):
        super().__init__()
        n = len(depths)
        ws = list(window_size) if isinstance(window_size, (list, tuple)) else [window_size] * n
        pws = list(pretrained_window_sizes) if isinstance(pretrained_window_sizes, (list, tuple)) \
            else [pretrained_window_sizes] * n
        self.era = era
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        g = (img_size or 0) // patch_size   # Hugging Face: the config's patch grid, floor-halved per stage
        self.layers = nn.Sequential(*[SwinV2Stage(embed_dim * 2 ** i, depths[i], num_heads[i], ws[i], i > 0, pws[i], era,
                                                  (g >> i, g >> i)) for i in range(n)])
        self.norm = nn.LayerNorm(embed_dim * 2 ** (n - 1))
        self.head = Head(embed_dim * 2 ** (n - 1), num_classes)

    def forward_trace(self, x):
        """(logits, {lmv trace name: image-0 activation}) -- downsample i+1 here is the
        library's layers.i.downsample (it merges at the end of a stage)."""
        tr = OrderedDict()
        x = self.patch_embed(x)
        tr["patch_embed"] = x[0].numpy().copy()
        gh, gw = x.shape[1], x.shape[2]
        for i, stage in enumerate(self.layers):
            if i > 0:
                x = stage.downsample(x)
                tr["layers.%d.downsample" % (i - 1)] = x[0].numpy().copy()
            for j, blk in enumerate(stage.blocks):
                blk.res = (gh >> i, gw >> i)
                x = blk(x)
                tr["layers.%d.blocks.%d" % (i, j)] = x[0].numpy().copy()
        x = self.norm(x)
        tr["norm"] = x[0].numpy().copy()
        self.pooled = x.mean(dim=(1, 2))
        return self.head.fc(self.pooled), tr

    def forward(self, x):
        return self.forward_trace(x)[0]


def randomize_(model, seed=0):
    """Seeded non-trivial values: weights ~ N(0, 1/fan_in), norm weights 1 + N(0, 0.2), biases
    N(0, 0.1), logit scales spread around log 10 with some above the log 100 clamp, cpb layers
    large enough that 16 * sigmoid varies over the window."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("logit_scale"):
                p.copy_(math.log(10) + 1.5 * torch.randn(p.shape, generator=g))
            elif "cpb_mlp.0" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            elif "cpb_mlp.2" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
            elif p.dim() == 1 and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif p.dim() == 1:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel()))
    return model


def timm_state_dict(model):
    """timm's keys (head.fc.*, downsample at the start of stages 1..)."""
    return OrderedDict((k, v.clone()) for k, v in model.state_dict().items())


def ms_state_dict(model, window_sizes, H, W):
    """Microsoft's official file: downsample at the end of each stage, head.*, and the buffers its
    modules save (relative_coords_table, relative_position_index, attn_mask)."""
    out = OrderedDict()
    for k, v in model.state_dict().items():
        parts = k.split(".")
        if k.startswith("layers.") and parts[2] == "downsample":
            k = "layers.%d.downsample.%s" % (int(parts[1]) - 1, ".".join(parts[3:]))
        elif k.startswith("head.fc."):
            k = "head." + k[len("head.fc."):]
        out[k] = v.clone()
    for i, stage in enumerate(model.layers):
        for j, blk in enumerate(stage.blocks):
            wh, ww, sh, sw = blk.geometry(H, W)
            pre = "layers.%d.blocks.%d." % (i, j)
            p = blk.attn.pretrained_window
            out[pre + "attn.relative_coords_table"] = coords_table(wh, ww, p, p).unsqueeze(0)
            out[pre + "attn.relative_position_index"] = position_index(wh, ww)
            if sh or sw:
                out[pre + "attn_mask"] = shift_mask(H, W, wh, ww, sh, sw)
        H, W = H // 2, W // 2
    return out


def hf_state_dict(model):
    """Hugging Face Swinv2ForImageClassification keys: swinv2.embeddings.*, swinv2.encoder.layers.s.
    blocks.m.{layernorm_before, attention.self.{query, key (no bias), value, logit_scale,
    continuous_position_bias_mlp}, attention.output.dense, layernorm_after, intermediate.dense,
    output.dense}, downsample at the end of a stage, swinv2.layernorm, classifier."""
    out = OrderedDict()
    for k, v in timm_state_dict(model).items():
        parts = k.split(".")
        if k.startswith("patch_embed.proj."):
            k = "swinv2.embeddings.patch_embeddings.projection." + parts[-1]
        elif k.startswith("patch_embed.norm."):
            k = "swinv2.embeddings.norm." + parts[-1]
        elif k.startswith("layers.") and parts[2] == "downsample":
            k = "swinv2.encoder.layers.%d.downsample.%s" % (int(parts[1]) - 1, ".".join(parts[3:]))
        elif k.startswith("layers."):
            pre = "swinv2.encoder.layers.%s.blocks.%s." % (parts[1], parts[3])
            rest = ".".join(parts[4:])
            if rest == "attn.qkv.weight":
                for name, w in zip(("query", "key", "value"), v.chunk(3, 0)):
                    out[pre + "attention.self.%s.weight" % name] = w.clone()
                continue
            if rest in ("attn.q_bias", "attn.v_bias"):
                out[pre + "attention.self.%s.bias" % ("query" if rest == "attn.q_bias" else "value")] = v
                continue
            for a, b in (("norm1.", "layernorm_before."), ("norm2.", "layernorm_after."),
                         ("attn.logit_scale", "attention.self.logit_scale"),
                         ("attn.cpb_mlp.", "attention.self.continuous_position_bias_mlp."),
                         ("attn.proj.", "attention.output.dense."), ("mlp.fc1.", "intermediate.dense."),
                         ("mlp.fc2.", "output.dense.")):
                if rest.startswith(a):
                    rest = b + rest[len(a):]
            k = pre + rest
        elif k.startswith("norm."):
            k = "swinv2.layernorm." + parts[-1]
        elif k.startswith("head.fc."):
            k = "classifier." + parts[-1]
        out[k] = v
    return out
