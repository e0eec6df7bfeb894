"""OpenCLIP EVA-02 image towers (open_clip's TimmModel around a timm Eva trunk: visual.trunk.*, the
trunk's own biased head as the projection, or an adapter head.proj), against a faithful reference of
open_clip/timm_model.py over tests/models/eva_ref.py (tests/models/openclip_timm.py) with the real key
names: a whole CustomTextCLIP checkpoint with open_clip_config.json beside it (the timm model name gives
RoPE's options, timm_pool the pooling, preprocess_cfg the preprocessing), the same without the config
(what the tensors cannot show printed as assumed), model.visual alone, the trunk head with mean pooling
(fc_norm), timm_proj 'linear' with mean pooling.  Random weights, small widths, batch 2, non-square
inputs; the image embedding (lmv_run_features) and every block compared.  Refusals: an MLP adapter
head, a pooling not run, a config that does not fit the trunk, a stray tensor, a projection bias of
the wrong size.

OpenCLIP SigLIP towers (TimmModel around tests/models/timm_vit.py's VisionTransformer: vit_*_siglip_*,
timm_pool 'map', timm_proj 'none'): a whole checkpoint with its config (nothing assumed), without it
(SigLIP's preprocessing and timm's defaults printed as assumed), model.visual alone, dynamic_img_size
at another non-square size, gelu_tanh from the model name, SO400M's 16 heads; the other
VisionTransformer trunks open_clip ships (vit_medium_patch16_gap_256, MobileCLIP2-L-14's
vit_large_patch14_clip_224, vit_relpos_medium_patch16_cls_224); refusals of configs that do not fit
the trunk, a stray tensor and another timm model."""
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import LMV, Results, compare_traces, convert, lmv_run, run, tmpdir  # noqa: E402
from models import openclip_timm as OC  # noqa: E402
from models.timm_vit import randomize_  # noqa: E402
from parity import block_outputs, check_summary, features_close, image, info_config  # noqa: E402

torch.set_num_threads(2)
res = Results()

# eva02_base_patch16_clip_224's registration (timm eva.py) at a small width: unfused q/k/v, SwiGLU
# with its sub-LN, attn.norm, axial RoPE; trained on 32x32 (a 4x4 grid)
TRUNK = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, qkv_fused=False,
             mlp_ratio=4 * 2 / 3, swiglu_mlp=True, scale_mlp=True, scale_attn_inner=True, use_rot_pos_emb=True,
             ref_feat_shape=(16, 16))
EMBED = 24


def tower(seed, **kw):
    torch.manual_seed(seed)
    args = dict(embed_dim=EMBED, pool="token", proj=None)
    args.update(kw)
    return randomize_(OC.TimmModel(TRUNK, **args), seed=seed).eval()


def oc_config(pool="token", proj=None, **extra):
    vision = {"image_size": 32, "timm_model_name": "eva02_base_patch16_clip_224", "timm_model_pretrained": False,
              "timm_pool": pool, "timm_proj": proj, "timm_model_kwargs": {"num_heads": 4}}
    vision.update(extra)
    return {"model_cfg": {"embed_dim": EMBED, "vision_cfg": vision, "custom_text": True,
                          "text_cfg": {"context_length": 8, "vocab_size": 50, "width": 32, "heads": 2, "layers": 1}},
            "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073],
                               "std": [0.26862954, 0.26130258, 0.27577711], "interpolation": "bicubic",
                               "resize_mode": "shortest"}}


def save(obj, fname="open_clip_pytorch_model.bin", cfg=None):
    d = tmpdir()
    path = os.path.join(d, fname)
    torch.save(obj, path)
    if cfg is not None:
        with open(os.path.join(d, "open_clip_config.json"), "w") as f:
            json.dump(cfg, f)
    return path, os.path.join(d, "model.lmv")


