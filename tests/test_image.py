#!/usr/bin/python3
"""Tests of the image section of lemevit.h against Pillow 9.4 / libjpeg-turbo and torchvision 0.14.

Run with Debian's Python (it has numpy, PIL, torch and torchvision):

    /usr/bin/python3 tests/test_image.py [--quick]

Every expected value is produced live by Pillow or torchvision. JPEG variants are made with
cjpeg (libjpeg-turbo-progs) and Pillow from the photos in tests/data/images. Each check prints
`PASS name ...` or `FAIL name: reason`; the last line is `N passed, N failed`.
"""
import io
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import warnings
import zlib

import numpy as np
from PIL import Image, ImageOps
import torch
import torchvision.transforms as T

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGES = os.path.join(ROOT, "tests", "data", "images")
QUICK = "--quick" in sys.argv

passed = 0
failed = 0


def check(name, ok, reason=""):
    global passed, failed
    if ok:
        passed += 1
        print(f"PASS {name}{(' ' + reason) if reason else ''}", flush=True)
    else:
        failed += 1
        print(f"FAIL {name}: {reason}", flush=True)


def build(tmp):
    """The tool twice: optimised for the pixel comparisons, sanitised for the error cases."""
    src = os.path.join(ROOT, "tests", "image_tool.c")
    fast = os.path.join(tmp, "image_tool")
    san = os.path.join(tmp, "image_tool_san")
    flags = ["-std=c99", "-Wall", "-Wextra", "-pedantic", "-Werror"]
    subprocess.run(["gcc", *flags, "-O2", src, "-o", fast, "-lm"], check=True)
    subprocess.run(["clang", *flags, "-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                    src, "-o", san, "-lm"], check=True)
    return fast, san


def run(tool, *args):
    p = subprocess.run([tool, *map(str, args)], capture_output=True, text=True)
    return p.returncode, p.stdout.strip(), p.stderr


def pillow_decode(path, orient=True):
    im = Image.open(path)
    if orient:
        im = ImageOps.exif_transpose(im)
    if im.mode == "CMYK":
        im = im.convert("RGB")
    return np.asarray(im)


def ours_decode(tool, path, tmp, *extra):
    out = os.path.join(tmp, "out.pnm")
    rc, so, se = run(tool, "decode", path, out, *extra)
    if rc != 0:
        return None, so + se
    return np.asarray(Image.open(out)), so


class Stats:
    def __init__(self):
        self.max = 0
        self.sum = 0.0
        self.n = 0
        self.images = 0

    def add(self, d):
        self.max = max(self.max, int(d.max()) if d.size else 0)
        self.sum += float(d.sum())
        self.n += d.size
        self.images += 1

    def __str__(self):
        return f"({self.images} images, max abs diff {self.max}, mean {self.sum / max(self.n, 1):.6f})"


def compare_decode(tool, name, path, tmp, stats, orient=True):
    ref = pillow_decode(path, orient)
    got, msg = ours_decode(tool, path, tmp, *([] if orient else ["--ignore-orientation"]))
    if got is None:
        check(f"decode {name}", False, f"decoder failed: {msg}")
        return
    if got.shape != ref.shape:
        check(f"decode {name}", False, f"shape {got.shape} != Pillow {ref.shape}")
        return
    d = np.abs(got.astype(np.int16) - ref.astype(np.int16))
    stats.add(d)
    check(f"decode {name}", d.max() == 0, f"max abs diff {d.max()}, mean {d.mean():.6f}")


def source_images(tmp):
    """The photos as PPM (cjpeg input), plus crops of odd and tiny sizes."""
    srcs = {}
    for f in sorted(os.listdir(os.path.join(IMAGES, "photos"))):
        if f == "truncated.jpg":
            continue
        im = Image.open(os.path.join(IMAGES, "photos", f)).convert("RGB")
        srcs[os.path.splitext(f)[0]] = im
    base = srcs["chelsea"]
    for w, h in [(1, 1), (2, 2), (1, 9), (9, 1), (3, 17), (17, 3), (7, 7), (15, 33), (33, 15), (100, 3), (227, 149),
                 (250, 193)]:
        srcs[f"chelsea_{w}x{h}"] = base.crop((37, 11, 37 + w, 11 + h))
    paths = {}
    for k, im in srcs.items():
        p = os.path.join(tmp, k + ".ppm")
        im.save(p)
        paths[k] = p
    return paths


def cjpeg(src, dst, *opts):
    subprocess.run(["cjpeg", *opts, "-outfile", dst, src], check=True, stderr=subprocess.DEVNULL)


def make_variants(tmp, srcs):
    """(name, path) of JPEGs covering sampling factors, progressive, restarts, gray, RGB, CMYK."""
    out = []
    vdir = os.path.join(tmp, "variants")
    os.makedirs(vdir, exist_ok=True)
    samplings = ["1x1", "2x1", "1x2", "2x2", "4x1", "1x4", "4x2", "2x4", "3x1", "3x2", "1x3", "2x2,2x1,1x1",
                 "1x1,2x2,1x1", "2x2,1x2,2x1"]
    photos = ["chelsea", "coffee"] if QUICK else ["chelsea", "coffee", "astronaut", "rocket"]
    small = [k for k in srcs if k.startswith("chelsea_")]
    for key in photos + small:
        src = srcs[key]
        opts_list = [("default", []), ("prog", ["-progressive"]), ("gray", ["-grayscale"]),
                     ("grayprog", ["-grayscale", "-progressive"]), ("q100", ["-quality", "100"]),
                     ("q5", ["-quality", "5"]), ("rst1", ["-restart", "1"]), ("rst2b", ["-restart", "2B"]),
                     ("progrst", ["-progressive", "-restart", "1"]), ("rgb", ["-rgb"]),
                     ("opt", ["-optimize"])]
        for s in samplings:
            opts_list.append((f"s{s.replace(',', '_')}", ["-sample", s]))
            if key in photos[:1] or key in small:
                opts_list.append((f"s{s.replace(',', '_')}prog", ["-sample", s, "-progressive"]))
        if QUICK and key in small:
            opts_list = opts_list[:6]
        for tag, opts in opts_list:
            dst = os.path.join(vdir, f"{key}_{tag}.jpg")
            cjpeg(src, dst, *opts)
            out.append((f"{key}_{tag}", dst))
        # CMYK the way Pillow writes it (Adobe marker, inverted), in two samplings
        im = Image.open(src).convert("CMYK")
        for q, sub in [(90, 0), (75, 2)]:
            dst = os.path.join(vdir, f"{key}_cmyk{sub}.jpg")
            im.save(dst, quality=q, subsampling=sub)
            out.append((f"{key}_cmyk{sub}", dst))
        # Pillow's own encoder: JFIF, subsampling choices
        im = Image.open(src)
        for sub in (0, 1, 2):
            dst = os.path.join(vdir, f"{key}_pil{sub}.jpg")
            im.save(dst, quality=85, subsampling=sub)
            out.append((f"{key}_pil{sub}", dst))
    return out


def make_ycck(tmp, srcs):
    """YCCK JPEGs (Adobe transform 2): Pillow cannot write them, TurboJPEG does from CMYK pixels."""
    import ctypes
    import ctypes.util
    tj = ctypes.CDLL(ctypes.util.find_library("turbojpeg") or "libturbojpeg.so.0")
    tj.tjInitCompress.restype = ctypes.c_void_p
    tj.tjCompress2.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                               ctypes.c_int, ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_ulong),
                               ctypes.c_int, ctypes.c_int, ctypes.c_int]
    tj.tjFree.argtypes = [ctypes.c_void_p]
    tj.tjDestroy.argtypes = [ctypes.c_void_p]
    handle = tj.tjInitCompress()
    out = []
    TJPF_CMYK = 11
    for key in ["chelsea_227x149", "chelsea_33x15"]:
        pix = np.ascontiguousarray(np.asarray(Image.open(srcs[key]).convert("CMYK")))
        for samp, tag in [(0, "444"), (2, "420"), (5, "411")]:
            buf, size = ctypes.c_void_p(), ctypes.c_ulong(0)
            if tj.tjCompress2(handle, pix.ctypes.data, pix.shape[1], 0, pix.shape[0], TJPF_CMYK, ctypes.byref(buf),
                              ctypes.byref(size), samp, 85, 0) != 0:
                raise RuntimeError("tjCompress2 failed")
            p = os.path.join(tmp, f"{key}_ycck{tag}.jpg")
            with open(p, "wb") as f:
                f.write(ctypes.string_at(buf, size.value))
            tj.tjFree(buf)
            out.append((f"{key}_ycck{tag}", p))
    tj.tjDestroy(handle)
    return out


