"""Swin V1: Microsoft / timm in every era / torchvision / Hugging Face; Swin V2: timm, Microsoft, Hugging Face."""

import re
from collections import OrderedDict
from ..base import ConvertError, _short
from ..family import IMAGENET_MEAN, IMAGENET_STD, Model, _block_indices, _isqrt_exact, _read_json_beside, _rename
from ..registry import builder, detector, register_family
from ..settings import coerce
from ..tensors import concat0, f32_tensor, zeros_f32

SWIN_KEYS = OrderedDict([
    ("swin.embed_dim", "i"), ("swin.depths", "in"), ("swin.num_heads", "in"), ("swin.mlp_hidden", "in"),
    ("swin.window_size", "i"), ("swin.patch_size", "i"), ("swin.norm_eps", "f"), ("swin.pad_mode", "s"),
    ("swin.shift_rule", "s"), ("swin.version", "i"), ("swin.pretrained_window", "in"), ("swin.window_from", "s"),
])
SWIN_KEYS["swin.window_size"] = "in"   # one window for every stage, or one per stage
register_family("swin", SWIN_KEYS, choices={
    "swin.pad_mode": ("pad_then_roll", "roll_then_pad"),
    "swin.shift_rule": ("per_axis", "min", "always"),
    "swin.window_from": ("input", "img_size", "fixed"),
}, assumable=[
    ("swin.window_size", "--set swin.window_size=N[,N...]"),
    ("swin.pretrained_window", "--set swin.pretrained_window=N[,N...]"),
])
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
    v2 = any(k.endswith("attn.cpb_mlp.0.weight") or k.endswith("attn.logit_scale") for k in sd)
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
    if v2 and "absolute_pos_embed" in sd:
        raise ConvertError("Swin V2 with an absolute position embedding (ape=True) is not supported")
    for s in range(n_stages):
        blocks = _block_indices(sd, "layers.%d.blocks." % s)
        if not blocks or blocks != list(range(len(blocks))):
            raise ConvertError("Swin stage %d has no blocks or a gap in its block numbers" % s)
        depths.append(len(blocks))
        hidden.append(sd["layers.%d.blocks.0.mlp.fc1.weight" % s].shape[0])
        if v2:
            heads.append(_swinv2_blocks(sd, s, blocks, width, T, used))
            if s + 1 < n_stages:
                _swin_merge(sd, s, T, used)
                width *= 2
            continue
        table = sd.get("layers.%d.blocks.0.attn.relative_position_bias_table" % s)
        if table is None or table.ndim != 2:
            raise ConvertError("Swin stage %d: relative_position_bias_table is missing" % s)
        side = _isqrt_exact(table.shape[0])
        if not side or side % 2 == 0:
            raise ConvertError("relative_position_bias_table has %d rows, not (2w-1)^2" % table.shape[0])
        w = (side + 1) // 2
        window = window or []
        window.append(w)
        heads.append(table.shape[1])
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
            _swin_merge(sd, s, T, used)
            width *= 2
    for k in ("patch_embed.proj.weight", "patch_embed.proj.bias", "patch_embed.norm.weight", "patch_embed.norm.bias",
              "absolute_pos_embed", "norm.weight", "norm.bias", "head.weight", "head.bias"):
        if k in sd:
            sd[k].check(k)
            T[k] = sd[k]
            used.add(k)
    head = sd.get("head.weight")
    K = head.shape[0] if head is not None else 0
    if v2:
        window = _per_stage(st.get("swin.window_size"), n_stages, "swin.window_size")
        pretrained = _per_stage(st.get("swin.pretrained_window") or [0], n_stages, "swin.pretrained_window")
    else:
        ctx.determined.update(("swin.window_size", "swin.pretrained_window"))   # the bias tables fix the window
        pretrained = [0]
        if window and st.rank("swin.window_size") >= 1:
            said = _per_stage(st.get("swin.window_size"), n_stages, "swin.window_size")
            if said * (n_stages if len(said) == 1 else 1) != window:
                raise ConvertError("swin.window_size=%s disagrees with the relative position bias tables, which "
                                   "give %s; leave it unset for Swin V1" % (",".join(map(str, said)),
                                                                          ",".join(map(str, window))))
        window = window if window and len(set(window)) > 1 else [window[0] if window else 7]
    img = st.get("img_size")
    if not img:
        ape = sd.get("absolute_pos_embed")
        if ape is not None and _isqrt_exact(ape.shape[1]):
            img = [_isqrt_exact(ape.shape[1]) * p] * 2
        elif v2:
            img = [256, 256]   # every timm / Microsoft Swin V2 classifier but the 192 and 384 ones
        else:
            img = [384, 384] if window[0] == 12 else [224, 224]
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
    cfg["swin.version"] = 2 if v2 else 1
    cfg["swin.pretrained_window"] = pretrained
    cfg["swin.window_from"] = st.get("swin.window_from") or "input"
    for k in cfg:
        cfg[k] = coerce(k, cfg[k])
    known = {(96, (2, 2, 6, 2)): "tiny", (96, (2, 2, 18, 2)): "small", (128, (2, 2, 18, 2)): "base",
             (192, (2, 2, 18, 2)): "large"}
    size = known.get((D, tuple(depths)))
    ver = "v2" if v2 else ""
    name = name_hint or ("swin%s_%s_patch%d_window%d_%d" % (ver, size, p, window[0], img[0]) if size else
                         "swin%s_d%d_%s_patch%d_window%d" % (ver, D, "-".join(map(str, depths)), p, window[0]))
    pre = dict(defaults)
    if img[0] >= 384 and "pre.resize" not in pre:
        pre["pre.crop_pct"] = 1.0
    return Model("swin", source, cfg, T, used, pre_defaults=pre, name=name)


