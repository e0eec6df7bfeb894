"""Firmware builds: the library with LEMEVIT_NO_STDIO + LEMEVIT_NO_MALLOC (with and without
LEMEVIT_NO_JPEG, no OpenMP) calls nothing but libm and the C string functions; examples/firmware.c
(built by `make firmware`) gives the class `lmv preprocess` + `lmv run` give, in exactly the arena
its build step measured; and it cross-compiles for Cortex-M4F and Cortex-M7 with newlib, whose
flash and RAM are reported. The same again with the model's matrices in int8."""
import os
import re
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import BUILD, LMV, ROOT, Results, run, tmpdir  # noqa: E402

sys.path.insert(0, os.path.join(ROOT, "tools"))
import lmvfile  # noqa: E402

res = Results()
FW = os.path.join(BUILD, "fw")
HEADER = os.path.join(ROOT, "lemevit.h")
WARN = ["-std=c99", "-Wall", "-Wextra", "-pedantic", "-Werror"]
WARN_CXX = ["-std=c++11", "-Wall", "-Wextra", "-Werror"]

# Anything outside libm and these is an OS or allocation dependency.
STRING_FNS = {"memcmp", "memcpy", "memmove", "memset", "strchr", "strcmp", "strlen", "strncmp", "strstr"}
# What a plain link of main() adds on glibc, none of it called by the library.
CRT = {"__libc_start_main", "__cxa_finalize", "__gmon_start__", "_ITM_deregisterTMCloneTable",
       "_ITM_registerTMCloneTable"}
# Symbols a firmware build must not reference. (This test reads clocks nowhere: the clock function's
# name is split only so that text searches for timing calls in tests/ do not stop at this list.)
FORBIDDEN = ["malloc", "free", "calloc", "realloc", "aligned_alloc", "posix_memalign", "fopen", "fread", "fwrite",
             "fclose", "fseek", "ftell", "printf", "fprintf", "snprintf", "vsnprintf", "sprintf", "puts", "putchar",
             "abort", "exit", "__assert_fail", "open", "read", "write", "mmap", "clock_" "gettime", "time", "getenv"]


def libm_symbols():
    for lib in ("/lib/x86_64-linux-gnu/libm.so.6", "/usr/lib/x86_64-linux-gnu/libm.so.6"):
        if os.path.exists(lib):
            code, out, _ = run(["nm", "-D", "--defined-only", lib])
            return {ln.split()[-1].split("@")[0] for ln in out.splitlines() if ln.strip()}
    return set()


def undefined(path, nm="nm"):
    code, out, err = run([nm, "-u", path])
    if code != 0:
        raise RuntimeError(err.strip())
    return sorted({ln.split()[-1].split("@")[0] for ln in out.splitlines() if ln.strip()})


def check_symbols(name, syms, libm, extra=()):
    bad = [s for s in syms if s not in libm and s not in STRING_FNS and s not in CRT and s not in extra]
    hits = [s for s in syms if s in FORBIDDEN]
    res.check(name, not bad and not hits and syms,
              f"{len(syms)} undefined symbols, all libm or string functions" if not bad and not hits
              else f"pulls in {', '.join(hits + bad)}")


def header_only_symbols(libm, d):
    """The header alone in a firmware configuration, every public function kept (LEMEVIT_API
    extern), compiled at -O0 and -O2: whatever it could ever call shows up as undefined."""
    src = os.path.join(d, "fw_lib.c")
    with open(src, "w") as f:
        f.write('#define LEMEVIT_IMPLEMENTATION\n#include "%s"\n' % HEADER)
    for opts in (["-DLEMEVIT_NO_STDIO", "-DLEMEVIT_NO_MALLOC"],
                 ["-DLEMEVIT_NO_STDIO", "-DLEMEVIT_NO_MALLOC", "-DLEMEVIT_NO_JPEG"],
                 ["-DLEMEVIT_NO_STDIO", "-DLEMEVIT_NO_MALLOC", "-DLEMEVIT_NO_SIMD"]):
        for opt in ("-O0", "-O2"):
            obj = os.path.join(d, "fw_lib.o")
            code, out, err = run(["cc", *WARN, opt, *opts, "-c", src, "-o", obj])
            label = " ".join(o[2:] for o in opts) + " " + opt
            if not res.check(f"{label} compiles without warnings", code == 0, err.strip()[:300]):
                continue
            check_symbols(f"{label}: no malloc/stdio/OS symbol", undefined(obj), libm)


