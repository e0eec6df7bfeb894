"""Hugging Face SigLIP image encoders (SiglipVisionModel, the vision tower of a SiglipModel) on the
ViT graph: renamed to timm's names, the multihead-attention pooling head (`head.probe`,
`head.attention.in_proj_*`) as timm's attention-pool ("map") head, so lmv_run_features() gives
the pooled image embedding.  A SiglipModel's text tower and logit scale/bias are dropped by name."""

import re
from collections import OrderedDict

from ..base import ConvertError
from ..family import _read_json_beside, _rename
from ..hf import merge_qkv, original_keys, processor_settings, vision_settings
from ..registry import detector
from ..tensors import Tensor
from .clip import HF_CLIP_ACT, HF_CLIP_TEXT, _as3
from .vit import build_vit

HALF = [0.5, 0.5, 0.5]
# SiglipImageProcessor: resize straight to the input size (no crop), bicubic, mean/std 0.5
PRE_SIGLIP = {"pre.mean": HALF, "pre.std": HALF, "pre.resize": 0, "pre.crop_pct": 1.0, "pre.interp": "bicubic"}
# the heads of the released SigLIP towers by width (B, L, So400m, g-opt), when no config.json says
SIGLIP_HEADS_BY_DIM = {768: 12, 1024: 16, 1152: 16, 1536: 16}

HF_SIGLIP_RULES = [
    (r"^vision_model\.embeddings\.patch_embedding\.", "patch_embed.proj."),
    (r"^vision_model\.embeddings\.position_embedding\.weight$", "pos_embed"),
    (r"^vision_model\.encoder\.layers\.(\d+)\.", r"blocks.\1."),
    (r"^(blocks\.\d+)\.layer_norm1\.", r"\1.norm1."),
    (r"^(blocks\.\d+)\.layer_norm2\.", r"\1.norm2."),
    (r"^(blocks\.\d+)\.self_attn\.out_proj\.", r"\1.attn.proj."),
    (r"^vision_model\.post_layernorm\.", "norm."),
    (r"^vision_model\.head\.probe$", "attn_pool.latent"),
    (r"^vision_model\.head\.attention\.out_proj\.", "attn_pool.proj."),
    (r"^vision_model\.head\.layernorm\.", "attn_pool.norm."),
    (r"^vision_model\.head\.mlp\.", "attn_pool.mlp."),
    (r"^classifier\.", "head."),
]


def _rows(t, a, b):
    """Rows a..b of a 2-D or 1-D tensor, as a view (nothing copied)."""
    return Tensor(t.storage, t.offset + a * t.stride[0], (b - a,) + t.shape[1:], t.stride, t.dtype, t.error)


def siglip_preprocessing(ctx):
    """pre.* from a SiglipImageProcessor's preprocessor_config.json beside the weights."""
    pre, pre_path, side = processor_settings(ctx)
    if pre is None:
        return side
    size = pre.get("size")
    if pre.get("do_resize", True) and isinstance(size, dict) and "height" in size and "width" in size:
        side["pre.resize"] = 0      # straight to the input size, no crop
        side["pre.crop_pct"] = 1.0
    if isinstance(size, dict) and "shortest_edge" in size:
        raise ConvertError("%s: size.shortest_edge: SigLIP's processor resizes to height x width; this one is not "
                           "a SiglipImageProcessor lemevit.h knows (pass --resize N / --crop-pct F)" % pre_path)
    return side


