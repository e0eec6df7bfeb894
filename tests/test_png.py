"""The PNG decoder against Pillow 9.4, run live: every file of PngSuite (tests/data/pngsuite), files
Pillow writes (every mode it saves, palettes of 1-8 bits, compress_level 0/1/9, several IDAT
chunks) and files made here (16-bit RGB/RGBA/gray+alpha, Adam7 for every colour type and depth,
each filter type, stored/fixed/dynamic deflate blocks, one-byte IDAT chunks, palette indices past
PLTE, no IEND, eXIf orientations) must give Pillow's Image.open(p).convert('RGB') exactly (gray files come back with
one channel, which convert('RGB') repeats). Corrupt files (PngSuite's x*.png, bad CRCs, truncations, bad zlib data,
bad Adler-32, huge sizes, decompression bombs) must be refused with their own error code and
sentence, also under AddressSanitizer + UBSan. tests/png_tool.c checks the exact memory query on
every file that decodes."""
import os
import struct
import subprocess
import sys
import warnings
import zlib

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import DATA, PHOTOS, ROOT, Results, tmpdir  # noqa: E402

res = Results()
warnings.simplefilter("ignore")  # Pillow warns about palettes with tRNS bytes on convert
SUITE = os.path.join(DATA, "pngsuite")
ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def build(tmp):
    src = os.path.join(ROOT, "tests", "png_tool.c")
    fast, san = os.path.join(tmp, "png_tool"), os.path.join(tmp, "png_tool_san")
    flags = ["-std=c99", "-Wall", "-Wextra", "-pedantic", "-Werror"]
    p = subprocess.run(["gcc", *flags, "-O2", src, "-o", fast, "-lm"], capture_output=True, text=True)
    q = subprocess.run(["clang", *flags, "-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                        src, "-o", san, "-lm"], capture_output=True, text=True)
    res.check("png_tool builds (gcc -O2 strict, clang ASan+UBSan)", p.returncode == 0 and q.returncode == 0,
              (p.stderr + q.stderr)[-500:])
    if p.returncode or q.returncode:
        res.finish()
    return fast, san


def decode(tool, files, tmp, *opts):
    """png_tool over files: a list of (line, pixels or None) in the same order."""
    out = os.path.join(tmp, "out")
    os.makedirs(out, exist_ok=True)
    for f in os.listdir(out):
        os.remove(os.path.join(out, f))
    p = subprocess.run([tool, *opts, out, *files], capture_output=True, text=True,
                       env=dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=1"))
    lines = p.stdout.splitlines()
    if p.returncode != 0 or len(lines) != len(files):
        return [("CRASH rc=%d %s" % (p.returncode, p.stderr[-300:]), None)] * len(files)
    got = []
    for i, ln in enumerate(lines):
        pix = None
        if ln.startswith("OK"):
            pix = np.asarray(Image.open(os.path.join(out, f"{i}.pnm")))
        got.append((ln, pix))
    return got


def pillow(path):
    return np.asarray(Image.open(path).convert("RGB"))


def same(ref, got):
    """Pixels against Pillow's convert('RGB'): a gray decode stands for its three equal channels."""
    if got is None:
        return False
    if got.ndim == 2:
        got = np.repeat(got[:, :, None], 3, axis=2)
    return ref.shape == got.shape and bool((ref == got).all())


# ---- a small PNG writer, for what Pillow cannot write ----

def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def pack_rows(a, depth):
    """(h, w, s) unsigned samples -> list of packed row bytes."""
    h, w, s = a.shape
    rows = []
    for y in range(h):
        v = a[y].reshape(-1)
        if depth == 16:
            rows.append(v.astype(">u2").tobytes())
        elif depth == 8:
            rows.append(v.astype(np.uint8).tobytes())
        else:
            per = 8 // depth
            v = np.concatenate([v, np.zeros((-len(v)) % per, dtype=v.dtype)]).reshape(-1, per).astype(np.int64)
            shifts = np.array([8 - depth * (k + 1) for k in range(per)])
            rows.append((v << shifts).sum(axis=1).astype(np.uint8).tobytes())
    return rows


def filter_rows(rows, bpp, pick):
    out, prev = b"", None
    for y, r in enumerate(rows):
        f = pick(y)
        cur = np.frombuffer(r, np.uint8).astype(np.int64)
        up = np.frombuffer(prev, np.uint8).astype(np.int64) if prev is not None else np.zeros_like(cur)
        left = np.concatenate([np.zeros(bpp, np.int64), cur[:-bpp]])[:len(cur)]
        ul = np.concatenate([np.zeros(bpp, np.int64), up[:-bpp]])[:len(cur)]
        if f == 0:
            pred = np.zeros_like(cur)
        elif f == 1:
            pred = left
        elif f == 2:
            pred = up
        elif f == 3:
            pred = (left + up) // 2
        else:
            p = left + up - ul
            pa, pb, pc = abs(p - left), abs(p - up), abs(p - ul)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, ul))
        out += bytes([f]) + ((cur - pred) & 255).astype(np.uint8).tobytes()
        prev = r
    return out


def make_png(a, depth, ctype, interlace=False, pick=lambda y: y % 5, level=6, strategy=zlib.Z_DEFAULT_STRATEGY,
             split=None, plte=None, trns=None, iend=True, extra=b""):
    h, w, s = a.shape
    bpp = max(1, s * depth // 8)
    raw = b""
    for x0, y0, dx, dy in (ADAM7 if interlace else [(0, 0, 1, 1)]):
        sub = a[y0::dy, x0::dx]
        if sub.shape[0] and sub.shape[1]:
            raw += filter_rows(pack_rows(sub, depth), bpp, pick)
    c = zlib.compressobj(level, zlib.DEFLATED, 15, 9, strategy)
    z = c.compress(raw) + c.flush()
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, int(interlace)))
    out += extra
    if plte is not None:
        out += chunk(b"PLTE", bytes(plte))
    if trns is not None:
        out += chunk(b"tRNS", trns)
    step = split or len(z)
    for i in range(0, len(z), step):
        out += chunk(b"IDAT", z[i:i + step])
    return out + (chunk(b"IEND", b"") if iend else b"")


