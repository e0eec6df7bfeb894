"""ViT / DeiT: timm, DeiT, torchvision and Hugging Face layouts."""

import json
import os
import re
from collections import OrderedDict

from ..base import ConvertError, _short, lmvfile
from ..family import (Model, PRE_DEIT, PRE_HF_DEIT, PRE_HF_VIT, PRE_TIMM, PRE_TORCHVISION, _block_indices, _isqrt_exact,
                      _read_json_beside, _rename, side_value as _side_value)
from ..mapping import _shape_str, mapping_shape_hint
from ..registry import FAMILIES, builder, detector, register_family
from ..settings import coerce
from ..tensors import _is_int, concat0, scale_f32, zeros_f32

VIT_KEYS = OrderedDict([
    ("vit.embed_dim", "i"), ("vit.depth", "i"), ("vit.num_heads", "i"), ("vit.mlp_hidden", "i"),
    ("vit.patch_size", "i2"), ("vit.pos_grid", "i2"), ("vit.norm_eps", "f"), ("vit.act", "s"),
    ("vit.norm_first", "i"), ("vit.class_token", "i"), ("vit.class_last", "i"), ("vit.dist_token", "i"),
    ("vit.reg_tokens", "i"), ("vit.no_embed_class", "i"), ("vit.pool", "s"), ("vit.qkv_bias", "i"),
    ("vit.layer_scale", "i"), ("vit.patch_norm", "i"), ("vit.norm_pre", "i"), ("vit.final_norm", "i"),
    ("vit.fc_norm", "i"), ("vit.pre_logits", "i"), ("vit.attn_scale", "f"), ("vit.pos_interp", "s"),
    ("vit.block", "s"), ("vit.mlp", "s"), ("vit.pool_prefix", "i"), ("vit.proj", "i"), ("vit.abs_pos", "i"),
    ("vit.rel_pos", "s"),
])
register_family("vit", VIT_KEYS, choices={
    "vit.act": ("gelu", "gelu_tanh", "relu", "quickgelu", "silu"),
    "vit.pool": ("token", "avg", "map"),
    "vit.mlp": ("mlp", "glu"),
    "vit.pos_interp": ("bicubic", "bicubic_aa", "bicubic_ac", "bilinear", "bicubic_dinov2"),
    "vit.block": ("pre", "res_post"),
    "vit.rel_pos": ("none", "block", "shared_table", "both"),
}, assumable=[
    ("vit.num_heads", "--num-heads N"),
    ("vit.norm_eps", "--eps E"),
    ("vit.act", "--set vit.act=gelu|gelu_tanh|quickgelu|relu|silu"),
    ("vit.block", "--set vit.block=pre|res_post"),
    ("vit.pool", "--pool token|avg"),
    ("vit.pool_prefix", "--set vit.pool_prefix=0|1"),
])
# ViT keys fixed by the tensors: a mapping file or --set may state them (they are then checked)
VIT_STRUCTURAL = {"vit.embed_dim", "vit.depth", "vit.mlp_hidden", "vit.patch_size", "vit.class_token",
                  "vit.dist_token", "vit.reg_tokens", "vit.qkv_bias", "vit.layer_scale", "vit.patch_norm",
                  "vit.norm_pre", "vit.final_norm", "vit.fc_norm", "vit.pre_logits", "vit.mlp", "vit.proj", "vit.abs_pos",
                  "vit.rel_pos", "in_chans",
                  "num_features", "num_classes"}

# known ViT widths -> heads (head_dim 64 except the huge/giant widths with 16 heads)
VIT_HEADS_BY_DIM = {192: 3, 384: 6, 512: 8, 640: 10, 768: 12, 1024: 16, 1280: 16, 1408: 16, 1664: 16}


def vit_mlp_kind(sd):
    """The blocks' MLP as the tensors show it: None (timm Mlp: fc1 [H, D], fc2 [D, H]), "packed"
    (SwiGLUPacked / GluMlp: fc1 [2H, D], fc2 [D, 2H / 2]) or "unpacked" (SwiGLU: fc1_g, fc1_x)."""
    if "blocks.0.mlp.fc1_g.weight" in sd or "blocks.0.mlp.fc1_x.weight" in sd:
        return "unpacked"
    fc1, fc2 = sd.get("blocks.0.mlp.fc1.weight"), sd.get("blocks.0.mlp.fc2.weight")
    if fc1 is None:
        raise ConvertError("ViT layout: blocks.0.mlp.fc1.weight is missing")
    if fc2 is not None and fc1.ndim == 2 and fc2.ndim == 2 and fc1.shape[0] == 2 * fc2.shape[1]:
        return "packed"
    return None


def vit_mlp_hidden(sd, D, glu, take):
    """The MLP's hidden width H (fc2's input), checked first as the rest is checked against it."""
    if glu == "unpacked":
        return take("blocks.0.mlp.fc1_g.weight", (None, D)).shape[0]
    W1 = take("blocks.0.mlp.fc1.weight", (None, D)).shape[0]
    return W1 // 2 if glu else W1


def vit_block_norms(sd, idx):
    """The optional norms inside the blocks (timm qk_norm, scale_attn_norm, scale_mlp_norm), which
    every block must have alike: a set of "qk_norm", "attn_norm", "mlp_norm"."""
    keys = {"qk_norm": ("attn.q_norm.weight", "attn.k_norm.weight"), "attn_norm": ("attn.norm.weight",),
            "mlp_norm": ("mlp.norm.weight",)}
    found = set()
    for what, names in keys.items():
        have = [all("blocks.%d.%s" % (i, n) in sd for n in names) for i in idx]
        some = [any("blocks.%d.%s" % (i, n) in sd for n in names) for i in idx]
        if any(some) and not all(have):
            raise ConvertError("blocks differ in %s: %s is present in only some blocks%s"
                               % (what.replace("_", "-"), " and ".join(names),
                                  " (q_norm and k_norm come together)" if what == "qk_norm" else ""))
        if all(have):
            found.add(what)
    return found


def vit_take_attn_pool(sd, D, take, bias, norm, T):
    """timm's AttentionPoolLatent (global_pool='map', SigLIP): one latent query, q and kv Linears,
    proj, norm and an MLP. Returns the MLP's hidden width."""
    lat = sd.get("attn_pool.latent")
    if lat is None:
        raise ConvertError("ViT layout: attn_pool.latent is missing")
    if lat.ndim == 3 and lat.shape[1] != 1:
        raise ConvertError("attention-pool heads with %d latent queries (latent_len > 1) are not supported by "
                           "lemevit.h; only one" % lat.shape[1])
    if "attn_pool.pos_embed" in sd:
        raise ConvertError("attention-pool heads with their own pos_embed (pos_embed='abs') are not supported by lemevit.h")
    if "attn_pool.q_norm.weight" in sd or "attn_pool.k_norm.weight" in sd:
        raise ConvertError("attention-pool heads with qk-norm are not supported by lemevit.h")
    T["attn_pool.latent"] = take("attn_pool.latent", (1, 1, D))
    for name, rows in (("q", D), ("kv", 2 * D), ("proj", D)):
        T["attn_pool.%s.weight" % name] = take("attn_pool.%s.weight" % name, (rows, D))
        T["attn_pool.%s.bias" % name] = bias("attn_pool.%s.bias" % name, rows)
    norm("attn_pool.norm", "attn_pool.norm")
    Hp = take("attn_pool.mlp.fc1.weight", (None, D)).shape[0]
    T["attn_pool.mlp.fc1.weight"] = take("attn_pool.mlp.fc1.weight", (Hp, D))
    T["attn_pool.mlp.fc1.bias"] = bias("attn_pool.mlp.fc1.bias", Hp)
    T["attn_pool.mlp.fc2.weight"] = take("attn_pool.mlp.fc2.weight", (D, Hp))
    T["attn_pool.mlp.fc2.bias"] = bias("attn_pool.mlp.fc2.bias", D)
    return Hp


