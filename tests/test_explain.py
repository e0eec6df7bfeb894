"""Pictures of attention: `lmv explain` and the image functions behind it.

- The PNG encoder (lmv_image_png_size / lmv_image_encode_png / lmv_image_write_png): crafted gray
  and RGB images, one large enough for several stored deflate blocks, read back by Pillow pixel for
  pixel, each chunk's CRC-32 and the zlib Adler-32 checked by zlib; a buffer one byte short is
  refused and left untouched (ASan build).
- lmv_image_overlay_heatmap: the pixels equal a numpy computation of the documented formula on
  crafted maps; bad arguments are refused.
- The maps `lmv explain --map` writes equal the PyTorch references' attention: a timm-style ViT
  (class-token row, the mean over patch queries, one head, rollout) and a LeMeViT (meta tokens over
  image tokens in cross and dual-cross blocks, one meta token, a standard block's image queries).
- The picture of the bundled CIFAR-10 model on a real photo: its size, Pillow reads it, its pixels
  equal the overlay numpy computes from the map over the crop torchvision makes, and the hottest
  cell of the picture is the map's maximum.
- Usage errors and unsupported models say what to do."""
import os
import shutil
import struct
import sys
import zlib

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import LMV, ROOT, Results, convert, run, tmpdir  # noqa: E402
from models import lemevit_ref as L  # noqa: E402
from models import timm_vit  # noqa: E402

torch.set_num_threads(2)
res = Results()
TOOL = os.path.join(ROOT, "tests", "explain_tool.c")
CAT = os.path.join(ROOT, "examples", "images", "cat.jpg")
CAT32 = os.path.join(ROOT, "examples", "images", "cat_32x32.jpg")
BUNDLED = os.path.join(ROOT, "examples", "lemevit_cifar10.lmv")
SAN = ["-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]


def overlay_ref(base, m, alpha):
    """lmv_image_overlay_heatmap's documented arithmetic in numpy float64, in the same order."""
    H, W = base.shape[:2]
    mh, mw = m.shape
    m = m.astype(np.float64)
    lo, hi = m.min(), m.max()

    def axis(n, size):
        s = np.clip((np.arange(n) + 0.5) * size / n - 0.5, 0, size - 1)
        i0 = s.astype(np.int64)
        return i0, np.minimum(i0 + 1, size - 1), s - i0
    y0, y1, fy = axis(H, mh)
    x0, x1, fx = axis(W, mw)
    fy, fx = fy[:, None], fx[None, :]
    a, b = m[y0][:, x0], m[y0][:, x1]
    c, d = m[y1][:, x0], m[y1][:, x1]
    v = (1.0 - fy) * ((1.0 - fx) * a + fx * b) + fy * ((1.0 - fx) * c + fx * d)
    v = (v - lo) / (hi - lo) if hi > lo else np.zeros_like(v)
    al = float(np.float32(alpha))
    out = np.empty(base.shape, np.uint8)
    for ch in range(3):
        col = np.clip(3.0 * v - ch, 0.0, 1.0)
        out[..., ch] = np.floor((1.0 - al) * base[..., ch] + al * 255.0 * col + 0.5)
    return out


def heat(pic, base, alpha=0.5):
    """What the overlay added at each pixel, summed over the channels: rises with the map's value."""
    return pic.astype(np.float64).sum(-1) - (1.0 - alpha) * base.astype(np.float64).sum(-1)


def png_chunks(data):
    """(type, body, crc ok) of every chunk of a PNG file."""
    out, pos = [], 8
    while pos < len(data):
        n, = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        crc, = struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])
        out.append((kind, body, zlib.crc32(kind + body) == crc))
        pos += 12 + n
    return out


