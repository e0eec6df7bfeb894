"""Kernel paths chosen at run time (lmv_simd): every path this CPU runs gives the portable path's
logits within float rounding.

  * build/lmv and build/classify once more with plain `-O2` (no -march: the compiler targets no
    AVX2), as a distribution or a language binding would build the header; that build must still
    pick the best path this CPU has (/proc/cpuinfo: avx2+fma, avx512f/bw/dq/vl, +vnni) and say so
    in `lmv info` and `lmv bench`;
  * AVX-512 without VNNI (avx512-novnni, forced on a VNNI CPU): the same bits as avx512 for every
    family and weight type, int8-compute included, and no VNNI instruction run: in the -O2 build the
    VNNI instructions sit only in functions named *_vnni* (objdump), and under gdb (both builds) the
    VNNI tile is never entered on that path (and is entered on avx512, so the check sees it);
  * ViT, Swin and LeMeViT (seeded random weights, the reference modules of tests/models) as f32
    (panels), f32 unpacked, f16 and int8 files, and int8 with --int8-compute: the portable path
    matches PyTorch (the f32 file), and each other path the portable path (parity rule: 1e-4 or
    1e-5 of the logit scale, the same top-1), in the -O2 build and in the Makefile's build
    (int8-compute: activations a rounding apart may quantise a step apart, so there each path is
    held to the int8 error bound of test_quant against PyTorch and the portable path's top-1);
  * LEMEVIT_SIMD / --simd: a name that is not a path, or a path this CPU lacks, is refused with a
    message; classify honours the variable too;
  * the default thread count, which drops to one thread while that is faster (timed per run),
    gives the same bits on every run of a session;
  * tests/test_core.c built by Clang and as C++ (compilers that fuse multiply-adds) passes too."""
import json
import os
import shutil
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import BUILD, LMV, ROOT, Results, convert, logits_close, max_abs, run, save_npy, tmpdir  # noqa: E402

sys.path.insert(0, os.path.join(ROOT, "tools"))
import lmvfile  # noqa: E402
from test_quant import BOUND, families  # noqa: E402  (the same small models and int8 bounds)

torch.set_num_threads(2)
res = Results()
OUT = os.path.join(BUILD, "simd_o2")


def cpu_paths():
    """The kernel paths this CPU runs, from the kernel's view of its flags."""
    flags = set()
    try:
        for ln in open("/proc/cpuinfo"):
            if ln.startswith("flags"):
                flags = set(ln.split(":", 1)[1].split())
                break
    except OSError:
        pass
    paths = ["portable"]
    if {"avx2", "fma", "f16c"} <= flags:
        paths.append("avx2")
        if {"avx512f", "avx512bw", "avx512dq", "avx512vl"} <= flags:
            paths.append("avx512-novnni")
            if "avx512_vnni" in flags:
                paths.append("avx512")
    return paths


def build_o2():
    os.makedirs(OUT, exist_ok=True)
    exes = {}
    for name, src in (("lmv", "tools/lmv.c"), ("classify", "examples/classify.c")):
        exe = os.path.join(OUT, name)
        code, out, err = run(["cc", "-std=c99", "-Wall", "-Wextra", "-pedantic", "-Werror", "-D_POSIX_C_SOURCE=200809L",
                              "-O2", "-fopenmp", "-o", exe, os.path.join(ROOT, src), "-lm"])
        if not res.check(f"{name} builds with plain -O2 (no -march)", code == 0, err.strip()[-400:]):
            return None
        exes[name] = exe
    return exes


def lmv_out(exe, model, inp, simd, *opts):
    d = tmpdir()
    outp = os.path.join(d, "out.npy")
    env = dict(os.environ, LEMEVIT_SIMD=simd)
    code, out, err = run([exe, "run", model, inp, outp, "--threads", "2", *opts], env=env)
    if code != 0:
        raise RuntimeError(f"lmv run ({simd}) failed: {err.strip()}")
    return np.load(outp)


