"""EVA / EVA-02 and timm's RoPE ViTs (timm eva.py: Eva, EvaBlock, EvaBlockPostNorm, EvaAttention,
AttentionRope) on the ViT graph: rotary position embedding (vit.rope), SwiGLU with its sub-LN,
q_bias / v_bias, layer scale gamma_1 / gamma_2, post-norm blocks, register tokens.

The tensors show most of the model; what they cannot show (whether RoPE is used and how its
frequencies are built) comes from the checkpoint's metadata (the timm model name, its kwargs) and
is otherwise assumed as EVA-02 registers it, and printed as assumed."""

import re
from collections import OrderedDict

from ..base import ConvertError, _short
from ..family import IMAGENET_MEAN, IMAGENET_STD, HALF, _read_json_beside, _rename
from ..registry import FAMILIES, detector
from ..settings import CHOICES
from ..tensors import concat0, zeros_f32
from .vit import REL_TABLE, SHARED_REL_TABLE, VIT_KEYS, build_vit, vit_mlp_kind

OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

# the ViT graph's RoPE options (written only by RoPE models)
ROPE_KEYS = OrderedDict([
    ("vit.rope", "s"), ("vit.rope_temperature", "f"), ("vit.rope_ref_grid", "i2"), ("vit.rope_offset", "f"),
    ("vit.rope_indexing", "s"), ("vit.rope_half", "i"),
])
VIT_KEYS.update(ROPE_KEYS)
CHOICES["vit.rope"] = ("none", "axial", "mixed", "dinov3")
CHOICES["vit.rope_indexing"] = ("ij", "xy")
FAMILIES["vit"].assumable.update([
    ("vit.rope", "--set vit.rope=none|axial|mixed|dinov3"),
    ("vit.rope_temperature", "--set vit.rope_temperature=T"),
    ("vit.rope_ref_grid", "--set vit.rope_ref_grid=GH,GW (0,0: none)"),
    ("vit.rope_offset", "--set vit.rope_offset=F"),
    ("vit.rope_indexing", "--set vit.rope_indexing=ij|xy"),
    ("vit.rope_half", "--set vit.rope_half=0|1"),
])

EVA02_ROPE = {"vit.rope": "axial", "vit.rope_temperature": 10000.0, "vit.rope_ref_grid": [16, 16],
              "vit.rope_offset": 0.0, "vit.rope_indexing": "ij", "vit.rope_half": 0}
