"""The loader against damaged files, and the lmv tool's error handling. A small real model is
converted, then tests/test_core.c mutates it in memory (plain and AddressSanitizer+UBSan builds)."""
import os
import struct
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import BUILD, LMV, Results, convert, run, tmpdir  # noqa: E402
from models import timm_vit  # noqa: E402

res = Results()
d = tmpdir()
m = timm_vit.randomize_(timm_vit.VisionTransformer(img_size=16, patch_size=8, embed_dim=16, depth=1, num_heads=2,
                                                   num_classes=3), seed=1).eval()
torch.save(m.state_dict(), os.path.join(d, "tiny.pth"))
model = os.path.join(d, "tiny.lmv")
convert(os.path.join(d, "tiny.pth"), model, "--labels", "none", "--num-heads", "2")

# the same model with its matrices in f16 and int8 (the int8 scales sit in front of the values)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
import lmvfile  # noqa: E402
variants = [("", model)]
for dt in ("f16", "int8"):
    variants.append((dt + " ", os.path.join(d, f"tiny_{dt}.lmv")))
    lmvfile.requantize(model, variants[-1][1], dt)
    n_q = sum(1 for t in lmvfile.read(variants[-1][1]).tensors.values() if t.dtype != lmvfile.DTYPE_F32)
    res.check(f"{dt} variant has reduced-precision tensors", n_q > 0, f"{n_q} tensors")

for build in ("", "asan"):
    exe = os.path.join(BUILD, build, "test_core")
    for tag, path in variants:
        code, out, err = run([exe, path])
        lines = [ln for ln in out.splitlines() if ln.startswith(("PASS", "FAIL")) and "mutation" in ln]
        for ln in lines:
            ok = ln.startswith("PASS")
            res.check(f"{build or 'plain'} {tag}{ln[5:].split(':')[0].split(' (')[0]}", ok,
                      ln.split(":", 1)[-1] if not ok else "")
        res.check(f"{build or 'plain'} {tag}mutation run exits cleanly", code == 0 and lines,
                  (err.strip().splitlines() or ["exit %d" % code])[-1])

# the command-line tool: every failure is one clear line and a non-zero exit
bad = os.path.join(d, "bad.lmv")
with open(bad, "wb") as f:
    f.write(b"not a model at all")
zipf = os.path.join(d, "ckpt.lmv")
with open(zipf, "wb") as f:
    f.write(b"PK\x03\x04" + b"\0" * 200)
data = open(model, "rb").read()
trunc = os.path.join(d, "trunc.lmv")
with open(trunc, "wb") as f:
    f.write(data[: len(data) // 2])
newer = os.path.join(d, "newer.lmv")
with open(newer, "wb") as f:
    f.write(data[:8] + struct.pack("<I", 9) + data[12:])
for name, path, want in (("missing file", os.path.join(d, "nope.lmv"), "cannot open"),
                         ("not a model", bad, "not a .lmv weight file"),
                         ("a checkpoint instead of a model", zipf, "convert it first"),
                         ("truncated model", trunc, "truncated"),
                         ("newer format version", newer, "format version 9")):
    code, out, err = run([LMV, "info", path])
    res.check(f"lmv info: {name}", code != 0 and want in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err,
              err.strip())
code, out, err = run([LMV, "info", model])
res.check("lmv info on a good model", code == 0 and "vit" in out and "parameters" in out, err.strip())
code, out, err = run([LMV, "frobnicate"])
res.check("lmv unknown command", code == 2 and "unknown command" in err, err.strip().splitlines()[0])
code, out, err = run([LMV, "--help"])
res.check("lmv --help", code == 0 and "run MODEL.lmv" in out, "")
x = os.path.join(d, "x.npy")
import numpy as np  # noqa: E402
np.save(x, np.zeros((1, 3, 16, 16), dtype="<f8"))
code, out, err = run([LMV, "run", model, x, os.path.join(d, "y.npy")])
res.check("lmv run refuses float64 input with advice", code == 1 and "float32" in err, err.strip())
np.save(x, np.zeros((1, 1, 16, 16), dtype="<f4"))
code, out, err = run([LMV, "run", model, x, os.path.join(d, "y.npy")])
res.check("lmv run refuses wrong channel count", code == 1 and "(N, 3, H, W)" in err, err.strip())
np.save(x, np.zeros((1, 3, 4, 4), dtype="<f4"))
code, out, err = run([LMV, "run", model, x, os.path.join(d, "y.npy")])
res.check("lmv run refuses an input smaller than a patch", code == 1 and "smaller than one" in err, err.strip())
res.finish()
