#!/usr/bin/python3
"""Self-checks of the PyTorch LeMeViT reference (tests/models/lemevit_ref.py) against the facts
recorded in shared/notes/lemevit.md: parameter counts, state-dict keys and counts, DCA scales,
block semantics, attention layouts (checked against torch's own multi-head attention), a fully
independent functional forward, and the test helpers (randomize_, collect_activations).

Run with Debian's python3 (torch 1.13):  /usr/bin/python3 tests/test_lemevit_ref.py
Prints 'PASS name' / 'FAIL name: reason' per check and a final 'N passed, N failed' line.
"""

import math
import os
import sys
import traceback

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "models"))
import lemevit_ref as R  # noqa: E402

torch.set_num_threads(1)
RESULTS = []


def check(name):
    def deco(fn):
        try:
            fn()
            RESULTS.append((name, None))
            print(f"PASS {name}", flush=True)
        except Exception as e:  # noqa: BLE001 - report every failure and go on
            msg = f"{type(e).__name__}: {e}".strip().replace("\n", " ")
            RESULTS.append((name, msg))
            print(f"FAIL {name}: {msg}", flush=True)
            if os.environ.get("VERBOSE"):
                traceback.print_exc()
        return fn
    return deco


def close(a, b, tol, what=""):
    err = (a - b).abs().max().item()
    scale = max(1.0, b.abs().max().item())
    assert err <= tol * scale, f"{what} max abs err {err:.3e} > {tol:.1e} * {scale:.3g}"


# ------------------------------------------------------------------------------------------
# Structure: parameter counts, state-dict keys
# ------------------------------------------------------------------------------------------

EXPECTED = {  # name: (params with 1000 classes, state-dict entries)   (notes §3, §4)
    "lemevit_tiny": (8_635_816, 313),
    "lemevit_small": (16_400_456, 285),
    "lemevit_base": (53_098_152, 569),
    "lemevit_small_v2": (14_373_480, 313),
    "lemevit_tiny_v2": (13_855_464, 273),
    "vit_tiny": (13_369_224, 217),
}
MODELS = {}


def model(name):
    if name not in MODELS:
        torch.manual_seed(0)
        MODELS[name] = R.create(name).eval()
    return MODELS[name]


for _name, (_params, _entries) in EXPECTED.items():
    @check(f"param_count_{_name}")
    def _(name=_name, params=_params):
        n = sum(p.numel() for p in model(name).parameters())
        assert n == params, f"{n:,} != {params:,}"

    @check(f"state_dict_entries_{_name}")
    def _(name=_name, entries=_entries):
        n = len(model(name).state_dict())
        assert n == entries, f"{n} != {entries}"

    @check(f"builder_function_{_name}")
    def _(name=_name):
        m = getattr(R, name)(num_classes=7)
        assert m.head.out_features == 7


TINY_SHAPES = {  # notes §4
    "meta_tokens": (16, 64),
    "downsample_layers.0.0.weight": (32, 3, 3, 3), "downsample_layers.0.0.bias": (32,),
    "downsample_layers.0.1.running_var": (32,), "downsample_layers.0.1.num_batches_tracked": (),
    "downsample_layers.0.3.weight": (64, 32, 3, 3), "downsample_layers.0.4.weight": (64,),
    "downsample_layers.2.0.weight": (128, 64, 3, 3), "downsample_layers.2.1.running_mean": (128,),
    "downsample_layers.3.0.weight": (192, 128, 3, 3), "downsample_layers.4.0.weight": (320, 192, 3, 3),
    "meta_token_downsample.0.0.weight": (256, 64), "meta_token_downsample.0.1.weight": (256,),
    "meta_token_downsample.0.3.weight": (64, 256), "meta_token_downsample.0.4.bias": (64,),
    "meta_token_downsample.2.3.weight": (128, 256), "meta_token_downsample.3.0.weight": (512, 128),
    "meta_token_downsample.3.3.weight": (192, 512), "meta_token_downsample.4.0.weight": (768, 192),
    "meta_token_downsample.4.3.weight": (320, 768), "meta_token_downsample.4.4.weight": (320,),
    "stages.0.0.pos_embed.weight": (64, 1, 3, 3), "stages.0.0.pos_embed.bias": (64,),
    "stages.0.0.norm1.weight": (64,), "stages.0.0.norm2.bias": (64,),
    "stages.0.0.attn.q.weight": (64, 64), "stages.0.0.attn.kv.weight": (128, 64),
    "stages.0.0.attn.kv.bias": (128,), "stages.0.0.attn.proj.weight": (64, 64),
    "stages.0.0.mlp.0.weight": (256, 64), "stages.0.0.mlp.3.weight": (64, 256),
    "stages.1.1.attn.qkv1.weight": (192, 64), "stages.1.1.attn.qkv2.bias": (192,),
    "stages.1.0.attn.proj_x.weight": (64, 64), "stages.1.0.attn.proj_c.weight": (64, 64),
    "stages.2.1.attn.qkv1.weight": (384, 128), "stages.2.0.mlp.0.weight": (512, 128),
    "stages.3.7.pos_embed.weight": (192, 1, 3, 3), "stages.3.7.attn.qkv.weight": (576, 192),
    "stages.3.0.attn.proj.weight": (192, 192), "stages.3.3.mlp.0.weight": (768, 192),
    "stages.3.3.mlp.3.weight": (192, 768),
    "stages.4.1.attn.qkv.weight": (960, 320), "stages.4.0.mlp.0.weight": (1280, 320),
    "stages.4.1.mlp.3.weight": (320, 1280),
    "norm.weight": (320,), "norm.running_var": (320,), "norm.num_batches_tracked": (),
    "norm_c.weight": (320,), "norm_c.bias": (320,),
    "head.weight": (1000, 320), "head.bias": (1000,),
}