def _swin_merge(sd, s, T, used):
    for part in ("norm.weight", "norm.bias", "reduction.weight"):
        k = "layers.%d.downsample.%s" % (s, part)
        if k not in sd:
            raise ConvertError("Swin layout: %s is missing" % k)
        T[k] = sd[k]
        used.add(k)


def _per_stage(value, n, key):
    v = list(value) if isinstance(value, (list, tuple)) else [value]
    if len(v) not in (1, n) or not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
        raise ConvertError("%s must be one value or one per stage (%d), not %s" % (key, n, value))
    return v


def _swinv2_blocks(sd, s, blocks, C, T, used):
    """Stage s of a Swin V2 (canonical timm names): cosine attention with logit_scale, the cpb MLP
    (Linear(2, hid) + ReLU + Linear(hid, heads)), q_bias / v_bias and no k bias (the file gets one
    qkv bias with zeros for k).  Returns the stage's heads."""
    ls = sd.get("layers.%d.blocks.0.attn.logit_scale" % s)
    if ls is None or ls.ndim != 3:
        raise ConvertError("Swin V2 stage %d: attn.logit_scale [heads, 1, 1] is missing" % s)
    heads = ls.shape[0]
    for b in blocks:
        pre = "layers.%d.blocks.%d." % (s, b)
        c0 = sd.get(pre + "attn.cpb_mlp.0.weight")
        if c0 is None or c0.ndim != 2 or c0.shape[1] != 2 or (pre + "attn.cpb_mlp.2.weight") not in sd:
            raise ConvertError("Swin V2 %sattn.cpb_mlp is missing or not Linear(2, hidden) + ReLU + Linear(hidden, "
                               "heads)" % pre)
        if (pre + "attn.cpb_mlp.2.bias") in sd:
            raise ConvertError("Swin V2 %sattn.cpb_mlp.2.bias: a biased last cpb layer is not supported" % pre)
        for part in ("norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight",
                     "attn.proj.bias", "attn.logit_scale", "attn.cpb_mlp.0.weight", "attn.cpb_mlp.0.bias",
                     "attn.cpb_mlp.2.weight", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias",
                     "mlp.fc2.weight", "mlp.fc2.bias"):
            k = pre + part
            if k in sd:
                sd[k].check(k)
                T[k] = sd[k]
                used.add(k)
        q, v = sd.get(pre + "attn.q_bias"), sd.get(pre + "attn.v_bias")
        if (q is None) != (v is None):
            raise ConvertError("Swin V2 %sattn: q_bias and v_bias come together" % pre)
        if q is not None:
            if tuple(q.shape) != (C,) or tuple(v.shape) != (C,):
                raise ConvertError("Swin V2 %sattn: q_bias %s and v_bias %s are not [%d]" % (pre, list(q.shape),
                                                                                      list(v.shape), C))
            q.check(pre + "attn.q_bias")
            v.check(pre + "attn.v_bias")
            if pre + "attn.qkv.bias" in sd:
                raise ConvertError("Swin V2 %sattn has both qkv.bias and q_bias/v_bias" % pre)
            k = pre + "attn.qkv.bias"
            T[k] = concat0([q, zeros_f32((C,)), v], k)
            used.update((pre + "attn.q_bias", pre + "attn.v_bias"))
            kb = pre + "attn.k_bias"   # a zero buffer some versions save
            if kb in sd:
                used.add(kb)
    return heads


