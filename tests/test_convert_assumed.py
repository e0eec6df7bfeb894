#!/usr/bin/env python3
"""tools/convert.py: every checkpoint tensor accounted for, every unstated option said out loud.

* a stray tensor in a ViT, Swin or LeMeViT checkpoint fails the conversion, named;
* options the tensors cannot show come from the checkpoint's metadata (timm training args with
  the model name and model_kwargs, a pretrained_cfg inside the file, a timm config.json beside
  it, the model name in the file name), else they are listed in the summary as assumed, with the
  flag that sets each, and recorded in the meta key convert.assumed;
* --set overrides whatever the metadata says.

Checkpoints are built here with torch (faithful module names: tests/models); the converter itself
runs without torch.  Run with Debian's python3:   /usr/bin/python3 tests/test_convert_assumed.py
"""
import argparse
import json
import os
import sys
from collections import OrderedDict

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "models"))
from common import CONVERT, ROOT, Results, run, tmpdir  # noqa: E402

sys.path.insert(0, os.path.join(ROOT, "tools"))
import lmvfile  # noqa: E402
import lemevit_ref  # noqa: E402
import swin_ref  # noqa: E402
import timm_vit  # noqa: E402

R = Results()
TMP = tmpdir()


def path(name):
    return os.path.join(TMP, name)


def save(obj, name):
    fn = path(name)
    torch.save(obj, fn)
    return fn


def conv(src, *opts):
    """Run convert.py; returns (exit code, stdout, stderr, meta or None)."""
    out = path(os.path.basename(src) + ".lmv")
    if os.path.exists(out):
        os.remove(out)
    code, so, se = run([sys.executable, CONVERT, src, "-o", out] + [str(o) for o in opts])
    meta = None
    if code == 0:   # one-value lists as scalars
        meta = dict((k, v[0] if isinstance(v, list) and len(v) == 1 and k != "convert.assumed" else v)
                    for k, v in lmvfile.read(out).meta.items())
    return code, so, se, meta


def vit_sd(**kw):
    """A small timm-layout ViT: 192 wide (timm's 'tiny'), 3 heads, one block."""
    args = dict(img_size=32, patch_size=8, num_classes=10, embed_dim=192, depth=1, num_heads=3)
    args.update(kw)
    m = timm_vit.VisionTransformer(**args)
    timm_vit.randomize_(m)
    return m.state_dict()


def lemevit_model(**kw):
    m = lemevit_ref.build(depth=[1, 1, 1, 1, 1], embed_dim=[32, 32, 64, 64, 96], num_classes=10, **kw)
    return lemevit_ref.randomize_(m, seed=3) or m


def swin_sd():
    m = swin_ref.build(img_size=32, patch_size=4, embed_dim=32, depths=(1, 1), num_heads=(2, 4), window_size=4,
                       num_classes=10)
    return m.state_dict()


def check(name, ok, reason=""):
    """reason: shown when the check fails"""
    R.check(name, bool(ok), "" if ok else reason)


# ------------------------------------------------------------------------------ stray tensors

def test_stray_tensors():
    cases = [("vit", vit_sd(), "blocks.0.attn.extra.weight"),
             ("swin", swin_sd(), "layers.0.blocks.0.attn.extra.weight"),
             ("lemevit", lemevit_model().state_dict(), "stages.1.0.attn.extra.weight")]
    for fam, sd, stray in cases:
        code, _, _, meta = conv(save(sd, "clean_%s.pth" % fam))
        check("%s: the clean checkpoint converts" % fam, code == 0 and meta["arch"] == fam, fam)
        sd = OrderedDict(sd)
        sd[stray] = torch.ones(4, 4)
        code, so, se, _ = conv(save(sd, "stray_%s.pth" % fam))
        check("%s: one stray tensor fails the conversion and is named" % fam,
              code == 1 and stray in se and "could not be placed" in se, se.strip() or so)
        code, _, se, _ = conv(path("stray_%s.pth" % fam), "--ignore", "attn\\.extra\\.")
        check("%s: --ignore drops it" % fam, code == 0, se.strip())


def test_lemevit_layer_scale():
    """Official layer_scale_init_value > 0: gamma1/gamma2 are placed under their official names;
    a block missing one of them is refused."""
    sd = lemevit_model(layer_scale_init_value=0.1).state_dict()
    gammas = [k for k in sd if k.endswith((".gamma1", ".gamma2"))]
    code, _, se, _ = conv(save(sd, "lemevit_ls.pth"))
    names = set(lmvfile.read(path("lemevit_ls.pth.lmv")).tensors) if code == 0 else set()
    check("lemevit: gamma1/gamma2 of every block are written", code == 0 and gammas and set(gammas) <= names,
          se.strip() or "%d gammas" % len(gammas))
    sd = OrderedDict(sd)
    del sd[gammas[0]]
    code, _, se, _ = conv(save(sd, "lemevit_ls_missing.pth"))
    check("lemevit: a block without one of its gammas is refused", code == 1 and "layer scale" in se, se.strip())
    code, _, se, meta = conv(path("lemevit_ls.pth.lmv").replace(".lmv", ""))
    sd = lemevit_model().state_dict()
    check("lemevit: BatchNorm num_batches_tracked is dropped without complaint",
          any(k.endswith("num_batches_tracked") for k in sd) and conv(save(sd, "lemevit_nbt.pth"))[0] == 0)


