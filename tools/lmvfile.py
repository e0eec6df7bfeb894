#!/usr/bin/env python3
"""Read and write `.lmv` weight files (format version 1), Python standard library only.

The binding description of the format is the section "The weight file format" of README.md; this
module follows it to the letter.  In short: a 128-byte header, a section of typed meta entries, a
tensor table, zero padding up to a 64-byte aligned data section, and the tensor data (float32,
little-endian, every tensor 64-byte aligned).  Two CRC-32s (zlib polynomial) protect the file.

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
                  [("cls_token", (1, 1, 192), f32_bytes), ...])
    f = lmvfile.read("m.lmv")          # verifies structure and both CRCs
    f.meta["img_size"]                 # -> [224, 224]
    f.tensor("cls_token")              # -> array('f') with the values

Usage from the shell (prints the header, meta and tensor table, exit status 1 if invalid):

    python3 tools/lmvfile.py model.lmv
"""

import array
import os
import re
import struct
import sys
import zlib
from collections import OrderedDict

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

DTYPE_F32 = 0
DTYPE_SIZES = {DTYPE_F32: 4}
MAX_DIMS = 6

_KEY_RE = re.compile(r"^[a-z0-9_.]{1,255}$")
_HEADER_FMT = "<8sIIQQQQQIIQQII40s"
assert struct.calcsize(_HEADER_FMT) == HEADER_SIZE


class LmvError(Exception):
    """Raised for any invalid argument to write() or any malformed file given to read()."""


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


def layout(meta, tensors):
    """Compute the encoded meta/table sections and every offset, without any tensor data.
    `meta`: iterable of (key, value); `tensors`: iterable of (name, shape, data).
    Returns a dict used by write(); handy for tests."""
    meta = list(meta.items()) if isinstance(meta, dict) else list(meta)
    keys = [k for k, _ in meta]
    if len(set(keys)) != len(keys):
        dup = sorted(set(k for k in keys if keys.count(k) > 1))
        raise LmvError("duplicate meta keys: %s" % ", ".join(dup))
    meta_bytes = b"".join(_encode_meta_entry(k, v) for k, v in meta)

    entries = []
    names = set()
    rel = 0
    for name, shape, data in tensors:
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
        size = numel * 4
        rel = _align(rel, DATA_ALIGN)
        entry = struct.pack("<HBBQQ", len(nb), DTYPE_F32, len(shape), rel, size)
        entry += struct.pack("<%dI" % len(shape), *shape) + nb
        entry += _pad(len(entry), 8)
        entries.append((name, shape, rel, size, data, entry))
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
    tensors -- list of (name, shape, data); data is float32 little-endian bytes (or array('f'),
               a float32 numpy array, or a zero-argument callable returning one of those, called
               once while writing so large models need not be held in memory twice).

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
            for name, shape, rel, size, data, _ in lay["entries"]:
                if rel > pos:
                    gap = b"\0" * (rel - pos)
                    f.write(gap)
                    crc_data = zlib.crc32(gap, crc_data)
                mv = _as_f32_bytes(data, size, name)
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

    def __repr__(self):
        return "TensorInfo(%s, shape=%s, offset=%d, size=%d)" % (self.name, self.shape, self.offset, self.size)


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
        t = self.tensors[name]
        start = self.header["data_off"] + t.offset
        return memoryview(self.buf)[start:start + t.size]

    def tensor(self, name):
        """Values of a tensor as a flat array('f') (row-major)."""
        a = array.array("f")
        a.frombytes(self.tensor_bytes(name))
        if sys.byteorder == "big":
            a.byteswap()
        return a

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
        _check(dtype in DTYPE_SIZES, "tensor entry %d: unknown dtype %d" % (i, dtype))
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
        numel = 1
        for d in shape:
            numel *= d
        _check(size == numel * DTYPE_SIZES[dtype], "tensor %s: size %d does not match shape %s" % (name, size, shape))
        _check(off % DATA_ALIGN == 0, "tensor %s: data offset %d is not a multiple of 64" % (name, off))
        _check(off + size <= data_size, "tensor %s runs past the data section" % name)
        tensors[name] = TensorInfo(name, dtype, shape, off, size)
        pos = entry_end
    _check(pos == end, "tensor table has %d bytes after its %d entries" % (end - pos, n_tensors))
    spans = sorted((t.offset, t.offset + t.size, t.name) for t in tensors.values() if t.size)
    for (a0, a1, an), (b0, b1, bn) in zip(spans, spans[1:]):
        _check(a1 <= b0, "tensors %s and %s overlap" % (an, bn))
    return LmvFile(buf, header, meta, meta_types, tensors)


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
        total += t.size // 4
        out.write("  %-40s %-18s @%d\n" % (t.name, list(t.shape), t.offset))
    out.write("  %d parameters\n" % total)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        sys.stderr.write("usage: lmvfile.py FILE.lmv   (validate and print a .lmv file)\n")
        return 2
    try:
        describe(read(argv[0]))
    except (LmvError, OSError) as e:
        sys.stderr.write("lmvfile: %s: %s\n" % (argv[0], e))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
