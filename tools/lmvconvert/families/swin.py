"""Swin: Microsoft / timm in every era / torchvision / Hugging Face."""

import re
from collections import OrderedDict
from ..base import ConvertError
from ..family import IMAGENET_MEAN, IMAGENET_STD, Model, _block_indices, _isqrt_exact, _rename
from ..registry import builder, detector, register_family
from ..settings import coerce
from ..tensors import concat0

SWIN_KEYS = OrderedDict([
    ("swin.embed_dim", "i"), ("swin.depths", "in"), ("swin.num_heads", "in"), ("swin.mlp_hidden", "in"),
    ("swin.window_size", "i"), ("swin.patch_size", "i"), ("swin.norm_eps", "f"), ("swin.pad_mode", "s"),
    ("swin.shift_rule", "s"),
])
register_family("swin", SWIN_KEYS, choices={
    "swin.pad_mode": ("pad_then_roll", "roll_then_pad"),
    "swin.shift_rule": ("per_axis", "min", "always"),
})
# ---------------------------------------------------------------------------------- Swin

# timm swin_* cfg: ImageNet mean/std, crop 0.9, bicubic; Microsoft's repo: resize 256 / crop 224
PRE_SWIN_TIMM = {"pre.mean": IMAGENET_MEAN, "pre.std": IMAGENET_STD, "pre.crop_pct": 0.9, "pre.interp": "bicubic"}
PRE_SWIN_MS = {"pre.mean": IMAGENET_MEAN, "pre.std": IMAGENET_STD, "pre.crop_pct": 224.0 / 256.0, "pre.interp": "bicubic"}
# torchvision Swin_T_Weights.IMAGENET1K_V1: resize 232 bicubic, crop 224
PRE_SWIN_TORCHVISION = {"pre.mean": IMAGENET_MEAN, "pre.std": IMAGENET_STD, "pre.crop_pct": 224.0 / 232.0,
                        "pre.interp": "bicubic"}
# Hugging Face AutoImageProcessor of the Swin checkpoints: resize straight to 224x224, bicubic
PRE_SWIN_HF = {"pre.mean": IMAGENET_MEAN, "pre.std": IMAGENET_STD, "pre.resize": 0, "pre.crop_pct": 1.0,
               "pre.interp": "bicubic"}
SWIN_BUFFERS = re.compile(r"(relative_position_index|attn_mask|relative_coords_table)$")


