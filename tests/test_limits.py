"""tests/test_limits.c under ASan/UBSan: every documented limit (tensors, dimensions, meta entries,
file size, tokens per attention, input side, batch, JPEG pixels, .npy dimensions) gives
LMV_ERR_LIMIT one step past it and something else at it."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import BUILD, ROOT, Results, run  # noqa: E402

res = Results()
exe = os.path.join(BUILD, "asan", "test_limits")
os.makedirs(os.path.dirname(exe), exist_ok=True)
code, out, err = run(["cc", "-std=c99", "-Wall", "-Wextra", "-pedantic", "-O1", "-g", "-fsanitize=address,undefined",
                      "-fno-sanitize-recover=all", "-o", exe, os.path.join(ROOT, "tests", "test_limits.c"), "-lm"])
if res.check("test_limits.c builds with ASan/UBSan", code == 0, err.strip()[-400:]):
    corpus = os.path.join(ROOT, "tests", "fuzz", "corpus_lmv")
    code, out, err = run([exe, os.path.join(corpus, "vit_tiny.lmv"), os.path.join(corpus, "lemevit_tiny.lmv"),
                          os.path.join(ROOT, "examples", "images", "cat_32x32.jpg")])
    for ln in out.splitlines():
        if ln.startswith(("PASS ", "FAIL ")):
            name, _, why = ln[5:].partition(": got ") if ln.startswith("FAIL") else (ln[5:], "", "")
            res.check(name, ln.startswith("PASS"), why)
    res.check("test_limits exits cleanly", code == 0 and "0 failed" in out, err.strip()[-600:])
res.finish()
