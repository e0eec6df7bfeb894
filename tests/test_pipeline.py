"""From a JPEG to the top-5, end to end: build/classify (decode + the model's eval transform + run)
against PyTorch doing the same with Pillow and the torchvision/timm transform, on real photos.
Models: torchvision's vit_b_16 and swin_t at full size and a LeMeViT, with seeded random weights
(ranking still has to agree class by class)."""
import os
import re
import sys

import numpy as np
import torch
from PIL import Image, ImageOps
import torchvision.transforms as T

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import BIN, IMAGES, LMV, PHOTOS, ROOT, Results, convert, run, tmpdir  # noqa: E402
from models import timm_vit, lemevit_ref  # noqa: E402

torch.set_num_threads(2)
res = Results()
CLASSIFY = os.path.join(BIN, "classify")
work = tmpdir()


def photos():
    """The test photos (tests/data/images) as JPEGs: the JPEG originals, the PNGs saved as JPEG, one EXIF-rotated
    file; and one PNG as it is (classify picks the decoder by the signature)."""
    out = []
    for name in ("rocket.jpg", "hubble_deep_field.jpg"):
        out.append(os.path.join(PHOTOS, name))
    out.append(os.path.join(IMAGES, "libjpeg-turbo", "testorig.jpg"))
    for name in ("chelsea.png", "coffee.png", "astronaut.png"):
        dst = os.path.join(work, name.replace(".png", ".jpg"))
        Image.open(os.path.join(PHOTOS, name)).convert("RGB").save(dst, quality=90)
        out.append(dst)
    out.append(os.path.join(IMAGES, "exif", "Landscape_6.jpg"))
    out.append(os.path.join(PHOTOS, "chelsea.png"))
    return out


def torch_transform(resize, crop, interp, mean, std):
    mode = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC}[interp]
    return T.Compose([T.Resize(resize, interpolation=mode), T.CenterCrop(crop), T.ToTensor(), T.Normalize(mean, std)])


def parse_classify(out):
    """{image path: [(percent, label), ...]} from classify's output."""
    result, cur = {}, None
    for line in out.splitlines():
        m = re.match(r"^(\S.*) \(([\d.]+) ms\)$", line)
        if m:
            cur = m.group(1)
            result[cur] = []
        elif cur and line.startswith("  "):
            pct, label = line.strip().split("%", 1)
            result[cur].append((float(pct), label.strip()))
    return result


def check_model(name, model, lmv, transform, labels):
    images = photos()
    code, out, err = run([CLASSIFY, lmv, *images, "--top", "5"])
    if not res.check(f"{name}: classify runs on {len(images)} photos", code == 0, err.strip()):
        return
    got = parse_classify(out)
    for path in images:
        img = ImageOps.exif_transpose(Image.open(path)).convert("RGB")  # classify applies EXIF orientation
        with torch.no_grad():
            p = torch.softmax(model(transform(img).unsqueeze(0))[0], 0).numpy()
        order = np.argsort(-p, kind="stable")[:5]
        want = [(100 * float(p[i]), labels[i]) for i in order]
        have = got.get(path, [])
        same_labels = [l for _, l in have] == [l for _, l in want]
        worst = max((abs(a - b) for (a, _), (b, _) in zip(have, want)), default=float("inf"))
        res.check(f"{name}: {os.path.basename(path)} top-5", same_labels and worst <= 0.006,
                  f"labels {'same' if same_labels else 'DIFFER: %s vs %s' % ([l for _, l in have], [l for _, l in want])}, "
                  f"largest probability difference {worst:.4f} points (2 decimals printed)")


def torchvision_model(name, build, weights, resize, interp, seed):
    """A torchvision classifier with seeded random weights, converted with the converter's
    torchvision defaults, against the transform those defaults stand for."""
    torch.manual_seed(0)
    m = timm_vit.randomize_(build(), seed=seed).eval()
    path = os.path.join(work, name + ".pth")
    torch.save(m.state_dict(), path)
    convert(path, os.path.join(work, name + ".lmv"))
    check_model("torchvision " + name, m, os.path.join(work, name + ".lmv"),
                torch_transform(resize, 224, interp, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
                weights.IMAGENET1K_V1.meta["categories"])


def lemevit():
    m = lemevit_ref.randomize_(lemevit_ref.build(depth=[1, 1, 1, 2, 1], embed_dim=[32, 32, 64, 96, 128],
                                                 attn_type=list("CDDSS"), num_classes=1000), seed=9).eval()
    path = os.path.join(work, "lemevit.pth")
    torch.save({"state_dict": m.state_dict()}, path)
    convert(path, os.path.join(work, "lemevit.lmv"))
    labels = [ln.rstrip("\n") for ln in open(os.path.join(ROOT, "tools", "imagenet_classes.txt"))]
    # the official LeMeViT eval: Resize(256) bicubic, CenterCrop(224), ImageNet mean/std
    check_model("LeMeViT", m, os.path.join(work, "lemevit.lmv"),
                torch_transform(256, 224, "bicubic", [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]), labels)


def preprocess_matches():
    """lmv preprocess = the torchvision transform, to the float, for one model's stored config."""
    lmv = os.path.join(work, "lemevit.lmv")
    t = torch_transform(256, 224, "bicubic", [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    for path in photos()[:3] + [os.path.join(PHOTOS, "chelsea.png")]:
        out = os.path.join(work, "pre.npy")
        code, _, err = run([LMV, "preprocess", lmv, path, out])
        ok = code == 0
        d = float(np.max(np.abs(np.load(out)[0] - t(Image.open(path).convert("RGB")).numpy()))) if ok else float("inf")
        res.check(f"lmv preprocess {os.path.basename(path)} equals torchvision", ok and d <= 1e-6,
                  err.strip() if not ok else f"max abs diff {d:.1e}")


if __name__ == "__main__":
    lemevit()
    preprocess_matches()
    if "--quick" not in sys.argv:
        import torchvision
        from torchvision.models import Swin_T_Weights, ViT_B_16_Weights
        # vit_b_16: Resize(256) bilinear, CenterCrop(224); swin_t: Resize(232) bicubic
        torchvision_model("vit_b_16", torchvision.models.vit_b_16, ViT_B_16_Weights, 256, "bilinear", 7)
        torchvision_model("swin_t", torchvision.models.swin_t, Swin_T_Weights, 232, "bicubic", 8)
    res.finish()
