"""LeMeViT: official and training-era names."""

from collections import OrderedDict
from ..base import ConvertError
from ..family import IMAGENET_MEAN, IMAGENET_STD, Model, _block_indices, _rename
from ..registry import builder, detector, register_family
from ..settings import coerce

LEMEVIT_KEYS = OrderedDict([
    ("lemevit.depths", "in"), ("lemevit.embed_dims", "in"), ("lemevit.mlp_hidden", "in"),
    ("lemevit.attn_types", "s"), ("lemevit.head_dim", "i"), ("lemevit.num_meta", "i"),
    ("lemevit.norm_eps", "f"), ("lemevit.meta_eps", "f"), ("lemevit.bn_eps", "f"), ("lemevit.post_norm", "i"),
])
register_family("lemevit", LEMEVIT_KEYS, assumable=[
    ("lemevit.head_dim", "--set lemevit.head_dim=N"),
    ("lemevit.post_norm", "--set lemevit.post_norm=0|1"),
])
# ---------------------------------------------------------------------------------- LeMeViT

# the official training pipeline: resize 256 bicubic, centre crop 224, ImageNet mean/std
PRE_LEMEVIT = {"pre.mean": IMAGENET_MEAN, "pre.std": IMAGENET_STD, "pre.crop_pct": 0.875, "pre.interp": "bicubic"}
# block attention sub-module -> attention type letter (E is the v2 dual cross attention, "D2")
LEMEVIT_ATTN = (("attn.q.weight", "C"), ("attn.qkv1.weight", "D"), ("attn.qv1.weight", "E"), ("attn.qkv.weight", "S"))


# the attention module's tensors per type letter: (input projections, output projections)
LEMEVIT_ATTN_MODULES = {"C": (("q", "kv"), ("proj",)), "D": (("qkv1", "qkv2"), ("proj_x", "proj_c")),
                        "E": (("qv1", "kv2"), ("proj_x", "proj_c")), "S": (("qkv",), ("proj",))}


# the official registered variants (models/lemevit.py; their earlier mixformer_* / sformer_* names):
# all with head_dim 32 and pre-norm blocks
OFFICIAL_NAMES = {"lemevit_tiny", "lemevit_small", "lemevit_base", "lemevit_small_v2", "lemevit_tiny_v2",
                  "mixformer_tiny", "mixformer_small", "mixformer_base", "mixformer_small_v2", "mixformer_tiny_v2",
                  "sformer_tiny"}


def lemevit_metadata_settings(ctx):
    """Options the tensors cannot show, from the checkpoint's metadata: the training args'
    pre_norm (official MixBlock / LeMeBlock pre_norm=False: post-norm blocks) and the name of an
    official registered variant."""
    h = ctx.hints
    if h is None:
        return {}
    s = {}
    name = (h.name or "").split(".")[0]
    if name in OFFICIAL_NAMES:
        s.update({"lemevit.head_dim": 32, "lemevit.post_norm": 0})
        ctx.notes.append("graph options from the model name %s (%s)" % (name, h.name_src))
    args = ctx.info.get("args") or {}
    for src, d in (("the checkpoint's training args", args), (h.kwargs_src, h.kwargs or {})):
        v = d.get("pre_norm")
        if isinstance(v, bool) or v in (0, 1):
            s["lemevit.post_norm"] = 0 if v else 1
            ctx.notes.append("pre_norm=%s from %s" % (bool(v), src))
        v = d.get("head_dim")
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            s["lemevit.head_dim"] = v
    return s


def lemevit_tensor_names(types, depths, head):
    """Every tensor name the LeMeViT graph reads (the official module's parameters and buffers,
    BatchNorm counters aside), for these attention types and depths; gamma1/gamma2 (layer scale)
    are included and read when the checkpoint has them."""
    names = set(["meta_tokens", "norm_c.weight", "norm_c.bias"])
    bn = ("weight", "bias", "running_mean", "running_var")
    names.update("norm." + p for p in bn)
    if head:
        names.update(("head.weight", "head.bias"))
    for m in ("0", "3"):
        names.update("downsample_layers.0.%s.%s" % (m, p) for p in ("weight", "bias"))
    for m in ("1", "4"):
        names.update("downsample_layers.0.%s.%s" % (m, p) for p in bn)
    for i, (t, depth) in enumerate(zip(types, depths)):
        if i > 0 and types[i - 1] != "C":   # after a cross-attention stage the downsample is Identity
            names.update("downsample_layers.%d.0.%s" % (i, p) for p in ("weight", "bias"))
            names.update("downsample_layers.%d.1.%s" % (i, p) for p in bn)
        for m in ("0", "1", "3", "4"):
            names.update("meta_token_downsample.%d.%s.%s" % (i, m, p) for p in ("weight", "bias"))
        ins, outs = LEMEVIT_ATTN_MODULES[t]
        for j in range(depth):
            b = "stages.%d.%d." % (i, j)
            for m in ("pos_embed", "norm1", "norm2", "mlp.0", "mlp.3") + tuple("attn." + x for x in ins + outs):
                names.update(b + m + "." + p for p in ("weight", "bias"))
            names.update((b + "gamma1", b + "gamma2"))
    return names