def check_png(tool, d):
    rng = np.random.default_rng(11)
    cases = {"rgb 300x250 (several stored blocks)": rng.integers(0, 256, (250, 300, 3), dtype=np.uint8),
             "gray 1x1": np.array([[200]], np.uint8),
             "gray 7x3": rng.integers(0, 256, (3, 7), dtype=np.uint8),
             "rgb 1x200": rng.integers(0, 256, (200, 1, 3), dtype=np.uint8)}
    for name, a in cases.items():
        src, dst = os.path.join(d, "in.ppm" if a.ndim == 3 else "in.pgm"), os.path.join(d, "out.png")
        Image.fromarray(a).save(src)
        code, out, err = run([tool, "png", src, dst])
        f = out.split()
        if not res.check(f"png {name}: encoded", code == 0 and f[:1] == ["OK"], (out + err).strip()[-300:]):
            continue
        data = open(dst, "rb").read()
        chunks = png_chunks(data)
        im = Image.open(dst)
        im.load()
        res.check(f"png {name}: Pillow reads the same pixels, mode {'RGB' if a.ndim == 3 else 'L'}",
                  im.mode == ("RGB" if a.ndim == 3 else "L") and np.array_equal(np.asarray(im), a), f"{im.mode} {im.size}")
        res.check(f"png {name}: IHDR IDAT IEND, every CRC-32 right, zlib (Adler-32) inflates to the filtered rows",
                  [c[0] for c in chunks] == [b"IHDR", b"IDAT", b"IEND"] and all(c[2] for c in chunks) and
                  zlib.decompress(chunks[1][1]) == b"".join(b"\0" + row.tobytes() for row in a.reshape(a.shape[0], -1)),
                  str([(c[0], c[2]) for c in chunks]))
        res.check(f"png {name}: lmv_image_png_size is the file's size; lmv_image_write_png writes the same bytes",
                  int(f[1]) == len(data) and f[2] == "1", out.strip())
        res.check(f"png {name}: a buffer one byte short gives LMV_ERR_OUT_OF_MEMORY and is left untouched",
                  f[3:] == ["LMV_ERR_OUT_OF_MEMORY", "1"], out.strip())


def check_overlay(tool, d):
    rng = np.random.default_rng(12)
    base = rng.integers(0, 256, (45, 61, 3), dtype=np.uint8)
    src = os.path.join(d, "base.ppm")
    Image.fromarray(base).save(src)
    maps = {"random 5x7, alpha 0.5": (rng.standard_normal((5, 7)).astype(np.float32), 0.5),
            "random 8x3, alpha 0.3": (rng.random((8, 3)).astype(np.float32), 0.3),
            "1x1 (all equal)": (np.array([[2.5]], np.float32), 0.5),
            "larger than the image 90x70": (rng.random((90, 70)).astype(np.float32), 0.75)}
    for name, (m, alpha) in maps.items():
        mp, dst = os.path.join(d, "map.npy"), os.path.join(d, "over.ppm")
        np.save(mp, m)
        code, out, err = run([tool, "overlay", src, mp, str(alpha), dst])
        if not res.check(f"overlay {name}: done", code == 0 and out.strip() == "OK", (out + err).strip()[-300:]):
            continue
        got = np.asarray(Image.open(dst))
        want = overlay_ref(base, m, alpha)
        res.check(f"overlay {name}: every pixel equals numpy's computation", np.array_equal(got, want),
                  f"{int(np.sum(got != want))} values differ, max {int(np.abs(got.astype(int) - want).max())}")
    code, out, err = run([tool, "refusals"])
    lines = dict(ln.split(" ", 1) for ln in out.strip().splitlines())
    want = {"overlay-gray": "LMV_ERR_INVALID_ARGUMENT", "overlay-inf": "LMV_ERR_INVALID_ARGUMENT",
            "overlay-alpha": "LMV_ERR_INVALID_ARGUMENT", "overlay-zero-map": "LMV_ERR_INVALID_ARGUMENT",
            "overlay-null-map": "LMV_ERR_INVALID_ARGUMENT", "png-size-two-channels": "0",
            "encode-two-channels": "LMV_ERR_INVALID_ARGUMENT", "encode-null-buffer": "LMV_ERR_OUT_OF_MEMORY",
            "write-no-folder": "LMV_ERR_IO"}
    res.check("overlay and PNG refusals: a gray image, an infinite value, alpha 1.5, a 0-wide or NULL map, "
              "2 channels, no buffer, no folder", code == 0 and lines == want, (out + err).strip()[-400:])


def explain(*args):
    return run([LMV, "explain", *args])


def preprocessed(model, image, d):
    x = os.path.join(d, "x.npy")
    code, _, err = run([LMV, "preprocess", model, image, x])
    if code != 0:
        raise RuntimeError(err)
    return torch.from_numpy(np.load(x))


