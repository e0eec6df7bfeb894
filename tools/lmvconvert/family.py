"""What every family module shares: Model, Context, preprocessing defaults, small helpers."""

import json
import math
import os
import re
from collections import OrderedDict
from .base import ConvertError, _short, lmvfile
from .settings import coerce

# =============================================================================================
# 6. families
# =============================================================================================
#
# Adding a family: write a module families/xxx.py that registers its meta keys, a builder and
# its detectors (registry.py shows how) and import it in families/__init__.py.  A detector
#
#     @detector("xxx", "label")
#     def detect_xxx(sd, ctx) -> Model or None
#
# returns None when the state dict `sd` (name -> Tensor, wrapper prefixes already removed)
# is not its layout, and otherwise a Model with arch, source, the family's config keys (ordered,
# README names), the canonical tensors (ordered) and the set of input keys it used.  `ctx` is a
# Context: options, Settings layers, the checkpoint's side information (training args, HF
# config.json) and helpers.  Raise ConvertError for a layout that is recognised but not
# supported.  The builder takes a state dict in the family's canonical names, so mapping files
# work for it.  Shared post-processing (preprocessing, labels, name, writing) is done by finalize() from
# the common keys the Model provides (in_chans, img_size, num_classes, num_features).


class Model(object):
    def __init__(self, arch, source, config, tensors, used, notes=None, pre_defaults=None, name=None,
                 labels=None, dropped=None):
        self.arch = arch              # 'vit' / 'swin' / 'lemevit'
        self.source = source          # 'timm', 'deit', 'torchvision', 'hf', 'mapping', ...
        self.config = config          # OrderedDict of meta keys (common model keys + family keys)
        self.tensors = tensors        # OrderedDict canonical name -> Tensor
        self.used = used              # set of input state-dict keys that were placed
        self.notes = notes or []      # lines for the summary
        self.pre_defaults = pre_defaults or {}
        self.name = name              # suggested model name
        self.labels = labels          # class names found in the checkpoint's side files, if any
        # (why, [input keys]): tensors the layout deliberately leaves out (a CLIP text tower, DINOv2's
        # mask token), each group named in the summary; pipeline.detect counts them as accounted for
        self.dropped = dropped or []


class Context(object):
    def __init__(self, opts, settings, info, path):
        self.opts, self.settings, self.info, self.path = opts, settings, info, path
        self.hf_config = None
        self.hf_preprocessor = None
        self.mapping_state = None     # set by a mapping file: what its rules did, for error hints
        self.notes = []
        self.hints = None             # metadata.Hints: model name, kwargs, data config (metadata.gather)
        self.determined = set()       # meta keys the tensors fixed although they are usually assumed

    def warn(self, msg):
        self.notes.append("warning: " + msg)


IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
HALF = [0.5, 0.5, 0.5]

# per-source preprocessing defaults (formats.md 1.5 / 3.1 and the HF image processors)
PRE_TIMM = {"pre.mean": HALF, "pre.std": HALF, "pre.crop_pct": 0.9, "pre.interp": "bicubic"}
PRE_DEIT = {"pre.mean": IMAGENET_MEAN, "pre.std": IMAGENET_STD, "pre.crop_pct": 0.9, "pre.interp": "bicubic"}
PRE_TORCHVISION = {"pre.mean": IMAGENET_MEAN, "pre.std": IMAGENET_STD, "pre.crop_pct": 224.0 / 256.0,
                   "pre.interp": "bilinear"}
# ViTImageProcessor: resize straight to 224x224 (no crop), bilinear, mean/std 0.5
PRE_HF_VIT = {"pre.mean": HALF, "pre.std": HALF, "pre.resize": 0, "pre.crop_pct": 1.0, "pre.interp": "bilinear"}
# DeiTImageProcessor: resize to 256x256, centre crop 224, bicubic, class defaults mean/std 0.5
PRE_HF_DEIT = {"pre.mean": HALF, "pre.std": HALF, "pre.crop_pct": 224.0 / 256.0, "pre.interp": "bicubic"}


def _isqrt_exact(n):
    if n <= 0:
        return None
    r = int(math.isqrt(n)) if hasattr(math, "isqrt") else int(math.sqrt(n))
    while r * r > n:
        r -= 1
    while (r + 1) * (r + 1) <= n:
        r += 1
    return r if r * r == n else None


def _block_indices(sd, prefix="blocks."):
    pat = re.compile(r"^%s(\d+)\." % re.escape(prefix))
    idx = sorted(set(int(m.group(1)) for m in (pat.match(k) for k in sd) if m))
    return idx

def _rename(sd, rules):
    """Apply (regex, replacement) rules with re.sub, in order, to every key.  Returns the renamed
    dict and a map new name -> original name (to report unplaced keys by their real names)."""
    out, back = OrderedDict(), {}
    for k, v in sd.items():
        nk = k
        for pat, rep in rules:
            nk = re.sub(pat, rep, nk)
        if nk in out:
            raise ConvertError("two tensors map to %s (%s and %s)" % (nk, back[nk], k))
        out[nk] = v
        back[nk] = k
    return out, back


def _read_json_beside(path, name):
    p = os.path.join(os.path.dirname(os.path.abspath(path)), name)
    if not os.path.isfile(p):
        return None, p
    try:
        with open(p, "r", encoding="utf-8") as f:
            return json.load(f), p
    except (OSError, ValueError) as e:
        raise ConvertError("%s: %s" % (p, e))
    except RecursionError:
        raise ConvertError("%s: its JSON is nested too deeply" % p)


def side_value(src, field, key, value):
    """A value from a side file (config.json, preprocessor_config.json, training args) as meta
    `key`: coerced to its type and checked against the library's range; a ConvertError names the
    file and the field otherwise."""
    try:
        v = coerce(key, value)
    except ConvertError:
        raise ConvertError("%s: %s is %s, which is not a valid %s" % (src, field, _short(value), key))
    msg = lmvfile.check_meta_value(key, v)
    if msg:
        raise ConvertError("%s: %s gives %s" % (src, field, msg))
    return v
