#!/usr/bin/env python3
"""tools/convert.py against hostile checkpoint files, and the meta ranges it shares with the loader.

Run with Debian's python3 (torch builds the seed checkpoints):  /usr/bin/python3 tests/test_convert_hostile.py

* regressions: small crafted files (pickle, zip and safetensors bombs, malformed entries, config.json
  with wrong types) each end in the converter's one-line error naming the problem;
* a mutation fuzzer (fixed seed, fixed number of cases) over pickles, zip archives and safetensors
  headers: every input ends in a conversion or a clean one-line error, never an internal error or a
  traceback, under an address-space limit and a per-case alarm;
* tools/lmvfile.py's META_RULES against the C loader: files written at and just past every bound,
  `build/lmv info` refuses exactly the values the table refuses.

The converter runs in a worker process (this script with --worker, which never imports torch)
started with RLIMIT_AS set; the worker forks once per case, so each case is its own process.
Prints `PASS name` / `FAIL name: reason` per check and ends with `N passed, N failed`.
"""

import json
import os
import signal
import struct
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))

MEMORY_LIMIT = 1536 << 20   # RLIMIT_AS of the converter processes
CASE_ALARM = 10             # seconds one case may run before SIGALRM ends it
# a fixed seed and count in the suite; LMV_FUZZ_SEED / LMV_FUZZ_CASES explore further by hand
FUZZ_SEED = int(os.environ.get("LMV_FUZZ_SEED", "20261204"))
FUZZ_CASES = int(os.environ.get("LMV_FUZZ_CASES", "150"))


# ------------------------------------------------------------------------------------ the worker

def worker():
    """Read [[case_id, argv], ...] as JSON on stdin; run convert.main(argv) in a forked child per
    case (stdout discarded, stderr kept, SIGALRM after CASE_ALARM s); print one JSON line per case:
    {"id", "rc" (exit status or null), "signal" (or null), "stderr"}."""
    import tempfile
    import convert
    cases = json.load(sys.stdin)
    errfile = tempfile.mktemp(prefix="lmv-hostile-err-")
    for cid, argv in cases:
        pid = os.fork()
        if pid == 0:
            try:
                null = os.open(os.devnull, os.O_WRONLY)
                fd = os.open(errfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                os.dup2(null, 1)
                os.dup2(fd, 2)
                signal.alarm(CASE_ALARM)
                try:
                    rc = convert.main(argv)
                except SystemExit as e:
                    rc = e.code if isinstance(e.code, int) else 2
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(rc if isinstance(rc, int) else 0)
            except BaseException:
                import traceback
                traceback.print_exc()
                sys.stderr.flush()
                os._exit(99)
        _, status = os.waitpid(pid, 0)
        try:
            with open(errfile, "r", errors="replace") as f:
                err = f.read(4000)
        except OSError:
            err = ""
        res = {"id": cid, "rc": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
               "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None, "stderr": err}
        sys.stdout.write(json.dumps(res) + "\n")
        sys.stdout.flush()
    try:
        os.unlink(errfile)
    except OSError:
        pass
    return 0


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    sys.exit(worker())

# ------------------------------------------------------------------------------ the tests proper

import io  # noqa: E402
import pickle  # noqa: E402
import random  # noqa: E402
import resource  # noqa: E402
import zipfile  # noqa: E402
from collections import OrderedDict  # noqa: E402

import torch  # noqa: E402
import torch._utils  # noqa: E402
import torchvision  # noqa: E402

import lmvfile  # noqa: E402
from common import Results, tmpdir, LMV  # noqa: E402

R = Results()
TMP = tmpdir()
torch.manual_seed(7)


def path(name):
    return os.path.join(TMP, name)


def _limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def run_cases(cases):
    """cases: list of (id, argv for convert.py).  Runs them in the worker; returns id -> result."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.path.join(ROOT, "tools")
    p = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker"], input=json.dumps(cases),
                       capture_output=True, text=True, env=env, preexec_fn=_limit_memory,
                       timeout=60 + CASE_ALARM * len(cases))
    out = {}
    for line in p.stdout.splitlines():
        if line.startswith("{"):
            r = json.loads(line)
            out[r["id"]] = r
    for cid, _ in cases:
        if cid not in out:
            out[cid] = {"id": cid, "rc": None, "signal": None,
                        "stderr": "worker ended early (exit %s): %s" % (p.returncode, p.stderr[-500:])}
    return out


def clean(res):
    """A conversion, or the converter's own one-line error (never a traceback or internal error)."""
    err = res["stderr"]
    if res["rc"] == 0:
        return True
    return (res["rc"] in (1, 2) and err.count("\n") == 1 and err.startswith("convert.py: error: ")
            and "internal error" not in err and "Traceback" not in err)


def describe(res):
    if res["signal"] is not None:
        return "killed by signal %d%s" % (res["signal"], " (alarm: ran too long)" if res["signal"] == signal.SIGALRM else "")
    return "exit %s, stderr %r" % (res["rc"], res["stderr"][-600:])


# ------------------------------------------------------------------------------ file builders

def torch_bytes(t):
    return t.detach().contiguous().numpy().tobytes()


def tv_state_dict():
    m = torchvision.models.vision_transformer.VisionTransformer(image_size=16, patch_size=8, num_layers=1,
                                                                num_heads=2, hidden_dim=16, mlp_dim=32,
                                                                num_classes=5)
    return m.state_dict()


class StorageRef(object):
    def __init__(self, key, numel, cls=None):
        self.key, self.numel, self.cls = key, numel, cls or torch.FloatStorage


class TensorRef(object):
    """Pickles as torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...), with any
    values (torch itself never writes inconsistent ones)."""

    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, size, stride, False, OrderedDict())

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, self.args


class TorchLikePickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, StorageRef):
            return ("storage", obj.cls, obj.key, "cpu", obj.numel)
        return None