@builder("swin")
def build_swin(sd, ctx, source, defaults, name_hint=None):
    """A Swin V1 Model from a state dict in Microsoft's layout (downsample at the end of each stage,
    head.*).  Heads and window come from the relative position bias tables; the padding/shift
    convention from the source (overridable with --set)."""
    st = ctx.settings
    st.update("default", defaults)
    if any(k.endswith("attn.cpb_mlp.0.weight") or k.endswith("attn.logit_scale") for k in sd):
        raise ConvertError("this is a Swin V2 checkpoint (cosine attention, continuous position bias); "
                           "only Swin V1 is supported")
    used, T = set(), OrderedDict()
    for k in sd:
        if SWIN_BUFFERS.search(k):  # buffers the graph recomputes
            used.add(k)
    pw = sd.get("patch_embed.proj.weight")
    if pw is None or pw.ndim != 4:
        raise ConvertError("Swin layout: patch_embed.proj.weight is missing or not 4-D")
    D, C, p, _ = pw.shape
    n_stages = len(_block_indices(sd, "layers."))
    depths, heads, hidden = [], [], []
    window = None
    width = D
    for s in range(n_stages):
        blocks = _block_indices(sd, "layers.%d.blocks." % s)
        if not blocks or blocks != list(range(len(blocks))):
            raise ConvertError("Swin stage %d has no blocks or a gap in its block numbers" % s)
        depths.append(len(blocks))
        table = sd.get("layers.%d.blocks.0.attn.relative_position_bias_table" % s)
        if table is None or table.ndim != 2:
            raise ConvertError("Swin stage %d: relative_position_bias_table is missing" % s)
        side = _isqrt_exact(table.shape[0])
        if not side or side % 2 == 0:
            raise ConvertError("relative_position_bias_table has %d rows, not (2w-1)^2" % table.shape[0])
        w = (side + 1) // 2
        if window not in (None, w):
            raise ConvertError("Swin stages with different window sizes (%d, %d) are not supported" % (window, w))
        window = w
        heads.append(table.shape[1])
        hidden.append(sd["layers.%d.blocks.0.mlp.fc1.weight" % s].shape[0])
        for b in blocks:
            for part in ("norm1.weight", "norm1.bias", "attn.relative_position_bias_table", "attn.qkv.weight",
                         "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias", "norm2.weight", "norm2.bias",
                         "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"):
                k = "layers.%d.blocks.%d.%s" % (s, b, part)
                if k in sd:
                    sd[k].check(k)
                    T[k] = sd[k]
                    used.add(k)
        if s + 1 < n_stages:
            for part in ("norm.weight", "norm.bias", "reduction.weight"):
                k = "layers.%d.downsample.%s" % (s, part)
                if k not in sd:
                    raise ConvertError("Swin layout: %s is missing" % k)
                T[k] = sd[k]
                used.add(k)
            width *= 2
    for k in ("patch_embed.proj.weight", "patch_embed.proj.bias", "patch_embed.norm.weight", "patch_embed.norm.bias",
              "absolute_pos_embed", "norm.weight", "norm.bias", "head.weight", "head.bias"):
        if k in sd:
            sd[k].check(k)
            T[k] = sd[k]
            used.add(k)
    head = sd.get("head.weight")
    K = head.shape[0] if head is not None else 0
    img = st.get("img_size")
    if not img:
        ape = sd.get("absolute_pos_embed")
        if ape is not None and _isqrt_exact(ape.shape[1]):
            img = [_isqrt_exact(ape.shape[1]) * p] * 2
        else:
            img = [384, 384] if window == 12 else [224, 224]
    cfg = OrderedDict()
    cfg["in_chans"] = C
    cfg["img_size"] = list(img)
    cfg["num_classes"] = K
    cfg["num_features"] = width
    cfg["swin.embed_dim"] = D
    cfg["swin.depths"] = depths
    cfg["swin.num_heads"] = heads
    cfg["swin.mlp_hidden"] = hidden
    cfg["swin.window_size"] = window
    cfg["swin.patch_size"] = p
    cfg["swin.norm_eps"] = st.get("swin.norm_eps", 1e-5)
    cfg["swin.pad_mode"] = st.get("swin.pad_mode")
    cfg["swin.shift_rule"] = st.get("swin.shift_rule")
    for k in cfg:
        cfg[k] = coerce(k, cfg[k])
    known = {(96, (2, 2, 6, 2)): "tiny", (96, (2, 2, 18, 2)): "small", (128, (2, 2, 18, 2)): "base",
             (192, (2, 2, 18, 2)): "large"}
    size = known.get((D, tuple(depths)))
    name = name_hint or ("swin_%s_patch%d_window%d_%d" % (size, p, window, img[0]) if size else
                         "swin_d%d_%s_patch%d_window%d" % (D, "-".join(map(str, depths)), p, window))
    pre = dict(defaults)
    if img[0] >= 384 and "pre.resize" not in pre:
        pre["pre.crop_pct"] = 1.0
    return Model("swin", source, cfg, T, used, pre_defaults=pre, name=name)


