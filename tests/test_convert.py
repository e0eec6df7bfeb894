#!/usr/bin/env python3
"""Tests of tools/convert.py and tools/lmvfile.py.

Run with Debian's python3 (it has torch and torchvision):   /usr/bin/python3 tests/test_convert.py

Prints `PASS name` or `FAIL name: reason` per check and ends with `N passed, N failed`; the exit
status is non-zero when a check failed.  Everything is built here from small random models:
files are saved by torch itself (zip, legacy, whole-model pickles), safetensors files by a writer
below that follows the format spec, and each converted .lmv is run through a float64 numpy forward
pass that follows the README's ViT graph, compared with the PyTorch module's output.
"""

import argparse
import array
import io
import json
import math
import os
import pickle
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import types
import zipfile
import zlib
from collections import OrderedDict

import numpy as np
import torch
import torch.nn as nn
import torchvision

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
sys.path.insert(0, os.path.join(ROOT, "tests", "models"))
import convert  # noqa: E402
import lmvfile  # noqa: E402
import seed002_vit  # noqa: E402
import seed003_vit  # noqa: E402
import te_vit  # noqa: E402
from convert_checks import expect, expect_error  # noqa: E402

CONVERT = os.path.join(ROOT, "tools", "convert.py")
MAPPINGS = os.path.join(ROOT, "tools", "mappings")
TMP = tempfile.mkdtemp(prefix="lmv-convert-test-")
torch.manual_seed(1234)
torch.set_num_threads(1)

# ----------------------------------------------------------------------------------------- harness

CHECKS = []


def check(name):
    def deco(fn):
        CHECKS.append((name, fn))
        return fn
    return deco


def run_checks():
    passed = failed = 0
    for name, fn in CHECKS:
        try:
            note = fn()
            print("PASS %s%s" % (name, " (%s)" % note if note else ""), flush=True)
            passed += 1
        except Exception as e:  # a failing check never stops the others
            msg = str(e).replace("\n", " ")[:400] or type(e).__name__
            print("FAIL %s: %s: %s" % (name, type(e).__name__, msg), flush=True)
            failed += 1
    print("%d passed, %d failed" % (passed, failed), flush=True)
    return failed


def path(name):
    return os.path.join(TMP, name)


def cli(*args, env=None, python=None):
    e = dict(os.environ)
    e.update(env or {})
    p = subprocess.run([python or sys.executable, CONVERT] + [str(a) for a in args], capture_output=True,
                       text=True, env=e)
    return p.returncode, p.stdout, p.stderr


def conv(src, *args, out=None):
    """Convert in-process; returns the parsed .lmv."""
    out = out or src + ".lmv"
    opts = convert.build_parser().parse_args([src, out] + [str(a) for a in args])
    convert.convert(src, out, opts, quiet=True)
    return lmvfile.read(out)


def scalar(f, key):
    return f.scalar(key)


# ------------------------------------------------------------------------------ comparing tensors

TORCH_DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16",
                     torch.float64: "float64", torch.int64: "int64", torch.int32: "int32", torch.int16: "int16",
                     torch.int8: "int8", torch.uint8: "uint8", torch.bool: "bool"}


def torch_bytes(t):
    t = t.detach().contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return t.numpy().tobytes()


def same_tensor(ours, ref, name):
    expect(isinstance(ours, convert.Tensor), "%s: not a tensor (%r)" % (name, ours))
    expect(ours.dtype.name == TORCH_DTYPE_NAMES[ref.dtype], "%s: dtype %s vs %s" % (name, ours.dtype.name, ref.dtype))
    expect(ours.shape == tuple(ref.shape), "%s: shape %s vs %s" % (name, ours.shape, tuple(ref.shape)))
    expect(ours.raw(name) == torch_bytes(ref), "%s: values differ" % name)


def compare_tree(ours, ref, where="root"):
    """Walk torch.load's result and ours side by side; tensors compared element for element."""
    if isinstance(ref, torch.Tensor):
        same_tensor(ours, ref, where)
        return 1
    if isinstance(ref, dict):
        expect(isinstance(ours, dict), "%s: dict expected, got %r" % (where, type(ours)))
        expect(list(ours.keys()) == list(ref.keys()), "%s: keys differ" % where)
        return sum(compare_tree(ours[k], ref[k], "%s.%s" % (where, k)) for k in ref)
    if isinstance(ref, (list, tuple)):
        expect(len(ours) == len(ref), "%s: length differs" % where)
        return sum(compare_tree(a, b, "%s[%d]" % (where, i)) for i, (a, b) in enumerate(zip(ours, ref)))
    if isinstance(ref, (int, float, str, bool, type(None))):
        expect(ours == ref, "%s: %r vs %r" % (where, ours, ref))
    return 0


# ------------------------------------------------------------------------- a safetensors writer

ST_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
             torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
             torch.bool: "BOOL"}