def vit_attention(m, x):
    """Every block's softmax probabilities [heads][T][T], from the block's own qkv (timm's formula)."""
    probs, inp = [], {}
    hooks = [b.register_forward_pre_hook(lambda mod, a, i=i: inp.__setitem__(i, a[0])) for i, b in enumerate(m.blocks)]
    with torch.no_grad():
        m(x)
        for i, blk in enumerate(m.blocks):
            B, N, C = inp[i].shape
            H = blk.attn.num_heads
            qkv = blk.attn.qkv(blk.norm1(inp[i])).reshape(B, N, 3, H, C // H).permute(2, 0, 3, 1, 4)
            probs.append(((qkv[0] * blk.attn.scale) @ qkv[1].transpose(-2, -1)).softmax(-1)[0].double().numpy())
    for h in hooks:
        h.remove()
    return probs


def check_vit(d):
    torch.manual_seed(60)
    m = timm_vit.randomize_(timm_vit.VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=3, num_heads=3,
                                                       num_classes=7), seed=60).eval()
    torch.save(m.state_dict(), os.path.join(d, "vit.pth"))
    model = os.path.join(d, "vit.lmv")
    convert(os.path.join(d, "vit.pth"), model, "--num-heads", "3", "--img-size", "32", "--resize", "36",
            "--interpolation", "bicubic", "--labels", "none")
    x = preprocessed(model, CAT, d)
    P = vit_attention(m, x)
    T = P[0].shape[1]
    roll = np.eye(T)
    for p in P:
        a = 0.5 * p.mean(0) + 0.5 * np.eye(T)
        roll = (a / a.sum(-1, keepdims=True)) @ roll
    cases = [("the class token of the last block, heads averaged", [], P[2].mean(0)[0, 1:]),
             ("--token patches --block blocks.1", ["--token", "patches", "--block", "blocks.1"], P[1].mean(0)[1:, 1:].mean(0)),
             ("--head 2 --block blocks.0", ["--head", "2", "--block", "blocks.0"], P[0][2, 0, 1:]),
             ("--rollout (blocks 0 to 2)", ["--rollout"], roll[0, 1:]),
             ("--rollout --token patches --block blocks.1", ["--rollout", "--token", "patches", "--block", "blocks.1"],
              None)]
    roll1 = np.eye(T)
    for p in P[:2]:
        a = 0.5 * p.mean(0) + 0.5 * np.eye(T)
        roll1 = (a / a.sum(-1, keepdims=True)) @ roll1
    cases[4] = (cases[4][0], cases[4][1], roll1[1:, 1:].mean(0))
    for name, opts, want in cases:
        png, mp = os.path.join(d, "vit.png"), os.path.join(d, "vit_map.npy")
        code, out, err = explain(model, CAT, png, "--map", mp, *opts)
        if not res.check(f"ViT {name}: lmv explain exits 0", code == 0, err.strip()[-300:]):
            continue
        got = np.load(mp)
        want = want.reshape(4, 4)
        diff = float(np.abs(got - want).max())
        res.check(f"ViT {name}: the 4x4 map equals PyTorch's attention", got.shape == (4, 4) and diff < 1e-5,
                  f"shape {got.shape}, max abs diff {diff:.1e}")
    # the picture: the crop the model saw (torchvision Resize(36, bicubic) + CenterCrop(32)), x7
    from torchvision import transforms
    crop = np.asarray(transforms.CenterCrop(32)(transforms.Resize(36, transforms.InterpolationMode.BICUBIC)(
        Image.open(CAT).convert("RGB"))))
    png, mp = os.path.join(d, "vit.png"), os.path.join(d, "vit_map.npy")
    code, out, err = explain(model, CAT, png, "--map", mp, "--alpha", "0.6")
    if code == 0:
        base = crop.repeat(7, 0).repeat(7, 1)
        pic = np.asarray(Image.open(png).convert("RGB"))
        want = overlay_ref(base, np.load(mp), 0.6)
        res.check("ViT picture: 224x224 (the 32-pixel crop x7), pixels equal the overlay of the map on "
                  "torchvision's crop", pic.shape == want.shape and np.array_equal(pic, want),
                  f"shape {pic.shape}" + ("" if pic.shape != want.shape else f", {int(np.sum(pic != want))} differ"))
        lines = out.strip().splitlines()
        res.check("ViT: the top 5 classes follow the picture's line, one per line", len(lines) == 6 and
                  all(ln.strip().endswith(tuple(f"class {i}" for i in range(7))) for ln in lines[1:]), out)


