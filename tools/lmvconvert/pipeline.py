"""Detection, tensor accounting, preprocessing, labels, the summary and convert()."""

import math
import os
import re
import sys
from collections import OrderedDict

from .base import ConvertError, TOOLS_DIR, lmvfile
from .family import Context, HALF
from .mapping import convert_with_mapping, load_mapping
from .reader import extract_state_dict, load_checkpoint
from .metadata import gather
from .registry import DETECTORS, FAMILIES
from .settings import FAMILY_KEYS, Settings, coerce, parse_set_value

# =============================================================================================
# 7. preprocessing, labels, writing, summary, command line
# =============================================================================================


def _describe_keys(sd, keys, limit=25):
    items = ["%s %s" % (k, list(sd[k].shape)) if k in sd else k for k in keys[:limit]]
    if len(keys) > limit:
        items.append("... and %d more" % (len(keys) - limit))
    return ", ".join(items)


# The one place where checkpoint tensors are accounted for.  After the user's own rules
# (--ignore, a mapping file's "ignore"), only these buffers may be left out of the graph: BatchNorm
# step counters and the index tables / masks that the graph recomputes from the meta keys.  Any
# other tensor the family's builder did not place fails the conversion, by name.
# Besides these, a family's detector may drop whole groups it names (Model.dropped: the text tower
# of a CLIP checkpoint, DINOv2's training-only mask token); they are listed in the summary.
ALWAYS_DROPPED = re.compile(r"(^|\.)(num_batches_tracked|relative_position_index|attn_mask|relative_coords_table|"
                            r"position_ids)$")


def detect(sd, ctx):
    """Run the mapping file or the detectors; returns a Model whose every input key is placed."""
    opts = ctx.opts
    model = None
    if getattr(opts, "mapping", None):
        model = convert_with_mapping(sd, ctx, load_mapping(opts.mapping))
    else:
        arch = getattr(opts, "arch", None)
        # try the keys as they are, then without a leading component shared by every key (up to
        # two: Lightning's 'model.', 'backbone.', OpenCLIP's 'visual.trunk.', ...)
        cand, back, stripped = sd, {k: k for k in sd}, ""
        for _ in range(3):
            for fam, label, fn in DETECTORS:
                if arch and arch != "auto" and fam != arch:
                    continue
                model = fn(cand, ctx)
                if model is not None:
                    break
            if model is not None:
                model.used = set(back[k] for k in model.used)
                model.dropped = [(why, [back[k] for k in keys]) for why, keys in model.dropped]
                if stripped:
                    model.notes.append("removed the prefix %r shared by every key" % stripped)
                break
            heads = set(k.split(".", 1)[0] for k in cand)
            if len(heads) != 1 or not all("." in k for k in cand):
                break
            p = heads.pop() + "."
            stripped += p
            back = dict((k[len(p):], back[k]) for k in cand)
            cand = OrderedDict((k[len(p):], v) for k, v in cand.items())
        if model is None and arch not in (None, "auto") and not any(d[0] == arch for d in DETECTORS):
            raise ConvertError("--arch %s: this converter has no detector for that family yet" % arch)
        if model is None:
            raise ConvertError("unknown checkpoint layout: no detector (%s) recognised these %d tensors: %s; "
                               "write a mapping file and pass --mapping FILE (see --help)"
                               % (", ".join(d[1] for d in DETECTORS), len(sd), _describe_keys(sd, list(sd))))
    for why, keys in model.dropped:
        model.used.update(keys)
    dropped = [k for k in sd if k not in model.used and ALWAYS_DROPPED.search(k)]
    if dropped:
        model.used.update(dropped)
        model.notes.append("dropped %d buffer(s) the graph does not need (%s)"
                           % (len(dropped), ", ".join(sorted(set(ALWAYS_DROPPED.search(k).group(2) for k in dropped)))))
    left = [k for k in sd if k not in model.used]
    if left:
        raise ConvertError("%s layout recognised (%s) but %d tensor(s) could not be placed: %s; use --mapping "
                           "FILE (or --ignore REGEX to drop them)" % (model.arch, model.source, len(left),
                                                                     _describe_keys(sd, left)))
    return model


