"""Reduced-precision weight files (f16, int8 per output channel) end to end.

For ViT, Swin and LeMeViT (seeded random weights, the reference modules of tests/models):
  * the converter writes f16 and int8 files with --dtype; they are smaller by the expected factor;
  * the library runs them exactly: C logits on the int8 (f16) file equal PyTorch's logits for the
    same model holding the widened weights the file stores (parity rule 1e-4), and equal the C
    logits of the float32 twin of the file (lmvfile.py --dtype f32), per block too;
  * the error against the float32 model is measured and reported per family (logits relative to
    the logit scale, and top-1 agreement), with loose upper bounds.
The bundled CIFAR-10 LeMeViT is requantised and run over the CIFAR-10 test JPEGs (the 1,000-image
subset in tests/data, or all 10,000 with LMV_CIFAR10 / `make test-full`) in f32, f16 and
int8, and int8 with --int8-compute (int8 x int8 products, "int8c"): top-1 agreement with f32
>= 99.9 % (f16) and >= 99.5 % (int8, int8c), accuracy change reported.
Files with reduced precision where the library needs float32 are refused with a clear error.

  --quick   50 CIFAR images per class instead of all of them."""
import argparse
import copy
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (LMV, ROOT, Results, cifar10_source, cifar_test_dir, compare_traces, convert, lmv_run, logits_close, max_abs,  # noqa: E402
                    run, tmpdir)
from models import lemevit_ref as L  # noqa: E402
from models import swin_ref as S  # noqa: E402
from models import timm_vit  # noqa: E402

sys.path.insert(0, os.path.join(ROOT, "tools"))
import lmvfile  # noqa: E402

torch.set_num_threads(2)
res = Results()
# loose bounds on the error against the float32 model, relative to the logit scale
BOUND = {"f16": 2e-3, "int8": 5e-2, "int8c": 1e-1}


def families():
    torch.manual_seed(0)
    vit = timm_vit.randomize_(timm_vit.VisionTransformer(img_size=64, patch_size=8, embed_dim=128, depth=4, num_heads=4,
                                                         num_classes=100), seed=11).eval()
    swin = S.randomize_(S.build("ms", img_size=112, embed_dim=64, depths=(2, 2, 2), num_heads=(2, 4, 8), window_size=7,
                                num_classes=100), seed=12).eval()
    lem = L.randomize_(L.build(depth=[1, 1, 1, 2, 1], embed_dim=[32, 32, 64, 96, 128], mlp_ratios=4,
                               attn_type=list("CDDSS"), num_classes=100), seed=13).eval()
    return [("ViT", vit, 64, ("--num-heads", "4")), ("Swin", swin, 112, ()), ("LeMeViT", lem, 64, ())]


def widened_copy(model, path):
    """A copy of `model` holding exactly the weights stored in the .lmv file at `path` (widened to
    float32). Returns (model, number of reduced-precision tensors loaded)."""
    f = lmvfile.read(path)
    m = copy.deepcopy(model)
    sd = m.state_dict()
    loaded = 0
    for name, t in f.tensors.items():
        if t.dtype in (lmvfile.DTYPE_F32, lmvfile.DTYPE_F32P):   # float32 values, plain or in panels
            continue
        if name not in sd:
            raise RuntimeError(f"{name} is reduced precision in the file but not in the reference state dict")
        sd[name] = torch.tensor(np.array(f.tensor(name), dtype=np.float32).reshape(sd[name].shape))
        loaded += 1
    m.load_state_dict(sd)
    return m.eval(), loaded


