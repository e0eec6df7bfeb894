"""LeMeViT: official and training-era names."""

from collections import OrderedDict
from ..base import ConvertError
from ..family import IMAGENET_MEAN, IMAGENET_STD, Model, _block_indices, _rename
from ..registry import builder, detector, register_family
from ..settings import coerce

LEMEVIT_KEYS = OrderedDict([
    ("lemevit.depths", "in"), ("lemevit.embed_dims", "in"), ("lemevit.mlp_hidden", "in"),
    ("lemevit.attn_types", "s"), ("lemevit.head_dim", "i"), ("lemevit.num_meta", "i"),
    ("lemevit.norm_eps", "f"), ("lemevit.meta_eps", "f"), ("lemevit.bn_eps", "f"),
])
register_family("lemevit", LEMEVIT_KEYS)
# ---------------------------------------------------------------------------------- LeMeViT

# the official training pipeline: resize 256 bicubic, centre crop 224, ImageNet mean/std
PRE_LEMEVIT = {"pre.mean": IMAGENET_MEAN, "pre.std": IMAGENET_STD, "pre.crop_pct": 0.875, "pre.interp": "bicubic"}
# block attention sub-module -> attention type letter (E is the v2 dual cross attention, "D2")
LEMEVIT_ATTN = (("attn.q.weight", "C"), ("attn.qkv1.weight", "D"), ("attn.qv1.weight", "E"), ("attn.qkv.weight", "S"))


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
                          "lemevit.bn_eps": 1e-5})
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
    used, T = set(), OrderedDict()
    for k, t in sd.items():
        if k.endswith("num_batches_tracked"):   # a BatchNorm counter: nothing to run
            used.add(k)
            continue
        t.check(k)
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
    for k in ("lemevit.norm_eps", "lemevit.meta_eps", "lemevit.bn_eps"):
        cfg[k] = st.get(k)
    for k in cfg:
        cfg[k] = coerce(k, cfg[k])
    known = {("CDDSS", (64, 64, 128, 192, 320)): "lemevit_tiny", ("CDDSS", (96, 96, 192, 320, 384)): "lemevit_small",
             ("CDDSS", (96, 96, 192, 384, 512)): "lemevit_base", ("CDDSS", (64, 64, 128, 256, 512)): "lemevit_small_v2",
             ("CEESS", (96, 96, 192, 320, 384)): "lemevit_tiny_v2", ("SSSS", (96, 192, 320, 384)): "vit_tiny"}
    name = name_hint or (args.get("model") if isinstance(args.get("model"), str) else None) or \
        known.get((types, tuple(dims)), "lemevit_%s_%s" % (types.replace("E", "D2").lower(), "_".join(map(str, dims))))
    return Model("lemevit", source, cfg, T, used, pre_defaults=PRE_LEMEVIT, name=name)


