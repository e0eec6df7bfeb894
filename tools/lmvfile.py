#!/usr/bin/env python3
"""Read and write `.lmv` weight files (format version 1), Python standard library only (numpy is
used to go faster when it can be imported; the pure-Python path writes byte-identical files).

The binding description of the format is the section "The weight file format" of README.md; this
module follows it to the letter.  In short: a 128-byte header, a section of typed meta entries, a
tensor table, zero padding up to a 64-byte aligned data section, and the tensor data (little-endian,
every tensor 64-byte aligned).  Two CRC-32s (zlib polynomial) protect the file.

Tensor dtypes (the table's dtype byte):

* 0 `f32`  -- IEEE binary32, 4 bytes per element.
* 1 `f16`  -- IEEE binary16, 2 bytes per element, rounded to nearest even from float32.  A tensor
  with NaN/inf, or with a value whose magnitude rounds above 65504, is refused.
* 2 `int8` -- symmetric per output channel, only for tensors with 2 or more dimensions: R =
  shape[0] little-endian float32 scales, then numel signed int8 values (row-major), so the size is
  4*R + numel.  Element (r, ...) is scale[r] * q.  scale[r] = max|w[r,:]| / 127 (float64, stored as
  float32); q = round-half-to-even(w / scale_f32) clipped to [-127, 127] (the division in float64
  by the stored float32 scale); an all-zero row has scale 0 and q = 0.
* 3 `f32p` -- float32 in the library's GEMM panel layout, only for tensors with 2 or more
  dimensions: R = shape[0] rows of C = numel/R values are stored as ceil(R/16) panels of [C][16],
  element (16p + j, c) at float index (p*C + c)*16 + j, rows past R zero; the size is
  ceil(R/16)*16*C*4.  The values are exactly the float32 ones: only the order differs.

Which tensors a converted or re-quantised file stores in reduced precision is decided by one
function, quantizable(name, shape): the matrix-multiply weights only (see its docstring); which
float32 tensors are stored as f32p by packable(name, shape) (the same weights, of any size).

Choices made where README leaves room (kept in one place so readers of the C side can check them):

* The header CRC (offset 80) is computed over bytes [0, 80) of the header, then the meta section
  bytes [meta_off, meta_off + meta_size), then the table bytes [table_off, table_off + table_size).
  The (at most 4) zero bytes between the end of the meta section and the 8-aligned table are NOT
  part of either section and are not covered.
* The data section runs from the (64-aligned) data offset to the end of the last tensor, rounded up
  to a multiple of 64, so the file size is always a multiple of 64.  Gaps are zero bytes.
* Tensors are laid out in the order they are given, each at the next multiple of 64.

Usage as a library:

    import lmvfile
    lmvfile.write("m.lmv", [("arch", "vit"), ("img_size", [224, 224]), ...],
                  [("cls_token", (1, 1, 192), f32_bytes),                  # float32
                   ("blocks.0.attn.qkv.weight", (576, 192), f32_bytes, "int8"), ...])
    f = lmvfile.read("m.lmv")          # verifies structure and both CRCs
    f.meta["img_size"]                 # -> [224, 224]
    f.tensor("cls_token")              # -> array('f') with the values (dequantised for f16/int8)
    lmvfile.requantize("m.lmv", "m8.lmv", "int8")     # re-encode with the quantizable() policy
    lmvfile.check_meta([("img_size", [224, 224])])     # LmvError unless within the loader's ranges (META_RULES)

Usage from the shell (exit status 1 if the file is invalid):

    python3 tools/lmvfile.py model.lmv                          # header, meta and tensor table
    python3 tools/lmvfile.py --dtype int8 model.lmv model8.lmv  # re-quantise (see --help)
"""

import argparse
import array
import math
import os
import re
import struct
import sys
import zlib
from collections import OrderedDict

try:  # optional speed-up only; every code path has a pure-Python fallback giving the same bytes
    if os.environ.get("LMV_NO_NUMPY"):
        raise ImportError
    import numpy as _np
except Exception:  # pragma: no cover - depends on the interpreter
    _np = None

MAGIC = b"LEMEVIT\0"
VERSION = 1
ENDIAN_TAG = 0x01020304
HEADER_SIZE = 128
META_OFFSET = 128
DATA_ALIGN = 64

# meta value types
T_INT32 = 1
T_FLOAT32 = 2
T_STRING = 3
T_STRLIST = 4
TYPE_NAMES = {T_INT32: "int32", T_FLOAT32: "float32", T_STRING: "string", T_STRLIST: "string list"}

# tensor dtypes: code -> name; DTYPE_SIZES is bytes per element (int8 adds 4 bytes of scale per row)
DTYPE_F32 = 0
DTYPE_F16 = 1
DTYPE_INT8 = 2
DTYPE_F32P = 3
DTYPE_NAMES = OrderedDict([(DTYPE_F32, "f32"), (DTYPE_F16, "f16"), (DTYPE_INT8, "int8"), (DTYPE_F32P, "f32p")])
DTYPE_CODES = OrderedDict((v, k) for k, v in DTYPE_NAMES.items())
DTYPE_SIZES = {DTYPE_F32: 4, DTYPE_F16: 2, DTYPE_INT8: 1, DTYPE_F32P: 4}
PRECISIONS = ("f32", "f16", "int8")   # what --dtype chooses; f32 matrix weights are written as f32p
PANEL = 16                            # rows per f32p panel (the GEMM's register tile width)
F16_MAX = 65504.0
INT8_MAX = 127
QUANT_MIN_NUMEL = 1024       # smaller tensors stay float32 (quantizable())
DTYPE_META_KEY = "weights.dtype"
MAX_DIMS = 6

_KEY_RE = re.compile(r"^[a-z0-9_.]{1,255}$")
_HEADER_FMT = "<8sIIQQQQQIIQQII40s"
assert struct.calcsize(_HEADER_FMT) == HEADER_SIZE


class LmvError(Exception):
    """Raised for any invalid argument to write() or any malformed file given to read()."""


class TensorValueError(LmvError):
    """A tensor's values cannot be stored in the requested dtype (NaN or infinity for f16/int8,
    |x| > 65504 for f16); .tensor is its name."""

    def __init__(self, msg, tensor):
        LmvError.__init__(self, msg)
        self.tensor = tensor


def _align(n, a):
    return (n + a - 1) // a * a


def _pad(n, a):
    return b"\0" * (_align(n, a) - n)


# ----------------------------------------------------------------------------------------------
# meta values


class Typed(object):
    """A meta value with an explicit type, for when Python types would guess wrong
    (e.g. Typed(T_FLOAT32, [1, 2]) writes floats although the values are ints)."""

    def __init__(self, type_, value):
        self.type = type_
        self.value = value


def _infer_type(value):
    if isinstance(value, Typed):
        return value.type, value.value
    if isinstance(value, str):
        return T_STRING, value
    if isinstance(value, bool):
        return T_INT32, [int(value)]
    if isinstance(value, int):
        return T_INT32, [value]
    if isinstance(value, float):
        return T_FLOAT32, [value]
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(v, str) for v in value):
            return T_STRLIST, list(value)
        if all(isinstance(v, (bool, int)) for v in value):
            return T_INT32, [int(v) for v in value]
        if all(isinstance(v, (bool, int, float)) for v in value):
            return T_FLOAT32, [float(v) for v in value]
    raise LmvError("cannot store meta value %r: use int, float, str or a list of one kind" % (value,))


