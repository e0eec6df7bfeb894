"""Make the stand-in firmware model: a small random LeMeViT (tests/models/lemevit_ref.py, seeded)
for 32x32 CIFAR-10 inputs, converted by tools/convert.py with the CIFAR-10 class names.

    make_firmware_model.py OUT.lmv

The Makefile uses it for `make firmware` until the trained CIFAR-10 model lands at
examples/lemevit_cifar10.lmv. Deterministic: the same bytes every time."""
import os
import sys
import tempfile

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from common import convert  # noqa: E402
from models import lemevit_ref as L  # noqa: E402

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    torch.manual_seed(0)
    m = L.randomize_(L.build(depth=[1, 1, 1, 1, 1], embed_dim=[32, 32, 64, 64, 96], num_classes=10), seed=10).eval()
    with tempfile.TemporaryDirectory() as d:
        ckpt, labels = os.path.join(d, "model.pth"), os.path.join(d, "labels.txt")
        torch.save(m.state_dict(), ckpt)
        with open(labels, "w") as f:
            f.write("\n".join(CLASSES) + "\n")
        convert(ckpt, out, "--img-size", "32", "--labels", labels, "--name", "lemevit_random_cifar10",
                "--mean", "0.4914", "0.4822", "0.4465", "--std", "0.2470", "0.2435", "0.2616", "--crop-pct", "1.0",
                "--interpolation", "bilinear")


if __name__ == "__main__":
    main()