NAVER_PRE = {"pre.mean": IMAGENET_MEAN, "pre.std": IMAGENET_STD}
# timm eva.py registrations: model name -> the options the tensors cannot show
EVA_NAME_RULES = [
    (r"^eva_giant_", {"vit.rope": "none", "pre.mean": IMAGENET_MEAN, "pre.std": IMAGENET_STD}),
    (r"^eva02_", dict(EVA02_ROPE)),
    (r"^eva02_[a-z]+_patch14_(336|448)", {"pre.crop_pct": 1.0}),
    # use_post_norm=True, 1792 wide, and no RoPE (timm registers it without use_rot_pos_emb)
    (r"^eva02_enormous_", {"vit.block": "res_post", "vit.num_heads": 16, "vit.rope": "none"}),
    (r"^vit_[a-z0-9]+_patch16_rope_reg\d+_gap_256", dict(EVA02_ROPE, **{"pre.mean": HALF, "pre.std": HALF,
                                                                        "pre.crop_pct": 0.95})),
    (r"^vit_[a-z]+_patch16_rope(_ape)?_224", dict(NAVER_PRE, **{
        "vit.rope": "axial", "vit.rope_temperature": 100.0, "vit.rope_ref_grid": [0, 0], "vit.rope_offset": 0.0,
        "vit.rope_indexing": "xy", "vit.rope_half": 0})),
    (r"^vit_[a-z]+_patch16_rope_mixed(_ape)?_224", dict(NAVER_PRE, **{
        "vit.rope": "mixed", "vit.rope_indexing": "xy", "vit.rope_half": 0})),
    # Perception Encoder language / spatial towers: pre-norm, no patch bias, avg pool without fc_norm
    (r"^vit_pe_(lang|spatial)_", {
        "vit.rope": "axial", "vit.rope_temperature": 10000.0, "vit.rope_ref_grid": [32, 32], "vit.rope_offset": 1.0,
        "vit.rope_indexing": "xy", "vit.rope_half": 0, "vit.norm_eps": 1e-5, "vit.pool": "avg",
        "pre.mean": HALF, "pre.std": HALF, "pre.crop_pct": 1.0}),
    (r"^vit_pe_(lang|spatial)_gigantic_", {"vit.rope_offset": 0.0, "vit.num_heads": 16}),
    # Perception Encoder core (CLIP image towers): the same blocks, an attention-pool head with 8 heads of its own
    # over every token (class token included), then the projection as the classifier head
    (r"^vit_pe_core_", {
        "vit.rope": "axial", "vit.rope_temperature": 10000.0, "vit.rope_offset": 1.0, "vit.rope_indexing": "xy",
        "vit.rope_half": 0, "vit.norm_eps": 1e-5, "vit.pool": "map", "vit.map_heads": 8,
        "pre.mean": OPENAI_CLIP_MEAN, "pre.std": OPENAI_CLIP_STD, "pre.crop_pct": 0.9}),
    (r"^vit_pe_core_[a-z]+_patch16_384", {"vit.rope_ref_grid": [24, 24]}),
    (r"^vit_pe_core_[a-z]+_patch16_224", {"vit.rope_ref_grid": [14, 14]}),
    (r"^vit_pe_core_[a-z]+_patch14_336", {"vit.rope_ref_grid": [24, 24]}),
    (r"^vit_pe_core_[a-z]+_patch14_448", {"vit.rope_ref_grid": [32, 32]}),
    (r"^vit_pe_core_gigantic_", {"vit.rope_offset": 0.0, "vit.num_heads": 16}),
    # DINOv3 (timm's port): its own RoPE, half rotation, eps 1e-5, timm's default avg pooling after the norm
    (r"^vit_[a-z0-9_]+_patch16_dinov3", {
        "vit.rope": "dinov3", "vit.rope_temperature": 100.0, "vit.rope_offset": 0.0, "vit.rope_half": 1,
        "vit.norm_eps": 1e-5, "vit.pool": "avg", "pre.mean": IMAGENET_MEAN, "pre.std": IMAGENET_STD,
        "pre.crop_pct": 1.0}),
    (r"^vit_huge_plus_patch16_dinov3", {"vit.num_heads": 20}),
    (r"^vit_7b_patch16_dinov3", {"vit.num_heads": 32}),
]
# registered eva.py models this library does not run, each with what it lacks
EVA_REFUSED_NAMES = [
    (r"^vit_[a-z0-9_]+eupe", "EUPE models are not supported"),
]