@check("tiny_key_shapes")
def _():
    sd = model("lemevit_tiny").state_dict()
    for k, shape in TINY_SHAPES.items():
        assert k in sd, f"missing {k}"
        assert tuple(sd[k].shape) == shape, f"{k}: {tuple(sd[k].shape)} != {shape}"


@check("tiny_key_layout")
def _():
    sd = model("lemevit_tiny").state_dict()
    keys = list(sd)
    assert keys[0] == "meta_tokens", keys[0]
    assert not any(k.startswith("downsample_layers.1.") for k in keys), "Identity must have no keys"
    nbt = [k for k in keys if k.endswith("num_batches_tracked")]
    assert len(nbt) == 6, nbt
    assert all(sd[k].dtype == torch.int64 for k in nbt)
    assert not any(".mlp.1." in k or ".mlp.2." in k for k in keys)
    assert not any("gamma" in k or "pre_logits" in k for k in keys)
    prefixes = {k.split(".")[0] for k in keys}
    assert prefixes == {"meta_tokens", "downsample_layers", "meta_token_downsample", "stages",
                        "norm", "norm_c", "head"}, prefixes
    # depth inferred from keys, as a loader would
    depth = [len({k.split(".")[2] for k in keys if k.startswith(f"stages.{i}.")}) for i in range(5)]
    assert depth == [1, 2, 2, 8, 2], depth
    assert len({k.split(".")[1] for k in keys if k.startswith("meta_token_downsample.")}) == 5


@check("tiny_v2_d2_keys")
def _():
    sd = model("lemevit_tiny_v2").state_dict()
    for i in (1, 2):
        C = 96 * i
        for j in (0, 1):
            p = f"stages.{i}.{j}.attn."
            assert tuple(sd[p + "qv1.weight"].shape) == (2 * C, C)
            assert tuple(sd[p + "kv2.weight"].shape) == (2 * C, C)
            assert tuple(sd[p + "proj_x.weight"].shape) == (C, C)
            assert tuple(sd[p + "proj_c.bias"].shape) == (C,)
            assert p + "qkv1.weight" not in sd


@check("vit_tiny_four_real_downsamples")
def _():
    sd = model("vit_tiny").state_dict()
    assert tuple(sd["downsample_layers.1.0.weight"].shape) == (192, 96, 3, 3)
    assert tuple(sd["downsample_layers.3.0.weight"].shape) == (384, 320, 3, 3)
    assert len({k.split(".")[1] for k in sd if k.startswith("meta_token_downsample.")}) == 4
    assert tuple(sd["meta_tokens"].shape) == (16, 96)


