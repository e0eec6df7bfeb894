"""LeMeViT parity: the faithful PyTorch reference of the official model (tests/models/lemevit_ref.py)
with seeded random weights (BatchNorm statistics included), saved the ways real training runs save
it, converted by tools/convert.py and run by build/lmv; logits and every block's x and c compared."""
import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import Results, convert, lmv_run, logits_close, compare_traces, tmpdir  # noqa: E402
from models import lemevit_ref as L  # noqa: E402

torch.set_num_threads(2)
res = Results()


def save_and_convert(sd_obj, *opts):
    d = tmpdir()
    ckpt, lmv = os.path.join(d, "model.pth.tar"), os.path.join(d, "model.lmv")
    torch.save(sd_obj, ckpt)
    convert(ckpt, lmv, "--labels", "none", *opts)
    return lmv


def parity(name, model, sizes, batch=2, wrap=None, opts=(), seed=0):
    model.eval()
    sd = model.state_dict()
    try:
        lmv = save_and_convert(wrap(sd) if wrap else sd, *opts)
    except RuntimeError as e:
        return res.check(name, False, str(e))
    for (h, w) in sizes:
        x = torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(seed + h * 7 + w))
        with torch.no_grad():
            acts = L.collect_activations(model, x)
        want = acts["logits"].numpy()
        try:
            got, traces = lmv_run(lmv, x.numpy(), trace=True)
        except RuntimeError as e:
            res.check(f"{name} {h}x{w}", False, str(e))
            continue
        ok, desc = logits_close(got, want)
        res.check(f"{name} {h}x{w} logits", ok, desc)
        compare_traces(res, f"{name} {h}x{w}", traces, L.reference_traces(acts, model))
    return lmv


def small(variant_attn, seed, num_classes=10, mlp=4, dims=(32, 32, 64, 96, 128), depth=(1, 1, 1, 2, 1)):
    n = len(variant_attn)
    m = L.build(depth=list(depth[:n]), embed_dim=list(dims[:n]), mlp_ratios=mlp, attn_type=list(variant_attn),
                num_classes=num_classes)
    return L.randomize_(m, seed=seed)


def dca_scale_is_checked():
    """Make the reference use head_dim^-0.5 in dual cross attention and show that the parity
    comparison fails: the test can catch a wrong DCA scale."""
    m = small("CDDSS", seed=5)
    lmv = save_and_convert(m.state_dict())
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(9))
    saved = L.scaled_dot_product_attention
    try:  # drop the explicit DCA scale: every attention then uses head_dim^-0.5
        L.scaled_dot_product_attention = lambda q, k, v, scale=None: saved(q, k, v)
        with torch.no_grad():
            wrong = m.eval()(x).numpy()
    finally:
        L.scaled_dot_product_attention = saved
    with torch.no_grad():
        right = m(x).numpy()
    got, _ = lmv_run(lmv, x.numpy())
    ok_right, d_right = logits_close(got, right)
    ok_wrong, d_wrong = logits_close(got, wrong)
    res.check("a wrong DCA scale in the reference makes parity fail", ok_right and not ok_wrong,
              f"true scale: {d_right}; head_dim scale: {d_wrong}")


def attention_maps():
    """The attention maps lmv traces for a chosen block equal the reference's softmax
    probabilities (both directions of a dual cross block, the cross block, a standard block)."""
    m = small("CDDSS", seed=31).eval()
    lmv = save_and_convert(m.state_dict())
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(32))
    saved = L.scaled_dot_product_attention
    for block, names in (("stages.0.0", ["attn_c"]), ("stages.1.0", ["attn_x", "attn_c"]),
                         ("stages.2.0", ["attn_x", "attn_c"]), ("stages.3.1", ["attn_x", "attn_c"])):
        i, j = int(block.split(".")[1]), int(block.split(".")[2])
        seen, active = [], [False]

        def recording(q, k, v, scale=None):
            if active[0]:
                sc = scale or q.shape[-1] ** -0.5
                seen.append((q @ k.transpose(-1, -2) * sc).softmax(dim=-1)[0].numpy())
            return saved(q, k, v, scale)
        hooks = [m.stages[i][j].register_forward_pre_hook(lambda mod, inp: active.__setitem__(0, True)),
                 m.stages[i][j].register_forward_hook(lambda mod, inp, out: active.__setitem__(0, False))]
        L.scaled_dot_product_attention = recording
        try:
            with torch.no_grad():
                m(x)
        finally:
            L.scaled_dot_product_attention = saved
            for h in hooks:
                h.remove()
        _, traces = lmv_run(lmv, x.numpy(), attention=block)
        got = [traces.get(f"{block}.{n}") for n in names]
        ok = len(seen) == len(names) and all(g is not None and g.shape == w.shape for g, w in zip(got, seen))
        d = max(float(np.max(np.abs(g - w))) for g, w in zip(got, seen)) if ok else float("inf")
        res.check(f"attention maps of {block} ({', '.join(names)})", ok and d < 1e-5,
                  f"max abs diff {d:.1e}" if ok else f"got {[None if g is None else g.shape for g in got]}, "
                  f"reference {[w.shape for w in seen]}")


