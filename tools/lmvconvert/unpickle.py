"""Safe unpickling: a restricted pickle.Unpickler that only builds local stubs."""

import array
import pickle
import pickletools
import struct
from collections import OrderedDict
from .base import ConvertError, _short
from .tensors import (Storage, Tensor, _STORAGE_DTYPES, _TORCH_DTYPE_NAMES, _checked_layout, _contiguous_strides, _dtype, _is_int)

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


