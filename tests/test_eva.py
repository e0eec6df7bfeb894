"""EVA / EVA-02 and timm's RoPE ViTs on the ViT graph, against a faithful reference written from timm's
eva.py and pos_embed_sincos.py (tests/models/eva_ref.py): axial RoPE on q and k of the patch tokens
(EVA-02's reference-grid scaling, the RoPE-ViT temperature and 'xy' grid, a grid offset, half
rotation), mixed RoPE with its learned frequencies, DINOv3's RoPE, Perception Encoder towers, SwiGLU packed and unfused with its sub-LN,
attn.norm, unfused q/k/v projections, q_bias / v_bias, layer scale gamma_1 / gamma_2, the post-norm
block, register tokens without a class token, avg pooling + fc_norm and class-token pooling, input
sizes other than the trained one (RoPE recomputed, pos_embed resampled). Random weights, small
widths, batch 2, non-square inputs, every block compared. Refusals: a stray tensor, an option this
library does not run (named), gated attention, an attention-pool head over SwiGLU blocks, a pool head
count that does not divide the width, an attn_pool_mlp_ratio the pool's MLP does not have. Perception
Encoder core: the attention-pool ('map') head with its own head count and MLP ratio, over the class
token too; lmv info names the pool's heads and MLP width."""
import os
import sys
from functools import partial

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import LMV, ROOT, Results, compare_traces, convert, lmv_run, run, tmpdir  # noqa: E402
from models import eva_ref  # noqa: E402
from models.timm_vit import randomize_  # noqa: E402
from parity import block_outputs, check_refused, check_summary, check_vit_run, features_close, image, save_torch  # noqa: E402

torch.set_num_threads(2)
res = Results()


def check_run(name, model, lmv, x):
    """Logits, every block and the pooled features of `lmv` against the reference on x."""
    if isinstance(model.head, torch.nn.Identity):   # no classifier (Perception Encoder towers): the features
        want, acts = block_outputs(model, x)
        got, traces = lmv_run(lmv, x.numpy(), "--features", trace=True)
        res.check(f"{name} features", *features_close(got, want))
        compare_traces(res, name, traces, acts)
        return
    check_vit_run(res, name, model, lmv, x)


def parity(name, model, x, file_name="model.pth", wrap=None, conv_opts=(), expect=(), more=()):
    """Convert the model's state dict (saved as file_name, inside `wrap` if given), compare on x and on
    each input of `more`; the converter's summary must contain every text of `expect`."""
    sd = model.state_dict()
    ckpt, lmv = save_torch(dict(wrap, model=sd) if wrap else sd, file_name)
    try:
        out = convert(ckpt, lmv, "--num-heads", "4", *conv_opts)   # 64 wide: not a width with a known head count
        check_run(name, model, lmv, x)
        for y in more:
            check_run(f"{name}, input {y.shape[2]}x{y.shape[3]}", model, lmv, y)
    except RuntimeError as e:
        res.check(name, False, str(e))
        return None
    check_summary(res, name, out, expect)
    return lmv


def eva(seed, img=(32, 48), **kw):
    torch.manual_seed(seed)
    args = dict(img_size=img, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=10)
    args.update(kw)
    return randomize_(eva_ref.Eva(**args), seed=seed).eval()


