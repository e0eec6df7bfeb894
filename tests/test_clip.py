"""Image encoders on the ViT graph, against faithful PyTorch references with the real key names:
OpenAI CLIP and OpenCLIP visual towers (alone and in a whole CLIP checkpoint whose text tower is
dropped by name), Hugging Face CLIP vision models (.bin and .safetensors, config.json read) and
facebookresearch/dinov2 hub files (with and without register tokens).  Random weights, small
widths, batch 2; the embedding (lmv_run_features) and every block compared."""
import json
import os
import struct
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import LMV, ROOT, Results, convert, lmv_run, compare_traces, logits_close, max_abs, run, tmpdir  # noqa: E402
from models import clip_ref, dinov2_ref  # noqa: E402
from models.timm_vit import randomize_  # noqa: E402

torch.set_num_threads(2)
res = Results()


def write_safetensors(sd, path):
    header, blobs, off = {}, [], 0
    for k, v in sd.items():
        a = v.detach().contiguous().numpy()
        dt = {np.dtype("float32"): "F32", np.dtype("int64"): "I64"}[a.dtype]
        b = a.tobytes()
        header[k] = {"dtype": dt, "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    header["__metadata__"] = {"format": "pt"}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def hooked(model, blocks, x, lnd=False):
    """model(x) and {"blocks.i": image 0's output of block i} (OpenAI's blocks run on L x N x D)."""
    acts, hooks = {}, []
    for i, b in enumerate(blocks):
        hooks.append(b.register_forward_hook(
            lambda m, a, o, i=i: acts.__setitem__(f"blocks.{i}", (o[:, 0] if lnd else o[0]).detach().numpy())))
    with torch.no_grad():
        y = model(x)
    for h in hooks:
        h.remove()
    return y.numpy(), acts


def parity(name, model, blocks, x, ckpt_obj, fname="model.pth", conv_opts=(), lnd=False, side=None,
           expect=(), proj=True):
    """Save, convert, run: the features (the projected embedding when `proj`) and every block."""
    d = tmpdir()
    ckpt, lmv = os.path.join(d, fname), os.path.join(d, "model.lmv")
    if fname.endswith(".safetensors"):
        write_safetensors(ckpt_obj, ckpt)
    else:
        torch.save(ckpt_obj, ckpt)
    for fn, obj in (side or {}).items():
        with open(os.path.join(d, fn), "w") as f:
            json.dump(obj, f)
    try:
        out = convert(ckpt, lmv, *conv_opts)
        want, acts = hooked(model, blocks, x, lnd)
        got, traces = lmv_run(lmv, x.numpy(), "--features", trace=True)
    except RuntimeError as e:
        res.check(name, False, str(e))
        return None, None
    dmax = float(np.max(np.abs(got - want))) if got.shape == want.shape else float("inf")
    scale = max(1.0, float(np.max(np.abs(want))))
    res.check(f"{name} embedding", dmax <= 1e-4 * scale, f"shape {list(got.shape)}, max abs diff {dmax:.2e}")
    compare_traces(res, name, traces, acts)
    if proj:
        p = traces.get("proj")
        res.check(f"{name} proj trace", p is not None and float(np.max(np.abs(p - want[0]))) <= 1e-4 * scale,
                  "the C side's projected embedding of image 0")
    for text in expect:
        res.check(f"{name} summary says {text!r}", text in out, "" if text in out else out)
    return lmv, out


def openai_clip_tower():
    torch.manual_seed(0)
    v = clip_ref.VisionTransformer(input_resolution=32, patch_size=8, width=128, layers=2, heads=2, output_dim=48)
    randomize_(v, seed=1).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    lmv, out = parity("OpenAI CLIP visual tower", v, list(v.transformer.resblocks), x, v.state_dict(), lnd=True,
                      expect=("source      clip", "proj 48", "assumed       vit.act=quickgelu", "eps 1e-05",
                              "mean [0.4815, 0.4578, 0.4082]", "bicubic"))
    if lmv:
        code, info, err = run([LMV, "info", lmv])
        res.check("lmv info names the projected embedding",
                  code == 0 and "features     48 (projected embedding" in info, "" if code == 0 else err)
        loader_refusals(lmv)


def loader_refusals(lmv):
    """The loader refuses a projection that does not fit the graph, with a sentence naming it."""
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import lmvfile
    f = lmvfile.read(lmv)
    d = tmpdir()

    def rewrite(name, meta_change=None, extra=None):
        meta = [(k, lmvfile.Typed(f.meta_types[k], v)) for k, v in f.meta.items()]
        if meta_change:
            meta = [(k, meta_change[k] if k in meta_change else v) for k, v in meta]
        tensors = [(n, t.shape, f.tensor(n), t.dtype_name) for n, t in f.tensors.items()]
        tensors += extra or []
        path = os.path.join(d, name)
        lmvfile.write(path, meta, tensors)
        code, out, err = run([LMV, "info", path])
        return code, err.strip()

    code, err = rewrite("bias.lmv", extra=[("proj.bias", (47,), np.zeros(47, dtype="<f4"))])
    res.check("loader refuses an embedding projection bias of the wrong size", code != 0 and "proj.bias" in err, err)
    code, err = rewrite("width.lmv", meta_change={"vit.proj": 47, "num_features": 47})
    res.check("loader refuses vit.proj that does not match proj.weight", code != 0 and "proj.weight" in err, err)
    code, err = rewrite("cat.lmv", meta_change={"vit.pool": "token_avg"})
    res.check("loader refuses vit.pool token_avg with an embedding projection", code != 0 and "token_avg" in err, err)


def whole_clip():
    torch.manual_seed(0)
    v = clip_ref.VisionTransformer(input_resolution=32, patch_size=8, width=128, layers=2, heads=2, output_dim=48)
    m = clip_ref.CLIP(v, embed_dim=48)
    randomize_(m, seed=3).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    sd = m.state_dict()
    text = [k for k in sd if not k.startswith("visual.")]
    _, out = parity("whole CLIP checkpoint", m.visual, list(v.transformer.resblocks), x, sd, lnd=True,
                    expect=("dropped     %d tensor(s), the text tower" % len(text), "token_embedding.weight",
                            "transformer.* (12)", "ln_final.* (2)", "text_projection", "logit_scale"))
    # the same checkpoint under a prefix every key shares: still converted, the text tower named in full
    d = tmpdir()
    torch.save({"clip." + k: t for k, t in sd.items()}, os.path.join(d, "p.pth"))
    try:
        out = convert(os.path.join(d, "p.pth"), os.path.join(d, "p.lmv"))
        ok = "dropped     %d tensor(s)" % len(text) in out and "clip.transformer.* (12)" in out
        res.check("whole CLIP under a shared prefix: text tower dropped by its full names", ok, "" if ok else out)
    except RuntimeError as e:
        res.check("whole CLIP under a shared prefix: text tower dropped by its full names", False, str(e))
    # a tensor that is neither the image tower nor a CLIP text-tower name is refused, by name
    sd2 = dict(sd)
    sd2["extra_head.weight"] = torch.zeros(3, 3)
    d = tmpdir()
    torch.save(sd2, os.path.join(d, "m.pth"))
    try:
        convert(os.path.join(d, "m.pth"), os.path.join(d, "m.lmv"))
        res.check("whole CLIP with a stray tensor refused", False, "converted")
    except RuntimeError as e:
        res.check("whole CLIP with a stray tensor refused", "could not be placed: extra_head.weight" in str(e), str(e))


def openai_torchscript():
    """OpenAI's released files are TorchScript archives of the whole model: converted from the
    archive's attributes, QuickGELU taken from the format rather than assumed."""
    torch.manual_seed(0)
    v = clip_ref.VisionTransformer(input_resolution=32, patch_size=8, width=128, layers=2, heads=2, output_dim=16)
    m = clip_ref.CLIP(v, embed_dim=16)
    randomize_(m, seed=17).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(18))
    d = tmpdir()
    with torch.no_grad():
        torch.jit.trace_module(m, {"encode_image": x}).save(os.path.join(d, "ViT-B-32.pt"))
        want = m.encode_image(x).numpy()
    try:
        out = convert(os.path.join(d, "ViT-B-32.pt"), os.path.join(d, "m.lmv"))
        got, _ = lmv_run(os.path.join(d, "m.lmv"), x.numpy(), "--features")
    except RuntimeError as e:
        return res.check("OpenAI CLIP TorchScript archive", False, str(e))
    dmax = float(np.max(np.abs(got - want)))
    res.check("OpenAI CLIP TorchScript archive embedding", dmax <= 1e-4 * max(1.0, float(np.max(np.abs(want)))),
              f"max abs diff {dmax:.2e}")
    ok = "act quickgelu" in out and "assumed       vit.act" not in out and "dropped     " in out
    res.check("OpenAI CLIP TorchScript archive: QuickGELU from the format, text tower dropped", ok, "" if ok else out)


