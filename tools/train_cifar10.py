#!/usr/bin/python3
"""Train a small LeMeViT on CIFAR-10 (CPU only) and export a timm-style checkpoint.

The model is the reference LeMeViT of tests/models/lemevit_ref.py (official block design:
C / D / D / S / S stages, meta tokens, DCA scales), scaled down for 32x32 images.

Data: --data DIR holds train.tar (train/<class>/NNNN.jpg, 50,000 JPEGs 32x32) and test.tar
(test/<class>/NNNN.jpg, 10,000).  The tars are decoded once with PIL into a uint8 cache
(--cache, outside the repo) and every later run reads the cache.

Eval preprocessing (written to the JSON next to the checkpoint, reproducible by a C library):
  decode the JPEG to RGB (PIL), resize the shorter side to R with PIL bicubic (identity when the
  image is already RxR, e.g. R=32), centre crop RxR, x/255, (x - mean)/std per channel, NCHW.

Training: random crop with zero padding + horizontal flip on the preprocessed images, label
smoothing, AdamW (no weight decay on 1-D parameters), per-step linear warm-up + cosine decay,
optional EMA of the weights.  Resumable: <out>/last.pth is written after every epoch and
--resume continues from it (model, EMA, optimizer, schedule position and RNG state).

Outputs in --out:
  train.log-style progress on stdout, history.json (per-epoch numbers), last.pth (resume state),
  lemevit_cifar10.pth  {'state_dict', 'state_dict_ema' (if EMA), 'args', 'epoch', 'metric', ...}
  lemevit_cifar10.json (model config, preprocessing, class names, accuracies)

Threads: torch.set_num_threads(--threads).  Unless already set in the environment, the script
sets OMP_WAIT_POLICY=PASSIVE and OPENBLAS_NUM_THREADS=--threads before importing torch: on a
shared 2-core machine spinning OpenMP threads otherwise slow training down by up to 10x.  With
Debian's python3-torch, install libopenblas0-pthread (or point LD_LIBRARY_PATH at
/usr/lib/x86_64-linux-gnu/openblas-pthread): the reference netlib BLAS is ~10x slower.
"""

