"""ViT / DeiT: timm, DeiT, torchvision and Hugging Face layouts."""

import json
import os
import re
from collections import OrderedDict

from ..base import ConvertError, _short, lmvfile
from ..family import (Model, PRE_DEIT, PRE_HF_DEIT, PRE_HF_VIT, PRE_TIMM, PRE_TORCHVISION, _block_indices, _isqrt_exact,
                      _read_json_beside, _rename, side_value as _side_value)
from ..hf import encoder_settings, processor_settings
from ..mapping import _shape_str, mapping_shape_hint
from ..registry import FAMILIES, builder, detector, register_family
from ..settings import coerce
from ..tensors import Tensor, _is_int, concat0, scale_f32, zeros_f32

VIT_KEYS = OrderedDict([
    ("vit.embed_dim", "i"), ("vit.depth", "i"), ("vit.num_heads", "i"), ("vit.mlp_hidden", "i"),
    ("vit.patch_size", "i2"), ("vit.pos_grid", "i2"), ("vit.norm_eps", "f"), ("vit.act", "s"),
    ("vit.norm_first", "i"), ("vit.class_token", "i"), ("vit.class_last", "i"), ("vit.dist_token", "i"),
    ("vit.reg_tokens", "i"), ("vit.no_embed_class", "i"), ("vit.pool", "s"), ("vit.qkv_bias", "i"),
    ("vit.layer_scale", "i"), ("vit.patch_norm", "i"), ("vit.norm_pre", "i"), ("vit.final_norm", "i"),
    ("vit.fc_norm", "i"), ("vit.pre_logits", "i"), ("vit.attn_scale", "f"), ("vit.pos_interp", "s"),
    ("vit.block", "s"), ("vit.mlp", "s"), ("vit.pool_prefix", "i"), ("vit.proj", "i"), ("vit.abs_pos", "i"),
    ("vit.rel_pos", "s"), ("vit.rel_mlp", "s"), ("vit.parallel", "i"), ("vit.norm", "s"), ("vit.map_heads", "i"),
])
register_family("vit", VIT_KEYS, choices={
    "vit.act": ("gelu", "gelu_tanh", "relu", "quickgelu", "silu"),
    "vit.pool": ("token", "avg", "map", "token_avg"),
    "vit.mlp": ("mlp", "glu"),
    "vit.pos_interp": ("bicubic", "bicubic_aa", "bicubic_ac", "bilinear", "bicubic_dinov2"),
    "vit.block": ("pre", "res_post", "parallel_scaling"),
    "vit.rel_pos": ("none", "block", "shared_table", "both", "mlp_block", "mlp_shared"),
    "vit.rel_mlp": ("cr", "swin", "rw"),
    "vit.norm": ("layer", "rms"),
}, assumable=[
    ("vit.norm", "--set vit.norm=layer|rms"),
    ("vit.rel_mlp", "--set vit.rel_mlp=cr|rw"),
    ("img_size", "--img-size H W"),
    ("vit.num_heads", "--num-heads N"),
    ("vit.norm_eps", "--eps E"),
    ("vit.act", "--set vit.act=gelu|gelu_tanh|quickgelu|relu|silu"),
    ("vit.block", "--set vit.block=pre|res_post"),
    ("vit.pool", "--pool token|avg"),
    ("vit.pool_prefix", "--set vit.pool_prefix=0|1"),
    ("vit.map_heads", "--set vit.map_heads=N"),
])
# ViT keys fixed by the tensors: a mapping file or --set may state them (they are then checked)
VIT_STRUCTURAL = {"vit.embed_dim", "vit.depth", "vit.mlp_hidden", "vit.patch_size", "vit.class_token",
                  "vit.dist_token", "vit.reg_tokens", "vit.qkv_bias", "vit.layer_scale", "vit.patch_norm",
                  "vit.norm_pre", "vit.final_norm", "vit.fc_norm", "vit.pre_logits", "vit.mlp", "vit.proj", "vit.abs_pos",
                  "vit.rel_pos", "vit.parallel", "in_chans",
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


REL_MLP = "rel_pos.mlp."
SHARED_REL_MLP = "shared_rel_pos.mlp."


def vit_rel_mlp_kind(sd, idx):
    """timm vision_transformer_relpos's RelPosMlp as the tensors show it: "none", "mlp_block"
    (blocks.N.attn.rel_pos.mlp.*) or "mlp_shared" (shared_rel_pos.mlp.*), and its mode: "cr"
    (fc2 has a bias; older timm's "rw" has one too, which only metadata or a flag tells apart) or
    "swin" (fc2 without bias, 16 * sigmoid)."""
    have = ["blocks.%d.attn.%sfc1.weight" % (i, REL_MLP) in sd for i in idx]
    if any(have) and not all(have):
        raise ConvertError("blocks differ in relative position MLP: blocks.N.attn.%sfc1.weight is present in only "
                           "some blocks (missing in %s)" % (REL_MLP, [i for i, h in zip(idx, have) if not h][:8]))
    shared = SHARED_REL_MLP + "fc1.weight" in sd
    if shared and any(have):
        raise ConvertError("both a shared relative position MLP (shared_rel_pos.mlp) and per-block ones: timm "
                           "builds one or the other")
    if not shared and not any(have):
        return "none", None
    pre = SHARED_REL_MLP if shared else "blocks.%d.attn.%s" % (idx[0], REL_MLP)
    return ("mlp_shared" if shared else "mlp_block"), ("cr" if pre + "fc2.bias" in sd else "swin")


def vit_rel_grid_of_rows(rows):
    """The square patch grid whose BEiT table has `rows` rows ((2g-1)^2 + 3), or None."""
    r = _isqrt_exact(rows - 3) if rows > 3 else None
    return (r + 1) // 2 if r and r % 2 else None


def vit_rel_index(gh, gw, cls=1):
    """timm beit.py gen_relative_position_index: the table row of each (query, key) token pair of a
    gh x gw grid with the class token first (if cls), flat row-major over ((gh*gw+cls), (gh*gw+cls))."""
    G, T = gh * gw, gh * gw + cls
    rows = (2 * gh - 1) * (2 * gw - 1) + 3 * cls
    out = [0] * (T * T)
    for i in range(G):
        for j in range(G):
            out[(i + cls) * T + j + cls] = (i // gw - j // gw + gh - 1) * (2 * gw - 1) + (i % gw - j % gw + gw - 1)
    if not cls:
        return out
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

    # timm's LayerNorm always has a bias; a weight alone is an RmsNorm (AIMv2, vit_*_xp_*): the model runs
    # with vit.norm=rms (below) when its blocks' norms have no bias; a LayerNorm model with one bias-free
    # norm would be silently wrong with a zero bias, so it is refused
    rms_norms = st.get("vit.norm") == "rms" or ("blocks.0.norm1.weight" in sd and "blocks.0.norm1.bias" not in sd)

    def norm(src, dst):
        if src + ".weight" in sd and src + ".bias" not in sd and not rms_norms:
            raise ConvertError("%s.weight has no %s.bias but the blocks' norms have one: a mix of RmsNorm and "
                               "LayerNorm, which lemevit.h does not run" % (src, src))
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
    rel_mlp, rel_mlp_mode = vit_rel_mlp_kind(sd, idx) if idx else ("none", None)
    if rel_mlp != "none" and rel_pos != "none":
        raise ConvertError("both relative position bias tables and a relative position MLP: timm builds one or the other")
    if rel_mlp != "none":
        ctx.notes.append("relative position MLP (timm RelPosMlp, %s, mode '%s')"
                         % ("one per block" if rel_mlp == "mlp_block" else "one for all blocks", rel_mlp_mode))
    rope = st.get("vit.rope", "none")
    if pos is None and rel_pos == "none" and rel_mlp == "none" and rope == "none":
        raise ConvertError("ViT without an absolute pos_embed or relative position bias: if it is a RoPE model, "
                           "say so with --set vit.rope=axial|mixed")
    img_set = st.get("img_size")
    grid = None
    no_embed_class = st.get("vit.no_embed_class")
    if pos is None and rel_mlp != "none":
        # the MLP has no size: the grid from the settings, else timm's default 224x224 input (assumed)
        img_set = img_set or (224, 224)
        if st.get("vit.pos_grid"):
            grid = tuple(st.get("vit.pos_grid"))
        elif img_set[0] % ph == 0 and img_set[1] % pwid == 0:
            grid = (img_set[0] // ph, img_set[1] // pwid)
        else:
            raise ConvertError("img_size %s is not a whole number of %dx%d patches; give --img-size H W"
                               % (list(img_set or []), ph, pwid))
        no_embed_class = 0
        P = grid[0] * grid[1] + prefix
    elif pos is None and rel_pos == "none":
        from .eva import rope_grid   # a RoPE ViT without pos_embed: its grid is only the default input size
        grid, no_embed_class, P = rope_grid(st, ph, pwid, prefix)
    elif pos is None:
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
    if rel_mlp != "none" or (rel_pos != "none" and source == "relpos"):
        if dist is not None or R:
            raise ConvertError("a relative position bias (timm vision_transformer_relpos) allows one class token "
                               "at most, and no distillation or register tokens")
    if rel_mlp != "none":
        pre = [SHARED_REL_MLP] if rel_mlp == "mlp_shared" else ["blocks.%d.attn.%s" % (i, REL_MLP) for i in idx]
        hid = take(pre[0] + "fc1.weight", (None, 2)).shape[0]
        heads_mlp = take(pre[0] + "fc2.weight", (None, hid)).shape[0]
        for p in pre:
            T[p + "fc1.weight"] = take(p + "fc1.weight", (hid, 2))
            T[p + "fc1.bias"] = bias(p + "fc1.bias", hid)
            T[p + "fc2.weight"] = take(p + "fc2.weight", (heads_mlp, hid))
            if (p + "fc2.bias" in sd) != (rel_mlp_mode == "cr"):
                raise ConvertError("%sfc2.bias: the relative position MLPs differ in mode (timm's 'cr' has an fc2 "
                                   "bias, 'swin' none)" % p)
            if rel_mlp_mode == "cr":
                T[p + "fc2.bias"] = take(p + "fc2.bias", (heads_mlp,))
            for buf in ("relative_position_index", "rel_coords_log"):   # recomputed for the run grid
                k = p[:-len("mlp.")] + buf
                if k in sd:
                    used.add(k)
                    ctx.notes.append("%s: a buffer recomputed for the input size, not written" % k)
    if rel_pos != "none":
        if source != "relpos" and (cls is None or dist is not None or R):
            raise ConvertError("a relative position bias table (BEiT) needs exactly one class token and no "
                               "distillation or register tokens")
        ncls = 1 if cls is not None else 0
        rows = (2 * grid[0] - 1) * (2 * grid[1] - 1) + 3 * ncls
        want_index = None
        for key in ([SHARED_REL_TABLE] if rel_pos in ("shared_table", "both") else []) + \
                (["blocks.%d.attn.%s" % (i, REL_TABLE) for i in idx] if rel_pos in ("block", "both") else []):
            t = sd[key]
            if t.ndim == 2 and t.shape[0] != rows:
                raise ConvertError("%s has %d rows; the %dx%d patch grid needs (2*%d-1)*(2*%d-1)%s = %d (timm's "
                                   "resize of the table to another size is not supported)"
                                   % (key, t.shape[0], grid[0], grid[1], grid[0], grid[1], "+3" if ncls else "", rows))
            T[key] = take(key, (rows, None))
            ikey = key[:-len(REL_TABLE)] + "relative_position_index"
            if ikey in sd:   # official BEiT files store the index buffer; it is recomputed, so only checked
                if want_index is None:
                    want_index = vit_rel_index(grid[0], grid[1], ncls)
                n_idx = grid[0] * grid[1] + ncls
                it = take(ikey, (n_idx * n_idx,) if sd[ikey].ndim == 1 else (n_idx, n_idx))
                if [int(x) for x in it.tolist(ikey)] != want_index:
                    raise ConvertError("%s is not the relative position index of a %dx%d grid %s a class token "
                                       "(timm gen_relative_position_index)"
                                       % (ikey, grid[0], grid[1], "with" if ncls else "without"))
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
    scaling = getattr(ctx, "vit_scaling", False)   # the tensors were a ParallelScalingBlock's (vit_scaling_unfuse)
    if scaling:
        ctx.determined.add("vit.block")
        if st.rank("vit.block") >= 2 and st.get("vit.block") != "parallel_scaling":
            raise ConvertError("vit.block=%s was given but the checkpoint has ParallelScalingBlock tensors (in_proj)"
                               % st.get("vit.block"))
    elif st.get("vit.block") == "parallel_scaling":
        raise ConvertError("vit.block=parallel_scaling but the checkpoint has no ParallelScalingBlock tensors (in_proj)")
    glu = vit_mlp_kind(sd)
    H = vit_mlp_hidden(sd, D, glu, take)
    # timm's RmsNorm (AIMv2, vit_*_xp_*) has a weight and no bias; LayerNorm has both
    norm_kind = "rms" if "blocks.0.norm1.weight" in sd and "blocks.0.norm1.bias" not in sd else "layer"
    if "blocks.0.norm1.bias" in sd:
        ctx.determined.add("vit.norm")
    if st.rank("vit.norm") >= 2:
        norm_kind = st.get("vit.norm")
    if norm_kind == "rms":
        with_bias = [k for k in sd if re.search(r"(^|\.)(norm\d?|norm_pre|fc_norm|q_norm|k_norm)\.bias$", k)]
        if with_bias:
            raise ConvertError("vit.norm=rms (norms without bias, timm's RmsNorm) but some norms have a bias: %s"
                               % ", ".join(with_bias[:4]))
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
        if not scaling:   # ParallelScalingBlock: one norm for attention and MLP
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
        if layer_scale and not scaling:
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
    if pool == "token_avg":
        # [class token, mean of the patch tokens] (Hugging Face Dinov2ForImageClassification's classifier input)
        if cls is None or dist is not None or pre_logits or E or fc_norm:
            raise ConvertError("vit.pool=token_avg needs a class token and no distillation token, pre_logits, "
                               "embedding projection or fc_norm")
        F = 2 * D
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
    if rel_mlp != "none" and st.rank("vit.num_heads") <= 0:
        heads = heads_mlp   # the MLP gives one output per head
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
    if rel_mlp != "none" and heads_mlp != heads:
        raise ConvertError("%sfc2.weight has %d rows but the model has %d heads (one output per head)"
                           % (pre[0], heads_mlp, heads))
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
        # the map head's own head count: timm's VisionTransformer gives it the blocks' (the default); Eva may
        # give it others (attn_pool_num_heads), which its converter states
        map_heads = st.get("vit.map_heads") if st.rank("vit.map_heads") > 0 else heads
        if st.rank("vit.map_heads") <= 0:
            ctx.determined.add("vit.map_heads")
        if not _is_int(map_heads) or map_heads <= 0 or D % map_heads:
            raise ConvertError("embed dim %d is not divisible by the attention-pool head's %s heads (vit.map_heads)"
                               % (D, _short(map_heads)))
        cfg["vit.map_heads"] = map_heads
    elif st.rank("vit.map_heads") >= 2:
        raise ConvertError("vit.map_heads was given but the checkpoint has no attention-pool head (attn_pool.*)")
    cfg["vit.qkv_bias"] = int(qkv_bias)
    cfg["vit.layer_scale"] = int(layer_scale)
    cfg["vit.patch_norm"] = int(patch_norm)
    cfg["vit.norm_pre"] = int(norm_pre)
    cfg["vit.final_norm"] = int(final_norm)
    cfg["vit.fc_norm"] = int(fc_norm)
    cfg["vit.pre_logits"] = pre_logits
    cfg["vit.attn_scale"] = st.get("vit.attn_scale", 0.0)
    cfg["vit.pos_interp"] = st.get("vit.pos_interp", "bicubic")
    cfg["vit.block"] = "parallel_scaling" if scaling else st.get("vit.block", "pre")
    cfg["vit.proj"] = E
    cfg["vit.abs_pos"] = int(pos is not None)
    cfg["vit.rel_pos"] = rel_mlp if rel_mlp != "none" else rel_pos
    cfg["vit.rel_mlp"] = rel_mlp_mode or "cr"
    if rel_mlp_mode == "cr" and st.get("vit.rel_mlp") in ("cr", "rw"):
        cfg["vit.rel_mlp"] = st.get("vit.rel_mlp")   # fc2 with a bias: 'cr' (timm today) or older timm's 'rw'
    elif st.rank("vit.rel_mlp") >= 2 and st.get("vit.rel_mlp") != cfg["vit.rel_mlp"]:
        raise ConvertError("vit.rel_mlp=%s was given but the relative position MLP's fc2 %s a bias, so it is '%s'"
                           % (st.get("vit.rel_mlp"), "has" if rel_mlp_mode == "cr" else "has no", cfg["vit.rel_mlp"]))
    if rel_mlp_mode != "cr":
        ctx.determined.add("vit.rel_mlp")   # 'swin' shows in the tensors; without an MLP the key is unused
    cfg["vit.parallel"] = 1
    cfg["vit.norm"] = norm_kind
    if rel_mlp == "none" or pos is not None or st.rank("img_size") > 0:
        ctx.determined.add("img_size")   # shown by pos_embed / the tables, or stated
    if cfg["vit.block"] == "res_post" and (cfg["vit.norm_first"] == 0 or layer_scale):
        raise ConvertError("vit.block=res_post (timm ResPostBlock) has no layer scale and no separate "
                           "vit.norm_first=0 form; this checkpoint has %s"
                           % ("layer scale tensors" if layer_scale else "vit.norm_first=0"))
    if cfg["vit.class_last"] and (dist is not None or R or no_embed_class):
        raise ConvertError("vit.class_last=1 is only supported with a single class token covered by pos_embed")
    if cfg["vit.norm_first"] == 0 and (norm_pre or layer_scale):
        raise ConvertError("post-norm blocks (vit.norm_first=0) with norm_pre / layer scale are not supported")
    if rope != "none":
        from .eva import rope_config
        cfg.update(rope_config(ctx, sd, take, T, D, heads, depth, rel_pos))
    elif "rope.freqs" in sd:
        raise ConvertError("rope.freqs (mixed RoPE's learned frequencies) is in the checkpoint but vit.rope=none")
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
    """CLIP's embedding projection, in canonical names proj.weight [E, D] and an optional proj.bias [E]
    (a Linear after the pooled features; CLIP's has no bias, OpenCLIP's timm towers may have one):
    placed in T; returns E, or 0 when the model has none."""
    if "proj.weight" not in sd:
        if "proj.bias" in sd:
            raise ConvertError("proj.bias without proj.weight")
        return 0
    if pre_logits or dist is not None:
        raise ConvertError("an embedding projection (proj.weight) together with pre_logits or a distillation "
                           "token is not a layout lemevit.h runs")
    w = take("proj.weight", (None, D))
    T["proj.weight"] = w
    if "proj.bias" in sd:
        T["proj.bias"] = take("proj.bias", (w.shape[0],))
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
    if source == "relpos":
        return "vit_relpos_%s_patch%d_%d" % (size, p, img)
    if source == "deit":
        return "deit%s_%s%s_patch%d_%d" % ("3" if cfg["vit.layer_scale"] else "", size,
                                           "_distilled" if cfg["vit.dist_token"] else "", p, img)
    return "vit_%s_patch%d_%d" % (size, p, img)


# ---------------------------------------------------------------------------------- timm / DeiT

# timm ViT model names: the width each size word stands for (a name whose size does not match the
# tensors describes another model and is not used) and the names whose registered options differ
# from timm's defaults (LayerNorm eps 1e-6, GELU, pre-norm blocks, head_dim 64), as registered in
# timm's vision_transformer.py
TIMM_VIT_NAME = re.compile(r"^(vit|deit|deit3|beit3|aimv2)_([a-z0-9]+)_[a-z0-9_]+$")
TIMM_SIZE_WIDTH = {"tiny": 192, "small": 384, "base": 768, "large": 1024, "huge": 1280, "giant": 1408,
                   "gigantic": 1664, "medium": 512, "mediumd": 512, "betwixt": 640, "so400m": 1152,
                   "giantopt": 1536, "1b": 2048, "3b": 3072}
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
    # AIMv2: RmsNorm eps 1e-5, head_dim 128
    (r"^aimv2_", {"vit.norm_eps": 1e-5}),
    (r"^aimv2_large_", {"vit.num_heads": 8}), (r"^aimv2_huge_", {"vit.num_heads": 12}),
    (r"^aimv2_1b_", {"vit.num_heads": 16}), (r"^aimv2_3b_", {"vit.num_heads": 24}),
]
# names whose size word stands for another width than TIMM_SIZE_WIDTH says
TIMM_NAME_WIDTH = [(r"^vit_base_patch16_plus_clip_", 896), (r"^vit_giant_patch14_(reg\d+_)?dinov2$", 1536),
                   (r"^aimv2_huge_", 1536)]
# timm's small test models: name -> (width, their settings) (head_dim 32, not the usual 64; test_vit3's
# attention pool reads the register token too)
TIMM_TEST_VITS = {"test_vit": (64, {"vit.num_heads": 2}), "test_vit2": (64, {"vit.num_heads": 2}),
                  "test_vit3": (96, {"vit.num_heads": 3, "vit.pool_prefix": 1}), "test_vit4": (96, {"vit.num_heads": 3})}
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
    m = TIMM_VIT_NAME.match(name)
    D = sd["patch_embed.proj.weight"].shape[0] if "patch_embed.proj.weight" in sd else None
    width = TIMM_SIZE_WIDTH.get(m.group(2)) if m else None
    for rx, w in TIMM_NAME_WIDTH:
        if m and re.search(rx, name):
            width = w
    ed = (h.kwargs or {}).get("embed_dim")
    if m and isinstance(ed, int) and not isinstance(ed, bool):
        width = ed   # create_model(name, embed_dim=E): the registered model at another width
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
        if bname in ("Block", "ResPostBlock", "RelPosBlock", "ResPostRelPosBlock", "ParallelThingsBlock",
                     "ParallelScalingBlock"):
            s["vit.block"] = "res_post" if bname in ("ResPostBlock", "ResPostRelPosBlock") else "pre"
        else:
            refuse("vit.block", "block_fn", b, "not a block lemevit.h runs (Block, ResPostBlock, RelPosBlock, "
                   "ResPostRelPosBlock)")
    rpt = kw.get("rel_pos_type")
    if isinstance(rpt, str) and rpt.startswith("mlp"):
        s["vit.rel_mlp"] = "swin" if "swin" in rpt else "rw" if "rw" in rpt else "cr"
    if isinstance(kw.get("pool_include_prefix"), bool):
        s["vit.pool_prefix"] = int(kw["pool_include_prefix"])
    if isinstance(kw.get("num_heads"), int) and not isinstance(kw.get("num_heads"), bool):
        s["vit.num_heads"] = kw["num_heads"]
    return s


# timm ViT blocks lemevit.h does not run, known by their tensors: refused by name rather than as an
# unknown layout or a tensor that could not be placed
TIMM_UNSUPPORTED_BLOCKS = [
    (r"^blocks\.\d+\.attn\.(lambda_q1|lambda_a|sub_norm\.weight)$", "differential attention (timm DiffAttention)"),
    (r"^blocks\.\d+\.(lambda_q1|lambda_a|sub_norm\.weight)$",
     "a parallel block with differential attention (timm DiffParallelScalingBlock, vit_dpwee_*)"),
]


@detector("vit", "timm/DeiT ViT")
def detect_timm_vit(sd, ctx):
    if "patch_embed.proj.weight" in sd:
        for rx, what in TIMM_UNSUPPORTED_BLOCKS:
            key = next((k for k in sd if re.match(rx, k)), None)
            if key is not None:
                raise ConvertError("%s: %s, which lemevit.h does not run" % (key, what))
    from .eva import eva_layout
    if eva_layout(sd, ctx) is not None:
        return None   # timm eva.py layouts: families/eva.py
    has_blocks = any(re.match(r"^blocks\.\d+\.((attns\.\d+\.)?attn\.qkv|in_proj)\.weight$", k) for k in sd)
    # BEiT (timm beit.py, microsoft/unilm beit): q_bias/v_bias, relative position bias tables, and
    # often no absolute pos_embed
    beit = SHARED_REL_TABLE in sd or any(re.match(r"^blocks\.\d+\.attn\.(q_bias|%s)$" % REL_TABLE, k) for k in sd)
    # timm vision_transformer_relpos: a RelPosBias table or RelPosMlp per block (attn.rel_pos.*) or
    # shared (shared_rel_pos.*), no pos_embed
    relpos = any(re.match(r"^(blocks\.\d+\.attn\.rel_pos|shared_rel_pos)\.", k) for k in sd)
    if "patch_embed.proj.weight" not in sd or not has_blocks or ("pos_embed" not in sd and not beit and not relpos):
        return None
    if relpos and not beit:
        return detect_timm_relpos(sd, ctx)
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
    if any(re.match(r"^blocks\.\d+\.in_proj\.weight$", k) for k in sd):
        sd, back = vit_scaling_unfuse(sd, back, ctx)
        ctx.vit_scaling = True
    par = vit_parallel_branches(sd)
    if par:
        sd, back = vit_parallel_unfold(sd, back, par)
    m = build_vit(sd, ctx, source, defaults, name_hint=arch_name)
    m.used = set(back[k] for k in m.used)
    if par:
        vit_parallel_fold(m, par, source, arch_name)
    if deit3:
        m.notes.append("%s gamma_1/gamma_2 renamed to ls1.gamma/ls2.gamma" % ("BEiT" if beit else "DeiT-III"))
    return m


PARALLEL_KEY = re.compile(r"^blocks\.(\d+)\.(attns|ffns)\.(\d+)\.(.*)$")
PARALLEL_PARTS = [("attns", "norm.", "norm1."), ("attns", "attn.", "attn."), ("attns", "ls.gamma", "ls1.gamma"),
                  ("ffns", "norm.", "norm2."), ("ffns", "mlp.", "mlp."), ("ffns", "ls.gamma", "ls2.gamma")]


def vit_parallel_branches(sd):
    """timm's ParallelThingsBlock (vit_*_18x2_*): blocks.N.attns.K.* / blocks.N.ffns.K.*. Returns the
    number of branches K (every block alike, attention and MLP branches alike), or 0."""
    branches = {}
    for k in sd:
        m = PARALLEL_KEY.match(k)
        if m:
            branches.setdefault((int(m.group(1)), m.group(2)), set()).add(int(m.group(3)))
    if not branches:
        return 0
    counts = set(len(v) for v in branches.values())
    blocks = set(i for i, _ in branches)
    if len(counts) != 1 or any(v != set(range(len(v))) for v in branches.values()) or \
            len(branches) != 2 * len(blocks) or any(k.startswith("blocks.") and not PARALLEL_KEY.match(k) for k in sd):
        raise ConvertError("parallel blocks (blocks.N.attns.K / blocks.N.ffns.K) must all have the same branches "
                           "0..K-1, attention and MLP alike, and no other block tensors")
    K = counts.pop()
    if K > 16:
        raise ConvertError("parallel blocks with %d branches: at most 16 are supported" % K)
    return K


def vit_parallel_unfold(sd, back, K):
    """Branch k of parallel block i as the plain block i*K+k (its attention branch as norm1 / attn /
    ls1, its MLP branch as norm2 / mlp / ls2), so the ViT builder checks every tensor."""
    out, nback = OrderedDict(), {}
    for k, v in sd.items():
        m = PARALLEL_KEY.match(k)
        nk = k
        if m:
            for kind, src, dst in PARALLEL_PARTS:
                if m.group(2) == kind and m.group(4).startswith(src):
                    nk = "blocks.%d.%s%s" % (int(m.group(1)) * K + int(m.group(3)), dst, m.group(4)[len(src):])
                    break
            else:
                nk = "blocks.%d.%s_unplaced.%s" % (int(m.group(1)) * K + int(m.group(3)), m.group(2), m.group(4))
        out[nk] = v
        nback[nk] = back.get(k, k)
    return out, nback


def vit_parallel_fold(m, K, source, name_hint):
    """The built model's tensors back under timm's parallel names; vit.depth counts real blocks."""
    rx = re.compile(r"^blocks\.(\d+)\.(norm1\.|attn\.|ls1\.gamma|norm2\.|mlp\.|ls2\.gamma)(.*)$")
    to = {"norm1.": ("attns", "norm."), "attn.": ("attns", "attn."), "ls1.gamma": ("attns", "ls.gamma"),
          "norm2.": ("ffns", "norm."), "mlp.": ("ffns", "mlp."), "ls2.gamma": ("ffns", "ls.gamma")}
    tensors = OrderedDict()
    for k, v in m.tensors.items():
        r = rx.match(k)
        if r:
            kind, part = to[r.group(2)]
            k = "blocks.%d.%s.%d.%s%s" % (int(r.group(1)) // K, kind, int(r.group(1)) % K, part, r.group(3))
        tensors[k] = v
    m.tensors = tensors
    if m.config["vit.block"] != "pre" or m.config["vit.norm_first"] != 1 or m.config["vit.rel_pos"] != "none":
        raise ConvertError("parallel blocks are pre-norm blocks without relative position bias in timm; this "
                           "checkpoint's settings say otherwise")
    m.config["vit.depth"] //= K
    m.config["vit.parallel"] = K
    if not name_hint:
        m.name = vit_name(m.config, source)
    m.notes.append("parallel blocks: %d branches each (timm ParallelThingsBlock)" % K)


def _slice(t, dim, a, b):
    """Rows (dim 0) or columns (dim 1) a..b of a tensor, as a strided view (nothing copied)."""
    shape = list(t.shape)
    shape[dim] = b - a
    return Tensor(t.storage, t.offset + a * t.stride[dim], shape, t.stride, t.dtype, t.error)


def vit_scaling_unfuse(sd, back, ctx):
    """timm's ParallelScalingBlock (vit_*_xp_*, vit_pwee_*): blocks.N.{in_norm, in_proj, mlp_bias,
    q_norm, k_norm, attn_out_proj, mlp_out_proj or the fused out_proj, ls} as the plain block's
    norm1, mlp.fc1 + attn.qkv (in_proj's rows [mlp | q k v]), attn.q_norm / k_norm, attn.proj,
    mlp.fc2 (out_proj's columns [attention | mlp]) and ls1; vit.block parallel_scaling runs them."""
    out, nback = OrderedDict(), {}
    D = sd["patch_embed.proj.weight"].shape[0] if "patch_embed.proj.weight" in sd else None

    def put(nk, t, src):
        out[nk] = t
        nback[nk] = back.get(src, src)

    for k, v in sd.items():
        m = re.match(r"^(blocks\.\d+)\.(.*)$", k)
        if not m:
            put(k, v, k)
            continue
        b, rest = m.group(1) + ".", m.group(2)
        if rest.startswith("in_norm."):
                put(b + "norm1." + rest[len("in_norm."):], v, k)
        elif rest in ("in_proj.weight", "in_proj.bias"):
            n = v.shape[0]
            if D is None or v.ndim not in (1, 2) or n <= 3 * D or (v.ndim == 2 and v.shape[1] != D):
                raise ConvertError("%s has shape %s, expected [hidden + 3*%s%s]"
                                   % (k, list(v.shape), D, ", %s" % D if v.ndim == 2 else ""))
            v.check(k)
            part = rest.split(".")[1]
            put(b + "mlp.fc1." + part, _slice(v, 0, 0, n - 3 * D), k)
            put(b + "attn.qkv." + part, _slice(v, 0, n - 3 * D, n), k)
        elif rest == "mlp_bias":
            put(b + "mlp.fc1.bias", v, k)
        elif rest.startswith("q_norm.") or rest.startswith("k_norm."):
            put(b + "attn." + rest, v, k)
        elif rest.startswith("attn_out_proj."):
            put(b + "attn.proj." + rest[len("attn_out_proj."):], v, k)
        elif rest.startswith("mlp_out_proj."):
            put(b + "mlp.fc2." + rest[len("mlp_out_proj."):], v, k)
        elif rest == "out_proj.weight":
            if D is None or v.ndim != 2 or v.shape[0] != D or v.shape[1] <= D:
                raise ConvertError("%s has shape %s, expected [%s, %s + hidden]" % (k, list(v.shape), D, D))
            v.check(k)
            put(b + "attn.proj.weight", _slice(v, 1, 0, D), k)
            put(b + "mlp.fc2.weight", _slice(v, 1, D, v.shape[1]), k)
        elif rest == "out_proj.bias":
            put(b + "attn.proj.bias", v, k)   # the fused projection's one bias; fc2 gets none
        elif rest == "ls.gamma":
            put(b + "ls1.gamma", v, k)
        else:
            put(k, v, k)
    ctx.notes.append("parallel-scaling blocks (timm ParallelScalingBlock): in_proj split into mlp.fc1 and attn.qkv")
    return out, nback


def detect_timm_relpos(sd, ctx):
    """timm's VisionTransformerRelPos (vit_relpos_* / vit_srelpos_*): its RelPosBias tables take
    BEiT's names (blocks.N.attn.relative_position_bias_table, rel_pos_bias.* when shared), its
    RelPosMlp keeps its own; inception mean/std 0.5, crop 0.9, bicubic as timm's configs."""
    sd, back = _rename(sd, [
        (r"^(blocks\.\d+\.attn)\.rel_pos\.(relative_position_bias_table|relative_position_index)$", r"\1.\2"),
        (r"^shared_rel_pos\.(relative_position_bias_table|relative_position_index)$", r"rel_pos_bias.\1")])
    ctx.settings.update("sidecar", vit_metadata_settings(sd, ctx))
    defaults = dict(PRE_TIMM)
    defaults.update({"vit.norm_eps": 1e-6, "vit.act": "gelu", "vit.pos_interp": "bicubic_aa"})
    m = build_vit(sd, ctx, "relpos", defaults)
    m.used = set(back[k] for k in m.used)
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
    defaults = dict(PRE_HF_DEIT if is_deit else PRE_HF_VIT)
    defaults.update({"vit.norm_eps": 1e-12, "vit.act": "gelu", "vit.pos_interp": "bicubic"})
    side = {}
    labels = None
    # the Hugging Face ViT/DeiT modules have one block form and classify from the class token
    ctx.determined.update(("vit.block", "vit.pool"))
    if isinstance(cfg, dict):
        ctx.notes.append("read %s" % cfg_path)
        side.update(encoder_settings(cfg, cfg_path, HF_ACT))
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
    pre, pre_path, pre_side = processor_settings(ctx)
    if pre is not None:
        side.update(pre_side)
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


