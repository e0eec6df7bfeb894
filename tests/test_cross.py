"""Other architectures under qemu-user: AArch64 (the NEON kernels, and the portable ones) and
big-endian s390x (weights converted on load). tests/test_core.c runs there whole (kernels against
double-precision references, the loader's mutation test), and tests/run_model.c runs a converted
ViT and LeMeViT on a fixed input: every build's logits and features must equal the x86 build's
within float rounding."""
import os
import shutil
import subprocess
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import BUILD, ROOT, Results, convert, run, tmpdir  # noqa: E402
from models import timm_vit  # noqa: E402

sys.path.insert(0, os.path.join(ROOT, "tools"))
import lmvfile  # noqa: E402

res = Results()
CROSS = os.path.join(BUILD, "cross")
WARN = ["-std=c99", "-Wall", "-Wextra", "-pedantic", "-Werror"]
PACKAGES = {"aarch64-linux-gnu-gcc": "gcc-aarch64-linux-gnu libc6-dev-arm64-cross",
            "s390x-linux-gnu-gcc": "gcc-s390x-linux-gnu libc6-dev-s390x-cross",
            "qemu-aarch64": "qemu-user", "qemu-s390x": "qemu-user"}
# (label, compiler, extra flags, runner)
TARGETS = [("x86-64", "cc", ["-march=native"], []),
           ("x86-64 portable", "cc", ["-DLEMEVIT_NO_SIMD"], []),
           ("aarch64 NEON", "aarch64-linux-gnu-gcc", ["-static"], ["qemu-aarch64"]),
           ("aarch64 NEON + dotprod", "aarch64-linux-gnu-gcc", ["-static", "-march=armv8.2-a+dotprod"],
            ["qemu-aarch64", "-cpu", "max"]),
           ("aarch64 portable", "aarch64-linux-gnu-gcc", ["-static", "-DLEMEVIT_NO_SIMD"], ["qemu-aarch64"]),
           ("s390x big-endian", "s390x-linux-gnu-gcc", ["-static"], ["qemu-s390x"])]


def have(tool):
    ok = shutil.which(tool) is not None
    res.check(f"{tool} present", ok, "" if ok else f"install {PACKAGES[tool]} (tools/install_deps.sh does)")
    return ok


def build(label, cc, flags, src, exe):
    code, out, err = run([cc, *WARN, "-O2", *flags, "-o", exe, src, "-lm"])
    return res.check(f"{label}: {os.path.basename(src)} builds without warnings", code == 0, err.strip()[-400:])


def parse(out):
    simd = next((ln.split()[1] for ln in out.splitlines() if ln.startswith("simd ")), "?")
    logits = np.array([float(ln.split()[1]) for ln in out.splitlines() if ln.startswith("logit ")])
    feats = np.array([float(ln.split()[1]) for ln in out.splitlines() if ln.startswith("feature ")])
    return simd, logits, feats


def make_models(d):
    vit = timm_vit.randomize_(timm_vit.VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                                                         num_classes=10), seed=3).eval()
    torch.save(vit.state_dict(), os.path.join(d, "vit.pth"))
    convert(os.path.join(d, "vit.pth"), os.path.join(d, "vit.lmv"), "--labels", "none", "--num-heads", "2")
    tiny = timm_vit.randomize_(timm_vit.VisionTransformer(img_size=16, patch_size=8, embed_dim=16, depth=1, num_heads=2,
                                                          num_classes=3), seed=1).eval()
    torch.save(tiny.state_dict(), os.path.join(d, "tiny.pth"))
    convert(os.path.join(d, "tiny.pth"), os.path.join(d, "tiny.lmv"), "--labels", "none", "--num-heads", "2")
    lemevit = os.path.join(BUILD, "fw", "lemevit_random_cifar10.lmv")
    if not os.path.exists(lemevit):
        lemevit = os.path.join(d, "lemevit.lmv")
        subprocess.run([sys.executable, os.path.join(ROOT, "tests", "make_firmware_model.py"), lemevit], check=True)
    # the LeMeViT with f16 and int8 matrices: byte order of halves and of the int8 scales
    reduced = []
    for dt in ("f16", "int8"):
        path = os.path.join(d, f"lemevit_{dt}.lmv")
        lmvfile.requantize(lemevit, path, dt)
        reduced.append((f"LeMeViT {dt}", path, 32, 32, 2))
    # and int8 x int8 products: the same integer arithmetic on every path, but a one-ulp difference in an
    # activation (another libm, wider float evaluation) can move it across a rounding step of the
    # quantiser, so builds agree within the quantisation error, not within float rounding
    reduced.append(("LeMeViT int8-compute", reduced[-1][1], 32, 32, 2))
    # (name, path, h, w, batch): the native size and one the model was not made for
    return [("ViT", os.path.join(d, "vit.lmv"), 32, 32, 2), ("ViT", os.path.join(d, "vit.lmv"), 40, 24, 1),
            ("LeMeViT", lemevit, 32, 32, 2), ("LeMeViT", lemevit, 48, 40, 1)] + reduced


