#!/usr/bin/env python3
"""convert.py - turn a PyTorch / safetensors checkpoint into a lemevit.h `.lmv` weight file.

Python 3.8+ standard library only (numpy is used to go faster when it can be imported, never
required); torch is never imported.  See `convert.py --help` for the command line and the mapping
file format.  The file is organised as:

  1. tensors: dtypes, a lazily materialised Tensor, float32 conversion
  2. safe unpickling: a restricted pickle.Unpickler that only builds local stubs
  3. checkpoint readers: torch zip, torch legacy (pre-1.6), plain pickle, safetensors
  4. finding the weights: wrapper dicts, EMA copies, pickled nn.Modules, key prefixes
  5. the configuration schema of the .lmv meta keys
  6. families: ViT (timm / DeiT / torchvision / Hugging Face), Swin (Microsoft / timm in every
     era / torchvision / Hugging Face), LeMeViT (official and training-era names), and mapping
     files for users' own module names; each plugs in through DETECTORS ("Adding a family")
  7. preprocessing, labels, writing, summary, command line
"""

import argparse
import array
import io
import itertools
import json
import math
import os
import pickle
import pickletools
import re
import reprlib
import struct
import sys
import zipfile
import zlib
from collections import OrderedDict

if os.path.dirname(os.path.abspath(__file__)) not in sys.path:   # lmvfile.py sits next to this file
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lmvfile  # noqa: E402

try:  # optional speed-up only; every code path has a pure-Python fallback
    if os.environ.get("LMV_NO_NUMPY"):
        raise ImportError
    import numpy as _np
except Exception:  # pragma: no cover - depends on the interpreter
    _np = None

TOOLS_DIR = os.path.dirname(os.path.abspath(__file__))
PROG = "convert.py"


class ConvertError(Exception):
    """An expected failure (bad file, unknown layout, bad option): reported as one line, exit 1."""


# =============================================================================================
# 1. tensors
# =============================================================================================


class DType(object):
    """A tensor element type: name, size in bytes, struct format character (None: no direct
    struct support) and whether this converter can read it."""

    def __init__(self, name, itemsize, fmt, supported=True):
        self.name, self.itemsize, self.fmt, self.supported = name, itemsize, fmt, supported

    def __repr__(self):
        return "DType(%s)" % self.name


DTYPES = OrderedDict((d.name, d) for d in [
    DType("float32", 4, "f"), DType("float16", 2, "e"), DType("bfloat16", 2, None),
    DType("float64", 8, "d"), DType("int64", 8, "q"), DType("int32", 4, "i"),
    DType("int16", 2, "h"), DType("int8", 1, "b"), DType("uint8", 1, "B"), DType("bool", 1, "?"),
])
# element types that exist in torch but cannot be converted here (size known so storages can be
# skipped in legacy files; an error is raised only if such a tensor is actually needed)
_UNSUPPORTED_SIZES = {
    "complex32": 4, "complex64": 8, "complex128": 16, "float8_e4m3fn": 1, "float8_e5m2": 1,
    "float8_e4m3fnuz": 1, "float8_e5m2fnuz": 1, "uint16": 2, "uint32": 4, "uint64": 8,
    "qint8": 1, "quint8": 1, "qint32": 4, "quint4x2": 1, "quint2x4": 1,
}


def _dtype(name):
    if name in DTYPES:
        return DTYPES[name]
    return DType(name, _UNSUPPORTED_SIZES.get(name, 0), None, supported=False)


# torch storage class names -> dtype names
_STORAGE_DTYPES = {
    "FloatStorage": "float32", "HalfStorage": "float16", "BFloat16Storage": "bfloat16",
    "DoubleStorage": "float64", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool",
    "ComplexHalfStorage": "complex32", "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128", "QInt8Storage": "qint8", "QUInt8Storage": "quint8",
    "QInt32Storage": "qint32", "QUInt4x2Storage": "quint4x2", "QUInt2x4Storage": "quint2x4",
}
# torch dtype attribute names (torch.float32, torch.half, ...) -> dtype names
_TORCH_DTYPE_NAMES = {
    "float32": "float32", "float": "float32", "float16": "float16", "half": "float16",
    "bfloat16": "bfloat16", "float64": "float64", "double": "float64", "int64": "int64",
    "long": "int64", "int32": "int32", "int": "int32", "int16": "int16", "short": "int16",
    "int8": "int8", "uint8": "uint8", "bool": "bool", "complex32": "complex32", "chalf": "complex32",
    "complex64": "complex64", "cfloat": "complex64", "complex128": "complex128",
    "cdouble": "complex128", "uint16": "uint16", "uint32": "uint32", "uint64": "uint64",
    "float8_e4m3fn": "float8_e4m3fn", "float8_e5m2": "float8_e5m2",
    "float8_e4m3fnuz": "float8_e4m3fnuz", "float8_e5m2fnuz": "float8_e5m2fnuz",
    "qint8": "qint8", "quint8": "quint8", "qint32": "qint32",
}
# safetensors dtype strings -> dtype names
_SAFETENSORS_DTYPES = {
    "F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64", "I64": "int64",
    "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool", "U16": "uint16",
    "U32": "uint32", "U64": "uint64", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
    "C64": "complex64",
}


def _prod(xs):
    n = 1
    for x in xs:
        n *= x
    return n


def _contiguous_strides(shape):
    strides, acc = [], 1
    for d in reversed(shape):
        strides.append(acc)
        acc *= d
    return tuple(reversed(strides))


class Storage(object):
    """The bytes behind one or more tensors.  `numel` counts elements of `dtype` (for an untyped
    storage dtype is uint8 and numel counts bytes).  The bytes are fetched on first use."""

    def __init__(self, dtype, numel, key, fetch):
        self.dtype, self.numel, self.key, self._fetch, self._data = dtype, numel, key, fetch, None

    @property
    def nbytes(self):
        return self.numel * self.dtype.itemsize

    @property
    def data(self):
        if self._data is None:
            data = self._fetch()
            if len(data) < self.nbytes:
                raise ConvertError("storage %s has %d bytes, %d expected (truncated file?)"
                                   % (self.key, len(data), self.nbytes))
            self._data = data
        return self._data


class Tensor(object):
    """A strided view of a Storage, as torch pickles it (offset and strides in elements).
    Nothing is copied until raw() / f32() is called.  `error` marks tensors that were read but
    cannot be converted (unsupported dtype, quantized, sparse): using them raises."""

    def __init__(self, storage, offset, shape, stride, dtype=None, error=None):
        self.storage = storage
        self.offset = int(offset)
        self.shape = tuple(int(s) for s in shape)
        self.stride = tuple(int(s) for s in stride) if stride is not None else _contiguous_strides(self.shape)
        self.dtype = dtype if dtype is not None else (storage.dtype if storage is not None else _dtype("float32"))
        self.error = error

    @classmethod
    def from_bytes(cls, dtype_name, shape, data):
        """A contiguous tensor over `data` (little-endian bytes of the dtype)."""
        dt = _dtype(dtype_name)
        st = Storage(dt, len(data) // max(dt.itemsize, 1), "<memory>", lambda: data)
        return cls(st, 0, shape, None, dt)

    @classmethod
    def unsupported(cls, reason, shape=()):
        return cls(None, 0, shape, None, _dtype("float32"), error=reason)

    @property
    def numel(self):
        return _prod(self.shape)

    @property
    def ndim(self):
        return len(self.shape)

    def __repr__(self):
        return "Tensor(%s, %s)" % (self.dtype.name, list(self.shape))

    def check(self, name="tensor"):
        """Raise ConvertError if this tensor cannot be read: unsupported dtype, or a view whose
        elements run past the end of its storage."""
        if self.error:
            raise ConvertError("%s: %s" % (name, self.error))
        if not self.dtype.supported:
            raise ConvertError("%s has dtype %s, which this converter does not support" % (name, self.dtype.name))
        if self.numel == 0:
            return
        if self.offset < 0 or any(s < 0 for s in self.stride):
            raise ConvertError("%s has a negative offset or stride" % name)
        last = self.offset + sum((n - 1) * s for n, s in zip(self.shape, self.stride))
        avail = self.storage.nbytes // self.dtype.itemsize
        if last >= avail:
            raise ConvertError("%s (shape %s, offset %d, strides %s) runs past the end of its storage "
                               "(%d elements of %s)" % (name, list(self.shape), self.offset, list(self.stride),
                                                         avail, self.dtype.name))

    def expansion(self):
        """How many times over the tensor's values repeat its storage's bytes (more than 1 only for
        broadcast views: stride 0 or overlapping strides).  0 for an empty tensor."""
        if self.storage is None or self.numel == 0:
            return 0
        return self.numel * self.dtype.itemsize / float(max(self.storage.nbytes, 1))

    def is_contiguous(self):
        return all(n == 1 or s == c for n, s, c in zip(self.shape, self.stride, _contiguous_strides(self.shape)))

    def raw(self, name="tensor"):
        """Contiguous (row-major) little-endian bytes in the tensor's own dtype."""
        self.check(name)
        size = self.dtype.itemsize
        n = self.numel
        if n == 0:
            return b""
        buf = self.storage.data
        if self.is_contiguous():
            start = self.offset * size
            return bytes(buf[start:start + n * size])
        return _gather(buf, size, self.offset, self.shape, self.stride)

    def f32(self, name="tensor"):
        """Contiguous little-endian float32 bytes of the values (f16/bf16/f64/int/bool converted)."""
        return _to_f32(self.raw(name), self.dtype, name)

    def tolist(self, name="tensor"):
        """Flat list of Python values (float, int or bool) in row-major order."""
        raw = self.raw(name)
        if self.dtype.name == "bfloat16":
            raw, fmt = _to_f32(raw, self.dtype, name), "f"
        else:
            fmt = self.dtype.fmt
        return list(struct.unpack("<%d%s" % (self.numel, fmt), raw))

    def reshape(self, shape):
        shape = tuple(int(s) for s in shape)
        if _prod(shape) != self.numel:
            raise ConvertError("cannot reshape %s to %s" % (list(self.shape), list(shape)))
        if self.is_contiguous():
            return Tensor(self.storage, self.offset, shape, None, self.dtype, self.error)
        return Tensor.from_bytes(self.dtype.name, shape, self.raw())


MAX_TENSOR_DIMS = 16   # torch allows more, but no vision model weight comes near it


def _is_int(x):
    return isinstance(x, int) and not isinstance(x, bool)


def _checked_layout(shape, stride, offset, what):
    """Validate a tensor's shape / strides / storage offset as read from a file: a tuple (or
    list) of non-negative integers, as many strides as dimensions, an integer offset.  Returns
    (shape, stride, offset) as tuples and an int; raises ConvertError with a sentence."""
    if not isinstance(shape, (tuple, list)) or not all(_is_int(d) for d in shape):
        raise ConvertError("malformed %s: its shape %s is not a list of integers" % (what, _short(shape)))
    if len(shape) > MAX_TENSOR_DIMS:
        raise ConvertError("malformed %s: %d dimensions (at most %d)" % (what, len(shape), MAX_TENSOR_DIMS))
    if any(d < 0 for d in shape):
        raise ConvertError("malformed %s: its shape %s has a negative size" % (what, list(shape)))
    if stride is not None:
        if not isinstance(stride, (tuple, list)) or not all(_is_int(d) for d in stride):
            raise ConvertError("malformed %s: its strides %s are not a list of integers" % (what, _short(stride)))
        if len(stride) != len(shape):
            raise ConvertError("malformed %s: %d strides %s for a %d-dimensional shape %s"
                               % (what, len(stride), list(stride), len(shape), list(shape)))
        stride = tuple(stride)
    if not _is_int(offset) or offset < 0:
        raise ConvertError("malformed %s: storage offset %s is not a non-negative integer" % (what, _short(offset)))
    return tuple(shape), stride, offset


def _gather(buf, itemsize, offset, shape, stride):
    """Copy a strided view into contiguous bytes.  Dimensions of size 1 are dropped and
    dimensions that are contiguous with each other merged, so the common cases (transposes,
    slices) become one strided memoryview slice per row."""
    dims = [(n, s) for n, s in zip(shape, stride) if n != 1]
    merged = []  # innermost first
    for n, s in reversed(dims):
        if merged and s == merged[-1][0] * merged[-1][1]:
            merged[-1] = (n * merged[-1][0], merged[-1][1])
        else:
            merged.append((n, s))
    if not merged:
        merged = [(1, 1)]
    fmt = {1: "B", 2: "H", 4: "I", 8: "Q"}[itemsize]
    usable = len(buf) // itemsize * itemsize
    mv = memoryview(buf)[:usable].cast("B").cast(fmt)
    inner_n, inner_s = merged[0]
    bases = [offset]
    for n, s in reversed(merged[1:]):  # outermost first, so rows come out in row-major order
        bases = [b + k * s for b in bases for k in range(n)]
    if inner_s == 0:
        return b"".join(mv[b:b + 1].tobytes() * inner_n for b in bases)
    span = (inner_n - 1) * inner_s + 1
    return b"".join(mv[b:b + span:inner_s].tobytes() for b in bases)


def _to_f32(raw, dtype, name="tensor"):
    """Little-endian bytes of `dtype` -> little-endian float32 bytes."""
    n = len(raw) // dtype.itemsize if dtype.itemsize else 0
    if dtype.name == "float32":
        return raw
    if dtype.name == "bfloat16":
        # bf16 is the top half of an f32: place its two bytes above two zero bytes
        out = bytearray(2 * len(raw))
        out[2::4] = raw[0::2]
        out[3::4] = raw[1::2]
        return bytes(out)
    if _np is not None and dtype.fmt is not None:
        arr = _np.frombuffer(raw, dtype="<" + {"?": "b1"}.get(dtype.fmt, dtype.fmt))
        with _np.errstate(over="ignore"):
            return arr.astype("<f4").tobytes()
    if dtype.name == "float64":
        a = array.array("d")
        a.frombytes(raw)
        if sys.byteorder == "big":
            a.byteswap()
        out = array.array("f", a)  # out-of-range values become inf, as in torch's .float()
        if sys.byteorder == "big":
            out.byteswap()
        return out.tobytes()
    if dtype.fmt is None:
        raise ConvertError("%s: cannot convert dtype %s to float32" % (name, dtype.name))
    chunks = []
    step = 1 << 18
    for i in range(0, n, step):
        k = min(step, n - i)
        vals = struct.unpack_from("<%d%s" % (k, dtype.fmt), raw, i * dtype.itemsize)
        chunks.append(struct.pack("<%df" % k, *[float(v) for v in vals]))
    return b"".join(chunks)


def f32_tensor(shape, data):
    return Tensor.from_bytes("float32", shape, data)


def concat0(tensors, name="tensor"):
    """Concatenate along dim 0 (shapes must agree on the other dims); result is float32."""
    rest = tensors[0].shape[1:]
    for t in tensors:
        if t.shape[1:] != rest:
            raise ConvertError("%s: cannot concatenate shapes %s" % (name, [list(x.shape) for x in tensors]))
    parts = [t.f32(name) for t in tensors]
    return f32_tensor((sum(t.shape[0] for t in tensors),) + rest, b"".join(parts))


def scale_f32(t, factor):
    a = array.array("f")
    a.frombytes(t.f32())
    if sys.byteorder == "big":
        a.byteswap()
    a = array.array("f", (v * factor for v in a))
    if sys.byteorder == "big":
        a.byteswap()
    return f32_tensor(t.shape, a.tobytes())


def zeros_f32(shape):
    return f32_tensor(shape, bytes(4 * _prod(shape)))


# =============================================================================================
# 2. safe unpickling
# =============================================================================================
#
# pickle executes whatever callables a file names.  Our Unpickler's find_class never returns a
# real callable from the file's world: it returns local stubs that build Tensors, a few harmless
# builtins, or inert placeholder classes.  Nothing named in the file is imported or run.
#
#   * torch tensor/storage/dtype names          -> local rebuild functions and markers
#   * collections.OrderedDict, set, ...         -> the real (harmless) container types
#   * classes from elsewhere (argparse.Namespace, yacs CfgNode, nn.Module subclasses of a pickled
#     model, numpy dtypes, ...)                 -> an inert Opaque subclass that only records its
#                                                  arguments and state
#   * functions from elsewhere                  -> a reference that refuses to be called
#   * anything in os, subprocess, builtins, sys, importlib, ... or named eval/exec/system/...
#                                               -> refused at once with a clear error

_DENIED_MODULES = {
    "os", "posix", "nt", "subprocess", "sys", "builtins", "__builtin__", "shutil", "importlib",
    "runpy", "pickle", "_pickle", "cpickle", "marshal", "ctypes", "socket", "code", "codeop", "pty",
    "webbrowser", "operator", "_operator", "types", "io", "_io", "commands", "platform", "signal",
    "multiprocessing", "threading", "_thread", "asyncio", "tempfile", "glob", "pdb", "timeit",
    "trace", "profile", "cprofile", "pydoc", "http", "urllib", "urllib2", "ftplib", "smtplib",
    "telnetlib", "requests", "imp", "zipimport", "gc", "inspect", "ast", "dis", "compileall",
    "py_compile", "site", "sysconfig", "distutils", "setuptools", "pip", "shelve", "dbm",
    "sqlite3", "select", "selectors", "mmap", "fcntl", "resource", "pwd", "grp", "_posixsubprocess",
    "copy", "weakref", "ensurepip", "venv", "zipfile", "tarfile", "fileinput",
    "torch.hub", "torch.serialization", "torch.package", "torch.jit", "torch.ops", "torch._ops",
}
_DENIED_NAMES = {
    "system", "popen", "eval", "exec", "execfile", "compile", "__import__", "getattr", "setattr",
    "delattr", "open", "input", "breakpoint", "globals", "locals", "vars", "apply", "spawn",
    "spawnv", "spawnl", "execv", "execve", "execl", "fork", "remove", "unlink", "rmtree", "load",
    "loads",
}
def _short(obj):
    """A bounded repr of a pickled object for messages (a pickle can share objects so that a
    plain repr would be exponentially long)."""
    return _SHORT_REPR.repr(obj)


_SHORT_REPR = reprlib.Repr()
_SHORT_REPR.maxlevel, _SHORT_REPR.maxstring, _SHORT_REPR.maxother = 3, 60, 60


def _value_builtin(kind):
    """bytes / bytearray / str called by a pickle: only from a value the pickle holds (protocol <= 2
    writes bytearray(b'...') and str(...) this way), never from a size or an arbitrary object,
    so that a few bytes of pickle cannot ask for a gigabyte or a repr that never ends."""
    def build(*args):
        if len(args) == 0:
            return kind()
        if kind is str:
            ok = len(args) == 1 and isinstance(args[0], (str, int, float, bool))
        else:
            ok = (len(args) == 1 and isinstance(args[0], (bytes, bytearray))) or \
                 (len(args) == 2 and isinstance(args[0], str) and args[1] in ("latin1", "latin-1", "utf-8", "utf8"))
        if not ok:
            raise ConvertError("refusing to load: the pickle calls %s(%s); a checkpoint only builds %s from "
                               "a value it holds, never from a size or another object"
                               % (kind.__name__, ", ".join(type(a).__name__ for a in args), kind.__name__))
        return kind(*args)
    return build


# the few builtins a checkpoint pickle may legitimately name: plain value and container types
# (calling them with pickled arguments cannot do anything but build a value no larger than the
# arguments) and object (copyreg)
_SAFE_BUILTINS = {"set": set, "frozenset": frozenset, "bytearray": _value_builtin(bytearray), "complex": complex,
                  "slice": slice, "object": object, "bytes": _value_builtin(bytes), "list": list, "dict": dict,
                  "tuple": tuple, "int": int, "float": float, "str": _value_builtin(str), "bool": bool}


_LOWERCASE_VALUE_CLASSES = {("types", "SimpleNamespace"), ("datetime", "datetime"), ("datetime", "date"),
                            ("datetime", "time"), ("datetime", "timedelta"), ("datetime", "timezone")}


class Opaque(object):
    """Inert stand-in for a class named by the pickle.  Construction, BUILD, SETITEMS and APPENDS
    only record what they were given; no method of the real class ever runs."""

    _lmv_qualname = "?"

    def __new__(cls, *args, **kwargs):
        self = object.__new__(cls)
        self._lmv_args, self._lmv_state, self._lmv_items, self._lmv_list = args, None, OrderedDict(), []
        return self

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self._lmv_state = state

    def __setitem__(self, key, value):
        self._lmv_items[key] = value

    def append(self, value):
        self._lmv_list.append(value)

    def extend(self, values):
        self._lmv_list.extend(values)

    def __repr__(self):
        return "<%s (inert)>" % self._lmv_qualname

    def attrs(self):
        """The object's attributes as a dict, when its pickled state was a dict."""
        st = self._lmv_state
        if isinstance(st, tuple) and len(st) == 2 and (st[0] is None or isinstance(st[0], dict)) and \
                (st[1] is None or isinstance(st[1], dict)):
            dict_state, slot_state = st   # (dict state, slot state)
            st = dict(dict_state or {})
            st.update(slot_state or {})
        return st if isinstance(st, dict) else {}


_OPAQUE_CLASSES = {}


def _opaque_class(module, name):
    key = (module, name)
    if key not in _OPAQUE_CLASSES:
        cls = type(str(name.split(".")[-1]), (Opaque,), {"_lmv_qualname": "%s.%s" % key})
        _OPAQUE_CLASSES[key] = cls
    return _OPAQUE_CLASSES[key]


class _RefusedCall(object):
    """A function named by the pickle that we will not run; refusing happens if it is called."""

    def __init__(self, module, name):
        self.qualname = "%s.%s" % (module, name)

    def __call__(self, *args, **kwargs):
        raise ConvertError("refusing to load: the pickle calls %s, which is not a tensor or data type "
                           "(this file needs code to load, or is malicious)" % self.qualname)


class _StorageType(object):
    def __init__(self, dtype):
        self.dtype = dtype


class _TorchDType(object):
    def __init__(self, dtype):
        self.dtype = dtype


class _NpDType(Opaque):
    """numpy.dtype(spec, align, copy) followed by BUILD (version, byteorder, ...)."""

    def spec(self):
        s = self._lmv_args[0] if self._lmv_args else "?"
        order = "<"
        if isinstance(self._lmv_state, tuple) and len(self._lmv_state) > 1 and \
                isinstance(self._lmv_state[1], str) and self._lmv_state[1] in ("<", ">", "|", "="):
            order = self._lmv_state[1]
        return s, order


_NP_KINDS = {"f8": "float64", "f4": "float32", "f2": "float16", "i8": "int64", "i4": "int32",
             "i2": "int16", "i1": "int8", "u1": "uint8", "b1": "bool"}


def _np_struct(spec):
    s, order = spec
    if not isinstance(s, str):
        return None, "<"
    fmt = {"f8": "d", "f4": "f", "f2": "e", "i8": "q", "i4": "i", "i2": "h", "i1": "b", "u1": "B",
           "b1": "?", "u2": "H", "u4": "I", "u8": "Q"}.get(s)
    return fmt, (">" if order == ">" else "<")


def _np_scalar(dtype, data=None):
    """numpy.core.multiarray.scalar(dtype, bytes) -> a Python number (or an inert object)."""
    if isinstance(dtype, _NpDType) and isinstance(data, (bytes, bytearray)):
        fmt, order = _np_struct(dtype.spec())
        if fmt and struct.calcsize(fmt) == len(data):
            return struct.unpack(order + fmt, data)[0]
    return _opaque_class("numpy", "scalar")(dtype, data)


class _NpArray(Opaque):
    """numpy.core.multiarray._reconstruct(ndarray, (0,), b'b') followed by BUILD
    (version, shape, dtype, is_fortran, raw bytes)."""

    def to_tensor(self):
        st = self._lmv_state
        if not (isinstance(st, tuple) and len(st) == 5 and isinstance(st[2], _NpDType)):
            return None
        _, shape, dt, fortran, raw = st
        s, order = dt.spec()
        if not isinstance(s, str) or s not in _NP_KINDS or not isinstance(raw, (bytes, bytearray)):
            return None
        dtype = _dtype(_NP_KINDS[s])
        shape, _, _ = _checked_layout(shape, None, 0, "numpy array in pickle")
        if order == ">" and dtype.itemsize > 1:
            raw = _byteswap(bytes(raw), dtype.itemsize)
        if fortran and len(shape) > 1:
            t = Tensor.from_bytes(dtype.name, tuple(reversed(shape)), bytes(raw))
            return Tensor(t.storage, 0, shape, tuple(reversed(_contiguous_strides(tuple(reversed(shape))))), dtype)
        return Tensor.from_bytes(dtype.name, shape, bytes(raw))


def _byteswap(raw, size):
    a = array.array({2: "H", 4: "I", 8: "Q"}[size])
    a.frombytes(raw)
    a.byteswap()
    return a.tobytes()


def _np_reconstruct(cls, shape=None, typecode=None):
    return _NpArray()


def _rebuild_tensor(storage, storage_offset, size, stride, *rest):
    if not isinstance(storage, Storage):
        raise ConvertError("malformed tensor in pickle (storage is %r)" % (type(storage).__name__,))
    size, stride, storage_offset = _checked_layout(size, stride, storage_offset, "tensor in pickle")
    return Tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, *rest):
    """torch >= 2.x for dtypes without a legacy storage class: storage is untyped bytes and the
    dtype comes separately; offset/strides are in elements of that dtype."""
    if not isinstance(storage, Storage) or not isinstance(dtype, _TorchDType):
        raise ConvertError("malformed tensor (v3) in pickle")
    size, stride, storage_offset = _checked_layout(size, stride, storage_offset, "tensor (v3) in pickle")
    return Tensor(storage, storage_offset, size, stride, dtype.dtype)