def picture(h, w, s, maxval, seed):
    """Smooth gradients with noise: something every filter changes."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([(x * 7 + y * 3 + k * 50) for k in range(s)], axis=-1).astype(np.int64)
    a = (base * (maxval + 1) // 97 + rng.integers(0, max(2, maxval // 16), (h, w, s))) % (maxval + 1)
    return a.astype(np.uint16 if maxval > 255 else np.uint8)


def main():
    tmp = tmpdir()
    fast, san = build(tmp)

    # (a) PngSuite: the valid files equal Pillow, the x*.png files are refused by both
    names = sorted(f for f in os.listdir(SUITE) if f.endswith(".png"))
    files = [os.path.join(SUITE, f) for f in names]
    got = decode(fast, files, tmp)
    wrong, refused, accepted = [], [], []
    for n, f, (ln, pix) in zip(names, files, got):
        if n.startswith("x"):
            try:
                Image.open(f).load()
                pil_refuses = False
            except Exception:
                pil_refuses = True
            # Pillow refuses them too, except xcsn0g01 (it does not check the CRCs of IDAT chunks)
            if not (ln.startswith("ERROR LMV_ERR_IMAGE") and (pil_refuses or n == "xcsn0g01.png")):
                accepted.append(f"{n}: {ln}")
            else:
                refused.append(n)
        elif not same(pillow(f), pix):
            wrong.append(f"{n}: {ln}")
    valid = len(names) - len(refused) - len(accepted)
    res.check(f"PngSuite: {valid} valid files decode exactly as Pillow's convert('RGB')", not wrong and valid > 150,
              "; ".join(wrong[:5]))
    res.check(f"PngSuite: the {len(refused)} corrupt x*.png files are refused (LMV_ERR_IMAGE), as Pillow refuses them "
              "(but for the IDAT CRC, which Pillow does not check)",
              not accepted and len(refused) == 14, "; ".join(accepted[:5]))
    msgs = dict((n, ln) for n, (ln, _) in zip(names, got))
    res.check("PngSuite: the refusals say what is wrong",
              "CRC of chunk IDAT" in msgs["xcsn0g01.png"] and "CRC of chunk IHDR" in msgs["xhdn0g08.png"]
              and "colour type 1 does not exist" in msgs["xc1n0g08.png"]
              and "bit depth 3 is not allowed" in msgs["xd3n2c08.png"]
              and "signature is damaged" in msgs["xlfn0g04.png"] and "no IDAT" in msgs["xdtn0g01.png"]
              and "not a JPEG or PNG file" in msgs["xs1n0g01.png"], "; ".join(msgs[n] for n in names if n[0] == "x"))

    # (b) files Pillow writes
    gen = []
    for mode in ["1", "L", "LA", "P", "RGB", "RGBA", "I;16"]:
        for level in (0, 1, 9):
            rgb = picture(29, 41, 3, 255, len(gen))
            im = Image.fromarray(rgb, "RGB")
            if mode == "P":
                im = im.quantize(200)
            elif mode == "I;16":
                im = Image.fromarray(picture(29, 41, 1, 65535, 7)[:, :, 0].astype("<u2"), "I;16")
            else:
                im = im.convert(mode)
            p = os.path.join(tmp, f"pil_{mode.replace(';', '')}_{level}.png")
            im.save(p, compress_level=level)
            gen.append(p)
    for bits in (1, 2, 4):
        im = Image.fromarray(picture(23, 37, 3, 255, bits), "RGB").quantize(1 << bits)
        p = os.path.join(tmp, f"pil_p{bits}.png")
        im.save(p, bits=bits)
        gen.append(p)
    for mode, t in (("P", 3), ("L", 17), ("RGB", (1, 2, 3))):
        im = Image.fromarray(picture(19, 21, 3, 255, 5), "RGB")
        im = im.quantize(16) if mode == "P" else im.convert(mode)
        p = os.path.join(tmp, f"pil_trns_{mode}.png")
        im.save(p, transparency=t)
        gen.append(p)
    big = os.path.join(tmp, "pil_big.png")  # level 0 over 64 KiB: Pillow writes several IDAT chunks
    Image.fromarray(picture(160, 200, 3, 255, 9), "RGB").save(big, compress_level=0)
    gen.append(big)
    idats = open(big, "rb").read().count(b"IDAT")
    got = decode(fast, gen, tmp)
    wrong = [f"{os.path.basename(f)}: {ln}" for f, (ln, pix) in zip(gen, got) if not same(pillow(f), pix)]
    res.check(f"{len(gen)} files Pillow writes (modes 1 L LA P RGB RGBA I;16, levels 0/1/9, P of 1-8 bits, tRNS, "
              f"{idats} IDAT chunks) decode as Pillow reads them", not wrong and idats > 1, "; ".join(wrong[:5]))

    # (c) files made here
    made = {}
    for ctype, depths in ((0, (1, 2, 4, 8, 16)), (2, (8, 16)), (3, (1, 2, 4, 8)), (4, (8, 16)), (6, (8, 16))):
        for depth in depths:
            for inter in (False, True):
                s = SAMPLES[ctype]
                maxval = (1 << depth) - 1
                a = picture(13 + depth, 11 + ctype, s, maxval, depth * 10 + ctype)
                kw = {}
                if ctype == 3:
                    n = min(256, 1 << depth)
                    kw["plte"] = np.random.default_rng(depth).integers(0, 256, 3 * n).tolist()
                    kw["trns"] = bytes(range(0, 256, 256 // n))[:n // 2]
                name = f"c{ctype}_d{depth}_{'adam7' if inter else 'plain'}"
                made[name] = make_png(a, depth, ctype, inter, **kw)
    a = picture(30, 40, 3, 255, 3)
    made["filter_each_0to4"] = make_png(a, 8, 2, pick=lambda y: y % 5)
    for f in range(5):
        made[f"filter_all_{f}"] = make_png(a, 8, 2, pick=lambda y, f=f: f)
    made["deflate_stored"] = make_png(a, 8, 2, level=0)
    made["deflate_fixed"] = make_png(a, 8, 2, level=6, strategy=zlib.Z_FIXED)
    made["deflate_dynamic"] = make_png(a, 8, 2, level=9)
    made["deflate_rle"] = make_png(a, 8, 2, level=6, strategy=zlib.Z_RLE)
    made["idat_one_byte_each"] = make_png(a, 8, 2, split=1)
    made["idat_seven_bytes_each_adam7"] = make_png(picture(9, 10, 4, 65535, 1), 16, 6, True, split=7)
    made["no_iend"] = make_png(a, 8, 2, iend=False)
    made["ancillary_chunks_before_idat"] = make_png(a, 8, 2, extra=chunk(b"gAMA", struct.pack(">I", 45455))
                                                    + chunk(b"sBIT", b"\x05\x06\x05") + chunk(b"zzZz", b"private"))
    pal = np.random.default_rng(4).integers(0, 256, 3 * 5).tolist()
    made["palette_index_past_plte"] = make_png(picture(8, 40, 1, 255, 2), 8, 3, plte=pal)
    made["palette4_index_past_plte"] = make_png(picture(8, 40, 1, 15, 2), 4, 3, plte=pal, trns=b"\x00\x80")
    paths = []
    for name, data in made.items():
        p = os.path.join(tmp, name + ".png")
        open(p, "wb").write(data)
        paths.append(p)
    got = decode(fast, paths, tmp)
    wrong = []
    for p, (ln, pix) in zip(paths, got):
        try:
            ref = pillow(p)
        except Exception as e:
            wrong.append(f"{os.path.basename(p)}: Pillow: {e}")
            continue
        if not same(ref, pix):
            wrong.append(f"{os.path.basename(p)}: {ln}")
    res.check(f"{len(paths)} files made here (16-bit RGB/RGBA/LA, Adam7 of every type and depth, each filter, "
              "stored/fixed/dynamic blocks, 1-byte IDATs, no IEND, palette index past PLTE) equal Pillow",
              not wrong, "; ".join(wrong[:5]))

    # a real photo as PNG (tests/data/images/photos)
    photo = os.path.join(PHOTOS, "chelsea.png")
    ln, pix = decode(fast, [photo], tmp)[0]
    res.check("chelsea.png (a photo) equals Pillow", same(pillow(photo), pix), ln)

    # the decoder is picked by the first bytes, not the name
    disguised = os.path.join(tmp, "really_a_png.jpg")
    open(disguised, "wb").write(made["c2_d8_plain"])
    jpg_named_png = os.path.join(tmp, "really_a_jpeg.png")
    open(jpg_named_png, "wb").write(open(os.path.join(PHOTOS, "rocket.jpg"), "rb").read())
    got = decode(fast, [disguised, jpg_named_png], tmp)
    res.check("a PNG named .jpg and a JPEG named .png decode by their signatures",
              same(pillow(disguised), got[0][1]) and same(np.asarray(Image.open(jpg_named_png).convert("RGB")), got[1][1]),
              f"{got[0][0]}; {got[1][0]}")

    # an eXIf chunk's orientation is applied as ImageOps.exif_transpose applies it (as for a JPEG),
    # in both byte orders, and not with ignore_orientation
    from PIL import ImageOps
    rot, plain_refs = [], []
    base = picture(9, 14, 3, 255, 11)
    for v in range(1, 9):
        le = v % 2 == 0
        e = "<" if le else ">"
        tiff = (b"II" if le else b"MM") + struct.pack(e + "HI", 42, 8) + struct.pack(e + "H", 1) + \
            struct.pack(e + "HHI", 0x0112, 3, 1) + struct.pack(e + "HH", v, 0) + struct.pack(e + "I", 0)
        p = os.path.join(tmp, f"exif_{v}.png")
        open(p, "wb").write(make_png(base, 8, 2, extra=chunk(b"eXIf", tiff)))
        rot.append(p)
    got = decode(fast, rot, tmp)
    wrong = [f"{os.path.basename(p)}: {ln}" for p, (ln, pix) in zip(rot, got)
             if not same(np.asarray(ImageOps.exif_transpose(Image.open(p)).convert("RGB")), pix)]
    got = decode(fast, rot, tmp, "--ignore-orientation")
    wrong += [f"{os.path.basename(p)} ignored: {ln}" for p, (ln, pix) in zip(rot, got) if not same(pillow(p), pix)]
    res.check("eXIf orientations 1-8 applied as ImageOps.exif_transpose, none with ignore_orientation", not wrong,
              "; ".join(wrong[:4]))

    # max_pixels at the boundary, from IHDR alone
    f32 = os.path.join(SUITE, "basn2c08.png")
    over = decode(fast, [f32], tmp, "--max-pixels", "1023")[0][0]
    at = decode(fast, [f32], tmp, "--max-pixels", "1024")[0][0]
    res.check("a 32x32 PNG: refused at max_pixels 1023 (LMV_ERR_LIMIT, naming max_pixels), decoded at 1024",
              over.startswith("ERROR LMV_ERR_LIMIT") and "max_pixels" in over and at.startswith("OK"), f"{over}; {at}")

    # LEMEVIT_NO_PNG leaves the decoder out: the by-signature loader then says so
    src = os.path.join(tmp, "no_png.c")
    open(src, "w").write('#define LEMEVIT_IMPLEMENTATION\n#define LEMEVIT_NO_PNG\n#include "%s"\n#include <stdio.h>\n'
                         'int main(void) {\n    static const unsigned char png[8] = {0x89, 0x50, 0x4E, 0x47, 13, 10, 26, 10};\n'
                         '    lmv_image img;\n    lmv_error err;\n    lmv_result r = lmv_image_load_memory(png, 8, NULL, &img, &err);\n'
                         '    printf("%%s %%s\\n", r == LMV_ERR_UNSUPPORTED ? "UNSUPPORTED" : "OTHER", err.message);\n'
                         '    return 0;\n}\n'
                         % os.path.join(ROOT, "lemevit.h").replace("\\", "/"))
    exe = os.path.join(tmp, "no_png")
    p = subprocess.run(["gcc", "-std=c99", "-Wall", "-Wextra", "-pedantic", "-Werror", src, "-o", exe, "-lm"],
                       capture_output=True, text=True)
    out = subprocess.run([exe], capture_output=True, text=True).stdout if p.returncode == 0 else p.stderr[-300:]
    res.check("built with LEMEVIT_NO_PNG: a PNG gives LMV_ERR_UNSUPPORTED naming the macro",
              out.startswith("UNSUPPORTED ") and "LEMEVIT_NO_PNG" in out, out.strip())

    # (d) corrupt files: each refused with its own code and sentence, also under ASan+UBSan
    good = made["c2_d8_plain"]
    bad = {}
    i = good.index(b"IDAT") + 20
    bad["bad_crc"] = (good[:i] + bytes([good[i] ^ 1]) + good[i + 1:], "LMV_ERR_IMAGE", "CRC of chunk IDAT")

    def with_idat(z, ihdr=None, last=b""):
        head = good[:good.index(b"IDAT") - 4]
        if ihdr is not None:
            head = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
        return head + chunk(b"IDAT", z) + last + chunk(b"IEND", b"")
    zgood = zlib.decompress(good[good.index(b"IDAT") + 4:good.index(b"IDAT") + 4 + struct.unpack(
        ">I", good[good.index(b"IDAT") - 4:good.index(b"IDAT")])[0]])
    z = zlib.compress(zgood)
    bad["bad_zlib_header"] = (with_idat(b"\x79" + z[1:]), "LMV_ERR_IMAGE", "bad zlib header")
    bad["bad_block_type"] = (with_idat(b"\x78\x9c\x07" + z[3:]), "LMV_ERR_IMAGE", "block type 3")
    bad["bad_adler32"] = (with_idat(z[:-1] + bytes([z[-1] ^ 0x55])), "LMV_ERR_IMAGE", "Adler-32")
    bad["zlib_cut_short"] = (with_idat(z[:len(z) // 2]), "LMV_ERR_IMAGE", "truncated PNG")
    bad["too_little_data"] = (with_idat(zlib.compress(zgood[:-40])), "LMV_ERR_IMAGE", "truncated PNG")
    bad["too_much_data"] = (with_idat(zlib.compress(zgood + b"\0" * 100)), "LMV_ERR_IMAGE", "more bytes than the image")
    bad["filter_type_5"] = (with_idat(zlib.compress(b"\x05" + zgood[1:])), "LMV_ERR_IMAGE", "filter type 5")
    bad["file_cut_in_a_chunk"] = (good[:len(good) - 30], "LMV_ERR_IMAGE", "truncated PNG")
    bad["file_cut_after_ihdr"] = (good[:33], "LMV_ERR_IMAGE", "truncated PNG")
    bad["unknown_critical_chunk"] = (good[:33] + chunk(b"ABCD", b"x") + good[33:], "LMV_ERR_UNSUPPORTED", "ABCD")
    bad["palette_without_plte"] = (with_idat(z, struct.pack(">IIBBBBB", 1, 1, 8, 3, 0, 0, 0)), "LMV_ERR_IMAGE", "PLTE")
    bad["huge_2^31-1_square"] = (with_idat(z, struct.pack(">IIBBBBB", 2**31 - 1, 2**31 - 1, 8, 2, 0, 0, 0)),
                                 "LMV_ERR_LIMIT", "max_pixels")
    bad["width_2^31"] = (with_idat(z, struct.pack(">IIBBBBB", 2**31, 1, 8, 2, 0, 0, 0)), "LMV_ERR_IMAGE", "2^31")
    # decompression bombs: a 1x1 image with 4 MiB of zeros behind it (4 KiB compressed), and a
    # 12000x12000 image within max_pixels but over max_memory, refused before anything is allocated
    bomb = zlib.compress(b"\0" * (4 << 20), 9)
    bad["bomb_1x1"] = (with_idat(bomb, struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)), "LMV_ERR_IMAGE",
                       "more bytes than the image")
    bad["bomb_12000x12000"] = (with_idat(zlib.compress(b"\0" * (1 << 20), 9), struct.pack(">IIBBBBB", 12000, 12000, 8, 2,
                                                                                         0, 0, 0)),
                               "LMV_ERR_LIMIT", "max_memory")
    paths = []
    for name, (data, _, _) in bad.items():
        p = os.path.join(tmp, f"bad_{name}.png")
        open(p, "wb").write(data)
        paths.append(p)
    for tool, what in ((fast, ""), (san, " (ASan+UBSan)")):
        got = decode(tool, paths, tmp, "--max-memory", str(64 << 20))
        wrong = [f"{name}: {ln}" for (name, (_, code, words)), (ln, _) in zip(bad.items(), got)
                 if not (ln.startswith("ERROR " + code + " ") and words in ln)]
        res.check(f"{len(bad)} corrupt files (bad CRC, zlib, Adler-32, filter; truncated; too little or too much "
                  f"data; huge sizes; decompression bombs) refused with their code and sentence{what}",
                  not wrong, "; ".join(wrong[:4]))
    # with no pixel limit at all, sizes whose bytes do not fit size_t are still refused, not wrapped
    huge = os.path.join(tmp, "huge_rgba16.png")
    open(huge, "wb").write(with_idat(z, struct.pack(">IIBBBBB", 2**31 - 1, 2**31 - 1, 16, 6, 0, 0, 0)))
    for tool, what in ((fast, ""), (san, " (ASan+UBSan)")):
        ln = decode(tool, [huge], tmp, "--max-pixels", str(2**64 - 1))[0][0]
        res.check(f"max_pixels = SIZE_MAX: a (2^31-1)^2 16-bit RGBA PNG is LMV_ERR_LIMIT, too large for this machine{what}",
                  ln.startswith("ERROR LMV_ERR_LIMIT") and "too large for this machine" in ln, ln)

    suite_x = [os.path.join(SUITE, n) for n in names if n.startswith("x")]
    got = decode(san, suite_x + files[:20], tmp)
    res.check("PngSuite's x*.png files and 20 valid ones run clean under ASan+UBSan",
              all(ln.startswith("ERROR") for ln, _ in got[:len(suite_x)])
              and all(ln.startswith("OK") for ln, _ in got[len(suite_x):]), "; ".join(ln for ln, _ in got[:3]))

    # every prefix of a small interlaced file is refused without a crash (or leak) under ASan
    small = made["c3_d2_adam7"]
    cuts = []
    for n in range(0, len(small) - 12):
        p = os.path.join(tmp, f"cut_{n}.png")
        open(p, "wb").write(small[:n])
        cuts.append(p)
    got = decode(san, cuts, tmp)
    res.check(f"all {len(cuts)} truncations of a file are refused cleanly under ASan+UBSan",
              all(ln.startswith("ERROR LMV_ERR_IMAGE") for ln, _ in got),
              "; ".join(sorted(set(ln for ln, _ in got if not ln.startswith("ERROR LMV_ERR_IMAGE"))))[:400])
    res.finish()


if __name__ == "__main__":
    main()
