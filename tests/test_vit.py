"""ViT / DeiT parity: real PyTorch models (torchvision's own, and faithful timm/HF/seed re-implementations)
with seeded random weights, saved the way their projects save them, converted by tools/convert.py and
run by build/lmv; logits and every block's output compared."""
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, Results, convert, lmv_run, logits_close, compare_traces, tmpdir  # noqa: E402
from models import timm_vit  # noqa: E402

torch.set_num_threads(2)
res = Results()


def block_outputs(model, blocks, norm, x):
    """Forward with hooks: {"blocks.i": image-0 output of block i, "norm": final norm output}."""
    acts, hooks = {}, []
    for i, b in enumerate(blocks):
        hooks.append(b.register_forward_hook(lambda m, a, o, i=i: acts.__setitem__(f"blocks.{i}", o[0].detach().numpy())))
    if norm is not None and not isinstance(norm, torch.nn.Identity):
        hooks.append(norm.register_forward_hook(lambda m, a, o: acts.__setitem__("norm", o[0].detach().numpy())))
    with torch.no_grad():
        y = model(x)
    for h in hooks:
        h.remove()
    return y.numpy(), acts


def parity(name, model, blocks, norm, x, ckpt_obj, conv_opts=(), run_opts=(), features_fn=None):
    d = tmpdir()
    ckpt, lmv = os.path.join(d, "model.pth"), os.path.join(d, "model.lmv")
    torch.save(ckpt_obj, ckpt)
    try:
        convert(ckpt, lmv, *conv_opts)
        want, acts = block_outputs(model, blocks, norm, x)
        got, traces = lmv_run(lmv, x.numpy(), *run_opts, trace=True)
    except RuntimeError as e:
        return res.check(name, False, str(e))
    ok, desc = logits_close(got, want)
    res.check(f"{name} logits", ok, desc)
    compare_traces(res, name, traces, acts)
    if features_fn is not None:
        with torch.no_grad():
            fwant = features_fn(x).numpy()
        fgot, _ = lmv_run(lmv, x.numpy(), "--features")
        res.check(f"{name} features", np.max(np.abs(fgot - fwant)) <= 1e-4 * max(1, np.max(np.abs(fwant))),
                  f"max abs diff {np.max(np.abs(fgot - fwant)):.2e}")


def torchvision_vit_b16():
    import torchvision
    torch.manual_seed(0)
    m = torchvision.models.vit_b_16()
    timm_vit.randomize_(m, seed=1)
    m.eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    layers = list(m.encoder.layers)

    def feats(inp):
        y = m._process_input(inp)
        y = torch.cat([m.class_token.expand(y.shape[0], -1, -1), y], dim=1)
        return m.encoder(y)[:, 0]
    parity("torchvision vit_b_16 224", m, layers, m.encoder.ln, x, m.state_dict(), features_fn=feats)


def torchvision_small_variants():
    from torchvision.models.vision_transformer import VisionTransformer
    torch.manual_seed(0)
    m = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
                          representation_size=24, num_classes=7)
    timm_vit.randomize_(m, seed=3)
    m.eval()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    parity("torchvision representation_size", m, list(m.encoder.layers), m.encoder.ln, x, m.state_dict(),
           conv_opts=("--num-heads", "2"))
    # a 1-channel model: users replace conv_proj
    m1 = VisionTransformer(image_size=28, patch_size=7, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=48, num_classes=10)
    m1.conv_proj = torch.nn.Conv2d(1, 32, kernel_size=7, stride=7)
    timm_vit.randomize_(m1, seed=5)
    m1.eval()
    x1 = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(6))
    parity("torchvision 1-channel", m1, list(m1.encoder.layers), m1.encoder.ln, x1, m1.state_dict(),
           conv_opts=("--num-heads", "4"))
    # legacy MLP key names mlp.linear_1/linear_2
    sd = {k.replace("mlp.0.", "mlp.linear_1.").replace("mlp.3.", "mlp.linear_2."): v for k, v in m.state_dict().items()}
    parity("torchvision legacy mlp.linear_N keys", m, list(m.encoder.layers), m.encoder.ln, x, sd,
           conv_opts=("--num-heads", "2"))


