"""What a checkpoint says about itself besides its tensors: the model name, the model's keyword
arguments and its data config.  Sources, best first:

  1. timm training checkpoints' `args` (model, model_kwargs, mean/std/crop_pct/interpolation)
  2. a `pretrained_cfg` / `default_cfg` dict inside the checkpoint
  3. a timm-style config.json beside the file (architecture, model_args, pretrained_cfg)
  4. the model name in the file name (vit_base_patch16_rpn_224.pth), as a last hint

Options that none of these states, and that the tensors cannot show, are assumed: the
summary prints them with the flag that changes each and the file records them in the meta key
convert.assumed (pipeline.assumed_keys).
"""

import os
import re

from .base import ConvertError, _short
from .family import _read_json_beside, side_value


class Hints(object):
    """The checkpoint's metadata, gathered once per conversion (Context.hints)."""

    def __init__(self):
        self.name = None          # model name (timm / official registry name)
        self.name_src = None      # where the name came from, for messages
        self.kwargs = {}          # model keyword arguments (timm model_kwargs / model_args)
        self.kwargs_src = None
        self.pre = {}             # pre.* settings from a data config
        self.pre_src = None

    def said(self, what):
        """'the model name X (training args)' for notes."""
        return "%s (%s)" % (what, self.name_src) if what else ""


# file names that carry no model name (Hugging Face / generic exports)
_GENERIC_NAMES = re.compile(r"^(model|pytorch_model|checkpoint|model_best|last|best|ema|weights?|open_clip_pytorch_model)"
                            r"([-_.].*)?$")


def _name_from_file(path):
    base = os.path.basename(path)
    for ext in (".pth.tar", ".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".tar", ".pkl", ".npz"):
        if base.endswith(ext):
            base = base[:-len(ext)]
            break
    base = base.split(".", 1)[0]   # timm's 'name.tag' files
    if _GENERIC_NAMES.match(base) or not re.match(r"^[a-z][a-z0-9]*(_[a-z0-9]+)+$", base):
        return None
    return base


def _data_config(cfg, src):
    """pre.* settings from a timm pretrained_cfg / data config dict."""
    pre = {}
    for field, key in (("mean", "pre.mean"), ("std", "pre.std")):
        v = cfg.get(field)
        if isinstance(v, (list, tuple)) and v:
            pre[key] = side_value(src, field, key, list(v))
    if isinstance(cfg.get("crop_pct"), (int, float)) and not isinstance(cfg.get("crop_pct"), bool):
        pre["pre.crop_pct"] = side_value(src, "crop_pct", "pre.crop_pct", float(cfg["crop_pct"]))
    if cfg.get("interpolation") in ("bilinear", "bicubic", "nearest"):
        pre["pre.interp"] = cfg["interpolation"]
    return pre


def gather(ctx):
    """Read the checkpoint's metadata into ctx.hints (see the module docstring for the order)."""
    h = Hints()
    args = ctx.info.get("args") or {}
    if isinstance(args.get("model"), str) and args["model"]:
        h.name, h.name_src = args["model"], "the checkpoint's training args"
    if isinstance(args.get("model_kwargs"), dict) and args["model_kwargs"]:
        h.kwargs, h.kwargs_src = dict(args["model_kwargs"]), "the checkpoint's training args (model_kwargs)"
    pcfg = ctx.info.get("pretrained_cfg")
    if isinstance(pcfg, dict):
        h.pre = _data_config(pcfg, "the checkpoint's pretrained_cfg")
        h.pre_src = "the checkpoint's pretrained_cfg" if h.pre else None
        if h.name is None and isinstance(pcfg.get("architecture"), str):
            h.name, h.name_src = pcfg["architecture"], "the checkpoint's pretrained_cfg"
    try:
        cfg, cfg_path = _read_json_beside(ctx.path, "config.json")
    except ConvertError as e:   # not necessarily timm's; a Hugging Face layout reports it itself
        cfg = None
        ctx.warn("%s; nothing in it is used" % e)
    if isinstance(cfg, dict) and isinstance(cfg.get("architecture"), str):   # timm's hub config.json
        src = cfg_path
        if h.name is None:
            h.name, h.name_src = cfg["architecture"], src
        margs = cfg.get("model_args")
        if not h.kwargs and isinstance(margs, dict) and margs:
            h.kwargs, h.kwargs_src = dict(margs), src + " (model_args)"
        if isinstance(cfg.get("global_pool"), str) and "global_pool" not in h.kwargs:
            h.kwargs["global_pool"] = cfg["global_pool"]
            h.kwargs_src = h.kwargs_src or src
        if not h.pre and isinstance(cfg.get("pretrained_cfg"), dict):
            h.pre = _data_config(cfg["pretrained_cfg"], src + " pretrained_cfg")
            h.pre_src = (src + " pretrained_cfg") if h.pre else None
    if h.name is None:
        name = _name_from_file(ctx.path)
        if name:
            h.name, h.name_src = name, "the file name"
    if h.name is not None and not isinstance(h.name, str):
        h.name = _short(h.name)
    ctx.hints = h
    return h
