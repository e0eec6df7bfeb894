"""Every architecture timm registers in vision_transformer, eva, beit, swin_transformer and
swin_transformer_v2 (tests/data/timm/catalogue.json, facts read from timm's source), built with the
repository's faithful PyTorch reference of its module at a small depth (its width, heads, patch,
window and options as registered), random seeded weights saved with timm's key names in a file named
after the architecture (as users hold timm's weights), converted with no flags and run by build/lmv
on a batch of 2.  Each architecture ends as

  EXACT         logits within 1e-4 abs or 1e-5 relative, same top-1 (PASS)
  REFUSED       the converter or the loader refused it with a message (PASS; the message is recorded)
  WRONG         it ran and the logits differ (FAIL: a silently wrong answer)
  CRASH         a crash, an internal error or no message (FAIL)
  NO-REFERENCE  the reference cannot build one of its options yet (named; counted apart, never a pass)

Shrinking keeps what the converter reads from a timm name (the width and heads: a name is used only
when the tensors are as wide as the name says): every architecture keeps its width, heads, patch,
windows and options; ViTs get 1-2 blocks (2 up to 512 wide), an MLP of half the width above 768 wide
and a 3 x 3 patch grid; Swin gets its registered input size with two blocks per stage (one in the
last).  A headless default config (num_classes=0) is compared on `lmv run --features`.
Architectures whose shrunk configurations are identical are run once.  A summary per module and a
coverage line (the issue's bar: >= 90 % EXACT) are printed; the full table goes to
build/timm_family.md.  `--only REGEX` runs the architectures whose name matches."""
import contextlib
import inspect
import io
import json
import os
import re
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import BUILD, DATA, LMV, ROOT, Results, logits_close, run, save_npy, tmpdir  # noqa: E402
from models import timm_vit, beit_ref, swin_ref  # noqa: E402

sys.path.insert(0, os.path.join(ROOT, "tools"))
from lmvconvert import cli as convert_cli  # noqa: E402

torch.set_num_threads(1)
CATALOGUE = os.path.join(DATA, "timm", "catalogue.json")
REPORT = os.path.join(BUILD, "timm_family.md")


class NoReference(Exception):
    """The reference cannot build this option yet (the message names it)."""


def _int(v):
    return isinstance(v, int) and not isinstance(v, bool)


# ------------------------------------------------------------------ vision_transformer.py

# timm's norm_layer / act_layer / mlp_layer / block_fn, as the catalogue spells them, in the
# reference's terms
VIT_NORMS = {None: ("layernorm", 1e-6), "partial(LayerNorm, eps=1e-05)": ("layernorm", 1e-5),
             "RmsNorm": ("rmsnorm", 1e-6), "rmsnorm": ("rmsnorm", 1e-6),
             "partial(RmsNorm, eps=1e-05)": ("rmsnorm", 1e-5)}
VIT_ACTS = {None: "gelu", "gelu": "gelu", "quick_gelu": "quick_gelu", "gelu_tanh": "gelu_tanh", "silu": "silu",
            "nn.SiLU": "silu", "relu": "relu"}
VIT_MLPS = {None: "mlp", "Mlp": "mlp", "SwiGLUPacked": "swiglu_packed", "SwiGLU": "swiglu"}
VIT_BLOCKS = {None: "pre", "Block": "pre", "ResPostBlock": "res_post", "ParallelThingsBlock": "parallel",
              "ParallelScalingBlock": "parallel_scaling", "DiffParallelScalingBlock": "diff_parallel_scaling"}
# model_args the reference takes as they are
VIT_PLAIN = ("embed_dim", "num_heads", "mlp_ratio", "qkv_bias", "qk_norm", "scale_attn_norm", "scale_mlp_norm",
             "proj_bias", "init_values", "class_token", "no_embed_class", "reg_tokens", "pre_norm", "final_norm",
             "fc_norm", "pool_include_prefix", "dynamic_img_size", "global_pool")


def vit_depth(width):
    return 2 if width <= 512 else 1


def vit_mlp_ratio(width, ratio):
    """The registered MLP ratio up to 768 wide; half the width above (the converter reads the MLP
    width from the tensors, and the file sizes of the widest models stay small)."""
    return ratio if width <= 768 else 0.5


