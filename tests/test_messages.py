"""Every error message ends, and ends readable, whatever the length of what it quotes: paths, keys,
meta strings and labels far longer than the 256-byte lmv_error.message. (A message longer than its
buffer used to stop the formatter advancing: `lmv info` on a missing file with a long path spun for
ever.) Each run has a time limit; a hang fails the check instead of hanging the suite."""
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import BIN, LMV, ROOT, Results, patch_lmv_header, tmpdir  # noqa: E402

sys.path.insert(0, os.path.join(ROOT, "tools"))
import lmvfile  # noqa: E402

res = Results()
CLASSIFY = os.path.join(BIN, "classify")
CORPUS = os.path.join(ROOT, "tests", "fuzz", "corpus_lmv")
CAT = os.path.join(ROOT, "examples", "images", "cat_32x32.jpg")
MODEL = os.path.join(ROOT, "examples", "lemevit_cifar10.lmv")
d = tmpdir()


def ends(name, args, want_code=None, must_say=None):
    """Run args with a time limit; the command must end, print one line on stderr (when it fails),
    and that line must not be cut in the middle of the sentence's own words."""
    try:
        p = subprocess.run(args, capture_output=True, text=True, timeout=20, errors="replace")
    except subprocess.TimeoutExpired:
        return res.check(name, False, "did not end within 20 s")
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    ok = p.returncode != 0 if want_code is None else p.returncode == want_code
    why = f"exit {p.returncode}, stderr {p.stderr.strip()[-300:]!r}"
    if ok and p.returncode != 0:
        ok = len(lines) == 1 and "Sanitizer" not in p.stderr
    if ok and must_say:
        ok = must_say in p.stderr
        why += f"; expected {must_say!r} in it"
    return res.check(name, ok, why if not ok else f"exit {p.returncode}, {len(p.stderr.strip())} characters")


# long paths: the missing-file message quotes the path, then says what went wrong
long_dir = os.path.join(d, "d" * 200)
os.makedirs(long_dir)
missing = os.path.join(long_dir, "m" * 240 + ".lmv")
missing_jpg = os.path.join(long_dir, "p" * 240 + ".jpg")
ends("lmv info on a missing file with a 450-character path", [LMV, "info", missing], must_say="cannot open")
ends("lmv run on a missing file with a long path", [LMV, "run", missing, missing + ".npy", os.path.join(d, "o.npy")],
     must_say="cannot open")
ends("lmv decode on a missing JPEG with a long path", [LMV, "decode", missing_jpg, os.path.join(d, "x.ppm")],
     must_say="cannot open")
ends("lmv embed on a missing file with a long path", [LMV, "embed", missing, os.path.join(d, "x.c")], must_say="cannot open")
ends("classify with a missing model at a long path", [CLASSIFY, missing, CAT], must_say="cannot open")
ends("classify on a missing picture at a long path", [CLASSIFY, MODEL, missing_jpg], must_say="cannot open")
# the middle of a long quoted argument gives way, the sentence around it stays whole
p = subprocess.run([LMV, "info", missing], capture_output=True, text=True, timeout=20)
msg = p.stderr.strip()
msg = msg[msg.find("cannot open"):]
res.check("a long path is shortened in the middle, keeping both ends", "..." in msg and ".lmv'" in msg
          and len(msg) < 256, msg[-120:])


def rewrite(src, dst, change):
    """Copy a .lmv with meta entries changed (change: dict key -> new value)."""
    f = lmvfile.read(src)
    meta = []
    for k, v in f.meta.items():
        if k in change:
            v = change[k]
        elif f.meta_types[k] in (lmvfile.T_INT32, lmvfile.T_FLOAT32):
            v = lmvfile.Typed(f.meta_types[k], v)
        meta.append((k, v))
    tensors = [(n, f.shape(n), f.tensor(n), f.dtype(n)) for n in f.tensors]
    lmvfile.write(dst, meta, tensors)
    return dst