def compute_preprocessing(model, ctx):
    """pre.* keys from the layered settings.  resize and crop_pct describe the same thing: the
    one set by the higher layer wins and the other is derived (resize = floor(crop / crop_pct))."""
    st = ctx.settings
    st.update("default", model.pre_defaults)
    C = model.config["in_chans"]
    crop = list(model.config["img_size"])
    r_rank, p_rank = st.rank("pre.resize"), st.rank("pre.crop_pct")
    resize, pct = st.get("pre.resize"), st.get("pre.crop_pct")
    if resize is None and pct is None:
        pct = 1.0
    if resize is not None and (pct is None or r_rank > p_rank):
        pct = 1.0 if resize == 0 else min(crop) / float(resize)
    elif pct is not None and (resize is None or p_rank > r_rank):
        if not 0 < pct <= 1.0 + 1e-9:
            raise ConvertError("crop_pct must be in (0, 1], got %r" % pct)
        resize = int(math.floor(min(crop) / pct + 1e-6))  # 1e-6: 224/0.875 must give 256, not 255
    def fit(nm):
        v = list(st.get("pre." + nm, HALF))
        if len(v) == C:
            return v
        if len(v) == 1:
            return v * C
        if C == 1 and len(v) == 3 and not st.explicit("pre." + nm):
            return [sum(v) / 3.0]   # 1-channel model and RGB defaults: their average
        raise ConvertError("the model has %d input channel(s) but pre.%s has %d values; pass --%s with %d "
                           "value(s)" % (C, nm, len(v), nm, C))
    mean, std = fit("mean"), fit("std")
    if any(x == 0 for x in std):
        raise ConvertError("pre.std must not contain 0")
    return OrderedDict([
        ("pre.resize", coerce("pre.resize", resize)),
        ("pre.crop", crop),
        ("pre.crop_pct", coerce("pre.crop_pct", pct)),
        ("pre.interp", coerce("pre.interp", st.get("pre.interp", "bicubic"))),
        ("pre.mean", coerce("pre.mean", mean)),
        ("pre.std", coerce("pre.std", std)),
    ])


def imagenet_labels():
    path = os.path.join(TOOLS_DIR, "imagenet_classes.txt")
    try:
        with open(path, "r", encoding="utf-8") as f:
            names = [ln.rstrip("\r\n") for ln in f]
    except OSError as e:
        raise ConvertError("cannot read %s: %s" % (path, e.strerror or e))
    while names and not names[-1]:
        names.pop()
    if len(names) != 1000:
        raise ConvertError("%s has %d lines, expected 1000" % (path, len(names)))
    return names


def resolve_labels(model, ctx):
    """Class names for the file and a word on where they came from.  --labels FILE|imagenet|none;
    by default: names from the checkpoint's side files or mapping, else ImageNet for 1000 classes."""
    K = model.config["num_classes"]
    spec = getattr(ctx.opts, "labels", None) or "auto"
    if K == 0 or spec == "none":
        return None, "none"
    if spec == "auto":
        if isinstance(ctx.settings.get("labels"), list):
            names, where = ctx.settings.get("labels"), "mapping file"
        elif model.labels and len(model.labels) == K:
            return model.labels, "checkpoint config (id2label)"
        elif K == 1000:
            names, where = imagenet_labels(), "imagenet"
        else:
            return None, "none"
    elif spec == "imagenet":
        names, where = imagenet_labels(), "imagenet"
    else:
        try:
            with open(spec, "r", encoding="utf-8") as f:
                names = [ln.rstrip("\r\n") for ln in f]
        except OSError as e:
            raise ConvertError("cannot read labels file %s: %s" % (spec, e.strerror or e))
        while names and not names[-1].strip():
            names.pop()
        where = spec
    if len(names) != K:
        raise ConvertError("%d labels (%s) for a head with %d classes" % (len(names), where, K))
    return names, where


# preprocessing the checkpoint seldom states, and the flag that sets each
PRE_ASSUMABLE = OrderedDict([
    ("pre.mean", "--mean M [M ...]"),
    ("pre.std", "--std S [S ...]"),
    ("pre.crop_pct", "--crop-pct F or --resize N"),
    ("pre.interp", "--interpolation bilinear|bicubic|nearest"),
])