@detector("swin", "timm/Microsoft Swin")
def detect_swin_timm(sd, ctx):
    """Microsoft's official files and timm in all eras: <= 0.8 (downsample at the end of a stage,
    head.*), 0.9.0-0.9.5 (downsample at the start of the next stage, head.fc.*, buffers stored) and
    >= 0.9.6 (no buffers); and Microsoft-named files of the code that builds the shift mask at run
    time (Microsoft's detection/segmentation backbones and the classifiers derived from them, e.g.
    seed 004): relative_position_index stored but no attn_mask anywhere."""
    if "patch_embed.proj.weight" not in sd or \
            not any(re.match(r"^layers\.\d+\.blocks\.\d+\.attn\.relative_position_bias_table$", k) for k in sd):
        return None
    new_timm = "head.fc.weight" in sd or ("layers.0.downsample.reduction.weight" not in sd and
                                          "layers.1.downsample.reduction.weight" in sd)
    rules = []
    if new_timm:
        rules = [(r"^layers\.(\d+)\.downsample\.", lambda m: "layers.%d.downsample." % (int(m.group(1)) - 1)),
                 (r"^head\.fc\.", "head.")]
    renamed, back = _rename(sd, rules)
    wrapper = ctx.info.get("path") or []
    ms = not new_timm and wrapper[:1] == ["model"]
    has_buffers = any(SWIN_BUFFERS.search(k) for k in sd)
    has_index = any(k.endswith("attn.relative_position_index") for k in sd)
    has_mask = any(k.endswith("attn_mask") for k in sd)
    shifted = any(re.match(r"^layers\.\d+\.blocks\.1\.", k) for k in renamed)
    if not new_timm and has_index and not has_mask and shifted:
        # The index is a persistent buffer but the mask is not: the mask is built at run time on the
        # padded map (Microsoft's Swin-Transformer-Object-Detection/-Semantic-Segmentation backbone
        # and the classifiers copied from it).  That code pads, then rolls, and never drops the
        # shift, not even on maps smaller than the window.  (timm <= 0.8 and Microsoft's
        # classification code store attn_mask in every shifted block of a stage larger than the window.)
        m = build_swin(renamed, ctx, "runtime-mask", dict(PRE_SWIN_MS if ms else PRE_SWIN_TIMM,
                                                          **{"swin.pad_mode": "pad_then_roll", "swin.shift_rule": "always"}))
        m.used = set(back[k] for k in m.used)
        m.notes.append("Swin layout: Microsoft names, shift mask built at run time (pad then roll, shift always "
                       "kept; detection-style code, e.g. seed 004)")
        return m
    source = "timm" if new_timm or not ms else "ms"
    era = ("timm >= 0.9.6" if not has_buffers else "timm 0.9.0-0.9.5") if new_timm else \
        ("Microsoft official" if ms else "timm <= 0.8")
    # Microsoft's code and timm <= 0.9.5 drop the shift on both axes when min(H, W) <= window (the
    # min rule); timm >= 0.9.6 decides per axis.  Inputs those old versions cannot run at all (maps
    # not divisible by the window) are run the way today's timm runs them: roll the map, then pad.
    rule = "per_axis" if new_timm and not has_buffers else "min"
    m = build_swin(renamed, ctx, source, dict(PRE_SWIN_MS if ms else PRE_SWIN_TIMM,
                                             **{"swin.pad_mode": "roll_then_pad", "swin.shift_rule": rule}))
    m.used = set(back[k] for k in m.used)
    m.notes.append("Swin layout: %s" % era)
    return m