def small_vit_plan(kw, p, cfg):
    """A plan's small stand-in for a registered ViT-like model: patch size p, a 3 x 3 patch input, the
    depth and MLP ratio scaled down for its width, 10 classes when it has a head."""
    kw.update(patch_size=p, depth=vit_depth(kw["embed_dim"]), img_size=3 * p,
              mlp_ratio=vit_mlp_ratio(kw["embed_dim"], kw.get("mlp_ratio", 4.0)))
    kw["num_classes"] = 10 if cfg.get("num_classes", 1000) else 0
    return kw, (3 * p, 3 * p)


def plan_vit(args, cfg):
    """(reference kwargs, input size) for a timm VisionTransformer's model_args, shrunk: its depth to
    1-2 blocks and its image to a 3 x 2 patch grid (height x width), width and options as registered."""
    kw = {}
    for k, v in args.items():
        if k in VIT_PLAIN:
            kw[k] = v
        elif k == "norm_layer":
            if v not in VIT_NORMS:
                raise NoReference("norm_layer=%s" % v)
            kw["norm"], kw["eps"] = VIT_NORMS[v]
        elif k == "embed_norm_layer":
            if v not in VIT_NORMS or VIT_NORMS[v] != VIT_NORMS.get(args.get("norm_layer")):
                raise NoReference("embed_norm_layer=%s" % v)
            kw["embed_norm"] = True
        elif k == "act_layer":
            if v not in VIT_ACTS:
                raise NoReference("act_layer=%s" % v)
            kw["act_layer"] = VIT_ACTS[v]
        elif k == "mlp_layer":
            if v not in VIT_MLPS:
                raise NoReference("mlp_layer=%s" % v)
            kw["mlp_layer"] = VIT_MLPS[v]
        elif k == "block_fn":
            if v not in VIT_BLOCKS:
                raise NoReference("block_fn=%s" % v)
            kw["block_fn"] = VIT_BLOCKS[v]
        elif k == "attn_layer":
            if v != "diff":
                raise NoReference("attn_layer=%s" % v)
            kw["attn_layer"] = v
        elif k in ("patch_size", "depth", "img_size"):
            pass
        else:
            raise NoReference("%s=%s" % (k, v))
    if kw.get("global_pool", "token") not in ("token", "avg", "map", ""):
        raise NoReference("global_pool=%s" % kw["global_pool"])
    if kw.get("global_pool") == "":
        raise NoReference("global_pool='' (no pooling)")
    p = args.get("patch_size", 16)
    if not _int(p):
        raise NoReference("patch_size=%s" % p)
    return small_vit_plan(kw, p, cfg)


def build_vit(kw):
    return timm_vit.VisionTransformer(**kw)


# ------------------------------------------------------------------ beit.py

BEIT_PLAIN = ("embed_dim", "num_heads", "mlp_ratio", "qkv_bias", "use_abs_pos_emb", "use_rel_pos_bias",
              "use_shared_rel_pos_bias", "init_values", "global_pool")


def plan_beit(args, cfg):
    kw = {}
    for k, v in args.items():
        if k in BEIT_PLAIN:
            kw[k] = v
        elif k not in ("patch_size", "depth", "img_size"):
            raise NoReference("%s=%s" % (k, v))
    p = args.get("patch_size", 16)
    return small_vit_plan(kw, p, cfg)


def build_beit(kw):
    return beit_ref.Beit(**kw)


# ------------------------------------------------------------------ swin_transformer.py

def plan_swin(args, cfg):
    """Swin at its registered input size (windows, shifts and padding as the real model has them),
    two blocks in every stage but the last (one shifted window each), width and heads as registered."""
    kw = {}
    for k, v in args.items():
        if k in ("patch_size", "window_size", "embed_dim", "num_heads", "mlp_ratio", "qkv_bias"):
            kw[k] = v
        elif k not in ("depths", "img_size"):
            raise NoReference("%s=%s" % (k, v))
    depths = args.get("depths", [2, 2, 6, 2])
    kw["depths"] = [min(d, 2) for d in depths[:-1]] + [1]
    kw["num_heads"] = list(kw.get("num_heads", [3, 6, 12, 24]))
    img = args.get("img_size") or cfg.get("input_size", [3, 224, 224])[1]
    kw["mlp_ratio"] = vit_mlp_ratio(kw["embed_dim"] * 8, kw.get("mlp_ratio", 4.0))
    kw.update(img_size=img, num_classes=10 if cfg.get("num_classes", 1000) else 0, era="timm096")
    return kw, (img, img)


