"""Swin Transformer V2 parity: tests/models/swinv2_ref.py (written from timm's and Microsoft's
swin_transformer_v2.py) with seeded random weights -- logit scales on both sides of the clamp, a
position-bias MLP far from its init -- saved in timm's and Microsoft's layouts, converted by
tools/convert.py and run by build/lmv (batch 2, non-square inputs); logits and every block's
output compared.  Cases: one window everywhere; a window per stage; a pretrained window size other
than the run's; a late stage not larger than the window (shrunk window, no shift); Microsoft's
official file; Hugging Face's Swinv2ForImageClassification with its config.json; torchvision's own
SwinTransformer V2 (a small one and swin_v2_t, run live: fixed padded window, k bias zeroed); refusals
(a stray tensor, options this library does not run); an unstated window said to be assumed."""
import json
import os
import sys
from collections import OrderedDict

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (LMV, Results, compare_traces, convert, lmv_run, logits_close, run, tmpdir)  # noqa: E402
from models import swin_ref  # noqa: E402
from models import swinv2_ref as R  # noqa: E402
from parity import info_config  # noqa: E402
from test_swin import torchvision_traces  # noqa: E402

torch.set_num_threads(2)
res = Results()


def images(batch, h, w, seed):
    return torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))


def model(seed, **kw):
    args = dict(embed_dim=32, depths=(2, 2, 2), num_heads=(2, 4, 8), window_size=4, num_classes=7)
    args.update(kw)
    torch.manual_seed(seed)
    return R.randomize_(R.SwinTransformerV2(**args).eval(), seed=seed)


def save_convert(sd, fname, *opts, side=None):
    d = tmpdir()
    path, lmv = os.path.join(d, fname), os.path.join(d, "model.lmv")
    torch.save(sd, path)
    for name, obj in (side or {}).items():
        with open(os.path.join(d, name), "w") as f:
            json.dump(obj, f)
    return lmv, convert(path, lmv, "--labels", "none", *opts)


def check_run(name, lmv, m, h, w, seed=0):
    x = images(2, h, w, seed + 7 * h + w)
    with torch.no_grad():
        want, ref = m.forward_trace(x)
    try:
        got, traces = lmv_run(lmv, x.numpy(), trace=True)
    except RuntimeError as e:
        return res.check(f"{name} {h}x{w}", False, str(e))
    ok, desc = logits_close(got, want.numpy())
    res.check(f"{name} {h}x{w} logits", ok, desc)
    compare_traces(res, f"{name} {h}x{w}", traces, ref)


def check_info(name, lmv, expect):
    got = {k: info_config(lmv).get(k) for k in expect}
    res.check(f"{name}: file records {expect}", got == expect, f"file has {got}")


def case(name, m, fname, sizes, expect, *opts, side=None, sd=None):
    try:
        lmv, _ = save_convert(sd if sd is not None else R.timm_state_dict(m), fname, *opts, side=side)
    except RuntimeError as e:
        return res.check(name, False, str(e))
    check_info(name, lmv, expect)
    for h, w in sizes:
        check_run(name, lmv, m, h, w)
    return lmv


def refused(name, sd, fname, words, *opts, side=None):
    try:
        save_convert(sd, fname, *opts, side=side)
    except RuntimeError as e:
        msg = str(e)
        return res.check(name, all(wd in msg for wd in words), msg[-300:])
    return res.check(name, False, "converted")


# timm layout, one window: the name gives window 4; 64x96: stage 2 is 4x6 (window 4x4, no shift on
# the height, the width padded after the roll); 64x64: the last map equals the window (no shift)
m = model(1)
case("timm Swin V2", m, "swinv2_tiny_window4_64.pth", [(64, 96), (64, 64)],
     {"source": "timm", "swin.version": "2", "swin.window_size": "4", "swin.pretrained_window": "0",
      "swin.pad_mode": "roll_then_pad", "swin.shift_rule": "per_axis"})

# a window per stage (set on the command line: timm builds them with set_input_size per stage)
m = model(2, window_size=[4, 2, 3])
case("timm Swin V2, window per stage", m, "model.pth", [(64, 80)], {"swin.window_size": "4 2 3"},
     "--set", "swin.window_size=4,2,3")

