"""Image encoders on the ViT graph: OpenAI CLIP / OpenCLIP visual towers, Hugging Face CLIP vision
models and facebookresearch/dinov2 hub files.

Each layout is renamed to timm's names and built by the ViT builder; CLIP's `proj` becomes the
graph's embedding projection (vit.proj), so lmv_run_features() gives the image embedding.  What a
checkpoint holds beyond the image encoder (a CLIP text tower, DINOv2's training-only mask token)
is dropped by name (Model.dropped) and listed in the summary."""

import array
import re
import sys
from collections import OrderedDict

from ..base import ConvertError, _short
from ..family import IMAGENET_MEAN, IMAGENET_STD, _read_json_beside, _rename, side_value as _side_value
from ..hf import encoder_settings, merge_qkv, original_keys, processor_settings, vision_settings
from ..registry import detector
from ..tensors import Tensor, f32_tensor
from .vit import build_vit

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
# CLIP's transform: bicubic resize of the shorter side to the input size, centre crop
PRE_CLIP = {"pre.mean": CLIP_MEAN, "pre.std": CLIP_STD, "pre.crop_pct": 1.0, "pre.interp": "bicubic"}
# the DINOv2 evaluation transform: resize 256, centre crop 224, bicubic, ImageNet mean/std
PRE_DINOV2 = {"pre.mean": IMAGENET_MEAN, "pre.std": IMAGENET_STD, "pre.crop_pct": 224.0 / 256.0,
              "pre.interp": "bicubic"}

# the parts of a whole CLIP checkpoint that are not the image encoder (OpenAI CLIP, OpenCLIP)
# (OpenCLIP: text_projection may be a Linear, a Hugging Face text tower lives under text.)
CLIP_TEXT = re.compile(r"^(token_embedding\.|positional_embedding$|transformer\.|ln_final\.|text_projection(\.|$)|"
                       r"text\.|logit_scale$|logit_bias$|attn_mask$|input_resolution$|context_length$|vocab_size$)")
# ... and of a Hugging Face CLIPModel
HF_CLIP_TEXT = re.compile(r"^(text_model\.|text_projection\.|logit_scale$|logit_bias$)")


def _transpose(t):
    """A view of a 2-D tensor with its dimensions swapped (nothing copied)."""
    return Tensor(t.storage, t.offset, (t.shape[1], t.shape[0]), (t.stride[1], t.stride[0]), t.dtype, t.error)


def _add_f32(a, b, shape):
    """a + b as float32, elementwise (both `shape`-sized): one float32 addition, as PyTorch does."""
    x, y = array.array("f"), array.array("f")
    x.frombytes(a.f32())
    y.frombytes(b.f32())
    if sys.byteorder == "big":
        x.byteswap()
        y.byteswap()
    z = array.array("f", (p + q for p, q in zip(x, y)))
    if sys.byteorder == "big":
        z.byteswap()
    return f32_tensor(shape, z.tobytes())


def _as3(t, key, rows=None):
    """A [D] or [P, D] embedding as timm's [1, P, D]."""
    if t.ndim == 1:
        return t.reshape((1, 1, t.shape[0]))
    if t.ndim == 2:
        return t.reshape((1, t.shape[0], t.shape[1]))
    raise ConvertError("%s has shape %s, expected 1-D or 2-D" % (key, list(t.shape)))


# ---------------------------------------------------------------------------------- OpenAI CLIP / OpenCLIP