REL_TABLE = "relative_position_bias_table"
SHARED_REL_TABLE = "rel_pos_bias." + REL_TABLE


def vit_rel_pos_kind(sd, idx):
    """BEiT's relative position bias as the tensors show it: "none", "block" (a table in every block),
    "shared_table" (one rel_pos_bias table) or "both"."""
    have = ["blocks.%d.attn.%s" % (i, REL_TABLE) in sd for i in idx]
    if any(have) and not all(have):
        raise ConvertError("blocks differ in relative position bias: blocks.N.attn.%s is present in only some "
                           "blocks (%s)" % (REL_TABLE, [i for i, h in zip(idx, have) if not h][:8]))
    shared = SHARED_REL_TABLE in sd
    return {(False, False): "none", (True, False): "block", (False, True): "shared_table", (True, True): "both"}[
        (bool(have) and all(have), shared)]


def vit_rel_grid_of_rows(rows):
    """The square patch grid whose BEiT table has `rows` rows ((2g-1)^2 + 3), or None."""
    r = _isqrt_exact(rows - 3) if rows > 3 else None
    return (r + 1) // 2 if r and r % 2 else None


def vit_rel_index(gh, gw):
    """timm beit.py gen_relative_position_index: the table row of each (query, key) token pair of a
    gh x gw grid with the class token first, flat row-major over ((gh*gw+1), (gh*gw+1))."""
    G, T = gh * gw, gh * gw + 1
    rows = (2 * gh - 1) * (2 * gw - 1) + 3
    out = [0] * (T * T)
    for i in range(G):
        for j in range(G):
            out[(i + 1) * T + j + 1] = (i // gw - j // gw + gh - 1) * (2 * gw - 1) + (i % gw - j % gw + gw - 1)
    for j in range(1, T):
        out[j] = rows - 3
    for i in range(1, T):
        out[i * T] = rows - 2
    out[0] = rows - 1
    return out


@builder("vit")
def build_vit(sd, ctx, source, defaults, name_hint=None):
    """Build a ViT Model from a state dict already in timm naming (README tensor names).

    Every hyper-parameter comes from the tensors except those that leave no trace in them: the
    number of heads (from settings, else the usual head_dim-64 convention), LN eps, activation,
    norm placement, class token position and position-embedding interpolation (from the source
    defaults, side files, mapping file or command line)."""
    st = ctx.settings
    st.update("default", defaults)
    used = set()
    T = OrderedDict()

    def take(key, shape=None, required=True):
        t = sd.get(key)
        if t is None:
            if required:
                raise ConvertError("ViT layout: tensor %s is missing" % key)
            return None
        if shape is not None and (len(shape) != t.ndim or any(a is not None and a != b for a, b in zip(shape, t.shape))):
            raise ConvertError("ViT layout: %s has shape %s, expected %s%s"
                               % (key, list(t.shape), _shape_str(shape), mapping_shape_hint(ctx, key, t.shape, shape)))
        t.check(key)
        used.add(key)
        return t

    # ---- patch embedding
    pw = take("patch_embed.proj.weight")
    if pw.ndim == 2:
        # very early timm: a Linear patch embedding; timm's filter reshapes it to (D, C, p, p)
        c = st.get("in_chans", 3)
        p = _isqrt_exact(pw.shape[1] // c) if pw.shape[1] % c == 0 else None
        if st.get("vit.patch_size"):
            p = st.get("vit.patch_size")[0]
        if not p or c * p * p != pw.shape[1]:
            raise ConvertError("patch_embed.proj.weight is 2-D %s and cannot be reshaped to (D, %d, p, p); "
                               "use --set in_chans=N / --set vit.patch_size=P" % (list(pw.shape), c))
        pw = pw.reshape((pw.shape[0], c, p, p))
        ctx.notes.append("2-D patch_embed.proj.weight reshaped to %s" % list(pw.shape))
    if pw.ndim != 4:
        raise ConvertError("patch_embed.proj.weight has shape %s, expected 4-D" % list(pw.shape))
    D, C, ph, pwid = pw.shape
    T["patch_embed.proj.weight"] = pw
    pb = take("patch_embed.proj.bias", (D,), required=False)
    if pb is None:
        pb = zeros_f32((D,))  # pre_norm (CLIP-style) models have no patch bias: an explicit zero one
        ctx.notes.append("patch_embed.proj.bias absent: written as zeros")
    T["patch_embed.proj.bias"] = pb
    patch_norm = "patch_embed.norm.weight" in sd

    def bias(key, n):
        """An optional bias: the checkpoint's, or explicit zeros (the C side needs no special case)."""
        t = take(key, (n,), required=False)
        return t if t is not None else zeros_f32((n,))

    def norm(src, dst):
        if src + ".weight" in sd and src + ".bias" not in sd:
            # timm's LayerNorm always has a bias; a weight alone is an RmsNorm (AIMv2, timm
            # norm_layer='rmsnorm'), which a LayerNorm with a zero bias would silently get wrong
            raise ConvertError("%s.weight has no %s.bias: an RMSNorm (timm RmsNorm), which lemevit.h does not "
                               "run yet (only LayerNorm)" % (src, src))
        T[dst + ".weight"] = take(src + ".weight", (D,))
        T[dst + ".bias"] = bias(src + ".bias", D)

    if patch_norm:
        norm("patch_embed.norm", "patch_embed.norm")

    # ---- tokens and position embedding
    cls = take("cls_token", (1, 1, D), required=False)
    dist = take("dist_token", (1, 1, D), required=False)
    reg = take("reg_token", (1, None, D), required=False)
    R = reg.shape[1] if reg is not None else 0
    for key, t in (("cls_token", cls), ("dist_token", dist), ("reg_token", reg)):
        if t is not None:
            T[key] = t
    if dist is not None and cls is None:
        raise ConvertError("dist_token without cls_token is not a DeiT layout")
    prefix = (cls is not None) + (dist is not None) + R
    pos = take("pos_embed", (1, None, D), required=False)
    idx = _block_indices(sd)
    rel_pos = vit_rel_pos_kind(sd, idx)
    rel_key = "blocks.0.attn." + REL_TABLE if rel_pos in ("block", "both") else SHARED_REL_TABLE
    if pos is None and rel_pos == "none":
        raise ConvertError("ViT without an absolute pos_embed (e.g. RoPE models) is not supported")
    img_set = st.get("img_size")
    grid = None
    no_embed_class = st.get("vit.no_embed_class")
    if pos is None:
        # BEiT without pos_embed (use_abs_pos_emb=False): the grid from the settings or the table's rows
        rows = sd[rel_key].shape[0] if sd[rel_key].ndim == 2 else 0
        if st.get("vit.pos_grid"):
            grid = tuple(st.get("vit.pos_grid"))
        elif img_set and st.rank("img_size") > 0 and img_set[0] % ph == 0 and img_set[1] % pwid == 0:
            grid = (img_set[0] // ph, img_set[1] // pwid)
        else:
            g = vit_rel_grid_of_rows(rows)
            if g is None:
                raise ConvertError("%s has %d rows: not the table of a square patch grid ((2g-1)^2 + 3); give "
                                   "--img-size H W (or --set vit.pos_grid=GH,GW)" % (rel_key, rows))
            grid = (g, g)
        no_embed_class = 0
        P = grid[0] * grid[1] + prefix
    else:
        P = pos.shape[1]
    if pos is None:
        pass
    elif st.get("vit.pos_grid"):
        grid = tuple(st.get("vit.pos_grid"))
    elif img_set and st.rank("img_size") > 0 and img_set[0] % ph == 0 and img_set[1] % pwid == 0 \
            and (img_set[0] // ph) * (img_set[1] // pwid) in (P, P - prefix):
        grid = (img_set[0] // ph, img_set[1] // pwid)
    if grid is not None:
        n = grid[0] * grid[1]
        if no_embed_class is None:
            no_embed_class = 0 if P - prefix == n else 1
        if P != n + (0 if no_embed_class else prefix):
            raise ConvertError("pos_embed has %d rows; grid %dx%d with %d prefix tokens needs %d"
                               % (P, grid[0], grid[1], prefix, n + (0 if no_embed_class else prefix)))
    else:
        # square grid: the pos_embed covers the prefix tokens unless only the patch count is square
        cands = []
        if no_embed_class in (None, 0) and _isqrt_exact(P - prefix):
            cands.append((0, _isqrt_exact(P - prefix)))
        if no_embed_class in (None, 1) and prefix and _isqrt_exact(P):
            cands.append((1, _isqrt_exact(P)))
        if not cands:
            raise ConvertError("pos_embed has %d rows and %d prefix token(s): not a square grid; give "
                               "--img-size H W (or --set vit.pos_grid=GH,GW)" % (P, prefix))
        if len(cands) > 1:
            raise ConvertError("pos_embed has %d rows and %d prefix tokens: a %dx%d grid with rows for the prefix "
                               "tokens or a %dx%d grid without them (timm no_embed_class); say which with --set "
                               "vit.no_embed_class=0 or 1, or give --img-size H W"
                               % (P, prefix, cands[0][1], cands[0][1], cands[1][1], cands[1][1]))
        no_embed_class, g = cands[0]
        grid = (g, g)
    no_embed_class = int(bool(no_embed_class)) if prefix else 0
    if pos is not None:
        T["pos_embed"] = pos
    if rel_pos != "none":
        if cls is None or dist is not None or R:
            raise ConvertError("a relative position bias table (BEiT) needs exactly one class token and no "
                               "distillation or register tokens")
        rows = (2 * grid[0] - 1) * (2 * grid[1] - 1) + 3
        want_index = None
        for key in ([SHARED_REL_TABLE] if rel_pos in ("shared_table", "both") else []) + \
                (["blocks.%d.attn.%s" % (i, REL_TABLE) for i in idx] if rel_pos in ("block", "both") else []):
            t = sd[key]
            if t.ndim == 2 and t.shape[0] != rows:
                raise ConvertError("%s has %d rows; the %dx%d patch grid needs (2*%d-1)*(2*%d-1)+3 = %d (timm's "
                                   "resize of the table to another size is not supported)"
                                   % (key, t.shape[0], grid[0], grid[1], grid[0], grid[1], rows))
            T[key] = take(key, (rows, None))
            ikey = key[:-len(REL_TABLE)] + "relative_position_index"
            if ikey in sd:   # official BEiT files store the index buffer; it is recomputed, so only checked
                if want_index is None:
                    want_index = vit_rel_index(grid[0], grid[1])
                it = take(ikey, (grid[0] * grid[1] + 1,) * 2)
                if [int(x) for x in it.tolist(ikey)] != want_index:
                    raise ConvertError("%s is not the relative position index of a %dx%d grid with a class token "
                                       "(timm beit.py gen_relative_position_index)" % (ikey, grid[0], grid[1]))
        for i in idx:   # an index buffer without its table has nothing to index
            k = "blocks.%d.attn.relative_position_index" % i
            if k in sd and k not in used:
                raise ConvertError("%s without blocks.%d.attn.%s" % (k, i, REL_TABLE))

    norm_pre = "norm_pre.weight" in sd
    if norm_pre:
        norm("norm_pre", "norm_pre")

    # ---- blocks
    if not idx:
        raise ConvertError("ViT layout: no blocks.N.* tensors")
    if idx != list(range(len(idx))):
        raise ConvertError("ViT blocks are not numbered 0..N-1: %s" % idx)
    depth = len(idx)
    glu = vit_mlp_kind(sd)
    H = vit_mlp_hidden(sd, D, glu, take)
    qkv_bias = "blocks.0.attn.qkv.bias" in sd or "blocks.0.attn.q_bias" in sd
    layer_scale = "blocks.0.ls1.gamma" in sd
    opt_norms = vit_block_norms(sd, idx)
    for i in idx:
        b = "blocks.%d." % i
        if (b + "attn.qkv.bias" in sd or b + "attn.q_bias" in sd) != qkv_bias or (b + "ls1.gamma" in sd) != layer_scale:
            raise ConvertError("blocks differ in qkv bias / layer scale (block %d)" % i)
        norm(b + "norm1", b + "norm1")
        T[b + "attn.qkv.weight"] = take(b + "attn.qkv.weight", (3 * D, D))
        if qkv_bias and b + "attn.q_bias" in sd:
            # BEiT: q_bias and v_bias, no k bias (timm beit.py: cat(q_bias, zeros, v_bias))
            if b + "attn.qkv.bias" in sd:
                raise ConvertError("%sattn has both qkv.bias and q_bias" % b)
            T[b + "attn.qkv.bias"] = concat0([take(b + "attn.q_bias", (D,)), zeros_f32((D,)),
                                              take(b + "attn.v_bias", (D,))], b + "attn.qkv.bias")
        elif qkv_bias:
            T[b + "attn.qkv.bias"] = take(b + "attn.qkv.bias", (3 * D,))
        if "qk_norm" in opt_norms:
            for q in ("q_norm", "k_norm"):
                w = take(b + "attn.%s.weight" % q, (None,))
                T[b + "attn.%s.weight" % q] = w
                T[b + "attn.%s.bias" % q] = bias(b + "attn.%s.bias" % q, w.shape[0])
        if "attn_norm" in opt_norms:
            norm(b + "attn.norm", b + "attn.norm")
        T[b + "attn.proj.weight"] = take(b + "attn.proj.weight", (D, D))
        T[b + "attn.proj.bias"] = bias(b + "attn.proj.bias", D)
        if layer_scale:
            T[b + "ls1.gamma"] = take(b + "ls1.gamma", (D,))
        norm(b + "norm2", b + "norm2")
        if glu == "unpacked":
            # timm SwiGLU: act(fc1_g(x)) * fc1_x(x), stored packed as SwiGLUPacked's fc1 = [gate rows; value rows]
            parts = [take(b + "mlp.fc1_g.weight", (H, D)), take(b + "mlp.fc1_x.weight", (H, D))]
            T[b + "mlp.fc1.weight"] = concat0(parts, b + "mlp.fc1.weight")
            T[b + "mlp.fc1.bias"] = concat0([bias(b + "mlp.fc1_g.bias", H), bias(b + "mlp.fc1_x.bias", H)],
                                            b + "mlp.fc1.bias")
        else:
            W1 = 2 * H if glu else H
            T[b + "mlp.fc1.weight"] = take(b + "mlp.fc1.weight", (W1, D))
            T[b + "mlp.fc1.bias"] = bias(b + "mlp.fc1.bias", W1)
        if "mlp_norm" in opt_norms:
            T[b + "mlp.norm.weight"] = take(b + "mlp.norm.weight", (H,))
            T[b + "mlp.norm.bias"] = bias(b + "mlp.norm.bias", H)
        T[b + "mlp.fc2.weight"] = take(b + "mlp.fc2.weight", (D, H))
        T[b + "mlp.fc2.bias"] = bias(b + "mlp.fc2.bias", D)
        if layer_scale:
            T[b + "ls2.gamma"] = take(b + "ls2.gamma", (D,))

    # ---- final norm, pooling, pre-logits, heads
    pool_map = "attn_pool.latent" in sd or "attn_pool.q.weight" in sd
    if pool_map:
        map_hidden = vit_take_attn_pool(sd, D, take, bias, norm, T)
    final_norm = "norm.weight" in sd
    fc_norm = "fc_norm.weight" in sd
    if final_norm:
        norm("norm", "norm")
    if fc_norm:
        norm("fc_norm", "fc_norm")
    pool = st.get("vit.pool")
    if fc_norm or cls is None or pool_map:
        ctx.determined.add("vit.pool")   # no class token to pool, or timm's fc_norm that comes with avg
    if pool_map:
        if st.rank("vit.pool") >= 2 and pool != "map":
            raise ConvertError("vit.pool=%s was given but the checkpoint has an attention-pool head (attn_pool.*)" % pool)
        pool = "map"
    elif pool == "map":
        raise ConvertError("vit.pool=map but the checkpoint has no attention-pool head (attn_pool.*)")
    if pool is None:
        pool = "avg" if (fc_norm or cls is None) else "token"
    if pool == "token" and cls is None:
        raise ConvertError("vit.pool=token but the model has no class token")
    F = D
    pre_logits = 0
    if "pre_logits.fc.weight" in sd:
        wpl = take("pre_logits.fc.weight", (None, D))
        pre_logits = F = wpl.shape[0]
        T["pre_logits.fc.weight"] = wpl
        T["pre_logits.fc.bias"] = bias("pre_logits.fc.bias", F)

    E = vit_embedding_proj(sd, take, T, D, pre_logits, dist)
    F = E or F
    want = getattr(ctx.opts, "num_classes", None)
    head_w = sd.get("head.weight")
    if head_w is not None and want != 0:
        take("head.weight", (None, F))   # checked first: its rows give the class count
    K = head_w.shape[0] if head_w is not None else 0
    if head_w is not None and want == 0:
        used.update(k for k in ("head.weight", "head.bias", "head_dist.weight", "head_dist.bias") if k in sd)
        ctx.notes.append("classifier head (%d classes) dropped by --num-classes 0" % K)
        K = 0
    elif head_w is not None:
        if want is not None and want != K:
            raise ConvertError("--num-classes %d but the checkpoint's head has %d classes (use --num-classes 0 "
                               "to drop the head)" % (want, K))
        T["head.weight"] = take("head.weight", (K, F))
        T["head.bias"] = bias("head.bias", K)
        if dist is not None and "head_dist.weight" in sd:
            T["head_dist.weight"] = take("head_dist.weight", (K, F))
            T["head_dist.bias"] = bias("head_dist.bias", K)
        elif dist is not None:
            # a distillation token but one head on the class token (HF DeiTForImageClassification).
            # The .lmv graph averages head(cls) and head_dist(dist): a doubled head and a zero
            # head_dist give exactly head(cls) (scaling by 2 and 0.5 is exact in floating point).
            T["head.weight"] = scale_f32(T["head.weight"], 2.0)
            T["head.bias"] = scale_f32(T["head.bias"], 2.0)
            T["head_dist.weight"] = zeros_f32((K, F))
            T["head_dist.bias"] = zeros_f32((K,))
            ctx.notes.append("distillation token without a distillation head: head doubled, zero head_dist "
                             "(logits = head(cls token))")
    elif want:
        raise ConvertError("--num-classes %d but the checkpoint has no classifier head" % want)
    if "head_dist.weight" in sd and "head_dist.weight" not in used:
        raise ConvertError("head_dist without dist_token")

    # ---- heads count, eps, activation, ...
    heads = st.get("vit.num_heads")
    if "qk_norm" in opt_norms and st.rank("vit.num_heads") <= 0:
        hd = T["blocks.0.attn.q_norm.weight"].shape[0]
        if hd and D % hd == 0:
            heads = D // hd   # qk-norm's LayerNorm(head_dim) shows the head width
            ctx.determined.add("vit.num_heads")
    if rel_pos != "none" and st.rank("vit.num_heads") <= 0:
        heads = T[rel_key].shape[1]   # the bias tables have one column per head
        ctx.determined.add("vit.num_heads")
    if heads is None:
        heads = VIT_HEADS_BY_DIM.get(D) or (D // 64 if D % 64 == 0 else None)
        if heads is None:
            raise ConvertError("cannot guess the number of attention heads for width %d; pass --num-heads N" % D)
        if D not in VIT_HEADS_BY_DIM:
            ctx.warn("number of heads not stored in the checkpoint; guessed %d (head_dim 64) - pass "
                     "--num-heads if wrong" % heads)
    if heads <= 0 or D % heads:
        raise ConvertError("embed dim %d is not divisible by %d heads" % (D, heads))
    if "qk_norm" in opt_norms and T["blocks.0.attn.q_norm.weight"].shape[0] != D // heads:
        raise ConvertError("blocks.0.attn.q_norm.weight has %d values but the head width is %d (%d heads); "
                           "pass --num-heads N" % (T["blocks.0.attn.q_norm.weight"].shape[0], D // heads, heads))
    for k in T:
        if k.endswith(REL_TABLE) and T[k].shape[1] != heads:
            raise ConvertError("%s has %d columns but the model has %d heads (one column per head)"
                               % (k, T[k].shape[1], heads))
    if "qk_norm" in opt_norms:
        for i in idx:
            for q in ("q_norm", "k_norm"):
                for part in ("weight", "bias"):
                    k = "blocks.%d.attn.%s.%s" % (i, q, part)
                    if tuple(T[k].shape) != (D // heads,):
                        raise ConvertError("%s has shape %s, expected [%d]" % (k, list(T[k].shape), D // heads))

    img = tuple(img_set) if img_set else (grid[0] * ph, grid[1] * pwid)
    cfg = OrderedDict()
    cfg["in_chans"] = C
    cfg["img_size"] = list(img)
    cfg["num_classes"] = K
    cfg["num_features"] = F
    cfg["vit.embed_dim"] = D
    cfg["vit.depth"] = depth
    cfg["vit.num_heads"] = heads
    cfg["vit.mlp_hidden"] = H
    cfg["vit.patch_size"] = [ph, pwid]
    cfg["vit.pos_grid"] = list(grid)
    cfg["vit.norm_eps"] = st.get("vit.norm_eps", 1e-6)
    cfg["vit.act"] = st.get("vit.act", "gelu")
    if glu and st.rank("vit.act") <= 0:
        cfg["vit.act"] = "silu"   # timm's SwiGLU / SwiGLUPacked models are built with act_layer=nn.SiLU
    cfg["vit.mlp"] = "glu" if glu else "mlp"
    cfg["vit.norm_first"] = st.get("vit.norm_first", 1)
    cfg["vit.class_token"] = int(cls is not None)
    cfg["vit.class_last"] = st.get("vit.class_last", 0) if cls is not None else 0
    cfg["vit.dist_token"] = int(dist is not None)
    cfg["vit.reg_tokens"] = R
    cfg["vit.no_embed_class"] = no_embed_class
    cfg["vit.pool"] = pool
    cfg["vit.pool_prefix"] = int(st.get("vit.pool_prefix", 0))   # the map head also attends to the prefix tokens
    if pool != "map" or not prefix:
        ctx.determined.add("vit.pool_prefix")   # an option only of a map head over a model with prefix tokens
    if cfg["vit.pool_prefix"] and pool != "map":
        raise ConvertError("vit.pool_prefix=1 (timm pool_include_prefix) is only supported with the attention-pool "
                           "('map') head; this checkpoint pools by %s" % pool)
    if pool == "map":
        if dist is not None or pre_logits:
            raise ConvertError("an attention-pool head with a distillation token or pre_logits is not a timm layout")
    cfg["vit.qkv_bias"] = int(qkv_bias)
    cfg["vit.layer_scale"] = int(layer_scale)
    cfg["vit.patch_norm"] = int(patch_norm)
    cfg["vit.norm_pre"] = int(norm_pre)
    cfg["vit.final_norm"] = int(final_norm)
    cfg["vit.fc_norm"] = int(fc_norm)
    cfg["vit.pre_logits"] = pre_logits
    cfg["vit.attn_scale"] = st.get("vit.attn_scale", 0.0)
    cfg["vit.pos_interp"] = st.get("vit.pos_interp", "bicubic")
    cfg["vit.block"] = st.get("vit.block", "pre")
    cfg["vit.proj"] = E
    cfg["vit.abs_pos"] = int(pos is not None)
    cfg["vit.rel_pos"] = rel_pos
    if cfg["vit.block"] == "res_post" and (cfg["vit.norm_first"] == 0 or layer_scale):
        raise ConvertError("vit.block=res_post (timm ResPostBlock) has no layer scale and no separate "
                           "vit.norm_first=0 form; this checkpoint has %s"
                           % ("layer scale tensors" if layer_scale else "vit.norm_first=0"))
    if cfg["vit.class_last"] and (dist is not None or R or no_embed_class):
        raise ConvertError("vit.class_last=1 is only supported with a single class token covered by pos_embed")
    if cfg["vit.norm_first"] == 0 and (norm_pre or layer_scale):
        raise ConvertError("post-norm blocks (vit.norm_first=0) with norm_pre / layer scale are not supported")
    # structural settings stated by a mapping file / --set must agree with the tensors
    for k in sorted(VIT_STRUCTURAL):
        if st.explicit(k) and k in cfg and k not in ("num_classes",):
            v = st.get(k)
            if v != cfg[k]:
                raise ConvertError("%s is %r according to the tensors, but %r was given" % (k, cfg[k], v))
    for k in cfg:
        cfg[k] = coerce(k, cfg[k])
    return Model("vit", source, cfg, T, used, name=name_hint or vit_name(cfg, source))


def vit_embedding_proj(sd, take, T, D, pre_logits, dist):
    """CLIP's embedding projection, in canonical names proj.weight [E, D] (a bias-free Linear after
    the pooled features): placed in T; returns E, or 0 when the model has none."""
    if "proj.weight" not in sd:
        return 0
    if pre_logits or dist is not None:
        raise ConvertError("an embedding projection (proj.weight) together with pre_logits or a distillation "
                           "token is not a layout lemevit.h runs")
    if "proj.bias" in sd:
        raise ConvertError("proj.bias: the embedding projection has no bias in the graph lemevit.h runs")
    w = take("proj.weight", (None, D))
    T["proj.weight"] = w
    return w.shape[0]


def vit_name(cfg, source):
    D, depth, p = cfg["vit.embed_dim"], cfg["vit.depth"], cfg["vit.patch_size"][0]
    img = cfg["img_size"][0]
    if source == "torchvision":
        size = {(768, 12): "b", (1024, 24): "l", (1280, 32): "h"}.get((D, depth))
        if size:
            return "vit_%s_%d" % (size, p)
    size = {(192, 12): "tiny", (384, 12): "small", (768, 12): "base", (1024, 24): "large",
            (1280, 32): "huge", (512, 12): "medium"}.get((D, depth), "d%d_l%d" % (D, depth))
    if source == "beit":
        return "beit_%s_patch%d_%d" % (size, p, img)
    if source == "deit":
        return "deit%s_%s%s_patch%d_%d" % ("3" if cfg["vit.layer_scale"] else "", size,
                                           "_distilled" if cfg["vit.dist_token"] else "", p, img)
    return "vit_%s_patch%d_%d" % (size, p, img)


# ---------------------------------------------------------------------------------- timm / DeiT

# timm ViT model names: the width each size word stands for (a name whose size does not match the
# tensors describes another model and is not used) and the names whose registered options differ
# from timm's defaults (LayerNorm eps 1e-6, GELU, pre-norm blocks, head_dim 64), as registered in
# timm's vision_transformer.py
TIMM_VIT_NAME = re.compile(r"^(vit|deit|deit3|beit3)_([a-z0-9]+)_[a-z0-9_]+$")
TIMM_SIZE_WIDTH = {"tiny": 192, "small": 384, "base": 768, "large": 1024, "huge": 1280, "giant": 1408,
                   "gigantic": 1664, "medium": 512, "mediumd": 512, "betwixt": 640, "so400m": 1152,
                   "giantopt": 1536}
TIMM_NAME_RULES = [
    (r"_rpn_", {"vit.block": "res_post"}),                       # ResPostBlock: x + norm1(attn(x))
    (r"quickgelu", {"vit.act": "quickgelu"}),                   # act_layer='quick_gelu'
    (r"^vit_(base_patch32_siglip|large_patch16_siglip(_gap)?_512|so400m_patch16_siglip|giantopt_patch16_siglip)",
     {"vit.act": "gelu_tanh"}),                                  # SigLIP towers with act_layer='gelu_tanh'
    (r"^vit_[a-z0-9]+_patch\d+(_plus)?_clip_", {"vit.norm_eps": 1e-5}),   # CLIP towers: LayerNorm eps 1e-5
    (r"^vit_base_patch16_gap_224$", {"vit.num_heads": 16}),
    (r"^vit_(so400m|giantopt)_", {"vit.num_heads": 16}),
    (r"^vit_base_patch16_plus_clip_", {"vit.num_heads": 14}),         # 896 wide (TIMM_NAME_WIDTH)
    (r"^beit3_", {"vit.norm_eps": 1e-5}),                             # BEiT-3: LayerNorm eps 1e-5
    (r"_reg\d+_dinov2$", {"vit.no_embed_class": 1}),                  # DINOv2 with registers
]
# names whose size word stands for another width than TIMM_SIZE_WIDTH says
TIMM_NAME_WIDTH = [(r"^vit_base_patch16_plus_clip_", 896), (r"^vit_giant_patch14_(reg\d+_)?dinov2$", 1536)]
# timm's small test models: name -> (width, their settings) (head_dim 32, not the usual 64; test_vit3's
# attention pool reads the register token too)
TIMM_TEST_VITS = {"test_vit": (64, {"vit.num_heads": 2}), "test_vit2": (64, {"vit.num_heads": 2}),
                  "test_vit3": (96, {"vit.num_heads": 3, "vit.pool_prefix": 1}), "test_vit4": (96, {"vit.num_heads": 3})}
# timm models whose tensors look like a plain ViT's (or BEiT's) but whose graph has something lemevit.h
# does not run and no tensor shows (timm keeps the rotary tables as non-persistent buffers): refused by
# their name (eva.py's eva02_* and vit_*_rope_*)
TIMM_NAME_REFUSED = [(r"^eva02_|_rope_", "rotary position embeddings (RoPE)")]
TIMM_ACT = {"gelu": "gelu", "gelu_tanh": "gelu_tanh", "quick_gelu": "quickgelu", "quickgelu": "quickgelu",
            "relu": "relu", "silu": "silu", "swish": "silu"}


def vit_metadata_settings(sd, ctx):
    """Graph options stated by the checkpoint's metadata (metadata.Hints): the timm model name
    and its keyword arguments.  Returns settings for the 'sidecar' layer; a kwarg this library
    cannot run is refused unless the command line or a mapping file sets that option."""
    h, st = ctx.hints, ctx.settings
    s = {}
    if h is None:
        return s
    name = (h.name or "").split(".")[0]
    for rx, what in TIMM_NAME_REFUSED:
        if re.search(rx, name):
            raise ConvertError("the model name %s (%s) is a timm model with %s, which lemevit.h does not run yet "
                               "(its tensors do not show them; converted, it would give wrong answers)"
                               % (name, h.name_src, what))
    m = TIMM_VIT_NAME.match(name)
    D = sd["patch_embed.proj.weight"].shape[0] if "patch_embed.proj.weight" in sd else None
    width = TIMM_SIZE_WIDTH.get(m.group(2)) if m else None
    for rx, w in TIMM_NAME_WIDTH:
        if m and re.search(rx, name):
            width = w
    if name in TIMM_TEST_VITS and TIMM_TEST_VITS[name][0] == D:
        s.update({"vit.norm_eps": 1e-6, "vit.act": "gelu", "vit.block": "pre"})
        s.update(TIMM_TEST_VITS[name][1])
        ctx.notes.append("graph options from the model name %s (%s)" % (name, h.name_src))
    elif m and width not in (None, D):
        ctx.warn("the model name %s (%s) is %d wide but the tensors are %s wide: the name is not used"
                 % (name, h.name_src, width, D))
    elif m:
        try:
            gated = vit_mlp_kind(sd) is not None
        except ConvertError:
            gated = False
        # timm registers its SwiGLU / SwiGLUPacked ViTs with act_layer=nn.SiLU
        s.update({"vit.norm_eps": 1e-6, "vit.act": "silu" if gated else "gelu", "vit.block": "pre"})
        if D in VIT_HEADS_BY_DIM:
            s["vit.num_heads"] = VIT_HEADS_BY_DIM[D]
        if "cls_token" in sd and "fc_norm.weight" not in sd:
            s["vit.pool"] = "token"
        for rx, vals in TIMM_NAME_RULES:
            if re.search(rx, name):
                s.update(vals)
        ctx.notes.append("graph options from the model name %s (%s)" % (name, h.name_src))
    kw, src = h.kwargs or {}, h.kwargs_src

    def refuse(key, field, value, what):
        if st.rank(key) >= 2:   # the mapping file or the command line decides
            return
        raise ConvertError("%s: %s=%s is %s; if the model is one this library runs, say which with %s"
                           % (src, field, _short(value), what, FAMILIES["vit"].assumable[key]))
    if "act_layer" in kw:
        a = kw["act_layer"]
        if isinstance(a, str) and a.lower() in TIMM_ACT:
            s["vit.act"] = TIMM_ACT[a.lower()]
        else:
            refuse("vit.act", "act_layer", a, "not an activation lemevit.h runs (gelu, gelu_tanh, quick_gelu, relu, silu)")
    if "global_pool" in kw:
        g = kw["global_pool"]
        if g in ("avg", "token", "map"):
            s["vit.pool"] = g
        else:
            refuse("vit.pool", "global_pool", g, "not a pooling lemevit.h runs (token, avg, map)")
    if "block_fn" in kw:
        b = kw["block_fn"]
        bname = b.rsplit(".", 1)[-1] if isinstance(b, str) else getattr(b, "_lmv_qualname", "").rsplit(".", 1)[-1]
        if bname in ("Block", "ResPostBlock"):
            s["vit.block"] = "pre" if bname == "Block" else "res_post"
        else:
            refuse("vit.block", "block_fn", b, "not a block lemevit.h runs (Block, ResPostBlock)")
    if isinstance(kw.get("pool_include_prefix"), bool):
        s["vit.pool_prefix"] = int(kw["pool_include_prefix"])
    if isinstance(kw.get("num_heads"), int) and not isinstance(kw.get("num_heads"), bool):
        s["vit.num_heads"] = kw["num_heads"]
    return s


# timm ViT blocks lemevit.h does not run, known by their tensors: refused by name rather than as an
# unknown layout or a tensor that could not be placed
TIMM_UNSUPPORTED_BLOCKS = [
    (r"^blocks\.\d+\.(attns|ffns)\.\d+\.", "timm's parallel blocks (ParallelThingsBlock, the *_18x2 models)"),
    (r"^blocks\.\d+\.in_proj\.weight$", "timm's fused parallel block (ParallelScalingBlock, the *_xp_* and *pwee models)"),
    (r"^blocks\.\d+\.attn\.(lambda_q1|lambda_a|sub_norm\.weight)$", "differential attention (timm DiffAttention)"),
]


@detector("vit", "timm/DeiT ViT")
def detect_timm_vit(sd, ctx):
    if "patch_embed.proj.weight" in sd:
        for rx, what in TIMM_UNSUPPORTED_BLOCKS:
            key = next((k for k in sd if re.match(rx, k)), None)
            if key is not None:
                raise ConvertError("%s: %s, which lemevit.h does not run" % (key, what))
    has_blocks = any(re.match(r"^blocks\.\d+\.attn\.qkv\.weight$", k) for k in sd)
    # BEiT (timm beit.py, microsoft/unilm beit): q_bias/v_bias, relative position bias tables, and
    # often no absolute pos_embed
    beit = SHARED_REL_TABLE in sd or any(re.match(r"^blocks\.\d+\.attn\.(q_bias|%s)$" % REL_TABLE, k) for k in sd)
    if "patch_embed.proj.weight" not in sd or not has_blocks or ("pos_embed" not in sd and not beit):
        return None
    if "mask_token" in sd or "register_tokens" in sd:
        return None   # facebookresearch/dinov2 hub files (families/clip.py)
    deit3 = any(re.match(r"^blocks\.\d+\.gamma_[12]$", k) for k in sd)
    # DeiT-III stores layer scale as gamma_1/gamma_2 (timm's checkpoint filter renames them too)
    sd, back = _rename(sd, [(r"^(blocks\.\d+)\.gamma_([12])$", r"\1.ls\2.gamma")])
    args = ctx.info.get("args") or {}
    arch_name = args.get("model") if isinstance(args.get("model"), str) else None
    wrapper = ctx.info.get("path") or []
    official_deit = wrapper[:1] == ["model"] or wrapper[:1] == ["model_ema"]
    is_deit = not beit and ("dist_token" in sd or deit3 or (arch_name or "").startswith("deit") or
                            (official_deit and not (arch_name or "").startswith("vit")))
    source = "beit" if beit else "deit" if is_deit else "timm"
    defaults = dict(PRE_DEIT if is_deit else PRE_TIMM)
    defaults.update({"vit.norm_eps": 1e-6, "vit.act": "gelu", "vit.pos_interp": "bicubic_aa"})
    hint_name = ((ctx.hints.name if ctx.hints is not None else None) or arch_name or "").split(".")[0]
    if beit and hint_name.startswith("beitv2"):
        # timm's BEiT v2 weights were fine-tuned with ImageNet mean/std (BEiT v1: 0.5/0.5)
        defaults.update({"pre.mean": PRE_DEIT["pre.mean"], "pre.std": PRE_DEIT["pre.std"]})
        if hint_name.startswith("beitv2_large"):
            defaults["pre.crop_pct"] = 0.95
        ctx.notes.append("BEiT v2 (model name %s): ImageNet mean/std" % hint_name)
    # timm training arguments may carry the data config used
    side = {}
    if isinstance(args.get("mean"), (list, tuple)) and args.get("mean"):
        side["pre.mean"] = _side_value("the checkpoint's training args", "mean", "pre.mean", list(args["mean"]))
    if isinstance(args.get("std"), (list, tuple)) and args.get("std"):
        side["pre.std"] = _side_value("the checkpoint's training args", "std", "pre.std", list(args["std"]))
    if isinstance(args.get("crop_pct"), float):
        side["pre.crop_pct"] = args["crop_pct"]
    if args.get("interpolation") in ("bilinear", "bicubic", "nearest"):
        side["pre.interp"] = args["interpolation"]
    side.update(vit_metadata_settings(sd, ctx))
    ctx.settings.update("sidecar", side)
    fc1 = sd.get("blocks.0.mlp.fc1.weight")
    if source == "timm" and "blocks.7.norm1.weight" in sd and "blocks.8.norm1.weight" not in sd and \
            fc1 is not None and tuple(fc1.shape) == (2304, 768) and "blocks.0.attn.qkv.bias" not in sd:
        # timm's first vit_small_patch16_224 (2020): 768 wide, 8 deep, 8 heads, mlp ratio 3, no qkv
        # bias, qk_scale 768**-0.5 for its weights, torch's default LayerNorm eps 1e-5
        defaults.update({"vit.num_heads": 8, "vit.attn_scale": 768 ** -0.5, "vit.norm_eps": 1e-5})
        ctx.notes.append("looks like timm's original vit_small_patch16_224: 8 heads, attn scale 768^-0.5, eps 1e-5")
    m = build_vit(sd, ctx, source, defaults, name_hint=arch_name)
    m.used = set(back[k] for k in m.used)
    if deit3:
        m.notes.append("%s gamma_1/gamma_2 renamed to ls1.gamma/ls2.gamma" % ("BEiT" if beit else "DeiT-III"))
    return m


# ---------------------------------------------------------------------------------- torchvision

TORCHVISION_RULES = [
    (r"^class_token$", "cls_token"),
    (r"^conv_proj\.", "patch_embed.proj."),
    (r"^encoder\.pos_embedding$", "pos_embed"),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.", r"blocks.\1."),
    (r"^(blocks\.\d+)\.ln_1\.", r"\1.norm1."),
    (r"^(blocks\.\d+)\.ln_2\.", r"\1.norm2."),
    (r"^(blocks\.\d+)\.self_attention\.in_proj_weight$", r"\1.attn.qkv.weight"),
    (r"^(blocks\.\d+)\.self_attention\.in_proj_bias$", r"\1.attn.qkv.bias"),
    (r"^(blocks\.\d+)\.self_attention\.out_proj\.", r"\1.attn.proj."),
    (r"^(blocks\.\d+)\.mlp\.(0|linear_1)\.", r"\1.mlp.fc1."),
    (r"^(blocks\.\d+)\.mlp\.(3|linear_2)\.", r"\1.mlp.fc2."),
    (r"^encoder\.ln\.", "norm."),
    (r"^heads\.head\.", "head."),
    (r"^heads\.pre_logits\.", "pre_logits.fc."),
]


@detector("vit", "torchvision ViT")
def detect_torchvision_vit(sd, ctx):
    if "conv_proj.weight" not in sd or \
            "encoder.layers.encoder_layer_0.self_attention.in_proj_weight" not in sd:
        return None
    renamed, back = _rename(sd, TORCHVISION_RULES)
    defaults = dict(PRE_TORCHVISION)
    defaults.update({"vit.norm_eps": 1e-6, "vit.act": "gelu", "vit.pos_interp": "bicubic_ac"})
    # torchvision's VisionTransformer has one block form, GELU and class-token pooling, no options
    ctx.determined.update(("vit.block", "vit.act", "vit.pool"))
    m = build_vit(renamed, ctx, "torchvision", defaults)
    m.used = set(back[k] for k in m.used)
    return m


# ---------------------------------------------------------------------------------- Hugging Face

HF_RULES = [
    (r"^embeddings\.cls_token$", "cls_token"),
    (r"^embeddings\.distillation_token$", "dist_token"),
    (r"^embeddings\.position_embeddings$", "pos_embed"),
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^encoder\.layer\.(\d+)\.", r"blocks.\1."),
    (r"^(blocks\.\d+)\.layernorm_before\.", r"\1.norm1."),
    (r"^(blocks\.\d+)\.layernorm_after\.", r"\1.norm2."),
    (r"^(blocks\.\d+)\.attention\.output\.dense\.", r"\1.attn.proj."),
    (r"^(blocks\.\d+)\.intermediate\.dense\.", r"\1.mlp.fc1."),
    (r"^(blocks\.\d+)\.output\.dense\.", r"\1.mlp.fc2."),
    (r"^layernorm\.", "norm."),
    (r"^classifier\.", "head."),
    (r"^cls_classifier\.", "head."),
    (r"^distillation_classifier\.", "head_dist."),
]
HF_ACT = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh",
          "relu": "relu"}
HF_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}


@detector("vit", "Hugging Face ViT/DeiT")
def detect_hf_vit(sd, ctx):
    model_prefix = None
    for p in ("vit.", "deit.", ""):
        if p + "embeddings.patch_embeddings.projection.weight" in sd:
            model_prefix = p
            break
    if model_prefix is None or model_prefix + "encoder.layer.0.attention.attention.query.weight" not in sd:
        return None
    if model_prefix + "encoder.layer.0.layer_scale1.lambda1" in sd:
        return None   # Hugging Face Dinov2Model (families/clip.py)
    used_extra = set()
    body = OrderedDict()
    for k, v in sd.items():
        if model_prefix and k.startswith(model_prefix):
            body[k[len(model_prefix):]] = (k, v)
        else:
            body[k] = (k, v)
    # q, k, v -> qkv (rows q, k, v as timm and nn.MultiheadAttention)
    merged = OrderedDict()
    origin = {}
    for k, (orig, v) in body.items():
        m = re.match(r"^encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)$", k)
        if m:
            if m.group(2) != "query":
                continue
            parts, origs = [], []
            for which in ("query", "key", "value"):
                kk = "encoder.layer.%s.attention.attention.%s.%s" % (m.group(1), which, m.group(3))
                if kk not in body:
                    raise ConvertError("Hugging Face ViT: %s is missing" % (model_prefix + kk))
                parts.append(body[kk][1])
                origs.append(body[kk][0])
            nk = "blocks.%s.attn.qkv.%s" % (m.group(1), m.group(3))
            merged[nk] = concat0(parts, nk)
            origin[nk] = origs
            continue
        if k.startswith("pooler.dense.") or k == "embeddings.mask_token":
            used_extra.add(orig)   # ViTModel pooler / masked-image-modeling token: not used for classification
            ctx.notes.append("ignored %s (not used by image classification)" % orig)
            continue
        nk = k
        for pat, rep in HF_RULES:
            nk = re.sub(pat, rep, nk)
        if nk in merged:
            raise ConvertError("two tensors map to %s" % nk)
        merged[nk] = v
        origin[nk] = [orig]

    is_deit = "dist_token" in merged or model_prefix == "deit."
    cfg, cfg_path = _read_json_beside(ctx.path, "config.json")
    pre, pre_path = _read_json_beside(ctx.path, "preprocessor_config.json")
    defaults = dict(PRE_HF_DEIT if is_deit else PRE_HF_VIT)
    defaults.update({"vit.norm_eps": 1e-12, "vit.act": "gelu", "vit.pos_interp": "bicubic"})
    side = {}
    labels = None
    # the Hugging Face ViT/DeiT modules have one block form and classify from the class token
    ctx.determined.update(("vit.block", "vit.pool"))
    if isinstance(cfg, dict):
        ctx.notes.append("read %s" % cfg_path)
        if "layer_norm_eps" in cfg:
            side["vit.norm_eps"] = _side_value(cfg_path, "layer_norm_eps", "vit.norm_eps", cfg["layer_norm_eps"])
        if "num_attention_heads" in cfg:
            side["vit.num_heads"] = _side_value(cfg_path, "num_attention_heads", "vit.num_heads",
                                                cfg["num_attention_heads"])
        act = cfg.get("hidden_act")
        if act is not None:
            if not isinstance(act, str) or act not in HF_ACT:
                raise ConvertError("%s: hidden_act %s is not supported (known: %s)"
                                   % (cfg_path, _short(act), ", ".join(sorted(HF_ACT))))
            side["vit.act"] = HF_ACT[act]
        if cfg.get("image_size") is not None:
            side["img_size"] = _side_value(cfg_path, "image_size", "img_size", cfg["image_size"])
        id2label = cfg.get("id2label")
        if isinstance(id2label, dict) and id2label:
            try:
                items = sorted((int(k), str(v)) for k, v in id2label.items())
                names = [v for _, v in items]
                if [k for k, _ in items] == list(range(len(items))) and \
                        not all(re.match(r"^LABEL_\d+$", n) for n in names):
                    labels = names
            except ValueError:
                pass
    if isinstance(pre, dict):
        ctx.notes.append("read %s" % pre_path)
        if isinstance(pre.get("image_mean"), list):
            side["pre.mean"] = _side_value(pre_path, "image_mean", "pre.mean", pre["image_mean"])
        if isinstance(pre.get("image_std"), list):
            side["pre.std"] = _side_value(pre_path, "image_std", "pre.std", pre["image_std"])
        if _is_int(pre.get("resample")) and pre.get("resample") in HF_RESAMPLE:
            side["pre.interp"] = HF_RESAMPLE[pre["resample"]]
        size = pre.get("size")
        crop = pre.get("crop_size")
        if pre.get("do_center_crop") and isinstance(crop, dict) and "height" in crop:
            side["img_size"] = _side_value(pre_path, "crop_size", "img_size", [crop.get("height"), crop.get("width")])
            if isinstance(size, dict) and "shortest_edge" in size:
                side["pre.resize"] = _side_value(pre_path, "size.shortest_edge", "pre.resize", size["shortest_edge"])
            elif isinstance(size, dict) and "height" in size:
                hw = _side_value(pre_path, "size", "pre.crop", [size.get("height"), size.get("width")])
                side["pre.resize"] = min(hw)
        elif isinstance(size, dict) and "height" in size and pre.get("do_resize", True):
            side["pre.resize"] = 0
            side["pre.crop_pct"] = 1.0
    ctx.settings.update("sidecar", side)
    m = build_vit(merged, ctx, "hf", defaults)
    used = set(used_extra)
    for k in m.used:
        used.update(origin.get(k, [k]))
    m.used = used
    m.labels = labels
    return m