def lemevit_attention(m, x, i, j):
    """The softmax probabilities of block stages.i.j, in the order the block computes them."""
    saved, seen, active = L.scaled_dot_product_attention, [], [False]

    def recording(q, k, v, scale=None):
        if active[0]:
            sc = scale or q.shape[-1] ** -0.5
            seen.append((q @ k.transpose(-1, -2) * sc).softmax(dim=-1)[0].double().numpy())
        return saved(q, k, v, scale)
    hooks = [m.stages[i][j].register_forward_pre_hook(lambda mod, inp: active.__setitem__(0, True)),
             m.stages[i][j].register_forward_hook(lambda mod, inp, out: active.__setitem__(0, False))]
    L.scaled_dot_product_attention = recording
    try:
        with torch.no_grad():
            m(x)
    finally:
        L.scaled_dot_product_attention = saved
        for h in hooks:
            h.remove()
    return seen


def check_lemevit(d):
    m = L.randomize_(L.build(depth=[1, 1, 1, 2, 1], embed_dim=[32, 32, 64, 96, 128], attn_type=list("CDDSS"),
                             num_classes=5), seed=61).eval()
    torch.save(m.state_dict(), os.path.join(d, "lmt.pth"))
    model = os.path.join(d, "lmt.lmv")
    convert(os.path.join(d, "lmt.pth"), model, "--img-size", "64", "--labels", "none")
    x = preprocessed(model, CAT, d)
    cases = [("default: the last dual-cross block stages.2.0, meta tokens averaged", [], (2, 0), "c", None, None),
             ("--block stages.0.0 (cross) --token meta:3", ["--block", "stages.0.0", "--token", "meta:3"], (0, 0), "c", 3, None),
             ("--block stages.2.0 --head 1", ["--block", "stages.2.0", "--head", "1"], (2, 0), "c", None, 1),
             ("--block stages.3.1 (standard): image queries averaged", ["--block", "stages.3.1"], (3, 1), "x", None, None)]
    for name, opts, (i, j), which, meta, head in cases:
        seen = lemevit_attention(m, x, i, j)
        # cross blocks compute meta over image only; dual-cross and standard blocks image first, then meta
        a = seen[-1] if which == "c" else seen[0]
        a = a[head] if head is not None else a.mean(0)
        want = a[meta] if meta is not None else a.mean(0)
        side = int(round(np.sqrt(want.size)))
        png, mp = os.path.join(d, "lmt.png"), os.path.join(d, "lmt_map.npy")
        code, out, err = explain(model, CAT, png, "--map", mp, *opts)
        if not res.check(f"LeMeViT {name}: lmv explain exits 0", code == 0, err.strip()[-300:]):
            continue
        got = np.load(mp)
        ok = got.shape == (side, side)
        diff = float(np.abs(got - want.reshape(side, side)).max()) if ok else float("inf")
        res.check(f"LeMeViT {name}: the {side}x{side} map equals PyTorch's attention", ok and diff < 1e-5,
                  f"shape {got.shape}, max abs diff {diff:.1e}")


def check_bundled(d):
    """The bundled CIFAR-10 model on the 32x32 cat photo: the picture and its map."""
    png, mp = os.path.join(d, "cifar.png"), os.path.join(d, "cifar_map.npy")
    code, out, err = explain(BUNDLED, CAT32, png, "--map", mp, "--block", "stages.1.1")
    if not res.check("bundled model: lmv explain exits 0", code == 0, err.strip()[-300:]):
        return
    im = Image.open(png)
    im.load()
    res.check("bundled model: a 224x224 RGB PNG that Pillow reads", im.size == (224, 224) and im.mode == "RGB",
              f"{im.size} {im.mode}")
    m = np.load(mp)
    base = np.asarray(Image.open(CAT32).convert("RGB")).repeat(7, 0).repeat(7, 1)  # Resize(32) + CenterCrop(32): as is
    pic = np.asarray(im)
    res.check("bundled model: the pixels equal the overlay numpy computes from the map over the photo",
              np.array_equal(pic, overlay_ref(base, m, 0.5)), f"{int(np.sum(pic != overlay_ref(base, m, 0.5)))} differ")
    cell = 224 // m.shape[0]
    h = heat(pic, base).reshape(m.shape[0], cell, m.shape[1], cell).mean((1, 3))
    res.check("bundled model: the hottest cell of the picture is the map's maximum",
              np.unravel_index(np.argmax(h), h.shape) == np.unravel_index(np.argmax(m), m.shape),
              f"picture {np.unravel_index(np.argmax(h), h.shape)}, map {np.unravel_index(np.argmax(m), m.shape)}")
    docs = os.path.join(ROOT, "examples", "images", "explain_cat_cifar10.png")
    again = os.path.join(d, "docs.png")
    code, _, err = explain(BUNDLED, CAT32, again, "--block", "stages.1.1", "--scale", "4")
    res.check("the README's picture (examples/images/explain_cat_cifar10.png) is what its command makes, byte for byte",
              code == 0 and open(again, "rb").read() == open(docs, "rb").read(), err.strip())
    lines = out.strip().splitlines()
    res.check("bundled model: the top class of the cat photo is 'cat', with 5 lines of classes",
              len(lines) == 6 and lines[1].split()[-1] == "cat", out)


