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
- Swin: the raw window maps and window slots of the trace API (`lmv run --attention`) equal the
  reference's softmax outputs and its roll + pad + partition, and the `lmv explain` maps equal the
  reference's per-window attention laid back on the image, in shifted and unshifted blocks, with
  and without padding (timm >= 0.9.6 and Microsoft-era models), the default block included.
- The picture of the bundled CIFAR-10 model on a real photo: its size, Pillow reads it, its pixels
  equal the overlay numpy computes from the map over the crop torchvision makes, and the hottest
  cell of the picture is the map's maximum.
- Usage errors say what to do."""
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
from models import swin_ref  # noqa: E402
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


def swin_block_attention(m, i, j, x):
    """Block layers.i.j of the reference: its softmax probabilities [windows][heads][N][N] (image 0)
    and which token of the stage's H x W map each window slot holds (-1: padding), found by running
    the token indices through the block's own roll, pad and window partition."""
    blk = m.layers[i].blocks[j]
    seen = []
    hook = blk.attn.softmax.register_forward_hook(lambda mod, inp, out: seen.append(out.double().numpy()))
    try:
        with torch.no_grad():
            m(x)
    finally:
        hook.remove()
    H, W = blk.input_resolution
    idx = torch.arange(1, H * W + 1, dtype=torch.float64).view(1, H, W, 1)
    if any(blk.shift_size):
        idx = torch.roll(idx, shifts=(-blk.shift_size[0], -blk.shift_size[1]), dims=(1, 2))
    wh, ww = blk.window_size
    idx = torch.nn.functional.pad(idx, (0, 0, 0, (ww - W % ww) % ww, 0, (wh - H % wh) % wh))
    slots = swin_ref.window_partition(idx, blk.window_size).reshape(-1, wh * ww).numpy() - 1
    return seen[0], slots, (H, W)


def swin_map(p, slots, hw, head=None):
    """The documented Swin map: each token's received attention averaged over its window's image
    queries (and over the heads, or one head), laid back on the H x W map."""
    out = np.full(hw[0] * hw[1], np.nan)
    a = p[:, head:head + 1] if head is not None else p
    for w in range(p.shape[0]):
        real = slots[w] >= 0
        recv = a[w][:, real, :].mean(1).mean(0)   # [N]: mean over image queries, then heads
        out[slots[w][real].astype(int)] = recv[real]
    return out.reshape(hw)


