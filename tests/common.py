"""Shared helpers for the Python tests: result accounting, running the tools, comparing arrays.

Every test script prints one line per check, `PASS name` or `FAIL name: reason`, and ends with
`N passed, N failed`; tests/run_tests.py adds the counts up."""
import atexit
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import zlib

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.join(ROOT, "build")
# LMV_SANITIZE=1 runs the AddressSanitizer + UBSan builds (build/asan/) instead of the optimised ones
BIN = os.path.join(BUILD, "asan") if os.environ.get("LMV_SANITIZE") else BUILD
LMV = os.path.join(BIN, "lmv")
CONVERT = os.environ.get("LMV_CONVERT") or os.path.join(ROOT, "tools", "convert.py")
# test pictures and the CIFAR-10 subset (tests/data/README.md lists them with their licences)
DATA = os.path.join(ROOT, "tests", "data")
IMAGES = os.path.join(DATA, "images")
PHOTOS = os.path.join(IMAGES, "photos")
# LMV_CIFAR10 points at the full CIFAR-10 test set (a folder or a tar, `make test-full CIFAR10=...`);
# without it the 1,000-image subset in tests/data is used
CIFAR10_SUBSET = os.path.join(DATA, "cifar10", "test_1000.tar")


class Results:
    def __init__(self):
        self.passed = 0
        self.failed = 0
        self.skipped = 0

    def check(self, name, ok, reason=""):
        if ok:
            self.passed += 1
            print(f"PASS {name}" + (f" ({reason})" if reason else ""), flush=True)
        else:
            self.failed += 1
            print(f"FAIL {name}: {reason}", flush=True)
        return ok

    def skip(self, name, reason):
        """A check that could not run here (a missing optional tool or data set): named and counted,
        never counted as a pass."""
        self.skipped += 1
        print(f"SKIP {name}: {reason}", flush=True)

    def finish(self):
        tail = f", {self.skipped} skipped" if self.skipped else ""
        print(f"{self.passed} passed, {self.failed} failed{tail}", flush=True)
        sys.exit(1 if self.failed else 0)


def run(args, **kw):
    """Run a command, returning (returncode, stdout, stderr) as text."""
    p = subprocess.run(args, capture_output=True, text=True, **kw)
    return p.returncode, p.stdout, p.stderr


_TMPDIRS = []


def _remove_tmpdirs():
    if os.environ.get("LMV_KEEP_TMP"):
        return
    for d in _TMPDIRS:
        shutil.rmtree(d, ignore_errors=True)


atexit.register(_remove_tmpdirs)


def tmpdir():
    """A fresh directory, removed when the test script exits (LMV_KEEP_TMP=1 keeps it): a full
    run writes several GB of converted checkpoints."""
    d = tempfile.mkdtemp(prefix="lmvtest-")
    _TMPDIRS.append(d)
    return d


def cifar10_source():
    """(path, is_full_set): the full test set named by LMV_CIFAR10, else the bundled subset."""
    full = os.environ.get("LMV_CIFAR10")
    return (full, True) if full else (CIFAR10_SUBSET, False)


def cifar_test_dir(per_class=0):
    """CIFAR-10 test JPEGs in a directory laid out DIR/<class>/*.jpg: the bundled 1,000-image subset,
    or the full set that LMV_CIFAR10 names (a folder or a tar, laid out <class>/ or test/<class>/);
    with per_class, only the first that many images of each class."""
    src, _ = cifar10_source()
    d = tmpdir()
    if os.path.isdir(src):
        if os.path.isdir(os.path.join(src, "test")):
            src = os.path.join(src, "test")
        shutil.copytree(src, os.path.join(d, "test"))
    else:
        with tarfile.open(src) as t:
            t.extractall(d)
    root = os.path.join(d, "test")
    if not os.path.isdir(root):  # a tar of <class>/ folders
        root = d
    if per_class:
        for c in os.listdir(root):
            for name in sorted(os.listdir(os.path.join(root, c)))[per_class:]:
                os.remove(os.path.join(root, c, name))
    return root


