"""PyTorch reference of Swin Transformer V1 as Microsoft's repository and timm write it, in the
three checkpoint eras of shared/notes/formats.md section 2 (torch only, no timm needed):

  era='ms'       Microsoft's official code and timm <= 0.8.  (B, L, C) tokens, PatchMerging at the
                 END of stage s (layers.s.downsample.*), head.*; relative_position_index and
                 attn_mask are persistent buffers, so they are in the state dict.  Window rule:
                 if min(H, W) <= window: shift 0 and window = min(H, W) (the "min" rule).  No
                 padding: every stage must be divisible by the window.  Optional ape
                 (absolute_pos_embed (1, num_patches, C)).
  era='timm09'   timm 0.9.0 - 0.9.5.  NHWC blocks, PatchMerging at the START of stage s + 1
                 (layers.{s+1}.downsample.*), head.fc.* (ClassifierHead), buffers still
                 persistent; same window rule and no padding, as in 'ms'.
  era='timm096'  timm >= 0.9.6 (commit 7790ea70, and HEAD with its defaults).  Same names as
                 'timm09' but the buffers are persistent=False (not in the state dict).  Window
                 and shift per axis (window = r if r <= w else w, shift = 0 if r <= w), the
                 attention ROLLS the map first and then zero-pads it bottom/right to a window
                 multiple, with the shift mask built on the ceil-padded size; the output is
                 cropped and rolled back.  PatchMerging zero-pads odd sides (HEAD).

Module names reproduce the real state-dict keys.  Every model is built for one input size
(img_size, like the originals, which assert it); to run the same weights at another size build
another model and load the state dict (strict=False drops the size-dependent attn_mask).

FAULTS lets a test break the reference on purpose (a transposed relative position index, the
shift mask left out) to show that the parity check catches those bugs.
"""

import math
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["ERAS", "FAULTS", "SwinTransformer", "WindowAttention", "SwinTransformerBlock", "PatchMerging",
           "get_relative_position_index", "region_mask", "window_partition", "window_reverse", "build",
           "randomize_", "to_ms_keys", "load_weights", "collect_activations"]

ERAS = ("ms", "timm09", "timm096")

# test hooks: set to True to make the reference wrong on purpose
FAULTS = {"transposed_index": False, "no_shift_mask": False}


def to_2tuple(x):
    return tuple(x) if isinstance(x, (tuple, list)) else (x, x)


