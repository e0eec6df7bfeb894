"""Tensors: dtypes, a lazily materialised Tensor, float32 conversion."""

import array
import struct
import sys
from collections import OrderedDict
import os
from .base import ConvertError, _short

try:  # optional speed-up only; every code path has a pure-Python fallback
    if os.environ.get("LMV_NO_NUMPY"):
        raise ImportError
    import numpy as _np
except Exception:  # pragma: no cover - depends on the interpreter
    _np = None

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