def parity(name, m, obj, sizes, cfg=None, opts=(), expect=()):
    """Convert obj, then on each input size compare the embedding (lmv_run_features against
    m(x) = head(trunk(x))) and every block of the trunk."""
    path, lmv = save(obj, cfg=cfg)
    try:
        out = convert(path, lmv, *opts)
    except RuntimeError as e:
        res.check(name, False, str(e))
        return None, None
    check_summary(res, name, out, expect)
    for h, w in sizes:
        x = image(h, w, seed=h + w)
        _, acts = block_outputs(m.trunk, x)
        with torch.no_grad():
            want = m(x).numpy()
        try:
            got, traces = lmv_run(lmv, x.numpy(), "--features", trace=True)
        except RuntimeError as e:
            res.check(f"{name} {h}x{w}", False, str(e))
            continue
        res.check(f"{name} {h}x{w} embedding", *features_close(got, want, shapes=True))
        compare_traces(res, f"{name} {h}x{w}", traces, acts)
    return lmv, out


def refused(name, obj, words, cfg=None):
    path, lmv = save(obj, cfg=cfg)
    try:
        convert(path, lmv)
    except RuntimeError as e:
        return res.check(name, all(w in str(e) for w in words), str(e)[-300:])
    return res.check(name, False, "converted")


# a whole EVA02-B-16-style checkpoint: visual.trunk.* (its head the projection), text.*, logit_scale
m = tower(1)
clip = OC.CustomTextCLIP(m, EMBED)
sd = clip.state_dict()
text = [k for k in sd if not k.startswith("visual.")]
lmv, out = parity("OpenCLIP EVA-02 (open_clip_config.json)", m, sd, [(32, 32), (32, 48)], cfg=oc_config(),
                  expect=("source      open_clip", "proj 24", "dropped     %d tensor(s), the text tower" % len(text),
                          "read ", "open_clip_config.json"))
if out is not None:
    assumed = [x for x in out.splitlines() if x.startswith("assumed")]
    res.check("open_clip_config.json: RoPE, pooling and heads are not assumed",
              not any(k in x for x in assumed for k in ("vit.rope", "vit.pool", "vit.num_heads")), "; ".join(assumed))
    cfg = info_config(lmv)
    want = {"vit.rope": "axial", "vit.rope_ref_grid": "16 16", "vit.pool": "token", "pre.crop_pct": "1",
            "vit.mlp": "glu"}
    got = {k: cfg.get(k) for k in want}
    res.check("the file records RoPE from the timm model name, token pooling and OpenCLIP's crop", got == want,
              f"file has {got}")
    code, info, err = run([LMV, "info", lmv])
    ok = code == 0 and "features     24 (projected embedding" in info
    res.check("lmv info names the projected embedding", ok, "" if ok else (info + err)[-300:])

# the same checkpoint without the config: converted the same, the options it would state said to be assumed
lmv, out = parity("OpenCLIP EVA-02 without its config", m, sd, [(32, 32)], opts=("--num-heads", "4"))
if out is not None:
    for key in ("vit.rope=axial", "vit.pool=token", "vit.rope_ref_grid=16,16"):
        res.check(f"without open_clip_config.json {key} is printed as assumed",
                  any(x.startswith("assumed") and key in x for x in out.splitlines()),
                  "; ".join(x for x in out.splitlines() if x.startswith("assumed")))

# model.visual alone (trunk.*)
parity("OpenCLIP EVA-02 tower alone (model.visual)", m, m.state_dict(), [(32, 48)], cfg=oc_config())

# timm_proj 'linear' with a bias and mean pooling: the trunk keeps its final norm (built with token
# pooling), reset_classifier(0, global_pool='avg') averages the patch tokens, head.proj projects
m2 = tower(2, pool="avg", proj="linear", proj_bias=True)
sd2 = OC.CustomTextCLIP(m2, EMBED).state_dict()
parity("OpenCLIP EVA-02, timm_proj linear + avg pool", m2, sd2, [(32, 32), (40, 24)],
       cfg=oc_config(pool="avg", proj="linear", timm_proj_bias=True), expect=("head.proj is the embedding projection",))

# timm_pool 'avg' with the trunk's head: create_model(global_pool='avg') builds fc_norm and no final norm;
# without the config the fc_norm shows the mean pooling
m4 = tower(4, pool="avg")
sd4 = OC.CustomTextCLIP(m4, EMBED).state_dict()
parity("OpenCLIP EVA-02, trunk head + avg pool", m4, sd4, [(32, 40)], cfg=oc_config(pool="avg"))
parity("OpenCLIP EVA-02, trunk head + avg pool, no config", m4, sd4, [(32, 32)], opts=("--num-heads", "4"))

