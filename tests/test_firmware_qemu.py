"""The firmware booted on an emulated Cortex-M7 (`make firmware-qemu`: qemu-system-arm -M mps2-an500,
examples/cortex-m/): the hard-float, softfp and int8-compute builds each classify the cat and a
Motion-JPEG frame (a ship, no DHT) from the int8 model in flash, and their top 3 equal the host's
(`lmv preprocess` + `lmv run` on the same file, softmax in numpy) within the six decimals printed;
the top 3 of the float32 model agree too; a fourth build runs the float32 model itself from
the board's 16 MB PSRAM standing in for memory-mapped external flash. Also: nothing from malloc or stdio is linked, the model
sits 64-byte aligned in the flash region and the arena in RAM, no PNG decoder (nor its inflate) is
linked, the hang guard stops a run, and the library builds for the M7 with LEMEVIT_NO_JPEG. A fifth
build, hard-raw (LEMEVIT_NO_JPEG: no decoder linked at all), classifies the same two pictures as raw
32x32 RGB frames in flash, and its top 3 equal the host's on a tensor torchvision makes from the
same bytes. Skipped, by name, without arm-none-eabi-gcc or
qemu-system-arm (tools/install_deps.sh installs both)."""
import os
import re
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import BUILD, ROOT, Results, run, tmpdir  # noqa: E402

res = Results()
FWQ = os.path.join(BUILD, "fwq")
LMV_HOST = os.path.join(BUILD, "lmv")
CM = os.path.join(ROOT, "examples", "cortex-m")
IMAGES = [os.path.join(ROOT, "examples", "images", "cat_32x32.jpg"),
          os.path.join(ROOT, "examples", "images", "ship_32x32_mjpeg.jpg")]
# (build, lmv run options, model): the int8 file in the 4 MB code memory, or the float32 one in the
# 16 MB PSRAM at 0x60000000 that stands in for memory-mapped external flash
BUILDS = [("hard", [], "int8"), ("softfp", [], "int8"), ("hard-int8c", ["--int8-compute"], "int8"),
          ("hard-f32", [], "f32")]
REGIONS = {"int8": (0x0, 0x400000, "flash (0x0-0x3fffff)"), "f32": (0x60000000, 0x61000000, "external flash (0x60000000-)")}
QEMU = ["qemu-system-arm", "-M", "mps2-an500", "-display", "none", "-serial", "null", "-monitor", "none",
        "-semihosting-config", "enable=on,target=native", "-icount", "shift=0", "-kernel"]
# the wall-clock bound on one boot; the firmware's own SysTick guard stops it long before in
# emulated instructions (a run takes about 0.5 billion, the guard is at about 10.7 billion)
TIMEOUT = 300
FORBIDDEN = ["malloc", "free", "calloc", "realloc", "_malloc_r", "_sbrk", "printf", "_printf_r", "puts", "fopen",
             "_write", "exit", "abort"]
# the PNG decoder and its inflate, which no firmware build needs (examples/firmware.c: LEMEVIT_NO_PNG)
PNG_PARTS = ("png", "inflate", "adler", "zlib")
RAW = [os.path.join(FWQ, "cat_32x32.rgb"), os.path.join(FWQ, "ship_32x32.rgb")]


def boot(elf):
    try:
        # qemu writes the semihosting console to its stderr
        p = subprocess.run(QEMU + [elf], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=TIMEOUT)
        return p.returncode, p.stdout, ""
    except subprocess.TimeoutExpired:
        return -1, "", f"no exit within {TIMEOUT} s"


def parse(out):
    """{picture index: ([(class, prob)], instructions)} from the firmware's lines."""
    pics, cur = [], None
    for ln in out.splitlines():
        if ln.startswith("picture "):
            cur = [[], None]
            pics.append(cur)
        elif cur is not None and (m := re.match(r"\s+top\d class (\d+) \S+ prob (\d\.\d{6})$", ln)):
            cur[0].append((int(m.group(1)), float(m.group(2))))
        elif cur is not None and (m := re.match(r"\s+instructions (\d+)", ln)):
            cur[1] = int(m.group(1))
    return pics