def family_case(name, model, img, opts):
    d = tmpdir()
    ckpt = os.path.join(d, "model.pth")
    torch.save(model.state_dict(), ckpt)
    files = {}
    for dt in ("f32", "f16", "int8"):
        files[dt] = os.path.join(d, f"model_{dt}.lmv")
        try:
            convert(ckpt, files[dt], "--labels", "none", "--dtype", dt, *opts)
        except RuntimeError as e:
            res.check(f"{name} convert --dtype {dt}", False, str(e))
            return
    x = torch.randn(2, 3, img, img, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        want32 = model(x).numpy()
    got32, _ = lmv_run(files["f32"], x.numpy())
    ok, desc = logits_close(got32, want32)
    res.check(f"{name} f32 file matches PyTorch", ok, desc)
    size32 = os.path.getsize(files["f32"])
    for dt in ("f16", "int8"):
        q = files[dt]
        f = lmvfile.read(q)
        n_q = sum(1 for t in f.tensors.values() if t.dtype == lmvfile.dtype_code(dt))
        size = os.path.getsize(q)
        code, out, err = run([LMV, "info", q])
        res.check(f"{name} {dt}: lmv info shows the storage", code == 0 and f"{dt}: {n_q} tensors" in out,
                  err.strip() or [ln for ln in out.splitlines() if "storage" in ln][0])
        # 1. the library computes exactly with the weights the file stores
        ref, loaded = widened_copy(model, q)
        with torch.no_grad():
            want = ref(x).numpy()
        got, traces = lmv_run(q, x.numpy(), trace=(name == "LeMeViT"))
        ok, desc = logits_close(got, want)
        res.check(f"{name} {dt}: C matches PyTorch holding the same {dt} weights ({loaded} tensors)",
                  ok and loaded == n_q and n_q > 0, desc)
        if name == "LeMeViT":
            compare_traces(res, f"{name} {dt}", traces, L.reference_traces(L.collect_activations(ref, x), ref))
        twin = os.path.join(d, f"twin_{dt}.lmv")
        lmvfile.requantize(q, twin, "f32", pack=False)
        got_twin, _ = lmv_run(twin, x.numpy())
        diff = max_abs(got, got_twin)
        # the GEMM packs the same float32 panel either way: bit-identical, not merely close
        res.check(f"{name} {dt}: the same logits as its float32 twin file, bit for bit", diff == 0.0,
                  f"max abs diff {diff:.1e}")
        # 2. what the precision costs, against the float32 model
        rel = max_abs(got, want32) / float(np.max(np.abs(want32)))
        agree = int(np.sum(np.argmax(got, 1) == np.argmax(want32, 1)))
        print(f"   {name} {dt}: file {size / 1e6:.2f} MB ({size / size32:.2f} x f32), {n_q} tensors in {dt}, "
              f"logits error {rel:.2e} of the logit scale, top-1 same on {agree}/{len(got)}")
        res.check(f"{name} {dt}: error against float32 below {BOUND[dt]:g} of the logit scale", rel <= BOUND[dt],
                  f"{rel:.2e}")
        expect = 0.5 if dt == "f16" else 0.25
        res.check(f"{name} {dt}: file size", size <= (expect + 0.1) * size32, f"{size} vs {size32} bytes")
    # int8 x int8 products (activations quantised per row and K block): what that costs, and that the
    # result does not depend on the thread count
    q = files["int8"]
    got1, _ = lmv_run(q, x.numpy(), "--int8-compute", "--threads", "1")
    got2, _ = lmv_run(q, x.numpy(), "--int8-compute", "--threads", "2")
    res.check(f"{name} int8-compute: 1 and 2 threads give the same logits", max_abs(got1, got2) == 0.0,
              f"max abs diff {max_abs(got1, got2):.1e}")
    rel = max_abs(got1, want32) / float(np.max(np.abs(want32)))
    agree = int(np.sum(np.argmax(got1, 1) == np.argmax(want32, 1)))
    print(f"   {name} int8-compute: logits error {rel:.2e} of the logit scale, top-1 same on {agree}/{len(got1)}")
    res.check(f"{name} int8-compute: error against float32 below {BOUND['int8c']:g} of the logit scale",
              rel <= BOUND["int8c"], f"{rel:.2e}")


def cifar(quick):
    base = os.path.join(ROOT, "examples", "lemevit_cifar10.lmv")
    d = tmpdir()
    root = cifar_test_dir(50 if quick else 0)
    preds, acc = {}, {}
    for dt in ("f32", "f16", "int8", "int8c"):
        path = base
        if dt != "f32":
            path = os.path.join(d, f"cifar_{dt.rstrip('c')}.lmv")
            if dt != "int8c":
                lmvfile.requantize(base, path, dt)
        out_tsv = os.path.join(d, f"pred_{dt}.tsv")
        code, out, err = run([LMV, "eval", path, root, "--json", "--predictions", out_tsv] +
                             (["--int8-compute"] if dt == "int8c" else []))
        if not res.check(f"CIFAR-10 {dt}: lmv eval", code == 0, "" if code == 0 else err.strip()[-300:]):
            return
        acc[dt] = json.loads(out)["accuracy"]
        preds[dt] = {}
        for line in open(out_tsv):
            p, _, pred = line.rstrip("\n").split("\t")
            preds[dt][os.path.relpath(p, root)] = int(pred)
    n = len(preds["f32"])
    for dt, need in (("f16", 0.999), ("int8", 0.995), ("int8c", 0.995)):
        agree = sum(1 for k, v in preds["f32"].items() if preds[dt].get(k) == v)
        print(f"   CIFAR-10 {dt}: {n} images, accuracy {acc[dt]:.2f} % (f32 {acc['f32']:.2f} %, change "
              f"{acc[dt] - acc['f32']:+.2f} points), top-1 agreement with f32 {100.0 * agree / n:.2f} %")
        res.check(f"CIFAR-10 {dt}: top-1 agreement with f32 >= {100 * need:g} %", agree >= need * n and
                  (quick or n == (10000 if cifar10_source()[1] else 1000)), f"{agree}/{n}")


def refusals():
    """Reduced precision where the library reads float32 is refused with advice; a bad int8 size is
    corrupt."""
    d = tmpdir()
    src = os.path.join(ROOT, "examples", "lemevit_cifar10.lmv")
    f = lmvfile.read(src)
    tensors = []
    for name, t in f.tensors.items():
        dt = "f16" if name == "norm_c.weight" else "f32"
        tensors.append((name, t.shape, f.tensor(name), dt))
    bad = os.path.join(d, "norm_f16.lmv")
    lmvfile.write(bad, list(f.meta.items()), tensors)
    code, out, err = run([LMV, "info", bad])
    res.check("an f16 LayerNorm weight is refused with advice", code != 0 and "norm_c.weight" in err and
              "--dtype f32" in err and len(err.strip().splitlines()) == 1, err.strip())
    # a 2-D tensor the library reads element by element (not through the GEMM) in GEMM panels
    tensors = [(n, s, v, "f32p" if n == "meta_tokens" else dt) for n, s, v, dt in tensors]
    tensors = [(n, s, v, "f32" if n == "norm_c.weight" else dt) for n, s, v, dt in tensors]
    bad = os.path.join(d, "meta_f32p.lmv")
    lmvfile.write(bad, list(f.meta.items()), tensors)
    code, out, err = run([LMV, "info", bad])
    res.check("meta tokens stored as f32p panels are refused with advice", code != 0 and "meta_tokens" in err and
              "f32p" in err and "--dtype f32" in err and len(err.strip().splitlines()) == 1, err.strip())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    for name, model, img, opts in families():
        family_case(name, model, img, opts)
    refusals()
    cifar(args.quick)
    res.finish()


if __name__ == "__main__":
    main()