# the embedding without its projection bias differs: the bias is used
if lmv is not None:
    x = image(32, 32, seed=64)
    with torch.no_grad():
        want = m(x).numpy()
        nobias = (m.trunk.forward_head(m.trunk.forward_features(x), pre_logits=True) @ m.trunk.head.weight.T).numpy()
    res.check("the trunk head's bias changes the embedding (it is not dropped)",
              float(np.max(np.abs(want - nobias))) > 1e-3, "")

# refusals, each naming what is wrong
m3 = tower(3, pool="token", proj="mlp")
refused("OpenCLIP MLP adapter head refused by name", OC.CustomTextCLIP(m3, EMBED).state_dict(),
        ["visual.head.mlp.fc1.weight", "MLP adapter head"])
refused("open_clip_config.json timm_proj mlp refused by name", OC.CustomTextCLIP(m3, EMBED).state_dict(),
        ["timm_proj 'mlp'"], cfg=oc_config(proj="mlp"))
refused("OpenCLIP timm_pool abs_attn refused by name", sd, ["timm_pool", "abs_attn"], cfg=oc_config(pool="abs_attn"))
refused("open_clip_config.json timm_pool avg against a trunk built for token pooling refused", sd,
        ["timm_pool avg", "has no fc_norm"],
        cfg=oc_config(pool="avg"))
bad = dict(sd)
bad["visual.trunk.blocks.0.attn.gamma"] = torch.ones(64)
refused("a stray tensor in an OpenCLIP EVA-02 checkpoint refused by name", bad,
        ["could not be placed", "visual.trunk.blocks.0.attn.gamma"], cfg=oc_config())
bad = dict(sd)
bad["visual.trunk.head.bias"] = torch.zeros(7)
refused("a projection bias of the wrong size refused by name", bad, ["proj.bias"], cfg=oc_config())
# ---- OpenCLIP SigLIP towers: TimmModel around a timm VisionTransformer (vit_*_siglip_*) with timm_pool
# 'map' (the trunk's AttentionPoolLatent, attn_pool.*) and timm_proj 'none': the pooled output is the
# embedding.  Small widths: timm_model_kwargs state embed_dim and num_heads, the name the rest.
VIT = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, class_token=False, global_pool="map")


def vit_tower(seed, trunk_kw, embed_dim=64, **kw):
    torch.manual_seed(seed)
    args = dict(pool="map", proj="none", trunk="vit")
    args.update(kw)
    return randomize_(OC.TimmModel(trunk_kw, embed_dim, **args), seed=seed).eval()


def siglip_config(name, pool="map", proj="none", kwargs=None, pre=True, embed=64):
    vision = {"image_size": 32, "timm_model_name": name, "timm_model_pretrained": False, "timm_pool": pool,
              "timm_proj": proj, "timm_model_kwargs": dict({"embed_dim": 64, "num_heads": 4}, **(kwargs or {}))}
    cfg = {"model_cfg": {"embed_dim": embed, "init_logit_bias": -10, "custom_text": True, "vision_cfg": vision,
                         "text_cfg": {"context_length": 8, "vocab_size": 50, "width": 32, "heads": 2, "layers": 1,
                                      "proj_bias": True}}}
    if pre:   # what open_clip writes for its SigLIP models (pretrained.py _slpcfg)
        cfg["preprocess_cfg"] = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bicubic",
                                 "resize_mode": "squash"}
    return cfg


def assumed_lines(out):
    return [x for x in out.splitlines() if x.startswith("assumed ")]


# ViT-B-16-SigLIP: vit_base_patch16_siglip_224 (GELU); the trunk runs only at its trained size
mb = vit_tower(11, VIT)
sdb = OC.CustomTextCLIP(mb, 64, siglip=True).state_dict()
textb = [k for k in sdb if not k.startswith("visual.")]
lmv, out = parity("OpenCLIP SigLIP (open_clip_config.json)", mb, sdb, [(32, 32)],
                  cfg=siglip_config("vit_base_patch16_siglip_224"),
                  expect=("source      open_clip", "pool map", "act gelu,",
                          "dropped     %d tensor(s), the text tower" % len(textb), "logit_bias",
                          "the pooled output is the image embedding", "open_clip_config.json"))