@check("eps_and_activation_constants")
def _():
    m = model("lemevit_tiny")
    for blk in (b for st in m.stages for b in st):
        assert blk.norm1.eps == 1e-6 and blk.norm2.eps == 1e-6
        assert isinstance(blk.mlp[2], nn.GELU) and blk.mlp[2].approximate == "none"
        assert blk.pos_embed.groups == blk.pos_embed.in_channels and blk.pos_embed.padding == (1, 1)
    for md in m.meta_token_downsample:
        assert md[1].eps == 1e-5 and md[4].eps == 1e-5 and md[2].approximate == "none"
    assert m.norm_c.eps == 1e-5 and isinstance(m.norm, nn.BatchNorm2d) and m.norm.eps == 1e-5
    assert isinstance(m.downsample_layers[0][2], nn.GELU) and len(m.downsample_layers[0]) == 5
    assert isinstance(m.downsample_layers[1], nn.Identity)
    assert [b.attn.num_heads for b in (st[0] for st in m.stages)] == [2, 2, 4, 6, 10]


# ------------------------------------------------------------------------------------------
# DCA scales (notes §2)
# ------------------------------------------------------------------------------------------

class ScaleRecorder:
    """Monkeypatch lemevit_ref.scaled_dot_product_attention to record (Nq, Nk, d, scale used)."""

    def __enter__(self):
        self.calls, self.orig = [], R.scaled_dot_product_attention

        def rec(q, k, v, scale=None):
            used = scale or q.shape[-1] ** (-0.5)
            self.calls.append((q.shape[-2], k.shape[-2], q.shape[-1], scale, used))
            return self.orig(q, k, v, scale=scale)
        R.scaled_dot_product_attention = rec
        return self

    def __exit__(self, *exc):
        R.scaled_dot_product_attention = self.orig


DCA_224 = {  # variant: [(stage, C, scale_x, scale_c)] at 224x224, M=16
    "lemevit_tiny": [(1, 64, 0.04304886, 0.125), (2, 128, 0.03677213, 0.08838835)],
    "lemevit_small_v2": [(1, 64, 0.04304886, 0.125), (2, 128, 0.03677213, 0.08838835)],
    "lemevit_small": [(1, 96, 0.035149, 0.102062), (2, 192, 0.030024, 0.072169)],
    "lemevit_base": [(1, 96, 0.035149, 0.102062), (2, 192, 0.030024, 0.072169)],
    "lemevit_tiny_v2": [(1, 96, 0.035149, 0.102062), (2, 192, 0.030024, 0.072169)],
}


@check("dca_scales_tiny_full_forward_224")
def _():
    m = model("lemevit_tiny")
    with ScaleRecorder() as r, torch.no_grad():
        m(torch.randn(1, 3, 224, 224))
    dca = [c for c in r.calls if c[3] is not None]
    # stage 1: 2 blocks at N=3136, stage 2: 2 blocks at N=784; each block: x<-c then c<-x
    assert len(dca) == 8, len(dca)
    for blk in range(4):
        N, C = (3136, 64) if blk < 2 else (784, 128)
        sx, sc = DCA_224["lemevit_tiny"][blk // 2][2:]
        (nq1, nk1, _, s1, _), (nq2, nk2, _, s2, _) = dca[2 * blk], dca[2 * blk + 1]
        assert (nq1, nk1, nq2, nk2) == (N, 16, 16, N), (nq1, nk1, nq2, nk2)
        assert abs(s1 - sx) < 5e-9 and abs(s2 - sc) < 5e-9, (s1, sx, s2, sc)
    default = [c for c in r.calls if c[3] is None]
    # C block (1) + S blocks on x and on c (2 * (8 + 2))
    assert len(default) == 1 + 2 * 10, len(default)
    assert all(abs(c[4] - 32 ** -0.5) < 1e-12 and c[2] == 32 for c in default)


for _name, _rows in DCA_224.items():
    @check(f"dca_scales_{_name}_224")
    def _(name=_name, rows=_rows):
        m = model(name)
        for stage, C, sx, sc in rows:
            N = (56 if stage == 1 else 28) ** 2
            attn = m.stages[stage][0].attn
            assert attn.scale == C ** -0.5
            with ScaleRecorder() as r, torch.no_grad():
                attn(torch.randn(1, N, C), torch.randn(1, 16, C))
            got_x, got_c = r.calls[0][3], r.calls[1][3]
            assert abs(got_x - sx) < 5e-7 and abs(got_c - sc) < 5e-7, (stage, got_x, sx, got_c, sc)
            ex, ec = R.dca_scales(16, N, C)
            assert got_x == ex and got_c == ec
            # the formula exactly as upstream: math.log(M, N) * dim**-0.5
            assert got_x == math.log(16, N) * C ** (-0.5)


@check("dca_scale_follows_runtime_N")
def _():
    m = model("lemevit_tiny")
    with ScaleRecorder() as r, torch.no_grad():
        m(torch.randn(1, 3, 64, 64))  # stage 1 N = 16*16 = 256 -> ln16/ln256 = 0.5
    dca = [c for c in r.calls if c[3] is not None]
    assert dca[0][:2] == (256, 16) and abs(dca[0][3] - 0.5 * 0.125) < 1e-15, dca[0]
    assert dca[4][:2] == (64, 16) and abs(dca[4][3] - (math.log(16) / math.log(64)) * 128 ** -0.5) < 1e-15
    assert abs(dca[1][3] - 0.125) < 1e-15


@check("scaled_dot_product_attention_zero_scale_falls_back")
def _():
    q, k, v = torch.randn(1, 2, 5, 32), torch.randn(1, 2, 7, 32), torch.randn(1, 2, 7, 32)
    ref = torch.softmax(q @ k.transpose(-1, -2) * 32 ** -0.5, -1) @ v
    assert torch.equal(R.scaled_dot_product_attention(q, k, v, scale=0.0), ref)
    assert torch.equal(R.scaled_dot_product_attention(q, k, v), ref)


# ------------------------------------------------------------------------------------------
# Attention layouts against torch's multi_head_attention_forward (independent implementation)
# ------------------------------------------------------------------------------------------

def torch_mha(query, key, value, wq, bq, wk, bk, wv, bv, wo, bo, heads, scale):
    """torch's MHA with separate projections; it always scales by d^-0.5, so fold the wanted
    scale into the q projection."""
    d = wq.shape[0] // heads
    f = scale / d ** -0.5
    out, _ = F.multi_head_attention_forward(
        query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1), wq.shape[0], heads,
        None, torch.cat([bq * f, bk, bv]), None, None, False, 0.0, wo, bo, training=False,
        need_weights=False, use_separate_proj_weight=True, q_proj_weight=wq * f,
        k_proj_weight=wk, v_proj_weight=wv)
    return out.transpose(0, 1)