def host_top3(model, image, opts, d, lmv=LMV_HOST):
    x, y = os.path.join(d, "x.npy"), os.path.join(d, "y.npy")
    code, _, err = run([LMV_HOST, "preprocess", model, image, x])
    if code == 0:
        code, _, err = run([lmv, "run", model, x, y, *opts])
    if code != 0:
        raise RuntimeError(err.strip())
    z = np.load(y)[0].astype(np.float64)
    p = np.exp(z - z.max())
    p /= p.sum()
    idx = np.argsort(-p, kind="stable")[:3]
    return [(int(i), float(p[i])) for i in idx]


def arm_cc(d, out, *extra):
    args = ["arm-none-eabi-gcc", "-std=c99", "-Wall", "-Wextra", "-pedantic", "-Werror", "-O2", "-mcpu=cortex-m7",
            "-mfpu=fpv5-d16", "-mthumb", "-mfloat-abi=hard", "-ffunction-sections", "-fdata-sections",
            "-nostartfiles", "--specs=nano.specs", "-T", os.path.join(CM, "mps2_an500.ld"), "-Wl,--gc-sections",
            "-I" + FWQ, *extra, "-o", out, os.path.join(CM, "main.c"), os.path.join(CM, "startup.c"),
            *(os.path.join(FWQ, f) for f in ("model_data.c", "image_data.c", "frame_data.c")), "-lm"]
    return run(args)


def symbols(elf):
    code, out, _ = run(["arm-none-eabi-nm", elf])
    return {f[-1]: (int(f[0], 16) if len(f) == 3 else None) for f in (ln.split() for ln in out.splitlines()) if f}


def host_top3_rgb(model, rgb, d):
    """The host's top 3 for raw pixels: torchvision builds the input tensor from the bytes with the
    model's own eval transform (as `lmv info` states it), build/lmv runs it, softmax in numpy."""
    import torch
    from torchvision import transforms
    code, info, err = run([LMV_HOST, "info", model])
    m = re.search(r"preprocess\s+resize (\d+) (\w+), crop (\d+)x(\d+).*mean ([\d. ]+), std ([\d. ]+)", info)
    if code != 0 or not m:
        raise RuntimeError(f"lmv info: {err.strip() or info[-300:]}")
    interp = getattr(transforms.InterpolationMode, m[2].upper())
    t = transforms.Compose([transforms.Resize(int(m[1]), interp), transforms.CenterCrop((int(m[3]), int(m[4]))),
                            transforms.ToTensor(),
                            transforms.Normalize([float(v) for v in m[5].split()], [float(v) for v in m[6].split()])])
    img = Image.frombytes("RGB", (32, 32), rgb)
    x, y = os.path.join(d, "xr.npy"), os.path.join(d, "yr.npy")
    with torch.no_grad():
        np.save(x, t(img).unsqueeze(0).numpy().astype(np.float32))
    code, _, err = run([LMV_HOST, "run", model, x, y])
    if code != 0:
        raise RuntimeError(err.strip())
    z = np.load(y)[0].astype(np.float64)
    p = np.exp(z - z.max())
    p /= p.sum()
    idx = np.argsort(-p, kind="stable")[:3]
    return [(int(i), float(p[i])) for i in idx]