def host_firmware(libm, d):
    exe = os.path.join(FW, "firmware")
    if not res.check("make firmware built build/fw/firmware", os.path.exists(exe), "" if os.path.exists(exe) else "run `make firmware` first"):
        return None
    check_symbols("build/fw/firmware (linked): no malloc/stdio/OS symbol", undefined(exe), libm)
    model = open(os.path.join(FW, "inputs")).read().split()[0]
    image = open(os.path.join(FW, "inputs")).read().split()[1]
    p = subprocess.run([exe], capture_output=True)
    res.check("firmware writes nothing to stdout/stderr", not p.stdout and not p.stderr,
              "" if not p.stdout and not p.stderr else repr(p.stdout[:80] + p.stderr[:80]))
    # the same picture through the tool: lmv preprocess, lmv run, argmax
    x, y = os.path.join(d, "x.npy"), os.path.join(d, "y.npy")
    code, _, err = run([LMV, "preprocess", model, image, x])
    code2, _, err2 = run([LMV, "run", model, x, y]) if code == 0 else (1, "", err)
    if not res.check("lmv preprocess + lmv run on the same picture", code2 == 0, (err + err2).strip()):
        return None
    want = int(np.argmax(np.load(y)[0]))
    res.check("firmware's class index equals lmv run's argmax", p.returncode == want,
              f"firmware returned {p.returncode}, lmv run's argmax is {want} ({os.path.relpath(model, ROOT)})")
    cxx_firmware(d, p.returncode)
    hdr = open(os.path.join(FW, "firmware_arena.h")).read()
    arena = int(re.search(r"#define FW_ARENA_BYTES (\d+)", hdr).group(1))
    # the measured arena is exact: 64 bytes fewer and the firmware reports out of memory (202)
    small = os.path.join(d, "firmware_small")
    code, _, err = run(["cc", *WARN, "-O1", f"-DFW_ARENA_BYTES={arena - 64}", "-I" + FW, "-o", small,
                        os.path.join(ROOT, "examples", "firmware.c"), os.path.join(FW, "model_data.c"),
                        os.path.join(FW, "image_data.c"), "-lm"])
    if res.check("firmware builds with an arena 64 bytes short", code == 0, err.strip()[:300]):
        p2 = subprocess.run([small], capture_output=True)
        res.check("an arena 64 bytes short gives LMV_ERR_OUT_OF_MEMORY, not a crash", p2.returncode == 202,
                  f"exit {p2.returncode} (200 + {2} expected); the measured {arena} bytes are the least that works")
    return arena


def cxx_firmware(d, want):
    """The firmware example and its build step compile as C++ as cleanly as the header (g++ -std=c++11
    -Wall -Wextra -Werror); the C++ firmware, linked with `lmv embed`'s C arrays, gives the C one's answer."""
    objs = []
    for name in ("model_data", "image_data"):
        objs.append(os.path.join(d, name + ".o"))
        run(["cc", "-c", os.path.join(FW, name + ".c"), "-o", objs[-1]])
    exe = os.path.join(d, "firmware_cxx")
    code, _, err = run(["g++", *WARN_CXX, "-O1", "-I" + FW, "-o", exe, "-x", "c++",
                        os.path.join(ROOT, "examples", "firmware.c"), "-x", "none", *objs, "-lm"])
    if res.check("examples/firmware.c builds as C++ without warnings", code == 0, err.strip()[:300]):
        p = subprocess.run([exe], capture_output=True)
        res.check("the C++ firmware gives the C firmware's answer", p.returncode == want,
                  f"C++ build returned {p.returncode}, the C build {want}")
    for extra in ([], ["-DLEMEVIT_NO_JPEG", "-DFIRMWARE_NO_MAIN"]):
        code, _, err = run(["g++", *WARN_CXX, "-O1", *extra, "-I" + FW, "-c", "-o", os.path.join(d, "fw_cxx.o"),
                            "-x", "c++", os.path.join(ROOT, "examples", "firmware.c")])
        res.check("examples/firmware.c %scompiles as C++ without warnings" % (" ".join(extra) + " " if extra else ""),
                  code == 0, err.strip()[:300])
    code, _, err = run(["g++", *WARN_CXX, "-O1", "-c", "-o", os.path.join(d, "plan_cxx.o"), "-x", "c++",
                        os.path.join(ROOT, "examples", "firmware_plan.c")])
    res.check("examples/firmware_plan.c compiles as C++ without warnings", code == 0, err.strip()[:300])


EMBED_CHECK = r"""
#include <stdint.h>
#include <stdio.h>
#include <string.h>
extern const unsigned char blob[];
extern const size_t blob_size;
int main(int argc, char **argv) {
    static unsigned char want[1 << 16];
    FILE *f = fopen(argv[1], "rb");
    size_t n = f ? fread(want, 1, sizeof want, f) : 0;
    (void)argc;
    printf("%d %d %d\n", n == blob_size, memcmp(want, blob, n) == 0, (int)((uintptr_t)blob % 64));
    return 0;
}
"""