@detector("vit", "Hugging Face SigLIP vision model")
def detect_hf_siglip(sd, ctx):
    """SiglipVisionModel and SiglipModel (vision_model.*, no class token; the pooled output is the
    attention-pooling head's, after post_layernorm) and SiglipForImageClassification (classifier.*
    on the mean of the tokens after post_layernorm)."""
    if "vision_model.embeddings.patch_embedding.weight" not in sd or \
            "vision_model.embeddings.class_embedding" in sd or \
            "vision_model.encoder.layers.0.self_attn.q_proj.weight" not in sd:
        return None
    text = [k for k in sd if HF_CLIP_TEXT.match(k)]
    body = OrderedDict((k, v) for k, v in sd.items() if not HF_CLIP_TEXT.match(k))
    # SiglipForImageClassification: the classifier on the mean of post_layernorm's tokens; the
    # tower's own pooling head, if it kept one, is not used
    classifier = "classifier.weight" in body
    unused_head = [k for k in body if k.startswith("vision_model.head.")] if classifier else []
    for k in unused_head:
        del body[k]
    if not classifier and "vision_model.head.probe" not in body:
        raise ConvertError("Hugging Face SigLIP without its pooling head (vision_use_head=False): the model has no "
                           "pooled output; lemevit.h runs SigLIP towers with vision_model.head.*")
    merged, origin = OrderedDict(), {}
    for k, v in body.items():
        m = re.match(r"^vision_model\.encoder\.layers\.(\d+)\.self_attn\.(q|k|v)_proj\.(weight|bias)$", k)
        if m:
            if m.group(2) == "q":
                merge_qkv(body, merged, origin, "vision_model.encoder.layers.%s.self_attn.%%s_proj.%s" % m.group(1, 3),
                          "qkv", "vision_model.encoder.layers.%s.attn.qkv.%s" % m.group(1, 3), "Hugging Face SigLIP")
            continue
        m = re.match(r"^vision_model\.head\.attention\.in_proj_(weight|bias)$", k)
        if m:
            # nn.MultiheadAttention's packed [q; k; v]: q for the probe, [k; v] as timm's kv Linear
            D = body["vision_model.embeddings.patch_embedding.weight"].shape[0]
            if v.ndim not in (1, 2) or v.shape[0] != 3 * D or (v.ndim == 2 and v.shape[1] != D):
                raise ConvertError("%s has shape %s, expected [%d%s]" % (k, list(v.shape), 3 * D,
                                                                         ", %d" % D if v.ndim == 2 else ""))
            v.check(k)
            for nk, part in (("attn_pool.q.", _rows(v, 0, D)), ("attn_pool.kv.", _rows(v, D, 3 * D))):
                merged[nk + m.group(1)] = part
                origin[nk + m.group(1)] = [k]
            continue
        merged[k] = v
    renamed, back = _rename(merged, HF_SIGLIP_RULES)
    for nk in list(renamed):
        if nk.startswith("attn_pool.q.") or nk.startswith("attn_pool.kv."):
            back[nk] = nk   # split from in_proj (origin maps them back)
    if "pos_embed" in renamed:
        renamed["pos_embed"] = _as3(renamed["pos_embed"], back["pos_embed"])
    cfg, cfg_path = _read_json_beside(ctx.path, "config.json")
    defaults = dict(PRE_SIGLIP)
    # SiglipVisionConfig's defaults: gelu_pytorch_tanh, layer_norm_eps 1e-6; HF interpolates the
    # position embedding bicubic without antialias
    defaults.update({"vit.norm_eps": 1e-6, "vit.act": "gelu_tanh", "vit.pos_interp": "bicubic"})
    D = body["vision_model.embeddings.patch_embedding.weight"].shape[0]
    if D in SIGLIP_HEADS_BY_DIM:
        defaults["vit.num_heads"] = SIGLIP_HEADS_BY_DIM[D]
    ctx.determined.update(("vit.block", "vit.pool", "vit.pool_prefix"))
    if classifier:
        ctx.notes.append("SiglipForImageClassification: the classifier on the mean of the normed tokens")
    vc, where, side = vision_settings(ctx, cfg, cfg_path, HF_CLIP_ACT, "SiglipVisionConfig's defaults assumed "
                                      "(gelu_pytorch_tanh, layer_norm_eps 1e-6)")
    if vc is not None and vc.get("vision_use_head") is False and not classifier:
        raise ConvertError("%s: vision_use_head is false but the weights have a pooling head" % where)
    side.update(siglip_preprocessing(ctx))
    ctx.settings.update("sidecar", side)
    m = build_vit(renamed, ctx, "hf_siglip", defaults)
    m.used = original_keys(m.used, origin, back)
    if unused_head:
        m.dropped.append(("the vision tower's attention-pooling head, which SiglipForImageClassification does not "
                          "use", unused_head))
    if text:
        m.dropped.append(("the text model and logit scale/bias of the SiglipModel (only the image encoder is "
                          "converted)", text))
    return m