def raw_build(d, model, jpeg_printed):
    """hard-raw: LEMEVIT_NO_JPEG, two raw RGB frames in flash through lmv_image + lmv_classify_image."""
    name = "hard-raw"
    elf = os.path.join(FWQ, f"firmware-{name}.elf")
    if not res.check(f"{name}: make firmware-qemu-build built it", os.path.exists(elf), "" if os.path.exists(elf) else f"no {elf}"):
        return
    for jpg, raw in zip(IMAGES, RAW):
        want = Image.open(jpg).convert("RGB").tobytes()
        got = open(raw, "rb").read() if os.path.exists(raw) else b""
        res.check(f"{name}: {os.path.basename(raw)} holds the pixels Pillow decodes from {os.path.basename(jpg)}",
                  got == want, f"{len(got)} bytes, Pillow's {len(want)}")
    sym = symbols(elf)
    dec = sorted(s for s in sym if any(w in s.lower() for w in ("jpeg", "jpg", "huff", "idct") + PNG_PARTS))
    res.check(f"{name}: no image decoder linked (no JPEG, PNG or inflate symbol)", not dec and "fw_classify_rgb" in sym,
              ", ".join(dec) if dec else "fw_classify_rgb linked, no decoder" if "fw_classify_rgb" in sym else
              "fw_classify_rgb not linked")
    hits = sorted(s for s in sym if s in FORBIDDEN)
    res.check(f"{name}: nothing from malloc or stdio is linked", not hits, ", ".join(hits))
    addr = sym.get("fw_model")
    res.check(f"{name}: the model is in flash 64-byte aligned", addr is not None and addr % 64 == 0 and addr < 0x400000,
              f"fw_model at {addr:#x}" if addr is not None else "fw_model not found")
    sizes = {}
    for e in (name, "hard"):
        code, out, _ = run(["arm-none-eabi-size", os.path.join(FWQ, f"firmware-{e}.elf")])
        text, dat, bss = (int(v) for v in out.splitlines()[1].split()[:3])
        sizes[e] = (text + dat, dat + bss)
    fl, ram = sizes[name]
    res.check(f"{name}: size", fl <= 4 << 20 and ram <= 4 << 20,
              f"flash {fl} B ({sizes['hard'][0] - fl} B less than the hard build with the JPEG decoder, "
              f"though its two frames take 6,144 B against the JPEGs' {sum(os.path.getsize(i) for i in IMAGES)} B), "
              f"RAM {ram} B")
    code, out, err = boot(elf)
    ok = code == 0 and out.rstrip().endswith("done")
    if not res.check(f"{name}: boots on qemu mps2-an500 and exits cleanly", ok,
                     "" if ok else f"exit {code}: {(out + err)[-600:]}"):
        return
    pics = parse(out)
    ok = len(pics) == 2 and all(len(t) == 3 for t, _ in pics)
    if not res.check(f"{name}: two raw frames with a top 3 each", ok, "" if ok else out[-400:]):
        return
    peak = re.search(r"arena peak (\d+)", out)
    for i, (raw, (got, instr)) in enumerate(zip(RAW, pics)):
        pic = os.path.basename(raw)
        want = host_top3_rgb(model, open(raw, "rb").read(), d)
        dp = max(abs(a[1] - b[1]) for a, b in zip(got, want))
        res.check(f"{name} {pic}: top 3 equals the host's on torchvision's tensor of the same bytes",
                  [c for c, _ in got] == [c for c, _ in want] and dp <= 1e-6 + 5e-7,
                  f"{got} vs host {[(c, round(q, 6)) for c, q in want]}, max prob difference {dp:.1e}")
        if jpeg_printed:
            res.check(f"{name} {pic}: the same top 3 as the hard build's JPEG of it (same pixels, decoder or not)",
                      got == jpeg_printed[i][0], f"{got} vs {jpeg_printed[i][0]}")
        res.check(f"{name} {pic}: instructions for one inference counted", instr and instr > 10 ** 6,
                  f"{instr:,} instructions (qemu -icount; not cycles)"
                  f"{', arena peak ' + peak[1] + ' B' if peak else ''}" if instr else "no count printed")