# lmv explain's default block with a window per stage: the last block of a stage with more than
# one window (at 64x80 the last stage, 4x5, is one 8-window; the stage before it, 8x10, has 2-windows)
m = model(2, window_size=[4, 2, 8])
d = tmpdir()
try:
    lmv, _ = save_convert(R.timm_state_dict(m), "model.pth", "--set", "swin.window_size=4,2,8", "--img-size", "64", "80")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8)).save(os.path.join(d, "a.jpg"))
    code, out, err = run([LMV, "explain", lmv, os.path.join(d, "a.jpg"), os.path.join(d, "a.png")])
    res.check("lmv explain picks the last multi-window stage with a window per stage",
              code == 0 and "attention of layers.1.blocks.1," in out, (out + err).strip().splitlines()[0][:200])
except RuntimeError as e:
    res.check("lmv explain picks the last multi-window stage with a window per stage", False, str(e))

# fine-tuned at a larger window than pre-trained (timm's 12to16 naming: the last stage's
# pretrained window is half); 96x80: stage 2 is 6x5, its window shrinks to 6x5 (per axis) with
# no shift, so the position bias there is made at run time for that window
m = model(3, window_size=6, pretrained_window_sizes=[4, 4, 2])
lmv_pretrained = case("timm Swin V2, pretrained window 4 -> 6", m, "swinv2_tiny_window4to6_64to96.pth", [(96, 80), (96, 96)],
     {"swin.window_size": "6", "swin.pretrained_window": "4 4 2", "img_size": "96 96"})

# the same from a timm hub directory: a generic file name and timm's config.json (architecture,
# model_args with the windows)
case("timm hub Swin V2 (config.json)", m, "pytorch_model.bin", [(96, 96)],
     {"swin.window_size": "6", "swin.pretrained_window": "4 4 2"},
     side={"config.json": {"architecture": "swinv2_tiny_window6_96", "num_classes": 7,
                           "model_args": {"pretrained_window_sizes": [4, 4, 2]}}})

# a late stage smaller than the window without a pretrained size: its bias is normalised by the
# shrunk window (8 -> 3x5 at 48x80)
m = model(4, window_size=8)
case("timm Swin V2, late stage smaller than the window", m, "swinv2_tiny_window8_64.pth", [(48, 80)],
     {"swin.window_size": "8"})

# the attention maps of a block on a shrunk window (stage 1 at 48x80: 6x10 map, window 6x8, the
# width shifted by 4 and padded to 16): [windows][heads][N][N] rows summing to 1, every token in one slot
lmv, _ = save_convert(R.timm_state_dict(m), "swinv2_tiny_window8_64.pth")
try:
    _, tr = lmv_run(lmv, images(1, 48, 80, 3).numpy(), attention="layers.1.blocks.1")
    a, tok = tr.get("layers.1.blocks.1.attn"), tr.get("layers.1.blocks.1.attn_tokens")
    ok = a is not None and tok is not None and a.shape == (2, 4, 48, 48) and tok.shape == (2, 48)
    ok = ok and abs(float(a.sum(-1).mean()) - 1.0) < 1e-5 and sorted(t for t in tok.flatten() if t >= 0) == list(range(60))
    res.check("attention maps on a shrunk Swin V2 window", ok,
              "shapes %s %s" % (None if a is None else a.shape, None if tok is None else tok.shape))
except RuntimeError as e:
    res.check("attention maps on a shrunk Swin V2 window", False, str(e))

# odd maps: at 72x88 stage 1 is 9x11 and PatchMerging pads it to a 5x6 stage 2, but timm decides
# window and shift on the floor-halved grid (4x5): window 4x4, no shift on the height, 2 on the width
m = model(10)
lmv = case("timm Swin V2, odd maps", m, "swinv2_tiny_window4_64.pth", [(72, 88)], {"swin.window_size": "4"})

# inputs too small for a late stage are refused with the stage named, not run into a 0- or
# 1-wide window (PyTorch divides by zero there)
for f, (h, w), words in ((lmv, (8, 8), ["1-wide window", "stage 1"]), (lmv, (16, 16), ["1-wide window", "stage 2"]),
                         (lmv_pretrained, (8, 8), ["no map", "stage 2"])):
    try:
        lmv_run(f, images(1, h, w, 0).numpy())
        res.check(f"{h}x{w} input refused", False, "it ran")
    except RuntimeError as e:
        res.check(f"{h}x{w} input refused ({', '.join(words)})", all(x in str(e) for x in words), str(e)[-200:])