# ------------------------------------------------------------------------------ assumed options

VIT_ASSUMED = ["vit.num_heads", "vit.norm_eps", "vit.act", "vit.block", "vit.pool",
               "pre.mean", "pre.std", "pre.crop_pct", "pre.interp"]


def test_bare_state_dict():
    code, so, se, meta = conv(save(vit_sd(), "bare.pth"))
    got = meta.get("convert.assumed") if meta else None
    check("bare ViT state dict: convert.assumed lists the options nothing stated", got == VIT_ASSUMED,
          "%r" % (got,))
    lines = [ln for ln in so.splitlines() if ln.startswith("assumed")]
    check("bare ViT state dict: the summary says each assumed value and the flag that sets it",
          len(lines) == 1 + len(VIT_ASSUMED) and "vit.num_heads=3" in so and "--num-heads N" in so and
          "vit.block=pre" in so and "--set vit.block=pre|res_post" in so and "--mean" in so, so)
    # lmv info shows them
    lmv = os.path.join(ROOT, "build", "lmv")
    if os.path.exists(lmv):
        c, out, err = run([lmv, "info", path("bare.pth.lmv")])
        check("lmv info prints the assumed values", c == 0 and "assumed" in out and "vit.num_heads=3" in out,
              out + err)
    else:
        R.skip("lmv info prints the assumed values", "build/lmv is not built")
    # flags state them: nothing is assumed any more
    code, so, se, meta = conv(path("bare.pth"), "--num-heads", 3, "--eps", 1e-6, "--set", "vit.act=gelu",
                              "--set", "vit.block=pre", "--pool", "token", "--mean", 0.5, 0.5, 0.5,
                              "--std", 0.5, 0.5, 0.5, "--crop-pct", 0.9, "--interpolation", "bicubic")
    check("every assumed option set by a flag: convert.assumed is absent and the summary has no assumed line",
          code == 0 and "convert.assumed" not in meta and "assumed" not in so, se + so)


def test_one_channel():
    """A 1-channel 28x28 torchvision-layout model: the mean/std (ImageNet's, averaged to one channel)
    and the resize are said to be assumed, with the flags; what torchvision's module fixes is not."""
    import torchvision
    tv = torchvision.models.vision_transformer.VisionTransformer(image_size=28, patch_size=7, num_layers=1,
                                                                 num_heads=2, hidden_dim=64, mlp_dim=128,
                                                                 num_classes=10)
    tv.conv_proj = torch.nn.Conv2d(1, 64, 7, 7)
    code, so, se, meta = conv(save(tv.state_dict(), "gray28.pth"))
    got = meta.get("convert.assumed", []) if meta else []
    check("1-channel 28x28 torchvision ViT: mean, std and resize listed as assumed, with --mean/--std/--resize",
          got == ["vit.num_heads", "vit.norm_eps", "pre.mean", "pre.std", "pre.crop_pct", "pre.interp"] and
          "--mean M" in so and "--resize N" in so and meta["in_chans"] == 1, "%r %s%s" % (got, se, so))


def test_timm_training_args():
    sd = vit_sd(class_token=False, global_pool="avg", qkv_bias=False)
    args = argparse.Namespace(model="vit_tiny_patch8_rpn_32", model_kwargs={}, mean=[0.1, 0.2, 0.3],
                              std=[0.3, 0.2, 0.1], crop_pct=0.95, interpolation="bilinear", epochs=300)
    code, so, se, meta = conv(save({"state_dict": sd, "args": args, "epoch": 3}, "train_ckpt.pth.tar"))
    check("timm training checkpoint (args.model with _rpn_): vit.block=res_post, nothing assumed",
          code == 0 and meta["vit.block"] == "res_post" and meta["vit.pool"] == "avg" and
          "convert.assumed" not in meta and "assumed" not in so, se + so)
    check("... and the data config of the training args", meta and meta["pre.interp"] == "bilinear" and
          [round(x, 6) for x in meta["pre.mean"]] == [0.1, 0.2, 0.3], "%r" % (meta,))
    code, so, se, meta = conv(path("train_ckpt.pth.tar"), "--set", "vit.block=pre")
    check("--set vit.block=pre overrides the model name", code == 0 and meta["vit.block"] == "pre", se)
    # model_kwargs: act_layer and global_pool
    sd = vit_sd()
    args = argparse.Namespace(model="vit_tiny_patch8_32", model_kwargs={"act_layer": "quick_gelu"})
    code, so, se, meta = conv(save({"state_dict": sd, "args": args}, "kw_ckpt.pth.tar"))
    check("model_kwargs act_layer=quick_gelu: vit.act=quickgelu", code == 0 and meta["vit.act"] == "quickgelu", se)
    args = argparse.Namespace(model="vit_tiny_patch8_32", model_kwargs={"act_layer": "swiglu"})
    code, so, se, meta = conv(save({"state_dict": sd, "args": args}, "kw_bad.pth.tar"))
    check("model_kwargs act_layer=swiglu: refused, naming act_layer and the flag",
          code == 1 and "act_layer" in se and "--set vit.act=" in se, se)
    code, so, se, meta = conv(path("kw_bad.pth.tar"), "--set", "vit.act=gelu")
    check("... unless --set vit.act says what it is", code == 0 and meta["vit.act"] == "gelu", se)


