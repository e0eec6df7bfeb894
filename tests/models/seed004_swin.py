"""Seed 004 (shared/seeds/004_*.txt): the CIFAR-10 Swin Transformer of the "Pytorch CIFAR10图像分类
Swin Transformer篇" article, `swin_cifar(patch_size=2, n_classes=10, mlp_ratio=1)`: hidden 192,
depths (2, 6, 2), heads (3, 6, 12), window 7, trained on 32x32 images and saved whole with
`torch.save(net, path)`.

BasicLayer, SwinTransformerBlock, SwinTransformer and the factories are copied from the seed text
(comments shortened).  Its conventions: pad the normalised map to a window multiple, THEN roll;
the shift is never dropped, not even when the map is smaller than the window (at 32x32 the
stages are 16, 8 and 4 tokens wide, all padded, all shifted in odd blocks); the mask is built in
BasicLayer.create_mask on the padded size.

WindowAttention, PatchEmbed, PatchMerging, MLP, window_partition and window_reverse were in the
article's first part, which the seed does not include.  They are written here the obvious way,
consistent with the printed module tree (WindowAttention: qkv, attn_dropout, proj, proj_dropout,
softmax; MLP: fc1, act, drop1, fc2, drop2; PatchMerging: reduction before norm) and with
Microsoft's Swin: a relative_position_bias_table parameter and a persistent
relative_position_index buffer in every WindowAttention; PatchMerging zero-pads odd sides and
concatenates x0 (0,0), x1 (1,0), x2 (0,1), x3 (1,1); PatchEmbed is Conv2d(k = stride = patch)
then LayerNorm and returns (x, h, w) (no padding: sizes not divisible by the patch are floored,
as the convolution does).
"""

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["SwinTransformer", "swin_t", "swin_s", "swin_b", "swin_l", "swin_cifar", "collect_activations"]


# ------------------------------------------------------------------ part one (not in the seed)