def test_decode(tool, tmp, srcs):
    photos = Stats()
    for f in ["rocket.jpg", "hubble_deep_field.jpg"]:
        compare_decode(tool, f"photos/{f}", os.path.join(IMAGES, "photos", f), tmp, photos)
    for f in ["testorig.jpg", "testimgint.jpg"]:
        compare_decode(tool, f"libjpeg-turbo/{f}", os.path.join(IMAGES, "libjpeg-turbo", f), tmp, photos)
    # PNG photos re-encoded as JPEG by Pillow
    for k in ["chelsea", "coffee", "astronaut"]:
        p = os.path.join(tmp, k + ".jpg")
        Image.open(srcs[k]).save(p, quality=90)
        compare_decode(tool, f"photos/{k}.png as jpeg", p, tmp, photos)
    check("decode set: shared photos", photos.max == 0, str(photos))

    exif = Stats()
    for i in range(9):
        p = os.path.join(IMAGES, "exif", f"Landscape_{i}.jpg")
        compare_decode(tool, f"exif/Landscape_{i}.jpg", p, tmp, exif)
        compare_decode(tool, f"exif/Landscape_{i}.jpg ignore_orientation", p, tmp, exif, orient=False)
    check("decode set: EXIF orientations", exif.max == 0, str(exif))

    variants = Stats()
    for name, path in make_variants(tmp, srcs):
        compare_decode(tool, f"variant {name}", path, tmp, variants)
    check("decode set: generated variants", variants.max == 0, str(variants))

    ycck = Stats()
    try:
        files = make_ycck(tmp, srcs)
    except (OSError, RuntimeError) as e:
        check("decode set: YCCK", False, f"cannot make YCCK files with libturbojpeg ({e}); install libturbojpeg0")
        return
    for name, path in files:
        data = open(path, "rb").read()
        i = data.find(b"Adobe")
        check(f"make {name}: Adobe marker says YCCK", i > 0 and data[i + 11] == 2)
        compare_decode(tool, f"variant {name}", path, tmp, ycck)
    check("decode set: YCCK", ycck.max == 0, str(ycck))