def loader_refusals(axial, mixed):
    """The loader refuses files whose RoPE settings disagree with their tensors or are out of range, naming
    the tensor or the key."""
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import lmvfile
    d = tmpdir()

    def rewrite(src, name, meta_change):
        f = lmvfile.read(src)
        meta = [(k, meta_change.get(k, v)) for k, v in ((k, lmvfile.Typed(f.meta_types[k], v)) for k, v in f.meta.items())]
        meta += [(k, v) for k, v in meta_change.items() if k not in f.meta]
        tensors = [(n, t.shape, f.tensor(n), t.dtype_name) for n, t in f.tensors.items()]
        path = os.path.join(d, name)
        lmvfile.write(path, meta, tensors)
        code, out, err = run([LMV, "info", path])
        return code, err.strip()

    code, err = rewrite(mixed, "none.lmv", {"vit.rope": "none"})
    res.check("loader refuses rope.freqs the settings do not use", code != 0 and "rope.freqs" in err, err)
    code, err = rewrite(axial, "mixed.lmv", {"vit.rope": "mixed"})
    res.check("loader refuses vit.rope=mixed without rope.freqs", code != 0 and "rope.freqs" in err, err)
    code, err = rewrite(axial, "grid.lmv", {"vit.rope_ref_grid": lmvfile.Typed(lmvfile.T_INT32, [16, 4097])})
    res.check("loader refuses a reference grid past 4096", code != 0 and "vit.rope_ref_grid" in err, err)
    code, err = rewrite(axial, "idx.lmv", {"vit.rope_indexing": "yx"})
    res.check("loader refuses an unknown vit.rope_indexing", code != 0 and "vit.rope_indexing" in err, err)
    code, err = rewrite(axial, "heads.lmv", {"vit.num_heads": lmvfile.Typed(lmvfile.T_INT32, [32])})
    res.check("loader refuses RoPE over a head width not divisible by 4",
              code != 0 and "vit.rope" in err and "divisible by 4" in err, err)


def refused(name, obj, words, file_name="model.pth", conv_opts=()):
    check_refused(res, name, *save_torch(obj, file_name), words, conv_opts)


EVA02 = dict(mlp_ratio=4 * 2 / 3, swiglu_mlp=True, use_rot_pos_emb=True, ref_feat_shape=(16, 16))