def _rebuild_parameter(data, *rest):
    return data


def _rebuild_from_type_v2(func, new_type, args, state):
    return func(*args)


def _rebuild_from_type(func, new_type, args, state):
    return func(*args)


def _unsupported_rebuild(kind):
    def rebuild(*args):
        return Tensor.unsupported("is a %s tensor, which this converter does not support" % kind)
    return rebuild


def _jit_build_list(items=()):
    return list(items)


def _jit_restore_type_tag(value, type_str=None):
    return value


def _defaultdict(default_factory=None, *args):
    # collections.defaultdict(factory): the factory is never called, the items come by SETITEMS
    return OrderedDict()


def _torch_device(*args):
    return "device(%s)" % ", ".join(str(a) if isinstance(a, (str, int)) else _short(a) for a in args)


def _torch_size(dims=()):
    return tuple(dims)


_TEXT_CODECS = ("latin1", "latin-1", "iso-8859-1", "iso8859-1", "l1", "utf-8", "utf8", "ascii")


def _codecs_encode(obj, encoding="utf-8", errors="strict"):
    # protocol-2 pickles store `bytes` objects as _codecs.encode(str, 'latin1'); only text codecs
    # are run (others compress, decompress or look up names the file chooses)
    if not isinstance(obj, str) or not isinstance(encoding, str) or not isinstance(errors, str):
        raise ConvertError("malformed pickle: _codecs.encode takes a string, an encoding name and an error mode")
    if encoding.lower() not in _TEXT_CODECS or errors != "strict":
        raise ConvertError("refusing to load: the pickle calls _codecs.encode with encoding %s (errors %s); "
                           "checkpoints use latin1 (torch) or utf-8" % (_short(encoding), _short(errors)))
    try:
        return obj.encode(encoding, errors)
    except UnicodeEncodeError as e:
        raise ConvertError("malformed pickle: _codecs.encode cannot encode its string as %s (%s)" % (encoding, e.reason))


def _copyreg_reconstructor(cls, base, state):
    # protocol 0/1 object construction: object.__new__(cls) (+ base init for builtin bases)
    if isinstance(cls, type) and issubclass(cls, (Opaque, OrderedDict)):
        obj = cls.__new__(cls)
        if state is not None and isinstance(obj, OrderedDict):
            obj.update(state)
        return obj
    raise ConvertError("refusing to load: copyreg._reconstructor on %s" % _short(cls))


def _copyreg_newobj(cls, *args):
    if isinstance(cls, type) and issubclass(cls, (Opaque, OrderedDict)):
        return cls.__new__(cls, *args)
    raise ConvertError("refusing to load: copyreg.__newobj__ on %s" % _short(cls))


_TORCH_UTILS = {
    "_rebuild_tensor": _rebuild_tensor,
    "_rebuild_tensor_v2": _rebuild_tensor,
    "_rebuild_tensor_v3": _rebuild_tensor_v3,
    "_rebuild_parameter": _rebuild_parameter,
    "_rebuild_parameter_with_state": _rebuild_parameter,
    "_rebuild_qtensor": _unsupported_rebuild("quantized"),
    "_rebuild_sparse_tensor": _unsupported_rebuild("sparse"),
    "_rebuild_sparse_csr": _unsupported_rebuild("sparse"),
    "_rebuild_nested_tensor": _unsupported_rebuild("nested"),
    "_rebuild_device_tensor_from_numpy": _unsupported_rebuild("device"),
    "_rebuild_meta_tensor_no_storage": _unsupported_rebuild("meta (no data)"),
    "_rebuild_wrapper_subclass": _unsupported_rebuild("wrapper-subclass"),
    "_rebuild_xla_tensor": _unsupported_rebuild("XLA"),
    "_rebuild_mlc_tensor": _unsupported_rebuild("MLC"),
}


def _is_denied(module, name):
    parts = module.split(".")
    for i in range(1, len(parts) + 1):
        if ".".join(parts[:i]).lower() in _DENIED_MODULES:
            return True
    return name.split(".")[-1] in _DENIED_NAMES


def resolve_global(module, name):
    """find_class policy (see the comment block above)."""
    if module in ("collections", "typing") and name == "OrderedDict":
        return OrderedDict
    if module == "collections" and name == "defaultdict":
        return _defaultdict
    if (module, name) in _LOWERCASE_VALUE_CLASSES:
        return _opaque_class(module, name)   # value classes with lowercase names: inert stubs
    if module in ("builtins", "__builtin__") and name in _SAFE_BUILTINS:
        return _SAFE_BUILTINS[name]
    if module in ("copyreg", "copy_reg"):
        if name == "_reconstructor":
            return _copyreg_reconstructor
        if name == "__newobj__":
            return _copyreg_newobj
    if module == "_codecs" and name == "encode":
        return _codecs_encode
    if module == "torch._utils" and name in _TORCH_UTILS:
        return _TORCH_UTILS[name]
    if module == "torch._tensor" and name == "_rebuild_from_type_v2":
        return _rebuild_from_type_v2
    if module == "torch._tensor" and name == "_rebuild_from_type":
        return _rebuild_from_type
    if module in ("torch", "torch.storage", "torch.cuda"):
        if name in _STORAGE_DTYPES:
            return _StorageType(_dtype(_STORAGE_DTYPES[name]))
        if name in ("UntypedStorage", "_UntypedStorage", "ByteStorage"):
            return _StorageType(_dtype("uint8"))
        if name.endswith("Storage"):
            return _StorageType(_dtype(name[:-len("Storage")].lower() or "unknown"))
    if module == "torch":
        if name in _TORCH_DTYPE_NAMES:
            return _TorchDType(_dtype(_TORCH_DTYPE_NAMES[name]))
        if name == "Size":
            return _torch_size
        if name == "device":
            return _torch_device
    if module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        if name == "scalar":
            return _np_scalar
        if name == "_reconstruct":
            return _np_reconstruct
    if module == "numpy" and name == "dtype":
        return _NpDType
    if module == "torch.jit._pickle" and name.startswith("build_"):
        return _jit_build_list      # TorchScript typed lists: build_intlist([...]) etc.
    if module == "torch.jit._pickle" and name == "restore_type_tag":
        return _jit_restore_type_tag
    if module == "functools" and name == "partial":
        return _opaque_class(module, name)  # a class; pickled models store partial(nn.LayerNorm, ...)
    if _is_denied(module, name):
        raise ConvertError("refusing to load: the pickle references %s.%s, which is not a tensor or "
                           "data type (this file is unsafe or not a checkpoint)" % (module, name))
    short = name.split(".")[-1].lstrip("_")
    if short[:1].isupper():
        return _opaque_class(module, name)   # a class: an inert placeholder
    return _RefusedCall(module, name)         # a function: refused if the pickle calls it


class SafeUnpickler(pickle.Unpickler):
    """pickle.Unpickler whose find_class only ever returns local stubs (resolve_global)."""

    def __init__(self, file, persistent_load=None):
        # latin1 so that Python 2 era byte strings decode instead of failing
        pickle.Unpickler.__init__(self, file, encoding="latin1")
        self._pload = persistent_load

    def find_class(self, module, name):
        return resolve_global(module, name)

    def persistent_load(self, pid):
        if self._pload is None:
            raise ConvertError("the pickle refers to external data (persistent id %r) but is not inside "
                               "a PyTorch checkpoint" % (pid[:1] if isinstance(pid, tuple) else pid,))
        return self._pload(pid)


# What one pickle may build, checked before it is unpickled (scan_pickle): every memo index within
# the pickle's size (the unpickler sizes its memo by the largest index, so one opcode could ask for
# gigabytes), and no object whose tree - counting shared objects each time they are reached - is
# larger than SCAN_NODES_BASE + SCAN_NODES_PER_BYTE * the pickle's size.  Hashing a tuple (as a
# dict key) or printing an object walks that tree, so a few hundred bytes that share objects
# (t1 = (t0, t0), t2 = (t1, t1), ...) would otherwise run for ever.  Why these numbers: without
# sharing every part costs at least one opcode byte, and torch's own pickles stay well under one
# part per byte (a ViT-B state dict 0.13, the whole nn.Module pickled 0.3), so 4 per byte leaves a
# wide margin; the base lets a small pickle share freely, since walking a million parts takes
# well under a second.
SCAN_NODES_BASE = 1 << 20
SCAN_NODES_PER_BYTE = 4

# opcodes by their effect on the stack (names as pickletools has them)
_PUSH_ONE = {
    "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "STRING", "BINSTRING",
    "SHORT_BINSTRING", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8", "NONE", "NEWTRUE",
    "NEWFALSE", "UNICODE", "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "FLOAT", "BINFLOAT",
    "EMPTY_LIST", "EMPTY_TUPLE", "EMPTY_DICT", "EMPTY_SET", "GLOBAL", "PERSID", "EXT1", "EXT2", "EXT4",
    "NEXT_BUFFER",
}
_NO_EFFECT = {"PROTO", "FRAME", "STOP", "READONLY_BUFFER"}


def scan_pickle(fileobj, what="pickle"):
    """Walk one pickle's opcodes (from the file's position, which is restored) without building
    anything, and refuse it if it would use memory or time out of proportion to its size (see
    SCAN_NODES_BASE).  Raises ConvertError; a truncated or undecodable opcode raises what
    pickletools raises, which safe_unpickle (the only caller) reports like the unpickler's own."""
    start = fileobj.tell()
    fileobj.seek(0, 2)
    size = fileobj.tell() - start
    fileobj.seek(start)
    cap = SCAN_NODES_BASE + SCAN_NODES_PER_BYTE * size
    stack, marks, memo = [], [], {}

    def pop(n=1):
        if len(stack) - (marks[-1] if marks else 0) < n:
            raise ConvertError("%s is corrupt (its opcodes pop an empty stack)" % what)
        items = stack[len(stack) - n:]
        del stack[len(stack) - n:]
        return items

    def top():
        if not stack:
            raise ConvertError("%s is corrupt (its opcodes read an empty stack)" % what)
        return stack[-1]

    def pop_mark():
        if not marks:
            raise ConvertError("%s is corrupt (an opcode needs a mark that is not there)" % what)
        m = marks.pop()
        items = stack[m:]
        del stack[m:]
        return items

    def grow(cell, items):
        cell[0] += sum(c[0] for c in items)
        if cell[0] > cap:
            raise ConvertError("%s builds an object of more than %d parts from %d bytes (objects shared over "
                               "and over: a pickle bomb, not a checkpoint)" % (what, cap, size))

    def new(items=()):
        cell = [1]
        grow(cell, items)
        stack.append(cell)

    try:
        for op, arg, pos in pickletools.genops(fileobj):
            name = op.name
            if name in _PUSH_ONE:
                stack.append([1])
            elif name in _NO_EFFECT:
                pass
            elif name == "MARK":
                marks.append(len(stack))
            elif name == "POP":
                if marks and marks[-1] == len(stack):
                    marks.pop()
                else:
                    pop()
            elif name == "POP_MARK":
                pop_mark()
            elif name == "DUP":
                stack.append(top())
            elif name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
                idx = len(memo) if name == "MEMOIZE" else arg
                if not _is_int(idx) or not 0 <= idx <= size:
                    raise ConvertError("%s is corrupt (memo index %s in a %d-byte pickle)" % (what, _short(idx), size))
                if not stack or (marks and marks[-1] == len(stack)):
                    raise ConvertError("%s is corrupt (it memoizes an empty stack)" % what)
                memo[idx] = stack[-1]
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                if arg not in memo:
                    raise ConvertError("%s is corrupt (memo entry %s is read before it is written)" % (what, _short(arg)))
                stack.append(memo[arg])
            elif name == "APPEND":
                item = pop()
                grow(top(), item)
            elif name in ("APPENDS", "SETITEMS", "ADDITEMS"):
                items = pop_mark()
                grow(top(), items)
            elif name == "SETITEM":
                kv = pop(2)
                grow(top(), kv)
            elif name in ("LIST", "TUPLE", "DICT", "FROZENSET", "INST", "OBJ"):
                new(pop_mark())
            elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                new(pop(int(name[-1])))
            elif name == "BUILD":
                state = pop()
                grow(top(), state)
            elif name in ("REDUCE", "NEWOBJ", "STACK_GLOBAL"):
                new(pop(2))
            elif name == "NEWOBJ_EX":
                new(pop(3))
            elif name == "BINPERSID":
                new(pop())
            else:
                raise ConvertError("%s uses pickle opcode %s, which this converter does not read" % (what, name))
            if name == "STOP":
                break
    finally:
        fileobj.seek(start)