def timm_case(name, seed, img=32, batch=2, run_size=None, wrap=None, conv_opts=(), rename=None, heads_flag=True, **kw):
    cfg = dict(img_size=img, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=11)
    cfg.update(kw)
    torch.manual_seed(seed)
    m = timm_vit.VisionTransformer(**cfg)
    timm_vit.randomize_(m, seed=seed)
    m.eval()
    size = run_size or (img, img)
    x = torch.randn(batch, cfg.get("in_chans", 3), *size, generator=torch.Generator().manual_seed(seed + 100))
    sd = m.state_dict()
    if rename:
        sd = {rename(k): v for k, v in sd.items()}
    obj = wrap(sd) if wrap else sd
    norm = m.norm if not isinstance(m.norm, torch.nn.Identity) else None
    heads = ("--num-heads", str(cfg["num_heads"])) if heads_flag else ()
    parity(f"timm {name}", m, list(m.blocks), norm, x, obj, conv_opts=heads + tuple(conv_opts),
           features_fn=lambda inp: m.forward_head(m.forward_features(inp), pre_logits=True))


def timm_variants():
    timm_case("token pool", 10)
    timm_case("avg pool + fc_norm", 11, global_pool="avg")
    timm_case("avg pool without fc_norm", 12, global_pool="avg", fc_norm=False, conv_opts=("--pool", "avg"))
    timm_case("layer scale", 13, init_values=1e-1)
    timm_case("no_embed_class + layer scale (DeiT-III)", 14, no_embed_class=True, init_values=0.5)
    timm_case("register tokens", 15, reg_tokens=4, no_embed_class=True)
    timm_case("no class token, avg pool", 16, class_token=False, global_pool="avg")
    timm_case("qkv_bias=False", 17, qkv_bias=False)
    timm_case("distilled (DeiT)", 18, distilled=True)
    timm_case("old pre_logits Linear+Tanh", 19, representation_size=40)
    timm_case("patch 14", 20, img=56, patch_size=14)
    timm_case("patch 32 non-square input", 21, img=64, patch_size=32, run_size=(64, 96), dynamic_img_size=True)
    timm_case("pos_embed resampled up (bicubic antialias)", 22, img=32, run_size=(48, 40), dynamic_img_size=True)
    timm_case("pos_embed resampled down (bicubic antialias)", 23, img=64, run_size=(40, 32), dynamic_img_size=True)
    timm_case("pre_norm (CLIP style)", 24, pre_norm=True)
    timm_case("wrapped {'model'} + module. prefix", 25, wrap=lambda sd: {"model": {"module." + k: v for k, v in sd.items()}})
    timm_case("DeiT-III official names gamma_1/gamma_2", 26, no_embed_class=True, init_values=0.3,
              rename=lambda k: k.replace("ls1.gamma", "gamma_1").replace("ls2.gamma", "gamma_2"),
              wrap=lambda sd: {"model": sd})
    timm_case("batch 5", 27, batch=5)
    # graph options the tensors cannot show, each made exact by its setting
    timm_case("act gelu_tanh", 60, act_layer="gelu_tanh", conv_opts=("--set", "vit.act=gelu_tanh"))
    timm_case("act relu", 61, act_layer="relu", conv_opts=("--set", "vit.act=relu"))
    timm_case("act quickgelu (vit_base_patch32_clip_quickgelu_224 config)", 62, act_layer="quick_gelu", pre_norm=True,
              eps=1e-5, conv_opts=("--set", "vit.act=quickgelu", "--set", "vit.norm_eps=1e-5"))
    timm_case("ResPostBlock (vit_base_patch16_rpn_224 config)", 63, block_fn="res_post", qkv_bias=False, init_values=1e-5,
              class_token=False, global_pool="avg", conv_opts=("--set", "vit.block=res_post"))
    timm_case("ResPostBlock with class token", 64, block_fn="res_post", conv_opts=("--set", "vit.block=res_post"))
    timm_case("gap: no class token, final norm, avg pool (vit_base_patch16_gap_224 config)", 65, embed_dim=48,
              num_heads=4, class_token=False, global_pool="avg", fc_norm=False, conv_opts=("--pool", "avg"))
    timm_case("SigLIP gap tower (vit_base_patch32_siglip_gap_256 config)", 66, img=64, patch_size=32, class_token=False,
              global_pool="avg", fc_norm=False, act_layer="gelu_tanh",
              conv_opts=("--pool", "avg", "--set", "vit.act=gelu_tanh"))