def check_errors(d):
    png = os.path.join(d, "e.png")
    for opts, code_want, words, what in [
            (["--token", "elbow"], 2, "--token", "an unknown --token"),
            (["--token", "cls"], 2, "LeMeViT", "--token cls on a LeMeViT"),
            (["--rollout"], 2, "--rollout", "--rollout on a LeMeViT"),
            (["--token", "meta:16"], 2, "16 meta tokens", "a meta token past the last"),
            (["--head", "9"], 2, "heads", "a head past the last"),
            (["--block", "stages.9.0"], 1, "give a block", "a block the model lacks"),
            (["--block", "stages.3.0", "--token", "meta:1"], 2, "standard-attention", "a meta token in a standard block"),
            (["--alpha", "2"], 2, "--alpha", "alpha 2"),
            (["--rollout", "--head", "0"], 2, "drop --head", "--rollout with --head")]:
        code, out, err = explain(BUNDLED, CAT32, png, *opts)
        res.check(f"lmv explain with {what}: exit {code_want}, says so", code == code_want and words in err,
                  f"exit {code}, {err.strip()!r}")
    code, out, err = explain(BUNDLED, CAT32, os.path.join(d, "no", "such", "x.png"))
    res.check("lmv explain into a missing folder: exit 1, names the path", code == 1 and "no/such/x.png" in err, err.strip())
    code, out, err = explain(BUNDLED, CAT32)
    res.check("lmv explain without OUT.png: exit 2, usage", code == 2 and "OUT.png" in err, err.strip())


def check_swin(d):
    from models import swin_ref
    m = swin_ref.SwinTransformer(img_size=32, patch_size=2, window_size=4, embed_dim=16, depths=(1, 1), num_heads=(1, 2),
                                 num_classes=3).eval() if hasattr(swin_ref, "SwinTransformer") else None
    if m is None:
        res.skip("Swin refusal", "tests/models/swin_ref.py has no SwinTransformer")
        return
    torch.save(m.state_dict(), os.path.join(d, "swin.pth"))
    model = os.path.join(d, "swin.lmv")
    try:
        convert(os.path.join(d, "swin.pth"), model, "--labels", "none")
    except RuntimeError as e:
        res.skip("Swin refusal", str(e)[:200])
        return
    code, out, err = explain(model, CAT, os.path.join(d, "s.png"))
    res.check("lmv explain on a Swin model: exit 1, says attention maps are captured for ViT and LeMeViT",
              code == 1 and "ViT and LeMeViT" in err, f"exit {code}, {err.strip()!r}")


def main():
    d = tmpdir()
    tool, tool_san = os.path.join(d, "explain_tool"), os.path.join(d, "explain_tool_san")
    warn = ["-std=c99", "-Wall", "-Wextra", "-pedantic", "-Werror"]
    code, _, err = run(["gcc", *warn, "-O2", "-o", tool, TOOL, "-lm"])
    res.check("explain_tool builds (gcc -O2, no warning)", code == 0, err[-400:])
    cc = "clang" if shutil.which("clang") else "gcc"
    code2, _, err2 = run([cc, *warn, *SAN, "-o", tool_san, TOOL, "-lm"])
    res.check(f"explain_tool builds ({cc} ASan+UBSan, no warning)", code2 == 0, err2[-400:])
    if code == 0:
        check_png(tool, d)
        check_overlay(tool, d)
    if code2 == 0:
        check_png(tool_san, d)
    check_vit(d)
    check_lemevit(d)
    check_bundled(d)
    check_errors(d)
    check_swin(d)


main()
res.finish()