def _encode_meta_entry(key, value):
    if not isinstance(key, str) or not _KEY_RE.match(key):
        raise LmvError("invalid meta key %r: 1..255 characters from [a-z0-9_.]" % (key,))
    type_, val = _infer_type(value)
    kb = key.encode("ascii")
    if type_ == T_INT32:
        vals = list(val) if isinstance(val, (list, tuple)) else [val]
        for v in vals:
            if not -2 ** 31 <= int(v) < 2 ** 31:
                raise LmvError("meta %s: value %r does not fit int32" % (key, v))
        count = len(vals)
        payload = struct.pack("<%di" % count, *[int(v) for v in vals])
    elif type_ == T_FLOAT32:
        vals = list(val) if isinstance(val, (list, tuple)) else [val]
        count = len(vals)
        try:
            payload = struct.pack("<%df" % count, *[float(v) for v in vals])
        except OverflowError:
            raise LmvError("meta %s: value out of float32 range" % key)
    elif type_ == T_STRING:
        sb = str(val).encode("utf-8")
        if b"\0" in sb:
            raise LmvError("meta %s: string contains a NUL byte" % key)
        payload = sb + b"\0"
        count = len(payload)
        payload += _pad(len(payload), 4)
    elif type_ == T_STRLIST:
        parts = []
        for s in val:
            sb = str(s).encode("utf-8")
            if b"\0" in sb:
                raise LmvError("meta %s: string contains a NUL byte" % key)
            parts.append(struct.pack("<I", len(sb) + 1) + sb + b"\0")
        payload = b"".join(parts)
        count = len(val)
        payload += _pad(len(payload), 4)
    else:
        raise LmvError("meta %s: unknown value type %r" % (key, type_))
    head = struct.pack("<HBBI", len(kb), type_, 0, count) + kb + _pad(len(kb), 4)
    return head + payload


# ----------------------------------------------------------------------------------------------
# the ranges of meta values
#
# One table of what a meta value may be, shared by the converter (convert.py checks every value
# before it writes a file) and the tests (tests/test_convert_hostile.py writes files at and just
# past every bound and checks that the library's loader, `lmv info`, accepts and refuses exactly
# the same values).  The numbers are the loader's (lemevit.h: lmv__read_common and the families'
# bind functions).  A rule with loader=False is the converter's own: the loader reads that key
# without checking it (see the note on each), so only the converter refuses a bad value.
#
# Fields: type 'int' / 'float' / 'str' / 'strlist'; count (min, max) values (for 'str' the
# number of characters); lo, hi the value range, lo_open / hi_open when a bound is excluded
# (floats are compared after rounding to float32, as the file stores them); choices for
# strings; letters for strings that are words of single letters; arch when only that family's
# loader reads the key; loader_msg a phrase the loader's refusal contains when it does not
# name the key.  The loader checks the number of values only where loader_count is set
# (swin.depths, lemevit.attn_types); elsewhere it reads the values it needs and ignores extra
# ones (the converter writes exactly `count`), and for the per-stage lists it needs as many
# values as there are stages.


def _rule(type_, lo=None, hi=None, count=(1, 1), lo_open=False, hi_open=False, choices=None, letters=None,
          arch=None, loader=True, loader_count=False, loader_msg=None, note=None):
    return dict(type=type_, lo=lo, hi=hi, count=count, lo_open=lo_open, hi_open=hi_open, choices=choices,
                letters=letters, arch=arch, loader=loader, loader_count=loader_count, loader_msg=loader_msg,
                note=note)


_ANY = (1, 1 << 20)
META_RULES = OrderedDict([
    ("arch", _rule("str", choices=("vit", "swin", "lemevit"), loader_msg="architecture")),
    ("in_chans", _rule("int", 1, 64)),
    ("img_size", _rule("int", 1, 1 << 15, count=(2, 2))),
    ("num_classes", _rule("int", 0, 1 << 20)),
    ("num_features", _rule("int", 1, 1 << 18, loader=False, note="informative; the loader does not read it")),
    ("pre.resize", _rule("int", 0, 1 << 15)),
    ("pre.crop", _rule("int", 1, 1 << 15, count=(2, 2))),
    ("pre.crop_pct", _rule("float", 0.0, 1.0, lo_open=True, loader=False,
                           note="the loader takes any value (lmv__read_common)")),
    ("pre.interp", _rule("str", choices=("bilinear", "bicubic", "nearest"))),
    ("pre.mean", _rule("float", -1e6, 1e6, count=_ANY)),
    # the loader's bound is the float 1e-6f: the same number here, so a file holding it passes both
    ("pre.std", _rule("float", struct.unpack("<f", struct.pack("<f", 1e-6))[0], 1e6, count=_ANY)),
    ("vit.embed_dim", _rule("int", 1, 1 << 16, arch="vit")),
    ("vit.depth", _rule("int", 0, 4096, arch="vit")),
    ("vit.num_heads", _rule("int", 1, 4096, arch="vit")),
    ("vit.mlp_hidden", _rule("int", 1, 1 << 18, arch="vit")),
    ("vit.patch_size", _rule("int", 1, 1024, count=(2, 2), arch="vit")),
    ("vit.pos_grid", _rule("int", 1, 4096, count=(2, 2), arch="vit")),
    ("vit.class_token", _rule("int", 0, 1, arch="vit")),
    ("vit.class_last", _rule("int", 0, 1, arch="vit")),
    ("vit.dist_token", _rule("int", 0, 1, arch="vit")),
    ("vit.reg_tokens", _rule("int", 0, 64, arch="vit")),
    ("vit.no_embed_class", _rule("int", 0, 1, arch="vit")),
    ("vit.norm_first", _rule("int", 0, 1, arch="vit")),
    ("vit.pre_logits", _rule("int", 0, 1 << 18, arch="vit")),
    ("vit.proj", _rule("int", 0, 1 << 18, arch="vit")),
    ("vit.norm_eps", _rule("float", 0.0, 1.0, lo_open=True, hi_open=True, arch="vit")),
    ("vit.attn_scale", _rule("float", 0.0, 1e6, hi_open=True, arch="vit")),
    ("vit.act", _rule("str", choices=("gelu", "gelu_tanh", "relu", "quickgelu", "silu"), arch="vit")),
    ("vit.block", _rule("str", choices=("pre", "res_post", "parallel_scaling"), arch="vit")),
    ("vit.mlp", _rule("str", choices=("mlp", "glu"), arch="vit")),
    ("vit.pool", _rule("str", choices=("token", "avg", "map", "token_avg"), arch="vit")),
    ("vit.pool_prefix", _rule("int", 0, 1, arch="vit")),
    ("vit.map_heads", _rule("int", 1, 4096, arch="vit")),
    ("vit.abs_pos", _rule("int", 0, 1, arch="vit")),
    ("vit.rel_pos", _rule("str", choices=("none", "block", "shared_table", "both", "mlp_block", "mlp_shared"),
                          arch="vit")),
    ("vit.rope", _rule("str", choices=("none", "axial", "mixed", "dinov3"), arch="vit")),
    ("vit.rope_temperature", _rule("float", 0.0, 1e30, lo_open=True, hi_open=True, arch="vit")),
    ("vit.rope_ref_grid", _rule("int", 0, 4096, count=(2, 2), arch="vit")),
    ("vit.rope_offset", _rule("float", -1e6, 1e6, lo_open=True, hi_open=True, arch="vit")),
    ("vit.rope_indexing", _rule("str", choices=("ij", "xy"), arch="vit")),
    ("vit.rope_half", _rule("int", 0, 1, arch="vit")),
    ("vit.rel_mlp", _rule("str", choices=("cr", "swin", "rw"), arch="vit")),
    ("vit.parallel", _rule("int", 1, 16, arch="vit")),
    ("vit.norm", _rule("str", choices=("layer", "rms"), arch="vit")),
    ("vit.pos_interp", _rule("str", choices=("bicubic", "bicubic_aa", "bicubic_ac", "bilinear", "bicubic_dinov2"),
                             arch="vit")),
    ("vit.qkv_bias", _rule("int", 0, 1, arch="vit", loader=False, note="the loader finds the tensors instead")),
    ("vit.layer_scale", _rule("int", 0, 1, arch="vit", loader=False, note="the loader finds the tensors instead")),
    ("vit.patch_norm", _rule("int", 0, 1, arch="vit", loader=False, note="the loader finds the tensors instead")),
    ("vit.norm_pre", _rule("int", 0, 1, arch="vit", loader=False, note="the loader finds the tensors instead")),
    ("vit.final_norm", _rule("int", 0, 1, arch="vit", loader=False, note="the loader finds the tensors instead")),
    ("vit.fc_norm", _rule("int", 0, 1, arch="vit", loader=False, note="the loader finds the tensors instead")),
    ("swin.embed_dim", _rule("int", 1, 1 << 15, arch="swin")),
    ("swin.depths", _rule("int", 0, 1024, count=(1, 8), arch="swin", loader_count=True)),
    ("swin.num_heads", _rule("int", 1, 4096, count=(1, 8), arch="swin")),
    ("swin.mlp_hidden", _rule("int", 1, 1 << 18, count=(1, 8), arch="swin")),
    ("swin.window_size", _rule("int", 1, 256, count=(1, 8), arch="swin")),
    ("swin.patch_size", _rule("int", 1, 1024, arch="swin")),
    ("swin.norm_eps", _rule("float", 0.0, 1.0, lo_open=True, hi_open=True, arch="swin")),
    ("swin.pad_mode", _rule("str", choices=("pad_then_roll", "roll_then_pad"), arch="swin")),
    ("swin.shift_rule", _rule("str", choices=("per_axis", "min", "always"), arch="swin")),
    ("swin.version", _rule("int", 1, 2, arch="swin")),
    ("swin.pretrained_window", _rule("int", 0, 256, count=(1, 8), arch="swin")),
    ("swin.window_from", _rule("str", choices=("input", "img_size", "fixed"), arch="swin")),
    ("lemevit.attn_types", _rule("str", count=(1, 8), letters="CDES", arch="lemevit", loader_count=True)),
    ("lemevit.depths", _rule("int", 0, 1024, count=(1, 8), arch="lemevit")),
    ("lemevit.embed_dims", _rule("int", 1, 1 << 15, count=(1, 8), arch="lemevit")),
    ("lemevit.mlp_hidden", _rule("int", 1, 1 << 18, count=(1, 8), arch="lemevit")),
    ("lemevit.head_dim", _rule("int", 1, 4096, arch="lemevit")),
    ("lemevit.num_meta", _rule("int", 1, 4096, arch="lemevit")),
    ("lemevit.norm_eps", _rule("float", 0.0, 1.0, lo_open=True, hi_open=True, arch="lemevit",
                               loader_msg="LeMeViT epsilon")),
    ("lemevit.meta_eps", _rule("float", 0.0, 1.0, lo_open=True, hi_open=True, arch="lemevit",
                               loader_msg="LeMeViT epsilon")),
    ("lemevit.bn_eps", _rule("float", 0.0, 1.0, lo_open=True, hi_open=True, arch="lemevit",
                             loader_msg="LeMeViT epsilon")),
    ("lemevit.post_norm", _rule("int", 0, 1, arch="lemevit")),
    ("convert.assumed", _rule("strlist", count=(0, 64), loader=False,
                              note="informative: the meta keys whose values the converter assumed; lmv info prints them")),
])