class FakeModule(object):
    """Pickles as mymodels.Net (an nn.Module-like stub for the converter) with any state."""

    def __init__(self, state):
        self.state = state

    def __reduce__(self):
        return FakeNet, (), self.state


FakeNet = type("Net", (), {"__module__": "mymodels", "__qualname__": "Net"})
sys.modules.setdefault("mymodels", type(sys)("mymodels")).Net = FakeNet


def crafted_pkl(obj):
    buf = io.BytesIO()
    TorchLikePickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def write_zip(name, members, compress=None):
    """members: list of (arcname, bytes); compress: arcname -> zipfile method (default stored)."""
    fn = path(name)
    with zipfile.ZipFile(fn, "w") as z:
        for arc, data in members:
            z.writestr(zipfile.ZipInfo(arc), data, (compress or {}).get(arc, zipfile.ZIP_STORED))
    return fn


def patch_zip(fn, arcname, method=None, flags_or=0, crc_xor=0, corrupt_data=False):
    """Edit the local header and the central directory entry of member `arcname` in place."""
    b = bytearray(open(fn, "rb").read())
    name = arcname.encode()
    pos = 0
    while True:
        pos = b.find(b"PK\x01\x02", pos)
        if pos < 0:
            break
        nlen = struct.unpack_from("<H", b, pos + 28)[0]
        if bytes(b[pos + 46:pos + 46 + nlen]) == name:
            local = struct.unpack_from("<I", b, pos + 42)[0]
            for base, fl, me, cr in ((pos, 8, 10, 16), (local, 6, 8, 14)):
                struct.pack_into("<H", b, base + fl, struct.unpack_from("<H", b, base + fl)[0] | flags_or)
                if method is not None:
                    struct.pack_into("<H", b, base + me, method)
                struct.pack_into("<I", b, base + cr, struct.unpack_from("<I", b, base + cr)[0] ^ crc_xor)
            if corrupt_data:
                lnlen, lxlen = struct.unpack_from("<HH", b, local + 26)
                start = local + 30 + lnlen + lxlen
                for i in range(start, start + 8):
                    b[i] ^= 0xA5
        pos += 4
    open(fn, "wb").write(bytes(b))
    return fn


def torch_zip_members(sd, top="m"):
    """(arcname, bytes) of a torch.save zip of `sd`, renamed under `top/`."""
    buf = io.BytesIO()
    torch.save(sd, buf)
    out = []
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as z:
        for n in z.namelist():
            out.append((top + "/" + n.split("/", 1)[1], z.read(n)))
    return out