def assumed_keys(model, meta, ctx):
    """The meta keys whose values were assumed: options the tensors cannot show (the family's
    registered `assumable` keys and the preprocessing) that no metadata, mapping file or flag
    stated.  Returns key -> the flag that sets it, in table order."""
    st = ctx.settings
    table = OrderedDict(FAMILIES[model.arch].assumable)
    table.update(PRE_ASSUMABLE)
    out = OrderedDict()
    for k, flag in table.items():
        if k not in meta or k in ctx.determined:
            continue
        rank = max(st.rank(k), st.rank("pre.resize")) if k == "pre.crop_pct" else st.rank(k)
        if rank <= 0:   # the source's default or the converter's own rule
            out[k] = flag
    return out


def _value_text(v):
    if isinstance(v, list):
        return ",".join(_value_text(x) for x in v)
    if isinstance(v, float):
        return "%.6g" % v
    return str(v)


def finalize(model, ctx):
    """The full ordered meta list for the file."""
    st = ctx.settings
    cfg = model.config
    pre = compute_preprocessing(model, ctx)
    labels, labels_src = resolve_labels(model, ctx)
    name = st.get("name") or model.name or model.arch
    meta = OrderedDict()
    meta["arch"] = model.arch
    meta["name"] = name
    meta["source"] = model.source
    for k in ("in_chans", "img_size", "num_classes", "num_features"):
        meta[k] = cfg[k]
    meta.update(pre)
    for k in FAMILY_KEYS[model.arch]:
        if k in cfg:   # a family's optional keys (vit.rope*) are written only by the models that use them
            meta[k] = cfg[k]
    assumed = assumed_keys(model, meta, ctx)
    if assumed:
        meta["convert.assumed"] = list(assumed)
    if labels:
        meta["labels"] = labels
    return meta, labels_src


def _fmt2(v):
    return "%dx%d" % (v[0], v[1])