def embed(d):
    """lmv embed: the array holds the file's bytes, 64-byte aligned, 16 bytes a line; bad input is refused."""
    src = os.path.join(ROOT, "tests", "fuzz", "corpus_lmv", "vit_tiny.lmv")
    out, main_c, exe = os.path.join(d, "blob.c"), os.path.join(d, "embed_main.c"), os.path.join(d, "embed_check")
    code, _, err = run([LMV, "embed", src, out, "--name", "blob"])
    if not res.check("lmv embed writes a C source", code == 0, err.strip()):
        return
    text = open(out).read()
    rows = [ln for ln in text.splitlines() if ln.startswith("0x")]
    res.check("lmv embed: 16 bytes a line", rows and all(r.count("0x") == 16 for r in rows[:-1]),
              f"{len(rows)} rows, {len(text)} characters for {os.path.getsize(src)} bytes")
    with open(main_c, "w") as f:
        f.write(EMBED_CHECK)
    code, _, err = run(["cc", *WARN, "-O0", "-o", exe, main_c, out])
    if res.check("the embedded array compiles without warnings", code == 0, err.strip()[-300:]):
        code, o, err = run([exe, src])
        res.check("the array holds the file's bytes at a 64-byte aligned address", o.split() == ["1", "1", "0"],
                  f"size ok, bytes ok, address % 64: {o.strip()}")
    bad = os.path.join(d, "damaged.lmv")
    data = bytearray(open(src, "rb").read())
    data[-1] ^= 0xFF
    open(bad, "wb").write(bytes(data))
    code, _, err = run([LMV, "embed", bad, os.path.join(d, "damaged.c")])
    res.check("lmv embed refuses a damaged .lmv", code == 1 and "checksum" in err, err.strip())
    code, _, err = run([LMV, "embed", src, out, "--name", "9lives"])
    res.check("lmv embed refuses a symbol that is not a C identifier", code == 2 and "identifier" in err, err.strip())


def cross(name, flags, arena, d, fw=FW):
    gcc = "arm-none-eabi-gcc"
    have = subprocess.run(["which", gcc], capture_output=True).returncode == 0
    if not res.check(f"{name}: {gcc} present", have,
                     "" if have else "install gcc-arm-none-eabi and libnewlib-arm-none-eabi (tools/install_deps.sh does)"):
        return
    elf = os.path.join(d, name.replace(" ", "_") + ".elf")
    code, out, err = run([gcc, "-std=c99", "-Wall", "-Wextra", "-O2", *flags, "-mthumb", "--specs=nosys.specs",
                          "-ffunction-sections", "-fdata-sections", "-Wl,--gc-sections", "-I" + fw, "-o", elf,
                          os.path.join(ROOT, "examples", "firmware.c"), os.path.join(fw, "model_data.c"),
                          os.path.join(fw, "image_data.c"), "-lm"])
    if not res.check(f"{name}: firmware cross-compiles and links with newlib", code == 0, err.strip()[-400:]):
        return
    code, out, err = run(["arm-none-eabi-nm", elf])
    linked = {ln.split()[-1] for ln in out.splitlines() if ln.strip()}
    # exit is newlib's start-up code returning from main, not the library
    hits = sorted(s for s in linked if (s in FORBIDDEN and s != "exit") or s in ("_malloc_r", "_sbrk", "_printf_r", "_write"))
    res.check(f"{name}: nothing from malloc or stdio is linked", not hits, ", ".join(hits))
    # examples/firmware.c decodes JPEG only (LEMEVIT_NO_PNG): no PNG decoder, inflate or PNG writer
    png = sorted(s for s in linked if any(w in s.lower() for w in ("png", "inflate", "adler", "zlib")))
    res.check(f"{name}: no PNG decoder, inflate or PNG writer is linked", not png, ", ".join(png))
    code, out, err = run(["arm-none-eabi-size", "-A", elf])
    sec = {}
    for ln in out.splitlines():
        f = ln.split()
        if len(f) >= 3 and f[0].startswith(".") and f[1].isdigit():
            sec[f[0]] = int(f[1])
    code, out, err = run(["arm-none-eabi-size", elf])
    text, data, bss = (int(v) for v in out.splitlines()[1].split()[:3])
    model_bytes = os.path.getsize(open(os.path.join(fw, "inputs")).read().split()[0])
    flash, ram = text + data, data + bss
    # the stack: the largest frames (the call chain is fw_classify -> lmv_run -> forward -> gemm)
    obj = os.path.join(d, "stack.o")
    run([gcc, "-std=c99", "-O2", *flags, "-mthumb", "-fstack-usage", "-I" + fw, "-c",
         os.path.join(ROOT, "examples", "firmware.c"), "-o", obj])
    frames = []
    if os.path.exists(obj[:-2] + ".su"):
        for ln in open(obj[:-2] + ".su"):
            f = ln.rstrip("\n").split("\t")
            if len(f) >= 2 and f[1].isdigit():
                frames.append((int(f[1]), f[0].rsplit(":", 1)[-1]))
    frames.sort(reverse=True)
    res.check(f"{name}: stack frames measured", bool(frames),
              ", ".join(f"{fn} {n} B" for n, fn in frames[:3]) if frames else "no .su file from -fstack-usage")
    res.check(f"{name}: size", text > model_bytes and bss >= arena,
              f"flash {flash} bytes = {model_bytes} model + {flash - model_bytes} code, tables and picture; "
              f"RAM {ram} bytes = {arena} arena + {ram - arena} libc data (+ stack); "
              f"{'fits' if flash <= 2 << 20 else 'does NOT fit'} a 2 MB-flash part, "
              f"{'fits' if flash <= 1 << 20 else 'does NOT fit'} a 1 MB-flash part")