def safe_unpickle(fileobj, persistent_load=None, what="pickle"):
    try:
        scan_pickle(fileobj, what)
        return SafeUnpickler(fileobj, persistent_load).load()
    except ConvertError:
        raise
    except RecursionError:
        raise ConvertError("%s is nested too deeply" % what)
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError,
            AttributeError, struct.error, UnicodeDecodeError, MemoryError, OverflowError, LookupError) as e:
        raise ConvertError("%s is corrupt or truncated (%s: %s)" % (what, type(e).__name__, e))


# =============================================================================================
# 3. checkpoint readers
# =============================================================================================

LEGACY_MAGIC = 0x1950a86a20f9469cfc6c


class Checkpoint(object):
    """What was read from a file: `obj` is the unpickled root object (dicts, lists, Tensors,
    inert stubs), `fmt` the container format, `path` the file."""

    def __init__(self, path, fmt, obj, info=None):
        self.path, self.fmt, self.obj, self.info = path, fmt, obj, info or {}


def _storage_pid(pid, fetch_for_key):
    """Common decoding of ('storage', StorageType, key, location, numel[, view_metadata])."""
    if not isinstance(pid, tuple) or not pid:
        raise ConvertError("malformed persistent id %s" % _short(pid))
    kind = pid[0].decode("latin1") if isinstance(pid[0], bytes) else pid[0]
    if kind == "module" and len(pid) > 1:
        return pid[1]  # legacy torch.save(model): ('module', class, file, source); we keep the class stub
    if kind != "storage" or len(pid) < 5:
        raise ConvertError("unsupported persistent id %s" % _short(pid[:2]))
    stype, key, numel = pid[1], pid[2], pid[4]   # pid[3] is the device location: ignored
    # torch's keys are storage numbers ("0", "1", ...): 256 characters is ample and keeps messages short
    if not isinstance(key, (str, int)) or isinstance(key, bool) or len(str(key)) > 256:
        raise ConvertError("malformed storage key in persistent id: %s" % _short(key))
    key = str(key)
    if not isinstance(stype, _StorageType):
        raise ConvertError("malformed storage type in persistent id: %s" % _short(stype))
    if not _is_int(numel) or numel < 0:
        raise ConvertError("malformed storage size in persistent id: %s" % _short(numel))
    return Storage(stype.dtype, numel, key, fetch_for_key(key, numel * stype.dtype.itemsize))


# A deflated member may inflate to at most ZIP_MAX_RATIO times its compressed size (members that
# inflate to 1 MiB or less are not checked).  torch.save never deflates; a re-zipped checkpoint's
# weights deflate by 1.1x (f32, f16) to 2.3x (bf16-like low bits), while deflate itself reaches
# about 1000x (constant bytes), so without a bound a 1 MB file could ask for 1 GB.  64 sits far
# above real weights; a record over 1 MiB that is nearly all one value (a zero-filled tensor in a
# deflated archive) is refused too - store the archive, as torch does, to convert it.
ZIP_MAX_RATIO = 64


def read_zip_member(zf, name, path, need=None):
    """The bytes of zip member `name`, after checking what its entry declares: not encrypted,
    stored or deflated (torch.save stores; a re-zipped file deflates), at least `need` bytes (a
    storage's size from the pickle), and not inflating to more than ZIP_MAX_RATIO times its
    compressed size.  Every failure is a ConvertError naming the member."""
    return _read_checked_member(zf, zip_member_info(zf, name, path, need), path)


def _read_checked_member(zf, info, path):
    try:
        return zf.read(info)
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, NotImplementedError, RuntimeError) as e:
        raise ConvertError("%s: cannot read record %s: %s (truncated or corrupt file?)" % (path, info.filename, e))


def zip_member_info(zf, name, path, need=None):
    """The ZipInfo of member `name` once its declared sizes and method pass read_zip_member's checks."""
    try:
        info = zf.getinfo(name)
    except KeyError:
        raise ConvertError("%s: record %s is missing (truncated file?)" % (path, name))
    if info.flag_bits & 0x1:
        raise ConvertError("%s: record %s is encrypted; PyTorch never encrypts its checkpoints" % (path, name))
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise ConvertError("%s: record %s uses zip compression method %d; PyTorch stores records uncompressed "
                           "(method 0) and this converter reads those and deflate (8)" % (path, name, info.compress_type))
    if need is not None and info.file_size < need:
        raise ConvertError("%s: record %s has %d bytes but its tensors need %d (truncated or corrupt file?)"
                           % (path, name, info.file_size, need))
    if info.compress_type != zipfile.ZIP_STORED and info.file_size > max(ZIP_MAX_RATIO * info.compress_size, 1 << 20):
        raise ConvertError("%s: record %s inflates from %d to %d bytes, more than %d times its compressed size; "
                           "torch.save writes records uncompressed, so this file was not written by it (a zip "
                           "bomb?)" % (path, name, info.compress_size, info.file_size, ZIP_MAX_RATIO))
    return info


def load_torch_zip(path):
    try:
        zf = zipfile.ZipFile(path)
        names = zf.namelist()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise ConvertError("%s: not a readable zip archive, truncated or corrupt (%s)" % (path, e))
    if not names:
        raise ConvertError("%s: empty zip archive" % path)
    # torch names every record <top>/...; the top folder is taken from the first record, as torch
    # does (it is the file stem, or 'archive' for buffers) - never assume 'archive/'
    top = names[0].split("/")[0] + "/" if "/" in names[0] else ""
    pkl = top + "data.pkl"
    if pkl not in names:
        cands = sorted((n for n in names if n.endswith("/data.pkl") or n == "data.pkl"), key=len)
        if not cands:
            if any(n.endswith(".npy") for n in names):
                raise ConvertError("%s: a numpy .npz archive (e.g. Google big_vision weights), not a PyTorch "
                                   "checkpoint; load it in PyTorch and save a state_dict" % path)
            raise ConvertError("%s: zip archive without data.pkl, not a PyTorch checkpoint" % path)
        pkl = cands[0]
        top = pkl[:-len("data.pkl")]
    torchscript = (top + "constants.pkl") in names or any(n.startswith(top + "code/") for n in names)
    byteorder = top + "byteorder"
    if byteorder in names and read_zip_member(zf, byteorder, path).strip() not in (b"little", b""):
        raise ConvertError("%s: checkpoint was saved on a big-endian machine, not supported" % path)

    def fetch_for_key(key, nbytes):
        info = zip_member_info(zf, top + "data/" + key, path, nbytes)   # checked before anything is read
        return lambda: _read_checked_member(zf, info, path)

    data = read_zip_member(zf, pkl, path)
    obj = safe_unpickle(io.BytesIO(data), lambda pid: _storage_pid(pid, fetch_for_key), "%s:%s" % (path, pkl))
    return Checkpoint(path, "torchscript" if torchscript else "torch-zip", obj, {"zip": zf, "top": top})


def load_torch_legacy(path, buf):
    """Pre-1.6 torch.save: magic, protocol, sys_info, the object, the storage key list, then for
    each key an int64 element count followed by the raw bytes."""
    f = io.BytesIO(buf)
    magic = safe_unpickle(f, None, path)
    if magic != LEGACY_MAGIC:
        # not torch's legacy format: a plain pickle (e.g. a dict of numpy arrays)
        if f.tell() != len(buf):
            raise ConvertError("%s: a pickle followed by %d unexpected bytes, not a PyTorch checkpoint"
                               % (path, len(buf) - f.tell()))
        return Checkpoint(path, "pickle", magic)
    proto = safe_unpickle(f, None, path)
    if proto != 1001:
        raise ConvertError("%s: unsupported legacy protocol version %r" % (path, proto))
    sys_info = safe_unpickle(f, None, path)
    if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
        raise ConvertError("%s: checkpoint was saved on a big-endian machine, not supported" % path)
    storages = OrderedDict()   # root key -> Storage (filled after the object pickle)
    blobs = {}

    def fetch_for_key(key, nbytes):
        def fetch():
            if key not in blobs:
                raise ConvertError("%s: storage %s has no data (truncated file?)" % (path, key))
            return blobs[key]
        return fetch

    def pload(pid):
        if isinstance(pid, tuple) and len(pid) >= 6 and pid[0] == "storage" and pid[5] is not None:
            # very old files: a storage view (view_key, offset, size) into the root storage
            root = _storage_pid(pid[:5], fetch_for_key)
            root = storages.setdefault(root.key, root)
            view = pid[5]
            if not (isinstance(view, tuple) and len(view) == 3 and _is_int(view[1]) and _is_int(view[2])
                    and isinstance(view[0], (str, int)) and 0 <= view[1] and 0 <= view[2]
                    and view[1] + view[2] <= root.numel):
                raise ConvertError("%s: malformed storage view %s in storage %s of %d elements"
                                   % (path, _short(view), root.key, root.numel))
            view_key, off, size = view
            return Storage(root.dtype, size, str(view_key),
                           lambda: root.data[off * root.dtype.itemsize:(off + size) * root.dtype.itemsize])
        st = _storage_pid(pid, fetch_for_key)
        if isinstance(st, Storage):
            st = storages.setdefault(st.key, st)
        return st

    obj = safe_unpickle(f, pload, path)
    keys = safe_unpickle(f, None, path)
    if not isinstance(keys, list):
        raise ConvertError("%s: malformed legacy checkpoint (storage key list missing)" % path)
    pos = f.tell()
    for key in keys:
        key = str(key)
        st = storages.get(key)
        if st is None:
            raise ConvertError("%s: storage %s listed but never referenced" % (path, key))
        if pos + 8 > len(buf):
            raise ConvertError("%s: truncated in the data of storage %s" % (path, key))
        (numel,) = struct.unpack_from("<q", buf, pos)
        pos += 8
        if not st.dtype.itemsize:
            raise ConvertError("%s: storage %s has dtype %s of unknown size" % (path, key, st.dtype.name))
        nbytes = numel * st.dtype.itemsize
        if numel < 0 or pos + nbytes > len(buf):
            raise ConvertError("%s: truncated in the data of storage %s (needs %d bytes)" % (path, key, nbytes))
        blobs[key] = memoryview(buf)[pos:pos + nbytes]
        pos += nbytes
    return Checkpoint(path, "torch-legacy", obj)