def family_case(name, model, img, opts, builds, paths):
    d = tmpdir()
    ckpt = os.path.join(d, "model.pth")
    torch.save(model.state_dict(), ckpt)
    files = {}
    for dt in ("f32", "f16", "int8"):
        files[dt] = os.path.join(d, f"model_{dt}.lmv")
        convert(ckpt, files[dt], "--labels", "none", "--dtype", dt, *opts)
    files["f32 unpacked"] = os.path.join(d, "model_f32u.lmv")
    lmvfile.requantize(files["f32"], files["f32 unpacked"], "f32", pack=False)
    x = torch.randn(2, 3, img, img, generator=torch.Generator().manual_seed(5))
    inp = os.path.join(d, "in.npy")
    save_npy(inp, x.numpy())
    with torch.no_grad():
        want = model(x).numpy()
    cases = [(k, files[k], ()) for k in ("f32", "f32 unpacked", "f16", "int8")]
    cases.append(("int8-compute", files["int8"], ("--int8-compute",)))
    for label, path, extra in cases:
        base = lmv_out(builds[0][1], path, inp, "portable", *extra)
        outs = {}
        if label == "f32":
            ok, desc = logits_close(base, want)
            res.check(f"{name} f32, portable path: matches PyTorch", ok, desc)
        for bname, exe in builds:
            for p in paths:
                if bname == builds[0][0] and p == "portable":
                    continue
                got = outs[bname, p] = lmv_out(exe, path, inp, p, *extra)
                if label != "int8-compute":
                    ok, desc = logits_close(got, base)
                    res.check(f"{name} {label}, {bname} build, {p}: the portable path's logits", ok, desc)
                    continue
                # int8 x int8: the integer sums are the same on every path given the same activations
                # (test_core), but activations a rounding apart can quantise one step apart, so whole
                # models differ by the int8 noise: held to test_quant's bound against float32 PyTorch
                rel = max_abs(got, want) / float(np.max(np.abs(want)))
                top = bool(np.all(np.argmax(got, 1) == np.argmax(base, 1)))
                res.check(f"{name} int8-compute, {bname} build, {p}: within {BOUND['int8c']:g} of the logit scale of "
                          "float32 PyTorch, the portable path's top-1", rel <= BOUND["int8c"] and top,
                          f"{rel:.1e}, vs portable {max_abs(got, base):.1e}")
        # the same float kernels and the same integer sums: AVX-512 without VNNI is avx512 to the bit
        for bname, _ in builds:
            if {"avx512", "avx512-novnni"} <= set(paths):
                a, b = outs[bname, "avx512-novnni"], outs[bname, "avx512"]
                res.check(f"{name} {label}, {bname} build: avx512-novnni gives avx512's logits bit for bit",
                          a.shape == b.shape and a.tobytes() == b.tobytes(), f"max difference {max_abs(a, b):.1e}")


VNNI_OPS = ("vpdpbusd", "vpdpbusds", "vpdpwssd", "vpdpwssds")


def vnni_functions(exe):
    """{function: number of VNNI instructions in it} over exe's code, by objdump."""
    code, out, err = run(["objdump", "-d", "--no-show-raw-insn", exe])
    if code != 0:
        raise RuntimeError(f"objdump failed: {err.strip()[-300:]}")
    found, fn = {}, "?"
    for ln in out.splitlines():
        if ln.endswith(">:") and "<" in ln:
            fn = ln[ln.index("<") + 1:-2]
        elif any(op in ln.split() for op in VNNI_OPS):
            found[fn] = found.get(fn, 0) + 1
    return found


def vnni_checks(builds, paths):
    """The VNNI instructions are reachable only where the CPU has them: compiled only into the
    functions named *_vnni* (the AVX-512 copy itself targets no VNNI), and on the avx512-novnni path
    the VNNI tile is never entered (a gdb breakpoint on it, which the avx512 path does hit)."""
    if not shutil.which("objdump"):
        res.skip("VNNI instructions only in the *_vnni functions", "objdump not found")
    else:  # the -O2 build only: a build with -march for a VNNI CPU may use VNNI anywhere, rightly
        bname, exe = builds[0]
        found = vnni_functions(exe)
        res.check(f"{bname} build: VNNI instructions only in the *_vnni functions (and there)",
                  found and all("_vnni" in f for f in found), str(found))
    if "avx512-novnni" not in paths or "avx512" not in paths:
        return res.skip("avx512-novnni runs no VNNI tile (gdb)", "this CPU lacks AVX-512 or VNNI")
    if not shutil.which("gdb"):
        return res.skip("avx512-novnni runs no VNNI tile (gdb)", "gdb not found")
    d = tmpdir()
    q8 = os.path.join(d, "q8.lmv")
    lmvfile.requantize(os.path.join(ROOT, "examples", "lemevit_cifar10.lmv"), q8, "int8")
    for bname, exe in builds:
        hits = {}
        for p in ("avx512-novnni", "avx512"):
            code, out, err = run(["gdb", "-q", "-batch", "-nx", "-iex", "set debuginfod enabled off",
                                  "-ex", "break lmv__tile_q8_vnni_avx512", "-ex", "run", "-ex", "info breakpoints",
                                  "--args", exe, "bench", q8, "--int8-compute", "--runs", "1", "--threads", "1"],
                                 env=dict(os.environ, LEMEVIT_SIMD=p), timeout=300)
            hits[p] = ("already hit" in out, f"kernels   {p}" in out, "Breakpoint 1 at" in out)
        res.check(f"{bname} build, gdb: int8-compute on avx512-novnni runs to the end without entering the VNNI "
                  "tile, which avx512 enters", hits["avx512-novnni"] == (False, True, True) and
                  hits["avx512"][0] and hits["avx512"][2], str(hits))