def build_swin(kw):
    kw = dict(kw)
    return swin_ref.SwinTransformer(**kw)


# ------------------------------------------------------------------ eva.py, swin_transformer_v2.py

# references written with timm's constructor keywords: what their signature takes is passed on,
# anything else is an option they cannot build yet
LAYER_NAMES = {"partial(LayerNorm, eps=1e-05)": ("layernorm", 1e-5)}


def by_signature(cls, args, skip=()):
    params = inspect.signature(cls.__init__).parameters
    kw = {}
    for k, v in args.items():
        if k in skip:
            continue
        if k not in params or (isinstance(v, str) and "(" in v and v not in LAYER_NAMES):
            raise NoReference("%s=%s" % (k, v))
        kw[k] = v
    return kw


def plan_eva(args, cfg):
    from models import eva_ref
    # dynamic_img_size only changes how timm resamples pos_embed / RoPE for an input of another size
    # than the model was built for; the suite runs every model at its built size, where it is a no-op
    kw = by_signature(eva_ref.Eva, args, skip=("depth", "img_size", "dynamic_img_size"))
    p = args.get("patch_size", 16)
    kw.update(depth=vit_depth(kw["embed_dim"]), img_size=3 * p,
              mlp_ratio=vit_mlp_ratio(kw["embed_dim"], kw.get("mlp_ratio", 4.0)))
    kw["num_classes"] = 10 if cfg.get("num_classes", 1000) else 0
    return kw, (3 * p, 3 * p)


def build_eva(kw):
    from models import eva_ref
    kw = dict(kw)
    if "norm_layer" in kw:
        eps = LAYER_NAMES[kw["norm_layer"]][1]
        kw["norm_layer"] = lambda d: eva_ref.LayerNorm(d, eps=eps)
    return eva_ref.Eva(**kw)


def plan_swinv2(args, cfg):
    from models import swinv2_ref
    kw = by_signature(swinv2_ref.SwinTransformerV2, args, skip=("depths", "img_size"))
    depths = args.get("depths", [2, 2, 6, 2])
    kw["depths"] = [min(d, 2) for d in depths[:-1]] + [1]
    img = args.get("img_size") or cfg.get("input_size", [3, 256, 256])[1]
    kw.update(img_size=img, num_classes=10 if cfg.get("num_classes", 1000) else 0)
    return kw, (img, img)


def build_swinv2(kw):
    from models import swinv2_ref
    return swinv2_ref.SwinTransformerV2(**kw)


# ------------------------------------------------------------------ the table

# timm module -> (plan, build): plan(model_args, pretrained_cfg) gives the reference's kwargs and the
# input size, or raises NoReference; build(kwargs) gives the model.  None: no reference yet
REFERENCES = {
    "vision_transformer": (plan_vit, build_vit),
    "beit": (plan_beit, build_beit),
    "swin_transformer": (plan_swin, build_swin),
    "eva": (plan_eva, build_eva),
    "swin_transformer_v2": (plan_swinv2, build_swinv2),
}


def seeded(model, seed, module):
    if module == "swin_transformer_v2":
        from models import swinv2_ref
        swinv2_ref.randomize_(model, seed=seed)
    elif module.startswith("swin"):
        swin_ref.randomize_(model, seed=seed)
    else:
        timm_vit.randomize_(model, seed=seed)
    return model.eval()