def open_clip_gelu_layerscale():
    torch.manual_seed(0)
    v = clip_ref.VisionTransformer(input_resolution=48, patch_size=16, width=64, layers=3, heads=2, output_dim=32,
                                   act="gelu", ls_init=0.5)
    m = clip_ref.CLIP(v, embed_dim=32)
    randomize_(m, seed=5).eval()
    x = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(6))
    # an OpenCLIP training checkpoint: DDP's module. prefix under state_dict
    ckpt = {"epoch": 3, "name": "run1", "state_dict": {"module." + k: t for k, t in m.state_dict().items()}}
    parity("OpenCLIP GELU + layer scale", m.visual, list(v.transformer.resblocks), x, ckpt, lnd=True,
           conv_opts=("--set", "vit.act=gelu", "--num-heads", "2"), expect=("layer_scale", "act gelu"))


def open_clip_hub_dir():
    """An OpenCLIP hub directory: open_clip_config.json states GELU (no quick_gelu), the head width,
    mean pooling with ln_post after the pool, and squash resizing; nothing is assumed for the graph."""
    torch.manual_seed(0)
    v = clip_ref.VisionTransformer(input_resolution=32, patch_size=8, width=64, layers=2, heads=2, output_dim=24,
                                   act="gelu", pool_type="avg", final_ln_after_pool=True)
    m = clip_ref.CLIP(v, embed_dim=24)
    randomize_(m, seed=13).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(14))
    cfg = {"model_cfg": {"embed_dim": 24, "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32,
                                                         "patch_size": 8, "pool_type": "avg",
                                                         "final_ln_after_pool": True},
                         "text_cfg": {"context_length": 8, "vocab_size": 50, "width": 32, "heads": 2, "layers": 1}},
           "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bilinear",
                              "resize_mode": "squash"}}
    _, out = parity("OpenCLIP hub directory (open_clip_config.json)", m.visual, list(v.transformer.resblocks), x,
                    m.state_dict(), fname="open_clip_pytorch_model.bin", side={"open_clip_config.json": cfg},
                    lnd=True, expect=("act gelu", "heads 2", "fc_norm", "pool avg", "resize to crop size",
                                      "bilinear", "mean [0.5, 0.5, 0.5]"))
    if out is not None:
        ok = "assumed       vit.act" not in out and "assumed       vit.num_heads" not in out
        res.check("open_clip_config.json: activation and heads not assumed", ok, "" if ok else out)
    # a pooling the graph does not run is refused, naming the file's field
    d = tmpdir()
    torch.save(m.state_dict(), os.path.join(d, "open_clip_pytorch_model.bin"))
    cfg["model_cfg"]["vision_cfg"]["pool_type"] = "none"
    with open(os.path.join(d, "open_clip_config.json"), "w") as f:
        json.dump(cfg, f)
    try:
        convert(os.path.join(d, "open_clip_pytorch_model.bin"), os.path.join(d, "m.lmv"))
        res.check("open_clip_config.json pool_type none refused", False, "converted")
    except RuntimeError as e:
        res.check("open_clip_config.json pool_type none refused", "pool_type 'none'" in str(e) or
                  "pool_type none" in str(e), str(e))


