"""The loader against damaged files, and the lmv tool's error handling. A small real model is
converted, then tests/test_core.c mutates it in memory (plain and AddressSanitizer+UBSan builds)."""
import os
import resource
import struct
import subprocess
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import BUILD, LMV, ROOT, Results, convert, patch_lmv_header as patch, run, tmpdir  # noqa: E402
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
from PIL import Image  # noqa: E402
np.save(x, np.zeros((1, 3, 16, 16), dtype="<f8"))
code, out, err = run([LMV, "run", model, x, os.path.join(d, "y.npy")])
res.check("lmv run refuses float64 input with advice", code == 1 and "float32" in err, err.strip())
np.save(x, np.zeros((1, 1, 16, 16), dtype="<f4"))
code, out, err = run([LMV, "run", model, x, os.path.join(d, "y.npy")])
res.check("lmv run refuses wrong channel count", code == 1 and "(N, 3, H, W)" in err, err.strip())
np.save(x, np.zeros((1, 3, 4, 4), dtype="<f4"))
code, out, err = run([LMV, "run", model, x, os.path.join(d, "y.npy")])
res.check("lmv run refuses an input smaller than a patch", code == 1 and "smaller than one" in err, err.strip())

# --- files that ask for nonsense or for more than a session can run: refused when the model opens


def rewrite(src, dst, extra_meta=(), extra_tensors=()):
    """src's meta and tensors (types kept) plus more, written with the project's own writer."""
    f = lmvfile.read(src)
    meta = [(k, lmvfile.Typed(f.meta_types[k], v if isinstance(v, list) or f.meta_types[k] > 2 else [v]))
            for k, v in f.meta.items() if k not in dict(extra_meta)]
    tensors = [(n, t.shape, f.tensor(n), t.dtype_name) for n, t in f.tensors.items()]
    lmvfile.write(dst, meta + list(extra_meta), tensors + list(extra_tensors))


def lmv_info(path, limit_as=None, timeout=60, tool=LMV):
    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (limit_as, limit_as))
    try:
        p = subprocess.run([tool, "info", path], capture_output=True, text=True, timeout=timeout,
                           preexec_fn=cap if limit_as else None)
    except subprocess.TimeoutExpired:
        return -1, "", f"timed out after {timeout} s"
    return p.returncode, p.stdout, p.stderr.strip()


# pre.crop: inside 1..32768 but more tokens than a ViT with 8-pixel patches can attend over
# (4096 x 4096 patches); classify would allocate a 12 GB input before failing. Refused at open.
# The address space is capped at 1 GB, so a big allocation would fail differently.
base = os.path.join(d, "pre.lmv")
rewrite(model, base, [("pre.crop", lmvfile.Typed(lmvfile.T_INT32, [24, 24])),
                      ("pre.interp", "bicubic"),
                      ("pre.std", lmvfile.Typed(lmvfile.T_FLOAT32, [0.25, 0.375, 0.75]))])
code, out, err = lmv_info(base)
res.check("a rewritten model with explicit pre.* opens", code == 0, err)
big = os.path.join(d, "bigcrop.lmv")
patch(base, big, struct.pack("<ii", 24, 24), struct.pack("<ii", 32768, 32768))
ls_as = 1 << 30 if not os.environ.get("LMV_SANITIZE") else None  # ASan reserves more address space than that
code, out, err = lmv_info(big, ls_as)
res.check("pre.crop 32768 x 32768 (beyond what the model can run) is refused at open, before allocating",
          code == 1 and "pre.crop 32768 x 32768" in err and "cannot run" in err, err)
img = os.path.join(ROOT, "examples", "images", "cat_32x32.jpg")
classify = os.path.join(os.path.dirname(LMV), "classify")
if os.path.exists(classify):
    def cap1g():
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
    p = subprocess.run([classify, big, img], capture_output=True, text=True, timeout=60,
                       preexec_fn=cap1g if ls_as else None)
    res.check("classify refuses the pre.crop 32768 file at open (not out of memory, not 'outside the plan')",
              p.returncode == 1 and "pre.crop" in p.stderr and "memory" not in p.stderr, p.stderr.strip())
    # a crop the model can run but the default session (native size) was not planned for:
    # refused before the image is decoded or an input tensor allocated
    mid = os.path.join(d, "midcrop.lmv")
    patch(base, mid, struct.pack("<ii", 24, 24), struct.pack("<ii", 4096, 4096))
    p = subprocess.run([classify, mid, img], capture_output=True, text=True, timeout=60,
                       preexec_fn=cap1g if ls_as else None)
    res.check("classify: crop 4096 x 4096 outside the default session's plan is refused before allocating",
              p.returncode == 1 and "outside this session's plan" in p.stderr and "crop 4096x4096" in p.stderr,
              p.stderr.strip())