def load_safetensors(path, buf):
    if len(buf) < 8:
        raise ConvertError("%s: too small for a safetensors file" % path)
    (n,) = struct.unpack_from("<Q", buf, 0)
    if n > 100 * 1024 * 1024 or 8 + n > len(buf):
        raise ConvertError("%s: safetensors header length %d does not fit the file (truncated?)" % (path, n))
    try:
        header = json.loads(bytes(buf[8:8 + n]).decode("utf-8"), object_pairs_hook=_no_dup_pairs)
    except RecursionError:
        raise ConvertError("%s: bad safetensors header: its JSON is nested too deeply" % path)
    except (ValueError, UnicodeDecodeError) as e:
        raise ConvertError("%s: bad safetensors header: %s" % (path, e))
    if not isinstance(header, dict):
        raise ConvertError("%s: bad safetensors header (not an object)" % path)
    data = memoryview(buf)[8 + n:]
    out = OrderedDict()
    spans = []
    for name, ent in header.items():
        if name == "__metadata__":
            continue
        what = "%s: safetensors entry %s" % (path, _short(name))
        if not isinstance(ent, dict) or not all(k in ent for k in ("dtype", "shape", "data_offsets")):
            raise ConvertError("%s is not an object with dtype, shape and data_offsets" % what)
        dt, shape, offs = ent["dtype"], ent["shape"], ent["data_offsets"]
        if not isinstance(dt, str):
            raise ConvertError("%s: dtype %s is not a string" % (what, _short(dt)))
        if not isinstance(offs, list) or len(offs) != 2 or not all(_is_int(x) for x in offs):
            raise ConvertError("%s: data_offsets %s is not a list of two integers" % (what, _short(offs)))
        shape, _, _ = _checked_layout(shape, None, 0, "safetensors entry %s in %s" % (_short(name), path))
        b, e = offs
        dtype = _dtype(_SAFETENSORS_DTYPES.get(dt, "safetensors " + dt))
        if not (0 <= b <= e <= len(data)):
            raise ConvertError("%s: tensor %s has data_offsets [%d, %d] outside the %d-byte data buffer "
                               "(truncated file?)" % (path, name, b, e, len(data)))
        if dtype.itemsize and e - b != _prod(shape) * dtype.itemsize:
            raise ConvertError("%s: tensor %s has %d bytes, its shape %s needs %d"
                               % (path, name, e - b, shape, _prod(shape) * dtype.itemsize))
        if e > b:
            spans.append((b, e, name))
        blob = data[b:e]
        st = Storage(dtype if dtype.itemsize else _dtype("uint8"), (e - b) // (dtype.itemsize or 1), name,
                     (lambda bl=blob: bl))
        out[name] = Tensor(st, 0, shape, None, dtype)
    spans.sort()
    for (b0, e0, n0), (b1, e1, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise ConvertError("%s: tensors %s [%d, %d) and %s [%d, %d) share bytes of the data buffer; "
                               "safetensors gives every tensor its own range" % (path, _short(n0), b0, e0, _short(n1), b1, e1))
    return Checkpoint(path, "safetensors", out, {"metadata": header.get("__metadata__")})


def _no_dup_pairs(pairs):
    d = OrderedDict()
    for k, v in pairs:
        if k in d:
            raise ValueError("duplicate key %r" % k)
        d[k] = v
    return d


def load_checkpoint(path):
    """Read any supported file into a Checkpoint (nothing in the file is executed)."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as e:
        raise ConvertError("cannot read %s: %s" % (path, e.strerror or e))
    if not head:
        raise ConvertError("%s: empty file" % path)
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return load_torch_zip(path)
    with open(path, "rb") as f:
        buf = f.read()
    if len(head) >= 9 and head[8:9] == b"{" and 8 + struct.unpack_from("<Q", head)[0] <= len(buf):
        return load_safetensors(path, buf)
    if head[:1] == b"\x80" or head[:1] in (b"(", b"}", b"]", b"c"):
        return load_torch_legacy(path, buf)
    if len(head) >= 9 and head[8:9] == b"{":
        return load_safetensors(path, buf)   # header length past the end: reported as truncated
    if len(head) >= 262 and head[257:262] == b"ustar":
        raise ConvertError("%s: a tar archive (torch < 0.4 format), not supported; re-save it with a "
                           "newer torch" % path)
    raise ConvertError("%s: unrecognised file format (not a PyTorch .pth/.pt, pickle or safetensors file)" % path)


# =============================================================================================
# 4. finding the weights
# =============================================================================================

WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module", "net", "network", "model_state",
                "weights", "params")
EMA_KEYS = ("state_dict_ema", "model_ema", "ema_state_dict", "model_ema_state_dict", "ema", "ema_model",
            "module_ema")
STRIP_PREFIXES = ("module.", "_orig_mod.")


def _is_module_stub(obj):
    if isinstance(obj, Opaque):
        a = obj.attrs()
        return "_parameters" in a and "_modules" in a
    return False


def module_state_dict(obj, prefix="", out=None, seen=None):
    """state_dict() of a pickled nn.Module (torch.save(model)), from its inert stub: parameters,
    persistent buffers, then submodules, like torch does."""
    out = OrderedDict() if out is None else out
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return out
    seen.add(id(obj))
    a = obj.attrs()
    nonpersistent = a.get("_non_persistent_buffers_set")
    nonpersistent = nonpersistent if isinstance(nonpersistent, (set, frozenset, list, tuple, dict)) else ()
    group_of = lambda g: a.get(g) if isinstance(a.get(g), dict) else {}  # noqa: E731
    for group in ("_parameters", "_buffers"):
        for k, v in group_of(group).items():
            if isinstance(v, Tensor) and isinstance(k, str) and not (group == "_buffers" and k in nonpersistent):
                out[prefix + k] = v
    for k, m in group_of("_modules").items():
        if _is_module_stub(m) and isinstance(k, str):
            module_state_dict(m, prefix + k + ".", out, seen)
    return out


def _scripted_state_dict(obj, prefix="", out=None, seen=None):
    """Tensors of a TorchScript archive's object tree (attributes of __torch__.* objects)."""
    out = OrderedDict() if out is None else out
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return out
    seen.add(id(obj))
    for k, v in obj.attrs().items():
        if isinstance(v, Tensor):
            out[prefix + k] = v
        elif isinstance(v, Opaque):
            _scripted_state_dict(v, prefix + k + ".", out, seen)
    return out


def _tensor_items(d):
    return [(k, v) for k, v in d.items() if isinstance(v, Tensor)]


def _as_tensor_dict(d):
    """Convert numpy arrays in a dict to Tensors; return a dict of the tensor entries only."""
    out = OrderedDict()
    for k, v in d.items():
        if isinstance(v, _NpArray):
            v = v.to_tensor()
        if isinstance(v, Tensor) and isinstance(k, str):
            out[k] = v
    return out


def _looks_like_state_dict(d):
    td = _as_tensor_dict(d)
    return len(td) > 0 and len(td) * 2 >= len(d)


# A tensor may repeat its storage at most MAX_EXPANSION times over, unless it is at most
# EXPANSION_SLACK bytes; --allow-broadcast lifts the limit.  A weight torch saves is its storage or
# a view into it (at most 1 time over); more needs stride 0 or overlapping strides (a saved
# x.expand(...)), which weights seldom are.  16 still takes small broadcasts while bounding what a
# file can ask for to 16 times its size; 64 KiB lets any small tensor through.
MAX_EXPANSION = 16
EXPANSION_SLACK = 1 << 16


def extract_state_dict(ckpt, use_ema=False, ignore=(), validate=True, allow_broadcast=False):
    """Find the weights inside a checkpoint.  Returns (state_dict, info) where info has
    'path' (the wrapper keys followed), 'ema_available', 'args' (a dict, when the checkpoint
    holds training arguments), 'prefixes' (stripped prefixes), 'ignored' (keys dropped because
    they match a regex of `ignore`)."""
    obj = ckpt.obj
    info = {"path": [], "ema_available": False, "args": None, "prefixes": [], "ignored": []}
    if ckpt.fmt == "torchscript":
        if isinstance(obj, Opaque):
            obj = _scripted_state_dict(obj)
            info["path"].append("<torchscript>")
    ema_done = False
    for _ in range(6):
        if _is_module_stub(obj):
            obj = module_state_dict(obj)
            info["path"].append("<module>")
        if isinstance(obj, Opaque) and obj._lmv_items:   # a dict subclass we do not know
            obj = obj._lmv_items
        if not isinstance(obj, dict):
            raise ConvertError("%s: the checkpoint holds a %s, not a dict of weights"
                               % (ckpt.path, type(obj).__name__ if not isinstance(obj, Opaque) else obj._lmv_qualname))
        if info["args"] is None:
            for k in ("args", "config", "cfg", "hyper_parameters", "hparams"):
                a = obj.get(k)
                if isinstance(a, Opaque) and (a.attrs() or a._lmv_items):
                    info["args"] = dict(a.attrs() or a._lmv_items)
                    break
                if isinstance(a, dict) and a and not _tensor_items(a):
                    info["args"] = dict(a)
                    break
        ema_keys = [k for k in EMA_KEYS if k in obj and obj[k] is not None
                    and (isinstance(obj[k], dict) and len(obj[k]) or _is_module_stub(obj[k]))]
        if ema_keys:
            info["ema_available"] = True
        if use_ema and not ema_done:
            if ema_keys:
                obj = obj[ema_keys[0]]
                info["path"].append(ema_keys[0])
                ema_done = True
                continue
        if _looks_like_state_dict(obj):
            break
        for k in WRAPPER_KEYS:
            v = obj.get(k)
            if isinstance(v, dict) or _is_module_stub(v):
                obj = v
                info["path"].append(k)
                break
        else:
            keys = ", ".join(_short(k) for k in list(obj.keys())[:15])
            raise ConvertError("%s: no weights found; top-level entries are: %s" % (ckpt.path, keys or "(none)"))
    else:
        raise ConvertError("%s: weights are nested too deeply" % ckpt.path)
    if use_ema and not ema_done:
        raise ConvertError("%s: --ema given but the checkpoint has no EMA weights (%s)"
                           % (ckpt.path, "/".join(EMA_KEYS[:2])))
    sd = _as_tensor_dict(obj)
    # DDP 'module.' and torch.compile '_orig_mod.' prefixes, in any combination
    out = OrderedDict()
    for k, v in sd.items():
        k0 = k
        changed = True
        while changed:
            changed = False
            for p in STRIP_PREFIXES:
                if k.startswith(p):
                    k = k[len(p):]
                    changed = True
                    if p not in info["prefixes"]:
                        info["prefixes"].append(p)
        if k in out:
            raise ConvertError("%s: keys %r and another one collide after removing prefixes" % (ckpt.path, k0))
        if any(re.search(p, k) for p in ignore):
            info["ignored"].append(k)
            continue
        if validate:
            v.check(k)   # unsupported dtypes and views past their storage fail here, by name
            if not allow_broadcast and v.numel * v.dtype.itemsize > EXPANSION_SLACK and \
                    v.expansion() > MAX_EXPANSION:
                raise ConvertError("%s: tensor %s (shape %s, strides %s) repeats the %d bytes of its storage %d times "
                                   "over (a broadcast view, e.g. stride 0); it would take %d bytes; pass "
                                   "--allow-broadcast to convert it anyway"
                                   % (ckpt.path, k, list(v.shape), list(v.stride), v.storage.nbytes,
                                      int(v.expansion()), v.numel * v.dtype.itemsize))
        out[k] = v
    return out, info


# =============================================================================================
# 5. the configuration schema (README "Keys every file has" and the family keys)
# =============================================================================================
#
# type codes: s string, i int, i2 two ints, f float, fn float list, sl string list

COMMON_KEYS = OrderedDict([
    ("arch", "s"), ("name", "s"), ("source", "s"), ("in_chans", "i"), ("img_size", "i2"),
    ("num_classes", "i"), ("num_features", "i"), ("pre.resize", "i"), ("pre.crop", "i2"),
    ("pre.crop_pct", "f"), ("pre.interp", "s"), ("pre.mean", "fn"), ("pre.std", "fn"), ("labels", "sl"),
])
VIT_KEYS = OrderedDict([
    ("vit.embed_dim", "i"), ("vit.depth", "i"), ("vit.num_heads", "i"), ("vit.mlp_hidden", "i"),
    ("vit.patch_size", "i2"), ("vit.pos_grid", "i2"), ("vit.norm_eps", "f"), ("vit.act", "s"),
    ("vit.norm_first", "i"), ("vit.class_token", "i"), ("vit.class_last", "i"), ("vit.dist_token", "i"),
    ("vit.reg_tokens", "i"), ("vit.no_embed_class", "i"), ("vit.pool", "s"), ("vit.qkv_bias", "i"),
    ("vit.layer_scale", "i"), ("vit.patch_norm", "i"), ("vit.norm_pre", "i"), ("vit.final_norm", "i"),
    ("vit.fc_norm", "i"), ("vit.pre_logits", "i"), ("vit.attn_scale", "f"), ("vit.pos_interp", "s"),
    ("vit.block", "s"),
])
CHOICES = {
    "pre.interp": ("bilinear", "bicubic", "nearest"),
    "vit.act": ("gelu", "gelu_tanh", "relu", "quickgelu"),
    "vit.block": ("pre", "res_post"),
    "vit.pool": ("token", "avg"),
    "vit.pos_interp": ("bicubic", "bicubic_aa", "bicubic_ac", "bilinear"),
    "arch": ("vit", "swin", "lemevit"),
}
# ViT keys fixed by the tensors: a mapping file or --set may state them (they are then checked)
VIT_STRUCTURAL = {"vit.embed_dim", "vit.depth", "vit.mlp_hidden", "vit.patch_size", "vit.class_token",
                  "vit.dist_token", "vit.reg_tokens", "vit.qkv_bias", "vit.layer_scale", "vit.patch_norm",
                  "vit.norm_pre", "vit.final_norm", "vit.fc_norm", "vit.pre_logits", "in_chans",
                  "num_features", "num_classes"}
# family -> its meta keys (a new family adds its table here and its detector to DETECTORS)
SWIN_KEYS = OrderedDict([
    ("swin.embed_dim", "i"), ("swin.depths", "in"), ("swin.num_heads", "in"), ("swin.mlp_hidden", "in"),
    ("swin.window_size", "i"), ("swin.patch_size", "i"), ("swin.norm_eps", "f"), ("swin.pad_mode", "s"),
    ("swin.shift_rule", "s"),
])
LEMEVIT_KEYS = OrderedDict([
    ("lemevit.depths", "in"), ("lemevit.embed_dims", "in"), ("lemevit.mlp_hidden", "in"),
    ("lemevit.attn_types", "s"), ("lemevit.head_dim", "i"), ("lemevit.num_meta", "i"),
    ("lemevit.norm_eps", "f"), ("lemevit.meta_eps", "f"), ("lemevit.bn_eps", "f"),
    ("lemevit.post_norm", "i"),
])
CHOICES["swin.pad_mode"] = ("pad_then_roll", "roll_then_pad")
CHOICES["swin.shift_rule"] = ("per_axis", "min", "always")
FAMILY_KEYS = {"vit": VIT_KEYS, "swin": SWIN_KEYS, "lemevit": LEMEVIT_KEYS}


def coerce(key, value, schema=None):
    """Check and convert a user/config value for `key` to its meta type."""
    if schema is None:
        schema = OrderedDict(COMMON_KEYS)
        for keys in FAMILY_KEYS.values():
            schema.update(keys)
    if key not in schema:
        raise ConvertError("unknown setting %r (known: %s)" % (key, ", ".join(sorted(schema))))
    t = schema[key]
    try:
        if t == "s":
            if not isinstance(value, str):
                raise ValueError
            v = value
            if key in CHOICES and v not in CHOICES[key]:
                raise ConvertError("%s must be one of %s, not %r" % (key, "/".join(CHOICES[key]), v))
            return v
        if t == "i":
            if isinstance(value, bool):
                return int(value)
            if isinstance(value, float) and value != int(value):
                raise ValueError
            return int(value)
        if t == "i2":
            if isinstance(value, (int, float, str)):
                value = [value]
            vals = [int(v) for v in value]
            if len(vals) == 1:
                vals = vals * 2
            if len(vals) != 2:
                raise ValueError
            return vals
        if t == "in":
            if isinstance(value, (int, float, str)):
                value = [value]
            return [int(v) for v in value]
        if t == "f":
            return float(value)
        if t == "fn":
            if isinstance(value, (int, float, str)):
                value = [value]
            return [float(v) for v in value]
        if t == "sl":
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise ValueError
            return list(value)
    except (TypeError, ValueError):
        raise ConvertError("bad value %r for %s" % (value, key))
    raise ConvertError("bad schema type for %s" % key)


def parse_set_value(key, text):
    """--set KEY=VALUE: VALUE is JSON if it parses (numbers, lists), else a plain string."""
    try:
        value = json.loads(text)
    except ValueError:
        value = text
    if isinstance(value, str) and "," in value:
        value = [v.strip() for v in value.split(",")]
    return coerce(key, value)


class Settings(object):
    """Layered settings: source defaults < checkpoint side files (args, config.json) < mapping
    file < command line.  get() returns the top-most value; rank() says which layer set it."""

    LAYERS = ("default", "sidecar", "mapping", "cli")

    def __init__(self):
        self.layers = OrderedDict((n, OrderedDict()) for n in self.LAYERS)

    def set(self, layer, key, value):
        if value is not None:
            self.layers[layer][key] = value

    def update(self, layer, d):
        for k, v in d.items():
            self.set(layer, k, v)

    def get(self, key, default=None):
        for name in reversed(self.LAYERS):
            if key in self.layers[name]:
                return self.layers[name][key]
        return default

    def rank(self, key):
        for i, name in reversed(list(enumerate(self.LAYERS))):
            if key in self.layers[name]:
                return i
        return -1

    def explicit(self, key):
        """Set by something other than the source defaults."""
        return self.rank(key) > 0


# =============================================================================================
# 6. families
# =============================================================================================
#
# Adding a family: write a function
#
#     def detect_xxx(sd, ctx) -> Model or None
#
# that returns None when the state dict `sd` (name -> Tensor, wrapper prefixes already removed)
# is not its layout, and otherwise a Model with arch, source, the family's config keys (ordered,
# README names), the canonical tensors (ordered) and the set of input keys it used.  Append it
# to DETECTORS.  `ctx` is a Context: options, Settings layers, the checkpoint's side information
# (training args, HF config.json) and helpers.  Raise ConvertError for a layout that is
# recognised but not supported.  Register the family's meta keys (README names and types) in
# FAMILY_KEYS, and a builder from canonical names in MAPPING_BUILDERS so mapping files work for
# it.  Shared post-processing (preprocessing, labels, name, writing) is done by finalize() from
# the common keys the Model provides (in_chans, img_size, num_classes, num_features).


class Model(object):
    def __init__(self, arch, source, config, tensors, used, notes=None, pre_defaults=None, name=None,
                 labels=None):
        self.arch = arch              # 'vit' / 'swin' / 'lemevit'
        self.source = source          # 'timm', 'deit', 'torchvision', 'hf', 'mapping', ...
        self.config = config          # OrderedDict of meta keys (common model keys + family keys)
        self.tensors = tensors        # OrderedDict canonical name -> Tensor
        self.used = used              # set of input state-dict keys that were placed
        self.notes = notes or []      # lines for the summary
        self.pre_defaults = pre_defaults or {}
        self.name = name              # suggested model name
        self.labels = labels          # class names found in the checkpoint's side files, if any


class Context(object):
    def __init__(self, opts, settings, info, path):
        self.opts, self.settings, self.info, self.path = opts, settings, info, path
        self.hf_config = None
        self.hf_preprocessor = None
        self.mapping_state = None     # set by a mapping file: what its rules did, for error hints
        self.notes = []

    def warn(self, msg):
        self.notes.append("warning: " + msg)


IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
HALF = [0.5, 0.5, 0.5]

# per-source preprocessing defaults (formats.md 1.5 / 3.1 and the HF image processors)
PRE_TIMM = {"pre.mean": HALF, "pre.std": HALF, "pre.crop_pct": 0.9, "pre.interp": "bicubic"}
PRE_DEIT = {"pre.mean": IMAGENET_MEAN, "pre.std": IMAGENET_STD, "pre.crop_pct": 0.9, "pre.interp": "bicubic"}
PRE_TORCHVISION = {"pre.mean": IMAGENET_MEAN, "pre.std": IMAGENET_STD, "pre.crop_pct": 224.0 / 256.0,
                   "pre.interp": "bilinear"}
# ViTImageProcessor: resize straight to 224x224 (no crop), bilinear, mean/std 0.5
PRE_HF_VIT = {"pre.mean": HALF, "pre.std": HALF, "pre.resize": 0, "pre.crop_pct": 1.0, "pre.interp": "bilinear"}
# DeiTImageProcessor: resize to 256x256, centre crop 224, bicubic, class defaults mean/std 0.5
PRE_HF_DEIT = {"pre.mean": HALF, "pre.std": HALF, "pre.crop_pct": 224.0 / 256.0, "pre.interp": "bicubic"}


def _isqrt_exact(n):
    if n <= 0:
        return None
    r = int(math.isqrt(n)) if hasattr(math, "isqrt") else int(math.sqrt(n))
    while r * r > n:
        r -= 1
    while (r + 1) * (r + 1) <= n:
        r += 1
    return r if r * r == n else None


def _block_indices(sd, prefix="blocks."):
    pat = re.compile(r"^%s(\d+)\." % re.escape(prefix))
    idx = sorted(set(int(m.group(1)) for m in (pat.match(k) for k in sd) if m))
    return idx


# known ViT widths -> heads (head_dim 64 except the huge/giant widths with 16 heads)
VIT_HEADS_BY_DIM = {192: 3, 384: 6, 512: 8, 640: 10, 768: 12, 1024: 16, 1280: 16, 1408: 16, 1664: 16}


def build_vit(sd, ctx, source, defaults, name_hint=None):
    """Build a ViT Model from a state dict already in timm naming (README tensor names).

    Every hyper-parameter comes from the tensors except those that leave no trace in them: the
    number of heads (from settings, else the usual head_dim-64 convention), LN eps, activation,
    norm placement, class token position and position-embedding interpolation (from the source
    defaults, side files, mapping file or command line)."""
    st = ctx.settings
    st.update("default", defaults)
    used = set()
    T = OrderedDict()

    def take(key, shape=None, required=True):
        t = sd.get(key)
        if t is None:
            if required:
                raise ConvertError("ViT layout: tensor %s is missing" % key)
            return None
        if shape is not None and (len(shape) != t.ndim or any(a is not None and a != b for a, b in zip(shape, t.shape))):
            raise ConvertError("ViT layout: %s has shape %s, expected %s%s"
                               % (key, list(t.shape), _shape_str(shape), mapping_shape_hint(ctx, key, t.shape, shape)))
        t.check(key)
        used.add(key)
        return t

    # ---- patch embedding
    pw = take("patch_embed.proj.weight")
    if pw.ndim == 2:
        # very early timm: a Linear patch embedding; timm's filter reshapes it to (D, C, p, p)
        c = st.get("in_chans", 3)
        p = _isqrt_exact(pw.shape[1] // c) if pw.shape[1] % c == 0 else None
        if st.get("vit.patch_size"):
            p = st.get("vit.patch_size")[0]
        if not p or c * p * p != pw.shape[1]:
            raise ConvertError("patch_embed.proj.weight is 2-D %s and cannot be reshaped to (D, %d, p, p); "
                               "use --set in_chans=N / --set vit.patch_size=P" % (list(pw.shape), c))
        pw = pw.reshape((pw.shape[0], c, p, p))
        ctx.notes.append("2-D patch_embed.proj.weight reshaped to %s" % list(pw.shape))
    if pw.ndim != 4:
        raise ConvertError("patch_embed.proj.weight has shape %s, expected 4-D" % list(pw.shape))
    D, C, ph, pwid = pw.shape
    T["patch_embed.proj.weight"] = pw
    pb = take("patch_embed.proj.bias", (D,), required=False)
    if pb is None:
        pb = zeros_f32((D,))  # pre_norm (CLIP-style) models have no patch bias: an explicit zero one
        ctx.notes.append("patch_embed.proj.bias absent: written as zeros")
    T["patch_embed.proj.bias"] = pb
    patch_norm = "patch_embed.norm.weight" in sd

    def bias(key, n):
        """An optional bias: the checkpoint's, or explicit zeros (the C side needs no special case)."""
        t = take(key, (n,), required=False)
        return t if t is not None else zeros_f32((n,))

    def norm(src, dst):
        T[dst + ".weight"] = take(src + ".weight", (D,))
        T[dst + ".bias"] = bias(src + ".bias", D)

    if patch_norm:
        norm("patch_embed.norm", "patch_embed.norm")

    # ---- tokens and position embedding
    cls = take("cls_token", (1, 1, D), required=False)
    dist = take("dist_token", (1, 1, D), required=False)
    reg = take("reg_token", (1, None, D), required=False)
    R = reg.shape[1] if reg is not None else 0
    for key, t in (("cls_token", cls), ("dist_token", dist), ("reg_token", reg)):
        if t is not None:
            T[key] = t
    if dist is not None and cls is None:
        raise ConvertError("dist_token without cls_token is not a DeiT layout")
    prefix = (cls is not None) + (dist is not None) + R
    pos = take("pos_embed", (1, None, D), required=False)
    if pos is None:
        raise ConvertError("ViT without an absolute pos_embed (e.g. RoPE models) is not supported")
    P = pos.shape[1]
    img_set = st.get("img_size")
    grid = None
    no_embed_class = st.get("vit.no_embed_class")
    if st.get("vit.pos_grid"):
        grid = tuple(st.get("vit.pos_grid"))
    elif img_set and st.rank("img_size") > 0 and img_set[0] % ph == 0 and img_set[1] % pwid == 0 \
            and (img_set[0] // ph) * (img_set[1] // pwid) in (P, P - prefix):
        grid = (img_set[0] // ph, img_set[1] // pwid)
    if grid is not None:
        n = grid[0] * grid[1]
        if no_embed_class is None:
            no_embed_class = 0 if P - prefix == n else 1
        if P != n + (0 if no_embed_class else prefix):
            raise ConvertError("pos_embed has %d rows; grid %dx%d with %d prefix tokens needs %d"
                               % (P, grid[0], grid[1], prefix, n + (0 if no_embed_class else prefix)))
    else:
        # square grid: the pos_embed covers the prefix tokens unless only the patch count is square
        cands = []
        if no_embed_class in (None, 0) and _isqrt_exact(P - prefix):
            cands.append((0, _isqrt_exact(P - prefix)))
        if no_embed_class in (None, 1) and prefix and _isqrt_exact(P):
            cands.append((1, _isqrt_exact(P)))
        if not cands:
            raise ConvertError("pos_embed has %d rows and %d prefix token(s): not a square grid; give "
                               "--img-size H W (or --set vit.pos_grid=GH,GW)" % (P, prefix))
        no_embed_class, g = cands[0]
        grid = (g, g)
    no_embed_class = int(bool(no_embed_class)) if prefix else 0
    T["pos_embed"] = pos

    norm_pre = "norm_pre.weight" in sd
    if norm_pre:
        norm("norm_pre", "norm_pre")

    # ---- blocks
    idx = _block_indices(sd)
    if not idx:
        raise ConvertError("ViT layout: no blocks.N.* tensors")
    if idx != list(range(len(idx))):
        raise ConvertError("ViT blocks are not numbered 0..N-1: %s" % idx)
    depth = len(idx)
    if "blocks.0.mlp.fc1.weight" not in sd:
        raise ConvertError("ViT layout: blocks.0.mlp.fc1.weight is missing")
    H = take("blocks.0.mlp.fc1.weight", (None, D)).shape[0]   # checked first: its rows give the width
    qkv_bias = "blocks.0.attn.qkv.bias" in sd
    layer_scale = "blocks.0.ls1.gamma" in sd
    for i in idx:
        b = "blocks.%d." % i
        for k in (b + "attn.q_norm.weight", b + "attn.k_norm.weight"):
            if k in sd:
                raise ConvertError("qk-norm ViTs (%s) are not supported by lemevit.h" % k)
        if (b + "attn.qkv.bias" in sd) != qkv_bias or (b + "ls1.gamma" in sd) != layer_scale:
            raise ConvertError("blocks differ in qkv bias / layer scale (block %d)" % i)
        norm(b + "norm1", b + "norm1")
        T[b + "attn.qkv.weight"] = take(b + "attn.qkv.weight", (3 * D, D))
        if qkv_bias:
            T[b + "attn.qkv.bias"] = take(b + "attn.qkv.bias", (3 * D,))
        T[b + "attn.proj.weight"] = take(b + "attn.proj.weight", (D, D))
        T[b + "attn.proj.bias"] = bias(b + "attn.proj.bias", D)
        if layer_scale:
            T[b + "ls1.gamma"] = take(b + "ls1.gamma", (D,))
        norm(b + "norm2", b + "norm2")
        T[b + "mlp.fc1.weight"] = take(b + "mlp.fc1.weight", (H, D))
        T[b + "mlp.fc1.bias"] = bias(b + "mlp.fc1.bias", H)
        T[b + "mlp.fc2.weight"] = take(b + "mlp.fc2.weight", (D, H))
        T[b + "mlp.fc2.bias"] = bias(b + "mlp.fc2.bias", D)
        if layer_scale:
            T[b + "ls2.gamma"] = take(b + "ls2.gamma", (D,))

    # ---- final norm, pooling, pre-logits, heads
    for k in ("attn_pool.latent", "attn_pool.q.weight"):
        if k in sd:
            raise ConvertError("attention-pool ('map') ViTs are not supported by lemevit.h")
    final_norm = "norm.weight" in sd
    fc_norm = "fc_norm.weight" in sd
    if final_norm:
        norm("norm", "norm")
    if fc_norm:
        norm("fc_norm", "fc_norm")
    pool = st.get("vit.pool")
    if pool is None:
        pool = "avg" if (fc_norm or cls is None) else "token"
    if pool == "token" and cls is None:
        raise ConvertError("vit.pool=token but the model has no class token")
    F = D
    pre_logits = 0
    if "pre_logits.fc.weight" in sd:
        wpl = take("pre_logits.fc.weight", (None, D))
        pre_logits = F = wpl.shape[0]
        T["pre_logits.fc.weight"] = wpl
        T["pre_logits.fc.bias"] = bias("pre_logits.fc.bias", F)

    want = getattr(ctx.opts, "num_classes", None)
    head_w = sd.get("head.weight")
    if head_w is not None and want != 0:
        take("head.weight", (None, F))   # checked first: its rows give the class count
    K = head_w.shape[0] if head_w is not None else 0
    if head_w is not None and want == 0:
        used.update(k for k in ("head.weight", "head.bias", "head_dist.weight", "head_dist.bias") if k in sd)
        ctx.notes.append("classifier head (%d classes) dropped by --num-classes 0" % K)
        K = 0
    elif head_w is not None:
        if want is not None and want != K:
            raise ConvertError("--num-classes %d but the checkpoint's head has %d classes (use --num-classes 0 "
                               "to drop the head)" % (want, K))
        T["head.weight"] = take("head.weight", (K, F))
        T["head.bias"] = bias("head.bias", K)
        if dist is not None and "head_dist.weight" in sd:
            T["head_dist.weight"] = take("head_dist.weight", (K, F))
            T["head_dist.bias"] = bias("head_dist.bias", K)
        elif dist is not None:
            # a distillation token but one head on the class token (HF DeiTForImageClassification).
            # The .lmv graph averages head(cls) and head_dist(dist): a doubled head and a zero
            # head_dist give exactly head(cls) (scaling by 2 and 0.5 is exact in floating point).
            T["head.weight"] = scale_f32(T["head.weight"], 2.0)
            T["head.bias"] = scale_f32(T["head.bias"], 2.0)
            T["head_dist.weight"] = zeros_f32((K, F))
            T["head_dist.bias"] = zeros_f32((K,))
            ctx.notes.append("distillation token without a distillation head: head doubled, zero head_dist "
                             "(logits = head(cls token))")
    elif want:
        raise ConvertError("--num-classes %d but the checkpoint has no classifier head" % want)
    if "head_dist.weight" in sd and "head_dist.weight" not in used:
        raise ConvertError("head_dist without dist_token")

    # ---- heads count, eps, activation, ...
    heads = st.get("vit.num_heads")
    if heads is None:
        heads = VIT_HEADS_BY_DIM.get(D) or (D // 64 if D % 64 == 0 else None)
        if heads is None:
            raise ConvertError("cannot guess the number of attention heads for width %d; pass --num-heads N" % D)
        if D not in VIT_HEADS_BY_DIM:
            ctx.warn("number of heads not stored in the checkpoint; guessed %d (head_dim 64) - pass "
                     "--num-heads if wrong" % heads)
    if heads <= 0 or D % heads:
        raise ConvertError("embed dim %d is not divisible by %d heads" % (D, heads))

    img = tuple(img_set) if img_set else (grid[0] * ph, grid[1] * pwid)
    cfg = OrderedDict()
    cfg["in_chans"] = C
    cfg["img_size"] = list(img)
    cfg["num_classes"] = K
    cfg["num_features"] = F
    cfg["vit.embed_dim"] = D
    cfg["vit.depth"] = depth
    cfg["vit.num_heads"] = heads
    cfg["vit.mlp_hidden"] = H
    cfg["vit.patch_size"] = [ph, pwid]
    cfg["vit.pos_grid"] = list(grid)
    cfg["vit.norm_eps"] = st.get("vit.norm_eps", 1e-6)
    cfg["vit.act"] = st.get("vit.act", "gelu")
    cfg["vit.norm_first"] = st.get("vit.norm_first", 1)
    cfg["vit.class_token"] = int(cls is not None)
    cfg["vit.class_last"] = st.get("vit.class_last", 0) if cls is not None else 0
    cfg["vit.dist_token"] = int(dist is not None)
    cfg["vit.reg_tokens"] = R
    cfg["vit.no_embed_class"] = no_embed_class
    cfg["vit.pool"] = pool
    cfg["vit.qkv_bias"] = int(qkv_bias)
    cfg["vit.layer_scale"] = int(layer_scale)
    cfg["vit.patch_norm"] = int(patch_norm)
    cfg["vit.norm_pre"] = int(norm_pre)
    cfg["vit.final_norm"] = int(final_norm)
    cfg["vit.fc_norm"] = int(fc_norm)
    cfg["vit.pre_logits"] = pre_logits
    cfg["vit.attn_scale"] = st.get("vit.attn_scale", 0.0)
    cfg["vit.pos_interp"] = st.get("vit.pos_interp", "bicubic")
    if cfg["vit.class_last"] and (dist is not None or R or no_embed_class):
        raise ConvertError("vit.class_last=1 is only supported with a single class token covered by pos_embed")
    if cfg["vit.norm_first"] == 0 and (norm_pre or layer_scale):
        raise ConvertError("post-norm blocks (vit.norm_first=0) with norm_pre / layer scale are not supported")
    # structural settings stated by a mapping file / --set must agree with the tensors
    for k in sorted(VIT_STRUCTURAL):
        if st.explicit(k) and k in cfg and k not in ("num_classes",):
            v = st.get(k)
            if v != cfg[k]:
                raise ConvertError("%s is %r according to the tensors, but %r was given" % (k, cfg[k], v))
    for k in cfg:
        cfg[k] = coerce(k, cfg[k])
    return Model("vit", source, cfg, T, used, name=name_hint or vit_name(cfg, source))


def vit_name(cfg, source):
    D, depth, p = cfg["vit.embed_dim"], cfg["vit.depth"], cfg["vit.patch_size"][0]
    img = cfg["img_size"][0]
    if source == "torchvision":
        size = {(768, 12): "b", (1024, 24): "l", (1280, 32): "h"}.get((D, depth))
        if size:
            return "vit_%s_%d" % (size, p)
    size = {(192, 12): "tiny", (384, 12): "small", (768, 12): "base", (1024, 24): "large",
            (1280, 32): "huge", (512, 12): "medium"}.get((D, depth), "d%d_l%d" % (D, depth))
    if source == "deit":
        return "deit%s_%s%s_patch%d_%d" % ("3" if cfg["vit.layer_scale"] else "", size,
                                           "_distilled" if cfg["vit.dist_token"] else "", p, img)
    return "vit_%s_patch%d_%d" % (size, p, img)


def _rename(sd, rules):
    """Apply (regex, replacement) rules with re.sub, in order, to every key.  Returns the renamed
    dict and a map new name -> original name (to report unplaced keys by their real names)."""
    out, back = OrderedDict(), {}
    for k, v in sd.items():
        nk = k
        for pat, rep in rules:
            nk = re.sub(pat, rep, nk)
        if nk in out:
            raise ConvertError("two tensors map to %s (%s and %s)" % (nk, back[nk], k))
        out[nk] = v
        back[nk] = k
    return out, back


# ---------------------------------------------------------------------------------- timm / DeiT

def detect_timm_vit(sd, ctx):
    has_blocks = any(re.match(r"^blocks\.\d+\.attn\.qkv\.weight$", k) for k in sd)
    if "patch_embed.proj.weight" not in sd or not has_blocks or "pos_embed" not in sd:
        return None
    deit3 = any(re.match(r"^blocks\.\d+\.gamma_[12]$", k) for k in sd)
    # DeiT-III stores layer scale as gamma_1/gamma_2 (timm's checkpoint filter renames them too)
    sd, back = _rename(sd, [(r"^(blocks\.\d+)\.gamma_([12])$", r"\1.ls\2.gamma")])
    args = ctx.info.get("args") or {}
    arch_name = args.get("model") if isinstance(args.get("model"), str) else None
    wrapper = ctx.info.get("path") or []
    official_deit = wrapper[:1] == ["model"] or wrapper[:1] == ["model_ema"]
    is_deit = "dist_token" in sd or deit3 or (arch_name or "").startswith("deit") or \
        (official_deit and not (arch_name or "").startswith("vit"))
    source = "deit" if is_deit else "timm"
    defaults = dict(PRE_DEIT if is_deit else PRE_TIMM)
    defaults.update({"vit.norm_eps": 1e-6, "vit.act": "gelu", "vit.pos_interp": "bicubic_aa"})
    # timm training arguments may carry the data config used
    side = {}
    if isinstance(args.get("mean"), (list, tuple)) and args.get("mean"):
        side["pre.mean"] = _side_value("the checkpoint's training args", "mean", "pre.mean", list(args["mean"]))
    if isinstance(args.get("std"), (list, tuple)) and args.get("std"):
        side["pre.std"] = _side_value("the checkpoint's training args", "std", "pre.std", list(args["std"]))
    if isinstance(args.get("crop_pct"), float):
        side["pre.crop_pct"] = args["crop_pct"]
    if args.get("interpolation") in ("bilinear", "bicubic", "nearest"):
        side["pre.interp"] = args["interpolation"]
    ctx.settings.update("sidecar", side)
    fc1 = sd.get("blocks.0.mlp.fc1.weight")
    if source == "timm" and "blocks.7.norm1.weight" in sd and "blocks.8.norm1.weight" not in sd and \
            fc1 is not None and tuple(fc1.shape) == (2304, 768) and "blocks.0.attn.qkv.bias" not in sd:
        # timm's first vit_small_patch16_224 (2020): 768 wide, 8 deep, 8 heads, mlp ratio 3, no qkv
        # bias, qk_scale 768**-0.5 for its weights, torch's default LayerNorm eps 1e-5
        defaults.update({"vit.num_heads": 8, "vit.attn_scale": 768 ** -0.5, "vit.norm_eps": 1e-5})
        ctx.notes.append("looks like timm's original vit_small_patch16_224: 8 heads, attn scale 768^-0.5, eps 1e-5")
    m = build_vit(sd, ctx, source, defaults, name_hint=arch_name)
    m.used = set(back[k] for k in m.used)
    if deit3:
        m.notes.append("DeiT-III gamma_1/gamma_2 renamed to ls1.gamma/ls2.gamma")
    return m


# ---------------------------------------------------------------------------------- torchvision

TORCHVISION_RULES = [
    (r"^class_token$", "cls_token"),
    (r"^conv_proj\.", "patch_embed.proj."),
    (r"^encoder\.pos_embedding$", "pos_embed"),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.", r"blocks.\1."),
    (r"^(blocks\.\d+)\.ln_1\.", r"\1.norm1."),
    (r"^(blocks\.\d+)\.ln_2\.", r"\1.norm2."),
    (r"^(blocks\.\d+)\.self_attention\.in_proj_weight$", r"\1.attn.qkv.weight"),
    (r"^(blocks\.\d+)\.self_attention\.in_proj_bias$", r"\1.attn.qkv.bias"),
    (r"^(blocks\.\d+)\.self_attention\.out_proj\.", r"\1.attn.proj."),
    (r"^(blocks\.\d+)\.mlp\.(0|linear_1)\.", r"\1.mlp.fc1."),
    (r"^(blocks\.\d+)\.mlp\.(3|linear_2)\.", r"\1.mlp.fc2."),
    (r"^encoder\.ln\.", "norm."),
    (r"^heads\.head\.", "head."),
    (r"^heads\.pre_logits\.", "pre_logits.fc."),
]


def detect_torchvision_vit(sd, ctx):
    if "conv_proj.weight" not in sd or \
            "encoder.layers.encoder_layer_0.self_attention.in_proj_weight" not in sd:
        return None
    renamed, back = _rename(sd, TORCHVISION_RULES)
    defaults = dict(PRE_TORCHVISION)
    defaults.update({"vit.norm_eps": 1e-6, "vit.act": "gelu", "vit.pos_interp": "bicubic_ac"})
    m = build_vit(renamed, ctx, "torchvision", defaults)
    m.used = set(back[k] for k in m.used)
    return m


# ---------------------------------------------------------------------------------- Hugging Face

HF_RULES = [
    (r"^embeddings\.cls_token$", "cls_token"),
    (r"^embeddings\.distillation_token$", "dist_token"),
    (r"^embeddings\.position_embeddings$", "pos_embed"),
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^encoder\.layer\.(\d+)\.", r"blocks.\1."),
    (r"^(blocks\.\d+)\.layernorm_before\.", r"\1.norm1."),
    (r"^(blocks\.\d+)\.layernorm_after\.", r"\1.norm2."),
    (r"^(blocks\.\d+)\.attention\.output\.dense\.", r"\1.attn.proj."),
    (r"^(blocks\.\d+)\.intermediate\.dense\.", r"\1.mlp.fc1."),
    (r"^(blocks\.\d+)\.output\.dense\.", r"\1.mlp.fc2."),
    (r"^layernorm\.", "norm."),
    (r"^classifier\.", "head."),
    (r"^cls_classifier\.", "head."),
    (r"^distillation_classifier\.", "head_dist."),
]
HF_ACT = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh",
          "relu": "relu"}
HF_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}


def _read_json_beside(path, name):
    p = os.path.join(os.path.dirname(os.path.abspath(path)), name)
    if not os.path.isfile(p):
        return None, p
    try:
        with open(p, "r", encoding="utf-8") as f:
            return json.load(f), p
    except (OSError, ValueError) as e:
        raise ConvertError("%s: %s" % (p, e))
    except RecursionError:
        raise ConvertError("%s: its JSON is nested too deeply" % p)


def _side_value(src, field, key, value):
    """A value from a side file (config.json, preprocessor_config.json, training args) as meta
    `key`: coerced to its type and checked against the library's range; a ConvertError names the
    file and the field otherwise."""
    try:
        v = coerce(key, value)
    except ConvertError:
        raise ConvertError("%s: %s is %s, which is not a valid %s" % (src, field, _short(value), key))
    msg = lmvfile.check_meta_value(key, v)
    if msg:
        raise ConvertError("%s: %s gives %s" % (src, field, msg))
    return v


def detect_hf_vit(sd, ctx):
    model_prefix = None
    for p in ("vit.", "deit.", ""):
        if p + "embeddings.patch_embeddings.projection.weight" in sd:
            model_prefix = p
            break
    if model_prefix is None or model_prefix + "encoder.layer.0.attention.attention.query.weight" not in sd:
        return None
    used_extra = set()
    body = OrderedDict()
    for k, v in sd.items():
        if model_prefix and k.startswith(model_prefix):
            body[k[len(model_prefix):]] = (k, v)
        else:
            body[k] = (k, v)
    # q, k, v -> qkv (rows q, k, v as timm and nn.MultiheadAttention)
    merged = OrderedDict()
    origin = {}
    for k, (orig, v) in body.items():
        m = re.match(r"^encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)$", k)
        if m:
            if m.group(2) != "query":
                continue
            parts, origs = [], []
            for which in ("query", "key", "value"):
                kk = "encoder.layer.%s.attention.attention.%s.%s" % (m.group(1), which, m.group(3))
                if kk not in body:
                    raise ConvertError("Hugging Face ViT: %s is missing" % (model_prefix + kk))
                parts.append(body[kk][1])
                origs.append(body[kk][0])
            nk = "blocks.%s.attn.qkv.%s" % (m.group(1), m.group(3))
            merged[nk] = concat0(parts, nk)
            origin[nk] = origs
            continue
        if k.startswith("pooler.dense.") or k == "embeddings.mask_token":
            used_extra.add(orig)   # ViTModel pooler / masked-image-modeling token: not used for classification
            ctx.notes.append("ignored %s (not used by image classification)" % orig)
            continue
        nk = k
        for pat, rep in HF_RULES:
            nk = re.sub(pat, rep, nk)
        if nk in merged:
            raise ConvertError("two tensors map to %s" % nk)
        merged[nk] = v
        origin[nk] = [orig]

    is_deit = "dist_token" in merged or model_prefix == "deit."
    cfg, cfg_path = _read_json_beside(ctx.path, "config.json")
    pre, pre_path = _read_json_beside(ctx.path, "preprocessor_config.json")
    defaults = dict(PRE_HF_DEIT if is_deit else PRE_HF_VIT)
    defaults.update({"vit.norm_eps": 1e-12, "vit.act": "gelu", "vit.pos_interp": "bicubic"})
    side = {}
    labels = None
    if isinstance(cfg, dict):
        ctx.notes.append("read %s" % cfg_path)
        if "layer_norm_eps" in cfg:
            side["vit.norm_eps"] = _side_value(cfg_path, "layer_norm_eps", "vit.norm_eps", cfg["layer_norm_eps"])
        if "num_attention_heads" in cfg:
            side["vit.num_heads"] = _side_value(cfg_path, "num_attention_heads", "vit.num_heads",
                                                cfg["num_attention_heads"])
        act = cfg.get("hidden_act")
        if act is not None:
            if not isinstance(act, str) or act not in HF_ACT:
                raise ConvertError("%s: hidden_act %s is not supported (known: %s)"
                                   % (cfg_path, _short(act), ", ".join(sorted(HF_ACT))))
            side["vit.act"] = HF_ACT[act]
        if cfg.get("image_size") is not None:
            side["img_size"] = _side_value(cfg_path, "image_size", "img_size", cfg["image_size"])
        id2label = cfg.get("id2label")
        if isinstance(id2label, dict) and id2label:
            try:
                items = sorted((int(k), str(v)) for k, v in id2label.items())
                names = [v for _, v in items]
                if [k for k, _ in items] == list(range(len(items))) and \
                        not all(re.match(r"^LABEL_\d+$", n) for n in names):
                    labels = names
            except ValueError:
                pass
    if isinstance(pre, dict):
        ctx.notes.append("read %s" % pre_path)
        if isinstance(pre.get("image_mean"), list):
            side["pre.mean"] = _side_value(pre_path, "image_mean", "pre.mean", pre["image_mean"])
        if isinstance(pre.get("image_std"), list):
            side["pre.std"] = _side_value(pre_path, "image_std", "pre.std", pre["image_std"])
        if _is_int(pre.get("resample")) and pre.get("resample") in HF_RESAMPLE:
            side["pre.interp"] = HF_RESAMPLE[pre["resample"]]
        size = pre.get("size")
        crop = pre.get("crop_size")
        if pre.get("do_center_crop") and isinstance(crop, dict) and "height" in crop:
            side["img_size"] = _side_value(pre_path, "crop_size", "img_size", [crop.get("height"), crop.get("width")])
            if isinstance(size, dict) and "shortest_edge" in size:
                side["pre.resize"] = _side_value(pre_path, "size.shortest_edge", "pre.resize", size["shortest_edge"])
            elif isinstance(size, dict) and "height" in size:
                hw = _side_value(pre_path, "size", "pre.crop", [size.get("height"), size.get("width")])
                side["pre.resize"] = min(hw)
        elif isinstance(size, dict) and "height" in size and pre.get("do_resize", True):
            side["pre.resize"] = 0
            side["pre.crop_pct"] = 1.0
    ctx.settings.update("sidecar", side)
    m = build_vit(merged, ctx, "hf", defaults)
    used = set(used_extra)
    for k in m.used:
        used.update(origin.get(k, [k]))
    m.used = used
    m.labels = labels
    return m


# ---------------------------------------------------------------------------------- mapping files

MAPPING_HELP = """\
mapping files (--mapping FILE.json) convert checkpoints of your own module names:

  {
    "arch": "vit",                         family (only vit today)
    "source": "my_vit",                    written to the 'source' key (default "mapping")
    "name": "my_vit_small",                optional model name
    "strip_prefix": ["backbone."],         prefixes removed from every key first
    "ignore": ["^loss\\\\.", "num_batches_tracked$"],   regexes (re.search) of keys to drop
    "concat": [                            join tensors along dim 0, e.g. q/k/v -> qkv
      {"inputs": ["^blocks\\\\.(\\\\d+)\\\\.q\\\\.weight$", "blocks.\\\\1.k.weight", "blocks.\\\\1.v.weight"],
       "output": "blocks.\\\\1.attn.qkv.weight"}
    ],                                     the first input is a regex matched against whole keys; the
                                           other inputs and the output are expanded with its groups
                                           ("axis": 1 joins along another axis)
    "rename": [                            [regex, replacement] pairs applied with re.sub, in order,
      ["^blocks\\\\.(\\\\d+)\\\\.norms\\\\.0\\\\.", "blocks.\\\\1.norm1."]   to every key left after concat
    ],
    "transform": [                         reshape tensors, by their names after rename (fullmatch):
      {"key": "pos_embed", "unsqueeze": 0},                    [66, 64] -> [1, 66, 64]
      {"key": "blocks\\\\.\\\\d+\\\\.mlp\\\\.fc1\\\\.weight", "transpose": [1, 0]},   a Linear stored [in, out]
      {"key": "cls_token", "reshape": [1, 1, -1]}
    ],                                     operations, applied in the order written:
                                           "reshape": [dims] (one may be -1), "unsqueeze": axis,
                                           "squeeze": axis, "transpose": [permutation of all axes],
                                           "split": {"parts": N or "sizes": [..], "order": [..],
                                           "axis": 0} (cut into pieces, put back in that order)
    "config": {                            any .lmv setting, e.g.
      "vit.num_heads": 4, "vit.norm_first": 0, "vit.act": "relu", "vit.class_last": 1,
      "vit.norm_eps": 1e-5, "vit.pool": "token", "vit.pos_interp": "bicubic",
      "vit.attn_scale": 0.0, "img_size": [224, 224],
      "pre.mean": [0.5, 0.5, 0.5], "pre.std": [0.5, 0.5, 0.5], "pre.crop_pct": 0.875,
      "pre.interp": "bilinear"
    }
  }

  Order: strip_prefix, ignore, concat, rename, transform; the result must use the README's canonical
  tensor names (timm names: patch_embed.proj.weight, cls_token, pos_embed, blocks.N.norm1.weight,
  blocks.N.attn.qkv.weight, ..., norm.weight, head.weight) and shapes; a shape that differs only by
  a transform gets the transform suggested.  A square Linear stored [in, out] fits by shape: its
  "transpose" must be written without a hint.  Structural keys (vit.patch_norm, vit.qkv_bias, ...)
  may be stated in "config"; they are checked against the tensors.  Command-line options override
  "config".  Keys starting with "_" are comments.  Use --list-keys to see the checkpoint's names;
  the files in tools/mappings/ are worked examples."""


# transform rules: {"key": regex, op: argument, ...}; ops run in the order written
TRANSFORM_OPS = ("reshape", "unsqueeze", "squeeze", "transpose", "split")


def _shape_str(shape):
    """[1, *, 64]: a shape with None for 'any size'."""
    return "[%s]" % ", ".join("*" if d is None else str(d) for d in shape)


def _op_str(op, arg):
    return "%s: %s" % (json.dumps(op), json.dumps(arg))


def _check_transform_rule(rule, where):
    """Syntax of one transform rule (what can be told without the tensors)."""
    if not (isinstance(rule, dict) and isinstance(rule.get("key"), str)):
        raise ConvertError("%s: each transform rule is {\"key\": regex, operation: argument, ...}" % where)
    ops = [k for k in rule if k != "key" and not k.startswith("_")]
    if not ops:
        raise ConvertError("%s: transform rule for %r has no operation (known: %s)"
                           % (where, rule["key"], ", ".join(TRANSFORM_OPS)))
    for op in ops:
        arg = rule[op]
        bad = None
        if op not in TRANSFORM_OPS:
            raise ConvertError("%s: transform rule for %r: unknown operation %r (known: %s)"
                               % (where, rule["key"], op, ", ".join(TRANSFORM_OPS)))
        if op == "reshape":
            if not (isinstance(arg, list) and all(_is_int(d) and d >= -1 for d in arg) and arg.count(-1) <= 1):
                bad = "a list of sizes, at most one of them -1"
        elif op in ("unsqueeze", "squeeze"):
            if not _is_int(arg):
                bad = "an axis (an integer)"
        elif op == "transpose":
            if not (isinstance(arg, list) and arg and all(_is_int(d) for d in arg)):
                bad = "the new order of all axes, e.g. [1, 0]"
        elif op == "split":
            ok = isinstance(arg, dict) and set(arg) <= {"parts", "sizes", "order", "axis"} \
                and (("parts" in arg) != ("sizes" in arg)) and isinstance(arg.get("order"), list) \
                and all(_is_int(i) for i in arg["order"]) and _is_int(arg.get("axis", 0))
            if ok and "parts" in arg:
                ok = _is_int(arg["parts"]) and arg["parts"] >= 1
            if ok and "sizes" in arg:
                ok = isinstance(arg["sizes"], list) and arg["sizes"] and all(_is_int(n) and n >= 1 for n in arg["sizes"])
            if not ok:
                bad = "{\"parts\": N or \"sizes\": [n, ...], \"order\": [i, ...], \"axis\": A (default 0)}"
        if bad:
            raise ConvertError("%s: transform rule for %r: %s must be %s" % (where, rule["key"], json.dumps(op), bad))


def _axis(a, n, what):
    """Normalise a possibly negative axis among n positions (torch's convention: -n..n-1)."""
    if not -n <= a < n:
        raise ConvertError("%s: axis %d is out of range (%d..%d)" % (what, a, -n, n - 1))
    return a + n if a < 0 else a


def _permute(t, perm):
    """A view with axes in the order `perm` (nothing copied)."""
    return Tensor(t.storage, t.offset, [t.shape[p] for p in perm], [t.stride[p] for p in perm], t.dtype, t.error)


def _move_axis_first(t, axis):
    perm = [axis] + [d for d in range(t.ndim) if d != axis]
    return _permute(t, perm), perm


def _join(tensors, axis, name):
    """Concatenate along `axis` (shapes must agree elsewhere); keeps a dtype they share, else float32."""
    ref = tensors[0].shape
    for t in tensors:
        if t.ndim != len(ref) or any(a != b for i, (a, b) in enumerate(zip(t.shape, ref)) if i != axis):
            raise ConvertError("%s: cannot concatenate shapes %s along axis %d"
                               % (name, ", ".join(_shape_str(x.shape) for x in tensors), axis))
    same = all(t.dtype.name == tensors[0].dtype.name for t in tensors)
    dtype = tensors[0].dtype.name if same else "float32"
    parts = []
    for t in tensors:
        first, _ = _move_axis_first(t, axis)
        parts.append(first.raw(name) if same else first.f32(name))
    moved = (sum(t.shape[axis] for t in tensors),) + tuple(d for i, d in enumerate(ref) if i != axis)
    joined = Tensor.from_bytes(dtype, moved, b"".join(parts))
    inverse = [0] * len(ref)
    for i, p in enumerate([axis] + [d for d in range(len(ref)) if d != axis]):
        inverse[p] = i
    return _permute(joined, inverse)


def transform_tensor(t, op, arg, name):
    """Apply one mapping-file operation to a Tensor; refuses what does not fit the tensor."""
    what = "mapping transform of %s %s: %s" % (name, _shape_str(t.shape), _op_str(op, arg))
    n = t.ndim
    if op == "reshape":
        known = _prod(d for d in arg if d != -1)
        if -1 in arg:
            if known == 0 or t.numel % known:
                raise ConvertError("%s: %d elements do not fill the other sizes (%d each)" % (what, t.numel, known))
            shape = [t.numel // known if d == -1 else d for d in arg]
        else:
            shape = list(arg)
        if _prod(shape) != t.numel:
            raise ConvertError("%s: that shape holds %d elements, the tensor has %d" % (what, _prod(shape), t.numel))
        return t.reshape(shape)
    if op == "unsqueeze":
        a = _axis(arg, n + 1, what)
        return Tensor(t.storage, t.offset, t.shape[:a] + (1,) + t.shape[a:], t.stride[:a] + (1,) + t.stride[a:],
                      t.dtype, t.error)
    if op == "squeeze":
        a = _axis(arg, n, what)
        if t.shape[a] != 1:
            raise ConvertError("%s: axis %d has size %d, not 1" % (what, arg, t.shape[a]))
        return Tensor(t.storage, t.offset, t.shape[:a] + t.shape[a + 1:], t.stride[:a] + t.stride[a + 1:],
                      t.dtype, t.error)
    if op == "transpose":
        if sorted(arg) != list(range(n)):
            raise ConvertError("%s: the argument must list each of the %d axes once (e.g. %s)"
                               % (what, n, json.dumps(list(range(n))[::-1])))
        return _permute(t, arg)
    if op == "split":
        a = _axis(arg.get("axis", 0), n, what)
        size = t.shape[a]
        if "parts" in arg:
            if size % arg["parts"]:
                raise ConvertError("%s: axis %d has size %d, not a multiple of %d parts" % (what, a, size, arg["parts"]))
            sizes = [size // arg["parts"]] * arg["parts"]
        else:
            sizes = arg["sizes"]
            if sum(sizes) != size:
                raise ConvertError("%s: the sizes add up to %d, axis %d has size %d" % (what, sum(sizes), a, size))
        order = arg["order"]
        if sorted(order) != list(range(len(sizes))):
            raise ConvertError("%s: \"order\" must list each of the %d pieces once" % (what, len(sizes)))
        pieces, start = [], 0
        for k in sizes:
            shape = t.shape[:a] + (k,) + t.shape[a + 1:]
            pieces.append(Tensor(t.storage, t.offset + start * t.stride[a], shape, t.stride, t.dtype, t.error))
            start += k
        return _join([pieces[i] for i in order], a, name)
    raise ConvertError("%s: unknown operation" % what)


def suggest_transforms(shape, expected):
    """Operations that would turn a tensor of `shape` into one that fits `expected` (None: any
    size): a size-1 axis added or removed, else the axis orders that fit, else a reshape that only
    adds or removes size-1 axes.  [] when the difference is not such a change."""
    shape = tuple(shape)

    def fits(s):
        return len(s) == len(expected) and all(e is None or e == d for e, d in zip(expected, s))

    if fits(shape):
        return []
    out = []
    for a in range(len(shape) + 1):
        if fits(shape[:a] + (1,) + shape[a:]):
            out.append(("unsqueeze", a))
    for a in range(len(shape)):
        if shape[a] == 1 and fits(shape[:a] + shape[a + 1:]):
            out.append(("squeeze", a))
    if out:
        return out[:1]
    if 2 <= len(shape) <= 5:   # equal sizes leave several orders possible: all of them, up to 4
        for perm in itertools.permutations(range(len(shape))):
            if perm != tuple(range(len(shape))) and fits(tuple(shape[p] for p in perm)):
                out.append(("transpose", list(perm)))
        if out:
            return out[:4]
    # a reshape only where axes of size 1 come and go: the other sizes stay, in order
    wild = [i for i, e in enumerate(expected) if e is None]
    known = _prod(e for e in expected if e is not None)
    if len(wild) <= 1 and known and _prod(shape) % known == 0 and (wild or known == _prod(shape)):
        target = [_prod(shape) // known if e is None else e for e in expected]
        if [d for d in target if d != 1] == [d for d in shape if d != 1]:
            return [("reshape", [-1 if e is None else e for e in expected])]
    return []


def mapping_shape_hint(ctx, key, shape, expected):
    """The end of a shape-mismatch error under a mapping file: which transform to add where."""
    info = getattr(ctx, "mapping_state", None)
    if info is None:
        return ""
    # a rule for every block: blocks.0.x -> blocks\.\d+\.x
    pattern = json.dumps(re.sub(r"(?<=\\\.)\d+(?=\\\.)", r"\\d+", re.escape(key)))
    parts = info["concat_parts"].get(key)
    if parts and key not in info["transformed"] and all(len(p) == 2 for p in parts) and len(expected) == 2 \
            and len(set(p[0] for p in parts)) == 1 and expected[0] in (None, sum(p[1] for p in parts)) \
            and expected[1] in (None, parts[0][0]):
        return ("; its concat inputs look stored [in, out]: give that concat rule \"axis\": 1 and add "
                "{\"key\": %s, \"transpose\": [1, 0]} to \"transform\"" % pattern)
    sugg = suggest_transforms(shape, expected)
    if parts:
        sugg = [s for s in sugg if s[0] != "reshape"]   # reshaping a concatenation is seldom right
    if not sugg:
        return ""
    op = _op_str(*sugg[0])
    alt = " (or %s, by how it is stored)" % ", ".join(json.dumps(a) for _, a in sugg[1:]) if sugg[1:] else ""
    if key in info["transformed"]:
        return ": add %s to its rule in \"transform\"%s" % (op, alt)
    return ": add {\"key\": %s, %s} to the mapping's \"transform\" list%s" % (pattern, op, alt)


def load_mapping(path):
    try:
        with open(path, "r", encoding="utf-8") as f:
            m = json.load(f, object_pairs_hook=OrderedDict)
    except OSError as e:
        raise ConvertError("cannot read mapping file %s: %s" % (path, e.strerror or e))
    except ValueError as e:
        raise ConvertError("mapping file %s is not valid JSON: %s" % (path, e))
    if not isinstance(m, dict):
        raise ConvertError("mapping file %s: expected a JSON object" % path)
    known = {"arch", "source", "name", "strip_prefix", "ignore", "concat", "rename", "transform", "config"}
    for k in m:
        if k not in known and not k.startswith("_"):
            raise ConvertError("mapping file %s: unknown entry %r (known: %s)" % (path, k, ", ".join(sorted(known))))
    try:
        for pat in m.get("ignore", []):
            re.compile(pat)
        for rule in m.get("rename", []):
            if not (isinstance(rule, list) and len(rule) == 2):
                raise ConvertError("mapping file %s: each rename rule is [regex, replacement]" % path)
            re.compile(rule[0])
        for rule in m.get("concat", []):
            if not (isinstance(rule, dict) and isinstance(rule.get("inputs"), list) and len(rule["inputs"]) >= 2
                    and isinstance(rule.get("output"), str)):
                raise ConvertError("mapping file %s: each concat rule is {\"inputs\": [regex, ...], \"output\": ...}" % path)
            if not _is_int(rule.get("axis", 0)):
                raise ConvertError("mapping file %s: a concat rule's \"axis\" is an integer" % path)
            re.compile(rule["inputs"][0])
        if not isinstance(m.get("transform", []), list):
            raise ConvertError("mapping file %s: \"transform\" is a list of rules" % path)
        for rule in m.get("transform", []):
            _check_transform_rule(rule, "mapping file %s" % path)
            re.compile(rule["key"])
    except re.error as e:
        raise ConvertError("mapping file %s: bad regex: %s" % (path, e))
    return m


def apply_mapping(sd, mapping, state=None):
    """Apply strip_prefix / ignore / concat / rename / transform; returns (new state dict, origin
    map, ignored keys).  `state`, a dict, receives 'transformed' (names a transform rule matched)
    and 'concat_parts' (concat output -> its inputs' shapes), for the hints of shape errors."""
    state = {} if state is None else state
    state.setdefault("transformed", set())
    state.setdefault("concat_parts", {})
    cur = OrderedDict()
    origin = {}
    for k, v in sd.items():
        nk = k
        for p in mapping.get("strip_prefix", []):
            if nk.startswith(p):
                nk = nk[len(p):]
        if nk in cur:
            raise ConvertError("mapping: two tensors become %s after strip_prefix" % nk)
        cur[nk] = v
        origin[nk] = [k]
    ignored = []
    for pat in mapping.get("ignore", []):
        for k in [k for k in cur if re.search(pat, k)]:
            ignored.extend(origin.pop(k))
            del cur[k]
    done = OrderedDict()
    consumed = set()
    for rule in mapping.get("concat", []):
        first = re.compile(rule["inputs"][0])
        hits = 0
        for k in list(cur.keys()):
            m = first.fullmatch(k)
            if not m or k in consumed:
                continue
            names = [k] + [m.expand(t) for t in rule["inputs"][1:]]
            missing = [n for n in names if n not in cur]
            if missing:
                raise ConvertError("mapping concat: %s found but %s missing" % (k, ", ".join(missing)))
            out = m.expand(rule["output"])
            parts = [cur[n] for n in names]
            axis = rule.get("axis", 0)
            if axis == 0:
                done[out] = concat0(parts, out)
            else:
                done[out] = _join(parts, _axis(axis, parts[0].ndim, "mapping concat into %s" % out), out)
            state["concat_parts"][out] = [p.shape for p in parts]
            origin[out] = sum((origin[n] for n in names), [])
            consumed.update(names)
            hits += 1
        if not hits:
            raise ConvertError("mapping concat rule %r matched no tensor" % rule["inputs"][0])
    rest = OrderedDict((k, v) for k, v in cur.items() if k not in consumed)
    renamed = OrderedDict()
    for k, v in rest.items():
        nk = k
        for pat, rep in mapping.get("rename", []):
            nk = re.sub(pat, rep, nk)
        if nk in renamed or nk in done:
            raise ConvertError("mapping: two tensors become %s" % nk)
        renamed[nk] = v
        origin[nk] = origin.pop(k) if nk != k else origin[k]
    renamed.update(done)
    for rule in mapping.get("transform", []):
        pat = re.compile(rule["key"])
        hits = [k for k in renamed if pat.fullmatch(k)]
        if not hits:
            raise ConvertError("mapping transform rule %r matched no tensor (it is matched against the names "
                               "after rename, e.g. %s)" % (rule["key"], ", ".join(list(renamed)[:3])))
        for k in hits:
            t = renamed[k]
            for op, arg in rule.items():
                if op != "key" and not op.startswith("_"):
                    t = transform_tensor(t, op, arg, k)
            renamed[k] = t
            state["transformed"].add(k)
    return renamed, origin, ignored


# ---------------------------------------------------------------------------------- LeMeViT

# the official training pipeline: resize 256 bicubic, centre crop 224, ImageNet mean/std
PRE_LEMEVIT = {"pre.mean": IMAGENET_MEAN, "pre.std": IMAGENET_STD, "pre.crop_pct": 0.875, "pre.interp": "bicubic"}
# block attention sub-module -> attention type letter (E is the v2 dual cross attention, "D2")
LEMEVIT_ATTN = (("attn.q.weight", "C"), ("attn.qkv1.weight", "D"), ("attn.qv1.weight", "E"), ("attn.qkv.weight", "S"))


def detect_lemevit(sd, ctx):
    """The official LeMeViT (models/lemevit.py) and its training-era names (prototypes,
    prototype_downsample)."""
    if not ("meta_tokens" in sd or "prototypes" in sd) or "downsample_layers.0.0.weight" not in sd:
        return None
    renamed, back = _rename(sd, [(r"^prototypes$", "meta_tokens"),
                                 (r"^prototype_downsample\.", "meta_token_downsample.")])
    m = build_lemevit(renamed, ctx, "lemevit", {})
    m.used = set(back[k] for k in m.used)
    if "prototypes" in sd:
        m.notes.append("training-era names prototypes/prototype_downsample renamed")
    return m


def build_lemevit(sd, ctx, source, defaults, name_hint=None):
    """A LeMeViT Model from a state dict in the official names.  Depths, widths, attention types
    and MLP widths come from the tensors; head_dim (32 in every released variant) and the
    epsilons from the official constants."""
    st = ctx.settings
    st.update("default", defaults)
    st.update("default", {"lemevit.head_dim": 32, "lemevit.norm_eps": 1e-6, "lemevit.meta_eps": 1e-5,
                          "lemevit.bn_eps": 1e-5})
    n_stages = len(_block_indices(sd, "meta_token_downsample."))
    if n_stages < 1 or n_stages > 8:
        raise ConvertError("LeMeViT layout with %d stages: expected 1 to 8" % n_stages)
    depths, dims, hidden, types = [], [], [], ""
    for i in range(n_stages):
        blocks = _block_indices(sd, "stages.%d." % i)
        if not blocks or blocks != list(range(len(blocks))):
            raise ConvertError("LeMeViT stage %d has no blocks or a gap in its block numbers" % i)
        depths.append(len(blocks))
        kinds = [t for key, t in LEMEVIT_ATTN if "stages.%d.0.%s" % (i, key) in sd]
        if len(kinds) != 1:
            raise ConvertError("LeMeViT stage %d: cannot tell its attention type (C/D/D2/S) from the keys" % i)
        types += kinds[0]
        dims.append(sd["stages.%d.0.pos_embed.weight" % i].shape[0])
        hidden.append(sd["stages.%d.0.mlp.0.weight" % i].shape[0])
    head_dim = st.get("lemevit.head_dim")
    for i, c in enumerate(dims):
        if c % head_dim:
            raise ConvertError("LeMeViT stage %d width %d is not a multiple of head_dim %d; pass "
                               "--set lemevit.head_dim=N" % (i, c, head_dim))
    used, T = set(), OrderedDict()
    for k, t in sd.items():
        if k.endswith("num_batches_tracked"):   # a BatchNorm counter: nothing to run
            used.add(k)
            continue
        t.check(k)
        T[k] = t
        used.add(k)
    head = sd.get("head.weight")
    K = head.shape[0] if head is not None else 0
    args = ctx.info.get("args") or {}
    img = st.get("img_size") or ([args["img_size"]] * 2 if isinstance(args.get("img_size"), int) else [224, 224])
    cfg = OrderedDict()
    cfg["in_chans"] = sd["downsample_layers.0.0.weight"].shape[1]
    cfg["img_size"] = list(img)
    cfg["num_classes"] = K
    cfg["num_features"] = dims[-1]
    cfg["lemevit.depths"] = depths
    cfg["lemevit.embed_dims"] = dims
    cfg["lemevit.mlp_hidden"] = hidden
    cfg["lemevit.attn_types"] = types
    cfg["lemevit.head_dim"] = head_dim
    cfg["lemevit.num_meta"] = sd["meta_tokens"].shape[0]
    for k in ("lemevit.norm_eps", "lemevit.meta_eps", "lemevit.bn_eps"):
        cfg[k] = st.get(k)
    for k in cfg:
        cfg[k] = coerce(k, cfg[k])
    known = {("CDDSS", (64, 64, 128, 192, 320)): "lemevit_tiny", ("CDDSS", (96, 96, 192, 320, 384)): "lemevit_small",
             ("CDDSS", (96, 96, 192, 384, 512)): "lemevit_base", ("CDDSS", (64, 64, 128, 256, 512)): "lemevit_small_v2",
             ("CEESS", (96, 96, 192, 320, 384)): "lemevit_tiny_v2", ("SSSS", (96, 192, 320, 384)): "vit_tiny"}
    name = name_hint or (args.get("model") if isinstance(args.get("model"), str) else None) or \
        known.get((types, tuple(dims)), "lemevit_%s_%s" % (types.replace("E", "D2").lower(), "_".join(map(str, dims))))
    return Model("lemevit", source, cfg, T, used, pre_defaults=PRE_LEMEVIT, name=name)


# ---------------------------------------------------------------------------------- Swin

# timm swin_* cfg: ImageNet mean/std, crop 0.9, bicubic; Microsoft's repo: resize 256 / crop 224
PRE_SWIN_TIMM = {"pre.mean": IMAGENET_MEAN, "pre.std": IMAGENET_STD, "pre.crop_pct": 0.9, "pre.interp": "bicubic"}
PRE_SWIN_MS = {"pre.mean": IMAGENET_MEAN, "pre.std": IMAGENET_STD, "pre.crop_pct": 224.0 / 256.0, "pre.interp": "bicubic"}
# torchvision Swin_T_Weights.IMAGENET1K_V1: resize 232 bicubic, crop 224
PRE_SWIN_TORCHVISION = {"pre.mean": IMAGENET_MEAN, "pre.std": IMAGENET_STD, "pre.crop_pct": 224.0 / 232.0,
                        "pre.interp": "bicubic"}
# Hugging Face AutoImageProcessor of the Swin checkpoints: resize straight to 224x224, bicubic
PRE_SWIN_HF = {"pre.mean": IMAGENET_MEAN, "pre.std": IMAGENET_STD, "pre.resize": 0, "pre.crop_pct": 1.0,
               "pre.interp": "bicubic"}
SWIN_BUFFERS = re.compile(r"(relative_position_index|attn_mask|relative_coords_table)$")


def build_swin(sd, ctx, source, defaults, name_hint=None):
    """A Swin V1 Model from a state dict in Microsoft's layout (downsample at the end of each stage,
    head.*).  Heads and window come from the relative position bias tables; the padding/shift
    convention from the source (overridable with --set)."""
    st = ctx.settings
    st.update("default", defaults)
    if any(k.endswith("attn.cpb_mlp.0.weight") or k.endswith("attn.logit_scale") for k in sd):
        raise ConvertError("this is a Swin V2 checkpoint (cosine attention, continuous position bias); "
                           "only Swin V1 is supported")
    used, T = set(), OrderedDict()
    for k in sd:
        if SWIN_BUFFERS.search(k):  # buffers the graph recomputes
            used.add(k)
    pw = sd.get("patch_embed.proj.weight")
    if pw is None or pw.ndim != 4:
        raise ConvertError("Swin layout: patch_embed.proj.weight is missing or not 4-D")
    D, C, p, _ = pw.shape
    n_stages = len(_block_indices(sd, "layers."))
    depths, heads, hidden = [], [], []
    window = None
    width = D
    for s in range(n_stages):
        blocks = _block_indices(sd, "layers.%d.blocks." % s)
        if not blocks or blocks != list(range(len(blocks))):
            raise ConvertError("Swin stage %d has no blocks or a gap in its block numbers" % s)
        depths.append(len(blocks))
        table = sd.get("layers.%d.blocks.0.attn.relative_position_bias_table" % s)
        if table is None or table.ndim != 2:
            raise ConvertError("Swin stage %d: relative_position_bias_table is missing" % s)
        side = _isqrt_exact(table.shape[0])
        if not side or side % 2 == 0:
            raise ConvertError("relative_position_bias_table has %d rows, not (2w-1)^2" % table.shape[0])
        w = (side + 1) // 2
        if window not in (None, w):
            raise ConvertError("Swin stages with different window sizes (%d, %d) are not supported" % (window, w))
        window = w
        heads.append(table.shape[1])
        hidden.append(sd["layers.%d.blocks.0.mlp.fc1.weight" % s].shape[0])
        for b in blocks:
            for part in ("norm1.weight", "norm1.bias", "attn.relative_position_bias_table", "attn.qkv.weight",
                         "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias", "norm2.weight", "norm2.bias",
                         "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"):
                k = "layers.%d.blocks.%d.%s" % (s, b, part)
                if k in sd:
                    sd[k].check(k)
                    T[k] = sd[k]
                    used.add(k)
        if s + 1 < n_stages:
            for part in ("norm.weight", "norm.bias", "reduction.weight"):
                k = "layers.%d.downsample.%s" % (s, part)
                if k not in sd:
                    raise ConvertError("Swin layout: %s is missing" % k)
                T[k] = sd[k]
                used.add(k)
            width *= 2
    for k in ("patch_embed.proj.weight", "patch_embed.proj.bias", "patch_embed.norm.weight", "patch_embed.norm.bias",
              "absolute_pos_embed", "norm.weight", "norm.bias", "head.weight", "head.bias"):
        if k in sd:
            sd[k].check(k)
            T[k] = sd[k]
            used.add(k)
    head = sd.get("head.weight")
    K = head.shape[0] if head is not None else 0
    img = st.get("img_size")
    if not img:
        ape = sd.get("absolute_pos_embed")
        if ape is not None and _isqrt_exact(ape.shape[1]):
            img = [_isqrt_exact(ape.shape[1]) * p] * 2
        else:
            img = [384, 384] if window == 12 else [224, 224]
    cfg = OrderedDict()
    cfg["in_chans"] = C
    cfg["img_size"] = list(img)
    cfg["num_classes"] = K
    cfg["num_features"] = width
    cfg["swin.embed_dim"] = D
    cfg["swin.depths"] = depths
    cfg["swin.num_heads"] = heads
    cfg["swin.mlp_hidden"] = hidden
    cfg["swin.window_size"] = window
    cfg["swin.patch_size"] = p
    cfg["swin.norm_eps"] = st.get("swin.norm_eps", 1e-5)
    cfg["swin.pad_mode"] = st.get("swin.pad_mode")
    cfg["swin.shift_rule"] = st.get("swin.shift_rule")
    for k in cfg:
        cfg[k] = coerce(k, cfg[k])
    known = {(96, (2, 2, 6, 2)): "tiny", (96, (2, 2, 18, 2)): "small", (128, (2, 2, 18, 2)): "base",
             (192, (2, 2, 18, 2)): "large"}
    size = known.get((D, tuple(depths)))
    name = name_hint or ("swin_%s_patch%d_window%d_%d" % (size, p, window, img[0]) if size else
                         "swin_d%d_%s_patch%d_window%d" % (D, "-".join(map(str, depths)), p, window))
    pre = dict(defaults)
    if img[0] >= 384 and "pre.resize" not in pre:
        pre["pre.crop_pct"] = 1.0
    return Model("swin", source, cfg, T, used, pre_defaults=pre, name=name)


def detect_swin_timm(sd, ctx):
    """Microsoft's official files and timm in all eras: <= 0.8 (downsample at the end of a stage,
    head.*), 0.9.0-0.9.5 (downsample at the start of the next stage, head.fc.*, buffers stored) and
    >= 0.9.6 (no buffers); and Microsoft-named files of the code that builds the shift mask at run
    time (Microsoft's detection/segmentation backbones and the classifiers derived from them, e.g.
    seed 004): relative_position_index stored but no attn_mask anywhere."""
    if "patch_embed.proj.weight" not in sd or \
            not any(re.match(r"^layers\.\d+\.blocks\.\d+\.attn\.relative_position_bias_table$", k) for k in sd):
        return None
    new_timm = "head.fc.weight" in sd or ("layers.0.downsample.reduction.weight" not in sd and
                                          "layers.1.downsample.reduction.weight" in sd)
    rules = []
    if new_timm:
        rules = [(r"^layers\.(\d+)\.downsample\.", lambda m: "layers.%d.downsample." % (int(m.group(1)) - 1)),
                 (r"^head\.fc\.", "head.")]
    renamed, back = _rename(sd, rules)
    wrapper = ctx.info.get("path") or []
    ms = not new_timm and wrapper[:1] == ["model"]
    has_buffers = any(SWIN_BUFFERS.search(k) for k in sd)
    has_index = any(k.endswith("attn.relative_position_index") for k in sd)
    has_mask = any(k.endswith("attn_mask") for k in sd)
    shifted = any(re.match(r"^layers\.\d+\.blocks\.1\.", k) for k in renamed)
    if not new_timm and has_index and not has_mask and shifted:
        # The index is a persistent buffer but the mask is not: the mask is built at run time on the
        # padded map (Microsoft's Swin-Transformer-Object-Detection/-Semantic-Segmentation backbone
        # and the classifiers copied from it).  That code pads, then rolls, and never drops the
        # shift, not even on maps smaller than the window.  (timm <= 0.8 and Microsoft's
        # classification code store attn_mask in every shifted block of a stage larger than the window.)
        m = build_swin(renamed, ctx, "runtime-mask", dict(PRE_SWIN_MS if ms else PRE_SWIN_TIMM,
                                                          **{"swin.pad_mode": "pad_then_roll", "swin.shift_rule": "always"}))
        m.used = set(back[k] for k in m.used)
        m.notes.append("Swin layout: Microsoft names, shift mask built at run time (pad then roll, shift always "
                       "kept; detection-style code, e.g. seed 004)")
        return m
    source = "timm" if new_timm or not ms else "ms"
    era = ("timm >= 0.9.6" if not has_buffers else "timm 0.9.0-0.9.5") if new_timm else \
        ("Microsoft official" if ms else "timm <= 0.8")
    # Microsoft's code and timm <= 0.9.5 drop the shift on both axes when min(H, W) <= window (the
    # min rule); timm >= 0.9.6 decides per axis.  Inputs those old versions cannot run at all (maps
    # not divisible by the window) are run the way today's timm runs them: roll the map, then pad.
    rule = "per_axis" if new_timm and not has_buffers else "min"
    m = build_swin(renamed, ctx, source, dict(PRE_SWIN_MS if ms else PRE_SWIN_TIMM,
                                             **{"swin.pad_mode": "roll_then_pad", "swin.shift_rule": rule}))
    m.used = set(back[k] for k in m.used)
    m.notes.append("Swin layout: %s" % era)
    return m


SWIN_TORCHVISION_RULES = [
    (r"^features\.0\.0\.", "patch_embed.proj."),
    (r"^features\.0\.2\.", "patch_embed.norm."),
    (r"^features\.(\d+)\.(\d+)\.", lambda m: "layers.%d.blocks.%s." % ((int(m.group(1)) - 1) // 2, m.group(2))
     if int(m.group(1)) % 2 == 1 else m.group(0)),
    (r"^features\.(\d+)\.(reduction|norm)\.", lambda m: "layers.%d.downsample.%s." % (int(m.group(1)) // 2 - 1, m.group(2))),
    (r"^(layers\.\d+\.blocks\.\d+)\.mlp\.0\.", r"\1.mlp.fc1."),
    (r"^(layers\.\d+\.blocks\.\d+)\.mlp\.3\.", r"\1.mlp.fc2."),
]


def detect_swin_torchvision(sd, ctx):
    if "features.0.0.weight" not in sd or not any(k.startswith("features.1.0.attn.") for k in sd):
        return None
    renamed, back = _rename(sd, SWIN_TORCHVISION_RULES)
    m = build_swin(renamed, ctx, "torchvision", dict(PRE_SWIN_TORCHVISION,
                                                    **{"swin.pad_mode": "pad_then_roll", "swin.shift_rule": "per_axis"}))
    m.used = set(back[k] for k in m.used)
    return m


SWIN_HF_RULES = [
    (r"^swin\.", ""),
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^embeddings\.norm\.", "patch_embed.norm."),
    (r"^encoder\.layers\.(\d+)\.blocks\.(\d+)\.layernorm_before\.", r"layers.\1.blocks.\2.norm1."),
    (r"^encoder\.layers\.(\d+)\.blocks\.(\d+)\.layernorm_after\.", r"layers.\1.blocks.\2.norm2."),
    (r"^encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.self\.", r"layers.\1.blocks.\2.attn."),
    (r"^encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.output\.dense\.", r"layers.\1.blocks.\2.attn.proj."),
    (r"^encoder\.layers\.(\d+)\.blocks\.(\d+)\.intermediate\.dense\.", r"layers.\1.blocks.\2.mlp.fc1."),
    (r"^encoder\.layers\.(\d+)\.blocks\.(\d+)\.output\.dense\.", r"layers.\1.blocks.\2.mlp.fc2."),
    (r"^encoder\.layers\.(\d+)\.downsample\.", r"layers.\1.downsample."),
    (r"^layernorm\.", "norm."),
    (r"^classifier\.", "head."),
]


def detect_swin_hf(sd, ctx):
    key = "embeddings.patch_embeddings.projection.weight"
    if key not in sd and "swin." + key not in sd:
        return None
    renamed, back = _rename(sd, SWIN_HF_RULES)
    if "embeddings.position_embeddings" in renamed:
        raise ConvertError("Hugging Face Swin with use_absolute_embeddings is not supported")
    # separate query/key/value projections -> one qkv, rows [q; k; v]
    merged, origin = OrderedDict(), {}
    for k, v in renamed.items():
        mm = re.match(r"^(layers\.\d+\.blocks\.\d+\.attn)\.(query|key|value)\.(weight|bias)$", k)
        if not mm:
            merged[k], origin[k] = v, [back[k]]
            continue
        if mm.group(2) != "query":
            continue
        parts = ["%s.%s.%s" % (mm.group(1), n, mm.group(3)) for n in ("query", "key", "value")]
        if not all(p in renamed for p in parts):
            raise ConvertError("Hugging Face Swin: %s query/key/value are incomplete" % back[k])
        nk = "%s.qkv.%s" % (mm.group(1), mm.group(3))
        merged[nk] = concat0([renamed[p] for p in parts], nk)
        origin[nk] = [back[p] for p in parts]
    cfg = ctx.hf_config or {}
    eps = cfg.get("layer_norm_eps") if isinstance(cfg.get("layer_norm_eps"), (int, float)) else 1e-5
    m = build_swin(merged, ctx, "hf", dict(PRE_SWIN_HF, **{"swin.norm_eps": eps, "swin.pad_mode": "pad_then_roll",
                                                         "swin.shift_rule": "min"}))
    m.used = set(o for k in m.used for o in origin.get(k, [k]))
    labels = cfg.get("id2label")
    if isinstance(labels, dict):
        names = [labels.get(str(i)) for i in range(m.config["num_classes"])]
        if all(isinstance(x, str) for x in names):
            m.labels = names
    return m


def convert_with_mapping(sd, ctx, mapping):
    arch = mapping.get("arch", "vit")
    if arch not in MAPPING_BUILDERS:
        raise ConvertError("mapping files for arch %r are not supported yet (known: %s)"
                           % (arch, ", ".join(sorted(MAPPING_BUILDERS))))
    cfg = OrderedDict()
    for k, v in (mapping.get("config") or {}).items():
        if k.startswith("_"):
            continue
        cfg[k] = coerce(k, v)
    ctx.settings.update("mapping", cfg)
    ctx.mapping_state = {}
    new_sd, origin, ignored = apply_mapping(sd, mapping, ctx.mapping_state)
    m = MAPPING_BUILDERS[arch](new_sd, ctx, mapping.get("source", "mapping"), {}, name_hint=mapping.get("name"))
    used = set(ignored)
    for k in m.used:
        used.update(origin.get(k, [k]))
    m.used = used
    return m


# builders that take a state dict already in a family's canonical names (used by mapping files):
# fn(state_dict, ctx, source, defaults, name_hint=None) -> Model
MAPPING_BUILDERS = {"vit": build_vit, "swin": build_swin, "lemevit": build_lemevit}

# detectors are tried in order; each returns a Model or None (see "Adding a family" above)
DETECTORS = [
    ("vit", "timm/DeiT ViT", detect_timm_vit),
    ("vit", "torchvision ViT", detect_torchvision_vit),
    ("vit", "Hugging Face ViT/DeiT", detect_hf_vit),
    ("swin", "timm/Microsoft Swin", detect_swin_timm),
    ("swin", "torchvision Swin", detect_swin_torchvision),
    ("swin", "Hugging Face Swin", detect_swin_hf),
    ("lemevit", "LeMeViT", detect_lemevit),
]


# =============================================================================================
# 7. preprocessing, labels, writing, summary, command line
# =============================================================================================


def _describe_keys(sd, keys, limit=25):
    items = ["%s %s" % (k, list(sd[k].shape)) if k in sd else k for k in keys[:limit]]
    if len(keys) > limit:
        items.append("... and %d more" % (len(keys) - limit))
    return ", ".join(items)


def detect(sd, ctx):
    """Run the mapping file or the detectors; returns a Model whose every input key is placed."""
    opts = ctx.opts
    model = None
    if getattr(opts, "mapping", None):
        model = convert_with_mapping(sd, ctx, load_mapping(opts.mapping))
    else:
        arch = getattr(opts, "arch", None)
        # try the keys as they are, then without a leading component shared by every key (up to
        # two: Lightning's 'model.', 'backbone.', OpenCLIP's 'visual.trunk.', ...)
        cand, back, stripped = sd, {k: k for k in sd}, ""
        for _ in range(3):
            for fam, label, fn in DETECTORS:
                if arch and arch != "auto" and fam != arch:
                    continue
                model = fn(cand, ctx)
                if model is not None:
                    break
            if model is not None:
                model.used = set(back[k] for k in model.used)
                if stripped:
                    model.notes.append("removed the prefix %r shared by every key" % stripped)
                break
            heads = set(k.split(".", 1)[0] for k in cand)
            if len(heads) != 1 or not all("." in k for k in cand):
                break
            p = heads.pop() + "."
            stripped += p
            back = dict((k[len(p):], back[k]) for k in cand)
            cand = OrderedDict((k[len(p):], v) for k, v in cand.items())
        if model is None and arch not in (None, "auto") and not any(d[0] == arch for d in DETECTORS):
            raise ConvertError("--arch %s: this converter has no detector for that family yet" % arch)
        if model is None:
            raise ConvertError("unknown checkpoint layout: no detector (%s) recognised these %d tensors: %s; "
                               "write a mapping file and pass --mapping FILE (see --help)"
                               % (", ".join(d[1] for d in DETECTORS), len(sd), _describe_keys(sd, list(sd))))
    left = [k for k in sd if k not in model.used]
    if left:
        raise ConvertError("%s layout recognised (%s) but %d tensor(s) could not be placed: %s; use --mapping "
                           "FILE (or --ignore REGEX to drop them)" % (model.arch, model.source, len(left),
                                                                     _describe_keys(sd, left)))
    return model


def compute_preprocessing(model, ctx):
    """pre.* keys from the layered settings.  resize and crop_pct describe the same thing: the
    one set by the higher layer wins and the other is derived (resize = floor(crop / crop_pct))."""
    st = ctx.settings
    st.update("default", model.pre_defaults)
    C = model.config["in_chans"]
    crop = list(model.config["img_size"])
    r_rank, p_rank = st.rank("pre.resize"), st.rank("pre.crop_pct")
    resize, pct = st.get("pre.resize"), st.get("pre.crop_pct")
    if resize is None and pct is None:
        pct = 1.0
    if resize is not None and (pct is None or r_rank > p_rank):
        pct = 1.0 if resize == 0 else min(crop) / float(resize)
    elif pct is not None and (resize is None or p_rank > r_rank):
        if not 0 < pct <= 1.0 + 1e-9:
            raise ConvertError("crop_pct must be in (0, 1], got %r" % pct)
        resize = int(math.floor(min(crop) / pct + 1e-6))  # 1e-6: 224/0.875 must give 256, not 255
    def fit(nm):
        v = list(st.get("pre." + nm, HALF))
        if len(v) == C:
            return v
        if len(v) == 1:
            return v * C
        if C == 1 and len(v) == 3 and not st.explicit("pre." + nm):
            return [sum(v) / 3.0]   # 1-channel model and RGB defaults: their average
        raise ConvertError("the model has %d input channel(s) but pre.%s has %d values; pass --%s with %d "
                           "value(s)" % (C, nm, len(v), nm, C))
    mean, std = fit("mean"), fit("std")
    if any(x == 0 for x in std):
        raise ConvertError("pre.std must not contain 0")
    return OrderedDict([
        ("pre.resize", coerce("pre.resize", resize)),
        ("pre.crop", crop),
        ("pre.crop_pct", coerce("pre.crop_pct", pct)),
        ("pre.interp", coerce("pre.interp", st.get("pre.interp", "bicubic"))),
        ("pre.mean", coerce("pre.mean", mean)),
        ("pre.std", coerce("pre.std", std)),
    ])


def imagenet_labels():
    path = os.path.join(TOOLS_DIR, "imagenet_classes.txt")
    try:
        with open(path, "r", encoding="utf-8") as f:
            names = [ln.rstrip("\r\n") for ln in f]
    except OSError as e:
        raise ConvertError("cannot read %s: %s" % (path, e.strerror or e))
    while names and not names[-1]:
        names.pop()
    if len(names) != 1000:
        raise ConvertError("%s has %d lines, expected 1000" % (path, len(names)))
    return names


def resolve_labels(model, ctx):
    """Class names for the file and a word on where they came from.  --labels FILE|imagenet|none;
    by default: names from the checkpoint's side files or mapping, else ImageNet for 1000 classes."""
    K = model.config["num_classes"]
    spec = getattr(ctx.opts, "labels", None) or "auto"
    if K == 0 or spec == "none":
        return None, "none"
    if spec == "auto":
        if isinstance(ctx.settings.get("labels"), list):
            names, where = ctx.settings.get("labels"), "mapping file"
        elif model.labels and len(model.labels) == K:
            return model.labels, "checkpoint config (id2label)"
        elif K == 1000:
            names, where = imagenet_labels(), "imagenet"
        else:
            return None, "none"
    elif spec == "imagenet":
        names, where = imagenet_labels(), "imagenet"
    else:
        try:
            with open(spec, "r", encoding="utf-8") as f:
                names = [ln.rstrip("\r\n") for ln in f]
        except OSError as e:
            raise ConvertError("cannot read labels file %s: %s" % (spec, e.strerror or e))
        while names and not names[-1].strip():
            names.pop()
        where = spec
    if len(names) != K:
        raise ConvertError("%d labels (%s) for a head with %d classes" % (len(names), where, K))
    return names, where


def finalize(model, ctx):
    """The full ordered meta list for the file."""
    st = ctx.settings
    cfg = model.config
    pre = compute_preprocessing(model, ctx)
    labels, labels_src = resolve_labels(model, ctx)
    name = st.get("name") or model.name or model.arch
    meta = OrderedDict()
    meta["arch"] = model.arch
    meta["name"] = name
    meta["source"] = model.source
    for k in ("in_chans", "img_size", "num_classes", "num_features"):
        meta[k] = cfg[k]
    meta.update(pre)
    for k in FAMILY_KEYS[model.arch]:
        if k in cfg:
            meta[k] = cfg[k]
        elif st.get(k) is not None:  # graph options no detector sets yet (vit.block, lemevit.post_norm)
            meta[k] = st.get(k)
    if labels:
        meta["labels"] = labels
    return meta, labels_src


def _fmt2(v):
    return "%dx%d" % (v[0], v[1])


def summary_lines(model, meta, labels_src, ckpt, info, out_path, nbytes, dtypes=None):
    c = meta
    n_params = sum(t.numel for t in model.tensors.values())
    lines = []
    src = "%s (%s%s%s)" % (model.source, ckpt.fmt, ", entry " + "/".join(info["path"]) if info["path"] else "",
                          ", stripped " + " ".join(info["prefixes"]) if info["prefixes"] else "")
    lines.append("input       %s" % ckpt.path)
    lines.append("source      %s" % src)
    lines.append("model       %s: %s" % (c["arch"], c["name"]))
    if model.arch == "vit":
        lines.append("config      embed %d, depth %d, heads %d, mlp %d, patch %s, pos grid %s, img %s, in_chans %d"
                     % (c["vit.embed_dim"], c["vit.depth"], c["vit.num_heads"], c["vit.mlp_hidden"],
                        _fmt2(c["vit.patch_size"]), _fmt2(c["vit.pos_grid"]), _fmt2(c["img_size"]), c["in_chans"]))
        tokens = []
        if c["vit.class_token"]:
            tokens.append("cls" + (" (last)" if c["vit.class_last"] else ""))
        if c["vit.dist_token"]:
            tokens.append("dist")
        if c["vit.reg_tokens"]:
            tokens.append("%d reg" % c["vit.reg_tokens"])
        parts = [", ".join(tokens) or "no prefix tokens",
                 "pos_embed %s prefix" % ("excludes" if c["vit.no_embed_class"] else "covers"),
                 "pool %s" % c["vit.pool"]]
        lines.append("tokens      " + "; ".join(parts))
        opts = ["%s-norm" % ("pre" if c["vit.norm_first"] else "post"), "eps %g" % c["vit.norm_eps"],
                "act %s" % c["vit.act"], "qkv_bias %d" % c["vit.qkv_bias"]]
        for k in ("layer_scale", "patch_norm", "norm_pre", "final_norm", "fc_norm"):
            if c["vit." + k]:
                opts.append(k)
        if c["vit.pre_logits"]:
            opts.append("pre_logits %d" % c["vit.pre_logits"])
        if c["vit.attn_scale"]:
            opts.append("attn_scale %g" % c["vit.attn_scale"])
        opts.append("pos_interp %s" % c["vit.pos_interp"])
        lines.append("graph       " + ", ".join(opts))
    lines.append("head        %d classes, %d features; labels: %s" % (c["num_classes"], c["num_features"], labels_src))
    lines.append("params      {:,} in {} tensors".format(n_params, len(model.tensors)))
    resize = "resize %d" % c["pre.resize"] if c["pre.resize"] else "resize to crop size"
    lines.append("preprocess  %s (crop_pct %.4g) %s, crop %s, mean %s, std %s"
                 % (resize, c["pre.crop_pct"], c["pre.interp"], _fmt2(c["pre.crop"]),
                    [round(x, 4) for x in c["pre.mean"]], [round(x, 4) for x in c["pre.std"]]))
    if info.get("ignored"):
        lines.append("ignored     %d tensor(s): %s" % (len(info["ignored"]), ", ".join(info["ignored"][:10])))
    for n in model.notes:
        lines.append("note        " + n)
    if info.get("ema_available") and "ema" not in " ".join(info["path"]):
        lines.append("note        the checkpoint also holds EMA weights (use --ema to convert those)")
    if out_path:
        wd = meta.get(lmvfile.DTYPE_META_KEY, "f32")
        kinds = ""
        if dtypes:
            kinds = ": " + ", ".join("%d tensors %s" % (dtypes[k], k) for k in lmvfile.DTYPE_CODES if dtypes.get(k))
        lines.append("wrote       %s (%.1f MB), weights %s%s" % (out_path, nbytes / 1e6, wd, kinds))
    return lines


def tensor_dtypes(model, opts):
    """name -> the dtype each tensor is written in: --dtype for the tensors lmvfile.quantizable()
    accepts (matrix-multiply weights) unless a --keep-f32 regex matches, float32 for the rest: the
    matrix weights among them (lmvfile.packable()) as f32p panels unless --no-pack."""
    dtype = getattr(opts, "dtype", None) or "f32"
    pack = getattr(opts, "pack", True)
    try:
        keep = lmvfile.compile_keep(getattr(opts, "keep_f32", None) or [], "--keep-f32")
        return OrderedDict((n, lmvfile.choose_dtype(n, t.shape, dtype, keep, pack)) for n, t in model.tensors.items())
    except lmvfile.LmvError as e:
        raise ConvertError(str(e))


def convert(path, out_path=None, opts=None, quiet=False, out=None):
    """Convert one checkpoint.  `opts` is an argparse-like namespace (see build_parser); returns
    (model, meta).  Raises ConvertError."""
    opts = opts or build_parser().parse_args([path])
    out = out or sys.stdout
    ckpt = load_checkpoint(path)
    sd, info = extract_state_dict(ckpt, use_ema=getattr(opts, "ema", False), ignore=getattr(opts, "ignore", None) or [],
                                  allow_broadcast=getattr(opts, "allow_broadcast", False))
    if not sd:
        raise ConvertError("%s: no tensors found" % path)
    settings = Settings()
    settings.update("cli", cli_settings(opts))
    ctx = Context(opts, settings, info, path)
    model = detect(sd, ctx)
    model.notes = ctx.notes + model.notes
    meta, labels_src = finalize(model, ctx)
    try:
        lmvfile.check_meta(meta)   # the library's ranges: never write a file it would refuse
    except lmvfile.LmvError as e:
        raise ConvertError("%s: %s (from the checkpoint, its side files, the mapping file or the command line)"
                           % (path, e))
    dtypes = tensor_dtypes(model, opts)
    meta[lmvfile.DTYPE_META_KEY] = getattr(opts, "dtype", None) or "f32"
    nbytes = 0
    if out_path:
        tensors = [(n, t.shape, (lambda t=t, n=n: t.f32(n)), dtypes[n]) for n, t in model.tensors.items()]
        try:
            nbytes = lmvfile.write(out_path, list(meta.items()), tensors)
        except lmvfile.TensorValueError as e:
            hint = "--keep-f32 '^%s$' keeps it float32" % re.escape(e.tensor)
            if "overflows" in str(e):
                hint += ", --dtype int8 stores the matrix weights as int8"
            raise ConvertError("cannot write %s: %s (%s)" % (out_path, e, hint))
        except lmvfile.LmvError as e:
            raise ConvertError("cannot write %s: %s" % (out_path, e))
        except OSError as e:
            raise ConvertError("cannot write %s: %s" % (out_path, e.strerror or e))
    if not quiet:
        counts = OrderedDict()
        for d in dtypes.values():
            counts[d] = counts.get(d, 0) + 1
        out.write("\n".join(summary_lines(model, meta, labels_src, ckpt, info, out_path, nbytes, counts)) + "\n")
    return model, meta


def cli_settings(opts):
    s = OrderedDict()
    g = lambda n: getattr(opts, n, None)  # noqa: E731
    if g("img_size"):
        s["img_size"] = coerce("img_size", g("img_size"))
    if g("num_heads"):
        s["vit.num_heads"] = g("num_heads")
    if g("eps") is not None:
        s["vit.norm_eps"] = g("eps")
    if g("pool"):
        s["vit.pool"] = g("pool")
    if g("mean"):
        s["pre.mean"] = coerce("pre.mean", g("mean"))
    if g("std"):
        s["pre.std"] = coerce("pre.std", g("std"))
    if g("crop_pct") is not None:
        s["pre.crop_pct"] = g("crop_pct")
    if g("resize") is not None:
        s["pre.resize"] = g("resize")
    if g("interpolation"):
        s["pre.interp"] = g("interpolation")
    if g("name"):
        s["name"] = g("name")
    for item in g("set") or []:
        if "=" not in item:
            raise ConvertError("--set expects KEY=VALUE, got %r" % item)
        k, v = item.split("=", 1)
        s[k.strip()] = parse_set_value(k.strip(), v.strip())
    return s


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
                   help="set any .lmv key, e.g. --set vit.act=gelu_tanh --set vit.pos_interp=bicubic")
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


if __name__ == "__main__":
    sys.exit(main())