def main():
    # EVA-02-S as timm registers it (packed SwiGLU, RoPE scaled to a 16x16 reference grid, class token,
    # avg pooling + fc_norm, q_bias / v_bias), named by its file; trained 32x48, run also at 40x24
    m = eva(1, **EVA02)
    axial = parity("EVA-02-S style (axial RoPE, packed SwiGLU, cls token, avg pool)", m, image(32, 48),
           file_name="eva02_small_patch14_224.pth", conv_opts=("--img-size", "32", "48"),
           expect=("source      eva", "vit.rope=axial", "mean [0.4815, 0.4578, 0.4082]"),
           more=(image(40, 24, seed=8),))

    # EVA-02-B / CLIP style: unfused q/k/v projections, SwiGLU with its sub-LN (fc1_g, fc1_x, mlp.norm),
    # attn.norm, layer scale, class-token pooling with the final norm
    m = eva(2, img=(48, 32), qkv_fused=False, scale_mlp=True, scale_attn_inner=True, init_values=0.1,
            global_pool="token", **EVA02)
    res.check("unfused layout has k_proj without a bias",
              "blocks.0.attn.k_proj.weight" in m.state_dict() and "blocks.0.attn.k_proj.bias" not in m.state_dict())
    parity("EVA-02-B style (unfused qkv, SwiGLU + sub-LN, attn.norm, layer scale, token pool)", m, image(48, 32),
           file_name="eva02_base_patch14_224.pth", conv_opts=("--img-size", "48", "32"), more=(image(32, 32),))

    # EVA-02-E style post-norm block: x + norm1(attn(x)), plain GELU MLP, named by the training args; timm
    # registers eva02_enormous without RoPE
    m = eva(3, img=(32, 32), use_post_norm=True, global_pool="token")
    parity("EVA post-norm block (EvaBlockPostNorm)", m, image(32, 32), wrap={"args": {"model": "eva02_enormous_patch14_clip_224"}},
           expect=("res-post-norm",), more=(image(24, 40),))

    # timm SBB RoPE ViT: no class token, register tokens, no pos_embed, layer scale, avg pool
    m = eva(4, img=(32, 32), class_token=False, num_reg_tokens=2, use_abs_pos_emb=False, init_values=0.1,
            use_rot_pos_emb=True, ref_feat_shape=(16, 16))
    parity("RoPE ViT with register tokens, no class token, no pos_embed", m, image(32, 48),
           file_name="vit_medium_patch16_rope_reg1_gap_256.pth", expect=("2 reg",),
           more=(image(40, 24, seed=9),))

    # RoPE-ViT (naver) axial: AttentionRope (qkv.bias), temperature 100, 'xy' grid, no reference grid
    m = eva(5, attn_type="rope", init_values=0.1, global_pool="token", use_abs_pos_emb=False, use_rot_pos_emb=True,
            rope_grid_indexing="xy", rope_temperature=100.0)
    parity("RoPE-ViT axial (temperature 100, xy)", m, image(32, 48), file_name="vit_small_patch16_rope_224.pth",
           expect=("mean [0.485, 0.456, 0.406]",), more=(image(24, 40),))

    # the options from the checkpoint's model_kwargs: half rotation, a grid offset, another reference grid
    kw = dict(use_rot_pos_emb=True, rope_rotate_half=True, rope_grid_offset=1.0, rope_grid_indexing="xy",
              ref_feat_shape=(3, 5), rope_temperature=1000.0)
    m = eva(6, swiglu_mlp=True, **kw)
    parity("RoPE from model_kwargs (rotate_half, grid offset 1, ref grid 3x5)", m, image(32, 48),
           wrap={"args": {"model": "eva02_tiny_patch14_224", "model_kwargs": kw}},
           conv_opts=("--img-size", "32", "48"), expect=("vit.rope_half=1",), more=(image(40, 16),))

    # RoPE-ViT with an absolute pos_embed as well (_ape): its tensors are a DeiT-III's, so without its name the
    # RoPE options are given on the command line
    m = eva(14, attn_type="rope", init_values=0.1, global_pool="token", use_rot_pos_emb=True, rope_grid_indexing="xy",
            rope_temperature=100.0)
    parity("RoPE-ViT _ape without a name, RoPE given with --set", m, image(32, 48),
           conv_opts=("--img-size", "32", "48", "--set", "vit.rope=axial", "--set", "vit.rope_temperature=100",
                      "--set", "vit.rope_indexing=xy", "--set", "vit.rope_ref_grid=0,0"),
           expect=("vit.rope=axial vit.rope_temperature=100 vit.rope_ref_grid=0,0",), more=(image(24, 40),))

    # RoPE-Mixed: learned per-block, per-head frequencies (rope.freqs)
    m = eva(7, attn_type="rope", init_values=0.1, global_pool="token", use_abs_pos_emb=False, use_rot_pos_emb=True,
            rope_type="mixed", rope_grid_indexing="xy", rope_temperature=10.0)
    mixed = parity("RoPE-Mixed (rope.freqs)", m, image(32, 48), file_name="vit_small_patch16_rope_mixed_224.pth",
           expect=("vit.rope=mixed",), more=(image(48, 24),))

    # Perception Encoder spatial / language towers: norm_pre and no patch bias, RoPE with grid offset 1 on an
    # 'xy' 32x32 reference grid, eps 1e-5, mean of the patch tokens without fc_norm or final norm
    for seed, name, extra in ((10, "vit_pe_spatial_tiny_patch16_512", {}),
                              (11, "vit_pe_lang_large_patch14_448", {"init_values": 0.1})):
        m = eva(seed, attn_type="rope", use_rot_pos_emb=True, ref_feat_shape=(32, 32), rope_grid_offset=1.0,
                rope_grid_indexing="xy", use_pre_transformer_norm=True, use_post_transformer_norm=False,
                use_fc_norm=False, num_classes=0, norm_layer=partial(eva_ref.LayerNorm, eps=1e-5), **extra)
        parity(f"Perception Encoder {name.split('_')[2]} style", m, image(32, 48), file_name=name + ".pth",
               conv_opts=("--img-size", "32", "48"), expect=("vit.rope_offset=1", "eps 1e-05", "pool avg"),
               more=(image(24, 40),))

    # DINOv3 (timm's port): its RoPE with half rotation, 4 register tokens and a class token, no pos_embed,
    # layer scale, eps 1e-5, avg pooling after the final norm; SwiGLU in the larger ones
    for seed, name, extra in ((12, "vit_small_patch16_dinov3_qkvb", {}),
                              (13, "vit_huge_plus_patch16_dinov3", {"swiglu_mlp": True, "qkv_bias": False})):
        m = eva(seed, use_rot_pos_emb=True, rope_type="dinov3", rope_temperature=100, rope_rotate_half=True,
                use_abs_pos_emb=False, num_reg_tokens=4, init_values=0.1, use_fc_norm=False,
                norm_layer=partial(eva_ref.LayerNorm, eps=1e-5), **extra)
        parity(f"DINOv3 RoPE ({name})", m, image(32, 48), file_name=name + ".pth",
               expect=("vit.rope=dinov3", "vit.rope_half=1", "pool avg", "4 reg"), more=(image(48, 16),))

    # Perception Encoder core (CLIP image tower): the blocks of the PE towers with a class token, then timm's
    # AttentionPoolLatent over every token (class token included) with 8 heads of its own (the blocks have 4) and
    # its own MLP ratio, then the head; named by its file, so the pool's heads come from the name
    pe_core = dict(attn_type="rope", use_rot_pos_emb=True, ref_feat_shape=(24, 24), rope_grid_offset=1.0,
                   rope_grid_indexing="xy", use_pre_transformer_norm=True, global_pool="map",
                   norm_layer=partial(eva_ref.LayerNorm, eps=1e-5))
    m = core_ref = eva(15, attn_pool_num_heads=8, attn_pool_mlp_ratio=2.0, **pe_core)
    res.check("PE core reference: the attention pool has 8 heads, the blocks 4",
              m.attn_pool.num_heads == 8 and m.blocks[0].attn.num_heads == 4)
    core = parity("Perception Encoder core (map head with 8 heads of its own, over the class token too)", m,
                  image(32, 48), file_name="vit_pe_core_tiny_patch16_384.pth", conv_opts=("--img-size", "32", "48"),
                  expect=("vit.rope_offset=1", "eps 1e-05"), more=(image(48, 16),))
    # the pool's heads from the checkpoint's model_kwargs (attn_pool_num_heads) over the name's; its MLP ratio
    # stated there agrees with the tensors
    m = eva(16, attn_pool_num_heads=2, attn_pool_mlp_ratio=4.0, **pe_core)
    parity("Perception Encoder core, attn_pool_num_heads=2 from model_kwargs", m, image(32, 48),
           wrap={"args": {"model": "vit_pe_core_tiny_patch16_384",
                          "model_kwargs": {"attn_pool_num_heads": 2, "attn_pool_mlp_ratio": 4.0}}},
           conv_opts=("--img-size", "32", "48"))
    # ... and one that does not (the pool's MLP is 4 x 64 = 256 wide, the kwargs say 2 x 64) is refused by tensor
    wrong = {"args": {"model": "vit_pe_core_tiny_patch16_384",
                      "model_kwargs": {"attn_pool_num_heads": 2, "attn_pool_mlp_ratio": 2.0}}, "model": m.state_dict()}
    refused("an attn_pool_mlp_ratio the pool's MLP does not have is refused", wrong,
            ["attn_pool_mlp_ratio=2", "= %d wide" % int(64 * 2.0), "attn_pool.mlp.fc1.weight",
             "%d rows" % m.attn_pool.mlp.fc1.out_features], conv_opts=("--num-heads", "4", "--img-size", "32", "48"))
    wrong["args"]["model_kwargs"]["attn_pool_mlp_ratio"] = "wide"
    refused("an attn_pool_mlp_ratio that is not a number is refused", wrong, ["attn_pool_mlp_ratio='wide'", "not an MLP"],
            conv_opts=("--num-heads", "4", "--img-size", "32", "48"))
    # without metadata an EVA map head is assumed to have the blocks' heads (timm's default), and said so
    m = eva(17, use_abs_pos_emb=False, use_rot_pos_emb=True, ref_feat_shape=(16, 16), global_pool="map")
    parity("EVA map head without metadata: its heads assumed", m, image(32, 48), conv_opts=("--img-size", "32", "48"),
           expect=("assumed", "vit.map_heads"))

    # without a name the RoPE options are assumed as EVA-02 registers them, and said so
    m = eva(8, **EVA02)
    parity("EVA-02 layout without metadata: RoPE assumed", m, image(32, 48), conv_opts=("--img-size", "32", "48"),
           expect=("assumed", "vit.rope=axial", "vit.rope_ref_grid=16,16"))

    # refusals
    if axial and mixed:
        loader_refusals(axial, mixed)
    sd = eva(9, **EVA02).state_dict()
    stray = dict(sd)
    stray["blocks.0.attn.k_bias"] = torch.zeros(64)
    refused("a stray k_bias is refused by name", stray, ["blocks.0.attn.k_bias"],
            file_name="eva02_small_patch14_224.pth", conv_opts=("--img-size", "32", "48"))
    refused("an unsupported rope_type is refused by name",
            {"model": sd, "args": {"model": "eva02_small_patch14_224",
                                   "model_kwargs": {"use_rot_pos_emb": True, "rope_type": "mrope"}}},
            ["rope_type", "mrope"], conv_opts=("--img-size", "32", "48"))
    gated = dict(sd)
    gated["blocks.0.attn.gate.weight"] = torch.zeros(64, 64)
    refused("gated attention is refused by name", gated, ["blocks.0.attn.gate", "gated"],
            file_name="eva02_small_patch14_224.pth")
    # timm runs Eva's attention-pool MLP with GELU whatever the blocks use; with SwiGLU blocks that is refused
    glu_map = eva(18, global_pool="map", **EVA02).state_dict()
    refused("an EVA attention-pool head over SwiGLU blocks is refused", glu_map, ["attention-pool", "GELU", "silu"],
            file_name="eva02_small_patch14_224.pth", conv_opts=("--img-size", "32", "48"))
    if core:
        sys.path.insert(0, os.path.join(ROOT, "tools"))
        import lmvfile
        f = lmvfile.read(core)
        meta = [(k, lmvfile.Typed(f.meta_types[k], v)) for k, v in f.meta.items()]
        meta = [(k, lmvfile.Typed(lmvfile.T_INT32, [3]) if k == "vit.map_heads" else v) for k, v in meta]
        bad = os.path.join(tmpdir(), "map_heads3.lmv")
        lmvfile.write(bad, meta, [(n, t.shape, f.tensor(n), t.dtype_name) for n, t in f.tensors.items()])
        code, out, err = run([LMV, "info", bad])
        res.check("loader refuses vit.map_heads that does not divide the width",
                  code != 0 and "vit.map_heads" in err and "divisible" in err, err.strip())
        # lmv info names the pool's heads and MLP width: the file's vit.map_heads, else the blocks' heads
        pool = core_ref.attn_pool

        def pooling(out, err):
            return next((ln for ln in out.splitlines() if ln.startswith("pooling")), "no pooling line " + err.strip())
        code, out, err = run([LMV, "info", core])
        want = "heads %d (vit.map_heads), MLP width %d" % (pool.num_heads, pool.mlp.fc1.out_features)
        res.check("lmv info prints the attention pool's heads and MLP width", code == 0 and want in out,
                  pooling(out, err))
        meta = [(k, v) for k, v in meta if k != "vit.map_heads"]
        old = os.path.join(tmpdir(), "no_map_heads.lmv")
        lmvfile.write(old, meta, [(n, t.shape, f.tensor(n), t.dtype_name) for n, t in f.tensors.items()])
        code, out, err = run([LMV, "info", old])
        want = "heads %d (vit.map_heads not in the file" % core_ref.blocks[0].attn.num_heads
        res.check("lmv info of a file without vit.map_heads prints the blocks' heads it runs with",
                  code == 0 and want in out, pooling(out, err))
    res.finish()


if __name__ == "__main__":
    main()
