"""Hugging Face SigLIP image encoders on the ViT graph (attention-pool "map" head), against a faithful
reference written from transformers' modeling_siglip.py (tests/models/hf_siglip.py) with the real key
names: SiglipVisionModel as .bin, a whole SiglipModel as .safetensors (its text tower and logit
scale/bias dropped by name) and SiglipForImageClassification (classifier on the mean of the tokens),
config.json and preprocessor_config.json read from beside the weights, a non-square input (the
position embedding resized as HF's interpolate_pos_encoding). Random weights, small widths, batch 2;
the pooled output (lmv_run_features) or the logits and every block compared. Refusals: a tower
without its pooling head, a stray tensor, a pooling head of the wrong shape."""
import json
import os
import struct
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import Results, compare_traces, lmv_run, tmpdir  # noqa: E402
from models import hf_siglip  # noqa: E402
from models.timm_vit import randomize_  # noqa: E402
from parity import check_refused, convert_checked, features_close, image, info_config  # noqa: E402

torch.set_num_threads(2)
res = Results()
CFG = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, image_size=32,
           patch_size=8)


def write_safetensors(sd, path):
    header, blobs, off = {}, [], 0
    for k, v in sd.items():
        a = v.detach().contiguous().numpy().astype(np.float32)
        b = a.tobytes()
        header[k] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def save(sd, name, config=None, preprocessor=None):
    d = tmpdir()
    path = os.path.join(d, name)
    if name.endswith(".safetensors"):
        write_safetensors(sd, path)
    else:
        torch.save(sd, path)
    if config is not None:
        json.dump(config, open(os.path.join(d, "config.json"), "w"))
    if preprocessor is not None:
        json.dump(preprocessor, open(os.path.join(d, "preprocessor_config.json"), "w"))
    return path, os.path.join(d, "model.lmv")


def reference(model, x, interpolate=False):
    """pooler_output and {"blocks.i": image 0's output of layer i, "norm": post_layernorm's}."""
    acts, hooks = {}, []
    vm = model.vision_model
    for i, layer in enumerate(vm.encoder.layers):
        hooks.append(layer.register_forward_hook(lambda m, a, o, i=i: acts.__setitem__(f"blocks.{i}", o[0].numpy())))
    hooks.append(vm.post_layernorm.register_forward_hook(lambda m, a, o: acts.__setitem__("norm", o[0].numpy())))
    with torch.no_grad():
        _, pooled = model(x, interpolate_pos_encoding=interpolate)
    for h in hooks:
        h.remove()
    return pooled.numpy(), acts


def check(name, model, lmv, x, interpolate=False):
    want, acts = reference(model, x, interpolate)
    try:
        got, traces = lmv_run(lmv, x.numpy(), "--features", trace=True)
    except RuntimeError as e:
        return res.check(name, False, str(e))
    res.check(f"{name} pooled output", *features_close(got, want, shapes=True))
    compare_traces(res, name, traces, acts)


def convert_ok(name, ckpt, lmv, expect=(), opts=()):
    return convert_checked(res, name, ckpt, lmv, opts, expect)


def refused(name, sd, words, config=None):
    check_refused(res, name, *save(sd, "model.bin", config), words)