def jpeg_segments(data):
    """(marker, start, end) of each marker segment before the first SOS, and the SOS offset."""
    segs, i = [], 2
    while i + 4 <= len(data) and data[i] == 0xFF:
        m, n = data[i + 1], int.from_bytes(data[i + 2:i + 4], "big")
        if m == 0xDA:
            return segs, i
        segs.append((m, i, i + 2 + n))
        i += 2 + n
    raise ValueError("no SOS")


def strip_dht(data):
    """The file without its DHT segments: a Motion-JPEG frame."""
    segs, _ = jpeg_segments(data)
    out, last = b"", 0
    for m, a, b in segs:
        if m == 0xC4:
            out += data[last:a]
            last = b
    return out + data[last:]


def test_mjpeg(tool, tmp, srcs):
    """Frames without DHT (Motion-JPEG) decode with the Annex K tables, exact against Pillow; a scan
    that needs table 2 or 3 undefined is refused, as libjpeg refuses it; progressive files that end early."""
    mj = Stats()
    cases = [("chelsea", "RGB", {"subsampling": 2}), ("chelsea_227x149", "RGB", {"subsampling": 0}),
             ("chelsea_33x15", "RGB", {"subsampling": 1}), ("coffee", "L", {}),
             ("chelsea_250x193", "RGB", {"subsampling": 2, "quality": 95})]
    for key, mode, kw in cases:
        buf = io.BytesIO()
        Image.open(srcs[key]).convert(mode).save(buf, "JPEG", optimize=False, **kw)
        data = strip_dht(buf.getvalue())
        p = os.path.join(tmp, f"mjpeg_{key}_{mode}.jpg")
        open(p, "wb").write(data)
        ok = b"\xff\xc4" not in data[:jpeg_segments(data)[1]]
        try:
            same = np.array_equal(np.asarray(Image.open(io.BytesIO(data))), np.asarray(Image.open(buf)))
        except OSError as e:
            ok, same = False, str(e)
        check(f"mjpeg: {key} {mode} {kw} without DHT; Pillow decodes it as the original", ok and same is True,
              str(same))
        compare_decode(tool, f"mjpeg {key} {mode} {kw} (no DHT, Annex K tables)", p, tmp, mj)
    # a restart interval too, as many cameras write
    src = os.path.join(tmp, "mjpeg_rst_src.jpg")
    cjpeg(srcs["chelsea_227x149"], src, "-restart", "2")
    data = strip_dht(open(src, "rb").read())
    p = os.path.join(tmp, "mjpeg_rst.jpg")
    open(p, "wb").write(data)
    compare_decode(tool, "mjpeg cjpeg -restart 2 (no DHT)", p, tmp, mj)
    check("decode set: Motion-JPEG frames", mj.max == 0 and mj.images == len(cases) + 1, str(mj))

    # the scan names AC table 2, never defined: Pillow refuses, so do we
    segs, sos = jpeg_segments(data)
    bad = bytearray(data)
    bad[sos + 6] = (bad[sos + 6] & 0xF0) | 2   # first component's Td/Ta byte
    p = os.path.join(tmp, "mjpeg_table2.jpg")
    open(p, "wb").write(bytes(bad))
    try:
        Image.open(p).load()
        check("mjpeg: Pillow refuses a scan that uses undefined AC table 2", False, "Pillow decoded it")
    except OSError:
        check("mjpeg: Pillow refuses a scan that uses undefined AC table 2", True)
    expect_error(tool, "mjpeg: undefined AC table 2 refused", p, "LMV_ERR_IMAGE", ["table 2 or 3", "never defined"])

    # progressive files that end early. Cut inside a scan (no EOI): Pillow raises without
    # LOAD_TRUNCATED_IMAGES, and so do we. Cut at a scan boundary with EOI added: a complete, valid file
    # with fewer scans; both decode it (libjpeg smooths blocks whose bits were never refined, we do not).
    src = os.path.join(tmp, "prog_src.jpg")
    cjpeg(srcs["chelsea_227x149"], src, "-progressive")
    data = open(src, "rb").read()
    sos_at = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xDA]
    cut = data[:(sos_at[2] + sos_at[3]) // 2]
    p = os.path.join(tmp, "prog_cut.jpg")
    open(p, "wb").write(cut)
    try:
        Image.open(p).load()
        check("progressive cut inside scan 3: Pillow refuses it", False, "Pillow decoded it")
    except OSError:
        check("progressive cut inside scan 3: Pillow refuses it", True)
    expect_error(tool, "progressive cut inside scan 3: refused as truncated", p, "LMV_ERR_IMAGE", ["truncated"])
    for k in (1, 3):
        p = os.path.join(tmp, f"prog_{k}scans.jpg")
        open(p, "wb").write(data[:sos_at[k]] + b"\xff\xd9")
        ref = np.asarray(Image.open(p))
        got, msg = ours_decode(tool, p, tmp)
        ok = got is not None and got.shape == ref.shape
        d = np.abs(got.astype(int) - ref.astype(int)) if ok else None
        check(f"progressive with only its first {k} scan(s) and EOI: Pillow and we both decode it", ok,
              f"(Pillow smooths unrefined blocks: max abs diff {d.max()}, mean {d.mean():.3f})" if ok else msg)


def test_info(tool, tmp, srcs):
    """lmv_image_jpeg_info: size and channels as Pillow sees them, and decode_memory exact for an arena."""
    files = [(f"photos/{f}", os.path.join(IMAGES, "photos", f)) for f in ["rocket.jpg", "hubble_deep_field.jpg"]]
    files += [(f"exif/Landscape_{i}.jpg", os.path.join(IMAGES, "exif", f"Landscape_{i}.jpg")) for i in (1, 6)]
    for key, opts in [("chelsea_227x149", ["-progressive"]), ("chelsea_33x15", ["-grayscale"]),
                      ("chelsea_100x3", ["-sample", "4x1", "-restart", "1"])]:
        p = os.path.join(tmp, f"info_{key}{''.join(opts)}.jpg")
        cjpeg(srcs[key], p, *opts)
        files.append((os.path.basename(p), p))
    p = os.path.join(tmp, "info_cmyk.jpg")
    Image.open(srcs["chelsea_33x15"]).convert("CMYK").save(p)
    files.append(("cmyk", p))
    for name, path in files:
        rc, so, se = run(tool, "info", path)
        ref = pillow_decode(path)
        want = f"INFO {ref.shape[1]} {ref.shape[0]} {1 if ref.ndim == 2 else 3} "
        fields = so.split()
        ok = (rc == 0 and so.startswith(want) and fields[6] == "exact:LMV_OK" and fields[7:9] == fields[1:3]
              and fields[9] == "smaller:LMV_ERR_OUT_OF_MEMORY")
        check(f"info {name}: size, channels, decode_memory exact for an arena", ok, so if ok else f"{so} {se[-300:]}")


def run_limited(tool, mem_bytes, *args):
    """The tool with its address space capped (RLIMIT_AS): a large allocation fails there, so an
    answer other than out-of-memory shows the decoder refused before allocating."""
    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (mem_bytes, mem_bytes))
    p = subprocess.run([tool, *map(str, args)], capture_output=True, text=True, preexec_fn=cap, timeout=60)
    return p.returncode, p.stdout.strip(), p.stderr