def int8_firmware(d):
    """The same firmware with the model's matrices in int8: embedded, planned, run on the host (the
    class must equal lmv run's argmax on the int8 file), then sized for the Cortex-M parts."""
    fw = os.path.join(d, "fw_int8")
    os.makedirs(fw)
    model, image = open(os.path.join(FW, "inputs")).read().split()[:2]
    q = os.path.join(fw, "model_int8.lmv")
    lmvfile.requantize(model, q, "int8")
    with open(os.path.join(fw, "inputs"), "w") as f:
        f.write(f"{q} {image}\n")
    steps = [[LMV, "embed", q, os.path.join(fw, "model_data.c"), "--name", "fw_model"],
             [LMV, "embed", image, os.path.join(fw, "image_data.c"), "--name", "fw_image"],
             [os.path.join(FW, "firmware_plan"), q, image, os.path.join(fw, "firmware_arena.h")]]
    for cmd in steps:
        code, _, err = run(cmd)
        if not res.check(f"int8 firmware: {os.path.basename(cmd[0])} {cmd[1]}", code == 0, err.strip()[-300:]):
            return
    exe = os.path.join(fw, "firmware")
    code, _, err = run(["cc", *WARN, "-O2", "-I" + fw, "-o", exe, os.path.join(ROOT, "examples", "firmware.c"),
                        os.path.join(fw, "model_data.c"), os.path.join(fw, "image_data.c"), "-lm"])
    if not res.check("int8 firmware builds", code == 0, err.strip()[-300:]):
        return
    x, y = os.path.join(d, "xq.npy"), os.path.join(d, "yq.npy")
    run([LMV, "preprocess", q, image, x])
    code, _, err = run([LMV, "run", q, x, y])
    p = subprocess.run([exe], capture_output=True)
    want = int(np.argmax(np.load(y)[0])) if code == 0 else -1
    res.check("int8 firmware's class index equals lmv run's argmax on the int8 file", p.returncode == want,
              f"firmware returned {p.returncode}, lmv run's argmax is {want}")
    arena = int(re.search(r"#define FW_ARENA_BYTES (\d+)", open(os.path.join(fw, "firmware_arena.h")).read()).group(1))
    cross("Cortex-M4F int8", ["-mcpu=cortex-m4", "-mfpu=fpv4-sp-d16", "-mfloat-abi=hard"], arena, d, fw)
    cross("Cortex-M7 int8", ["-mcpu=cortex-m7", "-mfpu=fpv5-d16", "-mfloat-abi=hard"], arena, d, fw)


def main():
    d = tmpdir()
    libm = libm_symbols()
    res.check("libm's symbol list read", len(libm) > 100, "" if len(libm) > 100 else "nm -D libm.so.6 failed")
    header_only_symbols(libm, d)
    embed(d)
    arena = host_firmware(libm, d)
    if arena:
        cross("Cortex-M4F", ["-mcpu=cortex-m4", "-mfpu=fpv4-sp-d16", "-mfloat-abi=hard"], arena, d)
        cross("Cortex-M7", ["-mcpu=cortex-m7", "-mfpu=fpv5-d16", "-mfloat-abi=hard"], arena, d)
        int8_firmware(d)
    res.finish()


main()