def convert_quietly(src, dst):
    """tools/convert.py SRC -o DST in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = convert_cli.main([src, "-o", dst])
        except SystemExit as e:  # argparse
            code = e.code if isinstance(e.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def one_line(text):
    return " ".join(text.strip().split())


def attempt(arch, kw, size, build, seed):
    """(outcome, detail) for one architecture."""
    module = arch["module"]
    try:
        torch.manual_seed(seed)
        model = seeded(build(kw), seed, module)
    except Exception as e:  # noqa: BLE001 - a reference that cannot build this is named, not hidden
        return "CRASH", "the reference failed to build: %s: %s" % (type(e).__name__, e)
    d = tmpdir()
    ckpt, lmv = os.path.join(d, arch["name"] + ".pth"), os.path.join(d, "model.lmv")
    torch.save(model.state_dict(), ckpt)
    code, out, err = convert_quietly(ckpt, lmv)
    msg = one_line(err)
    if code != 0:
        if "internal error" in msg or not msg:
            return "CRASH", "converter: " + (msg or "failed with no message")
        return "REFUSED", "converter: " + re.sub(r"^.*?error: ", "", msg)
    x = torch.randn(2, 3, size[0], size[1], generator=torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        want = model(x).numpy()
    inp, outp = os.path.join(d, "in.npy"), os.path.join(d, "out.npy")
    save_npy(inp, x.numpy())
    # a model without a classifier head (num_classes=0 in its default config) gives its pooled features
    features = ["--features"] if kw.get("num_classes") == 0 else []
    code, _, err = run([LMV, "run", lmv, inp, outp] + features)
    msg = one_line(err)
    if code != 0:
        if code < 0 or code > 2 or not msg:
            return "CRASH", "lmv run exit %d: %s" % (code, msg or "no message")
        return "REFUSED", "loader: " + re.sub(r"^lmv: ", "", msg)
    got = np.load(outp)
    ok, desc = logits_close(got, want)
    return ("EXACT" if ok else "WRONG"), desc


def ambiguous_grid(res):
    """A pos_embed whose length fits two grids (9 rows, 5 prefix tokens: 2x2 with the prefix rows or
    3x3 without, timm's no_embed_class) under a file name that says nothing is refused, not guessed;
    the timm name (vit_small_patch14_reg4_dinov2 registers no_embed_class=True) settles it."""
    torch.manual_seed(5)
    model = seeded(timm_vit.VisionTransformer(img_size=42, patch_size=14, embed_dim=384, depth=1, num_heads=6,
                                              init_values=1e-5, reg_tokens=4, no_embed_class=True, num_classes=10),
                   5, "vision_transformer")
    d = tmpdir()
    for name in ("model.pth", "vit_small_patch14_reg4_dinov2.pth"):
        ckpt = os.path.join(d, name)
        torch.save(model.state_dict(), ckpt)
        code, _, err = convert_quietly(ckpt, os.path.join(d, "out.lmv"))
        if name == "model.pth":
            res.check("an ambiguous pos_embed length under a generic file name is refused",
                      code != 0 and "vit.no_embed_class" in err, one_line(err) or "converted")
        else:
            res.check("the timm name settles an ambiguous pos_embed length", code == 0, one_line(err))


def rope_names(res):
    """timm's RoPE ViTs (eva.py: eva02_*, vit_*_rope_*) keep their rotary tables out of the state dict,
    so a file of one can look like a plain ViT's: its name is what shows the RoPE, and the converter
    must then write a RoPE model (vit.rope), never a plain ViT."""
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import lmvfile
    torch.manual_seed(6)
    model = seeded(timm_vit.VisionTransformer(img_size=48, patch_size=16, embed_dim=384, depth=1, num_heads=6,
                                              num_classes=10), 6, "vision_transformer")
    d = tmpdir()
    for name in ("vit_small_patch16_rope_ape_224", "vit_small_patch16_rope_mixed_ape_224"):
        ckpt = os.path.join(d, name + ".pth")
        out = os.path.join(d, name + ".lmv")
        torch.save(model.state_dict(), ckpt)
        code, _, err = convert_quietly(ckpt, out)
        rope = lmvfile.read(out).meta.get("vit.rope") if code == 0 else None
        res.check("a plain-looking ViT named %s converts as a RoPE model or is refused" % name,
                  (code != 0 and "RoPE" in err) or rope in ("axial", "mixed"),
                  "vit.rope=%s" % rope if code == 0 else one_line(err))


def main():
    only = None
    if "--only" in sys.argv:
        only = re.compile(sys.argv[sys.argv.index("--only") + 1])
    cat = json.load(open(CATALOGUE))
    res = Results()
    if not os.path.exists(LMV):
        res.check("build/lmv exists", False, "run `make build/lmv` first")
        res.finish()
    if only is None:
        ambiguous_grid(res)
        rope_names(res)
    rows, done = [], {}
    for i, arch in enumerate(cat["architectures"]):
        name, module = arch["name"], arch["module"]
        if only and not only.search(name):
            continue
        ref = REFERENCES.get(module)
        if ref is None:
            rows.append((name, module, "NO-REFERENCE", "no reference of timm's %s.py yet" % module, ""))
            continue
        plan, build = ref
        try:
            kw, size = plan(arch["model_args"], arch.get("pretrained_cfg") or {})
        except NoReference as e:
            rows.append((name, module, "NO-REFERENCE", "the reference cannot build %s yet" % e, ""))
            continue
        key = (module, json.dumps(kw, sort_keys=True), size)
        if key in done:
            outcome, detail, first = done[key]
            rows.append((name, module, outcome, detail, "as " + first))
        else:
            outcome, detail = attempt(arch, kw, size, build, seed=1000 + i)
            done[key] = (outcome, detail, name)
            rows.append((name, module, outcome, detail, ""))
        _, _, outcome, detail, same = rows[-1]
        label = "%s (%s)" % (name, module)
        if outcome == "EXACT":
            res.check(label, True, "EXACT, " + detail + (", " + same if same else ""))
        elif outcome == "REFUSED":
            res.check(label, True, "REFUSED: " + detail + (" (" + same + ")" if same else ""))
        else:
            res.check(label, False, outcome + ": " + detail + (" (" + same + ")" if same else ""))
    for name, module, outcome, detail, _ in rows:
        if outcome == "NO-REFERENCE":
            print("NO-REFERENCE %s (%s): %s" % (name, module, detail))

    # summary per module, and the full table
    kinds = ["EXACT", "REFUSED", "WRONG", "CRASH", "NO-REFERENCE"]
    lines = ["# timm architectures on lemevit.h", "",
             "timm %s (tests/data/timm/catalogue.json); `python3 tests/test_timm_family.py`." % cat["commit"][:12], "",
             "| module | architectures | " + " | ".join(kinds) + " | exact |", "|---" * (len(kinds) + 3) + "|"]
    total = {k: 0 for k in kinds}
    for module in cat["modules"]:
        mine = [r for r in rows if r[1] == module]
        if not mine:
            continue
        counts = {k: sum(1 for r in mine if r[2] == k) for k in kinds}
        for k in kinds:
            total[k] += counts[k]
        pct = 100.0 * counts["EXACT"] / len(mine)
        print("SUMMARY %-20s %3d architectures: %s; %.1f %% exact"
              % (module, len(mine), ", ".join("%d %s" % (counts[k], k) for k in kinds), pct))
        lines.append("| %s | %d | %s | %.1f %% |" % (module, len(mine), " | ".join(str(counts[k]) for k in kinds), pct))
    n = len(rows)
    if n:
        pct = 100.0 * total["EXACT"] / n
        lines.append("| all | %d | %s | %.1f %% |" % (n, " | ".join(str(total[k]) for k in kinds), pct))
        lines += ["", "| architecture | module | outcome | detail |", "|---|---|---|---|"]
        for name, module, outcome, detail, same in rows:
            lines.append("| %s | %s | %s | %s |" % (name, module, outcome,
                                                    (detail + (" (" + same + ")" if same else "")).replace("|", "\\|")))
        os.makedirs(BUILD, exist_ok=True)
        with open(REPORT, "w") as f:
            f.write("\n".join(lines) + "\n")
        print("COVERAGE %d of %d timm architectures exact (%.1f %%), %d refused, %d without a reference; "
              "the issue's bar is 90 %%: %s; table in %s"
              % (total["EXACT"], n, pct, total["REFUSED"], total["NO-REFERENCE"],
                 "met" if pct >= 90.0 else "not met", os.path.relpath(REPORT, ROOT)))
    res.finish()


if __name__ == "__main__":
    main()
