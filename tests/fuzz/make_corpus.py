"""Make the seed corpora of the fuzz harnesses (run once; the files are committed):
corpus_lmv/ three tiny models, one per family (ViT, Swin, LeMeViT), converted by tools/convert.py,
kept small so that every mutation still runs fast; corpus_npy/ a few .npy files numpy writes.

    /usr/bin/python3 tests/fuzz/make_corpus.py"""
import os
import sys

import numpy as np
import torch
import torchvision

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from common import convert, tmpdir  # noqa: E402
from models import lemevit_ref as L  # noqa: E402
from models import timm_vit  # noqa: E402


def main():
    d = tmpdir()
    out = os.path.join(HERE, "corpus_lmv")
    vit = timm_vit.randomize_(timm_vit.VisionTransformer(img_size=16, patch_size=8, embed_dim=16, depth=1, num_heads=2,
                                                         num_classes=3), seed=1).eval()
    torch.save(vit.state_dict(), os.path.join(d, "vit.pth"))
    convert(os.path.join(d, "vit.pth"), os.path.join(out, "vit_tiny.lmv"), "--labels", "none", "--num-heads", "2")
    swin = timm_vit.randomize_(torchvision.models.swin_transformer.SwinTransformer(
        patch_size=[4, 4], embed_dim=8, depths=[1, 1], num_heads=[1, 2], window_size=[2, 2], num_classes=3), seed=2)
    torch.save(swin.state_dict(), os.path.join(d, "swin.pth"))
    convert(os.path.join(d, "swin.pth"), os.path.join(out, "swin_tiny.lmv"), "--img-size", "16",
            "--labels", "none")
    lm = L.randomize_(L.build(depth=[1, 1], embed_dim=[16, 16], mlp_ratios=1, attn_type=["D", "S"], queries_len=4, head_dim=16,
                              num_classes=3), seed=3).eval()
    torch.save(lm.state_dict(), os.path.join(d, "lemevit.pth"))
    convert(os.path.join(d, "lemevit.pth"), os.path.join(out, "lemevit_tiny.lmv"), "--img-size", "32", "--set", "lemevit.head_dim=16",
            "--labels", "none")
    npy = os.path.join(HERE, "corpus_npy")
    np.save(os.path.join(npy, "nchw.npy"), np.arange(2 * 3 * 2 * 2, dtype="<f4").reshape(2, 3, 2, 2))
    np.save(os.path.join(npy, "scalar.npy"), np.array(1.5, dtype="<f4"))
    np.save(os.path.join(npy, "vector.npy"), np.ones(5, dtype="<f4"))
    np.save(os.path.join(npy, "empty.npy"), np.zeros((0, 3), dtype="<f4"))
    np.save(os.path.join(npy, "float64.npy"), np.ones((2, 2), dtype="<f8"))
    np.lib.format.write_array(open(os.path.join(npy, "v2.npy"), "wb"), np.ones((1, 2), dtype="<f4"), version=(2, 0))
    make_png_corpus()
    for f in sorted(os.listdir(out)):
        print(f, os.path.getsize(os.path.join(out, f)))


def make_png_corpus():
    """corpus_png/: small PNGs of every colour type and depth, interlaced or not, with stored, fixed
    and dynamic deflate blocks and the data split over several IDAT chunks."""
    from test_png import make_png, picture  # noqa: E402
    import zlib
    out = os.path.join(HERE, "corpus_png")
    os.makedirs(out, exist_ok=True)
    cases = [(0, 1, False, 6), (0, 2, True, 9), (0, 4, False, 1), (0, 16, True, 6), (2, 8, False, 0), (2, 16, True, 6),
             (3, 1, True, 6), (3, 4, False, 9), (3, 8, True, 0), (4, 8, False, 6), (4, 16, True, 9), (6, 8, True, 6),
             (6, 16, False, 1)]
    for i, (ctype, depth, inter, level) in enumerate(cases):
        s = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[ctype]
        kw = {}
        if ctype == 3:
            n = 1 << depth
            kw["plte"] = list(range(3 * n)) if n < 86 else [(7 * k) % 256 for k in range(3 * n)]
            kw["trns"] = b"\x00\x80"
        data = make_png(picture(7 + i % 5, 9 + i % 3, s, (1 << depth) - 1, i), depth, ctype, inter, level=level,
                        strategy=zlib.Z_FIXED if i % 4 == 1 else zlib.Z_DEFAULT_STRATEGY, split=40 if i % 3 == 0 else None,
                        **kw)
        name = f"c{ctype}_d{depth}{'_adam7' if inter else ''}_z{level}.png"
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
