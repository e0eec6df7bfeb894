"""Checkpoint readers (torch zip, torch legacy, plain pickle, safetensors) and finding the
weights in them (wrapper dicts, EMA copies, pickled nn.Modules, key prefixes)."""

import io
import json
import re
import struct
import zipfile
import zlib
from collections import OrderedDict
from .base import ConvertError, _short
from .tensors import Storage, Tensor, _SAFETENSORS_DTYPES, _checked_layout, _dtype, _is_int, _prod
from .unpickle import Opaque, _NpArray, _StorageType, safe_unpickle

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
    info = {"path": [], "ema_available": False, "args": None, "pretrained_cfg": None, "prefixes": [], "ignored": []}
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
        if info["pretrained_cfg"] is None:
            for k in ("pretrained_cfg", "default_cfg"):
                if isinstance(obj.get(k), dict) and obj[k] and not _tensor_items(obj[k]):
                    info["pretrained_cfg"] = dict(obj[k])
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