def safetensors_bytes(header, data=b""):
    h = json.dumps(header).encode() if not isinstance(header, bytes) else header
    h += b" " * ((8 - len(h) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + data


def st_header(sd):
    header, blobs, off = OrderedDict(), [], 0
    for k, t in sd.items():
        b = torch_bytes(t.float())
        header[k] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    return header, b"".join(blobs)


def hf_state_dict(sd):
    """The Hugging Face ViT names of a torchvision ViT state dict (q, k, v split)."""
    out = OrderedDict()
    p = "vit."
    out[p + "embeddings.cls_token"] = sd["class_token"]
    out[p + "embeddings.position_embeddings"] = sd["encoder.pos_embedding"]
    out[p + "embeddings.patch_embeddings.projection.weight"] = sd["conv_proj.weight"]
    out[p + "embeddings.patch_embeddings.projection.bias"] = sd["conv_proj.bias"]
    s, d = "encoder.layers.encoder_layer_0.", p + "encoder.layer.0."
    for a, b in (("ln_1", "layernorm_before"), ("ln_2", "layernorm_after"), ("self_attention.out_proj",
                 "attention.output.dense"), ("mlp.0", "intermediate.dense"), ("mlp.3", "output.dense")):
        out[d + b + ".weight"] = sd[s + a + ".weight"]
        out[d + b + ".bias"] = sd[s + a + ".bias"]
    w, bb = sd[s + "self_attention.in_proj_weight"], sd[s + "self_attention.in_proj_bias"]
    D = w.shape[1]
    for j, nm in enumerate(("query", "key", "value")):
        out[d + "attention.attention.%s.weight" % nm] = w[j * D:(j + 1) * D].clone()
        out[d + "attention.attention.%s.bias" % nm] = bb[j * D:(j + 1) * D].clone()
    out[p + "layernorm.weight"] = sd["encoder.ln.weight"]
    out[p + "layernorm.bias"] = sd["encoder.ln.bias"]
    out["classifier.weight"] = sd["heads.head.weight"]
    out["classifier.bias"] = sd["heads.head.bias"]
    return out


def raw(name, data):
    fn = path(name)
    with open(fn, "wb") as f:
        f.write(data)
    return fn


# ------------------------------------------------------------------------------ regressions

SD = tv_state_dict()
HEADS = ["--num-heads", "2"]   # the width-16 test model's heads (not stored in torchvision files)


def regressions():
    """(label, file, extra args, words the error must contain, or None when it must convert)."""
    cases = []

    def case(label, fn, want, *args):
        cases.append((label, fn, list(args), want))

    # 3. amplification: sizes that come from the file
    case("pickle bytearray(2**30) is refused, not built",
         raw("bytearray.pkl", b"\x80\x02c__builtin__\nbytearray\nJ\x00\x00\x00@\x85R."), ["bytearray(int)"])
    case("pickle bytes(2**30) (protocol 3 builtins.bytes) is refused",
         raw("bytes.pkl", b"\x80\x03cbuiltins\nbytes\nJ\x00\x00\x00@\x85R."), ["bytes(int)"])
    case("pickle memo index 2**31 (LONG_BINPUT) is refused before unpickling",
         raw("memo.pkl", b"\x80\x02K\x01r\xff\xff\xff\x7f."), ["memo index"])
    dag = b"\x80\x02K\x01\x85q\x00"   # t0 = (1,); t_i = (t_{i-1}, t_{i-1}); {t_59: 1}
    for i in range(1, 60):
        dag += b"h" + bytes([i - 1]) + b"h" + bytes([i - 1]) + b"\x86q" + bytes([i])
    case("pickle of shared tuples hashed as a dict key (2**60 nodes in 400 bytes) is refused",
         raw("dag.pkl", dag + b"}h" + bytes([59]) + b"K\x01s."), ["pickle bomb"])
    lst = b"\x80\x02]q\x00"           # l_i = [l_{i-1}, l_{i-1}]: a 2**40-node tree, never built
    for i in range(1, 41):
        lst += b"]q" + bytes([i]) + b"(h" + bytes([i - 1]) + b"h" + bytes([i - 1]) + b"e0"
    case("pickle of shared lists (an endless repr) is refused", raw("listdag.pkl", lst + b"h\x28."), ["pickle bomb"])
    case("pickle str() of a list (a repr of the file's choosing) is refused",
         raw("str.pkl", b"\x80\x02c__builtin__\nstr\n]\x85R."), ["refusing", "str(list)"])
    big = b"\x80\x02]q\x00(" + b"h\x00" * 500000 + b"e."
    case("a 1 MB pickle of 500000 references converts no further than a clean error, within the memory limit",
         raw("refs.pkl", big), ["holds a list", "not a dict of weights"])
    head = TensorRef(StorageRef("0", 4), 0, (1000, 100000), (0, 0))
    fn = write_zip("broadcast.pth", [("m/data.pkl", crafted_pkl({"head.weight": head})),
                                     ("m/data/0", b"\0" * 16), ("m/version", b"3\n")])
    case("a stride-0 tensor 25 million times its storage is refused", fn, ["broadcast", "--allow-broadcast"])
    case("... and --allow-broadcast lets it through to the next check", fn, ["unknown checkpoint layout"],
         "--allow-broadcast", "--dry-run")
    big_storage = TensorRef(StorageRef("0", 1 << 28), 0, (1 << 28,), (1,))
    fn = write_zip("declared.pth", [("m/data.pkl", crafted_pkl({"w": big_storage})),
                                    ("m/data/0", b"\0" * 64), ("m/version", b"3\n")])
    case("a storage of 2**28 floats in a 64-byte record is refused before reading", fn,
         ["has 64 bytes but its tensors need 1073741824"])
    n = 16 << 20
    t = TensorRef(StorageRef("0", n // 4), 0, (n // 4,), (1,))
    fn = write_zip("inflate.pth", [("m/data.pkl", crafted_pkl({"w": t})), ("m/data/0", bytes(n)),
                                   ("m/version", b"3\n")], {"m/data/0": zipfile.ZIP_DEFLATED})
    case("a deflated storage record inflating 1000 times over (zip bomb) is refused", fn, ["inflates", "zip bomb"])
    # 4. errors that used to escape as internal errors
    case("_codecs.encode with an unknown codec",
         raw("codec.pkl", b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\x07\x00\x00\x00nocodec\x86R."),
         ["_codecs.encode", "encoding"])
    case("_codecs.encode with a bytes-to-bytes codec (zlib)",
         raw("codec2.pkl", b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\x04\x00\x00\x00zlib\x86R."),
         ["_codecs.encode", "zlib"])
    members = torch_zip_members(SD)
    pkl = [m[0] for m in members if m[0].endswith("data.pkl")][0]
    store = max((m for m in members if "/data/" in m[0]), key=lambda m: len(m[1]))[0]   # random values
    case("zip compression method 99 (AES)", patch_zip(write_zip("m99.pth", members), pkl, method=99),
         ["compression method 99"])
    case("an encrypted zip entry", patch_zip(write_zip("enc.pth", members), pkl, flags_or=1), ["encrypted"])
    case("corrupt deflate data in data.pkl",
         patch_zip(write_zip("deflate.pth", members, {pkl: zipfile.ZIP_DEFLATED}), pkl, corrupt_data=True),
         ["cannot read record", "data.pkl"])
    case("corrupt deflate data in a storage record",
         patch_zip(write_zip("deflate2.pth", members, {store: zipfile.ZIP_DEFLATED}), store, corrupt_data=True),
         ["cannot read record", store], *HEADS)
    case("a bad CRC in a storage record", patch_zip(write_zip("crc.pth", members), store, crc_xor=0x1234),
         ["cannot read record", "CRC"], *HEADS)
    header, data = st_header(SD)
    k0 = list(header)[0]
    for label, val in (("floats", [0.0, 4.0]), ("strings", ["0", "4"]), ("a bool", [False, 4]), ("one number", 4)):
        h = json.loads(json.dumps(header))
        h[k0]["data_offsets"] = val
        case("safetensors data_offsets as %s" % label, raw("off_%s.safetensors" % label[:3], safetensors_bytes(h, data)),
             ["data_offsets", "not a list of two integers"])
    case("safetensors header JSON nested 100000 deep",
         raw("deep.safetensors", safetensors_bytes(b'{"a": ' + b"[" * 100000 + b"]" * 100000 + b"}")),
         ["nested too deeply"])
    h = json.loads(json.dumps(header))
    h[k0]["dtype"] = ["F32"]
    case("safetensors dtype as a list", raw("dtl.safetensors", safetensors_bytes(h, data)), ["dtype", "not a string"])
    # 6. silently accepted nonsense
    ks = list(header)
    h = json.loads(json.dumps(header))
    e0 = h[ks[1]]["data_offsets"][1]
    ln = h[ks[2]]["data_offsets"][1] - h[ks[2]]["data_offsets"][0]
    h[ks[2]]["data_offsets"] = [e0 - 4, e0 - 4 + ln]   # its own length, starting inside the tensor before
    case("overlapping safetensors ranges", raw("overlap.safetensors", safetensors_bytes(h, data)), ["share bytes"])
    for label, shape in (("strings", ["16", "3"]), ("floats", [16.0, 3.5])):
        h = json.loads(json.dumps(header))
        h[k0]["shape"] = shape
        case("safetensors shape as %s" % label, raw("shape_%s.safetensors" % label[:3], safetensors_bytes(h, data)),
             ["shape", "not a list of integers"])
    six = StorageRef("0", 6)
    for label, size, stride, words in (
            ("a stride tuple longer than the shape", (2, 3), (3, 1, 1), ["3 strides", "2-dimensional"]),
            ("a shape of strings", ("2", "3"), (3, 1), ["shape", "not a list of integers"]),
            ("a shape of floats", (2.0, 3.0), (3, 1), ["shape", "not a list of integers"]),
            ("a float storage offset", (2, 3), (3, 1), ["storage offset"])):
        t = TensorRef(six, 0.5 if "offset" in label else 0, size, stride)
        fn = write_zip("layout_%d.pth" % len(cases), [("m/data.pkl", crafted_pkl({"w": t})),
                                                      ("m/data/0", bytes(24)), ("m/version", b"3\n")])
        case("pickled tensor with %s" % label, fn, words)
    for label, state, words in (
            ("a slot state that is a list", ({"_parameters": {}, "_modules": {}}, [1]), ["holds a mymodels.Net"]),
            ("_parameters that is a list", {"_parameters": [1], "_modules": {}, "_buffers": 3}, ["no weights found"]),
            ("_non_persistent_buffers_set that is a number",
             {"_parameters": {}, "_modules": {}, "_buffers": {"b": TensorRef(StorageRef("0", 4), 0, (4,), (1,))},
              "_non_persistent_buffers_set": 5}, ["unknown checkpoint layout", "b [4]"])):
        fn = write_zip("mod_%d.pth" % len(cases), [("m/data.pkl", crafted_pkl(FakeModule(state))),
                                                   ("m/data/0", bytes(16)), ("m/version", b"3\n")])
        case("a pickled module with %s" % label, fn, words)
    # 5. config.json values the library would refuse, or of the wrong type
    hf = hf_state_dict(SD)
    for label, cfg, words in (
            ("image_size -32", {"image_size": -32}, ["config.json", "img_size[0] is -32"]),
            ("layer_norm_eps NaN", {"layer_norm_eps": float("nan")}, ["config.json", "vit.norm_eps is NaN"]),
            ("layer_norm_eps a list", {"layer_norm_eps": [1e-6]}, ["config.json", "layer_norm_eps"]),
            ("num_attention_heads a string", {"num_attention_heads": "two"}, ["config.json", "num_attention_heads"]),
            ("hidden_act a list", {"hidden_act": ["gelu"]}, ["config.json", "hidden_act"]),
            ("image_size a dict", {"image_size": {"h": 16}}, ["config.json", "image_size"]),
            ("nested 100000 deep", {"x": json.loads("[" * 900 + "]" * 900)}, ["config.json", "nested too deeply"])):
        d = path("hf_%d" % len(cases))
        os.makedirs(d)
        hh, dd = st_header(hf)
        fn = os.path.join(d, "model.safetensors")
        with open(fn, "wb") as f:
            f.write(safetensors_bytes(hh, dd))
        with open(os.path.join(d, "config.json"), "w") as f:
            text = json.dumps(dict({"num_attention_heads": 2, "image_size": 16}, **cfg))
            f.write(text.replace("[" * 900 + "]" * 900, "[" * 100000 + "]" * 100000))
        case("config.json %s" % label, fn, words)
    hh, dd = st_header(hf)
    d = path("hf_ok")
    os.makedirs(d)
    fn = os.path.join(d, "model.safetensors")
    with open(fn, "wb") as f:
        f.write(safetensors_bytes(hh, dd))
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump({"num_attention_heads": 2, "image_size": 16, "layer_norm_eps": 1e-6}, f)
    case("control: the same Hugging Face file with a sane config.json converts", fn, None)
    case("control: the torchvision zip the zip cases are made from converts",
         write_zip("tv_ok.pth", members), None, *HEADS)
    return cases


def test_regressions():
    cases = regressions()
    argv = [(i, [fn, path("reg%d.lmv" % i), "-q"] + args) for i, (_, fn, args, _) in enumerate(cases)]
    res = run_cases(argv)
    for i, (label, fn, args, want) in enumerate(cases):
        r = res[i]
        if want is None:
            R.check(label, r["rc"] == 0, describe(r))
            continue
        err = r["stderr"]
        missing = [w for w in want if w.lower() not in err.lower()]
        R.check(label, clean(r) and r["rc"] == 1 and not missing,
                describe(r) + (" (missing %s)" % missing if missing else ""))


# ------------------------------------------------------------------------------ the fuzzer

def mutate_bytes(rng, b, protect=0):
    b = bytearray(b)
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(6)
        if len(b) <= protect + 1:
            break
        i = rng.randrange(protect, len(b))
        if kind == 0:
            b[i] ^= 1 << rng.randrange(8)
        elif kind == 1:
            b[i] = rng.choice([0, 0xFF, 0x7F, 0x80, ord("("), ord("R"), ord("."), ord("h"), ord("r"), ord("J")])
        elif kind == 2:
            j = min(len(b), i + rng.randint(1, 16))
            b[i:i] = b[i:j]
        elif kind == 3:
            del b[i:i + rng.randint(1, 8)]
        elif kind == 4:
            b[i:i] = bytes(rng.choice([b"r\xff\xff\xff\x7f", b"J\x00\x00\x00@", b"\x85R", b"t", b"s", b"e", b"0", b"2"]))
        else:
            del b[i:]
    return bytes(b)


WEIRD = [None, True, -1, 0, 2 ** 40, -2 ** 63, 1.5, float("inf"), "x", "", [], [[]], {}, {"a": 1}, [1, 2, 3],
         ["1", "2"], [1.0, 2.0], [-5, 10 ** 20]]


def mutate_json(rng, obj):
    """Replace one value anywhere in a parsed JSON document with a weird one."""
    obj = json.loads(json.dumps(obj))
    spots = []

    def walk(o):
        if isinstance(o, dict):
            for k in o:
                spots.append((o, k))
                walk(o[k])
        elif isinstance(o, list):
            for i in range(len(o)):
                spots.append((o, i))
                walk(o[i])
    walk(obj)
    if spots:
        o, k = rng.choice(spots)
        o[k] = rng.choice(WEIRD)
    return obj


def fuzz_inputs():
    rng = random.Random(FUZZ_SEED)
    members = torch_zip_members(SD)
    pkl_name = [m[0] for m in members if m[0].endswith("data.pkl")][0]
    leg = io.BytesIO()
    torch.save(SD, leg, _use_new_zipfile_serialization=False)
    leg = leg.getvalue()
    zip_bytes = open(write_zip("fuzz_seed.pth", members), "rb").read()
    header, data = st_header(SD)
    hdr = json.dumps(header).encode()
    files = []
    for i in range(FUZZ_CASES):
        kind = i % 5
        if kind == 0:      # data.pkl mutated, archive rebuilt around it
            m = [(n, mutate_bytes(rng, d, 2) if n == pkl_name else d) for n, d in members]
            fn = write_zip("fz%03d.pth" % i, m, {n: rng.choice([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]) for n, _ in m})
        elif kind == 1:    # the archive's own bytes mutated (headers, directory, data)
            fn = raw("fz%03d.pth" % i, mutate_bytes(rng, zip_bytes, 4))
        elif kind == 2:    # legacy torch.save: pickles then raw storages
            fn = raw("fz%03d.pth" % i, mutate_bytes(rng, leg, 1))
        elif kind == 3:    # safetensors header: a value replaced
            fn = raw("fz%03d.safetensors" % i, safetensors_bytes(mutate_json(rng, header), data))
        else:              # safetensors header: bytes mutated, length field kept or not
            h = mutate_bytes(rng, hdr)
            body = struct.pack("<Q", len(h)) + h + data
            if rng.random() < 0.3:
                body = mutate_bytes(rng, body[:8]) + body[8:]
            fn = raw("fz%03d.safetensors" % i, body)
        files.append(fn)
    return files


def test_fuzz():
    files = fuzz_inputs()
    cases = [(i, [fn, path("fz%d.lmv" % i), "-q"] + HEADS) for i, fn in enumerate(files)]
    res = run_cases(cases)
    bad = [(files[i], describe(res[i])) for i, _ in cases if not clean(res[i])]
    converted = sum(1 for i, _ in cases if res[i]["rc"] == 0)
    R.check("fuzz: %d mutated pickles, zips and safetensors headers (seed %d) all end cleanly under a %d MB "
            "address-space limit" % (len(files), FUZZ_SEED, MEMORY_LIMIT >> 20), not bad,
            "%d converted, the rest clean errors" % converted if not bad else
            "%d bad, first: %s: %s" % (len(bad), os.path.basename(bad[0][0]), bad[0][1]))


# ------------------------------------------------------------------------------ meta ranges vs the loader

def f32_next(x, up):
    """The next float32 above (up) or below x (a float32 value)."""
    if x == 0.0:
        tiny = struct.unpack("<f", struct.pack("<I", 1))[0]
        return tiny if up else -tiny
    bits = struct.unpack("<I", struct.pack("<f", x))[0]
    bits += 1 if (x > 0) == up else -1
    return struct.unpack("<f", struct.pack("<I", bits))[0]


BASE_COMMON = [("arch", "vit"), ("name", "t"), ("in_chans", 3), ("img_size", [32, 32]), ("num_classes", 0),
               ("pre.resize", 0), ("pre.crop", [32, 32]), ("pre.crop_pct", 1.0), ("pre.interp", "bicubic"),
               ("pre.mean", [0.5, 0.5, 0.5]), ("pre.std", [0.5, 0.5, 0.5])]
BASE = {
    # no tensors: the ViT and LeMeViT loaders check every meta value before their first tensor
    "vit": ([("vit.embed_dim", 4096), ("vit.depth", 0), ("vit.num_heads", 1), ("vit.mlp_hidden", 1),
             ("vit.patch_size", [8, 8]), ("vit.pos_grid", [4, 4]), ("vit.class_token", 1), ("vit.class_last", 0),
             ("vit.dist_token", 0), ("vit.reg_tokens", 0), ("vit.no_embed_class", 0), ("vit.norm_first", 1),
             ("vit.pre_logits", 0), ("vit.norm_eps", 1e-6), ("vit.attn_scale", 0.0), ("vit.act", "gelu"),
             ("vit.pool", "token"), ("vit.pos_interp", "bicubic"), ("vit.block", "pre"), ("vit.mlp", "mlp"),
             ("vit.pool_prefix", 0), ("vit.proj", 0), ("vit.abs_pos", 1), ("vit.rel_pos", "none"),
             ("vit.rope", "axial"), ("vit.rope_temperature", 10000.0), ("vit.rope_ref_grid", [16, 16]),
             ("vit.rope_offset", 0.0), ("vit.rope_indexing", "ij"), ("vit.rope_half", 0),
             ("vit.rel_mlp", "cr"), ("vit.parallel", 1), ("vit.norm", "layer"), ("vit.map_heads", 1)], []),
    # Swin reads the per-stage values after the patch embedding: give it that
    "swin": ([("swin.embed_dim", 8), ("swin.depths", [0]), ("swin.num_heads", [1]), ("swin.mlp_hidden", [1]),
              ("swin.window_size", 4), ("swin.patch_size", 4), ("swin.norm_eps", 1e-5),
              ("swin.pad_mode", "pad_then_roll"), ("swin.shift_rule", "per_axis"), ("swin.version", 1),
              ("swin.pretrained_window", [0]), ("swin.window_from", "input")],
             [("patch_embed.proj.weight", (8, 3, 4, 4), bytes(4 * 384)), ("patch_embed.proj.bias", (8,), bytes(32)),
              ("patch_embed.norm.weight", (8,), bytes(32)), ("patch_embed.norm.bias", (8,), bytes(32))]),
    "lemevit": ([("lemevit.attn_types", "C"), ("lemevit.depths", [0]), ("lemevit.embed_dims", [32]),
                 ("lemevit.mlp_hidden", [1]), ("lemevit.head_dim", 32), ("lemevit.num_meta", 1),
                 ("lemevit.norm_eps", 1e-6), ("lemevit.meta_eps", 1e-5), ("lemevit.bn_eps", 1e-5),
                 ("lemevit.post_norm", 0)], []),
}


def base_meta(arch):
    meta = OrderedDict(BASE_COMMON)
    meta["arch"] = arch
    meta.update(BASE[arch][0])
    return meta, BASE[arch][1]


def probe_values(key, r, base):
    """(label, value) pairs at and just past each bound of rule r; base is the key's base value."""
    out = []
    t = r["type"]
    n = len(base) if isinstance(base, list) else 0

    def put(v, idx=0):
        if not n:
            return v
        vals = list(base)
        vals[idx] = v
        return vals

    if t in ("int", "float"):
        idxs = [0] if n <= 1 else [0, n - 1]
        for idx in idxs:
            for bound, is_lo in ((r["lo"], True), (r["hi"], False)):
                if bound is None:
                    continue
                if t == "int":
                    vals = [bound, bound - 1 if is_lo else bound + 1]
                else:
                    b = struct.unpack("<f", struct.pack("<f", bound))[0]
                    vals = [b, f32_next(b, not is_lo), f32_next(b, is_lo)]
                for v in vals:
                    out.append(("[%d]=%r" % (idx, v), put(v, idx)))
            if t == "float":
                out.append(("[%d]=nan" % idx, put(float("nan"), idx)))
        if r["loader_count"]:
            lo, hi = r["count"]
            fill = base[0] if n else base
            for c in (lo, lo - 1, hi, hi + 1):
                if c >= 0:
                    out.append(("%d values" % c, [fill] * c))
    else:
        for c in r["choices"] or ():
            out.append((repr(c), c))
        out.append(("'bogus'", "bogus"))
        if r["letters"]:
            lo, hi = r["count"]
            for c in (lo, lo - 1, hi, hi + 1):
                out.append(("%d letters" % c, r["letters"][0] * c))
            out.append(("'CDES'[:%d]" % min(hi, 4), r["letters"][:min(hi, 4)]))
            out.append(("a bad letter", "X"))
    return out


def typed(r, v):
    if r["type"] == "float":
        return lmvfile.Typed(lmvfile.T_FLOAT32, v if isinstance(v, list) else [v])
    if r["type"] == "int":
        return lmvfile.Typed(lmvfile.T_INT32, v if isinstance(v, list) else [v])
    return v


def loader_verdict(fn, key, r):
    p = subprocess.run([LMV, "info", fn], capture_output=True, text=True)
    msg = (p.stdout + p.stderr).replace(fn, "FILE")
    refused = p.returncode != 0 and (r["loader_msg"] or key) in msg
    return refused, msg.strip()


def test_meta_rules():
    if not os.path.exists(LMV):
        R.check("META_RULES agree with the loader", False, "%s is not built (make build/lmv)" % LMV)
        return
    # the base files: the loader refuses them only for a missing tensor, naming no meta key
    for arch in BASE:
        meta, tensors = base_meta(arch)
        fn = path("base.lmv")
        lmvfile.write(fn, list(meta.items()), tensors)
        p = subprocess.run([LMV, "info", fn], capture_output=True, text=True)
        msg = (p.stdout + p.stderr).replace(fn, "FILE")
        R.check("base %s file: meta accepted by the loader (it stops at a missing tensor)" % arch,
                "is missing from the weight file" in msg and not any(k in msg for k in lmvfile.META_RULES),
                msg.strip())
        R.check("base %s file: every meta value within META_RULES" % arch,
                all(lmvfile.check_meta_value(k, v) is None for k, v in meta.items()))
    n = 0
    mismatches = []
    unchecked_but_refused = []
    for key, r in lmvfile.META_RULES.items():
        arch = r["arch"] or "vit"
        meta, tensors = base_meta(arch)
        if key not in meta:
            continue
        for label, v in probe_values(key, r, meta[key]):
            m = OrderedDict(meta)
            m[key] = typed(r, v)
            fn = path("probe.lmv")
            lmvfile.write(fn, list(m.items()), tensors)
            refused, msg = loader_verdict(fn, key, r)
            py_refuses = lmvfile.check_meta_value(key, v) is not None
            n += 1
            if r["loader"] and refused != py_refuses:
                mismatches.append("%s %s: table %s, loader %s (%s)" % (key, label, "refuses" if py_refuses else "accepts",
                                                                     "refuses" if refused else "accepts", msg))
            if not r["loader"] and refused:
                unchecked_but_refused.append("%s %s: %s" % (key, label, msg))
    R.check("META_RULES agree with `lmv info` on every key at and just past each bound (%d files)" % n,
            not mismatches, "; ".join(mismatches[:6]))
    R.check("keys marked loader=False are indeed not checked by the loader (flip the flag when it starts to)",
            not unchecked_but_refused, "; ".join(unchecked_but_refused[:6]))
    covered = set(k for k, r in lmvfile.META_RULES.items() if k in base_meta(r["arch"] or "vit")[0])
    missing = [k for k, r in lmvfile.META_RULES.items() if r["loader"] and k not in covered]
    R.check("every loader-checked key has a base file to probe it", not missing, ", ".join(missing))


def test_converter_uses_table():
    """The converter refuses (before writing) a value the table refuses, whatever its source."""
    fn = write_zip("tv_for_set.pth", torch_zip_members(SD))
    cases = [(0, [fn, path("set0.lmv"), "-q", "--set", "vit.norm_eps=1.5"] + HEADS),
             (1, [fn, path("set1.lmv"), "-q", "--eps", "nan"] + HEADS),
             (2, [fn, path("set2.lmv"), "-q", "--set", "vit.attn_scale=1e7"] + HEADS),
             (3, [fn, path("set3.lmv"), "-q", "--set", "pre.std=-1,1,1"] + HEADS)]
    res = run_cases(cases)
    for i, word in ((0, "vit.norm_eps is 1.5"), (1, "vit.norm_eps is NaN"), (2, "vit.attn_scale"), (3, "pre.std[0]")):
        r = res[i]
        R.check("converter refuses %s before writing" % " ".join(cases[i][1][3:5]),
                clean(r) and r["rc"] == 1 and word in r["stderr"] and not os.path.exists(cases[i][1][1]), describe(r))


def main():
    test_regressions()
    test_converter_uses_table()
    test_meta_rules()
    test_fuzz()
    R.finish()


if __name__ == "__main__":
    main()