def rope_grid(st, ph, pw, prefix):
    """The patch grid of a RoPE ViT without pos_embed (only its default input size): --img-size /
    the model name's size, else its RoPE reference grid."""
    img = st.get("img_size")
    if st.get("vit.pos_grid"):
        grid = tuple(st.get("vit.pos_grid"))
    elif img and img[0] % ph == 0 and img[1] % pw == 0:
        grid = (img[0] // ph, img[1] // pw)
    elif st.get("vit.rope_ref_grid") and all(st.get("vit.rope_ref_grid")):
        grid = tuple(st.get("vit.rope_ref_grid"))
    else:
        raise ConvertError("this RoPE ViT has no pos_embed, so its input size is not in the tensors; give "
                           "--img-size H W")
    return grid, 0, grid[0] * grid[1] + prefix


def rope_config(ctx, sd, take, T, D, heads, depth, rel_pos):
    """The vit.rope* meta keys of a RoPE model (and mixed RoPE's rope.freqs, placed in T)."""
    st = ctx.settings
    kind = st.get("vit.rope")
    hd = D // heads
    if hd % 4:
        raise ConvertError("RoPE needs a head width divisible by 4 (timm's rotary embedding); this model's is %d" % hd)
    if rel_pos != "none":
        raise ConvertError("RoPE together with a relative position bias table is not a layout lemevit.h runs")
    cfg = OrderedDict()
    cfg["vit.rope"] = kind
    cfg["vit.rope_temperature"] = float(st.get("vit.rope_temperature", 10000.0))
    ref = st.get("vit.rope_ref_grid", [0, 0])
    if ref is None or len(ref) != 2 or (ref[0] == 0) != (ref[1] == 0) or min(ref) < 0:
        raise ConvertError("vit.rope_ref_grid must be two grid sides (or 0,0 for none), not %s" % _short(ref))
    cfg["vit.rope_ref_grid"] = list(ref)
    cfg["vit.rope_offset"] = float(st.get("vit.rope_offset", 0.0))
    cfg["vit.rope_indexing"] = st.get("vit.rope_indexing", "ij")
    cfg["vit.rope_half"] = int(st.get("vit.rope_half", 0))
    if kind == "mixed":
        T["rope.freqs"] = take("rope.freqs", (2, depth, heads, hd // 2))
        # mixed RoPE learns its frequencies: temperature, reference grid and offset are not used
        ctx.determined.update(("vit.rope", "vit.rope_temperature", "vit.rope_ref_grid", "vit.rope_offset"))
    elif "rope.freqs" in sd:
        raise ConvertError("rope.freqs (mixed RoPE's learned frequencies) is in the checkpoint but vit.rope=%s" % kind)
    if kind == "dinov3":   # DINOv3 normalises the coordinates per side: no reference grid, no grid order
        ctx.determined.update(("vit.rope_ref_grid", "vit.rope_indexing"))
    return cfg


def _concat_qkv(sd, origin):
    """timm's unfused q_proj / k_proj / v_proj (qkv_fused=False) as one qkv Linear: weights stacked q, k,
    v; the bias too when any of them has one (k_proj has none in EvaAttention: zeros)."""
    out = OrderedDict()
    for k, v in sd.items():
        m = re.match(r"^(blocks\.\d+\.attn)\.([qkv])_proj\.(weight|bias)$", k)
        if not m:
            out[k] = v
            origin[k] = [k]
            continue
        base, which, part = m.groups()
        if which != "q" and "%s.q_proj.weight" % base in sd:
            continue
        ws = ["%s.%s_proj.weight" % (base, c) for c in "qkv"]
        missing = [w for w in ws if w not in sd]
        if missing:
            raise ConvertError("%s is missing (the unfused q_proj / k_proj / v_proj come together)" % missing[0])
        if part == "weight":
            out[base + ".qkv.weight"] = concat0([sd[w] for w in ws], base + ".qkv.weight")
            origin[base + ".qkv.weight"] = ws
        else:
            bs = ["%s.%s_proj.bias" % (base, c) for c in "qkv"]
            n = sd[ws[0]].shape[0] if sd[ws[0]].ndim == 2 else 0
            for b in bs:
                if b in sd and sd[b].ndim != 1:
                    raise ConvertError("%s has shape %s, expected 1-D" % (b, list(sd[b].shape)))
            out[base + ".qkv.bias"] = concat0([sd[b] if b in sd else zeros_f32((n,)) for b in bs], base + ".qkv.bias")
            origin[base + ".qkv.bias"] = [b for b in bs if b in sd]
    for k in sd:   # a k_proj / v_proj bias without a q_proj bias still needs its qkv.bias
        m = re.match(r"^(blocks\.\d+\.attn)\.[kv]_proj\.bias$", k)
        if m and m.group(1) + ".qkv.bias" not in out:
            base = m.group(1)
            n = sd[base + ".q_proj.weight"].shape[0]
            bs = ["%s.%s_proj.bias" % (base, c) for c in "qkv"]
            out[base + ".qkv.bias"] = concat0([sd[b] if b in sd else zeros_f32((n,)) for b in bs], base + ".qkv.bias")
            origin[base + ".qkv.bias"] = [b for b in bs if b in sd]
    return out


def _eva_kwargs(kw, src, st):
    """Settings from timm Eva keyword arguments (model_kwargs / model_args); refuses those this
    library cannot run unless the command line decides."""
    s = {}

    def refuse(field, value, what):
        raise ConvertError("%s: %s=%s is %s" % (src, field, _short(value), what))
    if "use_rot_pos_emb" in kw:
        if not kw["use_rot_pos_emb"]:
            s["vit.rope"] = "none"
        elif kw.get("rope_type", "cat") in ("cat", None):
            s["vit.rope"] = "axial"
        elif kw.get("rope_type") in ("mixed", "dinov3"):
            s["vit.rope"] = kw["rope_type"]
        else:
            refuse("rope_type", kw.get("rope_type"), "not a RoPE lemevit.h runs (cat, mixed, dinov3)")
    for field, key, conv in (("rope_temperature", "vit.rope_temperature", float),
                             ("rope_grid_offset", "vit.rope_offset", float),
                             ("rope_rotate_half", "vit.rope_half", int)):
        if isinstance(kw.get(field), (int, float)):
            s[key] = conv(kw[field])
    if kw.get("rope_grid_indexing") in ("ij", "xy"):
        s["vit.rope_indexing"] = kw["rope_grid_indexing"]
    if "ref_feat_shape" in kw:
        r = kw["ref_feat_shape"]
        if r is None:
            s["vit.rope_ref_grid"] = [0, 0]
        elif isinstance(r, int) and not isinstance(r, bool):
            s["vit.rope_ref_grid"] = [r, r]
        elif isinstance(r, (list, tuple)) and len(r) == 2 and all(isinstance(x, int) for x in r):
            s["vit.rope_ref_grid"] = list(r)
        else:
            refuse("ref_feat_shape", r, "not a grid size")
    if "use_post_norm" in kw:
        s["vit.block"] = "res_post" if kw["use_post_norm"] else "pre"
    if kw.get("gated_attn"):
        refuse("gated_attn", kw["gated_attn"], "gated attention, which lemevit.h does not run")
    if kw.get("global_pool") in ("avg", "token", "map"):
        s["vit.pool"] = kw["global_pool"]
    elif "global_pool" in kw:
        refuse("global_pool", kw["global_pool"], "not a pooling lemevit.h runs (token, avg, map)")
    if isinstance(kw.get("num_heads"), int) and not isinstance(kw.get("num_heads"), bool):
        s["vit.num_heads"] = kw["num_heads"]
    ap = kw.get("attn_pool_num_heads")
    if isinstance(ap, int) and not isinstance(ap, bool) and ap > 0:
        s["vit.map_heads"] = ap
    elif ap is None and isinstance(s.get("vit.num_heads"), int):
        if "attn_pool_num_heads" in kw:
            s["vit.map_heads"] = s["vit.num_heads"]   # timm: attn_pool_num_heads or num_heads
    elif ap is not None:
        refuse("attn_pool_num_heads", ap, "not a head count")
    img = kw.get("img_size")
    if isinstance(img, int) and not isinstance(img, bool):
        s["img_size"] = [img, img]
    elif isinstance(img, (list, tuple)) and len(img) == 2 and all(isinstance(x, int) for x in img):
        s["img_size"] = list(img)
    return s


def _check_pool_mlp_ratio(kw, src, m):
    """timm builds the attention-pool head's MLP int(embed_dim * attn_pool_mlp_ratio) wide; the width
    lemevit.h runs is attn_pool.mlp.fc1's rows, so a stated ratio that disagrees is refused."""
    if "attn_pool_mlp_ratio" not in kw or kw["attn_pool_mlp_ratio"] is None:
        return   # timm: the blocks' mlp_ratio; the tensors give the width
    ratio = kw["attn_pool_mlp_ratio"]
    if not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or not ratio > 0:
        raise ConvertError("%s: attn_pool_mlp_ratio=%s is not an MLP ratio; correct or drop it"
                           % (src, _short(ratio)))
    D, rows = m.config["vit.embed_dim"], m.tensors["attn_pool.mlp.fc1.weight"].shape[0]
    if int(D * ratio) != rows:
        raise ConvertError("%s: attn_pool_mlp_ratio=%s makes the attention-pool MLP int(%d x %s) = %d wide, but "
                           "attn_pool.mlp.fc1.weight has %d rows; the kwargs do not describe these weights "
                           "(correct or drop attn_pool_mlp_ratio)" % (src, _short(ratio), D, _short(ratio),
                                                                      int(D * ratio), rows))


def _is_eva(sd, name, kw):
    """Is this timm eva.py's layout?  Its name or kwargs say so, or tensors no other ViT layout has:
    rope.freqs, unfused q_proj, a ViT without any position embedding tensor, or EVA-02's SwiGLU /
    sub-LN with q_bias or gamma_1 (timm vision_transformer.py names those qkv.bias and ls1.gamma)."""
    if re.match(r"^(eva02_|eva_giant_|vit_[a-z0-9]+_patch\d+_rope_|vit_pe_|vit_[a-z0-9_]+_patch16_dinov3)", name) or \
            "use_rot_pos_emb" in kw:
        return True
    if "rope.freqs" in sd or "blocks.0.attn.q_proj.weight" in sd:
        return True
    if "pos_embed" not in sd:
        return True   # the caller has ruled out BEiT's tables already
    evaish = "blocks.0.attn.q_bias" in sd or "blocks.0.gamma_1" in sd
    try:
        glu = vit_mlp_kind(sd) is not None
    except ConvertError:
        glu = False
    return evaish and (glu or "blocks.0.mlp.norm.weight" in sd or "blocks.0.attn.norm.weight" in sd)


def eva_layout(sd, ctx):
    """(model name, kwargs) when `sd` is timm eva.py's layout, else None (families/vit.py's timm
    detector leaves these to detect_timm_eva)."""
    if "patch_embed.proj.weight" not in sd or \
            not any(re.match(r"^blocks\.\d+\.attn\.(qkv|q_proj)\.weight$", k) for k in sd):
        return None
    if SHARED_REL_TABLE in sd or any(k.endswith("attn." + REL_TABLE) for k in sd):
        return None   # BEiT (families/vit.py)
    if any(k.startswith("shared_rel_pos.") or re.match(r"^blocks\.\d+\.attn\.rel_pos\.", k) for k in sd):
        return None   # timm vision_transformer_relpos.py (families/vit.py)
    if "mask_token" in sd or "register_tokens" in sd:
        return None   # facebookresearch/dinov2 hub files (families/clip.py)
    h = ctx.hints
    args = ctx.info.get("args") or {}
    name = ((h.name if h is not None else None) or (args.get("model") if isinstance(args.get("model"), str) else "")
            or "").split(".")[0]
    kw = (h.kwargs if h is not None else None) or {}
    return (name, kw) if _is_eva(sd, name, kw) else None


@detector("vit", "timm EVA / RoPE ViT")
def detect_timm_eva(sd, ctx):
    found = eva_layout(sd, ctx)
    if found is None:
        return None
    name, kw = found
    h = ctx.hints
    for rx, why in EVA_REFUSED_NAMES:
        if re.search(rx, name):
            raise ConvertError("%s (the model name %s, %s)" % (why, name, h.name_src if h is not None else "args"))
    gates = [k for k in sd if re.match(r"^blocks\.\d+\.attn\.gate\.", k)]
    if gates:
        raise ConvertError("%s: gated attention (timm gated_attn) is not supported by lemevit.h" % gates[0])
    origin = {}
    body = _concat_qkv(sd, origin)
    body, back = _rename(body, [(r"^(blocks\.\d+)\.gamma_([12])$", r"\1.ls\2.gamma")])
    # what the tensors show about RoPE, then what the name and kwargs say; the rest is assumed
    defaults = {"pre.mean": OPENAI_CLIP_MEAN, "pre.std": OPENAI_CLIP_STD, "pre.crop_pct": 0.9, "pre.interp": "bicubic",
                "vit.norm_eps": 1e-6, "vit.act": "gelu", "vit.pos_interp": "bicubic_aa", "vit.block": "pre"}
    defaults.update(EVA02_ROPE)
    side = {}
    f = sd.get("rope.freqs")
    if f is not None:
        side["vit.rope"] = "mixed"
        defaults["vit.rope_indexing"] = "xy"   # what timm's RoPE-Mixed registrations use
        if f.ndim == 4 and f.shape[2] > 0:
            side["vit.num_heads"] = f.shape[2]   # (2, depth, heads, head_dim / 2)
            ctx.determined.add("vit.num_heads")
    named = False
    for rx, vals in EVA_NAME_RULES:
        if re.search(rx, name):
            side.update((k, v) for k, v in vals.items() if not (k == "vit.rope" and f is not None))
            named = True
    m_img = re.search(r"_(\d{2,4})$", name)
    if named and m_img and "pos_embed" not in sd:   # the default input size of a model without pos_embed
        side["img_size"] = [int(m_img.group(1))] * 2
    if named:
        ctx.notes.append("graph options from the model name %s (%s)" % (name, h.name_src if h is not None else "args"))
    if kw:
        side.update(_eva_kwargs(kw, h.kwargs_src, ctx.settings))
    if h is not None and h.pre:
        side.update(h.pre)
    if side.get("vit.rope") == "mixed" and f is None:
        raise ConvertError("mixed RoPE needs its learned frequencies rope.freqs, which the checkpoint lacks")
    pool_map = "attn_pool.latent" in body or "attn_pool.q.weight" in body
    if pool_map:
        # Eva pools every token, prefix tokens included (timm AttentionPoolLatent over the whole sequence)
        side.setdefault("vit.pool_prefix", 1)
    ctx.settings.update("sidecar", side)
    m = build_vit(body, ctx, "eva", defaults, name_hint=name or None)
    if pool_map:
        if m.config.get("vit.act") != "gelu" or m.config.get("vit.mlp") != "mlp":
            raise ConvertError("this EVA model has an attention-pool head (attn_pool.*), whose MLP timm runs with "
                               "GELU, but its blocks use %s%s; lemevit.h runs the head with the blocks' activation, "
                               "so this combination is not supported"
                               % (m.config.get("vit.act"), " (SwiGLU)" if m.config.get("vit.mlp") == "glu" else ""))
        _check_pool_mlp_ratio(kw, h.kwargs_src if h is not None else None, m)
        if ctx.settings.rank("vit.pool_prefix") <= 1:
            ctx.determined.add("vit.pool_prefix")
        if ctx.settings.rank("vit.map_heads") <= 0:
            ctx.determined.discard("vit.map_heads")   # Eva's pool may have heads of its own: say it was assumed
    used = set()
    for k in m.used:
        used.update(origin.get(back.get(k, k), [back.get(k, k)]))
    m.used = used
    if m.config.get("vit.rope", "none") != "none":
        m.notes.append("RoPE %s on q and k of the patch tokens" % m.config["vit.rope"])
    return m


# ---------------------------------------------------------------------------------- OpenCLIP timm towers

def _open_clip_vision_cfg(ctx):
    """(open_clip_config.json's model_cfg.vision_cfg, its preprocessing settings, whether its
    preprocess_cfg states a resize_mode, its path) beside the weights, or ({}, {}, False, None)."""
    from .clip import open_clip_preprocess
    oc, oc_path = _read_json_beside(ctx.path, "open_clip_config.json")
    if not isinstance(oc, dict) or not isinstance(oc.get("model_cfg"), dict):
        return {}, {}, False, None
    vc = oc["model_cfg"].get("vision_cfg")
    pc = oc.get("preprocess_cfg")
    mode = isinstance(pc, dict) and pc.get("resize_mode") is not None
    return (vc if isinstance(vc, dict) else {}), open_clip_preprocess(oc, oc_path), mode, oc_path


# OpenCLIP's SigLIP preprocessing (open_clip pretrained.py _slpcfg): mean / std 0.5, bicubic, resize_mode
# 'squash' (straight to the input size, no crop)
PRE_OPEN_CLIP_SIGLIP = {"pre.mean": HALF, "pre.std": HALF, "pre.resize": 0, "pre.crop_pct": 1.0, "pre.interp": "bicubic"}
# trunk widths whose heads are not the width / 64 of VIT_HEADS_BY_DIM: OpenCLIP's SigLIP SO400M (16 heads)
OPEN_CLIP_VIT_HEADS = {1152: 16}


def _is_timm_vit_trunk(trunk):
    """timm vision_transformer.py's VisionTransformer (or its relpos variant) as a TimmModel trunk."""
    return "patch_embed.proj.weight" in trunk and \
        any(re.match(r"^blocks\.\d+\.attn\.qkv\.weight$", k) for k in trunk) and \
        ("pos_embed" in trunk or any(re.match(r"^(blocks\.\d+\.attn\.rel_pos|shared_rel_pos)\.", k) for k in trunk))


def _open_clip_vit_pool(trunk, pool, proj, where):
    """The timm_pool of an OpenCLIP VisionTransformer trunk, checked against its tensors: timm builds
    the attention pool (attn_pool.*) for 'map' only, and reset_classifier removes it for any other pool."""
    attn = any(k.startswith("attn_pool.") for k in trunk)
    if pool in ("", None) and proj in ("linear", "mlp"):
        return None   # reset_classifier(0): the trunk keeps its registered pooling (the tensors show it)
    if pool not in ("token", "avg", "map"):
        raise ConvertError("%s: timm_pool %s is not a pooling lemevit.h runs for an OpenCLIP VisionTransformer tower "
                           "(token, avg, map)" % (where, _short(pool)))
    if pool == "map" and not attn:
        raise ConvertError("%s: timm_pool map, but the trunk has no attention-pool head (attn_pool.*): the config "
                           "does not belong to these weights" % where)
    if pool != "map" and attn:
        raise ConvertError("%s: timm_pool %s, but the trunk has an attention-pool head (attn_pool.*), which timm "
                           "keeps for map pooling only: the config does not belong to these weights" % (where, pool))
    return pool


@detector("vit", "OpenCLIP timm image tower (EVA, SigLIP / VisionTransformer)")
def detect_open_clip_timm(sd, ctx):
    """OpenCLIP's TimmModel around a timm Eva trunk (EVA02-B-16, EVA02-L-14, ...) or a timm
    VisionTransformer trunk (the SigLIP models ViT-B-16-SigLIP, ViT-SO400M-14-SigLIP, ...: timm_pool 'map',
    the trunk's own attention pool, and timm_proj 'none', so the pooled output is the embedding; also
    MobileCLIP2-L-14, vit_medium_patch16_gap_256): visual.trunk.* (or trunk.* for model.visual alone)
    and the adapter head visual.head.*.  The image embedding is
    head(trunk(x)): with timm_proj null the trunk's own biased classifier head is the projection
    (create_model(num_classes=embed_dim, global_pool=timm_pool)); with timm_proj 'linear' the trunk has
    no head and head.proj (a bias only with timm_proj_bias) projects.  Either becomes the graph's
    embedding projection (proj.weight / proj.bias), so lmv_run_features() gives the embedding.  The
    pooling, the timm model name (hence RoPE's options) and the preprocessing come from
    open_clip_config.json beside the weights; without it they are assumed as OpenCLIP's EVA-02 configs
    state them (a VisionTransformer trunk: timm's defaults; with an attention pool SigLIP's
    preprocessing), and printed as assumed."""
    from .clip import CLIP_TEXT, PRE_CLIP
    if any(k.startswith("visual.trunk.") for k in sd):
        p = "visual."
    elif any(k.startswith("trunk.") for k in sd) and all(k.startswith(("trunk.", "head.")) for k in sd):
        p = ""
    else:
        return None
    trunk = OrderedDict((k[len(p) + 6:], v) for k, v in sd.items() if k.startswith(p + "trunk."))
    vc, pre, mode_stated, oc_path = _open_clip_vision_cfg(ctx)
    h = ctx.hints
    saved = (h.name, h.name_src, h.kwargs, h.kwargs_src) if h is not None else None
    if h is not None and isinstance(vc.get("timm_model_name"), str):
        h.name, h.name_src = vc["timm_model_name"], oc_path + " (vision_cfg.timm_model_name)"
        kw = vc.get("timm_model_kwargs")
        h.kwargs, h.kwargs_src = ((dict(kw), oc_path + " (vision_cfg.timm_model_kwargs)") if isinstance(kw, dict)
                                  else ({}, None))
    eva = eva_layout(trunk, ctx) is not None
    if not eva and not _is_timm_vit_trunk(trunk):
        if h is not None:
            h.name, h.name_src, h.kwargs, h.kwargs_src = saved
        if not p:
            return None   # model.visual of another timm trunk: the timm detectors see it without 'trunk.'
        raise ConvertError("OpenCLIP timm image tower (visual.trunk.*): only EVA / EVA-02 (timm eva.py) and "
                           "VisionTransformer (timm vision_transformer.py) trunks are recognised by lemevit.h; this "
                           "trunk is another timm model%s" % (" (%s)" % vc["timm_model_name"]
                                                              if isinstance(vc.get("timm_model_name"), str) else ""))
    where = "%s (vision_cfg)" % oc_path
    side = {}
    siglip = not eva and "attn_pool.latent" in trunk   # an attention-pool VisionTransformer: OpenCLIP's SigLIP
    if oc_path:
        pool, proj = vc.get("timm_pool", "avg"), vc.get("timm_proj", "linear")
        if eva and pool not in ("token", "avg"):
            raise ConvertError("%s: timm_pool %s is not a pooling lemevit.h runs for an OpenCLIP timm tower (token, "
                               "avg)" % (where, _short(pool)))
        if proj not in ("linear", "none", "", None):
            raise ConvertError("%s: timm_proj %s is not a projection lemevit.h runs (linear, none, null)"
                               % (where, _short(proj)))
        kw = vc.get("timm_model_kwargs") if isinstance(vc.get("timm_model_kwargs"), dict) else {}
        if eva:
            side["vit.pool"] = pool
            if proj not in ("linear",) and "use_fc_norm" not in kw and ("fc_norm.weight" in trunk) != (pool == "avg"):
                # create_model(global_pool=pool): timm's Eva builds fc_norm (and no final norm) for 'avg' only
                raise ConvertError("%s: timm_pool %s, but the trunk %s fc_norm, which timm's Eva builds for avg "
                                   "pooling only: the config does not belong to these weights"
                                   % (where, pool, "has" if "fc_norm.weight" in trunk else "has no"))
        else:
            vpool = _open_clip_vit_pool(trunk, pool, proj, where)
            if proj == "none" and ("head.weight" in trunk or "head.bias" in trunk):
                raise ConvertError("%s: timm_proj none (the trunk built without a classifier head), but the trunk "
                                   "has head.weight / head.bias: the config does not belong to these weights" % where)
            if vpool is not None and h is not None:
                # TimmModel passes the pooling to timm (create_model / reset_classifier global_pool=timm_pool)
                h.kwargs = dict(h.kwargs or {}, global_pool=vpool)
                h.kwargs_src = h.kwargs_src or where
        if isinstance(vc.get("image_size"), int) and not isinstance(vc.get("image_size"), bool):
            side["img_size"] = [vc["image_size"]] * 2
    elif eva and "fc_norm.weight" not in trunk:   # (fc_norm comes with avg pooling)
        ctx.settings.update("default", {"vit.pool": "token"})   # every OpenCLIP EVA-02 config's timm_pool
    elif not eva:
        D = trunk["patch_embed.proj.weight"].shape[0]
        if D in OPEN_CLIP_VIT_HEADS:   # SigLIP SO400M's 16 heads, assumed (and printed) without a model name
            ctx.settings.update("default", {"vit.num_heads": OPEN_CLIP_VIT_HEADS[D]})
    head = [k for k in sd if k.startswith(p + "head.")]
    odd = [k for k in head if k not in (p + "head.proj.weight", p + "head.proj.bias")]
    if odd:
        raise ConvertError("%s: OpenCLIP's %s adapter head is not supported by lemevit.h (a linear projection, "
                           "head.proj, is)" % (odd[0], "MLP" if ".mlp." in odd[0] else
                                               "attention-pool" if ".pool." in odd[0] else "unknown"))
    body, back = OrderedDict(trunk), dict((k, p + "trunk." + k) for k in trunk)
    if head and ("head.weight" in trunk or "head.bias" in trunk):
        raise ConvertError("%strunk.head.* and %shead.proj.* are both present, but an OpenCLIP tower projects once"
                           % (p, p))
    for part in ("weight", "bias"):   # the projection: head.proj, else the trunk's classifier head
        name, key = ("proj." + part, p + "head.proj." + part) if head else ("head." + part, p + "trunk.head." + part)
        if key in sd:
            body.pop(name, None)
            back.pop(name, None)
            body["proj." + part], back["proj." + part] = sd[key], key
    text = [k for k in sd if not k.startswith(p)] if p else []
    ctx.settings.update("sidecar", side)
    if eva:
        m = detect_timm_eva(body, ctx)
    else:
        from .vit import detect_timm_vit
        m = detect_timm_vit(body, ctx)
        if m is None:
            raise ConvertError("OpenCLIP timm image tower: the VisionTransformer trunk is not a layout lemevit.h runs")
    m.used = set(back.get(k, k) for k in m.used)
    m.source = "open_clip"
    # OpenCLIP's transform: shorter side to the input size, centre crop; SigLIP's: squashed to the input size
    m.pre_defaults = dict(PRE_OPEN_CLIP_SIGLIP if siglip else PRE_CLIP)
    if oc_path and "pre.resize" not in pre and (mode_stated or not siglip):
        pre["pre.crop_pct"] = 1.0   # image_transform: the shorter side resized to image_size, then centre-cropped
    ctx.settings.update("sidecar", pre)
    if oc_path:
        ctx.notes.append("read %s" % oc_path)
    if head or "proj.weight" in body:
        m.notes.append("OpenCLIP timm image tower: %s is the embedding projection"
                       % ("head.proj" if head else "the trunk's head"))
    else:
        m.notes.append("OpenCLIP timm image tower without a projection: the pooled output is the image embedding")
    if text:
        m.dropped.append(("the text tower and logit scale of the CLIP checkpoint (only the image encoder is "
                          "converted)", [k for k in text if CLIP_TEXT.match(k)]))
    return m