for what, old, new, want in [
        ("pre.interp 'bicubix' (unknown)", b"bicubic\0", b"bicubix\0", "pre.interp 'bicubix'"),
        ("pre.std 1e-45 (denormal)", struct.pack("<f", 0.375), struct.pack("<f", 1e-45), "pre.std[1]"),
        ("pre.std infinity", struct.pack("<f", 0.375), struct.pack("<f", float("inf")), "pre.std[1]"),
        ("pre.std NaN", struct.pack("<f", 0.375), struct.pack("<f", float("nan")), "pre.std[1]")]:
    bad = os.path.join(d, "badpre.lmv")
    patch(base, bad, old, new)
    code, out, err = lmv_info(bad)
    res.check(f"{what} is refused at open", code == 1 and want in err, err)

# the AddressSanitizer build where there is one: a read after the index is freed is caught
asan_lmv = os.path.join(BUILD, "asan", "lmv")
asan_lmv = asan_lmv if os.path.exists(asan_lmv) else LMV

# a meta key given twice is named in the message (the key is read before the index is given back)
dupkey = os.path.join(d, "dupkey.lmv")
# (the key with its entry header: length, type, count; convert.assumed may name pre.mean too)
head = struct.pack("<HBBI", 8, lmvfile.T_FLOAT32, 0, 3)
patch(base, dupkey, head + b"pre.mean", head + b"in_chans")
code, out, err = lmv_info(dupkey, tool=asan_lmv)
res.check("a meta key given twice is refused, naming it", code == 1 and "meta key 'in_chans' appears twice" in err, err)

# 65,536 tensors (the limit): the uniqueness checks are O(n log n), so the file is read in well under
# a second even in the AddressSanitizer build used here (the former pairwise checks took about a
# minute there, past the 30 s allowed), to be refused only for its extra tensors, which the graph
# does not read; a duplicated name or overlapping data is still found first.
many = os.path.join(d, "many.lmv")
n_have = len(lmvfile.read(model).tensors)
zero = np.zeros(1, dtype="<f4").tobytes()
rewrite(model, many, [], [(f"extra.{i:05d}", (1,), zero, "f32") for i in range(65536 - n_have)])
code, out, err = lmv_info(many, timeout=30, tool=asan_lmv)
res.check("a file with 65536 tensors is read, then refused for the first tensor the graph does not read",
          code == 1 and "'extra.00000' is not read" in err, err)
last = f"extra.{65536 - n_have - 1:05d}".encode()
dup = os.path.join(d, "many_dup.lmv")
patch(many, dup, last + b"\0", b"extra.00000\0")
code, out, err = lmv_info(dup, timeout=30, tool=asan_lmv)
res.check("65536 tensors, the last named like another: refused", code == 1 and "appears twice" in err, err)
ovl = os.path.join(d, "many_overlap.lmv")
f = lmvfile.read(many)
t_last, t_first = f.tensors[last.decode()], f.tensors["extra.00000"]
entry = struct.pack("<HBBQQ", len(last), 0, 1, t_last.offset, 4)
patch(many, ovl, entry, struct.pack("<HBBQQ", len(last), 0, 1, t_first.offset, 4))
code, out, err = lmv_info(ovl, timeout=30, tool=asan_lmv)
res.check("65536 tensors, the last on another's data: refused", code == 1 and "overlap" in err, err)

# an .npy header that gives 'shape' twice: numpy keeps the last, so any choice here would differ
# from some reader; refused
dict_ = b"{'descr': '<f4', 'fortran_order': False, 'shape': (1, 3, 16, 16), 'shape': (1, 3, 16, 8), }"
head = dict_ + b" " * ((64 - (10 + len(dict_) + 1) % 64) % 64) + b"\n"
x = os.path.join(d, "dupshape.npy")
open(x, "wb").write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(head)) + head + bytes(4 * 3 * 16 * 16))
numpy_shape = np.load(x).shape
code, out, err = run([LMV, "run", model, x, os.path.join(d, "y.npy")])
res.check(f".npy with 'shape' twice (numpy reads {numpy_shape}): refused", code == 1 and "twice" in err, err.strip())

