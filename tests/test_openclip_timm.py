"""OpenCLIP EVA-02 image towers (open_clip's TimmModel around a timm Eva trunk: visual.trunk.*, the
trunk's own biased head as the projection, or an adapter head.proj), against a faithful reference of
open_clip/timm_model.py over tests/models/eva_ref.py (tests/models/openclip_timm.py) with the real key
names: a whole CustomTextCLIP checkpoint with open_clip_config.json beside it (the timm model name gives
RoPE's options, timm_pool the pooling, preprocess_cfg the preprocessing), the same without the config
(what the tensors cannot show printed as assumed), model.visual alone, the trunk head with mean pooling
(fc_norm), timm_proj 'linear' with mean pooling.  Random weights, small widths, batch 2, non-square
inputs; the image embedding (lmv_run_features) and every block compared.  Refusals: an MLP adapter
head, a pooling not run, a config that does not fit the trunk, a stray tensor, a projection bias of
the wrong size."""
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
res.finish()