import argparse
import io
import json
import math
import os
import sys
import tarfile
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Train a small LeMeViT (reference implementation) on CIFAR-10 JPEGs, CPU only.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("data and output")
    g.add_argument("--data", required=True,
                   help="directory holding CIFAR-10 as JPEGs: train.tar and test.tar, laid out "
                        "train/<class>/NNNN.jpg and test/<class>/NNNN.jpg")
    g.add_argument("--cache", default=os.path.expanduser("~/.cache/lemevit_cifar10"),
                   help="where the decoded uint8 arrays are cached (outside the repo)")
    g.add_argument("--out", default=os.path.join("build", "train_cifar10"),
                   help="output directory (checkpoints, history, final model + JSON)")
    g.add_argument("--name", default="lemevit_cifar10",
                   help="base name of the final checkpoint / JSON in --out")
    g.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="resume from a checkpoint (default: <out>/last.pth)")
    g.add_argument("--quick", action="store_true",
                   help="tiny smoke run: 1 epoch on 512 train / 256 test images, small model")
    g.add_argument("--limit-train", type=int, default=0,
                   help="use only this many (random, fixed) training images per epoch (0 = all)")
    g.add_argument("--limit-test", type=int, default=0,
                   help="evaluate on a fixed random subset of N test images (0 = all 10,000)")

    g = p.add_argument_group("model (tests/models/lemevit_ref.py build())")
    g.add_argument("--img-size", type=int, default=32,
                   help="R: resize shorter side to R (PIL bicubic) and centre crop RxR")
    g.add_argument("--depth", type=int, nargs="+", default=[1, 2, 2, 1, 1],
                   help="blocks per stage")
    g.add_argument("--embed-dim", type=int, nargs="+", default=[64, 64, 96, 96, 128],
                   help="channels per stage (multiples of --head-dim)")
    g.add_argument("--mlp-ratio", type=float, nargs="+", default=[3, 3, 3, 2, 2],
                   help="MLP expansion, one value or one per stage")
    g.add_argument("--attn-type", nargs="+", default=["C", "D", "D", "S", "S"])
    g.add_argument("--head-dim", type=int, default=32)
    g.add_argument("--queries-len", type=int, default=16, help="number of meta tokens M")
    g.add_argument("--drop-path", type=float, default=0.0, help="stochastic depth rate")

    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=30)
    g.add_argument("--batch-size", type=int, default=128)
    g.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    g.add_argument("--min-lr", type=float, default=2e-5, help="final learning rate")
    g.add_argument("--warmup-epochs", type=float, default=1.0)
    g.add_argument("--weight-decay", type=float, default=0.05)
    g.add_argument("--label-smoothing", type=float, default=0.1)
    g.add_argument("--clip-grad", type=float, default=1.0, help="max grad norm (0 = off)")
    g.add_argument("--pad", type=int, default=-1,
                   help="random-crop padding in pixels (-1 = R/8, i.e. 4 at R=32)")
    g.add_argument("--mixup", type=float, default=0.0,
                   help="mixup alpha (0 = off); applied to a --mixup-prob share of batches")
    g.add_argument("--mixup-prob", type=float, default=0.5)
    g.add_argument("--ema-decay", type=float, default=0.0,
                   help="EMA decay, e.g. 0.999 (0 = no EMA, so the checkpoint holds one weight set)")
    g.add_argument("--eval-every", type=int, default=5,
                   help="evaluate on the test set every N epochs (and always at the end)")

    g = p.add_argument_group("runtime")
    g.add_argument("--threads", type=int, default=2, help="torch.set_num_threads()")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--log-every", type=int, default=50, help="print progress every N steps")
    g.add_argument("--max-steps", type=int, default=0,
                   help="stop after this many optimizer steps in total (calibration; 0 = off)")
    args = p.parse_args(argv)
    if args.quick:
        args.limit_train = args.limit_train or 512
        args.limit_test = args.limit_test or 256
        args.epochs = 1
        args.depth = [1, 1, 1, 1, 1]
        args.embed_dim = [32, 32, 64, 64, 96]
        args.mlp_ratio = [2]
        args.batch_size = 64
        args.log_every = 2
        args.eval_every = 1
    if args.pad < 0:
        args.pad = max(1, args.img_size // 8)
    return args


ARGS = parse_args()
# Thread settings must be in the environment before torch (OpenMP / OpenBLAS) is loaded.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OPENBLAS_NUM_THREADS", str(ARGS.threads))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "models"))
import lemevit_ref  # noqa: E402

# CIFAR-10 training-set channel statistics (of x/255)
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


def log(msg):
    print(time.strftime("%H:%M:%S ") + msg, flush=True)


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------

def decode_tar(tar_path, split):
    """Decode every <split>/<class>/*.jpg of the tar with PIL -> (uint8 [N,H,W,3], labels, names).
    Classes are the sorted folder names; images are sorted by path within a class."""
    items = []
    with tarfile.open(tar_path) as tf:
        for m in tf.getmembers():
            if not m.isfile() or not m.name.lower().endswith((".jpg", ".jpeg", ".png")):
                continue
            parts = m.name.split("/")
            if len(parts) != 3 or parts[0] != split:
                continue
            items.append((parts[1], m.name, tf.extractfile(m).read()))
    classes = sorted({c for c, _, _ in items})
    items.sort(key=lambda t: (t[0], t[1]))
    imgs, labels = [], []
    for cls, _, data in items:
        with Image.open(io.BytesIO(data)) as im:
            imgs.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
        labels.append(classes.index(cls))
    return np.stack(imgs), np.asarray(labels, dtype=np.int64), classes


def load_split(args, split):
    """Cached decode of one split (raw decoded pixels, before any resize)."""
    os.makedirs(args.cache, exist_ok=True)
    path = os.path.join(args.cache, f"{split}_u8.npz")
    if not os.path.exists(path):
        t0 = time.time()
        x, y, classes = decode_tar(os.path.join(args.data, f"{split}.tar"), split)
        tmp = path + ".tmp.npz"
        np.savez(tmp, x=x, y=y, classes=np.asarray(classes))
        os.replace(tmp, path)
        log(f"decoded {split}.tar: {x.shape} in {time.time() - t0:.1f}s -> {path}")
    z = np.load(path)
    return z["x"], z["y"], [str(c) for c in z["classes"]]


def pil_preprocess_u8(img_u8, size):
    """The eval geometry: shorter side -> size (PIL bicubic), centre crop size x size."""
    im = Image.fromarray(img_u8)
    w, h = im.size
    if (w, h) != (size, size):
        if w <= h:
            nw, nh = size, int(size * h / w)
        else:
            nw, nh = int(size * w / h), size
        im = im.resize((nw, nh), Image.BICUBIC)
        left, top = (nw - size) // 2, (nh - size) // 2
        im = im.crop((left, top, left + size, top + size))
    return np.asarray(im, dtype=np.uint8)


def resized(args, x, split):
    """Apply the eval geometry to a whole split once (cached when it is not the identity)."""
    R = args.img_size
    if x.shape[1:3] == (R, R):
        return x
    path = os.path.join(args.cache, f"{split}_u8_R{R}.npy")
    if os.path.exists(path):
        return np.load(path)
    out = np.stack([pil_preprocess_u8(im, R) for im in x])
    np.save(path, out)
    return out


def to_tensor_u8(x):
    """uint8 NHWC numpy -> uint8 NCHW torch (normalisation happens per batch)."""
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def normalize(xb_u8):
    """x/255 then (x - mean)/std, in fp32 (the documented eval preprocessing)."""
    x = xb_u8.float().div_(255.0)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


def augment(xb_u8, pad, gen):
    """Per-sample random crop of the uint8 images padded with zeros (black pixels, padding
    happens before normalisation) and random horizontal flip."""
    B, C, H, W = xb_u8.shape
    padded = F.pad(xb_u8, (pad, pad, pad, pad))
    ox = torch.randint(0, 2 * pad + 1, (B,), generator=gen)
    oy = torch.randint(0, 2 * pad + 1, (B,), generator=gen)
    flip = torch.rand(B, generator=gen) < 0.5
    out = torch.empty_like(xb_u8)
    for i in range(B):
        crop = padded[i, :, oy[i]:oy[i] + H, ox[i]:ox[i] + W]
        out[i] = crop.flip(-1) if flip[i] else crop
    return out


# ----------------------------------------------------------------------------------------------
# Model, optimiser, schedule, EMA
# ----------------------------------------------------------------------------------------------

def model_config(args, num_classes):
    ratios = [int(r) if float(r).is_integer() else float(r) for r in args.mlp_ratio]
    if len(ratios) == 1:
        ratios = ratios * len(args.attn_type)
    return dict(depth=list(args.depth), embed_dim=list(args.embed_dim), mlp_ratios=ratios,
                attn_type=list(args.attn_type), head_dim=args.head_dim,
                queries_len=args.queries_len, num_classes=num_classes)


def build_model(args, num_classes):
    return lemevit_ref.build(drop_path_rate=args.drop_path, **model_config(args, num_classes))


def param_groups(model, weight_decay):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def lr_at(step, total, warmup, args):
    """Linear warm-up from 0 to --lr over `warmup` steps, then cosine down to --min-lr."""
    if step < warmup:
        return args.lr * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return args.min_lr + 0.5 * (args.lr - args.min_lr) * (1 + math.cos(math.pi * min(1.0, t)))


class EMA:
    """Exponential moving average of every floating state-dict entry (weights and BN stats);
    integer buffers are copied.  The decay is warmed up as min(decay, (1+n)/(10+n))."""

    def __init__(self, model, decay):
        self.decay = decay
        self.updates = 0
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model):
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.state[k].mul_(d).add_(v.detach(), alpha=1 - d)
            else:
                self.state[k].copy_(v)