def timm_graph_features():
    """qk-norm, the norms inside attention and MLP, SwiGLU MLPs and the attention-pool ('map') head:
    found by the converter in the tensors, no flag needed (SiLU is assumed for the gated MLPs, as
    timm builds them)."""
    timm_case("qk_norm", 90, qk_norm=True)
    timm_case("qk_norm: 6 heads found from q_norm's width, no --num-heads", 102, qk_norm=True, num_heads=6,
              heads_flag=False)
    timm_case("qk_norm + layer scale + register tokens, 4 heads", 91, qk_norm=True, init_values=0.3, reg_tokens=2,
              no_embed_class=True, num_heads=4)
    timm_case("scale_attn_norm + scale_mlp_norm, avg pool (BEiT3 config)", 92, scale_attn_norm=True,
              scale_mlp_norm=True, global_pool="avg")
    timm_case("SwiGLUPacked, SiLU (vit_*_swiglu config)", 93, mlp_layer="swiglu_packed", act_layer="silu",
              mlp_ratio=2.66667 * 2, reg_tokens=4, no_embed_class=True)
    timm_case("SwiGLU fc1_g/fc1_x + mlp norm + qk_norm", 94, mlp_layer="swiglu", act_layer="silu", scale_mlp_norm=True,
              qk_norm=True)
    timm_case("SwiGLUPacked with GELU gate (act given)", 95, mlp_layer="swiglu_packed", act_layer="gelu",
              conv_opts=("--set", "vit.act=gelu"))
    timm_case("plain MLP with SiLU", 96, act_layer="silu", conv_opts=("--set", "vit.act=silu"))
    timm_case("map head (SigLIP: no class token, gelu_tanh)", 97, img=64, patch_size=16, class_token=False,
              global_pool="map", act_layer="gelu_tanh", conv_opts=("--set", "vit.act=gelu_tanh"))
    timm_case("map head after class + register tokens, batch 3", 98, global_pool="map", reg_tokens=2, batch=3)
    timm_case("map head, non-square input, resampled pos_embed", 99, class_token=False, global_pool="map", img=32,
              run_size=(48, 32), dynamic_img_size=True)
    timm_case("map head over the prefix too, from model_kwargs pool_include_prefix (test_vit3 config)", 101,
              class_token=False, reg_tokens=1, global_pool="map", pool_include_prefix=True, init_values=1e-5,
              wrap=lambda sd: {"state_dict": sd, "args": {"model": "my_vit", "model_kwargs": {
                  "global_pool": "map", "pool_include_prefix": True}}})
    timm_case("map head from model_kwargs global_pool='map' + qk_norm", 100, class_token=False, global_pool="map",
              qk_norm=True, wrap=lambda sd: {"state_dict": sd, "args": {"model": "my_vit",
                                                                         "model_kwargs": {"global_pool": "map"}}})


def graph_features_refused():
    """What stays out of reach is refused with a message naming it: by the converter (a map head
    with two latent queries), and by the loader (tensors its graph would not read: a map head in a
    file that says vit.pool=avg; q_norm without k_norm)."""
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import lmvfile
    torch.manual_seed(110)
    m = timm_vit.randomize_(timm_vit.VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=1, num_heads=3,
                                                       num_classes=5, class_token=False, global_pool="map",
                                                       qk_norm=True), seed=110).eval()
    d = tmpdir()
    sd = dict(m.state_dict())
    sd["attn_pool.latent"] = torch.randn(1, 2, 48)
    torch.save(sd, os.path.join(d, "two.pth"))
    try:
        convert(os.path.join(d, "two.pth"), os.path.join(d, "two.lmv"), "--num-heads", "3")
        res.check("map head with 2 latent queries refused by the converter", False, "converted")
    except RuntimeError as e:
        res.check("map head with 2 latent queries refused by the converter", "latent" in str(e), str(e))
    torch.save(m.state_dict(), os.path.join(d, "m.pth"))
    good = os.path.join(d, "m.lmv")
    convert(os.path.join(d, "m.pth"), good, "--num-heads", "3")
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(111)).numpy()
    f = lmvfile.read(good)
    for what, edit_meta, drop, want in (
            ("attn_pool tensors in a vit.pool=avg file", {"vit.pool": "avg"}, (), "attn_pool."),
            ("q_norm without k_norm", {}, ("blocks.0.attn.k_norm.weight", "blocks.0.attn.k_norm.bias"), "k_norm")):
        meta = [(k, lmvfile.Typed(f.meta_types[k], edit_meta.get(k, v))) for k, v in f.meta.items()]
        tensors = [(n, t.shape, f.tensor(n), t.dtype_name) for n, t in f.tensors.items() if n not in drop]
        bad = os.path.join(d, "bad.lmv")
        lmvfile.write(bad, meta, tensors)
        try:
            lmv_run(bad, x)
            res.check(f"loader refuses {what}", False, "ran")
        except RuntimeError as e:
            res.check(f"loader refuses {what}", want in str(e) and ("not read by" in str(e) or "norm" in str(e)), str(e))