def main():
    missing = [t for t in ("arm-none-eabi-gcc", "qemu-system-arm") if not shutil.which(t)]
    if missing:
        res.skip("firmware on qemu-system-arm (mps2-an500, Cortex-M7)",
                 f"{' and '.join(missing)} not installed (tools/install_deps.sh installs them)")
        res.finish()
    d = tmpdir()

    # the camera frame really is a Motion-JPEG frame: no DHT before its scan, and Pillow decodes it
    data = open(IMAGES[1], "rb").read()
    sos = data.find(b"\xff\xda")
    try:
        Image.open(IMAGES[1]).load()
        pil_ok = True
    except OSError:
        pil_ok = False
    res.check("ship_32x32_mjpeg.jpg has no Huffman tables (DHT) and Pillow decodes it",
              sos > 0 and b"\xff\xc4" not in data[:sos] and pil_ok)

    p = subprocess.run(["make", "-s", "firmware-qemu-build"], cwd=ROOT, capture_output=True, text=True)
    if not res.check("make firmware-qemu-build", p.returncode == 0, "" if p.returncode == 0 else (p.stdout + p.stderr)[-600:]):
        res.finish()
    # The M7 runs the portable kernels. For float32 arithmetic they agree with the host's SIMD ones to
    # float rounding; with --int8-compute the host's AVX512-VNNI kernel can differ from them by more
    # (its activations round differently), so the int8-compute build is held to a portable host build.
    portable = os.path.join(d, "lmv_portable")
    code, _, err = run(["cc", "-std=c99", "-O1", "-DLEMEVIT_NO_SIMD", "-D_POSIX_C_SOURCE=200809L", "-o", portable,
                        os.path.join(ROOT, "tools", "lmv.c"), "-lm"])
    if not res.check("host lmv with the portable kernels (LEMEVIT_NO_SIMD) builds", code == 0, err.strip()[-300:]):
        res.finish()
    model_q = os.path.join(FWQ, "model_int8.lmv")
    model_f = open(os.path.join(BUILD, "fw", "inputs")).read().split()[0]
    printed = {}

    for name, opts, kind in BUILDS:
        elf = os.path.join(FWQ, f"firmware-{name}.elf")
        model = model_q if kind == "int8" else model_f
        lo, hi, where = REGIONS[kind]
        hdr = os.path.join(FWQ, *(["f32"] if kind == "f32" else []), "firmware_arena.h")
        arena = int(re.search(r"#define FW_ARENA_BYTES (\d+)", open(hdr).read())[1])
        sym = symbols(elf)
        hits = sorted(s for s in sym if s in FORBIDDEN)
        res.check(f"{name}: nothing from malloc or stdio is linked", not hits, ", ".join(hits))
        png = sorted(s for s in sym if any(w in s.lower() for w in PNG_PARTS))
        res.check(f"{name}: no PNG decoder or inflate linked", not png, ", ".join(png))
        addr, arena_at = sym.get("fw_model"), sym.get("arena_memory")
        res.check(f"{name}: the model is in {where} 64-byte aligned, the arena in RAM (0x20000000-)",
                  addr is not None and addr % 64 == 0 and lo <= addr < hi and arena_at is not None and
                  0x20000000 <= arena_at < 0x20400000 and arena_at % 64 == 0,
                  f"fw_model at {addr:#x}, arena_memory at {arena_at:#x}" if addr is not None and arena_at else
                  "symbols not found")
        code, out, _ = run(["arm-none-eabi-size", elf])
        text, dat, bss = (int(v) for v in out.splitlines()[1].split()[:3])
        res.check(f"{name}: size", text + dat - (os.path.getsize(model) if kind == "f32" else 0) <= 4 << 20 and
                  dat + bss <= 4 << 20,
                  f"flash {text + dat} B (model {os.path.getsize(model)} B), RAM {dat + bss} B "
                  f"(arena {arena} B) + at least 128 KB stack")

        code, out, err = boot(elf)
        ok = code == 0 and out.rstrip().endswith("done")
        if not res.check(f"{name}: boots on qemu mps2-an500 and exits cleanly", ok,
                         "" if ok else f"exit {code}: {(out + err)[-600:]}"):
            continue
        pics = parse(out)
        printed[name] = pics
        if not res.check(f"{name}: two pictures with a top 3 each", len(pics) == 2 and all(len(t) == 3 for t, _ in pics),
                         "" if len(pics) == 2 else out[-400:]):
            continue
        for image, (got, instr) in zip(IMAGES, pics):
            pic = os.path.basename(image)
            host = portable if opts else LMV_HOST
            want = host_top3(model, image, opts, d, host)
            dp = max(abs(a[1] - b[1]) for a, b in zip(got, want))
            res.check(f"{name} {pic}: top 3 equals the host's on the {kind} file"
                      f"{' ' + opts[0] + ' (portable kernels)' if opts else ''}",
                      [c for c, _ in got] == [c for c, _ in want] and dp <= 1e-6 + 5e-7,
                      f"{got} vs host {[(c, round(q, 6)) for c, q in want]}, max prob difference {dp:.1e}")
            if opts:
                native = host_top3(model, image, opts, d)
                dn = max(abs(a[1] - b[1]) for a, b in zip(got, native))
                res.check(f"{name} {pic}: top 3 classes equal build/lmv's {opts[0]} (host SIMD kernels)",
                          [c for c, _ in got] == [c for c, _ in native], f"max prob difference {dn:.1e}")
            res.check(f"{name} {pic}: instructions for one inference counted", instr and instr > 10 ** 6,
                      f"{instr:,} instructions (qemu -icount; not cycles)" if instr else "no count printed")
            if kind == "f32":
                continue
            want_f = host_top3(model_f, image, [], d)
            dq = max(abs(a[1] - b[1]) for a, b in zip(want, want_f))
            df = max(abs(a[1] - b[1]) for a, b in zip(got, want_f))
            res.check(f"{name} {pic}: top 3 classes equal the float32 model's on the host",
                      [c for c, _ in got] == [c for c, _ in want_f] and df <= dq + 1e-6,
                      f"max prob difference {df:.4f}; the host's int8 vs float32 difference is {dq:.4f}")

    raw_build(d, model_q, printed.get("hard"))

    # the guard: a SysTick period of 2^16 ticks and no periods allowed stops the run in its first inference
    elf = os.path.join(d, "guard.elf")
    code, _, err = arm_cc(d, elf, "-DFW_MAX_WRAPS=0", "-DFW_SYSTICK_PERIOD=0x10000u")
    if res.check("guard build", code == 0, err.strip()[-300:]):
        code, out, err = boot(elf)
        res.check("the SysTick guard stops a run that goes on too long, with a failing exit",
                  code == 1 and "stopped" in out and "done" not in out, f"exit {code}: {out.strip()[-200:]}")

    # LEMEVIT_NO_JPEG for the M7: the library without the decoder compiles and needs no more than libm and mem*
    src = os.path.join(d, "nojpeg.c")
    with open(src, "w") as f:
        f.write('#define LEMEVIT_NO_STDIO\n#define LEMEVIT_NO_MALLOC\n#define LEMEVIT_NO_JPEG\n'
                '#define LEMEVIT_IMPLEMENTATION\n#include "%s"\n' % os.path.join(ROOT, "lemevit.h"))
    obj = os.path.join(d, "nojpeg.o")
    code, _, err = run(["arm-none-eabi-gcc", "-std=c99", "-Wall", "-Wextra", "-pedantic", "-Werror", "-O2",
                        "-mcpu=cortex-m7", "-mfpu=fpv5-d16", "-mthumb", "-mfloat-abi=hard", "-c", src, "-o", obj])
    if res.check("LEMEVIT_NO_JPEG compiles for Cortex-M7 without warnings", code == 0, err.strip()[-300:]):
        code, out, _ = run(["arm-none-eabi-nm", "-u", obj])
        und = sorted({ln.split()[-1] for ln in out.splitlines() if ln.strip()})
        bad = [s for s in und if s in FORBIDDEN or "jpeg" in s]
        res.check("LEMEVIT_NO_JPEG on Cortex-M7: no malloc, stdio or JPEG symbol referenced", not bad,
                  f"{len(und)} undefined: {', '.join(und)}" if not bad else ", ".join(bad))
    res.finish()


main()