CLIP_RULES = [
    (r"^conv1\.", "patch_embed.proj."),
    (r"^class_embedding$", "cls_token"),
    (r"^positional_embedding$", "pos_embed"),
    (r"^ln_pre\.", "norm_pre."),
    (r"^transformer\.resblocks\.(\d+)\.", r"blocks.\1."),
    (r"^(blocks\.\d+)\.ln_1\.", r"\1.norm1."),
    (r"^(blocks\.\d+)\.ln_2\.", r"\1.norm2."),
    (r"^(blocks\.\d+)\.attn\.in_proj_weight$", r"\1.attn.qkv.weight"),
    (r"^(blocks\.\d+)\.attn\.in_proj_bias$", r"\1.attn.qkv.bias"),
    (r"^(blocks\.\d+)\.attn\.out_proj\.", r"\1.attn.proj."),
    (r"^(blocks\.\d+)\.mlp\.c_fc\.", r"\1.mlp.fc1."),
    (r"^(blocks\.\d+)\.mlp\.c_proj\.", r"\1.mlp.fc2."),
    (r"^(blocks\.\d+)\.ls_([12])\.gamma$", r"\1.ls\2.gamma"),
    (r"^ln_post\.", "norm."),
    (r"^proj$", "proj.weight"),
]


@detector("vit", "OpenAI CLIP / OpenCLIP visual tower")
def detect_clip_visual(sd, ctx):
    """OpenAI CLIP's and OpenCLIP's VisionTransformer: x = ln_pre(cls + patches + pos); blocks;
    ln_post(x[:, 0]) @ proj.  Alone (model.visual's state dict) or in a whole CLIP checkpoint."""
    if "visual.class_embedding" in sd:
        p = "visual."
    elif "class_embedding" in sd and "conv1.weight" in sd:
        p = ""
    else:
        return None
    if p + "conv1.weight" not in sd or p + "transformer.resblocks.0.attn.in_proj_weight" not in sd:
        return None
    if p + "attn_pool.attn.in_proj_weight" in sd or any(k.startswith(p + "attn_pool.") for k in sd):
        raise ConvertError("OpenCLIP visual towers with an attention pool (CoCa, %sattn_pool.*) are not supported "
                           "by lemevit.h" % p)
    visual = OrderedDict((k[len(p):], v) for k, v in sd.items() if k.startswith(p))
    text = [k for k in sd if not k.startswith(p)] if p else []
    stray = [k for k in text if not CLIP_TEXT.match(k)]
    renamed, back = _rename(visual, CLIP_RULES)
    for key in ("cls_token", "pos_embed"):
        if key in renamed:
            renamed[key] = _as3(renamed[key], p + back[key])
    if "proj.weight" in renamed:
        w = renamed["proj.weight"]
        if w.ndim != 2:
            raise ConvertError("%sproj has shape %s, expected [width, embed_dim]" % (p, list(w.shape)))
        renamed["proj.weight"] = _transpose(w)   # x @ proj is a Linear with weight proj^T
    defaults = dict(PRE_CLIP)
    defaults.update({"vit.norm_eps": 1e-5, "vit.act": "quickgelu", "vit.pos_interp": "bicubic", "vit.pool": "token"})
    # the tower has one block form and pools its class token; LayerNorm eps 1e-5 is nn.LayerNorm's
    # default, which both OpenAI CLIP and OpenCLIP use
    ctx.determined.update(("vit.block", "vit.pool", "vit.norm_eps"))
    name = (ctx.hints.name or "") if ctx.hints is not None else ""
    if open_clip_settings(ctx, renamed, back):
        pass
    elif "quickgelu" in name.lower() or "openai" in name.lower():
        ctx.determined.add("vit.act")
    elif "<torchscript>" in (ctx.info.get("path") or []):
        # OpenAI released CLIP as TorchScript archives (clip.load(jit=True)); their towers use QuickGELU
        ctx.determined.add("vit.act")
        ctx.notes.append("a TorchScript CLIP archive, OpenAI's released format: QuickGELU")
    else:
        ctx.notes.append("activation: OpenAI CLIP and OpenCLIP's *-quickgelu models use QuickGELU (assumed); "
                         "OpenCLIP models trained with nn.GELU need --set vit.act=gelu")
    m = build_vit(renamed, ctx, "clip", defaults)
    m.used = set(p + back[k] for k in m.used)
    if text:
        left = [k for k in text if k not in stray]
        m.dropped.append(("the text tower and logit scale of the CLIP checkpoint (only the image "
                          "encoder is converted)", left))
    return m


