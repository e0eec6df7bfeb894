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
    for f in sorted(os.listdir(out)):
        print(f, os.path.getsize(os.path.join(out, f)))


if __name__ == "__main__":
    main()
