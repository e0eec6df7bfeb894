"""Swin Transformer (V1) parity: torchvision's own swin_t and faithful re-implementations of the
other real layouts (tests/models/swin_ref.py in the Microsoft / timm <= 0.8, timm 0.9.0-0.9.5 and
timm >= 0.9.6 eras, tests/models/hf_swin.py for Hugging Face, tests/models/seed004_swin.py for
seed 004's CIFAR Swin) with seeded random weights, saved the way their projects save them,
converted by tools/convert.py and run by build/lmv; logits and every block's output compared.

Also: the reference's relative position index and shift mask checked against their definitions;
the reference broken on purpose (transposed index, no shift mask) to show that the parity check
catches those bugs; the two padding conventions told apart (roll-then-pad vs pad-then-roll).

  --quick   skip the full-size swin_t runs."""
import argparse
import json
import os
import struct
import sys
import types

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (LMV, Results, compare_traces, convert, lmv_run, logits_close, max_abs, run,  # noqa: E402
                    tmpdir)
from models import hf_swin, seed004_swin  # noqa: E402
from models import swin_ref as S  # noqa: E402
from parity import info_config  # noqa: E402

torch.set_num_threads(2)
res = Results()
WORST = {"logits": 0.0, "block": 0.0}   # the largest differences seen in passing comparisons


def images(batch, h, w, seed):
    return torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))


def worst_block(traces, reference):
    w = 0.0
    for name, want in reference.items():
        got = traces.get(name)
        if got is not None and got.size == want.size:
            w = max(w, max_abs(got, want.reshape(got.shape)) / max(1.0, float(np.max(np.abs(want)))))
    return w


def save_convert(obj, *opts, fname="model.pth", side=None, writer=None):
    """Save `obj` like its project does, convert it; returns (lmv path, converter output)."""
    d = tmpdir()
    path, lmv = os.path.join(d, fname), os.path.join(d, "model.lmv")
    (writer or torch.save)(obj, path)
    for name, text in (side or {}).items():
        with open(os.path.join(d, name), "w") as f:
            f.write(text)
    out = convert(path, lmv, "--labels", "none", *opts)
    return lmv, out


def check_run(name, lmv, x, want, reference):
    """Run the converted file on x; compare the logits and image 0's per-block activations."""
    try:
        got, traces = lmv_run(lmv, x.numpy(), trace=True)
    except RuntimeError as e:
        return res.check(name, False, str(e))
    ok, desc = logits_close(got, want)
    res.check(f"{name} logits", ok, desc)
    if ok:
        WORST["logits"] = max(WORST["logits"], max_abs(got, want))
    if compare_traces(res, name, traces, reference):
        WORST["block"] = max(WORST["block"], worst_block(traces, reference))
    return ok


def check_recorded(name, lmv, expect):
    """The converter recognised the layout: source and the window conventions stored in the file."""
    info = info_config(lmv)
    got = {k: info.get(k) for k in expect}
    res.check(f"{name} recorded as {', '.join(f'{k}={v}' for k, v in expect.items())}", got == expect,
              f"file has {got}")


# ------------------------------------------------------------------------------- torchvision