def sof_offset(data):
    return next(i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] in (0xC0, 0xC1, 0xC2))


def test_bombs(fast, tmp, srcs):
    """Decompression-bomb guards: max_pixels (default Pillow's DecompressionBombError bound),
    max_scans, max_memory and the file-size bound, each refused before anything is allocated."""
    san = os.path.join(tmp, "image_tool_san")
    # pixels: a real JPEG whose frame header declares sizes around Pillow's bound
    base = os.path.join(tmp, "bomb_base.jpg")
    cjpeg(srcs["chelsea_33x15"], base)
    data = open(base, "rb").read()
    sof = sof_offset(data)
    bound = 2 * Image.MAX_IMAGE_PIXELS  # Pillow refuses above this (DecompressionBombError)
    w = 65500
    for h, over in [(bound // w + 1, True), (bound // w, False)]:
        q = os.path.join(tmp, f"bomb_{h}.jpg")
        open(q, "wb").write(data[:sof + 5] + bytes([h >> 8, h & 255, w >> 8, w & 255]) + data[sof + 9:])
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                Image.open(q)
            pil_refuses = False
        except Image.DecompressionBombError:
            pil_refuses = True
        except Exception:
            pil_refuses = False
        rc, so, se = run_limited(fast, 1 << 30, "decode", q, os.path.join(tmp, "x.pnm"))
        if over:
            ok = pil_refuses and so.startswith("ERROR LMV_ERR_LIMIT") and "max_pixels" in so
            check(f"bomb: {w} x {h} = {w * h} pixels, over Pillow's bound {bound}: LMV_ERR_LIMIT by default, as Pillow",
                  ok, so if ok else f"Pillow refuses: {pil_refuses}; rc {rc} '{so}' {se[-300:]}")
        else:
            # at the bound the pixel count passes; the few bytes of data cannot hold the image,
            # which is found before any allocation (1 GB address space would not hold its planes)
            ok = not pil_refuses and so.startswith("ERROR LMV_ERR_IMAGE") and "cannot hold" in so
            check(f"bomb: {w} x {h} pixels, at Pillow's bound: passes max_pixels, refused as truncated before allocating",
                  ok, so if ok else f"Pillow refuses: {pil_refuses}; rc {rc} '{so}' {se[-300:]}")

    # the truncated CMYK bomb: 8192 x 8192, every component sampled 4x4 (32 x 32 MCUs, so one bit per
    # MCU is only 8 KB), 9 KB of data in a comment: one bit per block of a component needs 128 KB
    p = os.path.join(tmp, "cmyk_small.jpg")
    Image.open(srcs["chelsea_33x15"]).convert("CMYK").save(p)
    data = open(p, "rb").read()
    sof = sof_offset(data)
    seg = (data[sof + 2] << 8) | data[sof + 3]
    frame = bytearray(data[sof:sof + 2 + seg])
    frame[5:9] = bytes([0x20, 0, 0x20, 0])
    for c in range(frame[9]):
        frame[11 + 3 * c] = 0x44
    com = b"\xff\xfe" + (9000 + 2).to_bytes(2, "big") + bytes(9000)
    q = os.path.join(tmp, "cmyk_bomb.jpg")
    open(q, "wb").write(data[:sof] + bytes(frame) + com + data[sof + 2 + seg:])
    rc, so, se = run_limited(fast, 256 << 20, "decode", q, os.path.join(tmp, "x.pnm"))
    ok = so.startswith("ERROR LMV_ERR_IMAGE") and "truncated" in so
    check(f"bomb: {len(open(q, 'rb').read())}-byte CMYK 4x4-sampled 8192 x 8192 file refused before allocating "
          f"(256 MB address space)", ok, so if ok else f"rc {rc} '{so}' {se[-300:]}")

    # max_memory: decode_memory from the headers is exactly enough, one byte less is refused first
    p = os.path.join(tmp, "mem.jpg")
    cjpeg(srcs["chelsea_227x149"], p, "-progressive")
    rc, so, _ = run(san, "info", p)
    need = int(so.split()[5]) if so.startswith("INFO") else 0
    rc, so, _ = run(san, "decode", p, os.path.join(tmp, "x.pnm"), "--max-memory", need - 1)
    ok = need > 0 and so.startswith("ERROR LMV_ERR_LIMIT") and "max_memory" in so
    check(f"bomb: max_memory {need - 1}, one byte under decode_memory: LMV_ERR_LIMIT", ok, so)
    got, msg = ours_decode(san, p, tmp, "--max-memory", need)
    ok = got is not None and np.array_equal(got, pillow_decode(p))
    check(f"bomb: max_memory {need} = decode_memory: decodes, same pixels as Pillow", ok, "" if ok else msg)

    # the scan cap: a DC refinement scan repeated (harmless: it ORs the same bits again)
    p = os.path.join(tmp, "scans.jpg")
    cjpeg(srcs["chelsea_33x15"], p, "-progressive")
    data = open(p, "rb").read()
    sos = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xDA]
    ends = sos[1:] + [data.rindex(b"\xff\xd9")]
    refine = [(a, b) for a, b in zip(sos, ends) if data[a + 5 + 2 * data[a + 4]] == 0 and data[a + 7 + 2 * data[a + 4]] >> 4]
    a, b = refine[0]
    for cap, flags in [(100, []), (20, ["--max-scans", 20])]:
        for total in [cap, cap + 1]:
            q = os.path.join(tmp, f"scans{total}.jpg")
            open(q, "wb").write(data[:b] + data[a:b] * (total - len(sos)) + data[b:])
            got, msg = ours_decode(san, q, tmp, *flags)
            if total == cap:
                ok = got is not None and np.array_equal(got, pillow_decode(q))
            else:
                ok = got is None and msg.startswith("ERROR LMV_ERR_LIMIT") and "max_scans" in msg
            check(f"bomb: {total} scans, max_scans {cap}{' (default)' if not flags else ''} -> "
                  + ("decodes, same pixels as Pillow" if total == cap else "LMV_ERR_LIMIT"), ok, "" if ok else msg)
    # many scans over a large image: refused at the cap, so the decode stays short (a 2048 x 2048
    # progressive file with 1,000 scans would otherwise take seconds)
    big = os.path.join(tmp, "big.ppm")
    Image.open(srcs["chelsea"]).resize((2048, 2048)).save(big)
    p = os.path.join(tmp, "big_scans.jpg")
    cjpeg(big, p, "-progressive")
    data = open(p, "rb").read()
    sos = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xDA]
    ends = sos[1:] + [data.rindex(b"\xff\xd9")]
    refine = [(a, b) for a, b in zip(sos, ends) if data[a + 5 + 2 * data[a + 4]] == 0 and data[a + 7 + 2 * data[a + 4]] >> 4]
    a, b = refine[0]
    q = os.path.join(tmp, "big_1000.jpg")
    open(q, "wb").write(data[:b] + data[a:b] * (1000 - len(sos)) + data[b:])
    try:
        rc, so, se = run_limited(fast, 1 << 30, "decode", q, os.path.join(tmp, "x.pnm"))
    except subprocess.TimeoutExpired:
        rc, so, se = -1, "timed out", ""
    ok = so.startswith("ERROR LMV_ERR_LIMIT") and "max_scans" in so
    check("bomb: 2048 x 2048 progressive file with 1,000 scans: LMV_ERR_LIMIT at the default cap", ok, so)