def summary_lines(model, meta, labels_src, ckpt, info, out_path, nbytes, dtypes=None):
    c = meta
    n_params = sum(t.numel for t in model.tensors.values())
    lines = []
    src = "%s (%s%s%s)" % (model.source, ckpt.fmt, ", entry " + "/".join(info["path"]) if info["path"] else "",
                          ", stripped " + " ".join(info["prefixes"]) if info["prefixes"] else "")
    lines.append("input       %s" % ckpt.path)
    lines.append("source      %s" % src)
    lines.append("model       %s: %s" % (c["arch"], c["name"]))
    if model.arch == "vit":
        lines.append("config      embed %d, depth %d, heads %d, mlp %d, patch %s, pos grid %s, img %s, in_chans %d"
                     % (c["vit.embed_dim"], c["vit.depth"], c["vit.num_heads"], c["vit.mlp_hidden"],
                        _fmt2(c["vit.patch_size"]), _fmt2(c["vit.pos_grid"]), _fmt2(c["img_size"]), c["in_chans"]))
        tokens = []
        if c["vit.class_token"]:
            tokens.append("cls" + (" (last)" if c["vit.class_last"] else ""))
        if c["vit.dist_token"]:
            tokens.append("dist")
        if c["vit.reg_tokens"]:
            tokens.append("%d reg" % c["vit.reg_tokens"])
        parts = [", ".join(tokens) or "no prefix tokens",
                 "pos_embed %s prefix" % ("excludes" if c["vit.no_embed_class"] else "covers")
                 if c.get("vit.abs_pos", 1) else "no pos_embed (vit.abs_pos=0)",
                 "pool %s" % c["vit.pool"]]
        if c.get("vit.rel_pos", "none") != "none":
            mlp = c["vit.rel_pos"].startswith("mlp")
            parts.insert(2, "relative position bias vit.rel_pos=%s%s" % (
                c["vit.rel_pos"], " vit.rel_mlp=%s (any input size)" % c.get("vit.rel_mlp", "cr") if mlp
                else " (input fixed at img_size)"))
        lines.append("tokens      " + "; ".join(parts))
        opts = ["%s-norm" % ("res-post" if c["vit.block"] == "res_post" else "parallel-scaling pre" if c["vit.block"] ==
                             "parallel_scaling" else "pre" if c["vit.norm_first"] else "post"),
                "eps %g" % c["vit.norm_eps"],
                "act %s" % c["vit.act"], "qkv_bias %d" % c["vit.qkv_bias"]]
        if c.get("vit.norm") == "rms":
            opts.insert(1, "RmsNorm")
        for k in ("layer_scale", "patch_norm", "norm_pre", "final_norm", "fc_norm"):
            if c["vit." + k]:
                opts.append(k)
        if c["vit.pre_logits"]:
            opts.append("pre_logits %d" % c["vit.pre_logits"])
        if c.get("vit.proj"):
            opts.append("proj %d (features = the projected embedding)" % c["vit.proj"])
        if c["vit.attn_scale"]:
            opts.append("attn_scale %g" % c["vit.attn_scale"])
        opts.append("pos_interp %s" % c["vit.pos_interp"])
        lines.append("graph       " + ", ".join(opts))
        if c.get("vit.rope", "none") != "none":   # rotary position embedding (families/eva.py)
            keys = {"mixed": ("rope", "rope_indexing", "rope_half"),
                    "dinov3": ("rope", "rope_temperature", "rope_offset", "rope_half")}.get(
                c["vit.rope"], ("rope", "rope_temperature", "rope_ref_grid", "rope_offset", "rope_indexing", "rope_half"))
            lines.append("rope        on q and k of the patch tokens: " +
                         " ".join("vit.%s=%s" % (k, _value_text(c["vit." + k])) for k in keys))
    lines.append("head        %d classes, %d features; labels: %s" % (c["num_classes"], c["num_features"], labels_src))
    lines.append("params      {:,} in {} tensors".format(n_params, len(model.tensors)))
    resize = "resize %d" % c["pre.resize"] if c["pre.resize"] else "resize to crop size"
    lines.append("preprocess  %s (crop_pct %.4g) %s, crop %s, mean %s, std %s"
                 % (resize, c["pre.crop_pct"], c["pre.interp"], _fmt2(c["pre.crop"]),
                    [round(x, 4) for x in c["pre.mean"]], [round(x, 4) for x in c["pre.std"]]))
    for why, keys in model.dropped:
        # grouped by the first name component after any prefix they all share: "transformer.* (12)"
        common = os.path.commonprefix(keys) if len(keys) > 1 else ""
        common = common[:common.rfind(".") + 1]
        groups = OrderedDict()
        for k in keys:
            groups.setdefault(common + k[len(common):].split(".", 1)[0], []).append(k)
        lines.append("dropped     %d tensor(s), %s: %s" % (len(keys), why, ", ".join(
            g[0] if len(g) == 1 else "%s.* (%d)" % (h, len(g)) for h, g in groups.items())))
    if info.get("ignored"):
        lines.append("ignored     %d tensor(s): %s" % (len(info["ignored"]), ", ".join(info["ignored"][:10])))
    assumed = meta.get("convert.assumed") or []
    if assumed:
        flags = OrderedDict(FAMILIES[model.arch].assumable)
        flags.update(PRE_ASSUMABLE)
        lines.append("assumed     %d option(s) neither the tensors nor the checkpoint's metadata state; "
                     "check them and set any that differ:" % len(assumed))
        for k in assumed:
            v = meta.get(k) if k != "pre.crop_pct" else "%s (resize %s)" % (_value_text(meta[k]), meta["pre.resize"])
            lines.append("assumed       %s=%s  (set with %s)" % (k, _value_text(v), flags.get(k, "--set " + k)))
    for n in model.notes:
        lines.append("note        " + n)
    if info.get("ema_available") and "ema" not in " ".join(info["path"]):
        lines.append("note        the checkpoint also holds EMA weights (use --ema to convert those)")
    if out_path:
        wd = meta.get(lmvfile.DTYPE_META_KEY, "f32")
        kinds = ""
        if dtypes:
            kinds = ": " + ", ".join("%d tensors %s" % (dtypes[k], k) for k in lmvfile.DTYPE_CODES if dtypes.get(k))
        lines.append("wrote       %s (%.1f MB), weights %s%s" % (out_path, nbytes / 1e6, wd, kinds))
    return lines