def open_clip_settings(ctx, renamed, back):
    """The graph options and preprocessing an OpenCLIP hub directory states in the
    open_clip_config.json beside the weights ({"model_cfg": {..., "quick_gelu", "vision_cfg"},
    "preprocess_cfg"}).  Returns True when it was read; refuses the options the graph cannot run."""
    oc, oc_path = _read_json_beside(ctx.path, "open_clip_config.json")
    if not isinstance(oc, dict) or not isinstance(oc.get("model_cfg"), dict):
        return False
    mc = oc["model_cfg"]
    vc = mc.get("vision_cfg") if isinstance(mc.get("vision_cfg"), dict) else {}
    side = {}
    ctx.notes.append("read %s" % oc_path)
    # OpenCLIP builds nn.GELU unless quick_gelu is set (OpenAI's weights and the *-quickgelu models)
    side["vit.act"] = "quickgelu" if mc.get("quick_gelu") else "gelu"
    ctx.determined.add("vit.act")
    width, head_width = vc.get("width"), vc.get("head_width", 64)
    if isinstance(width, int) and isinstance(head_width, int) and head_width > 0 and width % head_width == 0:
        side["vit.num_heads"] = _side_value(oc_path, "vision_cfg.width / head_width", "vit.num_heads",
                                            width // head_width)
    eps = (vc.get("norm_kwargs") or {}).get("eps") if isinstance(vc.get("norm_kwargs"), dict) else None
    if eps is not None:
        side["vit.norm_eps"] = _side_value(oc_path, "vision_cfg.norm_kwargs.eps", "vit.norm_eps", eps)
    if vc.get("global_average_pool"):
        raise ConvertError("%s: vision_cfg.global_average_pool (the mean over every token, class token "
                           "included) is not a pooling lemevit.h runs" % oc_path)
    pool = vc.get("pool_type", "tok")
    if pool == "avg":
        side["vit.pool"] = "avg"
        if vc.get("final_ln_after_pool") and "norm.weight" in renamed:
            # ln_post on the mean of the patch tokens: the graph's fc_norm
            for s in ("weight", "bias"):
                if "norm." + s in renamed:
                    renamed["fc_norm." + s] = renamed.pop("norm." + s)
                    back["fc_norm." + s] = back.pop("norm." + s)
    elif pool != "tok":
        raise ConvertError("%s: vision_cfg.pool_type %s is not one lemevit.h runs (tok, avg)" % (oc_path, _short(pool)))
    side.update(open_clip_preprocess(oc, oc_path))
    ctx.settings.update("sidecar", side)
    return True


def open_clip_preprocess(oc, oc_path):
    """pre.* from an open_clip_config.json's preprocess_cfg (mean, std, interpolation, resize_mode)."""
    side = {}
    pc = oc.get("preprocess_cfg") if isinstance(oc.get("preprocess_cfg"), dict) else {}
    if isinstance(pc.get("mean"), list):
        side["pre.mean"] = _side_value(oc_path, "preprocess_cfg.mean", "pre.mean", pc["mean"])
    if isinstance(pc.get("std"), list):
        side["pre.std"] = _side_value(oc_path, "preprocess_cfg.std", "pre.std", pc["std"])
    if pc.get("interpolation") in ("bicubic", "bilinear"):
        side["pre.interp"] = pc["interpolation"]
    if pc.get("resize_mode") == "squash":
        side["pre.resize"] = 0
    elif pc.get("resize_mode") not in (None, "shortest"):
        raise ConvertError("%s: preprocess_cfg.resize_mode %s is not a resize lemevit.h does (shortest, squash); "
                           "pass --resize N / --crop-pct F" % (oc_path, _short(pc.get("resize_mode"))))
    return side


# ---------------------------------------------------------------------------------- Hugging Face CLIP

HF_CLIP_RULES = [
    (r"^vision_model\.embeddings\.class_embedding$", "cls_token"),
    (r"^vision_model\.embeddings\.patch_embedding\.", "patch_embed.proj."),
    (r"^vision_model\.embeddings\.position_embedding\.weight$", "pos_embed"),
    (r"^vision_model\.pre_layrnorm\.", "norm_pre."),
    (r"^vision_model\.encoder\.layers\.(\d+)\.", r"blocks.\1."),
    (r"^(blocks\.\d+)\.layer_norm1\.", r"\1.norm1."),
    (r"^(blocks\.\d+)\.layer_norm2\.", r"\1.norm2."),
    (r"^(blocks\.\d+)\.self_attn\.out_proj\.", r"\1.attn.proj."),
    (r"^vision_model\.post_layernorm\.", "norm."),
    (r"^visual_projection\.weight$", "proj.weight"),
]
HF_CLIP_ACT = {"quick_gelu": "quickgelu", "gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
               "relu": "relu"}


def hf_clip_preprocessing(ctx):
    """pre.* from a CLIPImageProcessor's preprocessor_config.json beside the weights: mean, std,
    resample and the shorter-side resize (size.shortest_edge, or an old plain int)."""
    pre, pre_path, side = processor_settings(ctx)
    if pre is None:
        return side
    size = pre.get("size")
    edge = size.get("shortest_edge") if isinstance(size, dict) else size
    if pre.get("do_resize", True) and edge is not None:
        side["pre.resize"] = _side_value(pre_path, "size.shortest_edge", "pre.resize", edge)
    return side


@detector("vit", "Hugging Face CLIP vision model")
def detect_hf_clip(sd, ctx):
    """CLIPVisionModel, CLIPVisionModelWithProjection and CLIPModel (vision_model.*; the image
    embedding is visual_projection(post_layernorm(class token)))."""
    if "vision_model.embeddings.class_embedding" not in sd or \
            "vision_model.encoder.layers.0.self_attn.q_proj.weight" not in sd:
        return None
    text = [k for k in sd if HF_CLIP_TEXT.match(k)]
    body = OrderedDict((k, v) for k, v in sd.items() if not HF_CLIP_TEXT.match(k))
    merged, origin = OrderedDict(), {}
    for k, v in body.items():
        m = re.match(r"^vision_model\.encoder\.layers\.(\d+)\.self_attn\.(q|k|v)_proj\.(weight|bias)$", k)
        if not m:
            merged[k] = v
            continue
        if m.group(2) == "q":
            merge_qkv(body, merged, origin, "vision_model.encoder.layers.%s.self_attn.%%s_proj.%s" % m.group(1, 3), "qkv",
                      "vision_model.encoder.layers.%s.attn.qkv.%s" % m.group(1, 3), "Hugging Face CLIP")
    renamed, back = _rename(merged, HF_CLIP_RULES)
    for key in ("cls_token", "pos_embed"):
        if key in renamed:
            renamed[key] = _as3(renamed[key], back[key])
    cfg, cfg_path = _read_json_beside(ctx.path, "config.json")
    defaults = dict(PRE_CLIP)
    defaults.update({"vit.norm_eps": 1e-5, "vit.act": "quickgelu", "vit.pos_interp": "bicubic", "vit.pool": "token"})
    ctx.determined.update(("vit.block", "vit.pool"))
    _, _, side = vision_settings(ctx, cfg, cfg_path, HF_CLIP_ACT,
                                 "CLIPVisionConfig's defaults assumed (quick_gelu, layer_norm_eps 1e-5)")
    side.update(hf_clip_preprocessing(ctx))
    ctx.settings.update("sidecar", side)
    m = build_vit(renamed, ctx, "hf_clip", defaults)
    m.used = original_keys(m.used, origin, back)
    if text:
        m.dropped.append(("the text model and logit scale of the CLIPModel (only the image encoder is "
                          "converted)", text))
    return m


# ---------------------------------------------------------------------------------- DINOv2 hub

@detector("vit", "facebookresearch/dinov2")
def detect_dinov2(sd, ctx):
    """DinoVisionTransformer (torch.hub facebookresearch/dinov2): features are the class token after
    the final norm (x_norm_clstoken, what the hub model returns).  Register tokens are inserted
    after the class token and get no position embedding, so the class token's row of pos_embed is
    added to it here and the file's pos_embed covers the patches only (vit.no_embed_class)."""
    if "mask_token" not in sd or "cls_token" not in sd or "patch_embed.proj.weight" not in sd or \
            "blocks.0.attn.qkv.weight" not in sd:
        return None
    if any(re.match(r"^blocks\.\d+\.\d+\.", k) for k in sd):
        raise ConvertError("DINOv2 with chunked blocks (blocks.C.N.*, block_chunks > 0) is not supported; "
                           "save the model with block_chunks=0")
    swiglu = any(re.match(r"^blocks\.\d+\.mlp\.w12\.", k) for k in sd)
    renamed = OrderedDict((k, v) for k, v in sd.items() if k != "mask_token")
    back = dict((k, k) for k in renamed)
    if swiglu:
        # SwiGLUFFN / SwiGLUFFNFused (ViT-g/14): w12 gives [x1; x2], w3(silu(x1) * x2): a packed glu MLP
        renamed, back = _rename(renamed, [(r"^(blocks\.\d+)\.mlp\.w12\.", r"\1.mlp.fc1."),
                                          (r"^(blocks\.\d+)\.mlp\.w3\.", r"\1.mlp.fc2.")])
        ctx.notes.append("SwiGLU MLP (ffn_layer swiglu): w12 / w3 as a packed glu MLP, SiLU")
    if "register_tokens" in renamed:
        _fold_class_pos(renamed, ctx, "DINOv2")
        renamed["reg_token"] = renamed.pop("register_tokens")
        back["reg_token"] = "register_tokens"
    defaults = dict(PRE_DINOV2)
    # DinoVisionTransformer: LayerNorm eps 1e-6, nn.GELU, pre-norm blocks, class-token features; its
    # position embedding is resampled bicubic by the scale factor (grid + 0.1) / stored grid
    defaults.update({"vit.norm_eps": 1e-6, "vit.act": "silu" if swiglu else "gelu",
                     "vit.pos_interp": "bicubic_dinov2", "vit.pool": "token"})
    ctx.determined.update(("vit.block", "vit.pool", "vit.norm_eps", "vit.act"))
    m = build_vit(renamed, ctx, "dinov2", defaults)
    if swiglu and m.config.get("vit.mlp") != "glu":
        raise ConvertError("DINOv2: mlp.w12 is not twice mlp.w3's input width, not a SwiGLU MLP")
    m.used = set(back[k] for k in m.used)
    m.dropped.append(("DINOv2's mask token (used only in masked-image training)", ["mask_token"]))
    return m


# ---------------------------------------------------------------------------------- Hugging Face Dinov2Model

HF_DINOV2_RULES = [
    (r"^embeddings\.cls_token$", "cls_token"),
    (r"^embeddings\.position_embeddings$", "pos_embed"),
    (r"^embeddings\.register_tokens$", "reg_token"),
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^encoder\.layer\.(\d+)\.", r"blocks.\1."),
    (r"^(blocks\.\d+)\.attention\.output\.dense\.", r"\1.attn.proj."),
    (r"^(blocks\.\d+)\.layer_scale([12])\.lambda1$", r"\1.ls\2.gamma"),
    (r"^(blocks\.\d+)\.mlp\.weights_in\.", r"\1.mlp.fc1."),
    (r"^(blocks\.\d+)\.mlp\.weights_out\.", r"\1.mlp.fc2."),
    (r"^layernorm\.", "norm."),
    (r"^classifier\.", "head."),
]


def _fold_class_pos(renamed, ctx, what):
    """DINOv2's register tokens: inserted after the class token once the position embedding is added,
    so they get none.  The class token's row of pos_embed is added to cls_token here and the file's
    pos_embed keeps the patch rows (vit.no_embed_class)."""
    cls, pos = renamed["cls_token"], renamed["pos_embed"]
    if cls.ndim != 3 or pos.ndim != 3 or pos.shape[1] < 2 or cls.shape[2] != pos.shape[2]:
        raise ConvertError("%s: cls_token %s and pos_embed %s do not fit together"
                           % (what, list(cls.shape), list(pos.shape)))
    D, P = pos.shape[2], pos.shape[1]
    pos_cls = Tensor(pos.storage, pos.offset, (1, 1, D), (pos.stride[0], pos.stride[1], pos.stride[2]),
                     pos.dtype, pos.error)
    renamed["cls_token"] = _add_f32(cls, pos_cls, (1, 1, D))
    renamed["pos_embed"] = Tensor(pos.storage, pos.offset + pos.stride[1], (1, P - 1, D), pos.stride,
                                  pos.dtype, pos.error)
    ctx.settings.update("sidecar", {"vit.no_embed_class": 1})
    ctx.notes.append("register tokens: the class token's position embedding added to cls_token, pos_embed "
                     "keeps the patch rows (no_embed_class)")


def hf_dinov2_preprocessing(ctx):
    """pre.* and img_size from a BitImageProcessor's preprocessor_config.json beside the weights:
    mean, std, resample, the shorter-side resize (size.shortest_edge) and the centre crop (crop_size),
    which is the input size the model runs at."""
    pre, pre_path, side = processor_settings(ctx)
    if pre is None:
        return side
    size, crop = pre.get("size"), pre.get("crop_size")
    if pre.get("do_resize", True) and isinstance(size, dict) and size.get("shortest_edge") is not None:
        side["pre.resize"] = _side_value(pre_path, "size.shortest_edge", "pre.resize", size["shortest_edge"])
    if pre.get("do_center_crop", True) and isinstance(crop, dict) and "height" in crop:
        side["img_size"] = _side_value(pre_path, "crop_size", "img_size", [crop.get("height"), crop.get("width")])
    return side


@detector("vit", "Hugging Face Dinov2Model")
def detect_hf_dinov2(sd, ctx):
    """Dinov2Model and Dinov2WithRegistersModel (bare keys), and their ForImageClassification forms
    (dinov2.* / dinov2_with_registers.*, plus classifier.*).  The models' features are pooler_output,
    the class token after the final layernorm; the classifiers' logits are classifier(concat(class
    token, mean of the patch tokens)) (vit.pool token_avg; register tokens are not averaged).
    config.json beside the weights gives eps, heads, activation, use_swiglu_ffn and the labels."""
    p = None
    for cand in ("dinov2.", "dinov2_with_registers.", ""):
        if cand + "embeddings.mask_token" in sd and cand + "encoder.layer.0.layer_scale1.lambda1" in sd:
            p = cand
            break
    if p is None:
        return None
    regs = p + "embeddings.register_tokens" in sd
    what = "Dinov2WithRegistersModel" if regs else "Dinov2Model"
    swiglu = any(re.match(r"^%sencoder\.layer\.\d+\.mlp\.weights_in\." % re.escape(p), k) for k in sd)
    classifier = [k for k in sd if k in ("classifier.weight", "classifier.bias")]
    left = [k for k in sd if not k.startswith(p) and k not in classifier]
    if left:
        raise ConvertError("Hugging Face %s: %d tensor(s) outside %s* that are not its classifier (%s), which "
                           "lemevit.h does not run; pass --ignore REGEX to convert the backbone alone"
                           % (what, len(left), p, ", ".join(left[:5])))
    if classifier and "classifier.weight" not in classifier:
        raise ConvertError("Hugging Face %s: classifier.bias without classifier.weight" % what)
    body = OrderedDict((k[len(p):], v) for k, v in sd.items() if k.startswith(p) and k != p + "embeddings.mask_token")
    for k in classifier:
        body[k] = sd[k]
    merged, origin = OrderedDict(), {}
    for k, v in body.items():
        m = re.match(r"^encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)$", k)
        if not m:
            merged[k] = v
            continue
        if m.group(2) == "query":
            merge_qkv(body, merged, origin, "encoder.layer.%s.attention.attention.%%s.%s" % m.group(1, 3),
                      ("query", "key", "value"), "encoder.layer.%s.attn.qkv.%s" % m.group(1, 3),
                      "Hugging Face %s" % what, prefix=p)
    renamed, back = _rename(merged, HF_DINOV2_RULES)
    if regs:
        _fold_class_pos(renamed, ctx, "Hugging Face %s" % what)
    cfg, cfg_path = _read_json_beside(ctx.path, "config.json")
    defaults = dict(PRE_DINOV2)
    # Dinov2Model resamples position_embeddings bicubic to the grid's size; Dinov2WithRegistersModel
    # the same with antialias=True (PIL's kernel, a = -0.5)
    defaults.update({"vit.norm_eps": 1e-6, "vit.act": "gelu", "vit.pos_interp": "bicubic_aa" if regs else "bicubic",
                     "vit.pool": "token_avg" if classifier else "token"})
    ctx.determined.update(("vit.block", "vit.pool", "vit.pos_interp"))
    side = {}
    labels = None
    if isinstance(cfg, dict):
        ctx.notes.append("read %s" % cfg_path)
        side.update(encoder_settings(cfg, cfg_path, HF_CLIP_ACT, image_size=False))
        if "use_swiglu_ffn" in cfg and bool(cfg["use_swiglu_ffn"]) != swiglu:
            raise ConvertError("%s: use_swiglu_ffn is %s but the weights %s a SwiGLU MLP (mlp.weights_in)"
                               % (cfg_path, _short(cfg["use_swiglu_ffn"]), "have" if swiglu else "have no"))
        if regs and isinstance(cfg.get("num_register_tokens"), int) and \
                cfg["num_register_tokens"] != renamed["reg_token"].shape[1]:
            raise ConvertError("%s: num_register_tokens is %d but embeddings.register_tokens has %d rows"
                               % (cfg_path, cfg["num_register_tokens"], renamed["reg_token"].shape[1]))
        labels = hf_id2label(cfg)
    if swiglu:
        # Dinov2SwiGLUFFN: weights_in gives [x1; x2], silu(x1) * x2, whatever hidden_act says
        side["vit.act"] = "silu"
        ctx.determined.add("vit.act")
        ctx.notes.append("SwiGLU MLP (use_swiglu_ffn): weights_in / weights_out as a packed glu MLP, SiLU")
    side.update(hf_dinov2_preprocessing(ctx))
    ctx.settings.update("sidecar", side)
    if not regs:
        ctx.notes.append("pos_embed is resampled bicubic to the input's grid (--set vit.pos_interp=bicubic_dinov2 "
                         "for the facebookresearch hub model's 0.1-offset scale factor)")
    m = build_vit(renamed, ctx, "hf_dinov2", defaults)
    if swiglu and m.config.get("vit.mlp") != "glu":
        raise ConvertError("Hugging Face %s: mlp.weights_in is not twice mlp.weights_out's input width" % what)
    m.used = original_keys(m.used, origin, back, p)
    m.used = set(k[len(p):] if k[len(p):] in classifier else k for k in m.used)
    m.labels = labels
    m.dropped.append(("%s's mask token (used only in masked-image training)" % what, [p + "embeddings.mask_token"]))
    return m


def hf_id2label(cfg):
    """The class names of a Hugging Face config's id2label, when they are 0..K-1 and not LABEL_N."""
    id2label = cfg.get("id2label")
    if not isinstance(id2label, dict) or not id2label:
        return None
    try:
        items = sorted((int(k), str(v)) for k, v in id2label.items())
    except ValueError:
        return None
    names = [v for _, v in items]
    if [k for k, _ in items] != list(range(len(items))) or all(re.match(r"^LABEL_\d+$", n) for n in names):
        return None
    return names
