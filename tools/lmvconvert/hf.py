"""What the Hugging Face families share: reading a model's config.json into settings, and joining
separate q / k / v projections into one qkv tensor."""

from .base import ConvertError, _short
from .family import _read_json_beside, side_value
from .tensors import _is_int, concat0

# an image processor's `resample` (PIL's numbering) -> pre.interp
HF_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}


def vision_config(cfg, cfg_path):
    """(the vision part of a config.json, how to name it in messages): a CLIP / SigLIP model's
    vision_config, or the whole file for a vision-only model."""
    vc = cfg.get("vision_config") if isinstance(cfg.get("vision_config"), dict) else cfg
    return vc, cfg_path + (" vision_config" if vc is not cfg else "")


def encoder_settings(vc, where, acts, image_size=True):
    """Settings from a Hugging Face vision config: layer_norm_eps, num_attention_heads, hidden_act (one of
    `acts`, mapped to vit.act) and, with image_size, image_size."""
    side = {}
    if "layer_norm_eps" in vc:
        side["vit.norm_eps"] = side_value(where, "layer_norm_eps", "vit.norm_eps", vc["layer_norm_eps"])
    if "num_attention_heads" in vc:
        side["vit.num_heads"] = side_value(where, "num_attention_heads", "vit.num_heads", vc["num_attention_heads"])
    act = vc.get("hidden_act")
    if act is not None:
        if not isinstance(act, str) or act not in acts:
            raise ConvertError("%s: hidden_act %s is not supported (known: %s)"
                               % (where, _short(act), ", ".join(sorted(acts))))
        side["vit.act"] = acts[act]
    if image_size and vc.get("image_size") is not None:
        side["img_size"] = side_value(where, "image_size", "img_size", vc["image_size"])
    return side


def merge_qkv(body, merged, origin, src, parts, dst, model, prefix=""):
    """merged[dst] = the rows of body[src % part] for each of parts (q, k, v), in that order; origin[dst]
    names them (with prefix, the part of the original keys body lacks). A missing part is an error
    naming the model."""
    keys = [src % w for w in parts]
    for kk in keys:
        if kk not in body:
            raise ConvertError("%s: %s%s is missing" % (model, prefix, kk))
    merged[dst] = concat0([body[kk] for kk in keys], dst)
    origin[dst] = [prefix + kk for kk in keys]


def original_keys(used, origin, back, prefix=""):
    """The checkpoint's own keys behind the renamed keys `used`: the q / k / v parts of a joined qkv
    (origin, by the key before renaming, back), else the key before renaming with prefix."""
    keys = set()
    for k in used:
        keys.update(origin.get(back[k], [prefix + back[k]]))
    return keys


def vision_settings(ctx, cfg, cfg_path, acts, assumed):
    """(vision config, its name in messages, settings) from a CLIP-like model's config.json, noting that
    it was read; without one, (None, None, {}) and a note that `assumed` (the config class's defaults)
    holds."""
    if not isinstance(cfg, dict):
        ctx.notes.append("no config.json beside the weights: " + assumed)
        return None, None, {}
    vc, where = vision_config(cfg, cfg_path)
    ctx.notes.append("read %s" % cfg_path)
    return vc, where, encoder_settings(vc, where, acts)


def processor_settings(ctx):
    """(preprocessor_config.json beside the weights, its path, settings): pre.mean / pre.std from
    image_mean / image_std and pre.interp from resample (an int PIL names; anything else is left to the
    family's default), noting that it was read; without one, (None, its path, {}).  The size fields
    differ by processor and are the caller's."""
    pre, pre_path = _read_json_beside(ctx.path, "preprocessor_config.json")
    if not isinstance(pre, dict):
        return None, pre_path, {}
    ctx.notes.append("read %s" % pre_path)
    side = {}
    if isinstance(pre.get("image_mean"), list):
        side["pre.mean"] = side_value(pre_path, "image_mean", "pre.mean", pre["image_mean"])
    if isinstance(pre.get("image_std"), list):
        side["pre.std"] = side_value(pre_path, "image_std", "pre.std", pre["image_std"])
    resample = pre.get("resample")
    if _is_int(resample) and resample in HF_RESAMPLE:
        side["pre.interp"] = HF_RESAMPLE[resample]
    return pre, pre_path, side