def window_partition(x, window_size):
    """(B, H, W, C) -> (B * nW, wh, ww, C); windows row-major, tokens row-major inside."""
    wh, ww = to_2tuple(window_size)
    B, H, W, C = x.shape
    assert H % wh == 0 and W % ww == 0, "map %dx%d is not divisible by the window %dx%d" % (H, W, wh, ww)
    x = x.view(B, H // wh, wh, W // ww, ww, C)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, wh, ww, C)


def window_reverse(windows, window_size, H, W):
    wh, ww = to_2tuple(window_size)
    C = windows.shape[-1]
    x = windows.view(-1, H // wh, W // ww, wh, ww, C)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, H, W, C)


def get_relative_position_index(win_h, win_w):
    """timm / Microsoft: index[i, j] = (dh + Wh - 1) * (2 Ww - 1) + (dw + Ww - 1), (dh, dw) = c_i - c_j."""
    coords = torch.stack(torch.meshgrid([torch.arange(win_h), torch.arange(win_w)], indexing="ij"))  # 2, Wh, Ww
    coords_flatten = torch.flatten(coords, 1)  # 2, Wh*Ww
    relative_coords = coords_flatten[:, :, None] - coords_flatten[:, None, :]  # 2, N, N
    relative_coords = relative_coords.permute(1, 2, 0).contiguous()  # N, N, 2
    relative_coords[:, :, 0] += win_h - 1
    relative_coords[:, :, 1] += win_w - 1
    relative_coords[:, :, 0] *= 2 * win_w - 1
    return relative_coords.sum(-1)  # N, N


def region_mask(H, W, window_size, shift_size):
    """The shifted-window attention mask (nW, N, N) of timm / Microsoft: label the H x W grid with
    the 3 x 3 regions (0, -w), (-w, -s), (-s, None) per axis, partition the labels into windows,
    -100 where two labels differ."""
    wh, ww = to_2tuple(window_size)
    sh, sw = to_2tuple(shift_size)
    img_mask = torch.zeros((1, H, W, 1))
    cnt = 0
    for h in (slice(0, -wh), slice(-wh, -sh), slice(-sh, None)):
        for w in (slice(0, -ww), slice(-ww, -sw), slice(-sw, None)):
            img_mask[:, h, w, :] = cnt
            cnt += 1
    mask_windows = window_partition(img_mask, (wh, ww)).view(-1, wh * ww)
    attn_mask = mask_windows.unsqueeze(1) - mask_windows.unsqueeze(2)
    return attn_mask.masked_fill(attn_mask != 0, float(-100.0)).masked_fill(attn_mask == 0, float(0.0))


class Mlp(nn.Module):
    """timm Mlp (fc1, act, drop1, norm, fc2, drop2); Microsoft's has the same parameter names."""

    def __init__(self, in_features, hidden_features, drop=0.0):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(drop)
        self.norm = nn.Identity()
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x):
        return self.drop2(self.fc2(self.norm(self.drop1(self.act(self.fc1(x))))))


class WindowAttention(nn.Module):
    def __init__(self, dim, num_heads, window_size, qkv_bias=True, attn_drop=0.0, proj_drop=0.0, persistent=True):
        super().__init__()
        self.dim = dim
        self.window_size = to_2tuple(window_size)
        win_h, win_w = self.window_size
        self.window_area = win_h * win_w
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * win_h - 1) * (2 * win_w - 1), num_heads))
        self.register_buffer("relative_position_index", get_relative_position_index(win_h, win_w),
                             persistent=persistent)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.softmax = nn.Softmax(dim=-1)

    def _get_rel_pos_bias(self):
        index = self.relative_position_index
        if FAULTS["transposed_index"]:
            index = index.t()
        bias = self.relative_position_bias_table[index.reshape(-1)].view(self.window_area, self.window_area, -1)
        return bias.permute(2, 0, 1).contiguous().unsqueeze(0)  # 1, nH, N, N

    def forward(self, x, mask=None):
        B_, N, C = x.shape
        qkv = self.qkv(x).reshape(B_, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q = q * self.scale
        attn = q @ k.transpose(-2, -1)
        attn = attn + self._get_rel_pos_bias()
        if mask is not None and not FAULTS["no_shift_mask"]:
            num_win = mask.shape[0]
            attn = attn.view(-1, num_win, self.num_heads, N, N) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.num_heads, N, N)
        attn = self.attn_drop(self.softmax(attn))
        x = (attn @ v).transpose(1, 2).reshape(B_, N, -1)
        return self.proj_drop(self.proj(x))


class SwinTransformerBlock(nn.Module):
    def __init__(self, dim, input_resolution, num_heads, window_size=7, shift_size=0, mlp_ratio=4.0, qkv_bias=True,
                 era="ms"):
        super().__init__()
        self.dim = dim
        self.era = era
        self.input_resolution = tuple(input_resolution)
        H, W = self.input_resolution
        if era == "timm096":
            # timm >= 0.9.6 _calc_window_shift: per axis
            ws, ss = to_2tuple(window_size), to_2tuple(shift_size)
            self.window_size = tuple(r if r <= w else w for r, w in zip(self.input_resolution, ws))
            self.shift_size = tuple(0 if r <= w else s for r, w, s in zip(self.input_resolution, self.window_size, ss))
        else:
            # Microsoft / timm <= 0.9.5: one window for both axes, clamped by min(H, W)
            w, s = window_size, shift_size
            if min(self.input_resolution) <= w:
                s = 0
                w = min(self.input_resolution)
            assert 0 <= s < w, "shift_size must be in 0-window_size"
            self.window_size, self.shift_size = (w, w), (s, s)
        self.window_area = self.window_size[0] * self.window_size[1]
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, self.window_size, qkv_bias=qkv_bias,
                                    persistent=era != "timm096")
        self.drop_path = nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        if any(self.shift_size):
            if era == "timm096":   # on the ceil-padded size
                Hm = math.ceil(H / self.window_size[0]) * self.window_size[0]
                Wm = math.ceil(W / self.window_size[1]) * self.window_size[1]
            else:
                Hm, Wm = H, W
            attn_mask = region_mask(Hm, Wm, self.window_size, self.shift_size)
        else:
            attn_mask = None
        self.register_buffer("attn_mask", attn_mask, persistent=era != "timm096")

    def _attn(self, x):
        """x: (B, H, W, C) after norm1; returns the window attention output (B, H, W, C)."""
        B, H, W, C = x.shape
        has_shift = any(self.shift_size)
        if has_shift:
            x = torch.roll(x, shifts=(-self.shift_size[0], -self.shift_size[1]), dims=(1, 2))
        if self.era == "timm096":   # pad after the roll
            pad_h = (self.window_size[0] - H % self.window_size[0]) % self.window_size[0]
            pad_w = (self.window_size[1] - W % self.window_size[1]) % self.window_size[1]
            x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        Hp, Wp = x.shape[1], x.shape[2]
        x_windows = window_partition(x, self.window_size).view(-1, self.window_area, C)
        attn_windows = self.attn(x_windows, mask=self.attn_mask)
        x = window_reverse(attn_windows.view(-1, self.window_size[0], self.window_size[1], C), self.window_size, Hp, Wp)
        x = x[:, :H, :W, :].contiguous()
        if has_shift:
            x = torch.roll(x, shifts=self.shift_size, dims=(1, 2))
        return x

    def forward(self, x):
        if self.era == "ms":   # (B, L, C)
            H, W = self.input_resolution
            B, L, C = x.shape
            assert L == H * W, "input feature has wrong size"
            shortcut = x
            x = self._attn(self.norm1(x).view(B, H, W, C)).view(B, H * W, C)
            x = shortcut + self.drop_path(x)
            return x + self.drop_path(self.mlp(self.norm2(x)))
        B, H, W, C = x.shape   # NHWC (timm >= 0.9)
        x = x + self.drop_path(self._attn(self.norm1(x)))
        x = x.reshape(B, -1, C)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x.reshape(B, H, W, C)