def _range_text(r):
    lo = "-inf" if r["lo"] is None else "%g" % r["lo"]
    hi = "inf" if r["hi"] is None else "%g" % r["hi"]
    if r["type"] == "int":
        return "an integer in %s..%s" % (lo, hi)
    return "a number in %s%s, %s%s" % ("(" if r["lo_open"] else "[", lo, hi, ")" if r["hi_open"] else "]")


def check_meta_value(key, value):
    """Check one meta value against META_RULES; returns None when it is valid (or the key has no
    rule) and otherwise one sentence saying what is wrong."""
    r = META_RULES.get(key)
    if r is None:
        return None
    if isinstance(value, Typed):
        value = value.value
    t = r["type"]
    if t == "str":
        if not isinstance(value, str):
            return "%s must be a string, not %r" % (key, value)
        if r["choices"] is not None and value not in r["choices"]:
            return "%s is %r; it must be one of %s" % (key, value, ", ".join(r["choices"]))
        if r["letters"] is not None:
            lo, hi = r["count"]
            if not lo <= len(value) <= hi or any(c not in r["letters"] for c in value):
                return "%s is %r; it must be %d to %d letters from %s" % (key, value, lo, hi, ", ".join(r["letters"]))
        return None
    vals = value if isinstance(value, (list, tuple)) else [value]
    lo, hi = r["count"]
    if t == "strlist":
        if not lo <= len(vals) <= hi or not all(isinstance(v, str) for v in vals):
            return "%s must be a list of %d to %d strings, not %r" % (key, lo, hi, value)
        return None
    if not lo <= len(vals) <= hi:
        want = "%d" % lo if lo == hi else "%d to %d" % (lo, hi)
        return "%s has %d value(s); it takes %s" % (key, len(vals), want)
    for i, v in enumerate(vals):
        where = key if len(vals) == 1 else "%s[%d]" % (key, i)
        if t == "int":
            if not isinstance(v, int):
                return "%s must be an integer, not %r" % (where, v)
            x = int(v)
        else:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                return "%s must be a number, not %r" % (where, v)
            try:
                x = _to_f32(float(v))
            except OverflowError:
                x = math.copysign(math.inf, v)
            if math.isnan(x):
                return "%s is NaN; it must be %s" % (where, _range_text(r))
        bad = ((r["lo"] is not None and (x < r["lo"] or (r["lo_open"] and x == r["lo"]))) or
               (r["hi"] is not None and (x > r["hi"] or (r["hi_open"] and x == r["hi"]))))
        if bad:
            f32 = " (%r as float32)" % x if t == "float" and x != v else ""
            return "%s is %r%s; it must be %s" % (where, v, f32, _range_text(r))
    return None


def check_meta(meta):
    """Check every value of `meta` (pairs or a dict) against META_RULES; raises LmvError with the
    first problem (one sentence).  lmvfile.write() does not call this: the converter does, before
    writing, so that it never writes a file the library refuses."""
    items = meta.items() if hasattr(meta, "items") else meta
    for key, value in items:
        msg = check_meta_value(key, value)
        if msg:
            raise LmvError(msg)


# ----------------------------------------------------------------------------------------------
# writing


def _as_f32_bytes(data, nbytes, name):
    """Return little-endian float32 bytes of `data` (bytes-like, array('f'), numpy array, or a
    callable returning one of those)."""
    if callable(data):
        data = data()
    if isinstance(data, array.array):
        if data.typecode != "f":
            raise LmvError("tensor %s: array typecode %r, expected 'f'" % (name, data.typecode))
        if sys.byteorder == "big":
            data = array.array("f", data)
            data.byteswap()
        data = data.tobytes()
    elif hasattr(data, "dtype") and hasattr(data, "astype"):  # a numpy array, without importing numpy
        if getattr(data.dtype, "kind", "") != "f" or data.dtype.itemsize != 4:
            raise LmvError("tensor %s: numpy dtype %s, expected float32" % (name, data.dtype))
        data = data.astype("<f4").tobytes()   # little-endian and C order whatever the input
    mv = memoryview(data).cast("B")
    if len(mv) != nbytes:
        raise LmvError("tensor %s: %d data bytes, shape needs %d" % (name, len(mv), nbytes))
    return mv