def save_safetensors(tensors, fname, metadata=None):
    """Per the safetensors spec: u64 LE header length, JSON header (padded with spaces to 8),
    then the packed row-major little-endian data; offsets relative to the data buffer."""
    header = OrderedDict()
    if metadata is not None:
        header["__metadata__"] = metadata
    blobs, off = [], 0
    for name, t in tensors.items():
        b = torch_bytes(t)
        header[name] = {"dtype": ST_DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode("utf-8")
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(fname, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
    return fname


# -------------------------------------------------------- numpy reference forward of a .lmv ViT

_erf = np.vectorize(math.erf)


def _ln(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _cubic(x, a=-0.75):
    x = abs(x)
    if x <= 1:
        return ((a + 2) * x - (a + 3)) * x * x + 1
    if x < 2:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


def _resize_axis(n_in, n_out, mode):
    """Interpolation matrix (n_out x n_in) of torch's bicubic (a=-0.75, border clamp)."""
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        if mode == "bicubic_ac":
            src = i * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
        else:
            src = (i + 0.5) * n_in / n_out - 0.5
        f = math.floor(src)
        t = src - f
        for k in range(-1, 3):
            j = min(max(f + k, 0), n_in - 1)
            m[i, j] += _cubic(k - t)
    return m


def resample_grid(grid, gh, gw, mode):
    ph, pw, d = grid.shape
    if mode not in ("bicubic", "bicubic_ac"):
        raise NotImplementedError(mode)
    mh, mw = _resize_axis(ph, gh, mode), _resize_axis(pw, gw, mode)
    return np.einsum("ip,jq,pqd->ijd", mh, mw, grid)


def lmv_forward(f, x):
    """Logits of a .lmv ViT for one image x (C, H, W), in float64, following README's graph."""
    m = lambda k: f.scalar(k)  # noqa: E731
    T = lambda n: np.array(f.tensor(n), dtype=np.float64).reshape(f.shape(n))  # noqa: E731
    has = lambda n: n in f.tensors  # noqa: E731
    D, heads, eps = m("vit.embed_dim"), m("vit.num_heads"), m("vit.norm_eps")
    ph, pw = f.meta["vit.patch_size"]
    pgh, pgw = f.meta["vit.pos_grid"]
    C, H, W = x.shape
    gh, gw = H // ph, W // pw
    act = {"gelu": lambda v: 0.5 * v * (1 + _erf(v / math.sqrt(2))),
           "gelu_tanh": lambda v: 0.5 * v * (1 + np.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v ** 3))),
           "relu": lambda v: np.maximum(v, 0)}[m("vit.act")]
    patches = x[:, :gh * ph, :gw * pw].reshape(C, gh, ph, gw, pw).transpose(1, 3, 0, 2, 4).reshape(gh * gw, -1)
    tok = patches @ T("patch_embed.proj.weight").reshape(D, -1).T
    if has("patch_embed.proj.bias"):
        tok = tok + T("patch_embed.proj.bias")
    if has("patch_embed.norm.weight"):
        tok = _ln(tok, T("patch_embed.norm.weight"), T("patch_embed.norm.bias"), eps)
    prefix_tokens = []
    if m("vit.class_token"):
        prefix_tokens.append(T("cls_token")[0])
    if m("vit.dist_token"):
        prefix_tokens.append(T("dist_token")[0])
    if m("vit.reg_tokens"):
        prefix_tokens.append(T("reg_token")[0])
    prefix = sum(len(p) for p in prefix_tokens)
    pos = T("pos_embed")[0]
    last, noemb = m("vit.class_last"), m("vit.no_embed_class")
    n = pgh * pgw
    if last:
        grid_rows, pre_rows = pos[:n], pos[n:]
    elif noemb:
        grid_rows, pre_rows = pos, pos[:0]
    else:
        grid_rows, pre_rows = pos[prefix:], pos[:prefix]
    if (gh, gw) != (pgh, pgw):
        grid_rows = resample_grid(grid_rows.reshape(pgh, pgw, D), gh, gw, m("vit.pos_interp")).reshape(gh * gw, D)
    if last:
        xs = np.concatenate([tok] + prefix_tokens) + np.concatenate([grid_rows, pre_rows])
    elif noemb:
        xs = np.concatenate(prefix_tokens + [tok + grid_rows])
    else:
        xs = np.concatenate(prefix_tokens + [tok]) + np.concatenate([pre_rows, grid_rows])
    if has("norm_pre.weight"):
        xs = _ln(xs, T("norm_pre.weight"), T("norm_pre.bias"), eps)
    scale = m("vit.attn_scale") or (D // heads) ** -0.5
    for i in range(m("vit.depth")):
        b = "blocks.%d." % i

        def attn(v):
            qkv = v @ T(b + "attn.qkv.weight").T + (T(b + "attn.qkv.bias") if has(b + "attn.qkv.bias") else 0)
            q, k, vv = np.split(qkv, 3, axis=-1)
            N, hd = v.shape[0], D // heads
            q, k, vv = (a.reshape(N, heads, hd).transpose(1, 0, 2) for a in (q, k, vv))
            s = q @ k.transpose(0, 2, 1) * scale
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            o = (s @ vv).transpose(1, 0, 2).reshape(N, D)
            return o @ T(b + "attn.proj.weight").T + T(b + "attn.proj.bias")

        def mlp(v):
            h = act(v @ T(b + "mlp.fc1.weight").T + T(b + "mlp.fc1.bias"))
            return h @ T(b + "mlp.fc2.weight").T + T(b + "mlp.fc2.bias")

        ls1 = T(b + "ls1.gamma") if has(b + "ls1.gamma") else 1.0
        ls2 = T(b + "ls2.gamma") if has(b + "ls2.gamma") else 1.0
        n1 = lambda v: _ln(v, T(b + "norm1.weight"), T(b + "norm1.bias"), eps)  # noqa: E731
        n2 = lambda v: _ln(v, T(b + "norm2.weight"), T(b + "norm2.bias"), eps)  # noqa: E731
        if m("vit.norm_first"):
            xs = xs + ls1 * attn(n1(xs))
            xs = xs + ls2 * mlp(n2(xs))
        else:
            xs = n1(xs + attn(xs))
            xs = n2(xs + mlp(xs))
    if has("norm.weight"):
        xs = _ln(xs, T("norm.weight"), T("norm.bias"), eps)
    if m("vit.pool") == "avg":
        feats = [xs[:-1].mean(0) if last else xs[prefix:].mean(0)]
    else:
        feats = [xs[-1] if last else xs[0]]
        if m("vit.dist_token"):
            feats.append(xs[1])
    if has("fc_norm.weight"):
        feats = [_ln(v, T("fc_norm.weight"), T("fc_norm.bias"), eps) for v in feats]
    if m("vit.pre_logits"):
        feats = [np.tanh(v @ T("pre_logits.fc.weight").T + T("pre_logits.fc.bias")) for v in feats]
    logits = feats[0] @ T("head.weight").T + T("head.bias")
    if m("vit.dist_token") and has("head_dist.weight"):
        logits = (logits + feats[1] @ T("head_dist.weight").T + T("head_dist.bias")) / 2
    return logits


def expect_forward(lmv, module, x, tol=2e-4):
    """The numpy forward of the .lmv equals the torch module's output on x (N, C, H, W)."""
    module.eval()
    with torch.no_grad():
        ref = module(x).double().numpy()
    ours = np.stack([lmv_forward(lmv, xi) for xi in x.double().numpy()])
    err = np.abs(ours - ref).max()
    expect(err <= tol * max(1.0, np.abs(ref).max()), "max |lmv - torch| = %.3g (scale %.3g)" % (err, np.abs(ref).max()))
    return "max diff %.1e" % err


def randomize(module, std=0.2):
    """Random weights everywhere (zero-initialised heads and tokens would hide mistakes)."""
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, std)
            if p.dim() == 1 and p.shape[0] > 1:
                p.add_(1.0 if p.abs().mean() < 10 else 0)  # LN weights around 1
    return module


# --------------------------------------------------------------- a timm-layout ViT in PyTorch

class TimmBlock(nn.Module):
    def __init__(self, d, heads, hidden, qkv_bias=True, ls=False):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(d, eps=1e-6)
        self.attn = nn.Module()
        self.attn.qkv = nn.Linear(d, 3 * d, bias=qkv_bias)
        self.attn.proj = nn.Linear(d, d)
        self.ls1 = nn.Module()
        self.ls2 = nn.Module()
        if ls:
            self.ls1.gamma = nn.Parameter(torch.ones(d))
            self.ls2.gamma = nn.Parameter(torch.ones(d))
        self.norm2 = nn.LayerNorm(d, eps=1e-6)
        self.mlp = nn.Module()
        self.mlp.fc1 = nn.Linear(d, hidden)
        self.mlp.fc2 = nn.Linear(hidden, d)
        self.ls = ls

    def _attn(self, x):
        B, N, D = x.shape
        qkv = self.attn.qkv(x).reshape(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        a = (q * (D // self.heads) ** -0.5) @ k.transpose(-2, -1)
        x = (a.softmax(-1) @ v).transpose(1, 2).reshape(B, N, D)
        return self.attn.proj(x)

    def forward(self, x):
        a = self._attn(self.norm1(x))
        x = x + (self.ls1.gamma * a if self.ls else a)
        m = self.mlp.fc2(nn.functional.gelu(self.mlp.fc1(self.norm2(x))))
        return x + (self.ls2.gamma * m if self.ls else m)


class TimmViT(nn.Module):
    """timm VisionTransformer semantics (formats.md 1.2/1.3) with timm's parameter names."""

    def __init__(self, img=32, patch=8, d=128, depth=2, heads=2, classes=10, class_token=True, dist=False, reg=0,
                 no_embed_class=False, pool="token", fc_norm=None, ls=False, pre_norm=False, patch_norm=False,
                 qkv_bias=True, pre_logits=0, final_norm=True, in_chans=3):
        super().__init__()
        g = img // patch
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(in_chans, d, patch, patch, bias=not pre_norm)
        if patch_norm:
            self.patch_embed.norm = nn.LayerNorm(d, eps=1e-6)
        self.prefix = int(class_token) + int(dist) + reg
        if class_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        if dist:
            self.dist_token = nn.Parameter(torch.zeros(1, 1, d))
        if reg:
            self.reg_token = nn.Parameter(torch.zeros(1, reg, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, g * g + (0 if no_embed_class else self.prefix), d))
        if pre_norm:
            self.norm_pre = nn.LayerNorm(d, eps=1e-6)
        self.blocks = nn.Sequential(*[TimmBlock(d, heads, 4 * d, qkv_bias, ls) for _ in range(depth)])
        use_fc_norm = (pool == "avg") if fc_norm is None else fc_norm
        if final_norm and not use_fc_norm:
            self.norm = nn.LayerNorm(d, eps=1e-6)
        if use_fc_norm:
            self.fc_norm = nn.LayerNorm(d, eps=1e-6)
        if pre_logits:
            self.pre_logits = nn.Sequential(OrderedDict(fc=nn.Linear(d, pre_logits), act=nn.Tanh()))
        self.head = nn.Linear(pre_logits or d, classes)
        if dist:
            self.head_dist = nn.Linear(d, classes)
        self.opts = dict(class_token=class_token, dist=dist, reg=reg, no_embed_class=no_embed_class, pool=pool,
                         pre_norm=pre_norm, patch_norm=patch_norm)

    def forward(self, x):
        o = self.opts
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        if o["patch_norm"]:
            x = self.patch_embed.norm(x)
        B = x.shape[0]
        pre = []
        if o["class_token"]:
            pre.append(self.cls_token.expand(B, -1, -1))
        if o["dist"]:
            pre.append(self.dist_token.expand(B, -1, -1))
        if o["reg"]:
            pre.append(self.reg_token.expand(B, -1, -1))
        if o["no_embed_class"]:
            x = torch.cat(pre + [x + self.pos_embed], 1)
        else:
            x = torch.cat(pre + [x], 1) + self.pos_embed
        if o["pre_norm"]:
            x = self.norm_pre(x)
        x = self.blocks(x)
        if hasattr(self, "norm"):
            x = self.norm(x)
        if o["pool"] == "avg":
            f = x[:, self.prefix:].mean(1)
        else:
            f = x[:, 0]
        if hasattr(self, "fc_norm"):
            f = self.fc_norm(f)
        if hasattr(self, "pre_logits"):
            f = self.pre_logits(f)
        if o["dist"]:
            fd = x[:, 1]
            if hasattr(self, "fc_norm"):
                fd = self.fc_norm(fd)
            return (self.head(f) + self.head_dist(fd)) / 2
        return self.head(f)


def timm_model(**kw):
    return randomize(TimmViT(**kw))


def tv_model(**kw):
    args = dict(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=128, mlp_dim=256, num_classes=10)
    args.update(kw)
    return randomize(torchvision.models.vision_transformer.VisionTransformer(**args))


def hf_state_dict(tv, prefix="vit.", deit=False):
    """The Hugging Face ViT layout of a torchvision ViT's weights (q, k, v split)."""
    sd = tv.state_dict()
    out = OrderedDict()
    out[prefix + "embeddings.cls_token"] = sd["class_token"]
    out[prefix + "embeddings.position_embeddings"] = sd["encoder.pos_embedding"]
    out[prefix + "embeddings.patch_embeddings.projection.weight"] = sd["conv_proj.weight"]
    out[prefix + "embeddings.patch_embeddings.projection.bias"] = sd["conv_proj.bias"]
    i = 0
    while "encoder.layers.encoder_layer_%d.ln_1.weight" % i in sd:
        s, d = "encoder.layers.encoder_layer_%d." % i, prefix + "encoder.layer.%d." % i
        for a, b in (("ln_1", "layernorm_before"), ("ln_2", "layernorm_after"), ("self_attention.out_proj",
                     "attention.output.dense"), ("mlp.0", "intermediate.dense"), ("mlp.3", "output.dense")):
            out[d + b + ".weight"] = sd[s + a + ".weight"]
            out[d + b + ".bias"] = sd[s + a + ".bias"]
        w, bb = sd[s + "self_attention.in_proj_weight"], sd[s + "self_attention.in_proj_bias"]
        for j, nm in enumerate(("query", "key", "value")):
            D = w.shape[1]
            out[d + "attention.attention.%s.weight" % nm] = w[j * D:(j + 1) * D].clone()
            out[d + "attention.attention.%s.bias" % nm] = bb[j * D:(j + 1) * D].clone()
        i += 1
    out[prefix + "layernorm.weight"] = sd["encoder.ln.weight"]
    out[prefix + "layernorm.bias"] = sd["encoder.ln.bias"]
    out["classifier.weight"] = sd["heads.head.weight"]
    out["classifier.bias"] = sd["heads.head.bias"]
    return out


def timm_to_hf_deit(sd):
    """HF DeiTForImageClassificationWithTeacher names of a distilled timm-layout state dict."""
    out = OrderedDict()
    p = "deit."
    D = sd["cls_token"].shape[-1]
    out[p + "embeddings.cls_token"] = sd["cls_token"]
    out[p + "embeddings.distillation_token"] = sd["dist_token"]
    out[p + "embeddings.position_embeddings"] = sd["pos_embed"]
    out[p + "embeddings.patch_embeddings.projection.weight"] = sd["patch_embed.proj.weight"]
    out[p + "embeddings.patch_embeddings.projection.bias"] = sd["patch_embed.proj.bias"]
    i = 0
    while "blocks.%d.norm1.weight" % i in sd:
        s, d = "blocks.%d." % i, p + "encoder.layer.%d." % i
        for a, b in (("norm1", "layernorm_before"), ("norm2", "layernorm_after"), ("attn.proj", "attention.output.dense"),
                     ("mlp.fc1", "intermediate.dense"), ("mlp.fc2", "output.dense")):
            out[d + b + ".weight"] = sd[s + a + ".weight"]
            out[d + b + ".bias"] = sd[s + a + ".bias"]
        for j, nm in enumerate(("query", "key", "value")):
            out[d + "attention.attention.%s.weight" % nm] = sd[s + "attn.qkv.weight"][j * D:(j + 1) * D].clone()
            out[d + "attention.attention.%s.bias" % nm] = sd[s + "attn.qkv.bias"][j * D:(j + 1) * D].clone()
        i += 1
    out[p + "layernorm.weight"] = sd["norm.weight"]
    out[p + "layernorm.bias"] = sd["norm.bias"]
    out["cls_classifier.weight"] = sd["head.weight"]
    out["cls_classifier.bias"] = sd["head.bias"]
    out["distillation_classifier.weight"] = sd["head_dist.weight"]
    out["distillation_classifier.bias"] = sd["head_dist.bias"]
    return out


def img(n=2, c=3, h=32, w=32):
    return torch.randn(n, c, h, w)


# ================================================================================ lmvfile checks

@check("lmvfile: round trip of every meta type, shapes 0-6 dims, alignment and both CRCs")
def _():
    meta = [("arch", "vit"), ("name", "näme"), ("num_classes", 3), ("img_size", [224, 192]),
            ("pre.crop_pct", 0.875), ("pre.mean", [0.5, 0.25, 0.125]), ("labels", ["a", "bb", "ccc", ""]),
            ("x.empty_ints", []), ("k" * 255, "long key")]
    rng = np.random.RandomState(0)
    shapes = [(), (1,), (3, 5), (2, 3, 4), (1, 1, 1, 7), (2, 1, 2, 1, 3), (1, 2, 1, 2, 1, 2), (0, 4)]
    tensors = [("t%d" % i + "n" * i, s, np.asarray(rng.randn(*s), dtype="<f4").tobytes()) for i, s in enumerate(shapes)]
    fn = path("rt.lmv")
    size = lmvfile.write(fn, meta, tensors)
    raw = open(fn, "rb").read()
    expect(size == len(raw) and len(raw) % 64 == 0, "size")
    f = lmvfile.read(fn)
    expect(f.meta["arch"] == "vit" and f.meta["name"] == "näme" and f.meta["num_classes"] == [3], "meta values")
    expect(f.meta["img_size"] == [224, 192] and f.meta["labels"] == ["a", "bb", "ccc", ""], "meta lists")
    expect(abs(f.meta["pre.crop_pct"][0] - 0.875) < 1e-9 and f.meta["x.empty_ints"] == [], "meta floats")
    for (name, shape, data) in tensors:
        expect(f.shape(name) == shape and f.tensor_bytes(name).tobytes() == data, "tensor %s" % name)
    # independent checks of the header against README's table
    (magic, ver, tag, fsize, moff, msize, toff, tsize, nmeta, nt, doff, dsize, c1, c2) = \
        struct.unpack_from("<8sIIQQQQQIIQQII", raw)
    expect(magic == b"LEMEVIT\0" and ver == 1 and tag == 0x01020304 and fsize == len(raw), "header fields")
    expect(moff == 128 and toff == (moff + msize + 7) // 8 * 8 and doff % 64 == 0 and doff + dsize == fsize, "layout")
    expect(nmeta == len(meta) and nt == len(tensors) and raw[88:128] == b"\0" * 40, "counts / reserved")
    crc = zlib.crc32(raw[moff:moff + msize], zlib.crc32(raw[:80]))
    crc = zlib.crc32(raw[toff:toff + tsize], crc) & 0xFFFFFFFF
    expect(crc == c1 and zlib.crc32(raw[doff:doff + dsize]) & 0xFFFFFFFF == c2, "CRCs")
    # first meta entry: u16 key length, u8 type 3, u8 0, u32 count incl. NUL, key padded to 4, "vit\0"
    expect(raw[128:136] == struct.pack("<HBBI", 4, 3, 0, 4) and raw[136:144] == b"arch" + b"vit\0", "meta entry bytes")
    for t in f.tensors.values():
        expect(t.offset % 64 == 0 and (doff + t.offset) % 64 == 0, "tensor %s not 64-aligned" % t.name)


@check("lmvfile: damaged files are refused (CRCs, magic, big-endian tag, truncation)")
def _():
    fn = path("rt.lmv")
    raw = bytearray(open(fn, "rb").read())
    h = struct.unpack_from("<Q", raw, 64)[0]

    def bad(mutate, word):
        b = bytearray(raw)
        mutate(b)
        try:
            lmvfile.read(bytes(b))
        except lmvfile.LmvError as e:
            expect(word in str(e), "%r lacks %r" % (str(e), word))
            return
        raise AssertionError("accepted a damaged file (%s)" % word)

    bad(lambda b: b.__setitem__(h + 5, b[h + 5] ^ 1), "data CRC")
    bad(lambda b: b.__setitem__(140, b[140] ^ 1), "CRC")
    bad(lambda b: b.__setitem__(0, ord("X")), "magic")
    bad(lambda b: b.__setitem__(slice(12, 16), struct.pack(">I", 0x01020304)), "big-endian")
    bad(lambda b: b.__delitem__(slice(len(b) - 64, len(b))), "truncated")


@check("lmvfile: invalid keys, names and duplicates are refused by the writer")
def _():
    for meta, tensors in (([("Bad", 1)], []), ([("a", 1), ("a", 2)], []), ([], [("x", (2,), b"\0" * 4)]),
                          ([], [("x", (1,), b"\0" * 4), ("x", (1,), b"\0" * 4)]),
                          ([], [("x", (1,) * 7, b"\0" * 4)])):
        try:
            lmvfile.write(path("bad.lmv"), meta, tensors)
        except lmvfile.LmvError:
            continue
        raise AssertionError("accepted %r %r" % (meta, [t[:2] for t in tensors]))


# ====================================================================== reduced-precision tensors

def ref_f16(w):
    """IEEE binary16 of float32 values, round to nearest even: numpy's cast (torch's .half() agrees)."""
    return np.asarray(w, dtype=np.float32).astype("<f2")


def ref_int8(w, shape):
    """Per-row symmetric int8, written from the spec: scale = float32(max|w[r]| / 127 in float64),
    q = round-half-even(w / scale) clipped to [-127, 127], zero rows scale 0 and q 0.
    Returns (scales float32 [R], q int8 [R, C], dequantised float32 values [R, C])."""
    R, C = shape[0], int(np.prod(shape[1:]))
    w = np.asarray(w, dtype=np.float64).reshape(R, C)
    m = np.abs(w).max(axis=1) if C else np.zeros(R)
    s = (m / 127.0).astype(np.float32)
    q = np.zeros(w.shape, dtype=np.int8)
    for r in range(R):
        if s[r] != 0:
            q[r] = np.clip(np.rint(w[r] / np.float64(s[r])), -127, 127).astype(np.int8)
    deq = s[:, None] * q.astype(np.float32)     # a float32 product
    return s, q, deq


def table_entries(raw):
    """(name, dtype, shape, offset, size) of every table entry, parsed here from README's layout."""
    toff, tsize, nt = struct.unpack_from("<Q", raw, 40)[0], struct.unpack_from("<Q", raw, 48)[0], \
        struct.unpack_from("<I", raw, 60)[0]
    out, pos = [], toff
    for _ in range(nt):
        nlen, dt, nd, off, size = struct.unpack_from("<HBBQQ", raw, pos)
        shape = struct.unpack_from("<%dI" % nd, raw, pos + 20)
        name = raw[pos + 20 + 4 * nd:pos + 20 + 4 * nd + nlen].decode()
        out.append((name, dt, shape, off, size, pos))
        pos += (20 + 4 * nd + nlen + 7) // 8 * 8
    expect(pos == toff + tsize, "table walk")
    return out


def fix_crcs(b):
    """Recompute both CRCs of a (mutated) file image in place."""
    moff, msize, toff, tsize = struct.unpack_from("<QQQQ", b, 24)
    doff, dsize = struct.unpack_from("<QQ", b, 64)
    c = zlib.crc32(bytes(b[moff:moff + msize]), zlib.crc32(bytes(b[:80])))
    c = zlib.crc32(bytes(b[toff:toff + tsize]), c) & 0xFFFFFFFF
    struct.pack_into("<II", b, 80, c, zlib.crc32(bytes(b[doff:doff + dsize])) & 0xFFFFFFFF)
    return b


def quant_tensors():
    """Float32 tensors with every awkward case for f16 and int8."""
    rng = np.random.RandomState(7)
    t = []
    # int8: ties (scale exactly 1), a zero row, a one-value row, tiny and huge rows, 4-D, empty
    ties = np.array([[127, 2.5, -3.5, 0.5, 1.5, -0.5, 126.5, -126.5],
                     [0, 0, 0, 0, 0, 0, 0, 0],
                     [0, 0, 0, -3e-3, 0, 0, 0, 0],
                     [1e-38, -2e-39, 3e-45, 0, 0, 0, 0, 0],
                     [3e38, -1e38, 1, 0, 0, 0, 0, 2e37]], dtype=np.float32)
    t.append(("int8.ties.weight", ties.shape, ties, "int8"))
    t.append(("int8.rand.weight", (300, 301), (rng.randn(300, 301) * rng.rand(300, 1) * 3).astype(np.float32), "int8"))
    t.append(("int8.conv.weight", (6, 4, 3, 3), rng.randn(6, 4, 3, 3).astype(np.float32), "int8"))
    t.append(("int8.cols0", (3, 0), np.zeros((3, 0), np.float32), "int8"))
    t.append(("int8.rows0", (0, 5), np.zeros((0, 5), np.float32), "int8"))
    t.append(("int8.one", (1, 1), np.array([[-0.75]], np.float32), "int8"))
    # f16: ties, subnormals, the range edges (65519.996 rounds down to 65504), signed zeros
    edge = np.array([65504, -65504, 65519.996, 1 + 2 ** -11, 1 + 3 * 2 ** -11, 2 ** -24, 2 ** -25, 3 * 2 ** -26,
                     2 ** -26, 6.1e-5, -0.0, 0.0, 1e-8, 0.1, 1 / 3.0], dtype=np.float32)
    t.append(("f16.edge", edge.shape, edge, "f16"))
    t.append(("f16.rand", (200, 401), (rng.randn(200, 401) * 10).astype(np.float32), "f16"))
    t.append(("f16.scalar", (), np.array(1.5, np.float32), "f16"))
    t.append(("f32.kept", (5, 3), rng.randn(5, 3).astype(np.float32), "f32"))
    # f32p: whole panels, a partial last panel, one row, a conv kernel, empty
    t.append(("f32p.whole.weight", (32, 5), rng.randn(32, 5).astype(np.float32), "f32p"))
    t.append(("f32p.partial.weight", (37, 9), rng.randn(37, 9).astype(np.float32), "f32p"))
    t.append(("f32p.row.weight", (1, 4), rng.randn(1, 4).astype(np.float32), "f32p"))
    t.append(("f32p.conv.weight", (18, 3, 2, 2), rng.randn(18, 3, 2, 2).astype(np.float32), "f32p"))
    t.append(("f32p.rows0", (0, 5), np.zeros((0, 5), np.float32), "f32p"))
    t.append(("f32.plain", (7,), rng.randn(7).astype(np.float32)))       # 3-tuple: float32
    return t


@check("lmvfile: f16, int8 and f32p tensors: table sizes and offsets per spec, bytes and dequantised values exact")
def _():
    tensors = quant_tensors()
    fn = path("quant.lmv")
    size = lmvfile.write(fn, [("arch", "vit")], [(x[0], x[1], x[2].tobytes()) + tuple(x[3:]) for x in tensors])
    raw = open(fn, "rb").read()
    expect(size == len(raw) and len(raw) % 64 == 0, "file size")
    doff = struct.unpack_from("<Q", raw, 64)[0]
    codes = {"f32": 0, "f16": 1, "int8": 2, "f32p": 3}
    f = lmvfile.read(fn)
    worst = 0.0
    prev_end = 0
    for (name, dt, shape, off, nbytes, _), item in zip(table_entries(raw), tensors):
        want_dt = item[3] if len(item) > 3 else "f32"
        w = np.asarray(item[2], dtype=np.float32)
        numel = int(np.prod(shape)) if shape else 1
        expect(name == item[0] and shape == tuple(item[1]) and dt == codes[want_dt], "%s: table entry" % name)
        expect(off % 64 == 0 and off >= prev_end, "%s: offset %d" % (name, off))
        prev_end = off + nbytes
        data = raw[doff + off:doff + off + nbytes]
        if want_dt == "f16":
            expect(nbytes == 2 * numel, "%s: f16 size" % name)
            h = ref_f16(w)
            expect(data == h.tobytes(), "%s: f16 bytes differ from numpy's cast" % name)
            expect(data == torch.from_numpy(w.copy()).half().numpy().tobytes(), "%s: f16 differs from torch" % name)
            deq = h.astype(np.float32)
        elif want_dt == "int8":
            R = shape[0]
            expect(nbytes == 4 * R + numel, "%s: int8 size %d, want %d" % (name, nbytes, 4 * R + numel))
            s, q, deq = ref_int8(w, shape)
            expect(data == s.astype("<f4").tobytes() + q.tobytes(), "%s: int8 bytes differ" % name)
            if numel:
                w2 = w.astype(np.float64).reshape(R, -1)
                err = np.abs(deq.astype(np.float64) - w2)
                half = s.astype(np.float64)[:, None] / 2
                # <= scale/2, up to the float32 rounding of the product scale*q
                expect(np.all(err <= half + np.abs(w2) * 2.0 ** -24 + 1e-45), "%s: error > scale/2" % name)
                nz = half > 0
                worst = max(worst, float((err / np.where(nz, half, 1)).max()))
        elif want_dt == "f32p":
            # element (r, c) at float (r // 16 * C + c) * 16 + r % 16, zero rows up to a multiple of 16
            R = shape[0]
            C = numel // R if R else 0
            P = -(-R // 16) * 16
            ref = np.zeros(P * C, np.float32)
            w2 = w.reshape(R, C)
            for r in range(R):
                for c in range(C):
                    ref[(r // 16 * C + c) * 16 + r % 16] = w2[r, c]
            expect(nbytes == 4 * P * C and data == ref.astype("<f4").tobytes(), "%s: f32p bytes" % name)
            deq = w
        else:
            expect(nbytes == 4 * numel and data == w.astype("<f4").tobytes(), "%s: f32" % name)
            deq = w
        expect(f.dtype(name) == want_dt and f.tensors[name].numel == numel, "%s: TensorInfo" % name)
        got = np.frombuffer(f.tensor(name).tobytes(), dtype=np.float32)
        expect(got.tobytes() == np.asarray(deq, dtype=np.float32).tobytes(), "%s: tensor() values differ" % name)
    q = np.frombuffer(raw[doff + f.tensors["int8.ties.weight"].offset + 20:][:8], dtype=np.int8)
    expect(list(q) == [127, 2, -4, 0, 2, 0, 126, -126], "ties round half to even: %s" % list(q))
    edge = np.array(f.tensor("f16.edge"))
    expect(edge[2] == 65504 and edge[5] == 2 ** -24 and edge[6] == 0 and edge[7] == 2 ** -24 and edge[8] == 0,
           "f16 edge values %s" % edge[:9])
    return "worst int8 error %.3f x scale/2" % worst


@check("lmvfile: the quantizable() policy on ViT, Swin and LeMeViT names")
def _():
    yes = [("blocks.0.attn.qkv.weight", (576, 192)), ("blocks.11.mlp.fc1.weight", (768, 192)),
           ("blocks.0.attn.proj.weight", (192, 192)), ("patch_embed.proj.weight", (192, 3, 16, 16)),
           ("head.weight", (1000, 192)), ("head_dist.weight", (1000, 192)), ("pre_logits.fc.weight", (768, 768)),
           ("layers.0.blocks.1.attn.qkv.weight", (288, 96)), ("layers.2.downsample.reduction.weight", (768, 1536)),
           ("downsample_layers.0.3.weight", (64, 32, 3, 3)), ("stages.1.0.attn.proj_c.weight", (64, 64)),
           ("x.weight", (1, 1024)), ("x.weight", (4, 256, 1, 1))]
    no = [("meta_tokens", (16, 64)), ("pos_embed", (1, 197, 192)), ("cls_token", (1, 1, 192)),
          ("layers.0.blocks.0.attn.relative_position_bias_table", (169, 3)), ("absolute_pos_embed", (1, 3136, 96)),
          ("norm.weight", (192,)), ("blocks.0.norm1.weight", (192,)), ("norm.running_mean", (128,)),
          ("downsample_layers.0.1.weight", (32,)), ("layers.0.downsample.norm.weight", (384,)),
          ("blocks.0.attn.qkv.bias", (576,)), ("stages.0.0.pos_embed.weight", (64, 1, 3, 3)),
          ("big.depthwise.weight", (1024, 1, 7, 7)), ("downsample_layers.0.0.weight", (32, 3, 3, 3)),
          ("head.weight", (10, 64)), ("x.weight", (1023, 1)), ("x.weight", (8, 16, 16)), ("x.weight", (2048,)),
          ("weight", (64, 64)), ("blocks.0.attn.qkv.weights", (64, 64)), ("x.weight", (2, 2, 2, 2, 2, 64))]
    for n, s in yes:
        expect(lmvfile.quantizable(n, s), "%s %s should be quantised" % (n, s))
    for n, s in no:
        expect(not lmvfile.quantizable(n, s), "%s %s should stay float32" % (n, s))
    return "%d + %d names" % (len(yes), len(no))


LEMEVIT_EXAMPLE = os.path.join(ROOT, "examples", "lemevit_cifar10.lmv")
# the matrix weights of examples/lemevit_cifar10.lmv (its convs 0.0 with 864 elements and the
# depthwise pos_embed convs are not)
LEMEVIT_QUANT = re.compile(r"^(downsample_layers\.(0\.3|[234]\.0)|meta_token_downsample\.\d\.[03]|"
                           r"stages\.\d\.\d\.(attn\.(q|kv|qkv|qkv1|qkv2|proj|proj_x|proj_c)|mlp\.[03])|head)\.weight$")


@check("lmvfile: requantize examples/lemevit_cifar10.lmv to int8/f16/f32: exactly the expected tensors, meta kept")
def _():
    src = lmvfile.read(LEMEVIT_EXAMPLE)
    want = [n for n in src.tensors if LEMEVIT_QUANT.match(n)]
    expect(len(want) == 52, "%d expected matrix weights" % len(want))
    out8, out16, back = path("lemevit_int8.lmv"), path("lemevit_f16.lmv"), path("lemevit_back.lmv")
    lmvfile.requantize(LEMEVIT_EXAMPLE, out8, "int8")
    f8 = lmvfile.read(out8)
    got = [n for n, t in f8.tensors.items() if t.dtype == lmvfile.DTYPE_INT8]
    expect(got == want, "int8 set differs: extra %s, missing %s" % (sorted(set(got) - set(want)),
                                                                    sorted(set(want) - set(got))))
    expect(list(f8.tensors) == list(src.tensors) and all(f8.shape(n) == src.shape(n) for n in src.tensors), "order")
    # the other float32 tensors: plain ones copied byte for byte, small matrices (packable, too small to
    # quantise) as f32p panels of the same values
    expect(all((f8.dtype(n) == "f32p" and f8.tensor(n) == src.tensor(n)) if lmvfile.packable(n, src.shape(n))
               else (f8.dtype(n) == "f32" and f8.tensor_bytes(n) == src.tensor_bytes(n))
               for n in src.tensors if n not in want), "float32 tensors not kept exactly (f32 bytes, f32p values)")
    expect(sum(f8.dtype(n) == "f32p" for n in src.tensors) == 1, "one small matrix weight in panels")
    expect(list(f8.meta)[:-1] == list(src.meta) and f8.meta["weights.dtype"] == "int8" and
           all(f8.meta[k] == src.meta[k] and f8.meta_types[k] == src.meta_types[k] for k in src.meta), "meta")
    for n in want:
        s, q, deq = ref_int8(np.array(src.tensor(n), dtype=np.float32), src.shape(n))
        expect(f8.tensor_bytes(n).tobytes() == s.astype("<f4").tobytes() + q.tobytes(), "%s bytes" % n)
    # f16 of the int8 file: quantised from the dequantised values; weights.dtype replaced in place
    lmvfile.requantize(out8, out16, "f16")
    f16 = lmvfile.read(out16)
    expect(list(f16.meta) == list(f8.meta) and f16.meta["weights.dtype"] == "f16", "meta key replaced")
    expect([n for n, t in f16.tensors.items() if t.dtype == lmvfile.DTYPE_F16] == want, "f16 set")
    for n in want[:5] + want[-3:]:
        expect(f16.tensor_bytes(n).tobytes() == ref_f16(f8.tensor(n)).tobytes(), "%s f16 bytes" % n)
    # int8 -> f32: every tensor float32 with exactly the dequantised values
    lmvfile.requantize(out8, back, "f32")
    fb = lmvfile.read(back)
    expect(all(fb.dtype(n) == ("f32p" if lmvfile.packable(n, fb.shape(n)) else "f32") and fb.tensor(n) == f8.tensor(n)
               for n in src.tensors), "f32 values, matrix weights in panels")
    lmvfile.requantize(back, path("lemevit_plain.lmv"), "f32", pack=False)
    fp = lmvfile.read(path("lemevit_plain.lmv"))
    expect(all(fp.dtype(n) == "f32" and fp.tensor(n) == f8.tensor(n) for n in src.tensors), "pack=False: plain f32")
    expect(fb.meta["weights.dtype"] == "f32", "weights.dtype f32")
    # int8 of an int8 file works (values requantised from the dequantised ones); --keep
    lmvfile.requantize(out8, path("lemevit_int8b.lmv"), "int8", keep=[r"^head\.", r"mlp\.3\.weight$"])
    fk = lmvfile.read(path("lemevit_int8b.lmv"))
    kept = [n for n in want if fk.dtype(n) == "f32p"]
    expect(kept == [n for n in want if n == "head.weight" or n.endswith("mlp.3.weight")] and len(kept) == 8, kept)
    drift = max(float(np.max(np.abs(np.array(fk.tensor(n)) - np.array(f8.tensor(n))))) for n in want if n not in kept)
    sizes = [os.path.getsize(p) for p in (LEMEVIT_EXAMPLE, out8, out16)]
    expect(sizes[1] < 0.3 * sizes[0] and sizes[2] < 0.55 * sizes[0], "sizes %s" % sizes)
    return "52 int8, sizes f32/int8/f16 %s, int8 twice drift %.1e" % ("/".join(str(s) for s in sizes), drift)


@check("lmvfile: f16 overflow/NaN refused naming the tensor; read() refuses bad dtypes and sizes")
def _():
    def refuse(tensors, *words):
        try:
            lmvfile.write(path("bad_q.lmv"), [], tensors)
        except lmvfile.LmvError as e:
            for w in words:
                expect(w in str(e), "%r lacks %r" % (str(e), w))
            expect(not os.path.exists(path("bad_q.lmv")), "a refused file was left behind")
            return str(e)
        raise AssertionError("accepted %s" % [t[:2] for t in tensors])

    w = np.ones((4, 300), np.float32)
    w[2, 17] = 65520.0        # the first float32 that rounds past 65504
    msg = refuse([("ok", (2,), np.ones(2, np.float32), "f16"), ("blocks.3.mlp.fc1.weight", w.shape, w, "f16")],
                 "blocks.3.mlp.fc1.weight", "float16", "int8", "617")
    w[2, 17] = np.nan
    refuse([("blocks.0.attn.qkv.weight", w.shape, w, "f16")], "blocks.0.attn.qkv.weight", "NaN")
    refuse([("blocks.0.attn.qkv.weight", w.shape, w, "int8")], "blocks.0.attn.qkv.weight", "NaN")
    w[2, 17] = -np.inf
    refuse([("t.weight", w.shape, w, "f16")], "t.weight", "inf")
    refuse([("bias", (5,), np.ones(5, np.float32), "int8")], "bias", "2 dimensions")
    refuse([("bias", (5,), np.ones(5, np.float32), "f32p")], "bias", "f32p", "2 dimensions")
    refuse([("s", (), np.ones((), np.float32), "int8")], "s", "int8")
    refuse([("x", (2, 2), np.ones((2, 2), np.float32), "bf16")], "bf16")
    refuse([("x", (2, 2), np.ones(3, np.float32), "f16")], "x", "bytes")
    # the CLI says the same in one line
    big = path("f16_overflow.lmv")
    lmvfile.write(big, [("arch", "vit")], [("head.weight", (4, 300), np.full((4, 300), 7e4, np.float32))])
    p = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "lmvfile.py"), "--dtype", "f16", big,
                        path("f16_out.lmv")], capture_output=True, text=True)
    expect(p.returncode == 1 and "head.weight" in p.stderr and p.stderr.count("\n") == 1, p.stderr)
    expect(not os.path.exists(path("f16_out.lmv")), "output written")

    # read(): unknown dtype, int8 with one dimension, wrong data sizes
    fn = path("q_small.lmv")
    lmvfile.write(fn, [], [("a", (8,), np.ones(8, np.float32)), ("b", (4, 4), np.ones((4, 4), np.float32), "f16"),
                           ("c", (4, 8), np.ones((4, 8), np.float32), "int8")])
    raw = bytearray(open(fn, "rb").read())
    lmvfile.read(bytes(raw))
    ents = {e[0]: e for e in table_entries(raw)}

    def bad(mutate, *words):
        b = bytearray(raw)
        mutate(b)
        try:
            lmvfile.read(bytes(fix_crcs(b)))
        except lmvfile.LmvError as e:
            for w in words:
                expect(w in str(e), "%r lacks %r" % (str(e), w))
            return
        raise AssertionError("accepted a bad table (%s)" % (words,))

    dt_at = lambda n: ents[n][5] + 2  # noqa: E731
    size_at = lambda n: ents[n][5] + 12  # noqa: E731
    bad(lambda b: b.__setitem__(dt_at("b"), 4), "unknown dtype 4")
    bad(lambda b: b.__setitem__(dt_at("a"), 3), "tensor a", "f32p")                     # 1-D f32p
    bad(lambda b: b.__setitem__(dt_at("c"), 3), "tensor c", "f32p")                     # int8 size read as f32p
    bad(lambda b: b.__setitem__(dt_at("c"), 255), "unknown dtype 255")
    bad(lambda b: b.__setitem__(dt_at("a"), 2), "tensor a", "int8")                     # 1-D int8
    bad(lambda b: b.__setitem__(dt_at("b"), 0), "tensor b", "size 32")                  # f16 size read as f32
    bad(lambda b: struct.pack_into("<Q", b, size_at("c"), 32), "tensor c", "size 32")   # scales forgotten
    bad(lambda b: struct.pack_into("<Q", b, size_at("c"), 64), "tensor c", "size 64")   # 4 bytes per element
    bad(lambda b: struct.pack_into("<Q", b, size_at("b"), 64), "tensor b", "size 64")
    return msg[:90] + "..."


@check("lmvfile: the pure-Python path writes byte-identical f16/int8 files and reads identical values")
def _():
    expect(lmvfile._np is not None, "numpy not used by lmvfile under this interpreter")
    tensors = [x if len(x) > 3 else x + ("f32",) for x in quant_tensors()]
    # the same tensors given as bytes, array('f') and numpy arrays; int8 of a big 4-D conv
    rng = np.random.RandomState(3)
    conv4 = (rng.randn(96, 64, 3, 3) * 0.05).astype(np.float32)
    tensors.append(("conv.weight", conv4.shape, conv4, "int8"))
    tensors.append(("conv16.weight", conv4.shape, conv4.tobytes(), "f16"))
    tensors.append(("arr.weight", (4, 9), array.array("f", rng.randn(36).astype(np.float32).tolist()), "int8"))
    files, values = [], []
    saved = lmvfile._np
    try:
        for use_np in (saved, None):
            lmvfile._np = use_np
            fn = path("fallback_%s.lmv" % ("np" if use_np is not None else "py"))
            lmvfile.write(fn, [("arch", "vit")], tensors)
            f = lmvfile.read(fn)
            files.append(open(fn, "rb").read())
            values.append([f.tensor(t[0]).tobytes() for t in tensors])
            lmvfile.requantize(LEMEVIT_EXAMPLE, fn + ".int8", "int8")
            lmvfile.requantize(fn + ".int8", fn + ".f16", "f16")
            files.append(open(fn + ".int8", "rb").read() + open(fn + ".f16", "rb").read())
    finally:
        lmvfile._np = saved
    expect(files[0] == files[2], "numpy and pure-Python files differ")
    expect(files[1] == files[3], "numpy and pure-Python requantized files differ")
    expect(values[0] == values[1], "numpy and pure-Python dequantised values differ")
    # and the command line under other interpreters: no numpy (LMV_NO_NUMPY, python3 on PATH), Python 3.8
    runs = [(sys.executable, {}), (sys.executable, {"LMV_NO_NUMPY": "1"})]
    other = shutil.which("python3")
    if other and os.path.realpath(other) != os.path.realpath(sys.executable):
        runs.append((other, {}))
    py38 = os.environ.get("LMV_OLD_PYTHON", "")   # an older interpreter (3.8) to run the converter under too
    if py38 and os.path.exists(py38):
        runs.append((py38, {}))
    outs = []
    for i, (py, env) in enumerate(runs):
        e = dict(os.environ)
        e.update(env)
        out = path("cli_%d.lmv" % i)
        p = subprocess.run([py, os.path.join(ROOT, "tools", "lmvfile.py"), "--dtype", "int8", "--keep", "^head\\.",
                            LEMEVIT_EXAMPLE, out], capture_output=True, text=True, env=e)
        expect(p.returncode == 0 and "int8" in p.stdout and "bytes" in p.stdout, "%s: %s" % (py, p.stderr))
        outs.append(open(out, "rb").read())
    expect(all(o == outs[0] for o in outs), "command-line outputs differ between interpreters")
    return "%d interpreters/paths on the command line" % len(runs)


@check("lmvfile.py command line: dtype column, parameter count, bytes per dtype, --help, usage errors")
def _():
    tool = os.path.join(ROOT, "tools", "lmvfile.py")
    runp = lambda *a: subprocess.run([sys.executable, tool] + list(a), capture_output=True, text=True)  # noqa: E731
    p = runp(path("lemevit_int8.lmv"))
    expect(p.returncode == 0, p.stderr)
    expect("1178410 parameters" in p.stdout, "parameter count")
    lines = {ln.split()[0]: ln.split() for ln in p.stdout.splitlines() if ln.startswith("  ") and "@" in ln}
    expect(lines["head.weight"][1] == "int8" and lines["meta_tokens"][1] == "f32", "dtype column")
    expect("weights.dtype" in p.stdout and "int8: 52 tensors" in p.stdout and "f32: 142 tensors" in p.stdout
           and "f32p: 1 tensors" in p.stdout,
           p.stdout[-300:])
    p = runp("--help")
    for w in ("--dtype", "--keep", "int8", "f16", "depthwise", "exit status"):
        expect(w in p.stdout, "help lacks %s" % w)
    for args in ([], ["a.lmv", "b.lmv"], ["--dtype", "int8", LEMEVIT_EXAMPLE], ["--dtype", "f8", "a", "b"],
                 ["--keep", "x", LEMEVIT_EXAMPLE], ["--no-pack", LEMEVIT_EXAMPLE], ["--dtype", "f32p", "a", "b"]):
        expect(runp(*args).returncode == 2, "usage error for %s" % args)
    p = runp("--dtype", "int8", "--keep", "(", LEMEVIT_EXAMPLE, path("x.lmv"))
    expect(p.returncode == 1 and "--keep" in p.stderr, p.stderr)
    p = runp(path("nonexistent.lmv"))
    expect(p.returncode == 1, "missing file")


# ============================================================================ reading checkpoints

def dtype_zoo():
    """A dict exercising every dtype, views, shared storages, 0-d and empty tensors, Parameters."""
    base = torch.randn(6, 5)
    z = OrderedDict()
    z["f32"] = torch.randn(3, 4)
    z["f16"] = torch.randn(7).half()
    z["bf16"] = torch.randn(2, 3).bfloat16()
    z["f64"] = torch.randn(3).double()
    z["i64"] = torch.arange(-5, 7).reshape(3, 4)
    z["i32"] = torch.arange(9, dtype=torch.int32)
    z["i16"] = torch.arange(-3, 3, dtype=torch.int16)
    z["i8"] = torch.tensor([-128, 0, 127], dtype=torch.int8)
    z["u8"] = torch.tensor([0, 200, 255], dtype=torch.uint8)
    z["bool"] = torch.tensor([True, False, True])
    z["zero_d"] = torch.tensor(3.5)
    z["zero_d_int"] = torch.tensor(7)
    z["empty"] = torch.zeros(0, 3)
    z["base"] = base
    z["view_t"] = base.t()                   # strides (1, 5), same storage
    z["view_slice"] = base[2:5, 1:4]         # offset 11, strides (5, 1)
    z["view_step"] = base[::2, ::3]          # strides (10, 3)
    z["expand"] = torch.randn(1, 4).expand(3, 4)  # stride 0
    z["param"] = nn.Parameter(torch.randn(2, 2))
    z["half_t"] = torch.randn(4, 3).half().t()
    z["bf16_view"] = torch.randn(5, 4).bfloat16()[1:, ::2]
    return z


def load_ours(fn):
    return convert.load_checkpoint(fn).obj


@check("zip file (top folder = file stem): every dtype, views, shared storages, 0-d, Parameters == torch.load")
def _():
    z = dtype_zoo()
    fn = path("zoo_file.pth")
    torch.save(z, fn)
    top = zipfile.ZipFile(fn).namelist()[0].split("/")[0]
    expect(top == "zoo_file", "torch wrote top folder %r" % top)
    n = compare_tree(load_ours(fn), torch.load(fn))
    return "%d tensors, top folder %r" % (n, top)


@check("zip file saved through a buffer (top folder 'archive') == torch.load")
def _():
    buf = io.BytesIO()
    torch.save(dtype_zoo(), buf)
    fn = path("zoo_buffer.pt")
    open(fn, "wb").write(buf.getvalue())
    return "%d tensors" % compare_tree(load_ours(fn), torch.load(fn))


@check("zip file with a renamed top folder (never assumes 'archive/')")
def _():
    src = path("zoo_file.pth")
    dst = path("zoo_renamed.pth")
    with zipfile.ZipFile(src) as zi, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zo:
        for info in zi.infolist():
            zo.writestr("weird_name-1/" + info.filename.split("/", 1)[1], zi.read(info.filename))
    return "%d tensors" % compare_tree(load_ours(dst), torch.load(src))


@check("legacy format (_use_new_zipfile_serialization=False) == torch.load")
def _():
    fn = path("zoo_legacy.pth")
    torch.save(dtype_zoo(), fn, _use_new_zipfile_serialization=False)
    expect(open(fn, "rb").read(2) == b"\x80\x02", "not a legacy file")
    return "%d tensors" % compare_tree(load_ours(fn), torch.load(fn))


@check("state_dict() with _metadata, nn.Parameter dicts and nested containers, zip and legacy")
def _():
    m = tv_model()
    obj = {"sd": m.state_dict(), "params": dict(m.named_parameters()), "list": [torch.ones(2), (torch.zeros(1), 3)],
           "epoch": 7, "lr": 0.125, "name": "x", "none": None}
    n = 0
    for legacy in (False, True):
        fn = path("nested_%d.pth" % legacy)
        torch.save(obj, fn, _use_new_zipfile_serialization=not legacy)
        n += compare_tree(load_ours(fn), torch.load(fn))
    return "%d tensors" % n


@check("safetensors (written per the spec) == the tensors, all dtypes incl. 0-d and empty")
def _():
    z = OrderedDict((k, v.detach().contiguous()) for k, v in dtype_zoo().items())
    fn = save_safetensors(z, path("zoo.safetensors"), {"format": "pt"})
    ours = load_ours(fn)
    for k, v in z.items():
        same_tensor(ours[k], v, k)
    return "%d tensors" % len(z)


@check("float32 conversion of f16/bf16/f64/int/bool tensors equals torch's .float() (numpy and pure Python)")
def _():
    fn = path("zoo_file.pth")
    z, ours = torch.load(fn), load_ours(fn)
    saved = convert.tensors._np
    try:
        for np_mod in (saved, None):
            convert.tensors._np = np_mod
            for k, v in z.items():
                ref = v.detach().float().contiguous().numpy().tobytes()
                expect(ours[k].f32(k) == ref, "%s (numpy=%s)" % (k, np_mod is not None))
    finally:
        convert.tensors._np = saved


# ==================================================================== wrappers and training files

def small_timm_sd():
    return timm_model(classes=10).state_dict()


@check("wrappers: {'model'}, {'state_dict'}, {'model_state_dict'}, 'module.'/'_orig_mod.'/shared prefixes")
def _():
    sd = small_timm_sd()
    ref = conv(save(sd, "plain.pth"))
    variants = {
        "model": {"model": sd},
        "state_dict": {"state_dict": sd, "epoch": 3},
        "model_state_dict": {"model_state_dict": sd, "optimizer_state_dict": {}},
        "module": OrderedDict(("module." + k, v) for k, v in sd.items()),
        "orig_mod": OrderedDict(("_orig_mod." + k, v) for k, v in sd.items()),
        "both": {"state_dict": OrderedDict(("module._orig_mod." + k, v) for k, v in sd.items())},
        "lightning": {"state_dict": OrderedDict(("model.backbone." + k, v) for k, v in sd.items()),
                      "hyper_parameters": {"lr": 0.1}, "pytorch-lightning_version": "2.0.0"},
    }
    for name, obj in variants.items():
        f = conv(save(obj, "wrap_%s.pth" % name))
        for t in ref.tensors:
            expect(f.tensor_bytes(t) == ref.tensor_bytes(t), "%s: %s differs" % (name, t))
    return "%d variants" % len(variants)


def save(obj, name, legacy=False):
    fn = path(name)
    torch.save(obj, fn, _use_new_zipfile_serialization=not legacy)
    return fn


def _fake_yacs():
    """A class that pickles as yacs.config.CfgNode (a dict subclass), without yacs installed."""
    mod = types.ModuleType("yacs.config")
    pkg = types.ModuleType("yacs")

    CfgNode = type("CfgNode", (dict,), {"__module__": "yacs.config", "__qualname__": "CfgNode"})
    mod.CfgNode = CfgNode
    pkg.config = mod
    sys.modules.setdefault("yacs", pkg)
    sys.modules.setdefault("yacs.config", mod)
    return sys.modules["yacs.config"].CfgNode


@check("timm training checkpoint: args Namespace, optimizer state, numpy scalars, yacs config, --ema")
def _():
    model = timm_model(classes=10)
    ema = timm_model(classes=10)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(img(1)).sum().backward()
    opt.step()
    CfgNode = _fake_yacs()
    cfg = CfgNode(MODEL=CfgNode(NAME="vit"), LR=0.1)
    ckpt = {"epoch": 12, "arch": "vit_small", "state_dict": model.state_dict(), "state_dict_ema": ema.state_dict(),
            "optimizer": opt.state_dict(), "metric": 81.25, "version": 2,
            "args": argparse.Namespace(model="vit_tiny_patch16_224", lr=np.float64(5e-4), mean=None, std=None,
                                       epochs=np.int64(300), input_size=(3, 224, 224)),
            "config": cfg, "amp_scaler": {"scale": 65536.0}, "device": torch.device("cpu"),
            "saved_at": __import__("datetime").datetime(2024, 5, 1, 12, 30), "out_dir": __import__("pathlib").Path("/x/y"),
            "meters": __import__("collections").defaultdict(list, {"loss": [0.5, 0.25]}),
            "ns": types.SimpleNamespace(a=1), "dtype": torch.float16}
    fn = save(ckpt, "train.pth.tar")
    loaded = convert.load_checkpoint(fn).obj
    expect(loaded["meters"] == {"loss": [0.5, 0.25]} and loaded["device"] == "device(cpu)", "defaultdict / device")
    expect(loaded["args"].attrs()["lr"] == 5e-4 and loaded["args"].attrs()["epochs"] == 300, "numpy scalars")
    expect(loaded["config"]._lmv_items["LR"] == 0.1, "yacs CfgNode items")
    f = conv(fn)
    expect(f.meta["name"] == "vit_tiny_patch16_224", "name from args: %r" % f.meta["name"])
    expect(f.tensor("head.weight").tobytes() == torch_bytes(model.head.weight), "model weights")
    fe = conv(fn, "--ema", out=path("train_ema.lmv"))
    expect(fe.tensor("head.weight").tobytes() == torch_bytes(ema.head.weight), "--ema did not pick the EMA copy")
    expect_forward(fe, ema, img(1))
    legacy = conv(save(ckpt, "train_legacy.pth", legacy=True), "--ema")
    expect(legacy.tensor("head.weight").tobytes() == torch_bytes(ema.head.weight), "legacy --ema")
    expect_error(lambda: conv(save({"model": model.state_dict()}, "noema.pth"), "--ema"), "ema")


@check("official DeiT file {'model', 'model_ema', 'args', 'optimizer'}: DeiT defaults, name from args")
def _():
    m = timm_model(dist=True, classes=10)
    ckpt = {"model": m.state_dict(), "model_ema": m.state_dict(), "epoch": 299, "lr_scheduler": {"last_epoch": 3},
            "scaler": {"scale": 1024.0},
            "args": argparse.Namespace(model="deit_tiny_distilled_patch16_224", input_size=224, lr=5e-4)}
    f = conv(save(ckpt, "deit_official.pth"))
    expect(f.meta["source"] == "deit" and f.meta["name"] == "deit_tiny_distilled_patch16_224", "source/name")
    expect(f.meta["pre.mean"] == [np.float32(v) for v in (0.485, 0.456, 0.406)], "ImageNet mean")
    expect(f.meta["vit.dist_token"] == [1] and "head_dist.weight" in f.tensors, "distillation")
    return expect_forward(f, m, img(2))


@check("whole pickled models (torch.save(model)): torchvision ViT and seed 002 ViT, zip and legacy")
def _():
    tv = tv_model()
    a = conv(save(tv.state_dict(), "tv_sd.pth"))
    b = conv(save(tv, "tv_whole.pth"))
    c = conv(save({"model": tv, "epoch": 1}, "tv_whole_wrapped.pth", legacy=True))
    for t in a.tensors:
        expect(a.tensor_bytes(t) == b.tensor_bytes(t) == c.tensor_bytes(t), t)
    s2 = randomize(seed002_vit.build())
    f = conv(save(s2, "s2_whole.pth"), "--mapping", os.path.join(MAPPINGS, "seed002_vit.json"), "--num-heads", 4)
    return expect_forward(f, s2, img(1))


@check("TorchScript archive (torch.jit.trace) of a ViT converts like its state dict")
def _():
    m = timm_model(classes=10).eval()
    ts = torch.jit.trace(m, img(1))
    fn = path("traced.pt")
    ts.save(fn)
    f = conv(fn)
    return expect_forward(f, m, img(1))


@check("f16 and bf16 checkpoints convert to the float32 values torch gives")
def _():
    m = timm_model(classes=10)
    for dt in (torch.float16, torch.bfloat16):
        sd = OrderedDict((k, v.to(dt)) for k, v in m.state_dict().items())
        f = conv(save(sd, "half_%s.pth" % str(dt)[6:]))
        for k, v in sd.items():
            expect(f.tensor(k).tobytes() == v.float().contiguous().numpy().tobytes(), "%s %s" % (dt, k))
        m2 = TimmViT(classes=10)
        m2.load_state_dict(OrderedDict((k, v.float()) for k, v in sd.items()))
        expect_forward(f, m2, img(1))


@check("non-contiguous weights (transposed storage) convert correctly")
def _():
    m = timm_model(classes=10)
    sd = m.state_dict()
    sd2 = OrderedDict()
    for k, v in sd.items():
        sd2[k] = v.t().contiguous().t() if v.dim() == 2 else v  # same values, column-major storage
    expect(not sd2["blocks.0.attn.qkv.weight"].is_contiguous(), "not a view")
    f = conv(save(sd2, "noncontig.pth"))
    return expect_forward(f, m, img(1))


# ================================================================================ unsafe pickles

SENTINEL = path("pwned")


class _Evil:
    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _zip_with_pickle(name, payload):
    fn = path(name)
    with zipfile.ZipFile(fn, "w", zipfile.ZIP_STORED) as z:
        z.writestr("evil/data.pkl", payload)
        z.writestr("evil/version", "3\n")
    return fn


@check("malicious pickles (os.system, posix.system, builtins.eval/exec/getattr, subprocess, unknown "
       "callables) are refused and never run")
def _():
    cmd = "touch " + SENTINEL
    payloads = {
        "os.system": pickle.dumps({"w": _Evil(os.system, cmd)}, protocol=2),
        "eval": pickle.dumps(_Evil(eval, "__import__('os').system(%r)" % cmd), protocol=2),
        "exec": pickle.dumps(_Evil(exec, "open(%r, 'w').close()" % SENTINEL), protocol=2),
        "subprocess": pickle.dumps(_Evil(subprocess.Popen, ["touch", SENTINEL]), protocol=2),
        "getattr": pickle.dumps(_Evil(getattr, 1, "real"), protocol=2),
        "proto0": b"cos\nsystem\n(S'" + cmd.encode() + b"'\ntR.",
        "unknown_fn": b"\x80\x02cshutil_like_module\nrun_things\nq\x00X\x01\x00\x00\x00xq\x01\x85q\x02Rq\x03.",
    }
    n = 0
    for name, data in payloads.items():
        files = [_zip_with_pickle("evil_%s.pth" % name, data)]
        raw = path("evil_%s.pkl" % name)
        open(raw, "wb").write(data)
        files.append(raw)
        for fn in files:
            expect_error(lambda: convert.load_checkpoint(fn), "refusing")
            code, out, err = cli(fn, path("evil.lmv"))
            expect(code == 1 and err.count("\n") == 1 and "refusing" in err and "Traceback" not in err,
                   "%s: exit %d, stderr %r" % (name, code, err))
            n += 1
    expect(not os.path.exists(SENTINEL), "the payload ran!")
    # control: plain pickle does run the same bytes, so the refusal above is what protected us
    pickle.loads(payloads["os.system"])
    expect(os.path.exists(SENTINEL), "control: the payload should run under plain pickle")
    os.unlink(SENTINEL)
    return "%d files refused" % n


@check("inert stubs: unknown classes load without running code; refused on use")
def _():
    class Config:  # pickled as test_convert.Config (or __main__.Config): becomes an inert stub
        def __init__(self):
            self.depth = 12

        def __setstate__(self, s):
            open(SENTINEL, "w").close()
    Config.__module__ = "my_project.configs"
    Config.__qualname__ = "Config"
    mod = types.ModuleType("my_project.configs")
    mod.Config = Config
    sys.modules["my_project"] = types.ModuleType("my_project")
    sys.modules["my_project.configs"] = mod
    sd = small_timm_sd()
    fn = save({"model": sd, "cfg": Config()}, "custom_obj.pth")
    ck = convert.load_checkpoint(fn)
    expect(isinstance(ck.obj["cfg"], convert.Opaque) and ck.obj["cfg"].attrs() == {"depth": 12}, "stub state")
    conv(fn)
    expect(not os.path.exists(SENTINEL), "__setstate__ of the real class ran")


# ======================================================================== damaged and odd files

@check("truncated zip, legacy and safetensors files give clear errors")
def _():
    good = path("zoo_file.pth")
    raw = open(good, "rb").read()
    for frac in (0.3, 0.9):
        fn = path("trunc_zip_%s.pth" % frac)
        open(fn, "wb").write(raw[:int(len(raw) * frac)])
        expect_error(lambda: convert.load_checkpoint(fn), "truncated")
    leg = open(path("zoo_legacy.pth"), "rb").read()
    for cut in (len(leg) // 3, len(leg) - 10):
        fn = path("trunc_legacy.pth")
        open(fn, "wb").write(leg[:cut])
        expect_error(lambda: convert.load_checkpoint(fn), "truncated")
    st = open(path("zoo.safetensors"), "rb").read()
    for cut in (20, len(st) - 3):
        fn = path("trunc.safetensors")
        open(fn, "wb").write(st[:cut])
        expect_error(lambda: convert.load_checkpoint(fn), "truncated")
    code, out, err = cli(path("trunc_zip_0.9.pth"), path("x.lmv"))
    expect(code == 1 and err.count("\n") == 1 and "Traceback" not in err, "cli: %d %r" % (code, err))


@check("a storage record shorter than its tensors (zip rewritten) is reported")
def _():
    sd = {"w": torch.randn(4, 4)}
    src = save(sd, "short_src.pth")
    dst = path("short.pth")
    with zipfile.ZipFile(src) as zi, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zo:
        for info in zi.infolist():
            data = zi.read(info.filename)
            if "/data/" in info.filename:
                data = data[:20]
            zo.writestr(info.filename, data)
    # the record's declared size is checked against the storage before anything is read
    expect_error(lambda: convert.load_checkpoint(dst), "has 20 bytes but its tensors need 64")


def _crafted_zip(name, storage_cls_name, numel, offset, size, stride, data):
    """A torch-style zip whose data.pkl is written by hand: lets a test state any storage type,
    numel, offset, size and strides (torch itself never writes inconsistent ones)."""
    import torch._utils as tu

    fake_storage_cls = type(storage_cls_name, (), {})
    fake_storage_cls.__module__ = "torch"
    setattr(torch, storage_cls_name, fake_storage_cls) if not hasattr(torch, storage_cls_name) else None
    stype = getattr(torch, storage_cls_name)

    class StorageRef:
        pass

    class TensorRef:
        def __reduce__(self):
            return tu._rebuild_tensor_v2, (ref, offset, size, stride, False, OrderedDict())

    ref = StorageRef()

    class P(pickle.Pickler):
        def persistent_id(self, obj):
            if obj is ref:
                return ("storage", stype, "0", "cpu", numel)
            return None

    buf = io.BytesIO()
    P(buf, protocol=2).dump({"w": TensorRef()})
    fn = path(name)
    with zipfile.ZipFile(fn, "w", zipfile.ZIP_STORED) as z:
        z.writestr("crafted/data.pkl", buf.getvalue())
        z.writestr("crafted/data/0", data)
        z.writestr("crafted/version", "3\n")
    return fn


@check("a tensor whose view runs past its storage is reported (and a sane crafted one loads)")
def _():
    ok = _crafted_zip("crafted_ok.pth", "FloatStorage", 6, 1, (2, 2), (3, 1), struct.pack("<6f", *range(6)))
    expect(convert.load_checkpoint(ok).obj["w"].tolist() == [1.0, 2.0, 4.0, 5.0], "crafted view values")
    bad = _crafted_zip("crafted_past.pth", "FloatStorage", 6, 3, (2, 3), (3, 1), struct.pack("<6f", *range(6)))
    t = convert.load_checkpoint(bad).obj["w"]
    expect_error(lambda: t.f32("w"), "runs past the end of its storage")
    code, out, err = cli(bad, path("x.lmv"))
    expect(code == 1 and "past the end" in err and err.count("\n") == 1, "cli: %r" % err)


@check("unknown and unsupported dtypes give clear errors (crafted storage type, real complex64)")
def _():
    fn = _crafted_zip("crafted_dtype.pth", "Float8WeirdStorage", 4, 0, (4,), (1,), b"\0" * 4)
    t = convert.load_checkpoint(fn).obj["w"]
    expect_error(lambda: t.f32("w"), "dtype", "not support")
    c = save({"w": torch.zeros(3, dtype=torch.complex64)}, "complex.pth")
    expect_error(lambda: convert.load_checkpoint(c).obj["w"].raw("w"), "complex64")
    code, out, err = cli(c, path("x.lmv"))
    expect(code == 1 and "complex64" in err and err.count("\n") == 1, "cli: %r" % err)


@check("garbage, empty and tar files are refused with one line")
def _():
    for name, data in (("garbage.pth", b"hello world, not a checkpoint" * 10), ("empty.pth", b""),
                       ("tar.pth", b"\0" * 257 + b"ustar" + b"\0" * 300)):
        fn = path(name)
        open(fn, "wb").write(data)
        code, out, err = cli(fn, path("x.lmv"))
        expect(code == 1 and err.count("\n") == 1 and "Traceback" not in err, "%s: %d %r" % (name, code, err))


# ======================================================================= detecting ViT layouts

@check("torchvision VisionTransformer: config, defaults and forward")
def _():
    tv = tv_model()
    f = conv(save(tv.state_dict(), "tv.pth"))
    M = f.meta
    expect(M["source"] == "torchvision" and M["vit.embed_dim"] == [128] and M["vit.depth"] == [2], "widths")
    expect(M["vit.num_heads"] == [2] and M["vit.mlp_hidden"] == [256] and M["vit.patch_size"] == [8, 8], "heads")
    expect(M["vit.pos_grid"] == [4, 4] and M["img_size"] == [32, 32] and M["vit.pos_interp"] == "bicubic_ac", "grid")
    expect(abs(M["vit.norm_eps"][0] - 1e-6) < 1e-12 and M["vit.act"] == "gelu" and M["vit.norm_first"] == [1], "eps")
    expect(M["pre.resize"] == [36] and M["pre.interp"] == "bilinear" and abs(M["pre.crop_pct"][0] - 0.875) < 1e-7, "pre")
    expect(M["num_classes"] == [10] and "labels" not in M, "head")
    return expect_forward(f, tv, img(2))


@check("torchvision vit_b_16 preprocessing: resize 256, crop 224, bilinear, ImageNet mean/std")
def _():
    tv = tv_model(image_size=224, patch_size=32, hidden_dim=64, mlp_dim=64, num_layers=1, num_heads=1)
    f = conv(save(tv.state_dict(), "tv224.pth"), "--num-heads", 1)
    M = f.meta
    expect(M["pre.resize"] == [256] and M["pre.crop"] == [224, 224] and M["img_size"] == [224, 224], "sizes")
    expect(M["pre.std"] == [np.float32(v) for v in (0.229, 0.224, 0.225)], "std")


@check("torchvision with pre_logits (representation_size), 1000 classes: ImageNet labels embedded")
def _():
    tv = tv_model(num_classes=1000, representation_size=48)
    f = conv(save(tv.state_dict(), "tv_prelogits.pth"))
    M = f.meta
    expect(M["vit.pre_logits"] == [48] and M["num_features"] == [48], "pre_logits")
    labels = open(os.path.join(ROOT, "tools", "imagenet_classes.txt"), encoding="utf-8").read().splitlines()
    expect(M["labels"] == labels and labels[0] == "tench" and len(labels) == 1000, "labels")
    expect(conv(save(tv.state_dict(), "tv_prelogits.pth"), "--labels", "none").meta.get("labels") is None, "none")
    return expect_forward(f, tv, img(1))


@check("torchvision with in_channels=1 and legacy mlp.linear_1/linear_2 names")
def _():
    tv = tv_model()
    tv.conv_proj = nn.Conv2d(1, 128, 8, 8)
    randomize(tv)
    sd = OrderedDict((k.replace("mlp.0.", "mlp.linear_1.").replace("mlp.3.", "mlp.linear_2."), v)
                     for k, v in tv.state_dict().items())
    expect(any("linear_1" in k for k in sd), "legacy names")
    f = conv(save(sd, "tv_gray.pth"))
    expect(f.meta["in_chans"] == [1] and len(f.meta["pre.mean"]) == 1 and len(f.meta["pre.std"]) == 1, "1 channel")
    return expect_forward(f, tv, img(2, c=1))


TIMM_CASES = [
    ("plain, 1000 classes", dict(classes=1000), [], dict(pool="token", final_norm=1, fc_norm=0)),
    ("avg pool + fc_norm", dict(pool="avg"), [], dict(pool="avg", final_norm=0, fc_norm=1)),
    ("avg pool, fc_norm=False (--pool avg)", dict(pool="avg", fc_norm=False), ["--pool", "avg"],
     dict(pool="avg", final_norm=1, fc_norm=0)),
    ("layer scale ls1/ls2", dict(ls=True), [], dict(layer_scale=1)),
    ("no_embed_class + 4 reg tokens", dict(reg=4, no_embed_class=True), [], dict(reg_tokens=4, no_embed_class=1)),
    ("reg tokens covered by pos_embed", dict(reg=2), [], dict(reg_tokens=2, no_embed_class=0)),
    ("no class token (avg)", dict(class_token=False, pool="avg"), [], dict(class_token=0, pool="avg")),
    ("pre_norm (CLIP): norm_pre, no patch bias", dict(pre_norm=True), [], dict(norm_pre=1)),
    ("patch_embed.norm", dict(patch_norm=True), [], dict(patch_norm=1)),
    ("qkv_bias=False", dict(qkv_bias=False), [], dict(qkv_bias=0)),
    ("old pre_logits.fc (representation_size)", dict(pre_logits=40), [], dict(pre_logits=40)),
    ("distilled (dist_token, head_dist)", dict(dist=True), [], dict(dist_token=1)),
    ("patch 4, 48x48, 6 heads", dict(img=48, patch=4, d=96, heads=6), ["--num-heads", 6], dict()),
]


def _timm_case(label, kw, args, want):
    def fn():
        m = timm_model(**kw)
        f = conv(save(m.state_dict(), "timm_%d.pth" % abs(hash(label))), *args)
        for k, v in want.items():
            got = f.meta["vit." + k]
            expect(got == ([v] if not isinstance(v, str) else v), "vit.%s = %r, expected %r" % (k, got, v))
        expect(f.meta["vit.pos_interp"] == "bicubic_aa" and f.meta["vit.act"] == "gelu", "timm defaults")
        if kw.get("classes") == 1000:
            expect(len(f.meta["labels"]) == 1000 and f.meta["name"] == "vit_d128_l2_patch8_32", "labels / name")
            expect(f.meta["pre.mean"] == [0.5] * 3 and f.meta["pre.resize"] == [35], "timm preprocessing")
        return expect_forward(f, m, img(2, h=kw.get("img", 32), w=kw.get("img", 32)))
    return fn


for _label, _kw, _args, _want in TIMM_CASES:
    check("timm layout: " + _label)(_timm_case(_label, _kw, _args, _want))


@check("timm avg pool without fc_norm is only told apart by --pool avg (default reads the class token)")
def _():
    m = timm_model(pool="avg", fc_norm=False)
    f = conv(save(m.state_dict(), "timm_avg_nofc.pth"))
    expect(f.meta["vit.pool"] == "token", "default")
    f2 = conv(save(m.state_dict(), "timm_avg_nofc.pth"), "--pool", "avg")
    return expect_forward(f2, m, img(1))


@check("very old timm: 2-D patch_embed.proj.weight is reshaped to (D, C, p, p)")
def _():
    m = timm_model(pre_logits=40)
    sd = m.state_dict()
    sd["patch_embed.proj.weight"] = sd["patch_embed.proj.weight"].reshape(128, -1)
    f = conv(save(sd, "timm_2d_patch.pth"))
    expect(f.shape("patch_embed.proj.weight") == (128, 3, 8, 8), "shape")
    return expect_forward(f, m, img(1))


@check("DeiT-III: gamma_1/gamma_2 renamed to ls1/ls2.gamma, pos_embed without the cls row")
def _():
    m = timm_model(ls=True, no_embed_class=True)
    sd = OrderedDict((k.replace("ls1.gamma", "gamma_1").replace("ls2.gamma", "gamma_2"), v)
                     for k, v in m.state_dict().items())
    f = conv(save({"model": sd}, "deit3.pth"))
    expect(f.meta["source"] == "deit" and f.meta["vit.layer_scale"] == [1] and f.meta["vit.no_embed_class"] == [1], "cfg")
    expect("blocks.0.ls1.gamma" in f.tensors and f.meta["name"].startswith("deit3"), "names")
    return expect_forward(f, m, img(2))


@check("non-square pos grid needs --img-size; --num-heads, --eps and --set override")
def _():
    m = timm_model(img=32, d=64, heads=2)
    sd = m.state_dict()
    g = sd["pos_embed"]
    sd["pos_embed"] = torch.cat([g[:, :1], g[:, 1:13]], 1)  # a 3x4 grid (24x32 input)
    fn = save(sd, "timm_rect.pth")
    expect_error(lambda: conv(fn), "img-size")
    f = conv(fn, "--img-size", 24, 32, "--num-heads", 2, "--eps", 1e-5, "--set", "vit.attn_scale=0.5")
    expect(f.meta["vit.pos_grid"] == [3, 4] and f.meta["img_size"] == [24, 32] and f.meta["vit.num_heads"] == [2], "grid")
    expect(abs(f.meta["vit.norm_eps"][0] - 1e-5) < 1e-10 and f.meta["vit.attn_scale"] == [0.5], "overrides")
    expect_error(lambda: conv(fn, "--img-size", 24, 32, "--num-heads", 3), "divisible")


@check("preprocessing overrides: --mean/--std/--crop-pct/--resize/--interpolation/--name/--labels FILE")
def _():
    m = timm_model(classes=3)
    fn = save(m.state_dict(), "timm_pre.pth")
    lab = path("labels.txt")
    open(lab, "w").write("cat\ndog\nbird\n")
    f = conv(fn, "--mean", 0.1, 0.2, 0.3, "--std", 0.4, "--crop-pct", 0.8, "--interpolation", "nearest",
             "--name", "my_vit", "--labels", lab)
    M = f.meta
    expect(M["pre.mean"] == [np.float32(0.1), np.float32(0.2), np.float32(0.3)] and M["pre.std"] == [np.float32(0.4)] * 3, "norm")
    expect(M["pre.resize"] == [40] and M["pre.interp"] == "nearest" and M["name"] == "my_vit", "resize")
    expect(M["labels"] == ["cat", "dog", "bird"], "labels")
    f = conv(fn, "--resize", 0)
    expect(M["pre.crop"] == [32, 32] and f.meta["pre.resize"] == [0] and f.meta["pre.crop_pct"] == [1.0], "resize 0")
    f = conv(fn, "--resize", 64)
    expect(f.meta["pre.resize"] == [64] and f.meta["pre.crop_pct"] == [0.5], "resize 64")
    open(lab, "w").write("cat\ndog\n")
    expect_error(lambda: conv(fn, "--labels", lab), "2 labels")


@check("--num-classes: 0 drops the head, a wrong count is an error")
def _():
    m = timm_model(dist=True, classes=10)
    fn = save(m.state_dict(), "timm_heads.pth")
    f = conv(fn, "--num-classes", 0)
    expect(f.meta["num_classes"] == [0] and "head.weight" not in f.tensors and "head_dist.weight" not in f.tensors, "drop")
    expect_error(lambda: conv(fn, "--num-classes", 5), "10 classes")
    expect(conv(fn, "--num-classes", 10).meta["num_classes"] == [10], "keep")


def _write_json(fn, obj):
    with open(fn, "w") as f:
        json.dump(obj, f)


@check("Hugging Face ViTForImageClassification: q/k/v merged, config.json read (eps, heads, id2label)")
def _():
    tv = tv_model()
    d = path("hf_vit")
    os.makedirs(d, exist_ok=True)
    fn = save_safetensors(hf_state_dict(tv), os.path.join(d, "model.safetensors"), {"format": "pt"})
    cfg = {"hidden_size": 128, "num_attention_heads": 2, "layer_norm_eps": 1e-6, "hidden_act": "gelu",
           "image_size": 32, "patch_size": 8, "id2label": {str(i): "class_%d" % i for i in range(10)}}
    _write_json(os.path.join(d, "config.json"), cfg)
    f = conv(fn)
    M = f.meta
    expect(M["source"] == "hf" and M["vit.pos_interp"] == "bicubic" and abs(M["vit.norm_eps"][0] - 1e-6) < 1e-12, "cfg")
    expect(M["labels"] == ["class_%d" % i for i in range(10)], "id2label")
    expect(M["pre.resize"] == [0] and M["pre.interp"] == "bilinear" and M["pre.mean"] == [0.5] * 3, "HF processor")
    r = expect_forward(f, tv, img(2))
    _write_json(os.path.join(d, "preprocessor_config.json"), {"image_mean": [0.485, 0.456, 0.406], "resample": 3,
                "image_std": [0.229, 0.224, 0.225], "do_resize": True, "size": {"height": 32, "width": 32}})
    f = conv(fn)
    expect(f.meta["pre.interp"] == "bicubic" and f.meta["pre.mean"][0] == np.float32(0.485), "preprocessor_config")
    return r


@check("Hugging Face ViT without config.json: eps 1e-12 default, --eps overrides")
def _():
    tv = tv_model()
    d = path("hf_vit_nocfg")
    os.makedirs(d, exist_ok=True)
    fn = os.path.join(d, "pytorch_model.bin")
    torch.save(hf_state_dict(tv), fn)
    f = conv(fn)
    expect(abs(f.meta["vit.norm_eps"][0] - 1e-12) < 1e-18, "default eps %r" % f.meta["vit.norm_eps"])
    f = conv(fn, "--eps", 1e-6)
    return expect_forward(f, tv, img(1))


@check("bare Hugging Face ViTModel (no 'vit.' prefix, pooler ignored, no classifier)")
def _():
    tv = tv_model()
    sd = OrderedDict((k[4:], v) for k, v in hf_state_dict(tv).items() if k.startswith("vit."))
    sd["pooler.dense.weight"] = torch.randn(128, 128)
    sd["pooler.dense.bias"] = torch.randn(128)
    f = conv(save(sd, "hf_bare.pth"), "--eps", 1e-6)
    expect(f.meta["num_classes"] == [0] and "head.weight" not in f.tensors, "no head")


@check("Hugging Face DeiTForImageClassificationWithTeacher (deit. prefix, distillation token and head)")
def _():
    m = timm_model(dist=True)
    fn = save(timm_to_hf_deit(m.state_dict()), "hf_deit.pth")
    f = conv(fn, "--eps", 1e-6)
    expect(f.meta["vit.dist_token"] == [1] and f.meta["pre.interp"] == "bicubic" and f.meta["pre.resize"] == [36], "cfg")
    return expect_forward(f, m, img(2))


@check("Hugging Face DeiTForImageClassification (distillation token, one head on the class token)")
def _():
    m = timm_model(dist=True)
    sd = timm_to_hf_deit(m.state_dict())
    sd["classifier.weight"] = sd.pop("cls_classifier.weight")
    sd["classifier.bias"] = sd.pop("cls_classifier.bias")
    del sd["distillation_classifier.weight"], sd["distillation_classifier.bias"]
    f = conv(save(sd, "hf_deit_noteacher.pth"), "--eps", 1e-6)
    m.head_dist.weight.data.zero_()
    m.head_dist.bias.data.zero_()
    with torch.no_grad():
        m.head.weight.mul_(2)
        m.head.bias.mul_(2)
    return expect_forward(f, m, img(2))  # (2 head(cls) + 0) / 2 = head(cls)


# ================================================================================ mapping files

@check("mapping seed002_vit.json converts the seed 002 ViT (post-norm, cls last, ReLU, patch LN)")
def _():
    m = randomize(seed002_vit.build())
    f = conv(save(m.state_dict(), "seed002.pth"), "--mapping", os.path.join(MAPPINGS, "seed002_vit.json"),
             "--num-heads", 4)
    M = f.meta
    expect(M["vit.norm_first"] == [0] and M["vit.class_last"] == [1] and M["vit.act"] == "relu", "graph")
    expect(M["vit.patch_norm"] == [1] and M["vit.final_norm"] == [0] and abs(M["vit.norm_eps"][0] - 1e-5) < 1e-10, "cfg")
    expect(M["pre.resize"] == [36] and M["source"] == "seed002", "pre")
    return expect_forward(f, m, img(2))


@check("mapping seed003_vit.json converts the seed 003 ViT at a non-native input (pos_embed resized)")
def _():
    m = randomize(seed003_vit.build(input_shape=(96, 128)))
    f = conv(save(m.state_dict(), "seed003.pth"), "--mapping", os.path.join(MAPPINGS, "seed003_vit.json"),
             "--img-size", 96, 128, "--num-heads", 2)
    M = f.meta
    expect(M["vit.pos_grid"] == [7, 7] and M["img_size"] == [96, 128] and M["vit.act"] == "gelu_tanh", "cfg")
    expect(M["vit.pos_interp"] == "bicubic", "interp")
    return expect_forward(f, m, img(2, h=96, w=128))


@check("mapping torch_transformer_encoder.json converts an nn.TransformerEncoder ViT")
def _():
    m = randomize(te_vit.build())
    f = conv(save(m.state_dict(), "te.pth"), "--mapping", os.path.join(MAPPINGS, "torch_transformer_encoder.json"),
             "--num-heads", 4)
    expect(f.meta["vit.norm_first"] == [0] and f.meta["vit.class_last"] == [0], "cfg")
    return expect_forward(f, m, img(2))


@check("mapping concat rules merge separate q/k/v; structural claims are checked")
def _():
    m = timm_model()
    sd = OrderedDict()
    for k, v in m.state_dict().items():
        if k.endswith("attn.qkv.weight") or k.endswith("attn.qkv.bias"):
            base, kind = k.rsplit(".", 1)
            D = v.shape[0] // 3
            for j, nm in enumerate("qkv"):
                sd["net.%s.%s_proj.%s" % (base.replace(".attn.qkv", ".sa"), nm, kind)] = v[j * D:(j + 1) * D].clone()
        else:
            sd["net." + k] = v
    mp = path("qkv_map.json")
    _write_json(mp, {"strip_prefix": ["net."], "source": "custom",
                     "concat": [{"inputs": ["^blocks\\.(\\d+)\\.sa\\.q_proj\\.(weight|bias)$",
                                            "blocks.\\1.sa.k_proj.\\2", "blocks.\\1.sa.v_proj.\\2"],
                                 "output": "blocks.\\1.attn.qkv.\\2"}],
                     "rename": [["\\.sa\\.", ".attn."]],
                     "config": {"vit.norm_eps": 1e-6, "vit.act": "gelu", "vit.qkv_bias": 1}})
    fn = save(sd, "qkv_custom.pth")
    f = conv(fn, "--mapping", mp)
    expect(f.meta["source"] == "custom", "source")
    r = expect_forward(f, m, img(1))
    good = json.load(open(mp))
    _write_json(mp, dict(good, config={"vit.patch_norm": 1}))      # a wrong structural claim
    expect_error(lambda: conv(fn, "--mapping", mp), "vit.patch_norm")
    _write_json(mp, dict(good, concat=[]))                          # q/k/v left unmerged
    expect_error(lambda: conv(fn, "--mapping", mp), "qkv.weight is missing")
    return r


@check("bad mapping files give clear errors")
def _():
    sd_fn = save(small_timm_sd(), "for_bad_maps.pth")
    for content, word in (("{not json", "JSON"), ('{"renames": []}', "unknown entry"),
                          ('{"config": {"vit.act": "swish"}}', "vit.act"), ('{"config": {"vit.foo": 1}}', "unknown setting"),
                          ('{"rename": [["(", "x"]]}', "regex"), ('{"config": {"vit.patch_norm": 1}}', "vit.patch_norm")):
        mp = path("bad_map.json")
        open(mp, "w").write(content)
        expect_error(lambda: conv(sd_fn, "--mapping", mp), word)


# ================================================================================ command line

@check("unknown layout: exit 1, one stderr line listing the keys and suggesting --mapping")
def _():
    fn = save({"encoder.weird.0.weight": torch.zeros(3, 3), "thing": torch.zeros(2)}, "unknown.pth")
    code, out, err = cli(fn, path("u.lmv"))
    expect(code == 1 and err.count("\n") == 1 and "--mapping" in err and "encoder.weird.0.weight [3, 3]" in err, err)
    expect(not os.path.exists(path("u.lmv")), "wrote output")


@check("recognised layout with leftover tensors: they are listed; --ignore drops them")
def _():
    sd = small_timm_sd()
    sd["aux_head.weight"] = torch.zeros(3, 128)
    fn = save(sd, "leftover.pth")
    code, out, err = cli(fn, path("l.lmv"))
    expect(code == 1 and "aux_head.weight" in err and err.count("\n") == 1, err)
    code, out, err = cli(fn, path("l.lmv"), "--ignore", "^aux_head\\.")
    expect(code == 0 and "wrote" in out, err)


@check("--help documents options, examples and the mapping format; --list-keys; summary output")
def _():
    code, out, err = cli("--help")
    for w in ("--mapping", "--ema", "--img-size", "--num-classes", "--pool", "--labels", "examples:", "concat",
              "rename", "strip_prefix", "exit status"):
        expect(w in out, "help lacks %s" % w)
    fn = save(small_timm_sd(), "cli_small.pth")
    code, out, err = cli(fn, "--list-keys")
    expect(code == 0 and "blocks.0.attn.qkv.weight" in out and "[384, 128]" in out, out)
    code, out, err = cli(fn)
    expect(code == 0 and os.path.exists(fn[:-4] + ".lmv"), "default output name")
    for w in ("source", "config", "params", "preprocess", "wrote"):
        expect(w in out, "summary lacks %s" % w)
    code, out, err = cli(fn, "--bogus")
    expect(code == 2, "usage error exit %d" % code)
    lmvfile.read(fn[:-4] + ".lmv")


@check("convert.py --dtype int8/f16 end to end: policy, weights.dtype, exact dequantised forward, --keep-f32")
def _():
    m = timm_model(classes=10)
    fn = save(m.state_dict(), "q_timm.pth")
    f32 = conv(fn, out=path("q_timm_f32.lmv"))
    expect(f32.meta["weights.dtype"] == "f32" and all(t.dtype == (lmvfile.DTYPE_F32P if lmvfile.packable(n, t.shape) else 0)
                                                       for n, t in f32.tensors.items()), "default f32, matrices f32p")
    plain = conv(fn, "--no-pack", out=path("q_timm_plain.lmv"))
    expect(all(t.dtype == 0 for t in plain.tensors.values()) and
           all(plain.tensor(n) == f32.tensor(n) for n in f32.tensors), "--no-pack: plain f32, the same values")
    code, out, err = cli(fn, path("q_timm_int8.lmv"), "--dtype", "int8")
    expect(code == 0 and "weights int8" in out, err or out)
    f8 = lmvfile.read(path("q_timm_int8.lmv"))
    expect(f8.meta["weights.dtype"] == "int8", "weights.dtype")
    expect([(k, v) for k, v in f8.meta.items() if k != "weights.dtype"] ==
           [(k, v) for k, v in f32.meta.items() if k != "weights.dtype"], "other meta differ")
    want = ["patch_embed.proj.weight", "head.weight"] + ["blocks.%d.%s.weight" % (i, n) for i in range(2)
                                                         for n in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")]
    got = [n for n, t in f8.tensors.items() if t.dtype == lmvfile.DTYPE_INT8]
    expect(sorted(got) == sorted(want), "int8 tensors %s" % got)
    for n in f32.tensors:
        if n in want:
            s, q, deq = ref_int8(np.array(f32.tensor(n), dtype=np.float32), f32.shape(n))
            expect(f8.tensor_bytes(n).tobytes() == s.astype("<f4").tobytes() + q.tobytes(), "%s bytes" % n)
        else:
            expect(f8.tensor_bytes(n) == f32.tensor_bytes(n), "%s not float32 as converted" % n)
    expect(f8.header["file_size"] < 0.4 * f32.header["file_size"], "int8 file not smaller")
    # the float64 reference forward with the dequantised weights equals torch running the same weights
    x = img()
    near = expect_forward(f8, m, x, tol=0.1)    # int8 error: about 1% of the logit scale
    with torch.no_grad():
        for n, p in m.state_dict().items():
            if n in f8.tensors:
                p.copy_(torch.from_numpy(np.array(f8.tensor(n), dtype=np.float32).reshape(f8.shape(n))))
    exact = expect_forward(f8, m, x)
    # the same bytes in process, without numpy, and from lmvfile.py --dtype int8 of the f32 file
    conv(fn, "--dtype", "int8", out=path("q_timm_int8_inproc.lmv"))
    code, out, err = cli(fn, path("q_timm_int8_nonp.lmv"), "--dtype", "int8", env={"LMV_NO_NUMPY": "1"})
    expect(code == 0, err)
    lmvfile.requantize(path("q_timm_f32.lmv"), path("q_timm_int8_req.lmv"), "int8")
    ref = open(path("q_timm_int8.lmv"), "rb").read()
    for other in ("q_timm_int8_inproc.lmv", "q_timm_int8_nonp.lmv", "q_timm_int8_req.lmv"):
        expect(open(path(other), "rb").read() == ref, "%s differs" % other)
    # f16 with --keep-f32; a value f16 cannot hold is refused in one line naming the tensor
    f16 = conv(fn, "--dtype", "f16", "--keep-f32", r"^head\.", "--keep-f32", "fc2", out=path("q_timm_f16.lmv"))
    got16 = sorted(n for n, t in f16.tensors.items() if t.dtype == lmvfile.DTYPE_F16)
    expect(got16 == sorted(n for n in want if n != "head.weight" and "fc2" not in n), "f16 tensors %s" % got16)
    for n in got16:
        expect(f16.tensor_bytes(n).tobytes() == ref_f16(f32.tensor(n)).tobytes(), "%s f16 bytes" % n)
    sd = m.state_dict()
    sd["blocks.1.mlp.fc1.weight"][3, 5] = 1e5
    big = save(sd, "q_timm_big.pth")
    code, out, err = cli(big, path("q_big.lmv"), "--dtype", "f16")
    expect(code == 1 and err.count("\n") == 1 and "blocks.1.mlp.fc1.weight" in err and "--keep-f32" in err, err)
    expect(not os.path.exists(path("q_big.lmv")), "output written")
    code, out, err = cli(big, path("q_big.lmv"), "--dtype", "f16", "--keep-f32", r"^blocks\.1\.mlp\.fc1\.weight$")
    expect(code == 0 and lmvfile.read(path("q_big.lmv")).dtype("blocks.1.mlp.fc1.weight") == "f32p", err)
    code, out, err = cli(fn, path("q_x.lmv"), "--dtype", "int8", "--keep-f32", "(")
    expect(code == 1 and "--keep-f32" in err, err)
    code, out, err = cli(fn, path("q_x.lmv"), "--dtype", "bf16")
    expect(code == 2, "bad --dtype exit %d" % code)
    return "vs torch: quantised model %s, same weights %s" % (near, exact)


@check("pure-Python path (no numpy) and the oldest supported Python give byte-identical files")
def _():
    m = timm_model(classes=10)
    sd = OrderedDict((k, v.half() if "blocks.0" in k else v.bfloat16() if "blocks.1" in k else v.double())
                     for k, v in m.state_dict().items())
    fn = save(sd, "mixed_dtypes.pth", legacy=True)
    outs = []
    code, out, err = cli(fn, path("np.lmv"))
    expect(code == 0, err)
    outs.append(open(path("np.lmv"), "rb").read())
    code, out, err = cli(fn, path("nonp.lmv"), env={"LMV_NO_NUMPY": "1"})
    expect(code == 0, err)
    outs.append(open(path("nonp.lmv"), "rb").read())
    note = "numpy and pure Python"
    py38 = os.environ.get("LMV_OLD_PYTHON", "")   # an older interpreter (3.8) to run the converter under too
    if py38 and os.path.exists(py38):
        code, out, err = cli(fn, path("py38.lmv"), python=py38)
        expect(code == 0, "python 3.8: " + err)
        outs.append(open(path("py38.lmv"), "rb").read())
        # and the other readers: zip with views, safetensors with a config.json, a mapping file
        for src, args in ((path("noncontig.pth"), []), (path("hf_vit/model.safetensors"), []),
                          (path("seed002.pth"), ["--mapping", os.path.join(MAPPINGS, "seed002_vit.json"),
                                                 "--num-heads", "4"])):
            a, b = path("a38.lmv"), path("b.lmv")
            code, out, err = cli(src, a, *args, python=py38)
            expect(code == 0, "python 3.8 on %s: %s" % (src, err))
            code, out, err = cli(src, b, *args)
            expect(open(a, "rb").read() == open(b, "rb").read(), "python 3.8 output differs for %s" % src)
        note += ", Python 3.8"
    expect(all(o == outs[0] for o in outs), "outputs differ")
    return note


if __name__ == "__main__":
    try:
        failed = run_checks()
    finally:
        shutil.rmtree(TMP, ignore_errors=True)
    sys.exit(1 if failed else 0)