def options():
    """Each option of the official LeMeBlock on in turn, every attention type (C, D, D2, S): layer
    scale (gamma1/gamma2 in the checkpoint), post-norm (pre_norm=False, which the tensors cannot
    show: --set lemevit.post_norm=1), and both. Exact logits and every block's x and c."""
    for types in ("CDDSS", "CEESS"):
        attn = ["D2" if t == "E" else t for t in types]
        label = ",".join(attn)
        for what, kw, opts in (("layer scale", dict(layer_scale_init_value=1e-1), ()),
                               ("post-norm", dict(pre_norm=False), ("--set", "lemevit.post_norm=1")),
                               ("post-norm + layer scale", dict(pre_norm=False, layer_scale_init_value=0.5),
                                ("--set", "lemevit.post_norm=1"))):
            m = L.build(depth=[1, 1, 1, 2, 1], embed_dim=[32, 32, 64, 96, 128], attn_type=attn, num_classes=10, **kw)
            parity(f"{label} {what}", L.randomize_(m, seed=40 + len(opts)), [(64, 64), (72, 56)], opts=opts)
    # without the setting a post-norm model runs as pre-norm: the setting is what makes it exact
    m = L.randomize_(L.build(depth=[1, 1, 1, 2, 1], embed_dim=[32, 32, 64, 96, 128], attn_type=list("CDDSS"),
                             num_classes=10, pre_norm=False), seed=47).eval()
    lmv = save_and_convert(m.state_dict())
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(48))
    with torch.no_grad():
        want = m(x).numpy()
    got, _ = lmv_run(lmv, x.numpy())
    ok, desc = logits_close(got, want)
    res.check("a post-norm model converted without lemevit.post_norm differs from PyTorch", not ok, desc)
    # the same option found by the converter, no flag given: a training checkpoint whose args say pre_norm=False
    m = L.randomize_(L.build(depth=[1, 1, 1, 2, 1], embed_dim=[32, 32, 64, 96, 128], attn_type=list("CDDSS"),
                             num_classes=10, pre_norm=False, layer_scale_init_value=0.5), seed=49)
    parity("post-norm + layer scale read from the training args (no flag)", m, [(64, 64)],
           wrap=lambda s: {"epoch": 1, "args": {"model": "lemevit_custom", "pre_norm": False}, "state_dict": s})


def layouts():
    m = small("CDDSS", seed=21, num_classes=4)
    sd = m.state_dict()
    ns = argparse.Namespace(model="lemevit_tiny", lr=5e-4, epochs=3, img_size=224)
    ema = {k: v.clone() for k, v in sd.items()}
    parity("timm training checkpoint (state_dict + state_dict_ema + args), 4 classes", m, [(64, 64)],
           wrap=lambda s: {"epoch": 3, "arch": "lemevit_tiny", "state_dict": s, "state_dict_ema": ema,
                           "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}, "version": 2, "args": ns,
                           "metric": 91.5})
    parity("{'model': ...} with module. prefix", m, [(64, 64)], wrap=lambda s: {"model": {"module." + k: v for k, v in s.items()}})
    legacy = lambda s: {("prototypes" if k == "meta_tokens" else k.replace("meta_token_downsample.", "prototype_downsample.")): v  # noqa: E731
                        for k, v in s.items()}
    parity("training-era names prototypes / prototype_downsample", m, [(64, 64)], wrap=legacy)
    # the EMA copy is a different set of weights: --ema must pick it
    m2 = small("CDDSS", seed=22, num_classes=4)
    lmv = save_and_convert({"state_dict": sd, "state_dict_ema": m2.state_dict()}, "--ema")
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = m2.eval()(x).numpy()
    got, _ = lmv_run(lmv, x.numpy())
    ok, desc = logits_close(got, want)
    res.check("--ema converts state_dict_ema", ok, desc)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small configs only")
    args = ap.parse_args()
    # a small config of every attention-type pattern, several sizes incl. non-square, batch > 1
    parity("small C,D,D,S,S (tiny/small/base pattern)", small("CDDSS", 1), [(64, 64), (96, 80), (50, 70)], batch=3)
    parity("small C,D2,D2,S,S (tiny_v2 pattern)", L.randomize_(L.build(depth=[1, 1, 1, 2, 1], embed_dim=[32, 32, 64, 96, 128],
                                                                     attn_type=["C", "D2", "D2", "S", "S"], num_classes=10), 2),
           [(64, 64), (72, 56)])
    parity("small S,S,S,S (vit_tiny pattern)", L.randomize_(L.build(depth=[1, 1, 2, 1], embed_dim=[32, 64, 96, 128],
                                                                  attn_type=["S", "S", "S", "S"], num_classes=10), 3),
           [(64, 64), (80, 48)])
    parity("small mlp_ratio 3 (small_v2 pattern)", small("CDDSS", 4, mlp=3), [(64, 64)])
    options()
    dca_scale_is_checked()
    attention_maps()
    layouts()
    if not args.quick:
        parity("lemevit_tiny full size", L.randomize_(L.lemevit_tiny(), 11), [(224, 224), (256, 256), (224, 160)])
        parity("lemevit_small full size", L.randomize_(L.lemevit_small(), 12), [(224, 224)])
        parity("lemevit_tiny_v2 full size", L.randomize_(L.lemevit_tiny_v2(), 13), [(224, 224)], batch=1)
        parity("lemevit_small_v2 full size", L.randomize_(L.lemevit_small_v2(), 14), [(224, 224)], batch=1)
        parity("vit_tiny (4-stage) full size", L.randomize_(L.vit_tiny(), 15), [(224, 224)], batch=1)
        parity("lemevit_base full size", L.randomize_(L.lemevit_base(), 16), [(224, 224)], batch=1)
    res.finish()