def _chunks(lin, n):
    return list(lin.weight.chunk(n, 0)), list(lin.bias.chunk(n, 0))


@check("attention_S_matches_torch_mha")
def _():
    torch.manual_seed(1)
    a = R.StandardAttention(96, 3).double()
    R.randomize_(a, 3)
    x = torch.randn(2, 10, 96, dtype=torch.float64)
    (wq, wk, wv), (bq, bk, bv) = _chunks(a.qkv, 3)
    ref = torch_mha(x, x, x, wq, bq, wk, bk, wv, bv, a.proj.weight, a.proj.bias, 3, 32 ** -0.5)
    close(a(x), ref, 1e-12, "S")


@check("attention_C_matches_torch_mha")
def _():
    a = R.CrossAttention(64, 2).double()
    R.randomize_(a, 4)
    x, c = torch.randn(2, 49, 64, dtype=torch.float64), torch.randn(2, 16, 64, dtype=torch.float64)
    (wk, wv), (bk, bv) = _chunks(a.kv, 2)
    ref = torch_mha(c, x, x, a.q.weight, a.q.bias, wk, bk, wv, bv, a.proj.weight, a.proj.bias, 2,
                    32 ** -0.5)
    close(a(x, c), ref, 1e-12, "C")


@check("attention_D_matches_torch_mha")
def _():
    a = R.DualCrossAttention(128, 4).double()
    R.randomize_(a, 5)
    x, c = torch.randn(2, 49, 128, dtype=torch.float64), torch.randn(2, 16, 128, dtype=torch.float64)
    sx, sc = math.log(16) / math.log(49) / math.sqrt(128), 1 / math.sqrt(128)
    (q1, k1, v1), (bq1, bk1, bv1) = _chunks(a.qkv1, 3)
    (q2, k2, v2), (bq2, bk2, bv2) = _chunks(a.qkv2, 3)
    rx = torch_mha(x, c, c, q1, bq1, k2, bk2, v2, bv2, a.proj_x.weight, a.proj_x.bias, 4, sx)
    rc = torch_mha(c, x, x, q2, bq2, k1, bk1, v1, bv1, a.proj_c.weight, a.proj_c.bias, 4, sc)
    ox, oc = a(x, c)
    close(ox, rx, 1e-12, "D x")
    close(oc, rc, 1e-12, "D c")


