"""The per-case harness the parity suites share: save a reference model's weights, convert them, run
build/lmv on the same input and compare the logits, the pooled features and every block's output with
the reference; and the converter refusals every suite checks. Each suite keeps its own cases."""
import os

import numpy as np
import torch

from common import LMV, compare_traces, convert, lmv_run, logits_close, run, tmpdir


def image(h, w, seed=7, batch=2):
    """A seeded random batch of NCHW inputs."""
    return torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))


def save_torch(obj, name="model.pth"):
    """torch.save obj as name in a fresh directory; returns (checkpoint path, .lmv path beside it)."""
    d = tmpdir()
    path = os.path.join(d, name)
    torch.save(obj, path)
    return path, os.path.join(d, "model.lmv")


def block_outputs(model, x):
    """model(x) and {"blocks.i": image 0's output of block i, "norm": the final norm's} for a model with
    timm's .blocks and .norm."""
    acts, hooks = {}, []
    for i, b in enumerate(model.blocks):
        hooks.append(b.register_forward_hook(lambda m, a, o, i=i: acts.__setitem__(f"blocks.{i}", o[0].detach().numpy())))
    if not isinstance(model.norm, torch.nn.Identity):
        hooks.append(model.norm.register_forward_hook(lambda m, a, o: acts.__setitem__("norm", o[0].detach().numpy())))
    with torch.no_grad():
        y = model(x)
    for h in hooks:
        h.remove()
    return y.numpy(), acts


def features_close(got, want, shapes=False):
    """Pooled features match: max abs diff <= 1e-4 times max(1, max |feature|). Returns (ok, description)."""
    d = float(np.max(np.abs(got - want))) if got.shape == want.shape else float("inf")
    desc = f"max abs diff {d:.2e}" + (f", shape {got.shape} vs {want.shape}" if shapes else "")
    return d <= 1e-4 * max(1.0, float(np.max(np.abs(want)))), desc


def check_vit_run(res, name, model, lmv, x):
    """The logits, every block and the pooled features (forward_head(pre_logits=True)) of `lmv` against a
    timm-style reference on x; raises RuntimeError when build/lmv fails."""
    want, acts = block_outputs(model, x)
    got, traces = lmv_run(lmv, x.numpy(), trace=True)
    fgot, _ = lmv_run(lmv, x.numpy(), "--features")
    ok, desc = logits_close(got, want)
    res.check(f"{name} logits", ok, desc)
    compare_traces(res, name, traces, acts)
    with torch.no_grad():
        fwant = model.forward_head(model.forward_features(x), pre_logits=True).numpy()
    res.check(f"{name} features", *features_close(fgot, fwant))


def check_summary(res, name, out, expect):
    """The converter's summary contains every text of `expect`."""
    for text in expect:
        res.check(f"{name} summary says {text!r}", text in out, "" if text in out else out)


def convert_checked(res, name, ckpt, lmv, opts=(), expect=()):
    """Convert ckpt to lmv and check its summary; a failed conversion is a failed check named `name`.
    Returns the converter's output, or None when it failed."""
    try:
        out = convert(ckpt, lmv, *opts)
    except RuntimeError as e:
        res.check(name, False, str(e))
        return None
    check_summary(res, name, out, expect)
    return out


def check_refused(res, name, ckpt, lmv, words, opts=(), tail=None):
    """The converter refuses ckpt with a message that contains every word of `words` (reported in full,
    or its last `tail` characters)."""
    try:
        convert(ckpt, lmv, *opts)
    except RuntimeError as e:
        msg = str(e)
        return res.check(name, all(w in msg for w in words), msg if tail is None else msg[-tail:])
    return res.check(name, False, "converted")


def info_config(lmv):
    """The config keys `lmv info` prints (key value lines)."""
    code, out, err = run([LMV, "info", lmv])
    cfg = {}
    for line in out.splitlines():
        parts = line.split(None, 1)
        if line.startswith("  ") and len(parts) == 2:
            cfg[parts[0]] = parts[1].strip()
    return cfg