def test_config_json_and_pretrained_cfg():
    d = path("hub")
    os.makedirs(d, exist_ok=True)
    fn = os.path.join(d, "pytorch_model.bin")
    torch.save(vit_sd(), fn)
    cfg = {"architecture": "vit_tiny_patch8_32", "num_classes": 10, "global_pool": "token",
           "model_args": {"act_layer": "gelu_tanh"},
           "pretrained_cfg": {"mean": [0.4, 0.4, 0.4], "std": [0.2, 0.2, 0.2], "crop_pct": 1.0,
                              "interpolation": "bicubic"}}
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f)
    code, so, se, meta = conv(fn)
    check("timm config.json beside the file: name, model_args and pretrained_cfg used, nothing assumed",
          code == 0 and meta["vit.act"] == "gelu_tanh" and "convert.assumed" not in meta and
          [round(x, 6) for x in meta["pre.mean"]] == [0.4, 0.4, 0.4], se + so)
    # the name in the file name, the data config inside the file
    pcfg = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "crop_pct": 0.9, "interpolation": "bicubic"}
    code, so, se, meta = conv(save({"state_dict": vit_sd(), "pretrained_cfg": pcfg},
                                   "vit_tiny_patch8_clip_quickgelu_32.pth"))
    check("model name in the file name and pretrained_cfg in the file: quickgelu, eps 1e-5, nothing assumed",
          code == 0 and meta["vit.act"] == "quickgelu" and abs(meta["vit.norm_eps"] - 1e-5) < 1e-9 and
          "convert.assumed" not in meta, se + so)
    # a name whose size does not match the tensors is not used
    code, so, se, meta = conv(save(vit_sd(), "vit_base_patch8_rpn_32.pth"))
    check("a model name for another width is not used (warned, options assumed)",
          code == 0 and meta["vit.block"] == "pre" and "vit.block" in meta.get("convert.assumed", []) and
          "not used" in so, so + se)


def test_lemevit_post_norm():
    sd = lemevit_model().state_dict()
    code, so, se, meta = conv(save(sd, "lemevit_bare.pth"))
    check("bare LeMeViT: head_dim and post_norm assumed", code == 0 and meta["lemevit.post_norm"] == 0 and
          all(k in meta.get("convert.assumed", []) for k in ("lemevit.head_dim", "lemevit.post_norm")), se + so)
    args = argparse.Namespace(model="my_lemevit", pre_norm=False)
    code, so, se, meta = conv(save({"model": sd, "args": args}, "lemevit_args.pth"))
    check("LeMeViT args pre_norm=False: lemevit.post_norm=1, not assumed",
          code == 0 and meta["lemevit.post_norm"] == 1 and "lemevit.post_norm" not in meta.get("convert.assumed", []),
          se + so)
    args = argparse.Namespace(model="lemevit_tiny")
    code, so, se, meta = conv(save({"model": sd, "args": args}, "lemevit_named.pth"))
    check("LeMeViT official variant name: head_dim and post_norm not assumed",
          code == 0 and not any(k.startswith("lemevit.") for k in meta.get("convert.assumed", [])), se + so)
    code, so, se, meta = conv(path("lemevit_named.pth"), "--set", "lemevit.post_norm=1")
    check("--set lemevit.post_norm=1 overrides", code == 0 and meta["lemevit.post_norm"] == 1, se)


for t in (test_stray_tensors, test_lemevit_layer_scale, test_bare_state_dict, test_one_channel,
          test_timm_training_args, test_config_json_and_pretrained_cfg, test_lemevit_post_norm):
    try:
        t()
    except Exception as e:  # a crash in one group fails it and lets the others run
        R.check(t.__name__, False, "%s: %s" % (type(e).__name__, e))
R.finish()