SWIN_TORCHVISION_RULES = [
    (r"^features\.0\.0\.", "patch_embed.proj."),
    (r"^features\.0\.2\.", "patch_embed.norm."),
    (r"^features\.(\d+)\.(\d+)\.", lambda m: "layers.%d.blocks.%s." % ((int(m.group(1)) - 1) // 2, m.group(2))
     if int(m.group(1)) % 2 == 1 else m.group(0)),
    (r"^features\.(\d+)\.(reduction|norm)\.", lambda m: "layers.%d.downsample.%s." % (int(m.group(1)) // 2 - 1, m.group(2))),
    (r"^(layers\.\d+\.blocks\.\d+)\.mlp\.0\.", r"\1.mlp.fc1."),
    (r"^(layers\.\d+\.blocks\.\d+)\.mlp\.3\.", r"\1.mlp.fc2."),
]


@detector("swin", "torchvision Swin")
def detect_swin_torchvision(sd, ctx):
    if "features.0.0.weight" not in sd or not any(k.startswith("features.1.0.attn.") for k in sd):
        return None
    renamed, back = _rename(sd, SWIN_TORCHVISION_RULES)
    m = build_swin(renamed, ctx, "torchvision", dict(PRE_SWIN_TORCHVISION,
                                                    **{"swin.pad_mode": "pad_then_roll", "swin.shift_rule": "per_axis"}))
    m.used = set(back[k] for k in m.used)
    return m


SWIN_HF_RULES = [
    (r"^swin\.", ""),
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^embeddings\.norm\.", "patch_embed.norm."),
    (r"^encoder\.layers\.(\d+)\.blocks\.(\d+)\.layernorm_before\.", r"layers.\1.blocks.\2.norm1."),
    (r"^encoder\.layers\.(\d+)\.blocks\.(\d+)\.layernorm_after\.", r"layers.\1.blocks.\2.norm2."),
    (r"^encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.self\.", r"layers.\1.blocks.\2.attn."),
    (r"^encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.output\.dense\.", r"layers.\1.blocks.\2.attn.proj."),
    (r"^encoder\.layers\.(\d+)\.blocks\.(\d+)\.intermediate\.dense\.", r"layers.\1.blocks.\2.mlp.fc1."),
    (r"^encoder\.layers\.(\d+)\.blocks\.(\d+)\.output\.dense\.", r"layers.\1.blocks.\2.mlp.fc2."),
    (r"^encoder\.layers\.(\d+)\.downsample\.", r"layers.\1.downsample."),
    (r"^layernorm\.", "norm."),
    (r"^classifier\.", "head."),
]


@detector("swin", "Hugging Face Swin")
def detect_swin_hf(sd, ctx):
    key = "embeddings.patch_embeddings.projection.weight"
    if key not in sd and "swin." + key not in sd:
        return None
    renamed, back = _rename(sd, SWIN_HF_RULES)
    if "embeddings.position_embeddings" in renamed:
        raise ConvertError("Hugging Face Swin with use_absolute_embeddings is not supported")
    # separate query/key/value projections -> one qkv, rows [q; k; v]
    merged, origin = OrderedDict(), {}
    for k, v in renamed.items():
        mm = re.match(r"^(layers\.\d+\.blocks\.\d+\.attn)\.(query|key|value)\.(weight|bias)$", k)
        if not mm:
            merged[k], origin[k] = v, [back[k]]
            continue
        if mm.group(2) != "query":
            continue
        parts = ["%s.%s.%s" % (mm.group(1), n, mm.group(3)) for n in ("query", "key", "value")]
        if not all(p in renamed for p in parts):
            raise ConvertError("Hugging Face Swin: %s query/key/value are incomplete" % back[k])
        nk = "%s.qkv.%s" % (mm.group(1), mm.group(3))
        merged[nk] = concat0([renamed[p] for p in parts], nk)
        origin[nk] = [back[p] for p in parts]
    cfg = ctx.hf_config or {}
    eps = cfg.get("layer_norm_eps") if isinstance(cfg.get("layer_norm_eps"), (int, float)) else 1e-5
    m = build_swin(merged, ctx, "hf", dict(PRE_SWIN_HF, **{"swin.norm_eps": eps, "swin.pad_mode": "pad_then_roll",
                                                         "swin.shift_rule": "min"}))
    m.used = set(o for k in m.used for o in origin.get(k, [k]))
    labels = cfg.get("id2label")
    if isinstance(labels, dict):
        names = [labels.get(str(i)) for i in range(m.config["num_classes"])]
        if all(isinstance(x, str) for x in names):
            m.labels = names
    return m