SWINV2_NAME = re.compile(r"window(\d+)(?:to(\d+))?_(\d+)(?:to(\d+))?")


def swinv2_metadata(sd, ctx, n_stages):
    """Window sizes and input size stated by the checkpoint's metadata (timm model name or
    model_args, Microsoft's file names): settings for the 'sidecar' layer."""
    h = ctx.hints
    s = {}
    if h is None:
        return s
    name = (h.name or "").split(".")[0]
    m = SWINV2_NAME.search(name)
    if m and name.startswith("swinv2"):
        if m.group(2):
            p = int(m.group(1))
            s["swin.window_size"] = [int(m.group(2))]
            s["swin.pretrained_window"] = [p] * (n_stages - 1) + [p // 2]   # timm/Microsoft's 12to16 models
        else:
            s["swin.window_size"] = [int(m.group(1))]
            s["swin.pretrained_window"] = [0]
        img = int(m.group(4) or m.group(3))
        s["img_size"] = [img, img]
        ctx.notes.append("window sizes from the model name %s (%s)" % (name, h.name_src))
    kw = h.kwargs or {}
    if kw.get("always_partition"):
        raise ConvertError("%s: always_partition=True (windows and shifts kept on maps smaller than the window) is "
                           "not supported for Swin V2" % h.kwargs_src)
    if kw.get("act_layer", "gelu") not in ("gelu", None):
        raise ConvertError("%s: act_layer=%s is not supported for Swin V2 (GELU only)" % (h.kwargs_src,
                                                                                         kw.get("act_layer")))
    def ints(field):
        v = kw[field]
        v = list(v) if isinstance(v, (list, tuple)) else [v]
        if not v or not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= 256 for x in v):
            raise ConvertError("%s: %s=%s is not a size or a list of sizes in 0..256" % (h.kwargs_src, field, _short(v)))
        return v
    if "window_size" in kw:
        w = ints("window_size")
        if len(w) == 2 and w[0] != w[1]:
            raise ConvertError("%s: window_size=%s: non-square windows are not supported" % (h.kwargs_src, w))
        s["swin.window_size"] = [w[0]]
    if "pretrained_window_sizes" in kw:
        s["swin.pretrained_window"] = ints("pretrained_window_sizes")
    if isinstance(kw.get("img_size"), int) and not isinstance(kw.get("img_size"), bool):
        s["img_size"] = [kw["img_size"]] * 2
    return s


def _timm_layout(sd):
    """(whether sd is in timm's >= 0.9 layout -- downsample at the start of stages 1.., head.fc.* --,
    sd renamed to the older layout, {renamed key: original key})."""
    new_timm = "head.fc.weight" in sd or ("layers.0.downsample.reduction.weight" not in sd and
                                          "layers.1.downsample.reduction.weight" in sd)
    rules = []
    if new_timm:
        rules = [(r"^layers\.(\d+)\.downsample\.", lambda m: "layers.%d.downsample." % (int(m.group(1)) - 1)),
                 (r"^head\.fc\.", "head.")]
    renamed, back = _rename(sd, rules)
    return new_timm, renamed, back