def save_npy(path, a):
    np.save(path, np.ascontiguousarray(a, dtype="<f4"))


def convert(src, dst, *opts):
    """tools/convert.py SRC -o DST [opts]; raises with the converter's message on failure."""
    code, out, err = run([sys.executable, CONVERT, src, "-o", dst, *opts])
    if code != 0:
        raise RuntimeError(f"convert failed: {err.strip() or out.strip()}")
    return out


def patch_lmv_header(src, dst, old, new):
    """A copy of the .lmv file src with one byte string of its header (meta or table) replaced by
    another of the same length, and the header CRC made right, so the loader reads the change."""
    data = bytearray(open(src, "rb").read())
    meta_off, meta_size, table_off, table_size = struct.unpack_from("<QQQQ", data, 24)
    data_off = struct.unpack_from("<Q", data, 64)[0]
    i = data.index(old, 0, data_off)
    assert data.count(old, 0, data_off) == 1 and len(old) == len(new)
    data[i:i + len(old)] = new
    crc = zlib.crc32(bytes(data[:80]))
    crc = zlib.crc32(bytes(data[meta_off:meta_off + meta_size]), crc)
    crc = zlib.crc32(bytes(data[table_off:table_off + table_size]), crc) & 0xFFFFFFFF
    struct.pack_into("<I", data, 80, crc)
    open(dst, "wb").write(bytes(data))


def lmv_run(model, x, *opts, trace=False, attention=None):
    """Run build/lmv on a float NCHW array; returns (output, {trace name: array})."""
    d = tmpdir()
    inp, outp, tdir = os.path.join(d, "in.npy"), os.path.join(d, "out.npy"), os.path.join(d, "trace")
    save_npy(inp, x)
    args = [LMV, "run", model, inp, outp, *opts]
    if trace or attention:
        args += ["--trace", tdir]
    if attention:
        args += ["--attention", attention]
    code, out, err = run(args)
    if code != 0:
        raise RuntimeError(f"lmv run failed: {err.strip()}")
    traces = {}
    if (trace or attention) and os.path.isdir(tdir):
        for f in os.listdir(tdir):
            traces[f[:-4]] = np.load(os.path.join(tdir, f))
    return np.load(outp), traces


def max_abs(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return float("inf")
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def logits_close(got, want, atol=1e-4, rtol=1e-5):
    """The parity rule: max abs diff <= atol, or <= rtol times the logit scale (max |logit|);
    and the same top-1 for every image. Returns (ok, description)."""
    d = max_abs(got, want)
    scale = float(np.max(np.abs(want))) if np.size(want) else 0.0
    top_ok = bool(np.all(np.argmax(got, axis=-1) == np.argmax(want, axis=-1)))
    ok = (d <= atol or d <= rtol * scale) and top_ok
    return ok, f"max abs diff {d:.2e}, logit scale {scale:.2f}, top-1 {'same' if top_ok else 'DIFFERENT'}"


def compare_traces(res, prefix, traces, reference, atol_rel=1e-4):
    """Compare C trace tensors with reference activations block by block, so a failure names the
    first block that broke. `reference` maps trace names to arrays of image 0."""
    first_bad = None
    worst = 0.0
    for name, want in reference.items():
        got = traces.get(name)
        if got is None:
            res.check(f"{prefix} trace {name}", False, "the C side did not trace this block")
            return False
        want = np.asarray(want, dtype=np.float64).reshape(got.shape) if np.size(want) == np.size(got) else want
        d = max_abs(got, want)
        scale = max(1.0, float(np.max(np.abs(want))))
        worst = max(worst, d / scale)
        if d > atol_rel * scale and first_bad is None:
            first_bad = (name, d, scale)
    if first_bad:
        return res.check(f"{prefix} per-block", False,
                         f"first divergence at {first_bad[0]}: max abs diff {first_bad[1]:.2e} (scale {first_bad[2]:.1f})")
    return res.check(f"{prefix} per-block", True, f"{len(reference)} blocks, worst relative diff {worst:.1e}")
