"""The public API as a user sees it: tests/test_api.c, written only against what lemevit.h
documents, compiles as C99 (gcc, clang) and as C++ without a warning, and passes its checks in
every build (and under ASan/UBSan): zero-initialised option structs mean the defaults, lmv_classify_* returns the count
with no cap on k, models and sessions have the size-query / caller-memory / allocating trio, fields
have enum types, the version macros match the format tools/lmvfile.py writes, the .npy helper
agrees with numpy, and LEMEVIT_ASSERT is evaluated without a failure.

The model with 100 classes is tests/fuzz/corpus_lmv/vit_tiny.lmv with a new random head and labels,
written by tools/lmvfile.py; its top 80 classes for the bundled picture are compared with numpy's
ordering of the logits `lmv preprocess` + `lmv run` give."""
import os
import shutil
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import LMV, ROOT, Results, run, tmpdir  # noqa: E402

sys.path.insert(0, os.path.join(ROOT, "tools"))
import lmvfile  # noqa: E402

res = Results()
SRC = os.path.join(ROOT, "tests", "test_api.c")
MODEL = os.path.join(ROOT, "tests", "fuzz", "corpus_lmv", "vit_tiny.lmv")
PICTURE = os.path.join(ROOT, "examples", "images", "cat_32x32.jpg")
WARN_C = ["-std=c99", "-Wall", "-Wextra", "-pedantic", "-Werror"]
WARN_CXX = ["-std=c++11", "-Wall", "-Wextra", "-Werror", "-x", "c++"]


def model_100(path):
    """vit_tiny.lmv with a seeded random 100-class head and labels c0..c99."""
    f = lmvfile.read(MODEL)
    rng = np.random.default_rng(7)
    meta = [(k, v) for k, v in f.meta.items() if k not in ("num_classes", "labels")]
    meta.insert(5, ("num_classes", 100))
    meta.append(("labels", ["c%d" % i for i in range(100)]))
    dim = f.shape("head.weight")[1]
    tensors = []
    for name, t in f.tensors.items():
        if name == "head.weight":
            tensors.append((name, (100, dim), rng.standard_normal((100, dim)).astype("<f4")))
        elif name == "head.bias":
            tensors.append((name, (100,), rng.standard_normal(100).astype("<f4")))
        else:
            tensors.append((name, t.shape, np.frombuffer(f.tensor(name), dtype="<f4").copy(), t.dtype_name))
    lmvfile.write(path, meta, tensors)


def check_reference_table():
    """Every function the header declares has its line in the API REFERENCE table at the top, and
    the table names nothing that is not declared."""
    import re
    with open(os.path.join(ROOT, "lemevit.h")) as f:
        text = f.read()
    declared = set(re.findall(r"LEMEVIT_API[^;{(]*?\b(lmv_\w+)\s*\(", text[:text.index("#ifdef LEMEVIT_IMPLEMENTATION")]))
    top = text[text.index("API REFERENCE"):text.index("ONE VOCABULARY")]
    listed = set(re.findall(r"^\s+(lmv_\w+)\(\)", top, re.M))
    res.check("the header declares its public functions", len(declared) > 40, f"{len(declared)} found")
    res.check("every declared function is in the header's API REFERENCE table", not declared - listed,
              ", ".join(sorted(declared - listed)))
    res.check("the API REFERENCE table lists only declared functions", not listed - declared,
              ", ".join(sorted(listed - declared)))


def stray_model(path):
    """vit_tiny.lmv plus one tensor the ViT graph does not read (a BEiT-style separate q bias)."""
    f = lmvfile.read(MODEL)
    meta = [(k, lmvfile.Typed(f.meta_types[k], v)) for k, v in f.meta.items()]
    tensors = [(n, t.shape, f.tensor(n), t.dtype_name) for n, t in f.tensors.items()]
    tensors.append(("blocks.0.attn.q_bias", (8,), np.ones(8, dtype="<f4")))
    lmvfile.write(path, meta, tensors)


def main():
    check_reference_table()
    d = tmpdir()
    m100 = os.path.join(d, "vit_100.lmv")
    model_100(m100)
    stray = os.path.join(d, "vit_stray.lmv")
    stray_model(stray)
    # the reference order of the 100 classes: lmv preprocess + lmv run, sorted by numpy
    x, y = os.path.join(d, "x.npy"), os.path.join(d, "y.npy")
    code, _, err = run([LMV, "preprocess", m100, PICTURE, x])
    code2, _, err2 = run([LMV, "run", m100, x, y]) if code == 0 else (code, "", "")
    if not res.check("lmv preprocess + lmv run on the 100-class model", code2 == 0, (err + err2).strip()):
        return
    want_top = [int(i) for i in np.argsort(-np.load(y)[0], kind="stable")[:80]]
    npy_in = os.path.join(d, "in.npy")
    np.save(npy_in, np.arange(24, dtype="<f4").reshape(2, 3, 4))

    san = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]
    builds = [("gcc C99", ["gcc", *WARN_C]), ("clang C99", ["clang", *WARN_C]), ("g++ C++11", ["g++", *WARN_CXX]),
              ("gcc C99 asan+ubsan", ["gcc", *WARN_C, *san])]
    for label, cc in builds:
        if not shutil.which(cc[0]):
            res.check(f"{label}: compiler present", False, f"{cc[0]} not found")
            continue
        tag = label.replace(" ", "_").replace("+", "p")
        exe = os.path.join(d, "test_api_" + tag)
        code, _, err = run([*cc, "-O1", "-g", "-o", exe, SRC, "-lm"])
        if not res.check(f"{label}: test_api.c compiles without a warning", code == 0, err.strip()[-600:]):
            continue
        npy_out = os.path.join(d, f"out_{tag}.npy")
        code, out, err = run([exe, MODEL, m100, PICTURE, str(lmvfile.VERSION), npy_in, npy_out, stray])
        got_top = []
        for ln in out.splitlines():
            if ln.startswith(("PASS ", "FAIL ")):
                name, _, why = ln[5:].partition(": ") if ln.startswith("FAIL") else (ln[5:], "", "")
                res.check(f"{label}: {name}", ln.startswith("PASS"), why)
            elif ln.startswith("top "):
                got_top.append(int(ln.split()[1]))
        res.check(f"{label}: test_api exits cleanly", code == 0 and out.rstrip().endswith(" 0 failed"),
                  (err.strip() or "".join(out.strip().splitlines()[-1:]))[-600:])
        res.check(f"{label}: the 80 classes lmv_classify_jpeg gives are numpy's top 80, in order", got_top == want_top,
                  f"got {got_top[:8]}... want {want_top[:8]}...")
        try:
            a = np.load(npy_out)
            ok = a.dtype == np.float32 and a.shape == (2, 3) and np.array_equal(a, np.arange(6, dtype=np.float32).reshape(2, 3))
            res.check(f"{label}: numpy reads what lmv_npy_header wrote", ok, f"{a.dtype} {a.shape}")
        except Exception as e:  # noqa: BLE001 - any failure to load is the finding
            res.check(f"{label}: numpy reads what lmv_npy_header wrote", False, str(e))


main()
res.finish()