@detector("swin", "timm/Microsoft Swin V2")
def detect_swinv2(sd, ctx):
    """Swin V2 in timm's layout (downsample at the start of stages 1.., head.fc.*) or Microsoft's
    (downsample at the end of each stage, head.*, buffers stored; also timm before 0.9)."""
    if "patch_embed.proj.weight" not in sd or \
            not any(re.match(r"^layers\.\d+\.blocks\.\d+\.attn\.cpb_mlp\.0\.weight$", k) for k in sd):
        return None
    new_timm, renamed, back = _timm_layout(sd)
    n_stages = len(_block_indices(renamed, "layers."))
    ctx.settings.update("sidecar", swinv2_metadata(renamed, ctx, n_stages))
    # timm decides the window and the shift per axis (roll, then pad); Microsoft's code (and timm
    # before 0.9) shrink both to min(H, W) when either side is not larger than the window
    ms = (ctx.info.get("path") or [])[:1] == ["model"]
    conv = {"swin.pad_mode": "roll_then_pad", "swin.shift_rule": "per_axis" if new_timm else "min",
            "swin.window_size": [8], "swin.pretrained_window": [0]}
    m = build_swin(renamed, ctx, "timm" if new_timm or not ms else "ms",
                   dict(PRE_SWIN_MS if ms else PRE_SWIN_TIMM, **conv))
    m.used = set(back[k] for k in m.used)
    m.notes.append("Swin V2 layout: %s" % ("timm" if new_timm else "Microsoft official"))
    return m


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
    new_timm, renamed, back = _timm_layout(sd)
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


# torchvision Swin_V2_T/S/B_Weights.IMAGENET1K_V1: resize 260 bicubic, crop 256
PRE_SWINV2_TORCHVISION = {"pre.mean": IMAGENET_MEAN, "pre.std": IMAGENET_STD, "pre.crop_pct": 256.0 / 260.0,
                          "pre.interp": "bicubic"}