# Microsoft's official file: {'model': sd}, downsample at the end of a stage, head.*, saved
# buffers; one square window of min(H, W) when either side is not larger than the window
m = model(5, era="ms")
sd = R.ms_state_dict(m, [4, 4, 4], 16, 32)
case("official Swin V2", m, "swinv2_tiny_patch4_window4_64.pth", [(64, 128)],
     {"source": "ms", "swin.shift_rule": "min", "swin.window_size": "4"}, sd={"model": sd})

# Hugging Face Swinv2ForImageClassification with config.json beside it: window 3 fixed from the
# config's 64-pixel maps (16, 8, 4: all larger, so shifted) whatever the input; pad, then roll
# (16 -> 18 with the shift)
m = model(7, window_size=3, pretrained_window_sizes=[0, 0, 0], era="hf", img_size=64)
hf_cfg = {"model_type": "swinv2", "architectures": ["Swinv2ForImageClassification"], "image_size": 64,
          "patch_size": 4, "embed_dim": 32, "depths": [2, 2, 2], "num_heads": [2, 4, 8], "window_size": 3,
          "pretrained_window_sizes": [0, 0, 0], "layer_norm_eps": 1e-5, "hidden_act": "gelu", "qkv_bias": True,
          "id2label": {str(i): "class%d" % i for i in range(7)}}
# at 40x40 (maps 10, 5, 3) HF keeps the config's windows and shifts: 3, shifted, on the 3x3 last map
case("Hugging Face Swin V2", m, "pytorch_model.bin", [(64, 64), (64, 80), (40, 40)],
     {"source": "hf", "swin.pad_mode": "pad_then_roll", "swin.shift_rule": "min", "swin.window_size": "3",
      "swin.window_from": "img_size"},
     side={"config.json": hf_cfg}, sd=R.hf_state_dict(m))

# Hugging Face Swinv2Model (no classifier, no swinv2. prefix): the pooled features
sd = OrderedDict((k[len("swinv2."):], v) for k, v in R.hf_state_dict(m).items() if k.startswith("swinv2."))
try:
    lmv, _ = save_convert(sd, "pytorch_model.bin", side={"config.json": hf_cfg})
    x = images(2, 64, 64, 5)
    with torch.no_grad():
        m(x)
    got = lmv_run(lmv, x.numpy(), "--features")[0]
    ok, desc = logits_close(got, m.pooled.numpy())
    res.check("Hugging Face Swinv2Model features", ok, desc)
except RuntimeError as e:
    res.check("Hugging Face Swinv2Model features", False, str(e))

# the checks tell the conventions apart: the official file run with timm's per-axis rule, and the
# fine-tuned model run without its pretrained window, both give other logits
def differs(name, sd, fname, m, h, w, *opts, side=None):
    lmv, _ = save_convert(sd, fname, *opts, side=side)
    x = images(2, h, w, 11)
    with torch.no_grad():
        want = m(x).numpy()
    ok, desc = logits_close(lmv_run(lmv, x.numpy())[0], want)
    res.check(name, not ok, desc)


differs("Hugging Face Swin V2 at 40x40 with --set swin.window_from=input does not match", R.hf_state_dict(m),
        "pytorch_model.bin", m, 40, 40, "--set", "swin.window_from=input", side={"config.json": hf_cfg})
m = model(5, era="ms")
differs("official Swin V2 at 64x128 with --set swin.shift_rule=per_axis does not match", {"model": R.ms_state_dict(
    m, [4, 4, 4], 16, 32)}, "swinv2_tiny_patch4_window4_64.pth", m, 64, 128, "--set", "swin.shift_rule=per_axis")
m = model(3, window_size=6, pretrained_window_sizes=[4, 4, 2])
differs("Swin V2 4 -> 6 run with --set swin.pretrained_window=0 does not match", R.timm_state_dict(m),
        "swinv2_tiny_window4to6_64to96.pth", m, 96, 96, "--set", "swin.pretrained_window=0")

