"""BEiT on the ViT graph, against a faithful reference written from timm's beit.py (tests/models/beit_ref.py):
q_bias / v_bias without a k bias, relative position bias per block, shared, and both (with the
class-token rows of the table), layer scale gamma_1 / gamma_2, mean pooling with fc_norm and class
token pooling, with and without the absolute pos_embed; the official microsoft/unilm layout that
stores the relative_position_index buffers. Random weights, small widths, batch 2, every block
compared. Refusals: a stray tensor, a wrong index buffer, a table of another size, another input size."""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import LMV, ROOT, Results, convert, lmv_run, run, tmpdir  # noqa: E402
from models import beit_ref  # noqa: E402
from models.timm_vit import randomize_  # noqa: E402
from parity import check_refused, check_summary, check_vit_run, image, save_torch  # noqa: E402

torch.set_num_threads(2)
res = Results()


def parity(name, model, x, conv_opts=(), expect=()):
    ckpt, lmv = save_torch(model.state_dict())
    try:
        out = convert(ckpt, lmv, *conv_opts)
        check_vit_run(res, name, model, lmv, x)
    except RuntimeError as e:
        res.check(name, False, str(e))
        return None
    check_summary(res, name, out, expect)
    return lmv


def beit(seed, img=32, **kw):
    torch.manual_seed(seed)
    args = dict(img_size=img, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=10)
    args.update(kw)
    return randomize_(beit_ref.Beit(**args), seed=seed).eval()


def refused(name, sd, words, conv_opts=()):
    check_refused(res, name, *save_torch(sd), words, conv_opts)


def loader_refusals(lmv):
    """The loader refuses a file whose rel-pos / abs-pos settings disagree with its tensors, naming them."""
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import lmvfile
    f = lmvfile.read(lmv)
    d = tmpdir()

    def rewrite(name, meta_change):
        meta = [(k, meta_change.get(k, v)) for k, v in ((k, lmvfile.Typed(f.meta_types[k], v)) for k, v in f.meta.items())]
        tensors = [(n, t.shape, f.tensor(n), t.dtype_name) for n, t in f.tensors.items()]
        path = os.path.join(d, name)
        lmvfile.write(path, meta, tensors)
        code, out, err = run([LMV, "info", path])
        return code, err.strip()

    code, err = rewrite("none.lmv", {"vit.rel_pos": "none"})
    res.check("loader refuses tables the settings do not use", code != 0 and "relative_position_bias_table" in err, err)
    code, err = rewrite("shared.lmv", {"vit.rel_pos": "shared_table"})
    res.check("loader refuses vit.rel_pos=shared_table without its table",
              code != 0 and "rel_pos_bias.relative_position_bias_table" in err, err)
    code, err = rewrite("abs.lmv", {"vit.abs_pos": lmvfile.Typed(lmvfile.T_INT32, [1])})
    res.check("loader refuses vit.abs_pos=1 without pos_embed", code != 0 and "pos_embed" in err, err)
    code, err = rewrite("grid.lmv", {"vit.pos_grid": lmvfile.Typed(lmvfile.T_INT32, [4, 5])})
    res.check("loader refuses a table of another grid", code != 0 and "relative_position_bias_table" in err, err)


def main():
    # timm's BEiT fine-tuned default: no abs pos, a table per block, layer scale, mean pooling + fc_norm;
    # a non-square input (its grid is given, as the table of a 4x6 grid is not square)
    m = beit(1, img=(32, 48), use_abs_pos_emb=False, use_rel_pos_bias=True, init_values=0.1)
    x = image(32, 48)
    lmv = parity("BEiT per-block rel-pos, no abs pos, layer scale, mean pooling, 32x48", m, x,
                 conv_opts=("--img-size", "32", "48"),
                 expect=("source      beit", "vit.rel_pos=block", "vit.abs_pos=0", "heads 4", "avg"))
    refused("without --img-size a non-square grid's table is refused", m.state_dict(),
            ["relative_position_bias_table", "80 rows", "--img-size"])
    if lmv:
        loader_refusals(lmv)
        try:
            lmv_run(lmv, image(48, 32).numpy())
            res.check("another input size is refused", False, "ran")
        except RuntimeError as e:
            res.check("another input size is refused", "trained 32x48" in str(e) and "resize" in str(e), str(e))

    # shared table, abs pos on, class token pooling, no layer scale
    parity("BEiT shared rel-pos, abs pos, class token", beit(2, use_shared_rel_pos_bias=True, global_pool="token"),
           image(32, 32), expect=("vit.rel_pos=shared_table", "pos_embed covers prefix"))
    # both tables, no qkv bias
    parity("BEiT per-block + shared rel-pos, no qkv bias, layer scale",
           beit(3, use_rel_pos_bias=True, use_shared_rel_pos_bias=True, use_abs_pos_emb=False, qkv_bias=False,
                init_values=0.1), image(32, 32))
    # the official microsoft/unilm layout: the index buffers stored (checked, not written)
    m = beit(4, use_rel_pos_bias=True, use_abs_pos_emb=False, init_values=0.1, persistent_index=True)
    sd = m.state_dict()
    res.check("unilm layout stores relative_position_index", "blocks.0.attn.relative_position_index" in sd)
    parity("BEiT unilm layout (stored relative_position_index)", m, image(32, 32))
    bad = dict(sd)
    idx = bad["blocks.1.attn.relative_position_index"].clone()
    idx[1, 2] += 1
    bad["blocks.1.attn.relative_position_index"] = idx
    refused("a wrong relative_position_index is refused", bad, ["blocks.1.attn.relative_position_index", "4x4"])

    # the abs pos embedding with a per-block table, class token
    parity("BEiT per-block rel-pos with abs pos, class token",
           beit(5, use_rel_pos_bias=True, global_pool="token", init_values=0.1), image(32, 32))

    # a BEiT v2 checkpoint named by its training args: ImageNet mean/std (BEiT v1 keeps 0.5/0.5)
    m = beit(7, use_rel_pos_bias=True, use_abs_pos_emb=False, init_values=1e-5)
    for arch, mean in (("beitv2_large_patch16_224", "mean [0.485, 0.456, 0.406]"), ("beit_base_patch16_224",
                                                                                       "mean [0.5, 0.5, 0.5]")):
        ckpt, lmv = save_torch({"model": m.state_dict(), "args": {"model": arch}})
        try:
            out = convert(ckpt, lmv)
        except RuntimeError as e:
            out = str(e)
        res.check(f"{arch} preprocessing: {mean}", mean in out, out)
        if arch.startswith("beitv2"):
            res.check(f"{arch} crop_pct 0.95", "crop_pct 0.95" in out, out)

    # refusals
    m = beit(6, use_rel_pos_bias=True, use_abs_pos_emb=False, init_values=0.1)
    sd = m.state_dict()
    stray = dict(sd)
    stray["blocks.0.attn.k_bias"] = torch.zeros(64)
    refused("a stray k_bias is refused by name", stray, ["blocks.0.attn.k_bias"])
    part = {k: v for k, v in sd.items() if k != "blocks.1.attn.relative_position_bias_table"}
    refused("a table in only some blocks is refused", part, ["relative position bias", "only some blocks"])
    big = dict(sd)
    for i in range(2):
        big[f"blocks.{i}.attn.relative_position_bias_table"] = torch.zeros(2 * 11 * 11 + 3, 4)
    refused("a table of another size is refused", big, ["relative_position_bias_table", "rows"],
            conv_opts=("--img-size", "32", "32"))
    res.finish()


if __name__ == "__main__":
    main()