def expect_error(tool, name, path, code, words):
    rc, so, se = run(tool, "decode", path, os.path.join(os.path.dirname(path), "x.pnm"))
    ok = rc == 2 and so.startswith(f"ERROR {code}") and all(w in so for w in words) and "runtime error" not in se
    check(name, ok, so if ok else f"rc {rc}, got '{so}' {se[-300:]}")


def test_errors(san, tmp, srcs):
    lj = os.path.join(IMAGES, "libjpeg-turbo")
    expect_error(san, "error: arithmetic coding (testimgari.jpg)", os.path.join(lj, "testimgari.jpg"),
                 "LMV_ERR_UNSUPPORTED", ["unsupported", "arithmetic"])
    expect_error(san, "error: 12-bit (monkey12.jpg)", os.path.join(lj, "monkey12.jpg"), "LMV_ERR_UNSUPPORTED",
                 ["unsupported", "12-bit"])
    p = os.path.join(tmp, "ari_prog.jpg")
    cjpeg(srcs["chelsea_227x149"], p, "-arithmetic", "-progressive")
    expect_error(san, "error: arithmetic progressive (cjpeg)", p, "LMV_ERR_UNSUPPORTED", ["arithmetic"])
    # lossless and hierarchical: the frame marker of a valid file changed to SOF3 / SOF5
    base = open(os.path.join(lj, "testorig.jpg"), "rb").read()
    sof = base.index(b"\xff\xc0")
    for marker, word in [(0xC3, "lossless"), (0xC5, "hierarchical")]:
        p = os.path.join(tmp, f"sof{marker:x}.jpg")
        open(p, "wb").write(base[:sof + 1] + bytes([marker]) + base[sof + 2:])
        expect_error(san, f"error: {word} frame (SOF{marker - 0xC0})", p, "LMV_ERR_UNSUPPORTED", [word])
    expect_error(san, "error: truncated.jpg (Pillow refuses it too)", os.path.join(IMAGES, "photos", "truncated.jpg"),
                 "LMV_ERR_IMAGE", ["truncated"])
    try:
        Image.open(os.path.join(IMAGES, "photos", "truncated.jpg")).load()
        check("error: Pillow refuses truncated.jpg", False, "Pillow loaded it")
    except OSError:
        check("error: Pillow refuses truncated.jpg", True)
    p = os.path.join(tmp, "notjpeg.jpg")
    open(p, "wb").write(b"\x89PNG\r\n\x1a\n" + bytes(100))
    expect_error(san, "error: not a JPEG", p, "LMV_ERR_IMAGE", ["SOI"])
    rc, so, _ = run(san, "decode", os.path.join(IMAGES, "photos", "rocket.jpg"), os.path.join(tmp, "x.pnm"),
                    "--max-pixels", 640 * 427 - 1)
    check("error: max_pixels limit", so.startswith("ERROR LMV_ERR_LIMIT"), so)
    rc, so, _ = run(san, "decode", os.path.join(IMAGES, "photos", "rocket.jpg"), os.path.join(tmp, "x.pnm"),
                    "--max-pixels", 640 * 427)
    check("error: max_pixels exactly enough", so.startswith("OK"), so)

    # every truncation length of small files, baseline and progressive: Pillow decides
    for key, opts in [("chelsea_33x15", []), ("chelsea_33x15", ["-progressive"]), ("chelsea_15x33", ["-restart", "1"]),
                      ("chelsea_100x3", ["-progressive", "-sample", "1x1"])]:
        p = os.path.join(tmp, f"trunc_{key}{''.join(opts)}.jpg")
        cjpeg(srcs[key], p, *opts)
        data = open(p, "rb").read()
        rc, so, se = run(san, "truncations", p)
        lines = so.splitlines()
        bad = []
        if rc != 0 or len(lines) != len(data) + 1:
            bad.append(f"tool rc {rc}, {len(lines)} lines: {se[-400:]}")
        for line in lines:
            n, code, crc = line.split()
            n = int(n)
            try:
                im = Image.open(io.BytesIO(data[:n]))
                im.load()
                ref = np.asarray(im.convert("RGB") if im.mode == "CMYK" else im)
                want = ("LMV_OK", zlib.crc32(ref.tobytes()))
            except Exception:
                want = ("LMV_ERR_IMAGE", 0)
            if want[0] == "LMV_OK" and (code, int(crc)) != want:
                bad.append(f"len {n}: Pillow decodes it, we give {code}")
            elif want[0] != "LMV_OK" and code != "LMV_ERR_IMAGE":
                bad.append(f"len {n}: Pillow refuses, we give {code}")
        check(f"truncations: all {len(data) + 1} prefixes of {os.path.basename(p)} as Pillow", not bad,
              "; ".join(bad[:5]))

    # random byte corruption: a clean error or an image, never a crash or a sanitizer report
    trials = 500 if QUICK else 3000
    for key, opts in [("chelsea_227x149", []), ("chelsea_227x149", ["-progressive"]),
                      ("chelsea_33x15", ["-restart", "1", "-sample", "1x1"])]:
        p = os.path.join(tmp, f"flip_{key}{''.join(opts)}.jpg")
        cjpeg(srcs[key], p, *opts)
        rc, so, se = run(san, "flips", p, trials, 12345)
        counts = dict(l.split() for l in so.splitlines())
        allowed = {"LMV_OK", "LMV_ERR_IMAGE", "LMV_ERR_UNSUPPORTED", "LMV_ERR_LIMIT"}
        ok = rc == 0 and sum(map(int, counts.values())) == trials and set(counts) <= allowed and "ERROR" not in se
        check(f"corruption: {trials} random byte flips of {os.path.basename(p)}", ok,
              str(counts) if ok else f"rc {rc} {counts} {se[-600:]}")