def hf_clip():
    torch.manual_seed(0)
    # CLIPVisionModel (.bin), config.json at top level: GELU, eps 1e-6 and 2 heads from it
    m = clip_ref.HFCLIPVision(hidden=64, heads=2, inter=96, layers=2, image_size=32, patch_size=8, act="gelu",
                              eps=1e-6)
    randomize_(m, seed=7).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(8))
    cfg = m.config("gelu", 1e-6, 2, 32, 8, None, nested=False)
    parity("HF CLIPVisionModel .bin", m, list(m.vision_model.encoder.layers), x, m.state_dict(),
           fname="pytorch_model.bin", proj=False,
           side={"config.json": cfg, "preprocessor_config.json": {
               "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25], "resample": 2,
               "size": {"shortest_edge": 40}, "crop_size": {"height": 32, "width": 32}, "do_center_crop": True}},
           expect=("source      hf_clip", "heads 2", "eps 1e-06", "act gelu",
                   "resize 40 (crop_pct 0.8) bilinear, crop 32x32, mean [0.5, 0.5, 0.5], std [0.25, 0.25, 0.25]"))
    # CLIPModel (.safetensors) with its text model, nested vision_config: quick_gelu, projection
    m = clip_ref.HFCLIPVision(hidden=64, heads=4, inter=128, layers=2, image_size=32, patch_size=8,
                              act="quick_gelu", eps=1e-5, projection_dim=40, with_text=True)
    randomize_(m, seed=9).eval()
    cfg = m.config("quick_gelu", 1e-5, 4, 32, 8, 40, nested=True)
    text = [k for k in m.state_dict() if k.startswith(("text_", "logit"))]
    parity("HF CLIPModel .safetensors", m, list(m.vision_model.encoder.layers), x, m.state_dict(),
           fname="model.safetensors", side={"config.json": cfg},
           expect=("proj 40", "act quickgelu", "dropped     %d tensor(s), the text model" % len(text),
                   "text_projection.weight"))