# full size (unless --quick): swinv2_tiny_window8_256's shape at 256 (last stage 8x8: one window, no
# shift) and, as swinv2_base_window12to24_192to384 does, window 24 from pretrained 12 (12, 12, 12, 6)
# at 384x320, where the last stage (12x10) shrinks the window per axis
if "--quick" not in sys.argv:
    m = model(8, embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=8, num_classes=1000)
    case("swinv2_tiny_window8_256 shape", m, "swinv2_tiny_window8_256.pth", [(256, 256)], {"swin.window_size": "8"})
    m = model(9, embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=24,
              pretrained_window_sizes=[12, 12, 12, 6])
    case("window 12 -> 24 at 384x320", m, "swinv2_tiny_window12to24_192to384.pth", [(384, 320)],
         {"swin.window_size": "24", "swin.pretrained_window": "12 12 12 6"})

# refusals, each naming what is wrong
m = model(6)
sd = R.timm_state_dict(m)
sd["layers.0.blocks.0.attn.gamma"] = torch.ones(32)
refused("stray tensor in a Swin V2 file refused by name", sd, "swinv2_tiny_window4_64.pth",
        ["could not be placed", "layers.0.blocks.0.attn.gamma"])
refused("always_partition=True refused by name", R.timm_state_dict(m), "model.pth", ["always_partition"],
        side={"config.json": {"architecture": "swinv2_tiny_window4_64",
                              "model_args": {"always_partition": True}}})
refused("a window_size kwarg that is not a size refused by name", R.timm_state_dict(m), "model.pth",
        ["window_size=", "not a size"],
        side={"config.json": {"architecture": "swinv2_tiny_window4_64", "model_args": {"window_size": "big"}}})
sd = R.timm_state_dict(m)
sd["layers.0.blocks.0.attn.q_bias"] = torch.zeros(5)
refused("a q_bias of the wrong size refused by name", sd, "swinv2_tiny_window4_64.pth", ["layers.0.blocks.0.attn", "q_bias"])
sd = R.timm_state_dict(m)
sd["layers.0.blocks.0.attn.cpb_mlp.2.bias"] = torch.zeros(2)
refused("a biased last cpb layer refused by name", sd, "swinv2_tiny_window4_64.pth", ["cpb_mlp.2.bias"])
# Swin V1's windows come from its bias tables: a --set that disagrees is refused, one that agrees is fine
v1 = swin_ref.randomize_(swin_ref.build("timm096", img_size=64, embed_dim=16, depths=(2, 2), num_heads=(2, 4),
                                        window_size=4, num_classes=3), seed=3)
refused("Swin V1 with --set swin.window_size against its tables refused", v1.state_dict(), "model.pth",
        ["swin.window_size=5", "disagrees"], "--set", "swin.window_size=5")
try:
    save_convert(v1.state_dict(), "model.pth", "--set", "swin.window_size=4")
    res.check("Swin V1 with --set swin.window_size matching its tables converts", True)
except RuntimeError as e:
    res.check("Swin V1 with --set swin.window_size matching its tables converts", False, str(e))


# torchvision's swin_v2_t/s/b, the real torchvision model run live: one window everywhere, never
# shrunk (a smaller map is padded to it), shifts dropped on an axis the window covers, pad then roll,
# the k third of qkv.bias zeroed at run time (randomize_ makes it non-zero in the file)
def tv_case(name, m, sizes, expect, *opts, seed=0):
    try:
        lmv, out = save_convert(m.state_dict(), "model.pth", *opts)
    except RuntimeError as e:
        return res.check(name, False, str(e)), None
    check_info(name, lmv, expect)
    for h, w in sizes:
        x = images(2, h, w, seed + 7 * h + w)
        want, ref = torchvision_traces(m, x)
        try:
            got, traces = lmv_run(lmv, x.numpy(), trace=True)
        except RuntimeError as e:
            res.check(f"{name} {h}x{w}", False, str(e))
            continue
        ok, desc = logits_close(got, want)
        res.check(f"{name} {h}x{w} logits", ok, desc)
        compare_traces(res, f"{name} {h}x{w}", traces, ref)
    return lmv, out


try:
    from torchvision.models import swin_v2_t
    from torchvision.models.swin_transformer import PatchMergingV2, SwinTransformer, SwinTransformerBlockV2
except ImportError as e:
    swin_v2_t = None
    res.skip("torchvision Swin V2", str(e))