def main():
    os.makedirs(CROSS, exist_ok=True)
    d = tmpdir()
    tools_ok = all([have(t) for t in PACKAGES])
    models = make_models(d)
    tiny = os.path.join(d, "tiny.lmv")
    results = {}
    for label, cc, flags, runner in TARGETS:
        if runner and not tools_ok:
            continue
        tag = label.replace(" ", "_")
        core, rm = os.path.join(CROSS, f"test_core_{tag}"), os.path.join(CROSS, f"run_model_{tag}")
        if build(label, cc, flags, os.path.join(ROOT, "tests", "test_core.c"), core) and runner:
            # the whole unit test; on the big-endian target the loader's mutation test too (slow under qemu)
            code, out, err = run([*runner, core] + ([tiny] if "big-endian" in label else []))
            fails = [ln for ln in out.splitlines() if ln.startswith("FAIL")]
            summary = out.strip().splitlines()[-1] if out.strip() else err.strip()[-200:]
            res.check(f"{label}: test_core under {runner[0]}", code == 0 and not fails and "0 failed" in summary,
                      summary + ("; " + "; ".join(fails[:3]) if fails else ""))
            # the kernels' accuracy on this target, as test_core measured it
            for ln in out.splitlines():
                if ln.startswith("PASS ") and any(w in ln for w in ("gemm matches", "gelu matches", "softmax matches")):
                    print(f"   {label}: {ln[5:]}", flush=True)
        if not build(label, cc, flags, os.path.join(ROOT, "tests", "run_model.c"), rm):
            continue
        for name, path, h, w, batch in models:
            code, out, err = run([*runner, rm, path, str(h), str(w), str(batch)] + (["int8"] if "int8-compute" in name else []))
            if not res.check(f"{label}: {name} {h}x{w} runs", code == 0, err.strip()[-300:]):
                continue
            results[(label, name, h, w)] = parse(out)
    # the SIMD path each build took: NEON must really be the one tested on AArch64
    for (label, name, h, w), (simd, _, _) in results.items():
        if label == "aarch64 NEON" and name == "ViT" and h == 32:
            res.check("aarch64 build uses the NEON kernels", simd == "neon", f"compiled path: {simd}")
        if label == "aarch64 NEON + dotprod" and name == "ViT" and h == 32:
            res.check("aarch64 dotprod build uses the sdot kernel", simd == "neon+sdot", f"compiled path: {simd}")
        if label.endswith("portable") and name == "ViT" and h == 32:
            res.check(f"{label} build uses the portable kernels", simd == "none", f"compiled path: {simd}")
    for label, _, _, _ in TARGETS[1:]:
        for name, path, h, w, batch in models:
            got, want = results.get((label, name, h, w)), results.get(("x86-64", name, h, w))
            if not got or not want:
                continue
            ok = True
            desc = []
            for what, a, b in (("logits", got[1], want[1]), ("features", got[2], want[2])):
                if a.shape != b.shape or not a.size:
                    ok = False
                    desc.append(f"{what}: shapes {a.shape} vs {b.shape}")
                    continue
                diff, scale = float(np.max(np.abs(a - b))), float(np.max(np.abs(b)))
                ok &= diff <= (1e-2 if "int8-compute" in name else 1e-4) * max(1.0, scale)
                desc.append(f"{what} max diff {diff:.1e} (scale {scale:.1f})")
            if name and got[1].size and want[1].size:
                same = bool(np.all(got[1].reshape(batch, -1).argmax(1) == want[1].reshape(batch, -1).argmax(1)))
                ok &= same
                desc.append("top-1 same" if same else "top-1 DIFFERENT")
            res.check(f"{label} equals x86-64 AVX2: {name} {h}x{w} batch {batch}", ok, ", ".join(desc))
    res.finish()


main()