def dinov2(regs):
    torch.manual_seed(0)
    m = dinov2_ref.DinoVisionTransformer(img_size=56, patch_size=14, embed_dim=64, depth=2, num_heads=4,
                                         init_values=0.7, num_register_tokens=regs)
    randomize_(m, seed=11 + regs).eval()
    x = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(12))
    parity("DINOv2 hub%s" % (" with %d registers" % regs if regs else ""), m, list(m.blocks), x, m.state_dict(),
           conv_opts=("--num-heads", "4"), proj=False,
           expect=("source      dinov2", "dropped     1 tensor(s), DINOv2's mask token", "mean [0.485, 0.456, 0.406]")
           + (("%d reg" % regs,) if regs else ()))
    # another, non-square input size: pos_embed resampled as DINOv2 does (scale factor with the 0.1 offset)
    x2 = torch.randn(2, 3, 84, 70, generator=torch.Generator().manual_seed(19))
    parity("DINOv2 hub%s at 84x70" % (" with %d registers" % regs if regs else ""), m, list(m.blocks), x2,
           m.state_dict(), conv_opts=("--num-heads", "4"), proj=False, expect=("pos_interp bicubic_dinov2",))


def hf_dinov2():
    torch.manual_seed(0)
    m = dinov2_ref.HFDinov2Model(hidden=64, heads=2, layers=2, image_size=56, patch_size=14, eps=1e-6, init=0.8)
    randomize_(m, seed=15).eval()
    x = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(16))
    cfg = {"model_type": "dinov2", "hidden_act": "gelu", "layer_norm_eps": 1e-6, "num_attention_heads": 2,
           "image_size": 56, "patch_size": 14}
    for fname, sd in (("model.safetensors", m.state_dict()),
                      ("pytorch_model.bin", {"dinov2." + k: t for k, t in m.state_dict().items()})):
        parity("HF Dinov2Model %s" % fname, m, list(m.encoder.layer), x, sd, fname=fname, side={"config.json": cfg},
               proj=False, expect=("source      hf_dinov2", "heads 2", "layer_scale",
                                   "dropped     1 tensor(s), Dinov2Model's mask token"))