if swin_v2_t is not None:
    torch.manual_seed(12)
    tv = R.randomize_(SwinTransformer(patch_size=[4, 4], embed_dim=32, depths=[2, 2, 2], num_heads=[2, 4, 8],
                                      window_size=[4, 4], num_classes=7, block=SwinTransformerBlockV2,
                                      downsample_layer=PatchMergingV2).eval(), seed=12)
    # 64x64: maps 16, 8, 4 (the last one window, unshifted); 64x96: the last stage 4x6, shifted on the
    # width only, padded to 8; 72x88: odd maps padded by the merging (18x22, 9x11, 5x6); 40x40: the
    # last map (3x3) smaller than the window, padded to 4 (timm would shrink the window to 3)
    lmv, out = tv_case("torchvision Swin V2", tv, [(64, 64), (64, 96), (72, 88), (40, 40)],
                       {"source": "torchvision", "swin.version": "2", "swin.window_size": "4",
                        "swin.pretrained_window": "0", "swin.pad_mode": "pad_then_roll", "swin.shift_rule": "per_axis",
                        "swin.window_from": "fixed"})
    if out is not None:
        line = [x for x in out.splitlines() if "swin.window_size" in x or "swin.pretrained_window" in x]
        res.check("torchvision Swin V2: the window read from relative_coords_table is not called assumed",
                  not any(x.startswith("assumed") for x in line), "; ".join(line))
    differs("torchvision Swin V2 at 40x40 with --set swin.window_from=input does not match", tv.state_dict(),
            "model.pth", tv, 40, 40, "--set", "swin.window_from=input")
    # without the buffers the window is not in the tensors: torchvision's 8, said to be assumed
    sd = OrderedDict((k, v) for k, v in tv.state_dict().items() if not k.endswith(("relative_coords_table",
                                                                                    "relative_position_index")))
    try:
        lmv, out = save_convert(sd, "model.pth")
        line = [x for x in out.splitlines() if "swin.window_size" in x]
        res.check("torchvision Swin V2 without its buffers: window 8 printed as assumed",
                  any(x.startswith("assumed") and "=8" in x for x in line), "; ".join(line) or "no line")
    except RuntimeError as e:
        res.check("torchvision Swin V2 without its buffers: window 8 printed as assumed", False, str(e))
    refused("torchvision Swin V2 with --set swin.window_size against its buffers refused", tv.state_dict(),
            "model.pth", ["swin.window_size=5", "relative_coords_table"], "--set", "swin.window_size=5")
    sd = tv.state_dict()
    sd["features.3.1.attn.relative_coords_table"] = torch.zeros(1, 9, 9, 2)
    sd["features.3.1.attn.relative_position_index"] = torch.zeros(625, dtype=torch.long)
    refused("torchvision Swin V2 with buffers of two windows refused", sd, "model.pth", ["different windows"])
    sd = tv.state_dict()
    sd["features.1.0.attn.qkv.bias"] = torch.zeros(95)
    refused("torchvision Swin V2 qkv.bias of the wrong size refused by name", sd, "model.pth",
            ["features.1.0.attn.qkv.bias"])
    sd = tv.state_dict()
    sd["features.1.0.attn.gamma"] = torch.ones(32)
    refused("a stray tensor in a torchvision Swin V2 file refused by name", sd, "model.pth",
            ["could not be placed", "features.1.0.attn.gamma"])
    if "--quick" not in sys.argv:
        # swin_v2_t itself (window 8, cpb hidden 512): 256 (maps 64, 32, 16, 8: the last unshifted), 224
        # (56, 28, 14, 7: padded to the window from stage 1 on) and 192x288
        torch.manual_seed(13)
        tv = R.randomize_(swin_v2_t().eval(), seed=13)
        tv_case("torchvision swin_v2_t", tv, [(256, 256), (224, 224), (192, 288)],
                {"source": "torchvision", "swin.window_size": "8", "swin.window_from": "fixed",
                 "img_size": "256 256", "pre.crop_pct": "0.984615"})

# a file without a window in its name or metadata: the window is assumed and said to be
lmv, out = save_convert(R.timm_state_dict(model(1)), "model.pth")
line = [x for x in out.splitlines() if "swin.window_size" in x]
res.check("an unstated Swin V2 window is printed as assumed", any(x.startswith("assumed") and "=8" in x for x in line),
          "; ".join(line) or "no line names swin.window_size")
res.finish()