# --- every tensor accounted for: a file holding a tensor its family's graph does not read is
# refused at open with LMV_ERR_FORMAT naming it (a leftover tensor means an option the graph would
# silently skip). One small model per family, converted, then one stray tensor added.


def stray_case(family, sd, stray, *conv_opts):
    src, lmv = os.path.join(d, f"{family}_stray.pth"), os.path.join(d, f"{family}.lmv")
    torch.save(sd, src)
    convert(src, lmv, "--labels", "none", *conv_opts)
    code, out, err = lmv_info(lmv)
    res.check(f"{family}: the converted model opens", code == 0, err)
    name, shape = stray
    bad_file = os.path.join(d, f"{family}_stray.lmv")
    n = 1
    for k in shape:
        n *= k
    rewrite(lmv, bad_file, extra_tensors=[(name, list(shape), np.ones(n, dtype="<f4").tobytes())])
    code, out, err = lmv_info(bad_file)
    res.check(f"{family}: a stray tensor '{name}' is refused naming it",
              code == 1 and f"'{name}'" in err and "not read" in err, err)
    return lmv


from models import lemevit_ref, swin_ref  # noqa: E402
stray_case("vit", m.state_dict(), ("blocks.0.attn.q_bias", (8,)), "--num-heads", "2")
sw = swin_ref.build(img_size=32, patch_size=4, embed_dim=16, depths=(1, 1), num_heads=(1, 2), window_size=4,
                    num_classes=3)
stray_case("swin", swin_ref.randomize_(sw, seed=2).state_dict(), ("layers.0.blocks.0.attn.logit_scale", (1, 1, 1)))
lm = lemevit_ref.build(depth=[1, 1], embed_dim=[32, 32], attn_type=["C", "S"], num_classes=3)
lm_file = stray_case("lemevit", lemevit_ref.randomize_(lm, seed=3).state_dict(), ("stages.1.0.gamma3", (1, 1, 32)))
# the layer scale comes in pairs: gamma1 without gamma2 is refused, not half-used
one = os.path.join(d, "lemevit_gamma1.lmv")
rewrite(lm_file, one, extra_tensors=[("stages.1.0.gamma1", [1, 1, 32], np.ones(32, dtype="<f4").tobytes())])
code, out, err = lmv_info(one)
res.check("lemevit: gamma1 without gamma2 is refused", code == 1 and "gamma2" in err, err)
# a ResPostBlock has no layer scale: its ls tensors are strays, never applied
rp = os.path.join(d, "vit_res_post.lmv")
rewrite(model, rp, [("vit.block", "res_post")], [("blocks.0.ls1.gamma", [16], np.ones(16, dtype="<f4").tobytes())])
code, out, err = lmv_info(rp)
res.check("vit.block=res_post with a layer scale tensor: refused naming it",
          code == 1 and "'blocks.0.ls1.gamma'" in err, err)

# the decode guards as flags of the tools
prog = os.path.join(d, "cat_prog.jpg")
Image.open(img).convert("RGB").save(os.path.join(d, "cat.ppm"))
subprocess.run(["cjpeg", "-progressive", "-outfile", prog, os.path.join(d, "cat.ppm")], check=True)
n_scans = open(prog, "rb").read().count(b"\xff\xda")
for flag, value, word in [("--max-pixels", 32 * 32 - 1, "max_pixels"), ("--max-scans", n_scans - 1, "max_scans"),
                          ("--max-memory", 1000, "max_memory")]:
    code, out, err = run([LMV, "decode", prog, os.path.join(d, "x.ppm"), flag, str(value)])
    res.check(f"lmv decode {flag} {value}: refused", code == 1 and word in err, err.strip())
code, out, err = run([LMV, "decode", prog, os.path.join(d, "x.ppm"), "--max-pixels", "1024", "--max-scans", str(n_scans)])
res.check("lmv decode at --max-pixels and --max-scans exactly: decodes", code == 0, err.strip())
if os.path.exists(classify):
    code, out, err = run([classify, model, img, "--max-pixels", "1023"])
    res.check("classify --max-pixels 1023 refuses a 32x32 image", code == 1 and "max_pixels" in err, err.strip())
res.finish()