def hf_dinov2_registers():
    """Dinov2WithRegistersModel (bare keys, .safetensors): registers after the class token, no
    position embedding for them; at another input size pos_embed resampled bicubic with antialias."""
    torch.manual_seed(0)
    m = dinov2_ref.HFDinov2Model(hidden=64, heads=4, layers=2, image_size=56, patch_size=14, eps=1e-6, init=0.6,
                                 registers=4)
    randomize_(m, seed=21).eval()
    cfg = {"model_type": "dinov2_with_registers", "hidden_act": "gelu", "layer_norm_eps": 1e-6,
           "num_attention_heads": 4, "image_size": 56, "patch_size": 14, "num_register_tokens": 4}
    pre = {"image_processor_type": "BitImageProcessor", "do_resize": True, "size": {"shortest_edge": 64},
           "do_center_crop": True, "crop_size": {"height": 56, "width": 56}, "resample": 3,
           "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}
    for size in ((56, 56), (84, 70)):
        x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(22))
        parity("HF Dinov2WithRegistersModel at %dx%d" % size, m, list(m.encoder.layer), x, m.state_dict(),
               fname="model.safetensors", side={"config.json": cfg, "preprocessor_config.json": pre}, proj=False,
               expect=("source      hf_dinov2", "4 reg", "pos_interp bicubic_aa",
                       "dropped     1 tensor(s), Dinov2WithRegistersModel's mask token", "resize 64"))
    # config.json that contradicts the weights is refused, not converted wrongly
    for what, change in (("num_register_tokens", {"num_register_tokens": 2}), ("use_swiglu_ffn", {"use_swiglu_ffn": True})):
        d = tmpdir()
        write_safetensors(m.state_dict(), os.path.join(d, "model.safetensors"))
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(dict(cfg, **change), f)
        try:
            convert(os.path.join(d, "model.safetensors"), os.path.join(d, "m.lmv"))
            res.check("HF Dinov2WithRegisters: a wrong %s refused" % what, False, "converted")
        except RuntimeError as e:
            res.check("HF Dinov2WithRegisters: a wrong %s refused" % what, what in str(e), str(e))