if out is not None:
    res.check("OpenCLIP SigLIP with open_clip_config.json: nothing assumed", not assumed_lines(out),
              "; ".join(assumed_lines(out)))
    cfg = info_config(lmv)
    want = {"vit.pool": "map", "vit.proj": "0", "vit.map_heads": "4", "pre.resize": "0", "pre.crop_pct": "1",
            "pre.interp": "bicubic", "pre.mean": "0.5 0.5 0.5"}
    got = {k: cfg.get(k) for k in want}
    res.check("OpenCLIP SigLIP: the file records the map pool, no projection and SigLIP's squash resize",
              got == want, f"file has {got}")

# the same without the config: what only the config states is printed as assumed (SigLIP's preprocessing)
lmv, out = parity("OpenCLIP SigLIP without its config", mb, sdb, [(32, 32)], opts=("--num-heads", "4"))
if out is not None:
    for key in ("vit.act=gelu", "vit.norm_eps=1e-06", "pre.mean=0.5,0.5,0.5", "pre.std=0.5,0.5,0.5",
                "pre.crop_pct=1 (resize 0)", "pre.interp=bicubic"):
        res.check(f"OpenCLIP SigLIP without open_clip_config.json: {key} printed as assumed",
                  any(key in x for x in assumed_lines(out)), "; ".join(assumed_lines(out)))
    cfg = info_config(lmv)
    res.check("OpenCLIP SigLIP without its config: squashed to the input size (pre.resize 0)",
              cfg.get("pre.resize") == "0", f"pre.resize {cfg.get('pre.resize')}")

# model.visual alone (trunk.* only: timm_proj none leaves no head) with its config beside it
parity("OpenCLIP SigLIP tower alone (model.visual)", mb, mb.state_dict(), [(32, 32)],
       cfg=siglip_config("vit_base_patch16_siglip_224"), expect=("source      open_clip", "open_clip_config.json"))

# the same weights with timm_model_kwargs dynamic_img_size: timm resamples pos_embed for other sizes
md = vit_tower(11, dict(VIT, dynamic_img_size=True))
md.load_state_dict(mb.state_dict())
parity("OpenCLIP SigLIP, dynamic_img_size", md, sdb, [(32, 32), (48, 40)],
       cfg=siglip_config("vit_base_patch16_siglip_224", kwargs={"dynamic_img_size": True}))

# ViT-SO400M-16-SigLIP2-256: vit_so400m_patch16_siglip_256 registers act_layer gelu_tanh, which only the
# model name says (its embed_dim given in timm_model_kwargs: the registered model at another width)
ms = vit_tower(12, dict(VIT, act_layer="gelu_tanh"))
sds = OC.CustomTextCLIP(ms, 64, siglip=True).state_dict()
lmv, out = parity("OpenCLIP SigLIP2 SO400M/16 (gelu_tanh from the name)", ms, sds, [(32, 32)],
                  cfg=siglip_config("vit_so400m_patch16_siglip_256"), expect=("act gelu_tanh",))

# SO400M's width without a config: 16 heads (head width 72) assumed, not width / 64
ml = vit_tower(13, dict(img_size=28, patch_size=14, embed_dim=1152, depth=1, num_heads=16, mlp_ratio=1 / 16,
                        class_token=False, global_pool="map"), embed_dim=1152)
lmv, out = parity("OpenCLIP SigLIP SO400M width without its config", ml, ml.state_dict(), [(28, 28)])
if out is not None:
    res.check("OpenCLIP SigLIP SO400M without its config: vit.num_heads=16 printed as assumed",
              any("vit.num_heads=16" in x for x in assumed_lines(out)), "; ".join(assumed_lines(out)))

# other VisionTransformer trunks open_clip ships: vit_medium_patch16_gap_256 (timm_pool '', timm_proj linear:
# the registered mean pooling without fc_norm, then head.proj) and MobileCLIP2-L-14's vit_large_patch14_clip_224
# (timm_pool token, timm_proj null: the trunk's biased head; pre-norm, LayerNorm eps 1e-5 from the name)
mg = vit_tower(14, dict(VIT, global_pool="avg", fc_norm=False), embed_dim=24, pool="", proj="linear")
parity("OpenCLIP vit_medium_patch16_gap_256-style tower (timm_proj linear)", mg,
       OC.CustomTextCLIP(mg, 24).state_dict(), [(32, 32)],
       cfg=siglip_config("vit_medium_patch16_gap_256", pool="", proj="linear", embed=24, pre=False),
       expect=("head.proj is the embedding projection", "pool avg"))