# ----------------------------------------------------------------------------------------------
# tensor dtypes: the quantisation policy, sizes, encoding and decoding


def dtype_code(dtype):
    """The table code of a dtype given by name ('f32', 'f16', 'int8', 'f32p'), code (0..3) or None (f32)."""
    if dtype is None:
        return DTYPE_F32
    if isinstance(dtype, str) and dtype in DTYPE_CODES:
        return DTYPE_CODES[dtype]
    if isinstance(dtype, int) and not isinstance(dtype, bool) and dtype in DTYPE_NAMES:
        return dtype
    raise LmvError("unknown tensor dtype %r: use one of %s" % (dtype, ", ".join(DTYPE_CODES)))


def _numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def tensor_nbytes(dtype, shape):
    """Bytes of a tensor's data: numel*4 (f32), numel*2 (f16), 4*shape[0] + numel (int8),
    ceil(shape[0]/16)*16 * numel/shape[0] * 4 (f32p)."""
    code = dtype_code(dtype)
    n = _numel(shape)
    if code == DTYPE_INT8:
        return 4 * shape[0] + n
    if code == DTYPE_F32P:
        return _align(shape[0], PANEL) * (n // shape[0]) * 4 if shape[0] else 0
    return n * DTYPE_SIZES[code]


def quantizable(name, shape):
    """The policy: may tensor `name` of `shape` be stored as f16/int8?  Only the weights the library
    runs through its matrix multiply: the name ends in '.weight', 2 or 4 dimensions, not a
    depthwise convolution (a 4-D weight with shape[1] == 1) and at least QUANT_MIN_NUMEL elements.
    So norms, biases, BN statistics (1-D), class/meta/register tokens, position embeddings and
    relative position bias tables (not '.weight'), Swin V2's position-bias MLP (read once, by plain
    loops), depthwise convs and small tensors stay float32."""
    shape = tuple(int(d) for d in shape)
    if not name.endswith(".weight") or len(shape) not in (2, 4) or ".cpb_mlp." in name:
        return False
    if len(shape) == 4 and shape[1] == 1:
        return False
    return _numel(shape) >= QUANT_MIN_NUMEL


def packable(name, shape):
    """May float32 tensor `name` of `shape` be stored as f32p?  The weights quantizable() picks,
    whatever their size: they are read only by the library's matrix multiply."""
    shape = tuple(int(d) for d in shape)
    return name.endswith(".weight") and len(shape) in (2, 4) and not (len(shape) == 4 and shape[1] == 1) and \
        ".cpb_mlp." not in name


_CHUNK = 1 << 16   # elements per step of the pure-Python loops (bounds temporary lists)


def _f32_values(data, numel, name):
    """The float32 values of `data` (anything _as_f32_bytes takes) as a flat numpy float32 array
    when numpy is available, else an array('f'), both in native byte order."""
    mv = _as_f32_bytes(data, numel * 4, name)
    if _np is not None:
        return _np.frombuffer(mv, dtype="<f4").astype(_np.float32)
    a = array.array("f")
    a.frombytes(mv)
    if sys.byteorder == "big":
        a.byteswap()
    return a


def _first_bad(vals, bad):
    for i, v in enumerate(vals):
        if bad(v):
            return i, v
    return -1, None


def _check_finite(vals, name, what):
    if _np is not None:
        ok = bool(_np.isfinite(vals).all())
    else:
        # a float64 sum of float32 values cannot overflow, so it is finite iff every value is
        ok = math.isfinite(sum(vals))
    if not ok:
        i, v = _first_bad(vals, lambda x: not math.isfinite(x))
        msg = ("tensor %s: element %d is %s; %s cannot store NaN or infinity (keep the tensor float32, "
               "or fix the checkpoint)" % (name, i, float(v), what))
        raise TensorValueError(msg, name)


def _f16_overflow(name, i, v):
    return TensorValueError("tensor %s: element %d = %r overflows float16 (largest finite value %g); store this "
                            "tensor as int8 or f32 instead" % (name, i, float(v), F16_MAX), name)


def _encode_f16(vals, name):
    """float32 values -> little-endian binary16 bytes, round to nearest even (numpy's astype and
    struct's 'e' format both round once from the exact value)."""
    _check_finite(vals, name, "f16")
    if _np is not None:
        with _np.errstate(over="ignore", invalid="ignore"):
            h = vals.astype("<f2")
        inf = _np.isinf(h)
        if inf.any():
            i = int(_np.argmax(inf))
            raise _f16_overflow(name, i, vals[i])
        return h.tobytes()
    parts = []
    for i in range(0, len(vals), _CHUNK):
        chunk = vals[i:i + _CHUNK]
        try:
            parts.append(struct.pack("<%de" % len(chunk), *chunk))
        except (OverflowError, struct.error):
            j, v = _first_bad(chunk, lambda x: abs(x) > F16_MAX and _packs_inf(x))
            raise _f16_overflow(name, i + j, v)
    return b"".join(parts)


def _packs_inf(x):
    try:
        struct.pack("<e", x)
        return False
    except (OverflowError, struct.error):
        return True


def _to_f32(x):
    """Round a Python float to the nearest float32 (ties to even), as a Python float."""
    return array.array("f", [x])[0]


def _encode_int8(vals, shape, name):
    """float32 values -> 4*R bytes of little-endian float32 scales + numel int8 values."""
    _check_finite(vals, name, "int8")
    rows = shape[0]
    cols = _numel(shape[1:])
    if _np is not None:
        w = vals.reshape(rows, cols)
        scales = _np.zeros(rows, dtype="<f4")
        q = _np.zeros((rows, cols), dtype=_np.int8)
        step = max(1, (1 << 20) // max(cols, 1))     # ~1M elements of float64 at a time
        for r0 in range(0, rows if cols else 0, step):
            blk = w[r0:r0 + step].astype(_np.float64)
            s32 = (_np.abs(blk).max(axis=1) / float(INT8_MAX)).astype(_np.float32)
            s64 = s32.astype(_np.float64)
            zero = s64 == 0.0
            qb = _np.rint(blk / _np.where(zero, 1.0, s64)[:, None])
            qb[zero] = 0.0
            _np.clip(qb, -INT8_MAX, INT8_MAX, out=qb)
            scales[r0:r0 + len(s32)] = s32
            q[r0:r0 + len(s32)] = qb.astype(_np.int8)
        return scales.tobytes() + q.tobytes()
    scales = array.array("f", bytes(4 * rows))
    q = array.array("b")
    for r in range(rows if cols else 0):
        row = vals[r * cols:(r + 1) * cols]
        s = _to_f32(max(map(abs, row)) / float(INT8_MAX))
        scales[r] = s
        if s == 0.0:
            q.frombytes(bytes(cols))
            continue
        qr = [round(v / s) for v in row]
        if max(qr) > INT8_MAX or min(qr) < -INT8_MAX:
            qr = [min(INT8_MAX, max(-INT8_MAX, x)) for x in qr]
        q.extend(qr)
    if sys.byteorder == "big":
        scales.byteswap()
    return scales.tobytes() + q.tobytes()


def _panel_offsets(rows, cols):
    """(row-major byte offset, f32p byte offset) of every element of a [rows][cols] float32 matrix."""
    for r in range(rows):
        p, j = divmod(r, PANEL)
        for c in range(cols):
            yield (r * cols + c) * 4, ((p * cols + c) * PANEL + j) * 4


def _panels(raw, rows, cols):
    """Little-endian float32 bytes of a [rows][cols] matrix -> its f32p bytes (see the top)."""
    prow = _align(rows, PANEL)
    if _np is not None:
        w = _np.zeros((prow, cols), dtype="<f4")
        w[:rows] = _np.frombuffer(raw, dtype="<f4", count=rows * cols).reshape(rows, cols)
        return w.reshape(prow // PANEL, PANEL, cols).transpose(0, 2, 1).tobytes()
    out = bytearray(prow * cols * 4)   # the rows past `rows` stay zero
    for a, b in _panel_offsets(rows, cols):
        out[b:b + 4] = raw[a:a + 4]
    return bytes(out)


def _unpanel(raw, rows, cols):
    """f32p bytes -> the little-endian float32 bytes of the [rows][cols] matrix."""
    prow = _align(rows, PANEL)
    if _np is not None:
        p = _np.frombuffer(raw, dtype="<f4", count=prow * cols).reshape(prow // PANEL, cols, PANEL)
        return p.transpose(0, 2, 1).reshape(prow, cols)[:rows].tobytes()
    out = bytearray(rows * cols * 4)
    for a, b in _panel_offsets(rows, cols):
        out[a:a + 4] = raw[b:b + 4]
    return bytes(out)


def encode_tensor(data, dtype, shape, name="tensor"):
    """The bytes a tensor of `shape` stores for float32 `data` (bytes, array('f'), numpy float32
    array or a callable returning one) in `dtype`.  Raises LmvError."""
    code = dtype_code(dtype)
    shape = tuple(int(d) for d in shape)
    n = _numel(shape)
    if code == DTYPE_F32:
        return _as_f32_bytes(data, n * 4, name)
    if code in (DTYPE_INT8, DTYPE_F32P) and len(shape) < 2:
        raise LmvError("tensor %s: %s needs at least 2 dimensions (one %s per row), shape is %s"
                       % (name, DTYPE_NAMES[code], "scale" if code == DTYPE_INT8 else "panel row", list(shape)))
    if code == DTYPE_F32P:
        return _panels(bytes(_as_f32_bytes(data, n * 4, name)), shape[0], n // shape[0] if shape[0] else 0)
    vals = _f32_values(data, n, name)
    if code == DTYPE_F16:
        return _encode_f16(vals, name)
    return _encode_int8(vals, shape, name)


def decode_tensor(raw, dtype, shape):
    """Stored bytes -> the float32 values the library computes with, as a flat array('f'), row-major:
    f16 widened exactly; int8 as the float32 product float32(scale[r]) * float32(q); f32p unpacked."""
    code = dtype_code(dtype)
    shape = tuple(int(d) for d in shape)
    n = _numel(shape)
    out = array.array("f")
    if code == DTYPE_F32P:
        raw, code = _unpanel(bytes(raw), shape[0], n // shape[0] if shape[0] else 0), DTYPE_F32
    if code == DTYPE_F32:
        out.frombytes(raw)
        if sys.byteorder == "big":
            out.byteswap()
        return out
    if code == DTYPE_F16:
        if _np is not None:
            out.frombytes(_np.frombuffer(raw, dtype="<f2").astype(_np.float32).tobytes())
            return out
        for i in range(0, n, _CHUNK):
            k = min(_CHUNK, n - i)
            out.extend(struct.unpack_from("<%de" % k, raw, 2 * i))   # exact: every f16 is a float32
        return out
    rows = shape[0]
    cols = _numel(shape[1:])
    if _np is not None:
        s = _np.frombuffer(raw, dtype="<f4", count=rows).astype(_np.float32)
        q = _np.frombuffer(raw, dtype=_np.int8, count=n, offset=4 * rows).reshape(rows, cols)
        out.frombytes((s[:, None] * q.astype(_np.float32)).tobytes())
        return out
    s = array.array("f")
    s.frombytes(raw[:4 * rows])
    if sys.byteorder == "big":
        s.byteswap()
    q = array.array("b")
    q.frombytes(raw[4 * rows:4 * rows + n])
    for r in range(rows if cols else 0):
        sr = s[r]
        # the float64 product of a float32 and an int8 is exact, so rounding it to float32 once
        # gives the float32 product
        out.extend([sr * x for x in q[r * cols:(r + 1) * cols]])
    return out


def layout(meta, tensors):
    """Compute the encoded meta/table sections and every offset, without any tensor data.
    `meta`: iterable of (key, value); `tensors`: iterable of (name, shape, data) or
    (name, shape, data, dtype).  Returns a dict used by write(); handy for tests."""
    meta = list(meta.items()) if isinstance(meta, dict) else list(meta)
    keys = [k for k, _ in meta]
    if len(set(keys)) != len(keys):
        dup = sorted(set(k for k in keys if keys.count(k) > 1))
        raise LmvError("duplicate meta keys: %s" % ", ".join(dup))
    meta_bytes = b"".join(_encode_meta_entry(k, v) for k, v in meta)

    entries = []
    names = set()
    rel = 0
    for item in tensors:
        if len(item) == 3:
            (name, shape, data), dtype = item, None
        elif len(item) == 4:
            name, shape, data, dtype = item
        else:
            raise LmvError("a tensor is (name, shape, data) or (name, shape, data, dtype), got %d items" % len(item))
        nb = name.encode("ascii") if isinstance(name, str) else b""
        if not 1 <= len(nb) <= 255:
            raise LmvError("invalid tensor name %r: 1..255 ASCII characters" % (name,))
        if name in names:
            raise LmvError("duplicate tensor name %s" % name)
        names.add(name)
        shape = tuple(int(d) for d in shape)
        if len(shape) > MAX_DIMS:
            raise LmvError("tensor %s has %d dimensions, at most %d allowed" % (name, len(shape), MAX_DIMS))
        numel = 1
        for d in shape:
            if not 0 <= d < 2 ** 32:
                raise LmvError("tensor %s: bad dimension %d" % (name, d))
            numel *= d
        code = dtype_code(dtype)
        if code in (DTYPE_INT8, DTYPE_F32P) and len(shape) < 2:
            raise LmvError("tensor %s: %s needs at least 2 dimensions, shape is %s"
                           % (name, DTYPE_NAMES[code], list(shape)))
        size = tensor_nbytes(code, shape)
        rel = _align(rel, DATA_ALIGN)
        entry = struct.pack("<HBBQQ", len(nb), code, len(shape), rel, size)
        entry += struct.pack("<%dI" % len(shape), *shape) + nb
        entry += _pad(len(entry), 8)
        entries.append((name, shape, rel, size, data, entry, code))
        rel += size
    table_bytes = b"".join(e[5] for e in entries)
    data_size = _align(rel, DATA_ALIGN)

    meta_size = len(meta_bytes)
    table_off = _align(META_OFFSET + meta_size, 8)
    table_size = len(table_bytes)
    data_off = _align(table_off + table_size, DATA_ALIGN)
    return {
        "meta": meta, "meta_bytes": meta_bytes, "n_meta": len(meta),
        "entries": entries, "table_bytes": table_bytes,
        "meta_off": META_OFFSET, "meta_size": meta_size,
        "table_off": table_off, "table_size": table_size,
        "data_off": data_off, "data_size": data_size,
        "file_size": data_off + data_size,
    }


def _header(lay, crc_head, crc_data):
    return struct.pack(
        _HEADER_FMT, MAGIC, VERSION, ENDIAN_TAG, lay["file_size"], lay["meta_off"], lay["meta_size"],
        lay["table_off"], lay["table_size"], lay["n_meta"], len(lay["entries"]),
        lay["data_off"], lay["data_size"], crc_head, crc_data, b"\0" * 40)


def write(path, meta, tensors):
    """Write an .lmv file.

    meta    -- list of (key, value) pairs or a dict, in the order they should appear.  int -> int32,
               float -> float32, str -> string, list of int/float/str -> array / string list;
               wrap in Typed() to force a type.
    tensors -- list of (name, shape, data) or (name, shape, data, dtype); data is float32
               little-endian bytes (or array('f'), a float32 numpy array, or a zero-argument
               callable returning one of those, called once while writing so large models need
               not be held in memory twice).  dtype is 'f32' (the default), 'f16' or 'int8': the
               float32 values are encoded while writing, one tensor in memory at a time.
               Values the dtype cannot hold (NaN or inf; for f16 also |x| rounding above
               65504) raise TensorValueError (an LmvError naming the tensor).

    The file is written to a temporary name next to `path` and renamed, so a failed write never
    leaves a half-written file under the final name.  Returns the file size.
    """
    lay = layout(meta, tensors)
    # header CRC: header bytes [0, 80), then the meta section, then the table section
    head0 = _header(lay, 0, 0)
    crc_head = zlib.crc32(head0[:80])
    crc_head = zlib.crc32(lay["meta_bytes"], crc_head)
    crc_head = zlib.crc32(lay["table_bytes"], crc_head) & 0xFFFFFFFF

    tmp = "%s.tmp%d" % (path, os.getpid())
    try:
        with open(tmp, "wb") as f:
            f.write(head0)
            f.write(lay["meta_bytes"])
            f.write(b"\0" * (lay["table_off"] - lay["meta_off"] - lay["meta_size"]))
            f.write(lay["table_bytes"])
            f.write(b"\0" * (lay["data_off"] - lay["table_off"] - lay["table_size"]))
            crc_data = 0
            pos = 0
            for name, shape, rel, size, data, _, code in lay["entries"]:
                if rel > pos:
                    gap = b"\0" * (rel - pos)
                    f.write(gap)
                    crc_data = zlib.crc32(gap, crc_data)
                mv = encode_tensor(data, code, shape, name)
                if len(mv) != size:
                    raise LmvError("internal error: tensor %s encoded to %d bytes, expected %d" % (name, len(mv), size))
                f.write(mv)
                crc_data = zlib.crc32(mv, crc_data)
                pos = rel + size
            tail = b"\0" * (lay["data_size"] - pos)
            f.write(tail)
            crc_data = zlib.crc32(tail, crc_data) & 0xFFFFFFFF
            f.seek(0)
            f.write(_header(lay, crc_head, crc_data))
        if os.path.getsize(tmp) != lay["file_size"]:
            raise LmvError("internal error: wrote %d bytes, expected %d" % (os.path.getsize(tmp), lay["file_size"]))
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return lay["file_size"]


# ----------------------------------------------------------------------------------------------
# reading


class TensorInfo(object):
    __slots__ = ("name", "dtype", "shape", "offset", "size")

    def __init__(self, name, dtype, shape, offset, size):
        self.name, self.dtype, self.shape, self.offset, self.size = name, dtype, shape, offset, size

    @property
    def numel(self):
        return _numel(self.shape)

    @property
    def dtype_name(self):
        return DTYPE_NAMES.get(self.dtype, str(self.dtype))

    def __repr__(self):
        return "TensorInfo(%s, %s, shape=%s, offset=%d, size=%d)" % (self.name, self.dtype_name, self.shape,
                                                                     self.offset, self.size)


class LmvFile(object):
    """A parsed .lmv file.  Attributes: header (dict), meta (OrderedDict key -> value: list of int
    for int32, list of float for float32, str for string, list of str for string list),
    meta_types (key -> type code), tensors (OrderedDict name -> TensorInfo, offsets relative to the
    data section), buf (the whole file as bytes)."""

    def __init__(self, buf, header, meta, meta_types, tensors):
        self.buf, self.header, self.meta, self.meta_types, self.tensors = buf, header, meta, meta_types, tensors

    def scalar(self, key, default=None):
        """The single value of an int/float meta entry (or the string), default if absent."""
        if key not in self.meta:
            return default
        v = self.meta[key]
        if isinstance(v, list) and self.meta_types[key] in (T_INT32, T_FLOAT32):
            if len(v) != 1:
                raise LmvError("meta %s has %d values, expected one" % (key, len(v)))
            return v[0]
        return v

    def tensor_bytes(self, name):
        """The stored bytes of a tensor (int8: the float32 scales, then the int8 values)."""
        t = self.tensors[name]
        start = self.header["data_off"] + t.offset
        return memoryview(self.buf)[start:start + t.size]

    def tensor(self, name):
        """Values of a tensor as a flat array('f') (row-major): for f16 and int8 tensors the
        dequantised float32 values the library computes with (see decode_tensor)."""
        t = self.tensors[name]
        return decode_tensor(self.tensor_bytes(name), t.dtype, t.shape)

    def dtype(self, name):
        """The tensor's dtype name: 'f32', 'f16', 'int8' or 'f32p'."""
        return self.tensors[name].dtype_name

    def shape(self, name):
        return self.tensors[name].shape


def _check(cond, msg):
    if not cond:
        raise LmvError(msg)


def read(source, verify_crc=True):
    """Parse and validate an .lmv file (a path or bytes).  Every structural rule of the format is
    checked (magic, version, endianness, section order and bounds, alignment, key and name rules,
    padding, tensor ranges) and, unless verify_crc is False, both CRCs.  Raises LmvError."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        buf = bytes(source)
    else:
        with open(source, "rb") as f:
            buf = f.read()
    _check(len(buf) >= HEADER_SIZE, "file too small for the 128-byte header (%d bytes)" % len(buf))
    (magic, version, tag, file_size, meta_off, meta_size, table_off, table_size, n_meta, n_tensors,
     data_off, data_size, crc_head, crc_data, reserved) = struct.unpack(_HEADER_FMT, buf[:HEADER_SIZE])
    _check(magic == MAGIC, "bad magic %r, not an .lmv file" % magic)
    if tag == 0x04030201:
        raise LmvError("file was written big-endian (endian tag 0x04030201)")
    _check(tag == ENDIAN_TAG, "bad endian tag 0x%08x" % tag)
    _check(version == VERSION, "unsupported format version %d" % version)
    _check(file_size == len(buf), "header says %d bytes, file has %d (truncated?)" % (file_size, len(buf)))
    _check(meta_off == META_OFFSET, "meta offset %d, must be 128" % meta_off)
    _check(table_off == _align(meta_off + meta_size, 8), "table offset %d is not meta end aligned to 8" % table_off)
    _check(data_off % DATA_ALIGN == 0, "data offset %d is not a multiple of 64" % data_off)
    _check(table_off + table_size <= data_off, "table overlaps the data section")
    _check(data_off + data_size == file_size, "data section does not end at the end of the file")
    _check(reserved == b"\0" * 40, "reserved header bytes are not zero")
    header = dict(version=version, file_size=file_size, meta_off=meta_off, meta_size=meta_size,
                  table_off=table_off, table_size=table_size, n_meta=n_meta, n_tensors=n_tensors,
                  data_off=data_off, data_size=data_size, crc_head=crc_head, crc_data=crc_data)
    _check(all(b == 0 for b in buf[meta_off + meta_size:table_off]), "non-zero bytes between meta and table")
    _check(all(b == 0 for b in buf[table_off + table_size:data_off]), "non-zero padding before the data section")

    if verify_crc:
        c = zlib.crc32(buf[:80])
        c = zlib.crc32(buf[meta_off:meta_off + meta_size], c)
        c = zlib.crc32(buf[table_off:table_off + table_size], c) & 0xFFFFFFFF
        _check(c == crc_head, "header/meta/table CRC mismatch (stored 0x%08x, computed 0x%08x)" % (crc_head, c))
        d = zlib.crc32(buf[data_off:data_off + data_size]) & 0xFFFFFFFF
        _check(d == crc_data, "data CRC mismatch (stored 0x%08x, computed 0x%08x)" % (crc_data, d))

    # meta entries
    meta, meta_types = OrderedDict(), {}
    pos, end = meta_off, meta_off + meta_size
    for i in range(n_meta):
        _check(pos + 8 <= end, "meta entry %d runs past the meta section" % i)
        klen, type_, zero, count = struct.unpack_from("<HBBI", buf, pos)
        _check(zero == 0, "meta entry %d: reserved byte not zero" % i)
        _check(1 <= klen <= 255, "meta entry %d: key length %d" % (i, klen))
        kstart = pos + 8
        _check(kstart + _align(klen, 4) <= end, "meta entry %d: key runs past the section" % i)
        try:
            key = buf[kstart:kstart + klen].decode("ascii")
        except UnicodeDecodeError:
            raise LmvError("meta entry %d: key is not ASCII" % i)
        _check(_KEY_RE.match(key) is not None, "meta key %r has characters outside [a-z0-9_.]" % key)
        _check(key not in meta, "duplicate meta key %s" % key)
        _check(buf[kstart + klen:kstart + _align(klen, 4)] == _pad(klen, 4), "meta %s: key padding not zero" % key)
        p = kstart + _align(klen, 4)
        if type_ in (T_INT32, T_FLOAT32):
            _check(p + 4 * count <= end, "meta %s: values run past the section" % key)
            value = list(struct.unpack_from("<%d%s" % (count, "i" if type_ == T_INT32 else "f"), buf, p))
            p += 4 * count
        elif type_ == T_STRING:
            _check(count >= 1 and p + count <= end, "meta %s: string runs past the section" % key)
            raw = buf[p:p + count]
            _check(raw[-1:] == b"\0", "meta %s: string does not end in NUL" % key)
            value = raw[:raw.index(b"\0")].decode("utf-8")
            _check(buf[p + count:p + _align(count, 4)] == _pad(count, 4), "meta %s: padding not zero" % key)
            p += _align(count, 4)
        elif type_ == T_STRLIST:
            value = []
            q = p
            for j in range(count):
                _check(q + 4 <= end, "meta %s: string %d runs past the section" % (key, j))
                (ln,) = struct.unpack_from("<I", buf, q)
                _check(ln >= 1 and q + 4 + ln <= end, "meta %s: string %d runs past the section" % (key, j))
                raw = buf[q + 4:q + 4 + ln]
                _check(raw[-1:] == b"\0", "meta %s: string %d does not end in NUL" % (key, j))
                value.append(raw[:raw.index(b"\0")].decode("utf-8"))
                q += 4 + ln
            n = q - p
            _check(buf[q:p + _align(n, 4)] == _pad(n, 4), "meta %s: padding not zero" % key)
            p += _align(n, 4)
        else:
            raise LmvError("meta %s: unknown value type %d" % (key, type_))
        _check(p <= end, "meta %s runs past the meta section" % key)
        meta[key], meta_types[key] = value, type_
        pos = p
    _check(pos == end, "meta section has %d bytes after its %d entries" % (end - pos, n_meta))

    # tensor table
    tensors = OrderedDict()
    pos, end = table_off, table_off + table_size
    for i in range(n_tensors):
        _check(pos % 8 == 0, "tensor entry %d is not 8-aligned" % i)
        _check(pos + 20 <= end, "tensor entry %d runs past the table" % i)
        nlen, dtype, ndim, off, size = struct.unpack_from("<HBBQQ", buf, pos)
        _check(1 <= nlen <= 255, "tensor entry %d: name length %d" % (i, nlen))
        _check(dtype in DTYPE_NAMES, "tensor entry %d: unknown dtype %d (known: %s)"
               % (i, dtype, ", ".join("%d %s" % kv for kv in DTYPE_NAMES.items())))
        _check(ndim <= MAX_DIMS, "tensor entry %d: %d dimensions" % (i, ndim))
        p = pos + 20
        _check(p + 4 * ndim + nlen <= end, "tensor entry %d runs past the table" % i)
        shape = tuple(struct.unpack_from("<%dI" % ndim, buf, p))
        p += 4 * ndim
        name = buf[p:p + nlen].decode("ascii", "replace")
        p += nlen
        entry_end = pos + _align(p - pos, 8)
        _check(buf[p:entry_end] == b"\0" * (entry_end - p), "tensor %s: name padding not zero" % name)
        _check(name not in tensors, "duplicate tensor name %s" % name)
        _check(dtype not in (DTYPE_INT8, DTYPE_F32P) or ndim >= 2,
               "tensor %s: %s with %d dimension(s); %s needs at least 2 (one %s per row)"
               % (name, DTYPE_NAMES[dtype], ndim, DTYPE_NAMES[dtype], "scale" if dtype == DTYPE_INT8 else "panel row"))
        want = tensor_nbytes(dtype, shape)
        _check(size == want, "tensor %s: size %d does not match shape %s and dtype %s (%d bytes)"
               % (name, size, list(shape), DTYPE_NAMES[dtype], want))
        _check(off % DATA_ALIGN == 0, "tensor %s: data offset %d is not a multiple of 64" % (name, off))
        _check(off + size <= data_size, "tensor %s runs past the data section" % name)
        tensors[name] = TensorInfo(name, dtype, shape, off, size)
        pos = entry_end
    _check(pos == end, "tensor table has %d bytes after its %d entries" % (end - pos, n_tensors))
    spans = sorted((t.offset, t.offset + t.size, t.name) for t in tensors.values() if t.size)
    for (a0, a1, an), (b0, b1, bn) in zip(spans, spans[1:]):
        _check(a1 <= b0, "tensors %s and %s overlap" % (an, bn))
    return LmvFile(buf, header, meta, meta_types, tensors)


# ----------------------------------------------------------------------------------------------
# re-encoding


def compile_keep(patterns, what="--keep"):
    """Compile regexes of tensor names to keep float32; raises LmvError naming a bad one."""
    out = []
    for rx in patterns or []:
        try:
            out.append(re.compile(rx))
        except re.error as e:
            raise LmvError("%s %r: %s" % (what, rx, e))
    return out


def choose_dtype(name, shape, dtype, keep=(), pack=True):
    """The dtype name a tensor gets when a file is written in precision `dtype` ('f32', 'f16' or
    'int8'): `dtype` for quantizable() tensors whose name matches no regex of `keep` (re.search,
    compiled or strings); otherwise float32, as 'f32p' when `pack` and packable(), else 'f32'."""
    code = dtype_code(dtype)
    if code in (DTYPE_F16, DTYPE_INT8) and quantizable(name, shape) and not any(re.search(rx, name)
                                                                               for rx in keep or ()):
        return DTYPE_NAMES[code]
    return "f32p" if pack and packable(name, shape) else "f32"


def requantize(src_path, dst_path, dtype, keep=None, pack=True):
    """Re-encode the .lmv file `src_path` as `dst_path`: the meta entries copied as they are, plus
    (added or replaced in place) the string `weights.dtype` = dtype; tensors chosen by
    quantizable() and not matched by a regex of `keep` stored in `dtype` ('f16' or 'int8'),
    computed from their dequantised float32 values, every other tensor float32 (f32p for the
    packable() ones unless `pack` is false).  dtype 'f32' writes every tensor as float32 with its
    dequantised values (the exact float32 model a quantised file stands for).  Float32 tensors
    that stay float32 keep their exact bytes (f32 copied, f32p unpacked and packed again, which is
    lossless).  Returns the size of the new file.  Raises LmvError (OSError for I/O failures)."""
    name = DTYPE_NAMES[dtype_code(dtype)]
    if name not in PRECISIONS:
        raise LmvError("re-encode to f32, f16 or int8, not %s (f32 stores matrix weights as f32p)" % name)
    keep = compile_keep(keep)
    f = read(src_path)
    meta = [(k, Typed(f.meta_types[k], v)) for k, v in f.meta.items()]
    entry = (DTYPE_META_KEY, Typed(T_STRING, name))
    idx = [i for i, (k, _) in enumerate(meta) if k == DTYPE_META_KEY]
    if idx:
        meta[idx[0]] = entry
    else:
        meta.append(entry)
    tensors = []
    for tname, t in f.tensors.items():
        want = choose_dtype(tname, t.shape, name, keep, pack)
        if t.dtype == DTYPE_F32 and want == "f32":
            data = f.tensor_bytes(tname)
        else:
            data = (lambda tname=tname: f.tensor(tname))
        tensors.append((tname, t.shape, data, want))
    return write(dst_path, meta, tensors)


# ----------------------------------------------------------------------------------------------
# printing and the command line


def dtype_summary(f):
    """OrderedDict dtype name -> [tensor count, parameters, data bytes], in code order."""
    out = OrderedDict()
    for code, nm in DTYPE_NAMES.items():
        ts = [t for t in f.tensors.values() if t.dtype == code]
        if ts:
            out[nm] = [len(ts), sum(t.numel for t in ts), sum(t.size for t in ts)]
    return out


def describe(f, out=sys.stdout):
    """Print a readable dump of a parsed file."""
    h = f.header
    out.write("lmv v%d, %d bytes, %d meta entries, %d tensors, data at %d (%d bytes), crc 0x%08x/0x%08x\n"
              % (h["version"], h["file_size"], h["n_meta"], h["n_tensors"], h["data_off"], h["data_size"],
                 h["crc_head"], h["crc_data"]))
    for k, v in f.meta.items():
        if f.meta_types[k] == T_STRLIST and len(v) > 4:
            v = "%s ... (%d strings)" % (v[:4], len(v))
        out.write("  %-20s %-8s %s\n" % (k, TYPE_NAMES[f.meta_types[k]], v))
    total = 0
    for t in f.tensors.values():
        total += t.numel
        out.write("  %-40s %-4s %-18s @%d\n" % (t.name, t.dtype_name, list(t.shape), t.offset))
    out.write("  %d parameters\n" % total)
    parts = ["%s: %d tensors, %d bytes" % (nm, n, b) for nm, (n, _, b) in dtype_summary(f).items()]
    out.write("  data by dtype: %s\n" % ("; ".join(parts) or "none"))


def _size_line(label, path, f):
    parts = ["%d %s" % (n, nm) for nm, (n, _, _) in dtype_summary(f).items()]
    return "%-6s %s: %d bytes (%.2f MB), tensors %s" % (label, path, f.header["file_size"],
                                                        f.header["file_size"] / 1e6, ", ".join(parts) or "none")


USAGE_EPILOG = """\
examples:
  lmvfile.py model.lmv                                  validate, print header, meta and tensor table
  lmvfile.py --dtype int8 model.lmv model_int8.lmv      int8 matrix weights (about 4x smaller)
  lmvfile.py --dtype f16 model.lmv model_f16.lmv        f16 matrix weights (about 2x smaller)
  lmvfile.py --dtype int8 --keep '^head\\.' m.lmv m8.lmv keep the classifier float32
  lmvfile.py --dtype f32 model_int8.lmv exact_f32.lmv   dequantise: the float32 model an int8 file stands for
  lmvfile.py --dtype f32 --no-pack in.lmv plain.lmv     float32 with the matrix weights in plain row order

which tensors are re-encoded (the same policy as convert.py --dtype): names ending in '.weight'
with 2 or 4 dimensions, not depthwise convolutions (4-D with shape[1] == 1), with at least %d
elements.  Norms, biases, BN statistics, tokens, position embeddings and bias tables stay float32.
f16 refuses tensors with NaN/inf or values beyond +-65504 (use int8, or --keep for that tensor).
int8 is symmetric per output channel: one float32 scale per row (max|w| / 127).
Float32 matrix weights (the same names and shapes, any size) are written as f32p, the library's
matrix-multiply panels (16 rows interleaved), read in place and faster; --no-pack keeps them in
plain row order.

exit status: 0 success, 1 invalid file or encoding error (one line on stderr), 2 bad command line.
""" % QUANT_MIN_NUMEL


def build_parser():
    p = argparse.ArgumentParser(
        prog="lmvfile.py", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=USAGE_EPILOG,
        usage="%(prog)s FILE.lmv\n       %(prog)s --dtype {f32,f16,int8} [--keep REGEX]... [--no-pack] IN.lmv OUT.lmv",
        description="Validate and print a lemevit.h .lmv weight file (structure and both CRCs), or re-encode "
                    "its matrix weights as f16 or int8 (or back to float32).")
    p.add_argument("files", nargs="+", metavar="FILE", help="the file to print; with --dtype: input and output")
    p.add_argument("--dtype", choices=list(PRECISIONS), help="re-encode IN.lmv as OUT.lmv: quantizable tensors "
                   "in this dtype, the rest float32 (f32: every tensor float32, dequantised)")
    p.add_argument("--keep", action="append", metavar="REGEX", help="with --dtype: keep tensors whose name "
                   "matches REGEX (re.search) float32; repeatable")
    p.add_argument("--no-pack", dest="pack", action="store_false", help="with --dtype: store float32 matrix "
                   "weights in plain row order (f32) instead of the GEMM's panels (f32p)")
    return p


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    opts = parser.parse_args(argv)
    if opts.dtype is None:
        if opts.keep or not opts.pack:
            parser.error("--keep and --no-pack need --dtype")
        if len(opts.files) != 1:
            parser.error("give one FILE.lmv to print (or --dtype with IN.lmv OUT.lmv)")
        try:
            describe(read(opts.files[0]))
        except (LmvError, OSError) as e:
            sys.stderr.write("lmvfile: %s: %s\n" % (opts.files[0], e))
            return 1
        return 0
    if len(opts.files) != 2:
        parser.error("--dtype needs IN.lmv and OUT.lmv")
    src, dst = opts.files
    if os.path.exists(dst) and os.path.samefile(src, dst):
        parser.error("OUT.lmv is the input file")
    try:
        requantize(src, dst, opts.dtype, keep=opts.keep, pack=opts.pack)
        a, b = read(src), read(dst)
    except (LmvError, OSError) as e:
        sys.stderr.write("lmvfile: %s -> %s: %s\n" % (src, dst, e))
        return 1
    sys.stdout.write(_size_line("input", src, a) + "\n")
    sys.stdout.write(_size_line("output", dst, b) + "\n")
    sys.stdout.write("ratio  %.3f (weights.dtype = %s)\n" % (b.header["file_size"] / float(a.header["file_size"]),
                                                            opts.dtype))
    return 0


if __name__ == "__main__":
    sys.exit(main())