def _torchvision_v2(renamed, back, ctx):
    """torchvision's swin_v2_t/s/b (features.* renamed): one window for every stage, never shrunk
    (maps padded to it) and shifts dropped on the real map; the k third of qkv.bias is zeroed at run
    time, so the file gets zeros there.  The window comes from the saved relative_coords_table
    buffers [1, 2w-1, 2w-1, 2] (8 assumed without them); torchvision has no pretrained window."""
    st = ctx.settings
    found = {}
    for k, t in renamed.items():
        if k.endswith("attn.relative_coords_table"):
            if t.ndim != 4 or t.shape[0] != 1 or t.shape[3] != 2 or t.shape[1] % 2 == 0 or t.shape[2] % 2 == 0:
                raise ConvertError("torchvision Swin V2 %s has shape %s, not [1, 2w-1, 2w-1, 2]" % (back[k], list(t.shape)))
            if t.shape[1] != t.shape[2]:
                raise ConvertError("torchvision Swin V2 %s: a non-square window %dx%d is not supported"
                                   % (back[k], (t.shape[1] + 1) // 2, (t.shape[2] + 1) // 2))
            found[back[k]] = (t.shape[1] + 1) // 2
    for k, t in renamed.items():
        m = re.match(r"^(layers\.\d+\.blocks\.\d+\.attn)\.relative_position_index$", k)
        w = found.get(back.get(m.group(1) + ".relative_coords_table", "")) if m else None
        if w and tuple(t.shape) != (w ** 4,):
            raise ConvertError("torchvision Swin V2 %s has shape %s, not [%d] for its %d-window"
                               % (back[k], list(t.shape), w ** 4, w))
    sizes = sorted(set(found.values()))
    if len(sizes) > 1:
        raise ConvertError("torchvision Swin V2: the relative_coords_table buffers give different windows %s; "
                           "torchvision builds one window for every block" % sizes)
    defaults = {"swin.pad_mode": "pad_then_roll", "swin.shift_rule": "per_axis", "swin.window_from": "fixed",
                "swin.window_size": [8], "swin.pretrained_window": [0]}
    ctx.determined.add("swin.pretrained_window")   # torchvision normalises the bias by its own window
    if sizes:
        ctx.determined.add("swin.window_size")
        defaults["swin.window_size"] = sizes
        if st.rank("swin.window_size") >= 1 and st.get("swin.window_size") not in (sizes, sizes[0]):
            said = st.get("swin.window_size")
            raise ConvertError("swin.window_size=%s disagrees with the relative_coords_table buffers, which give "
                               "%d; leave it unset for torchvision Swin V2"
                               % (",".join(map(str, said if isinstance(said, list) else [said])), sizes[0]))
    for k in list(renamed):
        if not re.match(r"^layers\.\d+\.blocks\.\d+\.attn\.qkv\.bias$", k):
            continue
        b, wt = renamed[k], renamed.get(k[:-len("bias")] + "weight")
        n = b.shape[0] if b.ndim == 1 else 0
        if b.ndim != 1 or n % 3 or wt is None or wt.ndim != 2 or wt.shape[0] != n:
            raise ConvertError("torchvision Swin V2 %s has shape %s, not [3 * dim] matching qkv.weight"
                               % (back[k], list(b.shape)))
        raw = b.f32(back[k])
        c = n // 3
        renamed[k] = f32_tensor((n,), raw[:4 * c] + bytes(4 * c) + raw[8 * c:])
    m = build_swin(renamed, ctx, "torchvision", dict(PRE_SWINV2_TORCHVISION, **defaults))
    m.used = set(back[k] for k in m.used)
    m.notes.append("Swin V2 layout: torchvision (k bias zeroed, window fixed at %s)" % m.config["swin.window_size"])
    return m


@detector("swin", "torchvision Swin")
def detect_swin_torchvision(sd, ctx):
    if "features.0.0.weight" not in sd or not any(k.startswith("features.1.0.attn.") for k in sd):
        return None
    renamed, back = _rename(sd, SWIN_TORCHVISION_RULES)
    if any(k.endswith("attn.cpb_mlp.0.weight") for k in renamed):
        return _torchvision_v2(renamed, back, ctx)
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


def _hf_join_qkv(renamed, back, model, v2=False):
    """Hugging Face Swin's separate query/key/value projections -> one qkv, rows [q; k; v]; V2's
    query and value biases (it has no key bias) -> q_bias and v_bias. Returns (tensors, {name: the
    original keys})."""
    merged, origin = OrderedDict(), {}
    for k, v in renamed.items():
        mm = re.match(r"^(layers\.\d+\.blocks\.\d+\.attn)\.(query|key|value)\.(weight|bias)$", k)
        if not mm:
            merged[k], origin[k] = v, [back[k]]
            continue
        if mm.group(2) != "query":
            continue
        if v2 and mm.group(3) == "bias":
            parts = ["%s.%s.bias" % (mm.group(1), n) for n in ("query", "value")]
            if "%s.key.bias" % mm.group(1) in renamed or parts[1] not in renamed:
                raise ConvertError("%s: %s: expected query and value biases and no key bias" % (model, back[k]))
            merged["%s.q_bias" % mm.group(1)], origin["%s.q_bias" % mm.group(1)] = v, [back[k]]
            merged["%s.v_bias" % mm.group(1)] = renamed[parts[1]]
            origin["%s.v_bias" % mm.group(1)] = [back[parts[1]]]
            continue
        parts = ["%s.%s.%s" % (mm.group(1), n, mm.group(3)) for n in ("query", "key", "value")]
        if not all(p in renamed for p in parts):
            raise ConvertError("%s: %s query/key/value are incomplete" % (model, back[k]))
        nk = "%s.qkv.%s" % (mm.group(1), mm.group(3))
        merged[nk] = concat0([renamed[p] for p in parts], nk)
        origin[nk] = [back[p] for p in parts]
    return merged, origin


def _hf_labels(m, cfg):
    """Class names from config.json's id2label when it names every class."""
    labels = cfg.get("id2label")
    if isinstance(labels, dict):
        names = [labels.get(str(i)) for i in range(m.config["num_classes"])]
        if all(isinstance(x, str) for x in names):
            m.labels = names


SWINV2_HF_RULES = [(r"^swinv2\.", "")] + SWIN_HF_RULES[1:] + [
    (r"\.attn\.continuous_position_bias_mlp\.", ".attn.cpb_mlp."),
]


@detector("swin", "Hugging Face Swin V2")
def detect_swinv2_hf(sd, ctx):
    """Hugging Face Swinv2ForImageClassification / Swinv2Model: separate query/key/value (no key
    bias), logit_scale and continuous_position_bias_mlp; window sizes from config.json."""
    key = "embeddings.patch_embeddings.projection.weight"
    if (key not in sd and "swinv2." + key not in sd) or \
            not any(".attention.self.continuous_position_bias_mlp." in k for k in sd):
        return None
    renamed, back = _rename(sd, SWINV2_HF_RULES)
    if "embeddings.position_embeddings" in renamed:
        raise ConvertError("Hugging Face Swin V2 with use_absolute_embeddings is not supported")
    merged, origin = _hf_join_qkv(renamed, back, "Hugging Face Swin V2", v2=True)
    cfg, cfg_path = _read_json_beside(ctx.path, "config.json")
    cfg = cfg if isinstance(cfg, dict) else {}
    if cfg:
        ctx.notes.append("window sizes, image size and labels from %s" % cfg_path)
    side = {}
    if isinstance(cfg.get("window_size"), int):
        side["swin.window_size"] = [cfg["window_size"]]
    pws = cfg.get("pretrained_window_sizes")
    if isinstance(pws, list) and all(isinstance(x, int) for x in pws):
        side["swin.pretrained_window"] = pws
    if isinstance(cfg.get("image_size"), int):
        side["img_size"] = [cfg["image_size"]] * 2
    eps = cfg.get("layer_norm_eps", 1e-5)
    if eps != 1e-5:
        raise ConvertError("Hugging Face Swin V2 with layer_norm_eps=%s is not supported (its patch and merging "
                           "norms keep 1e-5; one eps runs the whole model here)" % eps)
    if cfg.get("hidden_act", "gelu") != "gelu":
        raise ConvertError("Hugging Face Swin V2 with hidden_act=%s is not supported (GELU only)" % cfg.get("hidden_act"))
    ctx.settings.update("sidecar", side)
    # HF fixes window and shift when it builds the model, from config.image_size (min(height,
    # window), no shift when the height is not larger), whatever the input; it pads, then rolls
    m = build_swin(merged, ctx, "hf", dict(PRE_SWIN_HF, **{"swin.pad_mode": "pad_then_roll", "swin.shift_rule": "min",
                                                         "swin.window_size": [8], "swin.pretrained_window": [0],
                                                         "swin.window_from": "img_size"}))
    m.used = set(o for k in m.used for o in origin.get(k, [k]))
    _hf_labels(m, cfg)
    m.notes.append("Swin V2 layout: Hugging Face")
    return m


@detector("swin", "Hugging Face Swin")
def detect_swin_hf(sd, ctx):
    key = "embeddings.patch_embeddings.projection.weight"
    if key not in sd and "swin." + key not in sd:
        return None
    renamed, back = _rename(sd, SWIN_HF_RULES)
    if "embeddings.position_embeddings" in renamed:
        raise ConvertError("Hugging Face Swin with use_absolute_embeddings is not supported")
    merged, origin = _hf_join_qkv(renamed, back, "Hugging Face Swin")
    cfg = ctx.hf_config or {}
    eps = cfg.get("layer_norm_eps") if isinstance(cfg.get("layer_norm_eps"), (int, float)) else 1e-5
    m = build_swin(merged, ctx, "hf", dict(PRE_SWIN_HF, **{"swin.norm_eps": eps, "swin.pad_mode": "pad_then_roll",
                                                         "swin.shift_rule": "min"}))
    m.used = set(o for k in m.used for o in origin.get(k, [k]))
    _hf_labels(m, cfg)
    return m