def options_from_metadata():
    """The same options found by the converter in what the checkpoint says of itself, no flag given:
    a timm training checkpoint's args (the model name; model_kwargs)."""
    def train_ckpt(model, **kwargs):
        return lambda sd: {"epoch": 2, "state_dict": sd, "args": {"model": model, "model_kwargs": kwargs}}
    # the names' size word must match the tensors' width (768 for base), so these are one-block base models
    base = dict(embed_dim=768, num_heads=12, depth=1, patch_size=16, num_classes=7)
    timm_case("ResPostBlock from the model name vit_base_patch16_rpn_224", 80, block_fn="res_post", qkv_bias=False,
              class_token=False, global_pool="avg", wrap=train_ckpt("vit_base_patch16_rpn_224"), **base)
    timm_case("QuickGELU and eps 1e-5 from the model name vit_base_patch16_clip_quickgelu_224", 81,
              act_layer="quick_gelu", pre_norm=True, eps=1e-5, wrap=train_ckpt("vit_base_patch16_clip_quickgelu_224"),
              **base)
    timm_case("SwiGLUPacked under a timm model name: SiLU, as timm registers its SwiGLU ViTs", 83,
              mlp_layer="swiglu_packed", act_layer="silu", mlp_ratio=2.66667 * 2,
              wrap=train_ckpt("vit_base_patch16_swiglu_224"), **base)
    timm_case("QuickGELU and ResPostBlock from model_kwargs", 82, act_layer="quick_gelu", block_fn="res_post",
              wrap=train_ckpt("my_vit", act_layer="quick_gelu", block_fn="ResPostBlock"))


def options_need_their_setting():
    """The options above are invisible in the tensors: converted without their setting, the same
    checkpoints run as a pre-norm GELU ViT and differ from PyTorch (so the parity cases can fail)."""
    for what, kw in (("ResPostBlock without vit.block=res_post", dict(block_fn="res_post")),
                     ("QuickGELU without vit.act=quickgelu", dict(act_layer="quick_gelu"))):
        torch.manual_seed(70)
        m = timm_vit.randomize_(timm_vit.VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3,
                                                           num_classes=5, **kw), seed=70).eval()
        x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(71))
        d = tmpdir()
        torch.save(m.state_dict(), os.path.join(d, "m.pth"))
        convert(os.path.join(d, "m.pth"), os.path.join(d, "m.lmv"), "--num-heads", "3")
        got, _ = lmv_run(os.path.join(d, "m.lmv"), x.numpy())
        with torch.no_grad():
            ok, desc = logits_close(got, m(x).numpy())
        res.check(f"{what} differs from PyTorch", not ok, desc)