def other_compilers():
    """tests/test_core.c (every kernel path against the portable one) built by Clang and as C++: both
    fuse a * b + c into one rounding where the target has FMA (Clang in C, GCC in C++), which the
    kernel copies must not let change their results (the int8 x int8 GEMM's same bits on every path)."""
    src = os.path.join(ROOT, "tests", "test_core.c")
    for label, cc in (("clang C99", ["clang", "-std=c99", "-D_POSIX_C_SOURCE=200809L"]),
                      ("g++ C++11", ["g++", "-std=c++11", "-x", "c++", "-D_POSIX_C_SOURCE=200809L"])):
        if not shutil.which(cc[0]):
            res.skip(f"test_core built by {label}", f"{cc[0]} not found")
            continue
        exe = os.path.join(OUT, "test_core_" + cc[0].replace("+", "x"))
        code, out, err = run([*cc, "-O2", "-fopenmp", "-o", exe, src, "-lm"])
        if not res.check(f"test_core builds with {label}", code == 0, err.strip()[-400:]):
            continue
        code, out, err = run([exe])
        fails = [ln for ln in out.splitlines() if ln.startswith("FAIL")]
        res.check(f"test_core built by {label}: every kernel check passes (same int8 bits on every path)",
                  code == 0 and not fails and out.rstrip().endswith(" 0 failed"), "; ".join(fails)[:400] or err.strip())


def main():
    paths = cpu_paths()
    print(f"   kernel paths this CPU runs: {', '.join(paths)}")
    exes = build_o2()
    other_compilers()
    if not exes:
        return res.finish()
    best = paths[-1]
    model = os.path.join(ROOT, "examples", "lemevit_cifar10.lmv")
    code, out, err = run([exes["lmv"], "info", model])
    line = next((ln for ln in out.splitlines() if ln.startswith("kernels")), "")
    res.check(f"-O2 build: lmv info names the best path here ({best})", code == 0 and line.split()[1:2] == [best],
              line or err.strip())
    for p in paths:
        code, out, err = run([exes["lmv"], "bench", model, "--runs", "1", "--threads", "1", "--json", "--simd", p])
        got = json.loads(out).get("simd") if code == 0 else err.strip()
        res.check(f"-O2 build: lmv bench --simd {p} runs and reports {p}", got == p, str(got))
    code, out, err = run([exes["lmv"], "bench", model, "--runs", "1", "--threads", "1"])
    res.check(f"-O2 build: lmv bench picks {best} by itself", code == 0 and f"kernels   {best}" in out,
              err.strip() or [ln for ln in out.splitlines() if "kernels" in ln])
    # names that are not paths, and a path this CPU or build lacks
    code, out, err = run([exes["lmv"], "bench", model, "--runs", "1"], env=dict(os.environ, LEMEVIT_SIMD="sse9"))
    res.check("LEMEVIT_SIMD=sse9 is refused, naming the choices", code == 2 and "portable, avx2, avx512" in err, err.strip())
    lacking = "neon" if "avx2" in paths else "avx2"
    code, out, err = run([exes["lmv"], "bench", model, "--runs", "1", "--simd", lacking])
    res.check(f"--simd {lacking} is refused here with the best path named", code != 0 and "does not have" in err
              and best in err, err.strip())
    # classify honours LEMEVIT_SIMD: the same top-5 on every path
    jpg = os.path.join(ROOT, "examples", "images")
    pics = sorted(os.path.join(jpg, f) for f in os.listdir(jpg) if f.endswith(".jpg"))[:2]
    tops = {}
    for p in paths:
        code, out, err = run([exes["classify"], model, *pics, "--json"], env=dict(os.environ, LEMEVIT_SIMD=p))
        tops[p] = [[t["index"] for t in json.loads(ln)["top"]] for ln in out.splitlines()] if code == 0 else err
    res.check("classify: LEMEVIT_SIMD on every path gives the same top-5", all(tops[p] == tops["portable"] for p in paths)
              and len(tops["portable"]) == len(pics), str(tops))
    # the default thread count: the session switches between one thread and all as it times its
    # runs (a busy machine), and every run still gives the same bits
    code, out, err = run([exes["classify"], model, *([pics[0]] * 24), "--json"])
    probs = [json.dumps(json.loads(ln)["top"]) for ln in out.splitlines()] if code == 0 else [err]
    res.check("default threads: 24 runs of one session (one thread and all, as timed) give the same "
              "top-5 and probabilities", len(probs) == 24 and len(set(probs)) == 1, f"{len(set(probs))} distinct")
    code, out, err = run([exes["classify"], model, *pics], env=dict(os.environ, LEMEVIT_SIMD="fast"))
    res.check("classify: LEMEVIT_SIMD=fast is refused", code == 2 and "LEMEVIT_SIMD" in err, err.strip())
    # every family and weight type on every path, in both builds
    builds = [("-O2", exes["lmv"])]
    if os.path.exists(LMV):
        builds.append(("Makefile", LMV))
    vnni_checks(builds, paths)
    for name, m, img, opts in families():
        family_case(name, m, img, opts, builds, paths)
    res.finish()


if __name__ == "__main__":
    main()