LONG = "x" * 3000
cases = [("vit_tiny.lmv", "arch"), ("vit_tiny.lmv", "vit.pool"), ("vit_tiny.lmv", "vit.pos_interp"), ("vit_tiny.lmv", "pre.interp"),
         ("swin_tiny.lmv", "swin.pad_mode"), ("swin_tiny.lmv", "swin.shift_rule")]
for src, key in cases:
    try:
        fn = rewrite(os.path.join(CORPUS, src), os.path.join(d, f"long_{key}.lmv"), {key: LONG})
    except Exception as e:  # noqa: BLE001
        res.check(f"write a .lmv whose {key} is 3,000 characters", False, repr(e))
        continue
    ends(f"lmv info on a .lmv whose {key} is 3,000 characters", [LMV, "info", fn], must_say=key)
    ends(f"lmv embed on a .lmv whose {key} is 3,000 characters", [LMV, "embed", fn, os.path.join(d, "e.c")])
    ends(f"classify with a .lmv whose {key} is 3,000 characters", [CLASSIFY, fn, CAT])

# the longest tensor name (255 characters, the most the format holds) in place of a tensor the
# model needs: refused for the missing tensor, named whole
f = lmvfile.read(os.path.join(CORPUS, "vit_tiny.lmv"))
meta = [(k, v if f.meta_types[k] in (lmvfile.T_STRING, lmvfile.T_STRLIST) else lmvfile.Typed(f.meta_types[k], v))
        for k, v in f.meta.items()]
names = list(f.tensors)
tensors = [(n, f.shape(n), f.tensor(n), f.dtype(n)) for n in names]
long_name = "blocks.0." + "n" * 239 + ".weight"
fn = os.path.join(d, "long_tensor_name.lmv")
lmvfile.write(fn, meta, [(long_name, *t[1:]) if t[0] == names[0] else t for t in tensors])
for label, args in [("lmv info on", [LMV, "info", fn]), ("classify with", [CLASSIFY, fn, CAT])]:
    ends(f"{label} a .lmv with a {len(long_name)}-character tensor name, in place of {names[0]}", args,
         must_say=f"tensor '{names[0]}' is missing")

# the longest meta key (255 characters), one the library does not know: the model opens, and
# lmv info lists it whole with its value, as every config entry
key = "k" * 255
fn = os.path.join(d, "long_meta_key.lmv")
lmvfile.write(fn, meta + [(key, 1)], tensors)
try:
    p = subprocess.run([LMV, "info", fn], capture_output=True, text=True, timeout=20)
    res.check(f"lmv info on a .lmv with an unknown {len(key)}-character meta key lists it whole",
              p.returncode == 0 and not p.stderr.strip() and f"  {key} 1" in p.stdout.splitlines(),
              f"exit {p.returncode}, stderr {p.stderr.strip()[-200:]!r}")
except subprocess.TimeoutExpired:
    res.check(f"lmv info on a .lmv with an unknown {len(key)}-character meta key lists it whole", False,
              "did not end within 20 s")
# ... and given twice, it is quoted in the refusal (the one message that quotes a key of the file)
twin = "k" * 254 + "j"
lmvfile.write(os.path.join(d, "two_keys.lmv"), meta + [(key, 1), (twin, 2)], tensors)
fn = os.path.join(d, "dup_meta_key.lmv")
patch_lmv_header(os.path.join(d, "two_keys.lmv"), fn, twin.encode(), key.encode())
for label, args in [("lmv info on", [LMV, "info", fn]), ("classify with", [CLASSIFY, fn, CAT])]:
    ends(f"{label} a .lmv whose {len(key)}-character meta key appears twice", args, must_say="appears twice")

# a long label is data, not an error: it prints whole
labels = ["l" * 2000 + str(i) for i in range(10)]
fn = rewrite(MODEL, os.path.join(d, "long_labels.lmv"), {"labels": labels})
p = subprocess.run([CLASSIFY, fn, CAT, "--top", "1"], capture_output=True, text=True, timeout=60)
res.check("classify prints a 2,000-character label whole", p.returncode == 0 and "l" * 2000 in p.stdout,
          f"exit {p.returncode}: {p.stderr.strip()[-200:]}")
res.finish()