def hf_dinov2_classifier(registers, swiglu=False):
    """Dinov2(WithRegisters)ForImageClassification: logits = classifier(concat(class token, mean of
    the patch tokens)), register tokens not averaged; lmv_run_features gives that 2D-wide vector."""
    torch.manual_seed(0)
    m = dinov2_ref.HFDinov2ForImageClassification(7, hidden=64, heads=4, layers=2, image_size=56, patch_size=14,
                                                  eps=1e-6, init=0.6, registers=registers, swiglu=swiglu)
    randomize_(m, seed=23 + registers).eval()
    back = getattr(m, m.prefix)
    cfg = {"model_type": "dinov2_with_registers" if registers else "dinov2", "hidden_act": "gelu",
           "layer_norm_eps": 1e-6, "num_attention_heads": 4, "image_size": 56, "patch_size": 14,
           "use_swiglu_ffn": swiglu, "id2label": {str(i): "class%d" % i for i in range(7)}}
    if registers:
        cfg["num_register_tokens"] = registers
    name = "HF %s%s" % ("Dinov2WithRegistersForImageClassification" if registers else "Dinov2ForImageClassification",
                        " SwiGLU" if swiglu else "")
    d = tmpdir()
    ckpt, lmv = os.path.join(d, "pytorch_model.bin"), os.path.join(d, "m.lmv")
    torch.save(m.state_dict(), ckpt)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f)
    x = torch.randn(2, 3, 70, 84, generator=torch.Generator().manual_seed(24))
    try:
        out = convert(ckpt, lmv)
        want, acts = hooked(m, list(back.encoder.layer), x)
        got, traces = lmv_run(lmv, x.numpy(), trace=True)
        feats, _ = lmv_run(lmv, x.numpy(), "--features")
    except RuntimeError as e:
        res.check(name, False, str(e))
        return
    ok, how = logits_close(got, want)
    res.check(f"{name} logits", ok, how)
    compare_traces(res, name, traces, acts)
    with torch.no_grad():
        s = back.sequence(x)
        fw = torch.cat((s[:, 0], s[:, 1 + registers:].mean(dim=1)), dim=1).numpy()
    dmax = max_abs(feats, fw)
    res.check(f"{name} features are [class token, mean of patch tokens]", dmax <= 1e-4 * max(1.0, np.abs(fw).max()),
              f"shape {list(feats.shape)}, max abs diff {dmax:.2e}")
    if not registers and not swiglu:
        token_avg_refusals(lmv)
    for text in ("pool token_avg", "7 classes, 128 features", "labels: checkpoint config") + (("act silu",) if swiglu else ()):
        res.check(f"{name} summary says {text!r}", text in out, "" if text in out else out)


def token_avg_refusals(lmv):
    """The loader refuses vit.pool token_avg where it cannot be run as written, with a sentence."""
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import lmvfile
    f = lmvfile.read(lmv)
    d = tmpdir()
    meta = [(k, lmvfile.Typed(f.meta_types[k], v)) for k, v in f.meta.items()]
    tensors = [(n, t.shape, f.tensor(n), t.dtype_name) for n, t in f.tensors.items()]
    for name, change, extra, want in (
            ("fc_norm", {}, [("fc_norm.weight", (64,), np.ones(64, dtype="<f4")),
                             ("fc_norm.bias", (64,), np.zeros(64, dtype="<f4"))], "fc_norm"),
            ("the class token's head width", {"vit.pool": "token"}, [], "head.weight"),
            ("no class token", {"vit.class_token": 0}, [], "class token")):
        path = os.path.join(d, "x.lmv")
        lmvfile.write(path, [(k, change[k] if k in change else v) for k, v in meta], tensors + extra)
        code, out, err = run([LMV, "info", path])
        res.check("loader refuses a token_avg file with %s" % name, code != 0 and want in err, err.strip())


def hf_dinov2_swiglu():
    """Dinov2Model with use_swiglu_ffn (the giant models): weights_in / weights_out as a packed glu
    MLP with SiLU, whatever hidden_act says; hidden width 2/3 of int(D * mlp_ratio), rounded up to 8."""
    torch.manual_seed(0)
    m = dinov2_ref.HFDinov2Model(hidden=64, heads=4, layers=2, image_size=56, patch_size=14, eps=1e-6, init=0.6,
                                 swiglu=True)
    randomize_(m, seed=27).eval()
    cfg = {"model_type": "dinov2", "hidden_act": "gelu", "layer_norm_eps": 1e-6, "num_attention_heads": 4,
           "image_size": 56, "patch_size": 14, "use_swiglu_ffn": True, "mlp_ratio": 4}
    x = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(28))
    parity("HF Dinov2Model SwiGLU", m, list(m.encoder.layer), x, m.state_dict(), fname="model.safetensors",
           side={"config.json": cfg}, proj=False, expect=("act silu", "glu", "176"))