@check("attention_D2_matches_torch_mha")
def _():
    a = R.DualCrossAttention_v2(96, 3).double()
    R.randomize_(a, 6)
    x, c = torch.randn(1, 36, 96, dtype=torch.float64), torch.randn(1, 16, 96, dtype=torch.float64)
    sx, sc = math.log(16) / math.log(36) / math.sqrt(96), 1 / math.sqrt(96)
    (wq, wv1), (bq, bv1) = _chunks(a.qv1, 2)
    (wk, wv2), (bk, bv2) = _chunks(a.kv2, 2)
    # x <- c: queries q(x), keys k(c), values v2(c);  c <- x: queries k(c), keys q(x), values v1(x)
    rx = torch_mha(x, c, c, wq, bq, wk, bk, wv2, bv2, a.proj_x.weight, a.proj_x.bias, 3, sx)
    rc = torch_mha(c, x, x, wk, bk, wq, bq, wv1, bv1, a.proj_c.weight, a.proj_c.bias, 3, sc)
    ox, oc = a(x, c)
    close(ox, rx, 1e-12, "D2 x")
    close(oc, rc, 1e-12, "D2 c")


# ------------------------------------------------------------------------------------------
# Block semantics
# ------------------------------------------------------------------------------------------

def _block(kind, dim=64, seed=0):
    b = R.LeMeBlock(dim, kind, dim // 32, mlp_ratio=4).double().eval()
    return R.randomize_(b, seed)


@check("block_C_updates_c_only_x_without_cpe")
def _():
    b = _block("C", seed=7)
    x, c = torch.randn(2, 64, 5, 6, dtype=torch.float64), torch.randn(2, 16, 64, dtype=torch.float64)
    with torch.no_grad():
        ox, oc = b(x, c)
        assert torch.equal(ox, x), "C block must return the original x (no CPE)"
        xs = (x + b.pos_embed(x)).flatten(2).transpose(1, 2)
        c1 = c + b.attn(b.norm1(xs), b.norm1(c))
        close(oc, c1 + b.mlp(b.norm2(c1)), 1e-12, "C block c")


@check("block_S_x_and_c_independent_shared_weights")
def _():
    b = _block("S", seed=8)
    x, c = torch.randn(2, 64, 4, 4, dtype=torch.float64), torch.randn(2, 16, 64, dtype=torch.float64)
    with torch.no_grad():
        ox, oc = b(x, c)
        ox2, oc2 = b(x, torch.randn_like(c))
        assert torch.equal(ox, ox2), "x must not depend on c in an S block"
        _, oc3 = b(torch.randn_like(x), c)
        assert torch.equal(oc, oc3), "c must not depend on x in an S block"

        def path(t):
            t = t + b.attn(b.norm1(t))
            return t + b.mlp(b.norm2(t))
        xs = (x + b.pos_embed(x)).flatten(2).transpose(1, 2)
        close(ox, path(xs).transpose(1, 2).reshape(2, 64, 4, 4), 1e-12, "S x")
        close(oc, path(c), 1e-12, "S c")


@check("block_D_uses_pre_update_x_and_c")
def _():
    for kind in ("D", "D2"):
        b = _block(kind, seed=9)
        x, c = torch.randn(1, 64, 6, 5, dtype=torch.float64), torch.randn(1, 16, 64, dtype=torch.float64)
        with torch.no_grad():
            ox, oc = b(x, c)
            xs = (x + b.pos_embed(x)).flatten(2).transpose(1, 2)
            _x, _c = b.attn(b.norm1(xs), b.norm1(c))
            x1 = xs + _x
            x1 = x1 + b.mlp(b.norm2(x1))
            c1 = c + _c
            c1 = c1 + b.mlp(b.norm2(c1))
            close(ox, x1.transpose(1, 2).reshape(1, 64, 6, 5), 1e-12, kind + " x")
            close(oc, c1, 1e-12, kind + " c")
            ox2, _ = b(x, torch.randn_like(c))
            assert not torch.allclose(ox, ox2), "x must depend on c in a D block"


@check("drop_path_identity_in_eval")
def _():
    torch.manual_seed(0)
    a = R.build(depth=[1, 1, 1, 1, 1], embed_dim=[32, 32, 64, 64, 96], num_classes=10,
                drop_path_rate=0.3)
    b = R.build(depth=[1, 1, 1, 1, 1], embed_dim=[32, 32, 64, 64, 96], num_classes=10)
    R.randomize_(a, 1)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(a.eval()(x), b.eval()(x))


# ------------------------------------------------------------------------------------------
# Whole model: independent functional forward from the state dict (fp64)
# ------------------------------------------------------------------------------------------

def functional_forward(sd, cfg, img):
    """A second, independent LeMeViT forward written with functional ops and per-head loops
    (layer scale when the state dict has gamma1/gamma2; post-norm with cfg pre_norm=False)."""
    types, depth = cfg["attn_type"], cfg["depth"]
    M = sd["meta_tokens"].shape[0]
    post = not cfg.get("pre_norm", True)

    def lin(t, p):
        return F.linear(t, sd[p + ".weight"], sd[p + ".bias"])

    def ln(t, p, eps):
        return F.layer_norm(t, t.shape[-1:], sd[p + ".weight"], sd[p + ".bias"], eps)

    def bn(t, p):
        return F.batch_norm(t, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"],
                            sd[p + ".bias"], False, 0.0, 1e-5)

    def conv(t, p, stride=1, groups=1):
        return F.conv2d(t, sd[p + ".weight"], sd[p + ".bias"], stride, 1, 1, groups)

    def attend(q, k, v, heads, scale):  # q [B,Nq,C], k/v [B,Nk,C]
        d = q.shape[-1] // heads
        outs = []
        for h in range(heads):
            s = slice(h * d, (h + 1) * d)
            w = torch.softmax(torch.einsum("bqd,bkd->bqk", q[..., s], k[..., s]) * scale, -1)
            outs.append(torch.einsum("bqk,bkd->bqd", w, v[..., s]))
        return torch.cat(outs, -1)

    def mlp(t, p):
        return lin(F.gelu(lin(t, p + ".mlp.0")), p + ".mlp.3")

    def add(t, branch, p, k):  # residual k (1 attention, 2 MLP): gamma_k scales, norm_k follows if post-norm
        if f"{p}.gamma{k}" in sd:
            branch = sd[f"{p}.gamma{k}"] * branch
        return ln(t + branch, f"{p}.norm{k}", 1e-6) if post else t + branch

    def mlp_res(t, p):
        return add(t, mlp(t if post else ln(t, p + ".norm2", 1e-6), p), p, 2)

    B = img.shape[0]
    x = img
    c = sd["meta_tokens"].unsqueeze(0).expand(B, -1, -1)
    for i, kind in enumerate(types):
        if i == 0:
            x = conv(x, "downsample_layers.0.0", 2)
            x = F.gelu(bn(x, "downsample_layers.0.1"))
            x = bn(conv(x, "downsample_layers.0.3", 2), "downsample_layers.0.4")
        elif types[i - 1] != "C":
            x = bn(conv(x, f"downsample_layers.{i}.0", 2), f"downsample_layers.{i}.1")
        p = f"meta_token_downsample.{i}"
        c = ln(lin(F.gelu(ln(lin(c, p + ".0"), p + ".1", 1e-5)), p + ".3"), p + ".4", 1e-5)
        C = x.shape[1]
        heads = C // 32
        for j in range(depth[i]):
            p = f"stages.{i}.{j}"
            Bx, _, H, W = x.shape
            xs = (x + conv(x, p + ".pos_embed", groups=C)).reshape(Bx, C, H * W).permute(0, 2, 1)
            nx, nc = (xs, c) if post else (ln(xs, p + ".norm1", 1e-6), ln(c, p + ".norm1", 1e-6))
            N = H * W
            if kind == "C":
                kv = lin(nx, p + ".attn.kv")
                a = attend(lin(nc, p + ".attn.q"), kv[..., :C], kv[..., C:], heads, 32 ** -0.5)
                c = mlp_res(add(c, lin(a, p + ".attn.proj"), p, 1), p)
                continue  # x unchanged
            if kind in ("D", "D2"):
                sx, sc = math.log(M) / math.log(N) / math.sqrt(C), 1 / math.sqrt(C)
                if kind == "D":
                    a1, a2 = lin(nx, p + ".attn.qkv1"), lin(nc, p + ".attn.qkv2")
                    q1, k1, v1 = a1[..., :C], a1[..., C:2 * C], a1[..., 2 * C:]
                    q2, k2, v2 = a2[..., :C], a2[..., C:2 * C], a2[..., 2 * C:]
                    dx, dc = attend(q1, k2, v2, heads, sx), attend(q2, k1, v1, heads, sc)
                else:
                    a1, a2 = lin(nx, p + ".attn.qv1"), lin(nc, p + ".attn.kv2")
                    q, v1, k, v2 = a1[..., :C], a1[..., C:], a2[..., :C], a2[..., C:]
                    dx, dc = attend(q, k, v2, heads, sx), attend(k, q, v1, heads, sc)
                xs = add(xs, lin(dx, p + ".attn.proj_x"), p, 1)
                c = add(c, lin(dc, p + ".attn.proj_c"), p, 1)
            else:
                def sa(t):
                    qkv = lin(t, p + ".attn.qkv")
                    o = attend(qkv[..., :C], qkv[..., C:2 * C], qkv[..., 2 * C:], heads, 32 ** -0.5)
                    return lin(o, p + ".attn.proj")
                xs, c = add(xs, sa(nx), p, 1), add(c, sa(nc), p, 1)
            xs, c = mlp_res(xs, p), mlp_res(c, p)
            x = xs.permute(0, 2, 1).reshape(Bx, C, H, W)
    x = bn(x, "norm")
    c = ln(c, "norm_c", 1e-5)
    pooled = x.mean((2, 3)) + c.mean(1)
    return lin(pooled, "head")


SMALL_CFGS = {
    "small_CDDSS": dict(depth=[1, 2, 1, 2, 1], embed_dim=[32, 32, 64, 96, 128], mlp_ratios=[4, 3, 2, 4, 2],
                        attn_type=["C", "D", "D", "S", "S"], num_classes=13),
    "small_CD2D2SS": dict(depth=[2, 1, 2, 1, 1], embed_dim=[64, 64, 96, 128, 128], mlp_ratios=4,
                          attn_type=["C", "D2", "D2", "S", "S"], num_classes=5),
    "small_SSSS": dict(depth=[1, 2, 1, 1], embed_dim=[32, 64, 96, 128], mlp_ratios=4,
                       attn_type=["S", "S", "S", "S"], num_classes=3),
    # the official LeMeBlock options the released variants leave off
    "small_CDDSS_layer_scale": dict(depth=[1, 2, 1, 2, 1], embed_dim=[32, 32, 64, 96, 128], mlp_ratios=4,
                                    attn_type=["C", "D", "D", "S", "S"], num_classes=7, layer_scale_init_value=0.1),
    "small_CD2D2SS_post_norm": dict(depth=[1, 1, 1, 1, 1], embed_dim=[32, 32, 64, 96, 128], mlp_ratios=4,
                                    attn_type=["C", "D2", "D2", "S", "S"], num_classes=7, pre_norm=False),
    "small_CDDSS_post_norm_layer_scale": dict(depth=[1, 1, 1, 1, 1], embed_dim=[32, 32, 64, 96, 128], mlp_ratios=4,
                                              attn_type=["C", "D", "D", "S", "S"], num_classes=7, pre_norm=False,
                                              layer_scale_init_value=0.5),
}

for _name, _cfg in SMALL_CFGS.items():
    @check(f"functional_forward_parity_{_name}")
    def _(cfg=_cfg):
        m = R.build(**cfg).double().eval()
        R.randomize_(m, 11)
        img = torch.randn(2, 3, 45, 37, dtype=torch.float64)  # odd sizes: ceil(H/2) per conv
        with torch.no_grad():
            out = m(img)
            ref = functional_forward(m.state_dict(), cfg, img)
        assert out.shape == (2, cfg["num_classes"])
        close(out, ref, 1e-10, "logits")
        assert out.abs().max() > 0.1, "degenerate output"


@check("functional_forward_parity_lemevit_tiny_fp64_96px")
def _():
    m = R.lemevit_tiny(num_classes=10).double().eval()
    R.randomize_(m, 12)
    img = torch.randn(1, 3, 96, 96, dtype=torch.float64)
    with torch.no_grad():
        close(m(img), functional_forward(m.state_dict(), R.VARIANTS["lemevit_tiny"], img), 1e-10)


# ------------------------------------------------------------------------------------------
# Helpers: randomize_, collect_activations, checkpoint key handling, num_classes
# ------------------------------------------------------------------------------------------

@check("randomize_touches_every_entry")
def _():
    torch.manual_seed(0)
    fresh = R.lemevit_tiny_v2(num_classes=10)
    init = {k: v.clone() for k, v in fresh.state_dict().items()}
    R.randomize_(fresh, 123)
    sd = fresh.state_dict()
    for k, v in sd.items():
        assert not torch.equal(v, init[k]), f"{k} unchanged"
        if k.endswith("running_var"):
            assert (v > 0).all(), k
        if v.dtype.is_floating_point and v.numel() > 1:
            assert v.std() > 0, f"{k} constant"
    other = R.randomize_(R.lemevit_tiny_v2(num_classes=10), 123).state_dict()
    assert all(torch.equal(sd[k], other[k]) for k in sd), "same seed must give the same values"
    third = R.randomize_(R.lemevit_tiny_v2(num_classes=10), 124).state_dict()
    assert not torch.equal(sd["meta_tokens"], third["meta_tokens"])


@check("randomized_tiny_224_outputs_finite_nontrivial")
def _():
    m = R.randomize_(R.lemevit_tiny(), 5).eval()
    with torch.no_grad():
        out = m(torch.randn(2, 3, 224, 224))
    assert torch.isfinite(out).all()
    assert out.std() > 0.1 and (out[0] - out[1]).abs().max() > 1e-3


@check("collect_activations_layout")
def _():
    m = R.randomize_(R.lemevit_tiny(num_classes=10), 2).eval()
    img = torch.randn(2, 3, 224, 224)
    acts = R.collect_activations(m, img)
    sizes = {0: 56, 1: 56, 2: 28, 3: 14, 4: 7}
    dims = [64, 64, 128, 192, 320]
    for i in range(5):
        assert acts[f"downsample.{i}"].shape == (2, dims[i], sizes[i], sizes[i])
        assert acts[f"meta.{i}"].shape == (2, 16, dims[i])
        for j in range(R.VARIANTS["lemevit_tiny"]["depth"][i]):
            assert acts[f"stages.{i}.{j}.x"].shape == (2, dims[i], sizes[i], sizes[i])
            assert acts[f"stages.{i}.{j}.c"].shape == (2, 16, dims[i])
    assert torch.equal(acts["downsample.1"], acts["stages.0.0.x"]), "Identity after the C stage"
    assert torch.equal(acts["stages.0.0.x"], acts["downsample.0"]), "C block leaves x unchanged"
    pooled = acts["norm"].flatten(2).mean(-1) + acts["norm_c"].transpose(-2, -1).contiguous().mean(-1)
    assert torch.equal(pooled, acts["pooled"])
    close(m.head(acts["pooled"]), acts["logits"], 1e-6, "head")
    with torch.no_grad():
        assert torch.equal(m(img), acts["logits"])
    assert not any(m._forward_hooks for m in m.modules()), "hooks must be removed"
    order = list(acts)
    assert order.index("downsample.2") < order.index("meta.2") < order.index("stages.2.0.x")


@check("vit_tiny_spatial_sizes")
def _():
    m = R.vit_tiny(num_classes=4).eval()
    acts = R.collect_activations(m, torch.randn(1, 3, 225, 199))
    got = [tuple(acts[f"downsample.{i}"].shape[2:]) for i in range(4)]
    assert got == [(57, 50), (29, 25), (15, 13), (8, 7)], got


@check("legacy_keys_and_checkpoint_unwrap")
def _():
    m = R.build(depth=[1, 1, 1, 1, 1], embed_dim=[32, 32, 64, 64, 96], num_classes=10)
    R.randomize_(m, 9)
    sd = m.state_dict()
    legacy = {("module." + k.replace("meta_token_downsample.", "prototype_downsample.")
               .replace("meta_tokens", "prototypes")): v for k, v in sd.items()}
    for wrapped, ema in (({"state_dict": legacy}, False), ({"model": legacy}, False),
                         ({"state_dict": {}, "state_dict_ema": legacy}, True), (legacy, False)):
        got = R.unwrap_checkpoint(wrapped, use_ema=ema)
        assert list(got) == list(sd), "keys/order after remap"
        m2 = R.build(depth=[1, 1, 1, 1, 1], embed_dim=[32, 32, 64, 64, 96], num_classes=10)
        m2.load_state_dict(got, strict=True)


@check("num_classes_zero_and_other")
def _():
    m = R.build(depth=[1, 1, 1, 1, 1], embed_dim=[32, 32, 64, 64, 96], num_classes=0).eval()
    assert isinstance(m.head, nn.Identity) and not any(k.startswith("head") for k in m.state_dict())
    with torch.no_grad():
        assert m(torch.randn(1, 3, 32, 32)).shape == (1, 96)
    assert R.lemevit_small(num_classes=51).head.weight.shape == (51, 384)


# ------------------------------------------------------------------------------------------

if __name__ == "__main__":
    failed = [r for r in RESULTS if r[1] is not None]
    print(f"{len(RESULTS) - len(failed)} passed, {len(failed)} failed")
    sys.exit(1 if failed else 0)