def check_swin(d):
    """Swin: the raw window maps (`lmv run --trace --attention`) and the `lmv explain` maps against
    the reference, in a timm >= 0.9.6 model whose stages are padded (18x18 and 9x9 in 4-windows,
    shifted by 2) and a Microsoft-era model whose last stage is one window (the default block is
    then the stage before it)."""
    cases = {"timm096": dict(img_size=36, patch_size=2, window_size=4, embed_dim=16, depths=(2, 2), num_heads=(2, 4),
                             num_classes=3),
             "ms": dict(img_size=40, patch_size=2, window_size=5, embed_dim=16, depths=(2, 2, 1), num_heads=(2, 2, 4),
                        num_classes=3)}
    for era, kw in cases.items():
        m = swin_ref.randomize_(swin_ref.build(era, **kw), seed=62).eval()
        pth, model = os.path.join(d, f"swin_{era}.pth"), os.path.join(d, f"swin_{era}.lmv")
        torch.save(m.state_dict(), pth)
        convert(pth, model, "--labels", "none", "--img-size", str(kw["img_size"]), "--resize", str(kw["img_size"] + 4),
                "--interpolation", "bicubic")
        x = preprocessed(model, CAT, d)
        blocks = [(i, j) for i, n in enumerate(kw["depths"]) for j in range(n)]
        if era == "timm096":
            trace = os.path.join(d, "swin_trace")
            np.save(os.path.join(d, "swin_x.npy"), x.numpy())
            for i, j in [(0, 0), (0, 1), (1, 1)]:
                name = f"layers.{i}.blocks.{j}"
                p, slots, hw = swin_block_attention(m, i, j, x)
                code, out, err = run([LMV, "run", model, os.path.join(d, "swin_x.npy"), os.path.join(d, "swin_y.npy"),
                                      "--trace", trace, "--attention", name])
                if not res.check(f"Swin {era} {name}: lmv run --attention exits 0", code == 0, err.strip()[-300:]):
                    continue
                files = [os.path.join(trace, name + e) for e in (".attn.npy", ".attn_tokens.npy")]
                if not res.check(f"Swin {era} {name}: the trace has {name}.attn and {name}.attn_tokens",
                                 all(os.path.exists(f) for f in files), str(sorted(os.listdir(trace)))[:300]):
                    continue
                got, tok = np.load(files[0]), np.load(files[1])
                ok = got.shape == p.shape
                diff = float(np.abs(got - p).max()) if ok else float("inf")
                res.check(f"Swin {era} {name} ({hw[0]}x{hw[1]} in {p.shape[0]} windows, shift "
                          f"{m.layers[i].blocks[j].shift_size}): .attn [windows][heads][N][N] equals the reference's "
                          "softmax", ok and diff < 1e-5, f"shape {got.shape} vs {p.shape}, max abs diff {diff:.1e}")
                res.check(f"Swin {era} {name}: .attn_tokens equals the tokens the reference's roll + pad + partition put "
                          "in each slot (-1 padding)", tok.shape == slots.shape and np.array_equal(tok, slots),
                          f"shape {tok.shape} vs {slots.shape}")
        last = [b for b in blocks if b[0] == len(kw["depths"]) - 1][-1]
        default = last if era == "timm096" else (1, 1)   # ms: the last stage (5x5) is one window
        opts = [("default block", [], default, None),
                ("--block layers.0.blocks.1 --head 1 (shifted)", ["--block", "layers.0.blocks.1", "--head", "1"], (0, 1), 1),
                ("--block layers.0.blocks.0 (not shifted)", ["--block", "layers.0.blocks.0"], (0, 0), None)]
        for name, o, (i, j), head in opts:
            p, slots, hw = swin_block_attention(m, i, j, x)
            want = swin_map(p, slots, hw, head)
            png, mp = os.path.join(d, "swin.png"), os.path.join(d, "swin_map.npy")
            code, out, err = explain(model, CAT, png, "--map", mp, *o)
            if not res.check(f"Swin {era} {name}: lmv explain exits 0", code == 0, err.strip()[-300:]):
                continue
            got = np.load(mp)
            ok = got.shape == want.shape
            diff = float(np.abs(got - want).max()) if ok else float("inf")
            res.check(f"Swin {era} {name} = layers.{i}.blocks.{j}: the {hw[0]}x{hw[1]} map equals the reference's "
                      "attention, window partition and shift undone", ok and diff < 1e-5 and f"layers.{i}.blocks.{j}" in out,
                      f"shape {got.shape} vs {want.shape}, max abs diff {diff:.1e}; {out.strip()[:200]}")
        if era == "timm096" and code == 0:   # the picture of the last case: the map over torchvision's crop, x7
            from torchvision import transforms
            crop = np.asarray(transforms.CenterCrop(36)(transforms.Resize(40, transforms.InterpolationMode.BICUBIC)(
                Image.open(CAT).convert("RGB"))))
            base = crop.repeat(7, 0).repeat(7, 1)
            im = Image.open(png)
            im.load()
            pic = np.asarray(im.convert("RGB"))
            want = overlay_ref(base, np.load(mp), 0.5)
            res.check("Swin picture: a 252x252 RGB PNG (the 36-pixel crop x7) that Pillow reads, its pixels the overlay "
                      "of the map on torchvision's crop", im.size == (252, 252) and im.mode == "RGB" and
                      pic.shape == want.shape and np.array_equal(pic, want), f"{im.size} {im.mode}")
    model = os.path.join(d, "swin_ms.lmv")
    for o, code_want, words, what in [(["--token", "cls"], 2, "--token", "--token"),
                                      (["--rollout"], 2, "--rollout", "--rollout"),
                                      (["--head", "4"], 2, "heads", "a head past the last"),
                                      (["--block", "layers.5.blocks.0"], 1, "layers.S.blocks.J", "a block it lacks")]:
        code, out, err = explain(model, CAT, os.path.join(d, "e.png"), *o)
        res.check(f"lmv explain on a Swin with {what}: exit {code_want}, says so", code == code_want and words in err,
                  f"exit {code}, {err.strip()!r}")


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