def tensor_dtypes(model, opts):
    """name -> the dtype each tensor is written in: --dtype for the tensors lmvfile.quantizable()
    accepts (matrix-multiply weights) unless a --keep-f32 regex matches, float32 for the rest: the
    matrix weights among them (lmvfile.packable()) as f32p panels unless --no-pack."""
    dtype = getattr(opts, "dtype", None) or "f32"
    pack = getattr(opts, "pack", True)
    try:
        keep = lmvfile.compile_keep(getattr(opts, "keep_f32", None) or [], "--keep-f32")
        return OrderedDict((n, lmvfile.choose_dtype(n, t.shape, dtype, keep, pack)) for n, t in model.tensors.items())
    except lmvfile.LmvError as e:
        raise ConvertError(str(e))


def convert(path, out_path=None, opts=None, quiet=False, out=None):
    """Convert one checkpoint.  `opts` is an argparse-like namespace (see build_parser); returns
    (model, meta).  Raises ConvertError."""
    if opts is None:
        from .cli import build_parser   # the command line's defaults
        opts = build_parser().parse_args([path])
    out = out or sys.stdout
    ckpt = load_checkpoint(path)
    sd, info = extract_state_dict(ckpt, use_ema=getattr(opts, "ema", False), ignore=getattr(opts, "ignore", None) or [],
                                  allow_broadcast=getattr(opts, "allow_broadcast", False))
    if not sd:
        raise ConvertError("%s: no tensors found" % path)
    settings = Settings()
    settings.update("cli", cli_settings(opts))
    ctx = Context(opts, settings, info, path)
    hints = gather(ctx)
    settings.update("sidecar", hints.pre)
    model = detect(sd, ctx)
    model.notes = ctx.notes + model.notes
    meta, labels_src = finalize(model, ctx)
    try:
        lmvfile.check_meta(meta)   # the library's ranges: never write a file it would refuse
    except lmvfile.LmvError as e:
        raise ConvertError("%s: %s (from the checkpoint, its side files, the mapping file or the command line)"
                           % (path, e))
    dtypes = tensor_dtypes(model, opts)
    meta[lmvfile.DTYPE_META_KEY] = getattr(opts, "dtype", None) or "f32"
    nbytes = 0
    if out_path:
        tensors = [(n, t.shape, (lambda t=t, n=n: t.f32(n)), dtypes[n]) for n, t in model.tensors.items()]
        try:
            nbytes = lmvfile.write(out_path, list(meta.items()), tensors)
        except lmvfile.TensorValueError as e:
            hint = "--keep-f32 '^%s$' keeps it float32" % re.escape(e.tensor)
            if "overflows" in str(e):
                hint += ", --dtype int8 stores the matrix weights as int8"
            raise ConvertError("cannot write %s: %s (%s)" % (out_path, e, hint))
        except lmvfile.LmvError as e:
            raise ConvertError("cannot write %s: %s" % (out_path, e))
        except OSError as e:
            raise ConvertError("cannot write %s: %s" % (out_path, e.strerror or e))
    if not quiet:
        counts = OrderedDict()
        for d in dtypes.values():
            counts[d] = counts.get(d, 0) + 1
        out.write("\n".join(summary_lines(model, meta, labels_src, ckpt, info, out_path, nbytes, counts)) + "\n")
    return model, meta


def cli_settings(opts):
    s = OrderedDict()
    g = lambda n: getattr(opts, n, None)  # noqa: E731
    if g("img_size"):
        s["img_size"] = coerce("img_size", g("img_size"))
    if g("num_heads"):
        s["vit.num_heads"] = g("num_heads")
    if g("eps") is not None:
        s["vit.norm_eps"] = g("eps")
    if g("pool"):
        s["vit.pool"] = g("pool")
    if g("mean"):
        s["pre.mean"] = coerce("pre.mean", g("mean"))
    if g("std"):
        s["pre.std"] = coerce("pre.std", g("std"))
    if g("crop_pct") is not None:
        s["pre.crop_pct"] = g("crop_pct")
    if g("resize") is not None:
        s["pre.resize"] = g("resize")
    if g("interpolation"):
        s["pre.interp"] = g("interpolation")
    if g("name"):
        s["name"] = g("name")
    for item in g("set") or []:
        if "=" not in item:
            raise ConvertError("--set expects KEY=VALUE, got %r" % item)
        k, v = item.split("=", 1)
        s[k.strip()] = parse_set_value(k.strip(), v.strip())
    return s

