"""The command line."""

import argparse
import os
import re
import sys

from .base import ConvertError, PROG, lmvfile
from .mapping import MAPPING_HELP
from .pipeline import convert
from .reader import MAX_EXPANSION, extract_state_dict, load_checkpoint

def list_keys(path, opts, out=sys.stdout):
    ckpt = load_checkpoint(path)
    sd, info = extract_state_dict(ckpt, use_ema=getattr(opts, "ema", False), validate=False)
    out.write("# %s: %s%s, %d tensors\n" % (path, ckpt.fmt, (", entry " + "/".join(info["path"])) if info["path"] else "",
                                           len(sd)))
    for k, t in sd.items():
        out.write("%-60s %-10s %s\n" % (k, t.dtype.name, list(t.shape)))


EPILOG = """\
examples:
  convert.py vit_base_patch16_224.pth                  timm / DeiT / torchvision / HF file -> .lmv
  convert.py deit_small_distilled.pth deit_s.lmv       output name given
  convert.py checkpoint.pth.tar --ema                  timm training checkpoint, EMA weights
  convert.py model.safetensors --eps 1e-6              Hugging Face file (config.json beside it is read)
  convert.py mae_finetuned.pth --pool avg              avg pooling that leaves no trace in the keys
  convert.py my_vit.pth --mapping tools/mappings/seed002_vit.json --num-heads 12 --labels flowers.txt
  convert.py my_vit.pth --list-keys                    print the checkpoint's tensor names and shapes
  convert.py in22k.pth --num-classes 0                 drop the classifier, features only
  convert.py swin_tiny_patch4_window7_224.pth          Microsoft / timm / torchvision / HF Swin
  convert.py model_best.pth.tar --ema                  LeMeViT training checkpoint (timm-style)
  convert.py vit_base_patch16_224.pth --dtype int8     int8 matrix weights (file about 4x smaller)
  convert.py vit.pth --dtype f16 --keep-f32 '^head\\.'  f16 matrix weights, classifier kept float32

reduced precision (--dtype f16|int8; the meta key weights.dtype records the choice):
  Only the weights the library runs through its matrix multiply are re-encoded: names ending in
  '.weight' with 2 or 4 dimensions, not depthwise convolutions (4-D with shape[1] == 1), with at
  least """ + str(lmvfile.QUANT_MIN_NUMEL) + """ elements (qkv/proj/fc1/fc2, patch embedding, Swin patch
  merging, LeMeViT convs, the head).  Norms, biases, BN statistics, class/meta tokens, position embeddings,
  relative position bias tables and small tensors stay float32; --keep-f32 REGEX keeps more.
  f16: IEEE half, round to nearest even; a tensor with values beyond +-65504 is refused.
  int8: symmetric per output channel, scale = max|w[row]| / 127 stored as float32.
  tools/lmvfile.py --dtype re-encodes an existing .lmv file the same way.
  Float32 matrix weights (the same names and shapes, any size) are stored as f32p: the library's
  matrix-multiply panels, 16 rows interleaved, read in place without repacking (about 2-5 % faster
  whole models); --no-pack keeps PyTorch's row order (dtype f32), which the library reads too.

per-source defaults (override with the options above):
  timm vit_*   LN eps 1e-6, GELU, mean/std 0.5, crop_pct 0.9 bicubic, pos_interp bicubic_aa
  DeiT         LN eps 1e-6, GELU, ImageNet mean/std, crop_pct 0.9 bicubic, pos_interp bicubic_aa
               (chosen for dist_token, DeiT-III gamma_1/2, or an official {'model': ...} file)
  torchvision  LN eps 1e-6, GELU, ImageNet mean/std, resize 256 crop 224 (0.875) bilinear, bicubic_ac
  HF ViT       LN eps 1e-12 (or config.json), resize straight to the input size, bilinear,
               mean/std 0.5 (ViTImageProcessor defaults; preprocessor_config.json wins), pos_interp bicubic
  HF DeiT      as HF ViT but resize 256 + centre crop 224 bicubic (DeiTImageProcessor defaults)
  The number of heads is not stored in timm/torchvision checkpoints: the usual head_dim 64 (16 heads
  for widths >= 1024) is assumed and a warning printed for unusual widths; use --num-heads.
  Swin (MS, timm)  LN eps 1e-5, ImageNet mean/std, crop 0.9 bicubic (MS repo files: 0.875);
               windows rolled then padded (swin.pad_mode=roll_then_pad, timm >= 0.9.6)
  Swin (torchvision) resize 232 crop 224 bicubic; padded then rolled (pad_then_roll)
  Swin (HF)    resize straight to 224 bicubic; pad_then_roll, shift rule min
               heads and window come from the relative position bias tables
  LeMeViT      head_dim 32, LN eps 1e-6 (blocks) / 1e-5 (meta tokens, norm_c), BN eps 1e-5,
               resize 256 crop 224 (0.875) bicubic, ImageNet mean/std (the official training)

what is assumed:
  Options the tensors cannot show (ViT heads, eps, activation, block form, pooling when ambiguous;
  LeMeViT head_dim and post-norm; the preprocessing) are read from the checkpoint's metadata: timm
  training args (model, model_kwargs, mean/std/crop_pct/interpolation), a pretrained_cfg inside the
  file, a timm or Hugging Face config.json beside it, else the model name in the file name.  What
  none of them states is assumed: the summary lists each value with the flag that sets it and the
  file records the keys in convert.assumed (lmv info prints them).  Flags always win.
  Every checkpoint tensor must be placed: one the graph does not read fails the conversion, named
  (drop it with --ignore REGEX if it is not part of the model).

""" + MAPPING_HELP + """

exit status: 0 converted, 1 conversion error (one line on stderr), 2 bad command line.
"""


