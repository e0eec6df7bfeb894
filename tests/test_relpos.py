"""timm's relative-position ViTs (vision_transformer_relpos.py) on the ViT graph, against a faithful
reference written from timm (tests/models/relpos_ref.py): RelPosMlp per block and shared, modes
'cr' and 'swin', with and without a class token (its bias row and column zero), RelPosBias tables
per block and shared (with and without a class token), RelPosBlock and ResPostRelPosBlock, qk_norm,
fc_norm + mean pooling and final norm + class token pooling. Also timm's ParallelThingsBlock
(vit_*_18x2_*, two and three branches), ParallelScalingBlock (fused in_proj, separate or fused
out_proj) and RmsNorm (AIMv2, vit_*_xp_*). The MLP bias follows the input size (the reference is
rebuilt at that size with the same weights); the table variant refuses another size. Random
weights, small widths, batch 2, every block compared. Refusals: an MLP in only some blocks, tables
and MLPs together, MLPs of mixed modes, a 'swin' MLP on a one-patch-wide input, a missing parallel
branch, mixed RMS / LayerNorm norms, stray tensors, settings a file's tensors contradict, differential attention in
timm's DiffParallelScalingBlock (out of scope: named)."""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import LMV, ROOT, Results, convert, lmv_run, run, tmpdir  # noqa: E402
from models import relpos_ref  # noqa: E402
sys.path.insert(0, os.path.join(ROOT, "tools"))
import lmvfile  # noqa: E402
from models.timm_vit import randomize_  # noqa: E402
from parity import check_refused, check_vit_run, convert_checked, image, save_torch  # noqa: E402

torch.set_num_threads(2)
res = Results()


def check_run(name, model, lmv, x):
    try:
        check_vit_run(res, name, model, lmv, x)
    except RuntimeError as e:
        return res.check(name, False, str(e))


def parity(name, model, x, conv_opts=(), expect=()):
    ckpt, lmv = save_torch(model.state_dict())
    if convert_checked(res, name, ckpt, lmv, conv_opts, expect) is None:
        return None
    check_run(name, model, lmv, x)
    return lmv


def relpos(seed, img=32, **kw):
    torch.manual_seed(seed)
    args = dict(img_size=img, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=10, rel_pos_dim=24,
                qkv_bias=False, init_values=0.1)
    args.update(kw)
    return randomize_(relpos_ref.VisionTransformerRelPos(**args), seed=seed).eval()


def rebuilt(model, seed, img, **kw):
    """The same weights in a reference built for another input size (timm's img_size=...)."""
    m = relpos(seed, img=img, **kw)
    m.load_state_dict(model.state_dict())
    return m


def refused(name, sd, words, conv_opts=()):
    check_refused(res, name, *save_torch(sd), words, conv_opts)


def loader_refuses(name, lmv, change, words):
    """The loader refuses a copy of the file whose settings (`change`) disagree with its tensors, naming them."""
    f = lmvfile.read(lmv)
    meta = [(k, change.get(k, lmvfile.Typed(f.meta_types[k], v))) for k, v in f.meta.items()]
    tensors = [(n, t.shape, f.tensor(n), t.dtype_name) for n, t in f.tensors.items()]
    path = os.path.join(tmpdir(), "changed.lmv")
    lmvfile.write(path, meta, tensors)
    code, out, err = run([LMV, "info", path])
    res.check(name, code != 0 and all(w in err for w in words), err.strip())