def dinov2_hub_swiglu():
    """facebookresearch/dinov2 with ffn_layer swiglufused (ViT-g/14): w12 / w3 as a packed glu MLP."""
    torch.manual_seed(0)
    m = dinov2_ref.DinoVisionTransformer(img_size=56, patch_size=14, embed_dim=64, depth=2, num_heads=4,
                                         init_values=0.7, num_register_tokens=4, ffn_layer="swiglufused")
    randomize_(m, seed=29).eval()
    x = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(30))
    parity("DINOv2 hub SwiGLU with 4 registers", m, list(m.blocks), x, m.state_dict(),
           conv_opts=("--num-heads", "4"), proj=False, expect=("source      dinov2", "act silu", "176"))


def hf_dinov2_crop():
    """The released models store a 37x37 pos_embed (image_size 518) and their processor crops 224: the
    .lmv's input size is the crop, pos_embed resampled (down, with antialias) to its grid."""
    torch.manual_seed(0)
    m = dinov2_ref.HFDinov2ForImageClassification(7, hidden=64, heads=4, layers=2, image_size=70, patch_size=14,
                                                  registers=4)
    randomize_(m, seed=31).eval()
    d = tmpdir()
    ckpt, lmv = os.path.join(d, "pytorch_model.bin"), os.path.join(d, "m.lmv")
    torch.save(m.state_dict(), ckpt)
    for fn, obj in (("config.json", {"num_attention_heads": 4, "num_register_tokens": 4, "image_size": 70}),
                    ("preprocessor_config.json", {"do_resize": True, "size": {"shortest_edge": 64},
                                                  "do_center_crop": True, "crop_size": {"height": 56, "width": 56},
                                                  "resample": 3})):
        with open(os.path.join(d, fn), "w") as f:
            json.dump(obj, f)
    x = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(32))
    try:
        out = convert(ckpt, lmv)
        got, _ = lmv_run(lmv, x.numpy())
    except RuntimeError as e:
        res.check("HF Dinov2WithRegisters classifier at its crop size", False, str(e))
        return
    with torch.no_grad():
        want = m(x).numpy()
    ok, how = logits_close(got, want)
    res.check("HF Dinov2WithRegisters classifier at its crop size logits", ok, how)
    for text in ("pos grid 5x5, img 56x56", "resize 64"):
        res.check(f"HF Dinov2WithRegisters crop summary says {text!r}", text in out, "" if text in out else out)


def hf_dinov2_stray():
    """A tensor outside the backbone that is not the classifier is refused by name."""
    m = dinov2_ref.HFDinov2Model(hidden=64, heads=2, layers=1, image_size=28, patch_size=14)
    d = tmpdir()
    sd = {"dinov2." + k: t for k, t in m.state_dict().items()}
    sd["extra_head.weight"] = torch.zeros(5, 128)
    torch.save(sd, os.path.join(d, "pytorch_model.bin"))
    try:
        convert(os.path.join(d, "pytorch_model.bin"), os.path.join(d, "m.lmv"))
        res.check("HF Dinov2: a stray tensor refused", False, "converted")
    except RuntimeError as e:
        res.check("HF Dinov2: a stray tensor refused", "extra_head.weight" in str(e), str(e))


if __name__ == "__main__":
    for fn in (openai_clip_tower, whole_clip, openai_torchscript, open_clip_gelu_layerscale, open_clip_hub_dir, hf_clip, lambda: dinov2(0),
               lambda: dinov2(4), hf_dinov2, hf_dinov2_registers, lambda: hf_dinov2_classifier(0),
               lambda: hf_dinov2_classifier(4), lambda: hf_dinov2_classifier(4, swiglu=True), hf_dinov2_swiglu,
               dinov2_hub_swiglu, hf_dinov2_crop, hf_dinov2_stray):
        fn()
    res.finish()