class PatchMerging(nn.Module):
    def __init__(self, dim, input_resolution, era="ms"):
        super().__init__()
        self.dim = dim
        self.era = era
        self.input_resolution = tuple(input_resolution)
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x):
        if self.era == "ms":
            H, W = self.input_resolution
            B, L, C = x.shape
            assert L == H * W and H % 2 == 0 and W % 2 == 0, "x size (%d*%d) are not even" % (H, W)
            x = x.view(B, H, W, C)
            x0 = x[:, 0::2, 0::2, :]
            x1 = x[:, 1::2, 0::2, :]
            x2 = x[:, 0::2, 1::2, :]
            x3 = x[:, 1::2, 1::2, :]
            x = torch.cat([x0, x1, x2, x3], -1).view(B, -1, 4 * C)
            return self.reduction(self.norm(x))
        B, H, W, C = x.shape
        if self.era == "timm096":   # timm HEAD pads odd sides
            x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
            H, W = x.shape[1], x.shape[2]
        assert H % 2 == 0 and W % 2 == 0, "x size (%d*%d) are not even" % (H, W)
        x = x.reshape(B, H // 2, 2, W // 2, 2, C).permute(0, 1, 3, 4, 2, 5).flatten(3)
        return self.reduction(self.norm(x))


class BasicLayer(nn.Module):
    """Microsoft / timm <= 0.8 stage: blocks, then PatchMerging."""

    def __init__(self, dim, input_resolution, depth, num_heads, window_size, mlp_ratio, qkv_bias, downsample):
        super().__init__()
        self.blocks = nn.ModuleList([
            SwinTransformerBlock(dim, input_resolution, num_heads, window_size, 0 if i % 2 == 0 else window_size // 2,
                                 mlp_ratio, qkv_bias, era="ms") for i in range(depth)])
        self.downsample = PatchMerging(dim, input_resolution, era="ms") if downsample else None

    def forward(self, x):
        for blk in self.blocks:
            x = blk(x)
        if self.downsample is not None:
            x = self.downsample(x)
        return x


class SwinTransformerStage(nn.Module):
    """timm >= 0.9 stage: PatchMerging (from the previous width), then blocks."""

    def __init__(self, dim, input_resolution, depth, num_heads, window_size, mlp_ratio, qkv_bias, downsample, era):
        super().__init__()
        self.downsample = PatchMerging(dim // 2, (input_resolution[0] * 2, input_resolution[1] * 2), era=era) \
            if downsample else nn.Identity()
        self.blocks = nn.Sequential(*[
            SwinTransformerBlock(dim, input_resolution, num_heads, window_size, 0 if i % 2 == 0 else window_size // 2,
                                 mlp_ratio, qkv_bias, era=era) for i in range(depth)])

    def forward(self, x):
        return self.blocks(self.downsample(x))


class PatchEmbed(nn.Module):
    def __init__(self, img_size, patch_size, in_chans, embed_dim, nhwc):
        super().__init__()
        self.img_size = to_2tuple(img_size)
        self.patch_size = to_2tuple(patch_size)
        self.grid_size = (self.img_size[0] // self.patch_size[0], self.img_size[1] // self.patch_size[1])
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.nhwc = nhwc
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x):
        assert tuple(x.shape[2:]) == self.img_size, \
            "input size %s doesn't match model %s" % (tuple(x.shape[2:]), self.img_size)
        x = self.proj(x)
        x = x.permute(0, 2, 3, 1) if self.nhwc else x.flatten(2).transpose(1, 2)
        return self.norm(x)


class ClassifierHead(nn.Module):
    def __init__(self, in_features, num_classes):
        super().__init__()
        self.fc = nn.Linear(in_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x):
        return self.fc(x.mean(dim=(1, 2)))


class SwinTransformer(nn.Module):
    def __init__(self, img_size=224, patch_size=4, in_chans=3, num_classes=1000, embed_dim=96, depths=(2, 2, 6, 2),
                 num_heads=(3, 6, 12, 24), window_size=7, mlp_ratio=4.0, qkv_bias=True, ape=False, era="ms"):
        super().__init__()
        assert era in ERAS, era
        self.era = era
        self.num_layers = len(depths)
        self.num_features = int(embed_dim * 2 ** (self.num_layers - 1))
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, nhwc=era != "ms")
        grid = self.patch_embed.grid_size
        if ape:
            if era != "ms":
                raise ValueError("ape exists in Microsoft's code and timm <= 0.8 only")
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches, embed_dim))
            nn.init.trunc_normal_(self.absolute_pos_embed, std=0.02)
        else:
            self.absolute_pos_embed = None
        self.pos_drop = nn.Dropout(0.0)
        self.resolutions = []
        res = grid
        layers = []
        # one window for every stage, or one per stage (timm's swin_s3_*: window_size=(7, 7, 14, 7))
        windows = list(window_size) if isinstance(window_size, (list, tuple)) else [window_size] * self.num_layers
        assert len(windows) == self.num_layers
        for i in range(self.num_layers):
            dim = int(embed_dim * 2 ** i)
            window_size = windows[i]
            if era == "ms":
                self.resolutions.append(res)
                layers.append(BasicLayer(dim, res, depths[i], num_heads[i], window_size, mlp_ratio, qkv_bias,
                                         downsample=i < self.num_layers - 1))
                res = (res[0] // 2, res[1] // 2)
            else:
                if i > 0:   # timm: patch_grid // 2**i (floor, as timm computes it)
                    res = (res[0] // 2, res[1] // 2)
                self.resolutions.append(res)
                layers.append(SwinTransformerStage(dim, res, depths[i], num_heads[i], window_size, mlp_ratio, qkv_bias,
                                                   downsample=i > 0, era=era))
        self.layers = nn.Sequential(*layers) if era != "ms" else nn.ModuleList(layers)
        self.norm = nn.LayerNorm(self.num_features)
        if era == "ms":
            self.avgpool = nn.AdaptiveAvgPool1d(1)
            self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        else:
            self.head = ClassifierHead(self.num_features, num_classes)

    def forward_features(self, x, trace=None):
        """trace: a dict to fill with image-0 activations under the lmv trace names, (H, W, C)."""
        def rec(name, t, hw=None):
            if trace is not None:
                t = t[0].detach()
                trace[name] = (t.view(hw[0], hw[1], -1) if hw is not None else t).numpy().copy()
        x = self.patch_embed(x)
        if self.absolute_pos_embed is not None:
            x = x + self.absolute_pos_embed
        x = self.pos_drop(x)
        rec("patch_embed", x, self.patch_embed.grid_size if self.era == "ms" else None)
        for i, layer in enumerate(self.layers):
            if self.era == "ms":
                for j, blk in enumerate(layer.blocks):
                    x = blk(x)
                    rec("layers.%d.blocks.%d" % (i, j), x, self.resolutions[i])
                if layer.downsample is not None:
                    x = layer.downsample(x)
                    rec("layers.%d.downsample" % i, x, self.resolutions[i + 1])
            else:
                if i > 0:
                    x = layer.downsample(x)
                    rec("layers.%d.downsample" % (i - 1), x)   # lmv names it after the stage it ends
                for j, blk in enumerate(layer.blocks):
                    x = blk(x)
                    rec("layers.%d.blocks.%d" % (i, j), x)
        x = self.norm(x)
        rec("norm", x, self.resolutions[-1] if self.era == "ms" else None)
        return x

    def forward_head(self, x):
        if self.era == "ms":
            x = torch.flatten(self.avgpool(x.transpose(1, 2)), 1)
            return self.head(x)
        return self.head(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def build(era="ms", img_size=224, patch_size=4, embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24),
          window_size=7, num_classes=1000, ape=False, mlp_ratio=4.0, in_chans=3, qkv_bias=True):
    return SwinTransformer(img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes,
                           embed_dim=embed_dim, depths=depths, num_heads=num_heads, window_size=window_size,
                           mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, ape=ape, era=era).eval()


def randomize_(model, seed=0, table_std=0.5):
    """Seeded non-trivial values for every parameter of any Swin-like module: weights ~ N(0, 1/fan_in),
    norm weights 1 + N(0, 0.2), biases N(0, 0.1), relative position tables N(0, table_std) (so a
    wrong index or a missing mask shows), position embeddings N(0, 0.5)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "relative_position_bias_table" in name:
                p.copy_(table_std * torch.randn(p.shape, generator=g))
            elif "pos_embed" in name or "position_embeddings" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            elif p.dim() == 1 and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif p.dim() == 1:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))
    return model


def to_ms_keys(sd):
    """timm >= 0.9 names -> Microsoft names (layers.{s+1}.downsample -> layers.s.downsample, head.fc -> head)."""
    out = OrderedDict()
    for k, v in sd.items():
        parts = k.split(".")
        if k.startswith("layers.") and parts[2] == "downsample":
            k = "layers.%d.downsample.%s" % (int(parts[1]) - 1, ".".join(parts[3:]))
        elif k.startswith("head.fc."):
            k = "head." + k[len("head.fc."):]
        out[k] = v
    return out


def from_ms_keys(sd):
    out = OrderedDict()
    for k, v in sd.items():
        parts = k.split(".")
        if k.startswith("layers.") and parts[2] == "downsample":
            k = "layers.%d.downsample.%s" % (int(parts[1]) + 1, ".".join(parts[3:]))
        elif k.startswith("head."):
            k = "head.fc." + k[len("head."):]
        out[k] = v
    return out


def load_weights(model, sd):
    """Load a state dict of any era into `model` (any era): names are remapped, the size-dependent
    buffers (relative_position_index, attn_mask) are left as the model computed them."""
    sd = OrderedDict((k, v) for k, v in sd.items() if not k.endswith(("relative_position_index", "attn_mask")))
    if any(k.startswith("head.fc.") for k in sd):
        sd = to_ms_keys(sd)
    if model.era != "ms":
        sd = from_ms_keys(sd)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.endswith(("relative_position_index", "attn_mask"))]
    assert not missing and not unexpected, (missing, unexpected)
    return model


def collect_activations(model, x):
    """(logits, {lmv trace name: image-0 activation (H, W, C)})."""
    trace = OrderedDict()
    with torch.no_grad():
        logits = model.forward_head(model.forward_features(x, trace))
    return logits.numpy(), trace


def torchvision_to_ms(sd):
    """torchvision swin_t/s/b state dict -> Microsoft names (features.{2s+1}.M -> layers.s.blocks.M,
    features.{2s+2} -> layers.s.downsample, mlp.0/mlp.3 -> mlp.fc1/fc2); the flattened index is dropped."""
    out = OrderedDict()
    for k, v in sd.items():
        p = k.split(".")
        if k.endswith("relative_position_index"):
            continue
        if p[0] == "features":
            f = int(p[1])
            if f == 0:
                k = {"0": "patch_embed.proj.", "2": "patch_embed.norm."}[p[2]] + p[3]
            elif f % 2 == 1:
                rest = ".".join(p[3:]).replace("mlp.0.", "mlp.fc1.").replace("mlp.3.", "mlp.fc2.")
                k = "layers.%d.blocks.%s.%s" % ((f - 1) // 2, p[2], rest)
            else:
                k = "layers.%d.downsample.%s" % (f // 2 - 1, ".".join(p[2:]))
        out[k] = v
    return out