def build_parser():
    p = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Convert a PyTorch (.pth/.pt/.pth.tar/.bin, zip or legacy format) or .safetensors "
                    "checkpoint of a ViT/DeiT, Swin or LeMeViT model into a lemevit.h .lmv weight file.  Nothing in the "
                    "checkpoint is executed; torch is not needed.")
    p.add_argument("input", help="checkpoint file")
    p.add_argument("output", nargs="?", help="output .lmv file (default: input name with .lmv)")
    p.add_argument("-o", "--out", dest="out", help="output .lmv file (same as the positional OUTPUT)")
    p.add_argument("--arch", choices=["auto", "vit", "swin", "lemevit"], default="auto",
                   help="only try this family's detectors (default: auto)")
    p.add_argument("--mapping", metavar="FILE", help="JSON mapping file for custom module names (see below)")
    p.add_argument("--ema", action="store_true", help="convert the EMA copy (state_dict_ema / model_ema)")
    p.add_argument("--img-size", type=int, nargs="+", metavar="N", help="native input size: H [W] (default: "
                   "pos_embed grid x patch size)")
    p.add_argument("--num-classes", type=int, metavar="N", help="0 drops the classifier head; another value "
                   "must match the head")
    p.add_argument("--num-heads", type=int, metavar="N", help="attention heads (not stored in most checkpoints)")
    p.add_argument("--eps", type=float, help="LayerNorm epsilon of every norm (ViT; Swin: --set swin.norm_eps=E)")
    p.add_argument("--pool", choices=["token", "avg"], help="pooling; needed for timm global_pool='avg', "
                   "fc_norm=False, which leaves no trace in the keys")
    p.add_argument("--mean", type=float, nargs="+", metavar="M", help="normalisation mean, one per channel")
    p.add_argument("--std", type=float, nargs="+", metavar="S", help="normalisation std, one per channel")
    p.add_argument("--crop-pct", type=float, metavar="F", help="centre-crop fraction; resize = floor(crop / F)")
    p.add_argument("--resize", type=int, metavar="N", help="shorter side before the crop (0: resize straight "
                   "to the crop size)")
    p.add_argument("--interpolation", choices=["bilinear", "bicubic", "nearest"], help="resize filter")
    p.add_argument("--labels", metavar="FILE|imagenet|none", help="class names, one per line (default: "
                   "ImageNet names for 1000-class heads, or the HF config's id2label)")
    p.add_argument("--name", help="model name stored in the file")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="set any .lmv key, e.g. --set vit.act=gelu_tanh --set vit.block=res_post "
                        "--set lemevit.post_norm=1")
    p.add_argument("--ignore", action="append", metavar="REGEX", help="drop checkpoint tensors matching REGEX")
    p.add_argument("--dtype", choices=list(lmvfile.PRECISIONS), default="f32",
                   help="storage of the matrix weights (see 'reduced precision' below); default f32")
    p.add_argument("--no-pack", dest="pack", action="store_false",
                   help="write float32 matrix weights in plain row order (f32) instead of the library's GEMM "
                        "panels (f32p, the default: read in place, faster)")
    p.add_argument("--keep-f32", action="append", metavar="REGEX", dest="keep_f32",
                   help="with --dtype f16/int8: keep the output tensors whose name matches REGEX (re.search) "
                   "float32; repeatable")
    p.add_argument("--allow-broadcast", action="store_true",
                   help="convert tensors that repeat their storage more than %d times over (stride-0 views; "
                        "refused by default: a small file could ask for gigabytes)" % MAX_EXPANSION)
    p.add_argument("--list-keys", action="store_true", help="print the checkpoint's tensors and exit")
    p.add_argument("--dry-run", action="store_true", help="detect and print the summary, write nothing")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    p.add_argument("--debug", action="store_true", help="show a traceback on unexpected errors")
    return p


def main(argv=None):
    parser = build_parser()
    opts = parser.parse_args(argv)
    try:
        if opts.img_size is not None and len(opts.img_size) not in (1, 2):
            raise ConvertError("--img-size takes H or H W")
        for what, rxs in (("--ignore", opts.ignore), ("--keep-f32", opts.keep_f32)):
            for rx in rxs or []:
                try:
                    re.compile(rx)
                except re.error as e:
                    raise ConvertError("%s %r: %s" % (what, rx, e))
        if opts.list_keys:
            list_keys(opts.input, opts)
            return 0
        out_path = opts.out or opts.output
        if opts.out and opts.output and opts.out != opts.output:
            raise ConvertError("two different output names given")
        if not out_path and not opts.dry_run:
            base = opts.input
            for ext in (".pth.tar", ".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".tar", ".pkl"):
                if base.endswith(ext):
                    base = base[:-len(ext)]
                    break
            out_path = base + ".lmv"
        if out_path and os.path.abspath(out_path) == os.path.abspath(opts.input):
            raise ConvertError("output would overwrite the input")
        convert(opts.input, None if opts.dry_run else out_path, opts, quiet=opts.quiet)
        return 0
    except ConvertError as e:
        sys.stderr.write("%s: error: %s\n" % (PROG, e))
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("%s: interrupted\n" % PROG)
        return 130
    except MemoryError:
        sys.stderr.write("%s: error: out of memory\n" % PROG)
        return 1
    except RecursionError:
        sys.stderr.write("%s: error: %s: the checkpoint's objects are nested too deeply\n" % (PROG, opts.input))
        return 1
    except Exception as e:  # a bug: keep the one-line promise unless --debug
        if opts.debug:
            raise
        sys.stderr.write("%s: internal error: %s: %s (run with --debug for a traceback)\n"
                         % (PROG, type(e).__name__, e))
        return 1