def torchvision_traces(model, x):
    """torchvision Swin: logits and image-0 block outputs via hooks on the features modules."""
    acts, hooks = {}, []

    def save(name):
        return lambda m, i, o: acts.__setitem__(name, o[0].detach().numpy().copy())
    hooks.append(model.features[0].register_forward_hook(save("patch_embed")))
    for f in range(1, len(model.features)):
        if f % 2 == 1:
            for j, blk in enumerate(model.features[f]):
                hooks.append(blk.register_forward_hook(save("layers.%d.blocks.%d" % ((f - 1) // 2, j))))
        else:
            hooks.append(model.features[f].register_forward_hook(save("layers.%d.downsample" % (f // 2 - 1))))
    hooks.append(model.norm.register_forward_hook(save("norm")))
    try:
        with torch.no_grad():
            y = model(x)
    finally:
        for h in hooks:
            h.remove()
    return y.numpy(), acts


def torchvision_case(name, model, sizes, batch=2, seed=0):
    model.eval()
    try:
        lmv, _ = save_convert(model.state_dict())
    except RuntimeError as e:
        return res.check(name, False, str(e))
    check_recorded(name, lmv, {"source": "torchvision", "swin.pad_mode": "pad_then_roll",
                               "swin.shift_rule": "per_axis"})
    for (h, w) in sizes:
        x = images(batch, h, w, seed + h * 31 + w)
        want, ref = torchvision_traces(model, x)
        check_run(f"{name} {h}x{w}", lmv, x, want, ref)
    return lmv


def torchvision_small():
    from torchvision.models.swin_transformer import SwinTransformer
    torch.manual_seed(0)
    m = SwinTransformer(patch_size=[4, 4], embed_dim=32, depths=[2, 2, 2], num_heads=[2, 4, 8], window_size=[7, 7],
                        num_classes=7)
    S.randomize_(m, seed=40)
    # 112: no padding; 128: padding everywhere; 96x144: last stage 6x9 (window 7 pads 6, per-axis shift);
    # 100x76: odd maps (PatchMerging pads) and non-square; 103x77: not a patch multiple (the conv drops the rest)
    torchvision_case("torchvision small Swin", m, [(112, 112), (128, 128), (96, 144), (100, 76), (103, 77)],
                     batch=3)


def torchvision_swin_t():
    import torchvision
    torch.manual_seed(0)
    m = torchvision.models.swin_t()
    S.randomize_(m, seed=1)
    return m, torchvision_case("torchvision swin_t", m, [(224, 224), (256, 256), (160, 160)], batch=2, seed=2)


# ------------------------------------------------------------------------------- swin_ref eras

SMALL = dict(embed_dim=32, depths=(2, 2, 2), num_heads=(2, 4, 8), window_size=7, num_classes=5)


ERA_CONVENTIONS = {"ms": {"swin.pad_mode": "roll_then_pad", "swin.shift_rule": "min"},
                   "timm09": {"swin.pad_mode": "roll_then_pad", "swin.shift_rule": "min"},
                   "timm096": {"swin.pad_mode": "roll_then_pad", "swin.shift_rule": "per_axis"}}


def ref_case(name, era, img, sizes, wrap=None, opts=(), seed=0, batch=2, writer=None, fname="model.pth",
             source="timm", **cfg):
    """Build swin_ref in `era` for img, randomise, save (wrapped), convert; then for every size
    build the era's model for that size with the same weights and compare."""
    kw = dict(SMALL, **cfg)
    torch.manual_seed(seed)
    m = S.randomize_(S.build(era, img_size=img, **kw), seed=seed)
    sd = m.state_dict()
    try:
        lmv, _ = save_convert(wrap(sd) if wrap else sd, *opts, writer=writer, fname=fname)
    except RuntimeError as e:
        res.check(name, False, str(e))
        return None, None
    check_recorded(name, lmv, dict(ERA_CONVENTIONS[era], source=source))
    for (h, w) in sizes:
        r = m if (h, w) == tuple(S.to_2tuple(img)) else S.load_weights(S.build(era, img_size=(h, w), **kw), sd)
        x = images(batch, h, w, seed * 1000 + h * 7 + w)
        want, ref = S.collect_activations(r, x)
        check_run(f"{name} {h}x{w}", lmv, x, want, ref)
    return m, lmv


class CfgNode(dict):
    """Stands in for yacs.config.CfgNode (a dict subclass), which Microsoft's training checkpoints pickle."""


def yacs_config():
    mod = sys.modules.get("yacs.config")
    if mod is None:   # pickle records the class as yacs.config.CfgNode, as in a real MS checkpoint
        pkg = types.ModuleType("yacs")
        mod = types.ModuleType("yacs.config")
        CfgNode.__module__ = "yacs.config"
        mod.CfgNode = CfgNode
        pkg.config = mod
        sys.modules["yacs"], sys.modules["yacs.config"] = pkg, mod
    model = CfgNode(TYPE="swin", NAME="swin_tiny_patch4_window7_224", DROP_PATH_RATE=0.2,
                    SWIN=CfgNode(PATCH_SIZE=4, EMBED_DIM=32, DEPTHS=[2, 2, 2], NUM_HEADS=[2, 4, 8], WINDOW_SIZE=7,
                                 APE=False, PATCH_NORM=True))
    return CfgNode(MODEL=model, DATA=CfgNode(IMG_SIZE=112, DATASET="imagenet"), TRAIN=CfgNode(EPOCHS=300, BASE_LR=5e-4))


def ms_training_checkpoint(sd):
    opt = {"state": {0: {"step": torch.tensor(100.0), "exp_avg": torch.randn(32), "exp_avg_sq": torch.rand(32)}},
           "param_groups": [{"lr": 1e-5, "betas": (0.9, 0.999), "weight_decay": 0.05, "params": [0]}]}
    return {"model": sd, "optimizer": opt, "lr_scheduler": {"t_initial": 300, "base_values": [5e-4]},
            "max_accuracy": 81.2, "scaler": {"scale": 65536.0, "growth_factor": 2.0}, "epoch": 299,
            "config": yacs_config()}


def timm_training_checkpoint(sd, ema=None):
    ns = argparse.Namespace(model="swin_tiny_patch4_window7_224", lr=1e-3, epochs=300, img_size=112, model_ema=True,
                            drop_path=0.1)
    return {"epoch": 299, "arch": "swin_tiny_patch4_window7_224", "state_dict": sd,
            "optimizer": {"state": {}, "param_groups": [{"lr": 1e-5}]}, "version": 2, "args": ns,
            "state_dict_ema": ema if ema is not None else {k: v.clone() for k, v in sd.items()}, "metric": 81.0}


def era_ms():
    # Microsoft's files: {'model': sd}; non-square 112x224 has a 7x14 last stage (min rule: no shift)
    m, lmv = ref_case("MS official {'model'} (era A)", "ms", 112, [(112, 112), (112, 224)],
                      wrap=lambda sd: {"model": sd}, seed=3, batch=3, source="ms")
    if lmv:
        shift_rule_matters(m, lmv)
    ref_case("MS training checkpoint (optimizer, scheduler, yacs config)", "ms", 112, [(112, 112)],
             wrap=ms_training_checkpoint, seed=4, source="ms")
    ref_case("timm <= 0.8 plain state dict", "ms", 112, [(112, 112), (224, 112)], seed=5)
    ref_case("era A with ape", "ms", 112, [(112, 112)], seed=6, ape=True)
    ref_case("era A with ape, non-square native size", "ms", (112, 224), [(112, 224)], seed=7, ape=True,
             opts=("--img-size", "112", "224"))
    ref_case("era A qkv_bias=False", "ms", 112, [(112, 112)], seed=11, qkv_bias=False)
    ref_case("era A mlp_ratio 3", "ms", 112, [(112, 112)], seed=12, mlp_ratio=3.0)
    ref_case("era A patch 2", "ms", 56, [(56, 56), (56, 112)], seed=8, patch_size=2)
    ref_case("era A patch 8", "ms", 224, [(224, 224)], seed=9, patch_size=8, embed_dim=16)
    ref_case("era A window 12 at 384", "ms", 384, [(384, 384)], seed=10, batch=1, embed_dim=16, depths=(2, 2, 2, 2),
             num_heads=(1, 2, 4, 8), window_size=12)


def era_timm09():
    ref_case("timm 0.9.0-0.9.5 plain state dict", "timm09", 112, [(112, 112), (112, 224)], seed=11)
    ref_case("timm 0.9.0-0.9.5 training checkpoint (state_dict, state_dict_ema, args)", "timm09", 112,
             [(112, 112)], wrap=timm_training_checkpoint, seed=12)
    # --ema must pick the EMA copy, a different set of weights
    kw = dict(SMALL)
    m = S.randomize_(S.build("timm09", img_size=112, **kw), seed=13)
    ema = S.randomize_(S.build("timm09", img_size=112, **kw), seed=14)
    lmv, _ = save_convert(timm_training_checkpoint(m.state_dict(), ema.state_dict()), "--ema")
    x = images(2, 112, 112, 15)
    want, ref = S.collect_activations(ema, x)
    check_run("--ema converts state_dict_ema", lmv, x, want, ref)


def era_timm096():
    # 128: every stage (32, 16, 8) is padded (roll, then pad); 160x128 non-square; 112 divisible;
    # 128x112: last stage 8x7, no shift along W only (per-axis rule)
    m, lmv = ref_case("timm >= 0.9.6 plain state dict", "timm096", 128,
                      [(128, 128), (160, 128), (112, 112), (128, 112)], seed=16)
    ref_case("timm >= 0.9.6 window 12 (384, and 416x384: 104x96 stage 0 padded)", "timm096", 384,
             [(384, 384), (416, 384)], seed=17, batch=1, embed_dim=16, depths=(2, 2, 2), num_heads=(1, 2, 4),
             window_size=12)
    ref_case("timm >= 0.9.6 model.safetensors", "timm096", 128, [(128, 128)], seed=18, writer=write_safetensors,
             fname="model.safetensors")
    if lmv:
        pad_modes(m, lmv)
        too_small(lmv)


def write_safetensors(sd, path):
    """A safetensors file as the reference writer lays it out (header padded to 8 bytes)."""
    header, blobs, off = {}, [], 0
    for k, v in sd.items():
        a = v.detach().contiguous().numpy()
        dt = {np.dtype("float32"): "F32", np.dtype("int64"): "I64"}[a.dtype]
        b = a.tobytes()
        header[k] = {"dtype": dt, "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    header["__metadata__"] = {"format": "pt"}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def pad_modes(m, lmv):
    """The two padding conventions differ: the timm >= 0.9.6 file converted with
    swin.pad_mode=pad_then_roll must NOT match the timm reference; the default must, and the
    convention is recorded in the file."""
    x = images(2, 128, 128, 77)
    want, _ = S.collect_activations(m, x)
    got_default, _ = lmv_run(lmv, x.numpy())
    lmv_ptr, _ = save_convert(m.state_dict(), "--set", "swin.pad_mode=pad_then_roll")
    got_ptr, _ = lmv_run(lmv_ptr, x.numpy())
    ok_default, d_default = logits_close(got_default, want)
    ok_ptr, d_ptr = logits_close(got_ptr, want)
    res.check("timm >= 0.9.6 at 128: default (roll_then_pad) matches, pad_then_roll does not",
              ok_default and not ok_ptr, f"default: {d_default}; pad_then_roll: {d_ptr}")
    a, b = info_config(lmv).get("swin.pad_mode"), info_config(lmv_ptr).get("swin.pad_mode")
    res.check("the padding convention is recorded in the file", a == "roll_then_pad" and b == "pad_then_roll",
              f"default file: {a}, --set file: {b}")


def shift_rule_matters(m, lmv):
    """At 112x224 the last stage is 7x14: Microsoft's min rule drops the shift on both axes, the
    per-axis rule would keep it along W.  Converted with the wrong rule, parity must fail."""
    r = S.load_weights(S.build("ms", img_size=(112, 224), **SMALL), m.state_dict())
    x = images(2, 112, 224, 88)
    want, _ = S.collect_activations(r, x)
    lmv_pa, _ = save_convert({"model": m.state_dict()}, "--set", "swin.shift_rule=per_axis")
    ok_default, d_default = logits_close(lmv_run(lmv, x.numpy())[0], want)
    ok_pa, d_pa = logits_close(lmv_run(lmv_pa, x.numpy())[0], want)
    res.check("era A at 112x224: the min shift rule matches, per_axis does not", ok_default and not ok_pa,
              f"min: {d_default}; per_axis: {d_pa}")


def too_small(lmv):
    """timm shrinks the window (and resamples the bias table) on an axis smaller than the window;
    lmv does not do that and must refuse such an input cleanly rather than compute something else."""
    d = tmpdir()
    np.save(os.path.join(d, "in.npy"), images(1, 96, 96, 1).numpy())
    code, out, err = run([LMV, "run", lmv, os.path.join(d, "in.npy"), os.path.join(d, "out.npy")])
    res.check("roll_then_pad file at 96x96 (6x6 last stage < window 7) is refused with a message",
              code != 0 and "window" in err and not os.path.exists(os.path.join(d, "out.npy")),
              f"exit {code}: {err.strip()[:160]}")


def mixed_windows():
    """A Microsoft window-12 model built for 192x192 has a 6x6 last stage, so its window there is 6
    (a 121-row bias table): the file records a window per stage and runs exactly at that size."""
    m = S.randomize_(S.build("ms", img_size=192, embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8),
                             window_size=12, num_classes=5), seed=19)
    name = "era A with a clamped (smaller) window in the last stage"
    try:
        lmv, _ = save_convert({"model": m.state_dict()})
    except RuntimeError as e:
        return res.check(name, False, str(e)[:300])
    check_recorded(name, lmv, {"swin.window_size": "12 12 12 6"})
    x = images(2, 192, 192, 19)
    want, ref = S.collect_activations(m, x)
    check_run(f"{name} 192x192", lmv, x, want, ref)


def full_size_conventions(tv):
    """Full-size swin_t weights at 256 (stages 64/32/16/8, none divisible by 7): torchvision
    (pad then roll) and timm >= 0.9.6 (roll then pad) give different logits; each converted file
    matches its own project, and --set swin.pad_mode picks the other convention."""
    sd = S.torchvision_to_ms(tv.state_dict())
    timm = S.load_weights(S.build("timm096", img_size=256), sd)
    tsd = timm.state_dict()
    x = images(2, 256, 256, 5)
    want_timm, ref_timm = S.collect_activations(timm, x)
    with torch.no_grad():
        want_tv = tv(x).numpy()
    lmv, _ = save_convert(tsd)
    check_run("swin_t timm >= 0.9.6 layout 256x256", lmv, x, want_timm, ref_timm)
    lmv_ptr, _ = save_convert(tsd, "--set", "swin.pad_mode=pad_then_roll")
    got_ptr, _ = lmv_run(lmv_ptr, x.numpy())
    ok_tv, d_tv = logits_close(got_ptr, want_tv)
    same, _ = logits_close(want_timm, want_tv)
    res.check("swin_t 256: timm and torchvision differ; the timm file with pad_then_roll gives torchvision's logits",
              ok_tv and not same, f"timm vs torchvision {max_abs(want_timm, want_tv):.3f}; pad_then_roll file vs "
                                  f"torchvision: {d_tv}")


# ------------------------------------------------------------------------------- Hugging Face

def hf_case(name, sizes, seed=20, writer=None, fname="pytorch_model.bin"):
    """SwinForImageClassification saved as save_pretrained does (weights + config.json), converted
    once; a fresh model per size compared (HF's layers remember a reduced shift)."""
    cfg = hf_swin.SwinConfig(image_size=112, embed_dim=32, depths=(2, 2, 2), num_heads=(2, 4, 8), window_size=7,
                             id2label={i: "class_%d" % i for i in range(5)})
    torch.manual_seed(seed)
    m = hf_swin.randomize_(hf_swin.SwinForImageClassification(cfg).eval(), seed=seed)
    sd = m.state_dict()
    try:
        lmv, _ = save_convert(sd, fname=fname, writer=writer, side={"config.json": cfg.to_json()})
    except RuntimeError as e:
        return res.check(name, False, str(e))
    check_recorded(name, lmv, {"source": "hf", "swin.pad_mode": "pad_then_roll", "swin.shift_rule": "min"})
    for (h, w) in sizes:
        r = hf_swin.SwinForImageClassification(cfg).eval()
        r.load_state_dict(sd)
        x = images(2, h, w, seed + h * 3 + w)
        want, ref = hf_swin.collect_activations(r, x)
        check_run(f"{name} {h}x{w}", lmv, x, want, ref)


def hf():
    # 112: no padding; 128: pad then roll everywhere; 112x160 non-square (7x10 last stage: min rule, no
    # shift); 128x100: odd 13-wide stage (merging pads)
    hf_case("HF SwinForImageClassification pytorch_model.bin", [(112, 112), (128, 128), (112, 160), (128, 100)])
    hf_case("HF SwinForImageClassification model.safetensors", [(128, 128)], seed=21, writer=write_safetensors,
            fname="model.safetensors")


# ------------------------------------------------------------------------------- seed 004

def seed004():
    torch.manual_seed(0)
    net = seed004_swin.swin_cifar(patch_size=2, n_classes=10, mlp_ratio=1)
    S.randomize_(net, seed=30)
    net.eval()
    for label, obj in (("state dict", net.state_dict()), ("whole pickled model (torch.save(net))", net)):
        try:
            lmv, _ = save_convert(obj, fname="swin_cifar_20.pth")
        except RuntimeError as e:
            res.check(f"seed 004 {label}", False, str(e))
            continue
        check_recorded(f"seed 004 {label}", lmv, {"swin.pad_mode": "pad_then_roll", "swin.shift_rule": "always"})
        if label == "state dict":   # the shift kept on the 4x4 stage matters: per_axis must not match
            x = images(2, 32, 32, 9)
            want, _ = seed004_swin.collect_activations(net, x)
            lmv_pa, _ = save_convert(obj, "--set", "swin.shift_rule=per_axis", fname="swin_cifar_20.pth")
            ok_default, d_default = logits_close(lmv_run(lmv, x.numpy())[0], want)
            ok_pa, d_pa = logits_close(lmv_run(lmv_pa, x.numpy())[0], want)
            res.check("seed 004 at 32x32: the 'always' shift rule matches, per_axis does not",
                      ok_default and not ok_pa, f"always: {d_default}; per_axis: {d_pa}")
        # 32x32: stages 16, 8 and 4 all padded to the window and shifted; 48x40: non-square
        for (h, w), batch in (((32, 32), 4), ((48, 40), 2)):
            x = images(batch, h, w, 31 + h + w)
            want, ref = seed004_swin.collect_activations(net, x)
            check_run(f"seed 004 {label} {h}x{w}", lmv, x, want, ref)


# ------------------------------------------------------------------------------- index and mask

def index_formula(wh, ww):
    """formats.md 2.3: index[i, j] = (dh + Wh - 1)(2Ww - 1) + (dw + Ww - 1), (dh, dw) = c_i - c_j, row-major."""
    n = wh * ww
    out = np.zeros((n, n), dtype=np.int64)
    for i in range(n):
        for j in range(n):
            dh, dw = i // ww - j // ww, i % ww - j % ww
            out[i, j] = (dh + wh - 1) * (2 * ww - 1) + (dw + ww - 1)
    return out


def mask_by_regions(H, W, ws, s):
    """The region construction written out with loops: label every cell of the (padded) H x W
    grid by its slice (0, -ws), (-ws, -s), (-s, None) per axis (an axis with s = 0 has one label),
    partition into ws x ws windows row-major, -100 where labels differ."""
    def label(y, size, sh):
        if sh == 0:
            return 0
        return 0 if y < size - ws else (1 if y < size - sh else 2)
    sh, sw = s if isinstance(s, tuple) else (s, s)
    nwh, nww, n = H // ws, W // ws, ws * ws
    out = np.zeros((nwh * nww, n, n), dtype=np.float32)
    for wy in range(nwh):
        for wx in range(nww):
            labs = [label(wy * ws + t // ws, H, sh) * 3 + label(wx * ws + t % ws, W, sw) for t in range(n)]
            for i in range(n):
                for j in range(n):
                    out[wy * nww + wx, i, j] = 0.0 if labs[i] == labs[j] else -100.0
    return out


def mask_by_wraparound(H, W, ws, s):
    """What the mask means (no padding): after rolling by -s, a token is 'wrapped' on an axis if
    it came from the other end of the map (rolled position >= size - s).  Two tokens of one window
    may attend to each other iff they are wrapped alike on both axes."""
    n = ws * ws
    out = np.zeros(((H // ws) * (W // ws), n, n), dtype=np.float32)
    for wy in range(H // ws):
        for wx in range(W // ws):
            pos = [(wy * ws + t // ws, wx * ws + t % ws) for t in range(n)]
            wrap = [(y >= H - s, x >= W - s) for (y, x) in pos]
            for i in range(n):
                for j in range(n):
                    out[wy * (W // ws) + wx, i, j] = 0.0 if wrap[i] == wrap[j] else -100.0
    return out


def index_and_mask():
    ok, bad = True, []
    for ws in (7, 12):
        m = S.build("ms", img_size=ws * 4 * 8, embed_dim=16, depths=(2, 2), num_heads=(1, 2), window_size=ws,
                    num_classes=0)
        idx = m.layers[0].blocks[0].attn.relative_position_index.numpy()
        if not np.array_equal(idx, index_formula(ws, ws)):
            ok, bad = False, bad + ["swin_ref window %d" % ws]
    hf_idx = hf_swin.SwinForImageClassification(hf_swin.SwinConfig(depths=(2,), num_heads=(2,), embed_dim=16)) \
        .swin.encoder.layers[0].blocks[0].attention.self.relative_position_index.numpy()
    seed_idx = seed004_swin.WindowAttention(16, 7, 2).relative_position_index.numpy()
    from torchvision.models.swin_transformer import ShiftedWindowAttention
    tv_idx = ShiftedWindowAttention(16, [7, 7], [0, 0], 2).relative_position_index.numpy()
    for label, idx in (("hf_swin", hf_idx), ("seed004", seed_idx), ("torchvision (flattened)", tv_idx.reshape(49, 49))):
        if not np.array_equal(idx, index_formula(7, 7)):
            ok, bad = False, bad + [label]
    non_square = S.get_relative_position_index(5, 7).numpy()
    if not np.array_equal(non_square, index_formula(5, 7)):
        ok, bad = False, bad + ["5x7 window"]
    res.check("relative_position_index equals the formats.md 2.3 formula (swin_ref 7 and 12, 5x7, HF, seed, "
              "torchvision)", ok, "mismatch: " + ", ".join(bad) if bad else "")

    # era A buffer at 112 (28x28 stage 0, 14x14 stage 1): the region construction and its meaning
    m = S.build("ms", img_size=112, **SMALL)
    results = []
    for s, res_hw in ((0, (28, 28)), (1, (14, 14))):
        buf = m.layers[s].blocks[1].attn_mask.numpy()
        results.append(np.array_equal(buf, mask_by_regions(*res_hw, 7, 3)) and
                       np.array_equal(buf, mask_by_wraparound(*res_hw, 7, 3)))
    results.append(m.layers[2].blocks[1].attn_mask is None)   # 7x7 stage: no shift, no mask
    res.check("era A attn_mask equals the region construction and the wrap-around meaning; none at 7x7",
              all(results), str(results))
    # timm >= 0.9.6 at 128: masks on the ceil-padded size (32 -> 35, 16 -> 21, 8 -> 14)
    m = S.build("timm096", img_size=128, **SMALL)
    results = []
    for s, hw in ((0, 35), (1, 21), (2, 14)):
        results.append(np.array_equal(m.layers[s].blocks[1].attn_mask.numpy(), mask_by_regions(hw, hw, 7, 3)))
    m = S.build("timm096", img_size=(128, 112), **SMALL)   # last stage 8x7: shift (3, 0)
    results.append(np.array_equal(m.layers[2].blocks[1].attn_mask.numpy(), mask_by_regions(14, 7, 7, (3, 0))))
    res.check("timm >= 0.9.6 attn_mask equals the region construction on the padded size (incl. per-axis shift)",
              all(results), str(results))
    # seed 004: create_mask on the padded size of 16, 8 and 4 (21, 14, 7)
    net = seed004_swin.swin_cifar(patch_size=2, n_classes=10, mlp_ratio=1)
    results = [np.array_equal(net.layers[s].create_mask(torch.zeros(1), hw, hw).numpy(), mask_by_regions(p, p, 7, 3))
               for s, hw, p in ((0, 16, 21), (1, 8, 14), (2, 4, 7))]
    res.check("seed 004 create_mask equals the region construction on the padded size", all(results), str(results))


def faults_are_caught():
    """Break the reference on purpose; the parity check against the (correct) converted file must
    then fail, so these bugs cannot hide."""
    m = S.randomize_(S.build("ms", img_size=112, **SMALL), seed=50)
    lmv, _ = save_convert({"model": m.state_dict()})
    x = images(2, 112, 112, 51)
    got, traces = lmv_run(lmv, x.numpy(), trace=True)
    right, _ = S.collect_activations(m, x)
    ok_right, d_right = logits_close(got, right)
    for fault, what in (("transposed_index", "a transposed relative position index"),
                        ("no_shift_mask", "no -100 mask in shifted blocks")):
        S.FAULTS[fault] = True
        try:
            wrong, wrong_ref = S.collect_activations(m, x)
        finally:
            S.FAULTS[fault] = False
        ok_wrong, d_wrong = logits_close(got, wrong)
        # the first block that differs must be where the fault acts: block 0 for the index, block 1 for the mask
        first = next((k for k in wrong_ref if max_abs(traces[k], wrong_ref[k].reshape(traces[k].shape)) >
                      1e-4 * max(1.0, float(np.max(np.abs(wrong_ref[k]))))), None)
        expect = "layers.0.blocks.0" if fault == "transposed_index" else "layers.0.blocks.1"
        res.check(f"reference with {what} fails parity (first at {expect})",
                  ok_right and not ok_wrong and first == expect,
                  f"correct reference: {d_right}; broken: {d_wrong}; first divergent block {first}")


# -------------------------------------------------------------------------------

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="skip the full-size swin_t runs")
    args = ap.parse_args()
    index_and_mask()
    torchvision_small()
    era_ms()
    era_timm09()
    era_timm096()
    mixed_windows()
    hf()
    seed004()
    faults_are_caught()
    if not args.quick:
        tv, _ = torchvision_swin_t()
        full_size_conventions(tv)
    print(f"max logits abs diff in passing checks {WORST['logits']:.2e}, worst per-block relative diff "
          f"{WORST['block']:.2e}", flush=True)
    res.finish()
