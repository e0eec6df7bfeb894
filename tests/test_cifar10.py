"""The bundled CIFAR-10 LeMeViT over the CIFAR-10 test JPEGs (the 1,000-image subset in tests/data,
or all 10,000 with LMV_CIFAR10 / `make test-full CIFAR10=PATH`): the C library (decoder,
preprocessing and model, through `lmv eval`) against PyTorch (Pillow + torchvision transform +
the reference LeMeViT with the same weights, read back from the .lmv file). Top-1 must agree on
>= 99.9 % of the images and the two accuracies must be within 0.1 points."""
import argparse
import json
import os
import sys

import numpy as np
import torch
from PIL import Image
import torchvision.transforms as T

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import LMV, ROOT, Results, cifar10_source, cifar_test_dir, run, tmpdir  # noqa: E402
from models import lemevit_ref  # noqa: E402

sys.path.insert(0, os.path.join(ROOT, "tools"))
import lmvfile  # noqa: E402

torch.set_num_threads(2)
res = Results()


def torch_model_from_lmv(path):
    """The reference LeMeViT holding exactly the weights of the .lmv file."""
    f = lmvfile.read(path)
    meta = {k: (v[0] if isinstance(v, list) and len(v) == 1 and k != "pre.mean" and k != "pre.std" else v)
            for k, v in f.meta.items()}
    types = meta["lemevit.attn_types"].replace("E", "2")
    attn = ["D2" if t == "2" else t for t in types]
    dims = list(meta["lemevit.embed_dims"])
    hidden = list(meta["lemevit.mlp_hidden"])
    m = lemevit_ref.build(depth=list(meta["lemevit.depths"]), embed_dim=dims,
                          mlp_ratios=[h / d for h, d in zip(hidden, dims)], attn_type=attn,
                          num_classes=meta["num_classes"])
    sd = m.state_dict()
    for k in sd:
        if k.endswith("num_batches_tracked"):
            continue
        sd[k] = torch.tensor(np.frombuffer(f.tensor_bytes(k), dtype="<f4").reshape(f.shape(k)))
    m.load_state_dict(sd)
    return m.eval(), meta


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(ROOT, "examples", "lemevit_cifar10.lmv"))
    ap.add_argument("--limit", type=int, default=0, help="use only the first N images of each class")
    args = ap.parse_args()
    if not res.check("bundled model present", os.path.exists(args.model), args.model):
        res.finish()
    d = tmpdir()
    root = cifar_test_dir(args.limit)
    preds = os.path.join(d, "pred.tsv")
    code, out, err = run([LMV, "eval", args.model, root, "--json", "--predictions", preds])
    if not res.check("lmv eval over the test set", code == 0, "" if code == 0 else err.strip()[-300:]):
        res.finish()
    summary = json.loads(out)
    c_pred = {}
    for line in open(preds):
        path, true, pred = line.rstrip("\n").split("\t")
        c_pred[path] = (int(true), int(pred))

    model, meta = torch_model_from_lmv(args.model)
    mode = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC,
            "nearest": T.InterpolationMode.NEAREST}[meta["pre.interp"]]
    crop = list(meta["pre.crop"])
    resize = meta["pre.resize"] or crop
    tf = T.Compose([T.Resize(resize, interpolation=mode), T.CenterCrop(crop), T.ToTensor(),
                    T.Normalize(list(meta["pre.mean"]), list(meta["pre.std"]))])
    paths = sorted(c_pred)
    agree = correct_t = correct_c = 0
    for i in range(0, len(paths), 500):
        chunk = paths[i:i + 500]
        x = torch.stack([tf(Image.open(p).convert("RGB")) for p in chunk])
        with torch.no_grad():
            pt = model(x).argmax(1).numpy()
        for p, tp in zip(chunk, pt):
            true, cp = c_pred[p]
            agree += int(cp == tp)
            correct_t += int(tp == true)
            correct_c += int(cp == true)
    n = len(paths)
    acc_c, acc_t = 100.0 * correct_c / n, 100.0 * correct_t / n
    print(f"images {n}: accuracy C {acc_c:.2f} %, PyTorch {acc_t:.2f} %, top-1 agreement {100.0 * agree / n:.3f} %")
    src, full = cifar10_source()
    want_n = 10000 if full else 1000
    res.check(f"every test image classified ({'full set' if full else 'bundled subset'})",
              n == summary["images"] and summary["failed"] == 0 and (args.limit or n == want_n),
              f"{n} images, {summary['failed']} failed")
    res.check("top-1 agreement with PyTorch >= 99.9 %", agree >= 0.999 * n, f"{agree}/{n} agree")
    res.check("accuracy within 0.1 points of PyTorch's", abs(acc_c - acc_t) <= 0.1, f"C {acc_c:.2f} %, PyTorch {acc_t:.2f} %")
    res.check("lmv eval's accuracy is the one its predictions give", abs(summary["accuracy"] - acc_c) < 1e-6,
              f"{summary['accuracy']:.4f} vs {acc_c:.4f}")
    if not args.limit:
        res.check(f"the bundled model reaches >= 75 % on the {n:,} test images", acc_c >= 75.0, f"{acc_c:.2f} %")
    res.finish()


if __name__ == "__main__":
    main()