def window_partition(x, window_size):
    """(b, h, w, c) -> (n_windows*b, m, m, c)"""
    b, h, w, c = x.shape
    x = x.view(b, h // window_size, window_size, w // window_size, window_size, c)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, window_size, window_size, c)


def window_reverse(windows, window_size, h, w):
    """(n_windows*b, m, m, c) -> (b, h, w, c)"""
    b = int(windows.shape[0] / (h * w / window_size / window_size))
    x = windows.view(b, h // window_size, w // window_size, window_size, window_size, -1)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(b, h, w, -1)


class PatchEmbed(nn.Module):
    def __init__(self, patch_size=4, in_c=3, embed_dim=96, norm_layer=None):
        super(PatchEmbed, self).__init__()
        self.patch_size = (patch_size, patch_size)
        self.in_c = in_c
        self.embed_dim = embed_dim
        self.proj = nn.Conv2d(in_c, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = norm_layer(embed_dim) if norm_layer else nn.Identity()

    def forward(self, x):
        x = self.proj(x)
        _, _, h, w = x.shape
        # (b,c,h,w) -> (b,h*w,c)
        x = x.flatten(2).transpose(1, 2)
        x = self.norm(x)
        return x, h, w


class PatchMerging(nn.Module):
    def __init__(self, dim, norm_layer=nn.LayerNorm):
        super(PatchMerging, self).__init__()
        self.dim = dim
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = norm_layer(4 * dim)

    def forward(self, x, h, w):
        b, _, c = x.shape
        x = x.view(b, h, w, c)
        if (h % 2 == 1) or (w % 2 == 1):
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x0 = x[:, 0::2, 0::2, :]
        x1 = x[:, 1::2, 0::2, :]
        x2 = x[:, 0::2, 1::2, :]
        x3 = x[:, 1::2, 1::2, :]
        x = torch.cat([x0, x1, x2, x3], -1)
        x = x.view(b, -1, 4 * c)
        x = self.norm(x)
        x = self.reduction(x)
        return x


class MLP(nn.Module):
    def __init__(self, in_features, hid_features=None, out_features=None, dropout=0.):
        super(MLP, self).__init__()
        out_features = out_features or in_features
        hid_features = int(hid_features or in_features)
        self.fc1 = nn.Linear(in_features, hid_features)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hid_features, out_features)
        self.drop2 = nn.Dropout(dropout)

    def forward(self, x):
        x = self.drop1(self.act(self.fc1(x)))
        x = self.drop2(self.fc2(x))
        return x


class WindowAttention(nn.Module):
    def __init__(self, dim, window_size, n_heads, qkv_bias=True, attn_dropout=0., proj_dropout=0.):
        super(WindowAttention, self).__init__()
        self.dim = dim
        self.window_size = (window_size, window_size)
        self.n_heads = n_heads
        self.scale = (dim // n_heads) ** -0.5
        # ((2m-1)*(2m-1), n_heads): one bias per relative position and head
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window_size - 1) * (2 * window_size - 1), n_heads))
        coords = torch.stack(torch.meshgrid([torch.arange(window_size), torch.arange(window_size)], indexing="ij"))
        coords_flatten = torch.flatten(coords, 1)  # (2, m*m)
        relative_coords = coords_flatten[:, :, None] - coords_flatten[:, None, :]  # (2, m*m, m*m)
        relative_coords = relative_coords.permute(1, 2, 0).contiguous()
        relative_coords[:, :, 0] += window_size - 1
        relative_coords[:, :, 1] += window_size - 1
        relative_coords[:, :, 0] *= 2 * window_size - 1
        self.register_buffer("relative_position_index", relative_coords.sum(-1))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_dropout = nn.Dropout(attn_dropout)
        self.proj = nn.Linear(dim, dim)
        self.proj_dropout = nn.Dropout(proj_dropout)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=.02)
        self.softmax = nn.Softmax(dim=-1)

    def forward(self, x, mask=None):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.n_heads, c // self.n_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q = q * self.scale
        attn = q @ k.transpose(-2, -1)
        m2 = self.window_size[0] * self.window_size[1]
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(m2, m2, -1)
        attn = attn + bias.permute(2, 0, 1).contiguous().unsqueeze(0)
        if mask is not None:
            n_windows = mask.shape[0]
            attn = attn.view(b // n_windows, n_windows, self.n_heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.n_heads, n, n)
        attn = self.softmax(attn)
        attn = self.attn_dropout(attn)
        x = (attn @ v).transpose(1, 2).reshape(b, n, c)
        x = self.proj(x)
        x = self.proj_dropout(x)
        return x


# ------------------------------------------------------------------ part two (the seed text)

class BasicLayer(nn.Module):
    def __init__(self,
                 dim,
                 depth,
                 n_heads,
                 window_size,
                 mlp_ratio=4,
                 qkv_bias=True,
                 proj_dropout=0.,
                 attn_dropout=0.,
                 dropout=0.,
                 norm_layer=nn.LayerNorm,
                 downsample=None):
        super(BasicLayer, self).__init__()
        self.dim = dim
        self.depth = depth
        self.window_size = window_size
        # shift right and down by window_size // 2
        self.shift_size = window_size // 2
        self.blocks = nn.ModuleList([
            SwinTransformerBlock(dim, n_heads, window_size,
                                 0 if (i % 2 == 0) else self.shift_size,
                                 mlp_ratio, qkv_bias, proj_dropout, attn_dropout,
                                 dropout[i] if isinstance(
                                     dropout, list) else dropout,
                                 norm_layer)
            for i in range(depth)])
        self.downsample = downsample(dim=dim, norm_layer=norm_layer) if downsample else None

    def forward(self, x, h, w):
        attn_mask = self.create_mask(x, h, w)
        for blk in self.blocks:
            blk.h, blk.w = h, w
            x = blk(x, attn_mask)
        if self.downsample is not None:
            x = self.downsample(x, h, w)
            # odd: pad then halve; even: halve
            h, w = (h+1) // 2, (w+1) // 2
        return x, h, w

    def create_mask(self, x, h, w):
        # hp, wp: multiples of window_size
        hp = int(np.ceil(h/self.window_size)) * self.window_size
        wp = int(np.ceil(w/self.window_size)) * self.window_size
        # (1,hp,wp,1)
        img_mask = torch.zeros((1, hp, wp, 1), device=x.device)
        # the 9 regions of the feature map
        slices = (slice(0, -self.window_size),
                  slice(-self.window_size, -self.shift_size),
                  slice(-self.shift_size, None))
        cnt = 0
        for h in slices:
            for w in slices:
                img_mask[:, h, w, :] = cnt
                cnt += 1
        # (1,hp,wp,1) -> (n_windows,m,m,1)
        mask_windows = window_partition(img_mask, self.window_size)
        # (n_windows,m,m,1) -> (n_windows,m*m)
        mask_windows = mask_windows.view(-1,
                                         self.window_size * self.window_size)
        # (n_windows,1,m*m) - (n_windows,m*m,1) -> (n_windows,m*m,m*m)
        attn_mask = mask_windows.unsqueeze(1) - mask_windows.unsqueeze(2)
        # non-zero (different regions) -> -100
        attn_mask = (attn_mask
                     .masked_fill(attn_mask != 0, float(-100.))
                     .masked_fill(attn_mask == 0, float(0.)))
        return attn_mask


class SwinTransformerBlock(nn.Module):
    def __init__(self,
                 dim,
                 n_heads,
                 window_size=7,
                 shift_size=0,
                 mlp_ratio=4.,
                 qkv_bias=True,
                 proj_dropout=0.,
                 attn_dropout=0.,
                 dropout=0.,
                 norm_layer=nn.LayerNorm):
        super(SwinTransformerBlock, self).__init__()
        self.dim = dim
        self.n_heads = n_heads
        self.window_size = window_size
        self.shift_size = shift_size
        self.mlp_ratio = mlp_ratio
        self.norm1 = norm_layer(dim)
        self.attn = WindowAttention(dim, window_size, n_heads,
                                    qkv_bias, attn_dropout, proj_dropout)
        self.dropout = nn.Dropout(dropout) if dropout > 0. else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = MLP(in_features=dim,
                       hid_features=dim*mlp_ratio,
                       dropout=proj_dropout)

    def forward(self, x, attn_mask):
        h, w = self.h, self.w
        b, _, c = x.shape
        shortcut = x
        x = self.norm1(x)
        x = x.view(b, h, w, c)
        pad_r = (self.window_size - w % self.window_size) % self.window_size
        pad_b = (self.window_size - h % self.window_size) % self.window_size
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        _, hp, wp, _ = x.shape
        if self.shift_size > 0:
            shifted_x = torch.roll(
                x, shifts=(-self.shift_size, -self.shift_size), dims=(1, 2))
        else:
            shifted_x = x
            attn_mask = None
        # (n_windows*b,m,m,c)
        x_windows = window_partition(shifted_x, self.window_size)
        # (n_windows*b,m*m,c)
        x_windows = x_windows.view(-1, self.window_size*self.window_size, c)
        attn_windows = self.attn(x_windows, attn_mask)
        attn_windows = attn_windows.view(-1,
                                         self.window_size, self.window_size, c)
        shifted_x = window_reverse(attn_windows, self.window_size, hp, wp)
        if self.shift_size > 0:
            x = torch.roll(shifted_x, shifts=(
                self.shift_size, self.shift_size), dims=(1, 2))
        else:
            x = shifted_x
        if pad_r > 0 or pad_b > 0:
            x = x[:, :h, :w, :].contiguous()
        x = x.view(b, h*w, c)
        x = shortcut + self.dropout(x)
        x = x + self.dropout(self.mlp(self.norm2(x)))
        return x


class SwinTransformer(nn.Module):
    def __init__(self,
                 patch_size=4,
                 in_c=3,
                 n_classes=1000,
                 embed_dim=96,
                 depths=(2, 2, 6, 2),
                 n_heads=(3, 6, 12, 24),
                 window_size=7,
                 mlp_ratio=4.,
                 qkv_bias=True,
                 proj_dropout=0.,
                 attn_dropout=0.,
                 dropout=0.,
                 norm_layer=nn.LayerNorm,
                 patch_norm=True):
        super(SwinTransformer, self).__init__()
        self.n_classes = n_classes
        self.n_layers = len(depths)
        self.embed_dim = embed_dim
        self.patch_norm = patch_norm
        # channels after the last stage: embed_dim * 2**(n_layers-1)
        self.n_features = int(embed_dim * 2**(self.n_layers-1))
        self.mlp_ratio = mlp_ratio
        self.patch_embed = PatchEmbed(patch_size, in_c, embed_dim,
                                      norm_layer if self.patch_norm else None)
        self.pos_drop = nn.Dropout(proj_dropout)
        # stochastic depth increasing with depth
        dpr = [x.item() for x in torch.linspace(0, dropout, sum(depths))]
        self.layers = nn.ModuleList()
        for i in range(self.n_layers):
            layers = BasicLayer(int(embed_dim*2**i), depths[i], n_heads[i],
                                window_size, mlp_ratio, qkv_bias,
                                proj_dropout, attn_dropout,
                                dpr[sum(depths[:i]):sum(depths[:i+1])],
                                norm_layer, PatchMerging if i < self.n_layers-1 else None)
            self.layers.append(layers)
        self.norm = norm_layer(self.n_features)
        self.avgpool = nn.AdaptiveAvgPool1d(1)
        self.head = nn.Linear(
            self.n_features, n_classes) if n_classes > 0 else nn.Identity()
        self.apply(self._init_weights)

    def forward(self, x):
        x, h, w = self.patch_embed(x)
        x = self.pos_drop(x)
        for layer in self.layers:
            x, h, w = layer(x, h, w)
        # (b,l,c)
        x = self.norm(x)
        # (b,l,c) -> (b,c,l) -> (b,c,1)
        x = self.avgpool(x.transpose(1, 2))
        # (b,c,1) -> (b,c)
        x = torch.flatten(x, 1)
        # (b,c) -> (b,n_classes)
        x = self.head(x)
        return x

    def _init_weights(self, m):
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.LayerNorm):
            nn.init.constant_(m.bias, 0)
            nn.init.constant_(m.weight, 1.)