def attention_map():
    """lmv run --attention blocks.1 gives block 1's softmax probabilities, [heads][T][T]."""
    torch.manual_seed(50)
    m = timm_vit.randomize_(timm_vit.VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3,
                                                       num_classes=5), seed=50).eval()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(51))
    inp = {}
    h = m.blocks[1].register_forward_pre_hook(lambda mod, a: inp.__setitem__("x", a[0]))
    with torch.no_grad():
        m(x)
        blk = m.blocks[1]
        B, N, C = inp["x"].shape
        qkv = blk.attn.qkv(blk.norm1(inp["x"])).reshape(B, N, 3, 3, C // 3).permute(2, 0, 3, 1, 4)
        want = ((qkv[0] * blk.attn.scale) @ qkv[1].transpose(-2, -1)).softmax(-1)[0].numpy()
    h.remove()
    d = tmpdir()
    torch.save(m.state_dict(), os.path.join(d, "m.pth"))
    convert(os.path.join(d, "m.pth"), os.path.join(d, "m.lmv"), "--num-heads", "3")
    _, traces = lmv_run(os.path.join(d, "m.lmv"), x.numpy(), attention="blocks.1")
    got = traces.get("blocks.1.attn")
    ok = got is not None and got.shape == want.shape
    res.check("attention map of blocks.1", ok and float(np.max(np.abs(got - want))) < 1e-5,
              f"max abs diff {float(np.max(np.abs(got - want))):.1e}" if ok else f"got {None if got is None else got.shape}")


def hf_case(distilled):
    """Hugging Face ViT/DeiT: separate q/k/v projections, LayerNorm eps 1e-12."""
    torch.manual_seed(30)
    m = timm_vit.VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=5,
                                   eps=1e-12, distilled=distilled)
    timm_vit.randomize_(m, seed=31)
    m.eval()
    p = "deit." if distilled else "vit."
    sd = {}
    for k, v in m.state_dict().items():
        if k.startswith("blocks."):
            i, rest = k.split(".", 2)[1], k.split(".", 2)[2]
            b = f"{p}encoder.layer.{i}."
            if rest.startswith("attn.qkv."):
                kind = rest.split(".")[-1]
                q, kk, vv = v.chunk(3, dim=0)
                sd[b + f"attention.attention.query.{kind}"] = q.clone()
                sd[b + f"attention.attention.key.{kind}"] = kk.clone()
                sd[b + f"attention.attention.value.{kind}"] = vv.clone()
                continue
            rest = (rest.replace("norm1", "layernorm_before").replace("norm2", "layernorm_after")
                    .replace("attn.proj", "attention.output.dense").replace("mlp.fc1", "intermediate.dense")
                    .replace("mlp.fc2", "output.dense"))
            sd[b + rest] = v
            continue
        name = {"cls_token": "embeddings.cls_token", "dist_token": "embeddings.distillation_token",
                "pos_embed": "embeddings.position_embeddings",
                "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
                "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
                "norm.weight": "layernorm.weight", "norm.bias": "layernorm.bias"}.get(k)
        if name:
            sd[p + name] = v
        elif k.startswith("head_dist."):
            sd["distillation_classifier." + k.split(".")[1]] = v
        elif k.startswith("head."):
            sd[("cls_classifier." if distilled else "classifier.") + k.split(".")[1]] = v
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(32))
    parity("hf " + ("DeiT with teacher" if distilled else "ViTForImageClassification"), m, list(m.blocks), m.norm, x, sd,
           conv_opts=("--num-heads", "3"))


def seed_models():
    """Users' own ViTs (seeds 002 and 003, nn.TransformerEncoder) through the shipped mapping files."""
    from models import seed002_vit, seed003_vit, te_vit
    maps = os.path.join(ROOT, "tools", "mappings")
    cases = [
        ("seed 002 post-norm ReLU, class token last", seed002_vit.build(), "seed002_vit.json", "4", (32, 32),
         lambda m: m.blocks),
        ("seed 003 tanh GELU, bicubic pos-embed resize", seed003_vit.build(), "seed003_vit.json", "2", (96, 128),
         lambda m: m.blocks),
        ("nn.TransformerEncoder (post-norm, ReLU)", te_vit.build(), "torch_transformer_encoder.json", "4", (32, 32),
         lambda m: m.encoder.layers),
    ]
    for name, m, mapping, heads, size, blocks in cases:
        timm_vit.randomize_(m, seed=40)
        m.eval()
        x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(41))
        parity(name, m, list(blocks(m)), None, x, m.state_dict(),
               conv_opts=("--mapping", os.path.join(maps, mapping), "--num-heads", heads))


if __name__ == "__main__":
    only = sys.argv[1:]
    quick = "--quick" in sys.argv
    for fn in (timm_graph_features, graph_features_refused, attention_map, options_need_their_setting, options_from_metadata, torchvision_small_variants, timm_variants, lambda: hf_case(False), lambda: hf_case(True), seed_models,
               torchvision_vit_b16):
        if quick and fn is torchvision_vit_b16:
            continue
        fn()
    res.finish()