def main():
    torch.manual_seed(0)
    m = randomize_(hf_siglip.SiglipVisionModel(**CFG), seed=1).eval()
    config = dict(model_type="siglip_vision_model", hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, **CFG)
    ckpt, lmv = save(m.state_dict(), "pytorch_model.bin", config)
    if convert_ok("SiglipVisionModel .bin", ckpt, lmv,
                  expect=("source      hf_siglip", "heads 4", "act gelu_tanh", "pool map", "no prefix tokens",
                          "mean [0.5, 0.5, 0.5]", "resize to crop size", "bicubic")):
        check("SiglipVisionModel .bin", m, lmv, image(32, 32))
        check("SiglipVisionModel at 32x48 (interpolate_pos_encoding)", m, lmv, image(32, 48, seed=3), interpolate=True)

    # a whole SiglipModel as safetensors, config.json with a vision_config, the processor's config
    torch.manual_seed(1)
    m = randomize_(hf_siglip.SiglipModel(**CFG), seed=2).eval()
    config = dict(model_type="siglip", vision_config=dict(hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, **CFG),
                  text_config=dict(hidden_size=64))
    pre = dict(image_processor_type="SiglipImageProcessor", do_resize=True, size=dict(height=32, width=32), resample=3,
               image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    ckpt, lmv = save(m.state_dict(), "model.safetensors", config, pre)
    if convert_ok("SiglipModel .safetensors", ckpt, lmv,
                  expect=("text model and logit scale/bias of the SiglipModel", "text_model.* (22)",
                          "preprocessor_config.json")):
        check("SiglipModel .safetensors", m, lmv, image(32, 32, seed=4))

    # SiglipForImageClassification: logits of the classifier on the mean of the normed tokens
    torch.manual_seed(3)
    m = randomize_(hf_siglip.SiglipForImageClassification(num_labels=7, **CFG), seed=4).eval()
    config = dict(model_type="siglip", vision_config=dict(hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, **CFG))
    ckpt, lmv = save(m.state_dict(), "model.safetensors", config)
    if convert_ok("SiglipForImageClassification", ckpt, lmv,
                  expect=("7 classes", "pool avg", "attention-pooling head, which SiglipForImageClassification")):
        x = image(32, 32, seed=6)
        want, acts = reference(m, x)
        got, traces = lmv_run(lmv, x.numpy(), trace=True)
        d = float(np.max(np.abs(got - want))) if got.shape == want.shape else float("inf")
        res.check("SiglipForImageClassification logits", d <= 1e-4 * max(1.0, float(np.max(np.abs(want)))),
                  f"max abs diff {d:.2e}")
        compare_traces(res, "SiglipForImageClassification", traces, acts)

    # no config.json: SiglipVisionConfig's defaults, the heads of the released tower of that width
    # (So400m: 1152 wide, 16 heads), each listed as assumed
    torch.manual_seed(4)
    m = randomize_(hf_siglip.SiglipVisionModel(hidden_size=1152, intermediate_size=64, num_hidden_layers=1,
                                               num_attention_heads=16, image_size=32, patch_size=16), seed=5).eval()
    ckpt, lmv = save(m.state_dict(), "pytorch_model.bin")
    if convert_ok("So400m-wide tower without config.json", ckpt, lmv,
                  expect=("heads 16", "assumed       vit.num_heads=16", "no config.json")):
        check("So400m-wide tower without config.json", m, lmv, image(32, 32, seed=8))

    # refusals
    torch.manual_seed(2)
    sd = randomize_(hf_siglip.SiglipVisionModel(**CFG), seed=3).state_dict()
    nohead = {k: v for k, v in sd.items() if not k.startswith("vision_model.head.")}
    refused("a tower without its pooling head is refused", nohead, ["vision_use_head", "pooling head"])
    stray = dict(sd)
    stray["vision_model.head.attention.extra"] = torch.zeros(4)
    refused("a stray head tensor is refused by name", stray, ["vision_model.head.attention.extra"])
    bad = dict(sd)
    bad["vision_model.head.attention.in_proj_weight"] = torch.zeros(3 * 64, 32)
    refused("a head in_proj of the wrong shape is refused", bad, ["in_proj_weight", "[192, 64]"])

    # a processor's resample that is no PIL number (a list, a bool) leaves SigLIP's bicubic, as for CLIP
    config = dict(model_type="siglip_vision_model", hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, **CFG)
    for resample in ([3], False):
        pre = dict(image_processor_type="SiglipImageProcessor", size=dict(height=32, width=32), resample=resample)
        ckpt, lmv = save(sd, "model.bin", config, pre)
        name = "processor resample=%s is not a PIL filter number" % json.dumps(resample)
        if convert_ok(name, ckpt, lmv, expect=("preprocessor_config.json",)):
            interp = info_config(lmv).get("pre.interp")
            res.check(name + ": pre.interp stays bicubic", interp == "bicubic", interp)
    res.finish()


if __name__ == "__main__":
    main()