mc = vit_tower(15, dict(VIT, class_token=True, global_pool="token", pre_norm=True, eps=1e-5), embed_dim=24,
               pool="token", proj=None)
lmv, out = parity("OpenCLIP MobileCLIP2-L-14-style tower (trunk head)", mc, OC.CustomTextCLIP(mc, 24).state_dict(),
                  [(32, 32)], cfg=siglip_config("vit_large_patch14_clip_224", pool="token", proj=None, embed=24,
                                                pre=False),
                  expect=("the trunk's head is the embedding projection", "eps 1e-05", "pool token"))

# vit_relpos_medium_patch16_cls_224 (timm vision_transformer_relpos.py): no pos_embed, a relative position MLP
# per block, no qkv bias; timm_pool '' keeps its registered class-token pooling, head.proj projects
mr = vit_tower(16, dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, qkv_bias=False, fc_norm=False,
                        rel_pos_dim=32, class_token=True, global_pool="token"), embed_dim=24, pool="", proj="linear",
               trunk="relpos")
parity("OpenCLIP vit_relpos_medium_patch16_cls_224-style tower", mr, OC.CustomTextCLIP(mr, 24).state_dict(),
       [(32, 32)], cfg=siglip_config("vit_relpos_medium_patch16_cls_224", pool="", proj="linear", embed=24, pre=False),
       expect=("head.proj is the embedding projection", "pool token"))

# a SigLIP config without preprocess_cfg: SigLIP's preprocessing is assumed (and printed), not OpenCLIP's
# shortest-side resize
lmv, out = parity("OpenCLIP SigLIP, config without preprocess_cfg", mb, sdb, [(32, 32)],
                  cfg=siglip_config("vit_base_patch16_siglip_224", pre=False))
if out is not None:
    res.check("OpenCLIP SigLIP config without preprocess_cfg: squash resize and mean 0.5 printed as assumed",
              all(any(k in x for x in assumed_lines(out)) for k in ("pre.crop_pct=1 (resize 0)", "pre.mean=0.5")),
              "; ".join(assumed_lines(out)))
    res.check("OpenCLIP SigLIP config without preprocess_cfg: pre.resize 0 in the file",
              info_config(lmv).get("pre.resize") == "0", str(info_config(lmv).get("pre.resize")))

# refusals, each naming what is wrong
refused("OpenCLIP SigLIP: timm_pool token against a trunk with attn_pool refused", sdb,
        ["timm_pool token", "attn_pool"], cfg=siglip_config("vit_base_patch16_siglip_224", pool="token"))
refused("OpenCLIP ViT: timm_pool map against a trunk without attn_pool refused", OC.CustomTextCLIP(mc, 24).state_dict(),
        ["timm_pool map", "no attention-pool head"], cfg=siglip_config("vit_large_patch14_clip_224", proj=None))
refused("OpenCLIP ViT: timm_proj none against a trunk with a classifier head refused",
        OC.CustomTextCLIP(mc, 24).state_dict(), ["timm_proj none", "head.weight"],
        cfg=siglip_config("vit_large_patch14_clip_224", pool="token"))
refused("OpenCLIP SigLIP: timm_pool avgmax refused by name", sdb, ["timm_pool 'avgmax'"],
        cfg=siglip_config("vit_base_patch16_siglip_224", pool="avgmax"))
bad = dict(sdb)
bad["visual.trunk.attn_pool.gamma"] = torch.ones(64)
refused("a stray tensor in an OpenCLIP SigLIP checkpoint refused by name", bad,
        ["could not be placed", "visual.trunk.attn_pool.gamma"], cfg=siglip_config("vit_base_patch16_siglip_224"))
other = {"visual.trunk.stem.0.weight": torch.zeros(8, 3, 4, 4), "visual.trunk.stages.0.blocks.0.conv_dw.weight":
         torch.zeros(8, 1, 7, 7), "visual.head.proj.weight": torch.zeros(24, 8), "logit_scale": torch.ones([])}
refused("an OpenCLIP tower of another timm model refused by name", other, ["another timm model", "convnext_tiny"],
        cfg=siglip_config("convnext_tiny", pool="", proj="linear", embed=24))
res.finish()