@detector("lemevit", "LeMeViT")
def detect_lemevit(sd, ctx):
    """The official LeMeViT (models/lemevit.py) and its training-era names (prototypes,
    prototype_downsample)."""
    if not ("meta_tokens" in sd or "prototypes" in sd) or "downsample_layers.0.0.weight" not in sd:
        return None
    renamed, back = _rename(sd, [(r"^prototypes$", "meta_tokens"),
                                 (r"^prototype_downsample\.", "meta_token_downsample.")])
    m = build_lemevit(renamed, ctx, "lemevit", {})
    m.used = set(back[k] for k in m.used)
    if "prototypes" in sd:
        m.notes.append("training-era names prototypes/prototype_downsample renamed")
    return m


@builder("lemevit")
def build_lemevit(sd, ctx, source, defaults, name_hint=None):
    """A LeMeViT Model from a state dict in the official names.  Depths, widths, attention types
    and MLP widths come from the tensors; head_dim (32 in every released variant) and the
    epsilons from the official constants."""
    st = ctx.settings
    st.update("default", defaults)
    st.update("default", {"lemevit.head_dim": 32, "lemevit.norm_eps": 1e-6, "lemevit.meta_eps": 1e-5,
                          "lemevit.bn_eps": 1e-5, "lemevit.post_norm": 0})
    st.update("sidecar", lemevit_metadata_settings(ctx))
    n_stages = len(_block_indices(sd, "meta_token_downsample."))
    if n_stages < 1 or n_stages > 8:
        raise ConvertError("LeMeViT layout with %d stages: expected 1 to 8" % n_stages)
    depths, dims, hidden, types = [], [], [], ""
    for i in range(n_stages):
        blocks = _block_indices(sd, "stages.%d." % i)
        if not blocks or blocks != list(range(len(blocks))):
            raise ConvertError("LeMeViT stage %d has no blocks or a gap in its block numbers" % i)
        depths.append(len(blocks))
        kinds = [t for key, t in LEMEVIT_ATTN if "stages.%d.0.%s" % (i, key) in sd]
        if len(kinds) != 1:
            raise ConvertError("LeMeViT stage %d: cannot tell its attention type (C/D/D2/S) from the keys" % i)
        types += kinds[0]
        dims.append(sd["stages.%d.0.pos_embed.weight" % i].shape[0])
        hidden.append(sd["stages.%d.0.mlp.0.weight" % i].shape[0])
    head_dim = st.get("lemevit.head_dim")
    for i, c in enumerate(dims):
        if c % head_dim:
            raise ConvertError("LeMeViT stage %d width %d is not a multiple of head_dim %d; pass "
                               "--set lemevit.head_dim=N" % (i, c, head_dim))
    expected = lemevit_tensor_names(types, depths, "head.weight" in sd)
    gammas = [k for k in sd if k.endswith((".gamma1", ".gamma2"))]
    if gammas:
        # official layer scale (layer_scale_init_value > 0): gamma1/gamma2 in every block or none
        want = set(k for k in expected if k.endswith((".gamma1", ".gamma2")))
        if set(gammas) != want:
            raise ConvertError("LeMeViT layer scale: every block needs gamma1 and gamma2, but %d of %d are present"
                               % (len(set(gammas) & want), len(want)))
    used, T = set(), OrderedDict()
    for k, t in sd.items():
        if k not in expected or (k.endswith((".gamma1", ".gamma2")) and not gammas):
            continue   # not read by the graph: left for the accounting in pipeline.detect to name
        t.check(k)
        if k.endswith((".gamma1", ".gamma2")):
            C = dims[int(k.split(".")[1])]
            if t.numel != C:
                raise ConvertError("%s has shape %s, expected %d values (1, 1, %d)" % (k, list(t.shape), C, C))
        T[k] = t
        used.add(k)
    head = sd.get("head.weight")
    K = head.shape[0] if head is not None else 0
    args = ctx.info.get("args") or {}
    img = st.get("img_size") or ([args["img_size"]] * 2 if isinstance(args.get("img_size"), int) else [224, 224])
    cfg = OrderedDict()
    cfg["in_chans"] = sd["downsample_layers.0.0.weight"].shape[1]
    cfg["img_size"] = list(img)
    cfg["num_classes"] = K
    cfg["num_features"] = dims[-1]
    cfg["lemevit.depths"] = depths
    cfg["lemevit.embed_dims"] = dims
    cfg["lemevit.mlp_hidden"] = hidden
    cfg["lemevit.attn_types"] = types
    cfg["lemevit.head_dim"] = head_dim
    cfg["lemevit.num_meta"] = sd["meta_tokens"].shape[0]
    for k in ("lemevit.norm_eps", "lemevit.meta_eps", "lemevit.bn_eps", "lemevit.post_norm"):
        cfg[k] = st.get(k)
    for k in cfg:
        cfg[k] = coerce(k, cfg[k])
    known = {("CDDSS", (64, 64, 128, 192, 320)): "lemevit_tiny", ("CDDSS", (96, 96, 192, 320, 384)): "lemevit_small",
             ("CDDSS", (96, 96, 192, 384, 512)): "lemevit_base", ("CDDSS", (64, 64, 128, 256, 512)): "lemevit_small_v2",
             ("CEESS", (96, 96, 192, 320, 384)): "lemevit_tiny_v2", ("SSSS", (96, 192, 320, 384)): "vit_tiny"}
    name = name_hint or (args.get("model") if isinstance(args.get("model"), str) else None) or \
        known.get((types, tuple(dims)), "lemevit_%s_%s" % (types.replace("E", "D2").lower(), "_".join(map(str, dims))))
    return Model("lemevit", source, cfg, T, used, pre_defaults=PRE_LEMEVIT, name=name)