def swin_t(hidden_dim=96, layers=(2, 2, 6, 2), heads=(3, 6, 12, 24), **kwargs):
    return SwinTransformer(embed_dim=hidden_dim, depths=layers, n_heads=heads, **kwargs)


def swin_s(hidden_dim=96, layers=(2, 2, 18, 2), heads=(3, 6, 12, 24), **kwargs):
    return SwinTransformer(embed_dim=hidden_dim, depths=layers, n_heads=heads, **kwargs)


def swin_b(hidden_dim=128, layers=(2, 2, 18, 2), heads=(4, 8, 16, 32), **kwargs):
    return SwinTransformer(embed_dim=hidden_dim, depths=layers, n_heads=heads, **kwargs)


def swin_l(hidden_dim=192, layers=(2, 2, 18, 2), heads=(6, 12, 24, 48), **kwargs):
    return SwinTransformer(embed_dim=hidden_dim, depths=layers, n_heads=heads, **kwargs)


def swin_cifar(hidden_dim=192, layers=(2, 6, 2), heads=(3, 6, 12), **kwargs):
    return SwinTransformer(embed_dim=hidden_dim, depths=layers, n_heads=heads, **kwargs)


# ------------------------------------------------------------------ test helper

def collect_activations(model, x):
    """(logits, {lmv trace name: image-0 activation (H, W, C)}) via forward hooks, the seed code
    left untouched."""
    acts, hooks, last_hw = {}, [], [None]

    def save(name, tensor_and_hw):
        def hook(mod, inp, out):
            t, (h, w) = tensor_and_hw(mod, inp, out)
            acts[name] = t[0].detach().reshape(h, w, -1).numpy().copy()
        return hook

    def remember_hw(mod, inp, out):   # BasicLayer returns (x, h, w)
        last_hw[0] = (out[1], out[2])
    hooks.append(model.patch_embed.register_forward_hook(save("patch_embed", lambda m, i, o: (o[0], (o[1], o[2])))))
    for s, layer in enumerate(model.layers):
        for j, blk in enumerate(layer.blocks):   # BasicLayer sets blk.h, blk.w before calling it
            hooks.append(blk.register_forward_hook(
                save("layers.%d.blocks.%d" % (s, j), lambda m, i, o: (o, (m.h, m.w)))))
        if layer.downsample is not None:         # called as downsample(x, h, w)
            hooks.append(layer.downsample.register_forward_hook(
                save("layers.%d.downsample" % s, lambda m, i, o: (o, ((i[1] + 1) // 2, (i[2] + 1) // 2)))))
        hooks.append(layer.register_forward_hook(remember_hw))
    hooks.append(model.norm.register_forward_hook(save("norm", lambda m, i, o: (o, last_hw[0]))))
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        for h in hooks:
            h.remove()
    return logits.numpy(), acts