@torch.no_grad()
def evaluate(model, x_u8, y, batch=500):
    """Top-1 accuracy (%) and mean cross-entropy of `model` in eval mode."""
    model.eval()
    correct, loss_sum = 0, 0.0
    for i in range(0, len(y), batch):
        xb = normalize(x_u8[i:i + batch])
        out = model(xb)
        loss_sum += F.cross_entropy(out, y[i:i + batch], reduction="sum").item()
        correct += (out.argmax(1) == y[i:i + batch]).sum().item()
    return 100.0 * correct / len(y), loss_sum / len(y)


def fmt_time(s):
    s = int(s)
    return f"{s // 3600}h{(s % 3600) // 60:02d}m{s % 60:02d}s"


# ----------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------

def main(args):
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    last_path = os.path.join(args.out, "last.pth")

    resume = None
    if args.resume:
        rpath = last_path if args.resume == "auto" else args.resume
        if os.path.exists(rpath):
            resume = torch.load(rpath, map_location="cpu")
            # the model / schedule come from the checkpoint; runtime knobs from the command line
            saved = resume["args"]
            for k in ("threads", "log_every", "out", "data", "cache", "resume", "max_steps",
                      "eval_every", "name"):
                setattr(saved, k, getattr(args, k))
            args = saved
            log(f"resuming from {rpath} (finished epoch {resume['epoch']})")
        else:
            log(f"--resume: {rpath} not found, starting from scratch")

    log("args: " + json.dumps(vars(args), sort_keys=True))
    log(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, "
        f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')}")

    # --- data
    xtr, ytr, classes = load_split(args, "train")
    xte, yte, classes_te = load_split(args, "test")
    assert classes == classes_te, (classes, classes_te)
    xtr, xte = resized(args, xtr, "train"), resized(args, xte, "test")
    rng = np.random.RandomState(args.seed)
    if args.limit_train:
        sel = np.sort(rng.permutation(len(ytr))[:args.limit_train])
        xtr, ytr = xtr[sel], ytr[sel]
    if args.limit_test:  # a fixed random (roughly class-balanced) subset
        sel = np.sort(np.random.RandomState(args.seed + 1).permutation(len(yte))[:args.limit_test])
        xte, yte = xte[sel], yte[sel]
    xtr_t, ytr_t = to_tensor_u8(xtr), torch.from_numpy(ytr)
    xte_t, yte_t = to_tensor_u8(xte), torch.from_numpy(yte)
    log(f"train {tuple(xtr_t.shape)}, test {tuple(xte_t.shape)}, classes {classes}")

    # --- model / optimiser
    torch.manual_seed(args.seed)
    model = build_model(args, len(classes))
    nparams = sum(p.numel() for p in model.parameters())
    log(f"model: {json.dumps(model_config(args, len(classes)))}  params {nparams:,} "
        f"({nparams * 4 / 1e6:.2f} MB fp32)")
    opt = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.lr,
                            betas=(0.9, 0.999))
    ema = EMA(model, args.ema_decay) if args.ema_decay > 0 else None
    crit = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)

    steps_per_epoch = len(ytr_t) // args.batch_size  # drop_last
    total_steps = steps_per_epoch * args.epochs
    warmup = int(args.warmup_epochs * steps_per_epoch)
    start_epoch, history, train_time = 0, [], 0.0
    if resume is not None:
        model.load_state_dict(resume["state_dict"])
        opt.load_state_dict(resume["optimizer"])
        if ema is not None and resume.get("state_dict_ema") is not None:
            ema.state = resume["state_dict_ema"]
            ema.updates = resume.get("ema_updates", 0)
        start_epoch = resume["epoch"]
        history = resume.get("history", [])
        train_time = resume.get("train_time", 0.0)
        torch.set_rng_state(resume["torch_rng"])

    step = start_epoch * steps_per_epoch
    gen = torch.Generator()
    stop = False
    for epoch in range(start_epoch, args.epochs):
        model.train()
        # augmentation / shuffling streams are re-seeded per epoch, so --resume (which restarts
        # at an epoch boundary) reproduces an uninterrupted run exactly
        gen.manual_seed(args.seed * 1000003 + epoch)
        perm = torch.from_numpy(np.random.RandomState(args.seed * 7919 + epoch).permutation(len(ytr_t)))
        t_epoch = time.time()
        loss_sum, correct, seen = 0.0, 0, 0
        for it in range(steps_per_epoch):
            idx = perm[it * args.batch_size:(it + 1) * args.batch_size]
            xb = normalize(augment(xtr_t[idx], args.pad, gen))
            yb = ytr_t[idx]
            lr = lr_at(step, total_steps, warmup, args)
            for gidx in opt.param_groups:
                gidx["lr"] = lr
            use_mix = args.mixup > 0 and torch.rand(1, generator=gen).item() < args.mixup_prob
            if use_mix:
                lam = float(np.random.RandomState(step).beta(args.mixup, args.mixup))
                j = torch.randperm(len(yb), generator=gen)
                xb = lam * xb + (1 - lam) * xb[j]
            out = model(xb)
            loss = crit(out, yb) if not use_mix else lam * crit(out, yb) + (1 - lam) * crit(out, yb[j])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if args.clip_grad > 0:
                nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad)
            opt.step()
            if ema is not None:
                ema.update(model)
            step += 1
            loss_sum += loss.item() * len(yb)
            correct += (out.argmax(1) == yb).sum().item()
            seen += len(yb)
            if (it + 1) % args.log_every == 0 or it + 1 == steps_per_epoch:
                el = time.time() - t_epoch
                rate = seen / el
                left_ep = (steps_per_epoch - it - 1) * args.batch_size / rate
                left_all = left_ep + (args.epochs - epoch - 1) * steps_per_epoch * args.batch_size / rate
                log(f"epoch {epoch + 1}/{args.epochs} step {it + 1}/{steps_per_epoch} "
                    f"loss {loss_sum / seen:.4f} train_acc {100.0 * correct / seen:.2f}% lr {lr:.2e} "
                    f"{rate:.0f} img/s  epoch ETA {fmt_time(left_ep)}  run ETA {fmt_time(left_all)}")
            if args.max_steps and step >= args.max_steps:
                stop = True
                break
        ep_time = time.time() - t_epoch
        train_time += ep_time
        rec = {"epoch": epoch + 1, "loss": loss_sum / max(1, seen),
               "train_acc": 100.0 * correct / max(1, seen), "time": ep_time, "lr": lr}
        last = epoch + 1 == args.epochs or stop
        if last or (args.eval_every and (epoch + 1) % args.eval_every == 0):
            t0 = time.time()
            rec["test_acc"], rec["test_loss"] = evaluate(model, xte_t, yte_t)
            if ema is not None:
                ema_model = build_model(args, len(classes))
                ema_model.load_state_dict(ema.state)
                rec["test_acc_ema"], rec["test_loss_ema"] = evaluate(ema_model, xte_t, yte_t)
            rec["eval_time"] = time.time() - t0
        history.append(rec)
        eta = (args.epochs - epoch - 1) * (train_time / (epoch + 1))
        log(f"== epoch {epoch + 1}/{args.epochs} done: loss {rec['loss']:.4f} train_acc "
            f"{rec['train_acc']:.2f}% time {fmt_time(ep_time)} total {fmt_time(train_time)} "
            f"ETA {fmt_time(eta)}"
            + (f" | test_acc {rec['test_acc']:.2f}%" if "test_acc" in rec else "")
            + (f" ema {rec['test_acc_ema']:.2f}%" if "test_acc_ema" in rec else ""))
        state = {"state_dict": model.state_dict(), "optimizer": opt.state_dict(),
                 "state_dict_ema": ema.state if ema is not None else None,
                 "ema_updates": ema.updates if ema is not None else 0,
                 "epoch": epoch + 1, "args": args, "history": history,
                 "train_time": train_time, "torch_rng": torch.get_rng_state()}
        torch.save(state, last_path + ".tmp")
        os.replace(last_path + ".tmp", last_path)
        with open(os.path.join(args.out, "history.json"), "w") as f:
            json.dump(history, f, indent=1)
        if stop:
            log(f"--max-steps {args.max_steps} reached: stopping after {step} steps")
            break

    # --- final export (always from the last epoch's state)
    final = history[-1]
    if "test_acc" not in final:
        final["test_acc"], final["test_loss"] = evaluate(model, xte_t, yte_t)
        if ema is not None:
            ema_model = build_model(args, len(classes))
            ema_model.load_state_dict(ema.state)
            final["test_acc_ema"], final["test_loss_ema"] = evaluate(ema_model, xte_t, yte_t)
    metric = final.get("test_acc_ema", final["test_acc"])
    ckpt = {"state_dict": model.state_dict(), "args": args, "epoch": final["epoch"],
            "metric": metric, "arch": "lemevit_cifar10", "version": 2}
    if ema is not None:
        ckpt["state_dict_ema"] = ema.state
    ckpt_path = os.path.join(args.out, args.name + ".pth")
    torch.save(ckpt, ckpt_path)
    meta = {
        "arch": "lemevit", "reference": "tests/models/lemevit_ref.py build(**model)",
        "model": model_config(args, len(classes)),
        "num_params": nparams,
        "class_names": classes,
        "preprocessing": {
            "decode": "PIL Image.open(jpeg).convert('RGB'), uint8 HWC",
            "resize": {"shorter_side": args.img_size, "interpolation": "bicubic",
                       "library": "Pillow Image.resize (identity when already RxR)"},
            "center_crop": [args.img_size, args.img_size],
            "scale": "x / 255", "mean": list(MEAN), "std": list(STD),
            "layout": "NCHW float32, RGB"},
        "test_top1": {"state_dict": final["test_acc"],
                      "state_dict_ema": final.get("test_acc_ema")},
        "recommended_weights": ("state_dict_ema" if final.get("test_acc_ema", -1) > final["test_acc"]
                                else "state_dict"),
        "test_images": int(len(yte_t)), "epochs": final["epoch"],
        "train_time_s": round(train_time, 1), "torch": torch.__version__,
        "command": " ".join(sys.argv),
    }
    with open(os.path.join(args.out, args.name + ".json"), "w") as f:
        json.dump(meta, f, indent=1)
    log(f"final: test top-1 {final['test_acc']:.2f}% (raw)"
        + (f", {final['test_acc_ema']:.2f}% (EMA)" if "test_acc_ema" in final else "")
        + f" on {len(yte_t)} images; wrote {ckpt_path} "
        f"({os.path.getsize(ckpt_path) / 1e6:.1f} MB) and {args.name}.json")


if __name__ == "__main__":
    main(ARGS)