def main():
    # vit_relpos_small/medium/base_patch16_224 style: an MLP per block ('cr'), no class token,
    # fc_norm + mean pooling; the file's input size is assumed (the MLP has none), the run follows
    # any input size, here non-square
    kw = dict(fc_norm=True)
    m = relpos(1, img=(32, 48), **kw)
    lmv = parity("MLP per block, cr, no class token, fc_norm avg, 32x48", m, image(32, 48),
                 expect=("source      relpos", "vit.rel_pos=mlp_block vit.rel_mlp=cr", "no pos_embed", "heads 4",
                         "img_size=224,224"))
    if lmv:
        loader_refuses("the loader refuses MLP tensors that vit.rel_pos=none does not use", lmv, {"vit.rel_pos": "none"},
                       ["rel_pos.mlp"])
        check_run("same file at 48x40", rebuilt(m, 1, (48, 40), **kw), lmv, image(48, 40, seed=8))
        check_run("same file at 16x8", rebuilt(m, 1, (16, 8), **kw), lmv, image(16, 8, seed=9))

    # vit_srelpos_*: one shared MLP, no fc_norm (final norm), mean pooling
    parity("shared MLP, cr, final norm, avg", relpos(2, shared_rel_pos=True, rel_pos_dim=32), image(32, 32),
           conv_opts=("--img-size", "32", "32"), expect=("vit.rel_pos=mlp_shared",))
    # vit_relpos_medium_patch16_cls_224: class token (its bias row and column zero), token pooling
    kw = dict(class_token=True, global_pool="token")
    m = relpos(3, img=(40, 32), **kw)
    lmv = parity("MLP per block, class token, token pool, 40x32", m, image(40, 32), conv_opts=("--img-size", "40", "32"),
                 expect=("cls", "pool token"))
    if lmv:
        check_run("class-token model at 24x56", rebuilt(m, 3, (24, 56), **kw), lmv, image(24, 56, seed=3))
    # shared MLP with a class token
    parity("shared MLP, class token, token pool", relpos(4, shared_rel_pos=True, class_token=True, global_pool="token"),
           image(32, 32), conv_opts=("--img-size", "32", "32"))
    # vit_relpos_*_rpn_*: ResPostRelPosBlock (no layer scale), the MLP in 'swin' mode (16 sigmoid,
    # no fc2 bias), class token with fc_norm + mean pooling (clsgap)
    kw = dict(block_fn="res_post", init_values=None, rel_pos_type="mlp_swin", class_token=True, fc_norm=True)
    m = relpos(5, **kw)
    lmv = parity("ResPost blocks, swin MLP, class token, fc_norm avg", m, image(32, 32),
                 conv_opts=("--img-size", "32", "32", "--set", "vit.block=res_post"),
                 expect=("vit.rel_mlp=swin", "res-post-norm"))
    if lmv:
        check_run("swin MLP at 24x40", rebuilt(m, 5, (24, 40), **kw), lmv, image(24, 40, seed=5))
        try:
            lmv_run(lmv, image(8, 32).numpy())
            res.check("a swin MLP refuses a one-patch-high input", False, "ran")
        except RuntimeError as e:
            res.check("a swin MLP refuses a one-patch-high input", "2x2" in str(e) and "swin" in str(e), str(e))
    # older timm's 'rw' mode (4 tanh over window-normalised log2 coordinates): its fc2 has a bias like
    # 'cr', so only metadata or the flag tells; without them 'cr' is listed as assumed
    kw = dict(rel_pos_type="mlp_rw", class_token=True, global_pool="token")
    m = relpos(17, **kw)
    out = parity("rw MLP (--set vit.rel_mlp=rw)", m, image(32, 32), conv_opts=("--img-size", "32", "32", "--set",
                                                                           "vit.rel_mlp=rw"), expect=("vit.rel_mlp=rw",))
    if out:
        check_run("rw MLP at 40x24", rebuilt(m, 17, (40, 24), **kw), out, image(40, 24, seed=17))
    ckpt, lmv = save_torch(m.state_dict())
    try:
        text = convert(ckpt, lmv, "--img-size", "32", "32")
    except RuntimeError as e:
        text = str(e)
    res.check("an fc2 with bias is 'cr', listed as assumed", "assumed       vit.rel_mlp=cr" in text, text)
    refused("vit.rel_mlp=swin over an fc2 with bias is refused", m.state_dict(), ["vit.rel_mlp=swin", "has a bias"],
            conv_opts=("--img-size", "32", "32", "--set", "vit.rel_mlp=swin"))
    # qk_norm with a shared swin MLP
    parity("qk_norm, shared swin MLP", relpos(6, qk_norm=True, shared_rel_pos=True, rel_pos_type="mlp_swin"),
           image(32, 32), conv_opts=("--img-size", "32", "32"))

    # rel_pos_type='bias': RelPosBias tables, per block without a class token, at the trained size only
    m = relpos(7, img=(32, 48), rel_pos_type="bias", fc_norm=True)
    lmv = parity("RelPosBias per block, no class token, 32x48", m, image(32, 48), conv_opts=("--img-size", "32", "48"),
                 expect=("vit.rel_pos=block", "input fixed"))
    if lmv:
        try:
            lmv_run(lmv, image(48, 32).numpy())
            res.check("a table model refuses another input size", False, "ran")
        except RuntimeError as e:
            res.check("a table model refuses another input size", "trained 32x48" in str(e), str(e))
    # a shared table with a class token (BEiT's class-token rows)
    parity("RelPosBias shared, class token", relpos(8, rel_pos_type="bias", shared_rel_pos=True, class_token=True,
                                                    global_pool="token"), image(32, 32), conv_opts=("--img-size", "32", "32"),
           expect=("vit.rel_pos=shared_table",))

    # timm ParallelThingsBlock (vit_*_18x2_*): two branches per block with layer scale, class token
    torch.manual_seed(10)
    m = randomize_(relpos_ref.parallel_vit(2, 2, 64, 4, img_size=32, patch_size=8, num_classes=10), seed=10).eval()
    lmv = parity("parallel blocks, 2 branches, layer scale, class token", m, image(32, 32),
                 conv_opts=("--num-heads", "4"), expect=("parallel blocks: 2 branches", "depth 2"))
    if lmv:
        loader_refuses("the loader refuses parallel tensors with vit.parallel=1", lmv,
                       {"vit.parallel": lmvfile.Typed(lmvfile.T_INT32, [1])}, ["blocks.0"])
    # three branches, qk_norm, no layer scale, mean pooling with fc_norm
    torch.manual_seed(11)
    m = randomize_(relpos_ref.parallel_vit(2, 3, 64, 4, init_values=None, qk_norm=True, img_size=32, patch_size=8,
                                           num_classes=10, global_pool="avg"), seed=11).eval()
    psd = m.state_dict()
    parity("parallel blocks, 3 branches, qk_norm, avg", m, image(32, 32))
    part = {k: v for k, v in psd.items() if not k.startswith("blocks.1.ffns.2.")}
    refused("parallel blocks with a missing branch are refused", part, ["parallel blocks", "same branches"])
    stray = dict(psd)
    stray["blocks.0.attns.1.extra.weight"] = torch.zeros(4)
    refused("a stray parallel-branch tensor is refused by name", stray, ["blocks.0.attns.1.extra.weight"])

    # timm ParallelScalingBlock (vit_pwee_patch16_reg1_gap_256 style): fused in_proj with its bias, a
    # register token, no class token, mean pooling, layer scale, mlp ratio 5
    torch.manual_seed(12)
    m = randomize_(relpos_ref.scaling_vit(2, 64, 4, mlp_ratio=5, init_values=1e-5, class_token=False, no_embed_class=True,
                                          reg_tokens=1, global_pool="avg", img_size=32, patch_size=8, num_classes=10),
                   seed=12).eval()
    parity("parallel-scaling blocks, in_proj bias, register token, avg", m, image(32, 32), conv_opts=("--num-heads", "4"),
           expect=("parallel-scaling blocks", "parallel-scaling pre-norm"))
    # no qkv bias (a separate mlp_bias), qk_norm, the fused out_proj, class token
    torch.manual_seed(13)
    m = randomize_(relpos_ref.scaling_vit(2, 64, 4, qkv_bias=False, qk_norm=True, fuse_out_proj=True, img_size=32,
                                          patch_size=8, num_classes=10), seed=13).eval()
    ssd = m.state_dict()
    parity("parallel-scaling blocks, mlp_bias, qk_norm, fused out_proj", m, image(32, 32))
    rms = {k: v for k, v in ssd.items() if not k.endswith("in_norm.bias")}
    refused("a parallel-scaling in_norm without bias beside LayerNorm qk-norms is refused", rms,
            ["vit.norm=rms", "blocks.0.attn.q_norm.bias"])
    # timm DiffParallelScalingBlock (vit_dpwee_*): differential attention is out of scope, refused by its
    # tensors (lambda_q1 / lambda_k1 ... or dual_lambda's lambda_a / lambda_b, sub_norm) with the block named
    from models import timm_vit
    for seed, dual in ((14, False), (15, True)):
        torch.manual_seed(seed)
        m = timm_vit.VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, mlp_ratio=5,
                                       init_values=1e-5, class_token=False, no_embed_class=True, reg_tokens=1,
                                       global_pool="avg", num_classes=10, block_fn="diff_parallel_scaling")
        if dual:
            for i in range(len(m.blocks)):   # timm's block option dual_lambda (VisionTransformer does not pass it)
                m.blocks[i] = timm_vit.DiffParallelScalingBlock(64, 4, 5, True, 1e-5,
                                                                lambda d: torch.nn.LayerNorm(d, eps=1e-6),
                                                                depth=i, dual_lambda=True)
        key = "blocks.0.lambda_a" if dual else "blocks.0.lambda_q1"
        res.check("DiffParallelScalingBlock reference has %s" % key, key in m.state_dict())
        refused("a parallel block with differential attention is refused by name (%s)" % key.split(".")[-1],
                m.state_dict(), [key, "differential attention", "DiffParallelScalingBlock"])

    # timm's RmsNorm: AIMv2 (every norm RMS, the patch embedding's too, SwiGLU + SiLU, no biases, mean
    # pooling after the final norm) and vit_*_xp_* (ParallelScalingBlock, RMS qk-norm, norm_pre)
    torch.manual_seed(14)
    m = randomize_(relpos_ref.aimv2_vit(2, 64, 4, img_size=32, patch_size=8, num_classes=10), seed=14).eval()
    parity("AIMv2-style RmsNorm, SwiGLU, no biases", m, image(32, 32), conv_opts=("--num-heads", "4", "--eps", "1e-5"),
           expect=("RmsNorm", "vit.norm=rms", "act silu"))
    rsd = m.state_dict()
    torch.manual_seed(15)
    m = randomize_(relpos_ref.to_rms(relpos_ref.scaling_vit(2, 64, 4, qkv_bias=False, qk_norm=True, pre_norm=True,
                                                            no_embed_class=True, img_size=32, patch_size=8,
                                                            num_classes=10)), seed=15).eval()
    parity("xp-style RmsNorm parallel-scaling blocks, RMS qk-norm, norm_pre", m, image(32, 32), expect=("RmsNorm",))
    mixed = dict(rsd)
    mixed["blocks.1.norm2.bias"] = torch.zeros(64)
    refused("RMS norms with one LayerNorm bias are refused", mixed, ["vit.norm=rms", "blocks.1.norm2.bias"],
            conv_opts=("--num-heads", "4"))
    refused("vit.norm=rms over LayerNorm tensors is refused", relpos(16).state_dict(), ["vit.norm=rms", "bias"],
            conv_opts=("--set", "vit.norm=rms"))

    # refusals
    sd = relpos(9).state_dict()
    part = {k: v for k, v in sd.items() if not k.startswith("blocks.1.attn.rel_pos.")}
    refused("an MLP in only some blocks is refused", part, ["relative position MLP", "only some blocks"])
    both = dict(sd)
    both["shared_rel_pos.relative_position_bias_table"] = torch.zeros(7 * 7, 4)
    refused("a table and MLPs together are refused", both, ["tables", "MLP"], conv_opts=("--img-size", "32", "32"))
    mixed = dict(sd)
    del mixed["blocks.1.attn.rel_pos.mlp.fc2.bias"]
    refused("MLPs of different modes are refused", mixed, ["blocks.1.attn.rel_pos.mlp.fc2.bias", "mode"])
    stray = dict(sd)
    stray["blocks.0.attn.rel_pos.mlp.fc3.weight"] = torch.zeros(4, 4)
    refused("a stray MLP tensor is refused by name", stray, ["blocks.0.attn.rel_pos.mlp.fc3.weight"])
    res.finish()


if __name__ == "__main__":
    main()