def test_fuzz_corpus(san, tmp, srcs):
    """The libFuzzer harness replays its seed corpus (and any crash_* regression files) cleanly."""
    harness = os.path.join(ROOT, "tests", "fuzz", "fuzz_jpeg.c")
    exe = os.path.join(tmp, "fuzz_jpeg")
    subprocess.run(["clang", "-g", "-O1", "-fsanitize=fuzzer,address,undefined", "-fno-sanitize-recover=all",
                    harness, "-o", exe, "-lm"], check=True)
    corpus = os.path.join(ROOT, "tests", "fuzz", "corpus_jpeg")
    files = sorted(os.path.join(corpus, f) for f in os.listdir(corpus))
    p = subprocess.run([exe, *files], capture_output=True, text=True)
    ok = p.returncode == 0 and f"Executed {files[-1]}" in p.stderr and "ERROR" not in p.stderr
    check(f"fuzz harness replays {len(files)} corpus files under ASan/UBSan", ok,
          "" if ok else p.stderr[-600:])


INTERP = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}


def test_resize(tool, tmp, srcs):
    rng = random.Random(7)
    stats = Stats()
    cases = []
    for key in ["chelsea", "astronaut", "chelsea_15x33", "chelsea_1x9", "chelsea_227x149", "chelsea_1x1"]:
        im = Image.open(srcs[key])
        w, h = im.size
        sizes = [(224, 224), (max(1, w // 3), max(1, h // 5)), (w * 2 + 1, h * 3 + 2), (1, 1), (w, max(1, h // 2)),
                 (max(1, w // 2), h), (w, h), (rng.randint(1, 600), rng.randint(1, 600))]
        for mode in ("RGB", "L"):
            for interp in INTERP:
                for size in sizes:
                    cases.append((key, mode, interp, size))
    if QUICK:
        cases = cases[::4]
    bad = []
    for key, mode, interp, (w, h) in cases:
        im = Image.open(srcs[key]).convert(mode)
        src = os.path.join(tmp, "rs_in." + ("ppm" if mode == "RGB" else "pgm"))
        im.save(src)
        dst = os.path.join(tmp, "rs_out." + ("ppm" if mode == "RGB" else "pgm"))
        rc, so, se = run(tool, "resize", src, w, h, interp, dst)
        ref = np.asarray(im.resize((w, h), INTERP[interp]))
        if rc != 0:
            bad.append(f"{key} {mode} {interp} {w}x{h}: {so}")
            continue
        got = np.asarray(Image.open(dst))
        if got.shape != ref.shape:
            bad.append(f"{key} {mode} {interp} {w}x{h}: shape {got.shape} vs {ref.shape}")
            continue
        d = np.abs(got.astype(np.int16) - ref.astype(np.int16))
        stats.add(d)
        if d.max():
            bad.append(f"{key} {mode} {interp} {w}x{h}: max diff {d.max()}")
    check(f"resize: {len(cases)} Image.resize cases (nearest/bilinear/bicubic, RGB and L) byte-identical", not bad,
          str(stats) if not bad else "; ".join(bad[:6]))


def torch_preprocess(im, resize, crop_h, crop_w, interp, chans, mean, std):
    mode = {"nearest": T.InterpolationMode.NEAREST, "bilinear": T.InterpolationMode.BILINEAR,
            "bicubic": T.InterpolationMode.BICUBIC}[interp]
    im = im.convert("RGB" if chans == 3 else "L")
    tf = [T.Resize(resize if resize else (crop_h, crop_w), interpolation=mode), T.CenterCrop((crop_h, crop_w)),
          T.ToTensor(), T.Normalize(mean[:chans], std[:chans])]
    return T.Compose(tf)(im).numpy()


def test_preprocess(tool, tmp, srcs):
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    rng = random.Random(11)
    cases = []
    # the photos, decoded by us from JPEG and by Pillow: the whole pipeline
    for key in ["rocket", "hubble_deep_field"]:
        for interp in INTERP:
            cases.append((os.path.join(IMAGES, "photos", key + ".jpg"), 256, 224, 224, interp, 3))
    cases.append((os.path.join(IMAGES, "exif", "Landscape_6.jpg"), 256, 224, 224, "bicubic", 3))
    cases.append((os.path.join(IMAGES, "photos", "rocket.jpg"), 0, 224, 224, "bicubic", 3))
    cases.append((os.path.join(IMAGES, "photos", "rocket.jpg"), 248, 224, 224, "bicubic", 1))
    # generated images of many sizes and aspect ratios, RGB and gray
    gen = os.path.join(tmp, "gen")
    os.makedirs(gen, exist_ok=True)
    base = Image.open(srcs["astronaut"])
    sizes = [(1, 1), (1, 300), (300, 1), (5, 7), (31, 17), (224, 224), (225, 223), (256, 256), (640, 480), (480, 640),
             (1000, 37), (37, 1000), (3000, 2000), (100, 100)]
    n = 6 if QUICK else len(sizes)
    for i, (w, h) in enumerate(sizes[:n]):
        for mode in ("RGB", "L"):
            im = base.resize((w, h), Image.BILINEAR).convert(mode)
            p = os.path.join(gen, f"g{w}x{h}{mode}." + ("ppm" if mode == "RGB" else "pgm"))
            im.save(p)
            interp = ["bilinear", "bicubic", "nearest"][(i + (mode == "L")) % 3]
            resize = rng.choice([0, 32, 224, 256, 288, 1000 if w * h < 10000 else 256])
            crop = rng.choice([(224, 224), (224, 160), (7, 300), (384, 384)])
            cases.append((p, resize, crop[0], crop[1], interp, rng.choice([3, 3, 1])))
    worst = 0.0
    worst01 = 0.0
    bad = []
    for path, resize, ch, cw, interp, chans in cases:
        out = os.path.join(tmp, "pp.npy")
        rc, so, se = run(tool, "preprocess", path, resize, ch, cw, interp, chans, *mean, *std, out)
        if rc != 0:
            bad.append(f"{os.path.basename(path)}: {so}")
            continue
        got = np.load(out)
        if path.endswith(".jpg"):
            im = ImageOps.exif_transpose(Image.open(path))
        else:
            im = Image.open(path)
        ref = torch_preprocess(im, resize, ch, cw, interp, chans, mean, std)
        if got.shape != ref.shape:
            bad.append(f"{os.path.basename(path)}: shape {got.shape} vs {ref.shape}")
            continue
        d = float(np.abs(got - ref).max())
        # the same difference before normalisation, in units of 1/255
        d01 = float((np.abs(got - ref) * np.array(std[:chans], dtype=np.float32)[:, None, None]).max() * 255)
        worst = max(worst, d)
        worst01 = max(worst01, d01)
        if d != 0.0:
            bad.append(f"{os.path.basename(path)} resize {resize} crop {ch}x{cw} {interp} c{chans}: max diff {d}")
    check(f"preprocess: {len(cases)} cases vs torchvision Resize/CenterCrop/ToTensor/Normalize", not bad,
          f"max abs diff {worst} (normalised), {worst01:.4f}/255 before normalisation" if not bad else
          "; ".join(bad[:5]))


def main():
    tmp = tempfile.mkdtemp(prefix="lmv_image_")
    try:
        try:
            fast, san = build(tmp)
            check("build image_tool (gcc -O2, clang ASan+UBSan)", True)
        except subprocess.CalledProcessError as e:
            check("build image_tool", False, str(e))
            return
        srcs = source_images(tmp)
        for section, fn, tool in [("decode", test_decode, fast), ("mjpeg", test_mjpeg, san), ("info", test_info, san), ("errors", test_errors, san),
                                  ("bombs", test_bombs, fast), ("fuzz", test_fuzz_corpus, san),
                                  ("resize", test_resize, fast), ("preprocess", test_preprocess, fast)]:
            try:
                fn(tool, tmp, srcs)
            except Exception as e:  # a broken section is a failure, and the others still run
                check(f"{section} section ran to the end", False, repr(e))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        print(f"{passed} passed, {failed} failed")


if __name__ == "__main__":
    main()
    sys.exit(1 if failed else 0)
