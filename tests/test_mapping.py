#!/usr/bin/env python3
"""Tests of the mapping files' tensor transforms (tools/convert.py "transform" rules, concat "axis")
and of the transform hints in shape errors.

Run with Debian's python3 (it has torch):   /usr/bin/python3 tests/test_mapping.py

The end-to-end check converts a from-scratch distilled DeiT (tests/models/scratch_deit.py) with
the shipped tools/mappings/scratch_deit.json and runs it with build/lmv against the PyTorch
module's own forward.  The unit checks compare each transform with numpy / torch doing the same.
Prints `PASS name` or `FAIL name: reason` per check and ends with `N passed, N failed`.
"""

import json
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "models"))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import common  # noqa: E402
import convert  # noqa: E402
import lmvfile  # noqa: E402
import scratch_deit  # noqa: E402
from convert_checks import expect, expect_error  # noqa: E402

MAPPING = os.path.join(ROOT, "tools", "mappings", "scratch_deit.json")
TMP = common.tmpdir()
torch.manual_seed(7)
torch.set_num_threads(1)
res = common.Results()


def check(name):
    def deco(fn):
        try:
            note = fn()
            res.check(name, True, note or "")
        except Exception as e:  # a failing check never stops the others
            res.check(name, False, "%s: %s" % (type(e).__name__, str(e).replace("\n", " ")[:500]))
        return fn
    return deco


def path(name):
    return os.path.join(TMP, name)


def conv(src, mapping, *args):
    """Convert in-process with a mapping file (a path, or a dict written to a file)."""
    if isinstance(mapping, dict):
        mp = path("map.json")
        with open(mp, "w") as f:
            json.dump(mapping, f)
        mapping = mp
    out = src + ".lmv"
    opts = convert.build_parser().parse_args([src, out, "--mapping", mapping] + [str(a) for a in args])
    convert.convert(src, out, opts, quiet=True)
    return out


def shipped():
    with open(MAPPING) as f:
        return json.load(f)


def deit_checkpoint():
    m = scratch_deit.build()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.2)
            if p.dim() == 1 and p.shape[0] > 1 and p.abs().mean() < 10:
                p.add_(1.0)   # LayerNorm weights around 1
    m.eval()
    fn = path("scratch_deit.pth")
    torch.save(m.state_dict(), fn)
    return m, fn


MODEL, CKPT = deit_checkpoint()


def tensor(a):
    """A converter Tensor holding the numpy array a (its dtype kept)."""
    a = np.ascontiguousarray(a)
    return convert.Tensor.from_bytes(a.dtype.name, a.shape, a.astype(a.dtype.newbyteorder("<")).tobytes())


def array(t):
    dt = np.dtype(t.dtype.name).newbyteorder("<")
    return np.frombuffer(t.raw(), dtype=dt).reshape(t.shape)


# ============================================================================ end to end

@check("scratch_deit.json converts a from-scratch DeiT (per-head q/k/v, nn.Embedding pos table, [in, out] "
       "Linear, (p1 p2 c) patches); build/lmv matches its PyTorch forward")
def _():
    out = conv(CKPT, MAPPING)
    f = lmvfile.read(out)
    M = f.meta
    expect(M["vit.dist_token"] == [1] and M["vit.class_token"] == [1] and M["vit.num_heads"] == [4], "tokens/heads")
    expect(M["vit.pos_grid"] == [8, 8] and M["source"] == "scratch_deit", "grid/source")
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        want = MODEL(x).numpy()
    got, _ = common.lmv_run(out, x.numpy())
    ok, desc = common.logits_close(got, want)
    expect(ok, desc)
    return desc


@check("the pure-Python path (no numpy) writes the same file")
def _():
    a, b = conv(CKPT, MAPPING), path("no_numpy.lmv")
    code, out, err = common.run([sys.executable, common.CONVERT, CKPT, "-o", b, "--mapping", MAPPING, "-q"],
                                env=dict(os.environ, LMV_NO_NUMPY="1"))
    expect(code == 0, err)
    with open(a, "rb") as fa, open(b, "rb") as fb:
        expect(fa.read() == fb.read(), "files differ")


# ============================================================================ each transform

@check("transform reshape (with -1), unsqueeze, squeeze (negative axes too) equal numpy's")
def _():
    a = np.random.RandomState(0).randn(6, 8).astype(np.float32)
    T = convert.transform_tensor
    expect(np.array_equal(array(T(tensor(a), "reshape", [2, -1, 4], "x")), a.reshape(2, -1, 4)), "reshape")
    expect(np.array_equal(array(T(tensor(a), "unsqueeze", 0, "x")), a[None]), "unsqueeze 0")
    expect(np.array_equal(array(T(tensor(a), "unsqueeze", -1, "x")), a[..., None]), "unsqueeze -1")
    expect(np.array_equal(array(T(tensor(a[:, None]), "squeeze", 1, "x")), a), "squeeze 1")
    expect(np.array_equal(array(T(tensor(a[None]), "squeeze", -3, "x")), a), "squeeze -3")
    # on a strided view (a transposed tensor, as torch pickles x.t())
    v = convert._permute(tensor(a), [1, 0])
    expect(not v.is_contiguous(), "view")
    expect(np.array_equal(array(T(v, "reshape", [4, 12], "x")), a.T.reshape(4, 12)), "reshape of a view")
    expect(np.array_equal(array(T(v, "unsqueeze", 1, "x")), a.T[:, None]), "unsqueeze of a view")


@check("transform transpose: a permutation of every axis, as numpy.transpose (also of f16 data)")
def _():
    a = np.random.RandomState(1).randn(2, 3, 4, 5).astype(np.float16)
    for perm in ([0, 3, 1, 2], [3, 2, 1, 0], [1, 0, 2, 3]):
        t = convert.transform_tensor(tensor(a), "transpose", perm, "x")
        expect(t.dtype.name == "float16", "dtype changed")
        expect(np.array_equal(array(t), np.transpose(a, perm)), "transpose %s" % perm)
    b = np.random.RandomState(2).randn(64, 128).astype(np.float32)
    expect(np.array_equal(array(convert.transform_tensor(tensor(b), "transpose", [1, 0], "x")), b.T), "2-D")


@check("transform split: pieces put back in another order, as torch.cat(torch.split(...)[order])")
def _():
    w = torch.randn(3 * 8, 5)                  # a fused k, q, v -> q, k, v
    want = torch.cat([w[8:16], w[0:8], w[16:24]], 0).numpy()
    got = convert.transform_tensor(tensor(w.numpy()), "split", {"parts": 3, "order": [1, 0, 2]}, "x")
    expect(np.array_equal(array(got), want), "parts along axis 0")
    w2 = torch.randn(5, 2, 9)
    pieces = torch.split(w2, [2, 3, 4], dim=-1)
    want = torch.cat([pieces[2], pieces[0], pieces[1]], -1).numpy()
    got = convert.transform_tensor(tensor(w2.numpy()), "split", {"sizes": [2, 3, 4], "order": [2, 0, 1], "axis": -1}, "x")
    expect(np.array_equal(array(got), want), "sizes along the last axis")
    h = np.random.RandomState(3).randn(6, 4).astype(np.float16)
    got = convert.transform_tensor(tensor(h), "split", {"parts": 2, "order": [1, 0]}, "x")
    expect(got.dtype.name == "float16" and np.array_equal(array(got), np.concatenate([h[3:], h[:3]])), "f16 kept")


@check("concat \"axis\": 1 joins [in, out] pieces, then a transpose gives the [out, in] Linear")
def _():
    parts = [torch.randn(6, 4) for _ in range(3)]
    loaded = {"a.q": tensor(parts[0].numpy()), "a.k": tensor(parts[1].numpy()), "a.v": tensor(parts[2].numpy())}
    mapping = {"concat": [{"inputs": ["^a\\.q$", "a.k", "a.v"], "output": "qkv", "axis": 1}],
               "transform": [{"key": "qkv", "transpose": [1, 0]}]}
    out, _, _ = convert.apply_mapping(loaded, mapping)
    want = torch.cat(parts, dim=1).t().numpy()
    expect(list(out) == ["qkv"] and np.array_equal(array(out["qkv"]), want), "joined %s" % list(out["qkv"].shape))


@check("transform rules run in order, after rename, and every rule must match a tensor")
def _():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    mapping = {"rename": [["^old$", "new"]],
               "transform": [{"key": "new", "transpose": [1, 0]}, {"key": "new", "unsqueeze": 0}]}
    out, _, _ = convert.apply_mapping({"old": tensor(a)}, mapping)
    expect(np.array_equal(array(out["new"]), a.T[None]), "order")
    expect_error(lambda: convert.apply_mapping({"old": tensor(a)}, {"transform": [{"key": "new", "squeeze": 0}]}),
                 "matched no tensor")


# ============================================================================ hints and refusals

def without(i):
    """The shipped mapping less its transform rule number i."""
    m = shipped()
    m["transform"] = [r for j, r in enumerate(m["transform"]) if j != i]
    return m


@check("shape errors suggest the transform: pos_embed [66, 64] -> \"unsqueeze\": 0")
def _():
    idx = [r["key"] for r in shipped()["transform"]].index("pos_embed")
    msg = expect_error(lambda: conv(CKPT, without(idx)), "pos_embed has shape [66, 64], expected [1, *, 64]",
                       'add {"key": "pos_embed", "unsqueeze": 0} to the mapping\'s "transform" list')
    # the suggestion, applied, converts
    m = without(idx)
    m["transform"].append({"key": "pos_embed", "unsqueeze": 0})
    conv(CKPT, m)
    return msg


@check("shape errors suggest transpose for a Linear stored [in, out], reshape for a flat token, and the "
       "operation to add to an existing rule")
def _():
    keys = [r["key"] for r in shipped()["transform"]]
    expect_error(lambda: conv(CKPT, without(keys.index("blocks\\.\\d+\\.mlp\\.fc1\\.weight"))),
                 "blocks.0.mlp.fc1.weight has shape [64, 128], expected [*, 64]",
                 '{"key": "blocks\\\\.\\\\d+\\\\.mlp\\\\.fc1\\\\.weight", "transpose": [1, 0]}')
    expect_error(lambda: conv(CKPT, without(keys.index("dist_token"))),
                 "dist_token has shape [64], expected [1, 1, 64]", '"reshape": [1, 1, 64]')
    m = shipped()
    m["transform"][keys.index("pos_embed")] = {"key": "pos_embed", "unsqueeze": 1}
    expect_error(lambda: conv(CKPT, m), "pos_embed has shape [66, 1, 64]",
                 'add "transpose": [1, 0, 2] to its rule in "transform"')


@check("a concatenation of [in, out] pieces gets the concat \"axis\": 1 hint; a size change gets no hint")
def _():
    D, hd = 64, 16
    sd = {k: v for k, v in MODEL.state_dict().items()}
    for k in list(sd):
        if ".attn.heads." in k and k.endswith(".weight"):
            sd[k] = sd[k].t().contiguous()      # [D, hd]: stored [in, out]
    fn = path("inout_heads.pth")
    torch.save(sd, fn)
    msg = expect_error(lambda: conv(fn, MAPPING), "blocks.0.attn.qkv.weight has shape [%d, %d]" % (12 * D, hd),
                       '"axis": 1', '"transpose": [1, 0]')
    expect("reshape" not in msg, msg)
    m = shipped()
    m["concat"][0]["axis"] = 1
    m["concat"][0]["inputs"][0] = m["concat"][0]["inputs"][0].replace("(weight|bias)", "(weight)")
    m["concat"].append(dict(shipped()["concat"][0], inputs=[shipped()["concat"][0]["inputs"][0].replace(
        "(weight|bias)", "(bias)")] + shipped()["concat"][0]["inputs"][1:]))
    m["transform"].append({"key": "blocks\\.\\d+\\.attn\\.qkv\\.weight", "transpose": [1, 0]})
    out = conv(fn, m)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = MODEL(x).numpy()
    got, _ = common.lmv_run(out, x.numpy())
    ok, desc = common.logits_close(got, want)
    expect(ok, "after following the hint: " + desc)
    # a table of another size: no transform fits, no hint
    sd2 = dict(MODEL.state_dict())
    sd2["pos_table.weight"] = torch.randn(66, 32)
    fn2 = path("bad_pos.pth")
    torch.save(sd2, fn2)
    msg = expect_error(lambda: conv(fn2, MAPPING), "pos_embed has shape [1, 66, 32], expected [1, *, 64]")
    expect(" add " not in msg, msg)
    return desc


@check("suggest_transforms: the fitting change, alternatives when several axis orders fit, none otherwise")
def _():
    S = convert.suggest_transforms
    for shape, want, sugg in (([66, 64], [1, None, 64], [("unsqueeze", 0)]),
                              ([1, 10], [10], [("squeeze", 0)]),
                              ([64, 128], [None, 64], [("transpose", [1, 0])]),
                              ([66, 1, 64], [1, None, 64], [("transpose", [1, 0, 2])]),
                              ([64], [1, 1, 64], [("reshape", [1, 1, 64])]),
                              ([3, 4, 5], [5, 3, 4], [("transpose", [2, 0, 1])]),
                              ([3, 4, 4], [4, 4, 3], [("transpose", [1, 2, 0]), ("transpose", [2, 1, 0])])):
        expect(S(shape, want) == sugg, "%s -> %s: %s" % (shape, want, S(shape, want)))
        # and each suggestion, applied by transform_tensor, gives a shape that fits
        for op, arg in sugg:
            got = convert.transform_tensor(tensor(np.zeros(shape, np.float32)), op, arg, "t").shape
            expect(len(got) == len(want) and all(w is None or w == g for w, g in zip(want, got)),
                   "%s %s on %s gives %s, not %s" % (op, arg, shape, list(got), want))
    expect(S([66, 32], [1, None, 64]) == [] and S([10, 10], [10, 11]) == [], "no fit")
    expect(S([1, 66, 32], [1, None, 64]) == [] and S([192], [1, None, 64]) == [],
           "a reshape that moves sizes around is never suggested")
    expect(S([1, 66, 64], [1, None, 64]) == [], "nothing for a shape that fits")
    # several orders: the message names them all
    ctx = convert.Context(None, None, None, None)
    ctx.mapping_state = {"transformed": set(), "concat_parts": {}}
    hint = convert.mapping_shape_hint(ctx, "t", (3, 4, 4), (4, 4, 3))
    expect('"transpose": [1, 2, 0]} to the mapping\'s "transform" list (or [2, 1, 0], by how it is stored)' in hint, hint)


@check("transforms that do not fit the tensor are refused: element count, axis range, permutation, pieces")
def _():
    a = tensor(np.zeros((66, 64), np.float32))
    T = convert.transform_tensor
    for op, arg, words in (("reshape", [1, 65, 64], ["holds 4160 elements, the tensor has 4224"]),
                           ("reshape", [1, -1, 100], ["do not fill"]),
                           ("unsqueeze", 3, ["axis 3 is out of range (-3..2)"]),
                           ("squeeze", 0, ["axis 0 has size 66, not 1"]),
                           ("squeeze", -3, ["axis -3 is out of range (-2..1)"]),
                           ("transpose", [0, 0], ["each of the 2 axes once"]),
                           ("transpose", [2, 1, 0], ["each of the 2 axes once"]),
                           ("split", {"parts": 4, "order": [0, 1, 2, 3]}, ["not a multiple of 4 parts"]),
                           ("split", {"sizes": [60, 5], "order": [1, 0]}, ["add up to 65, axis 0 has size 66"]),
                           ("split", {"parts": 2, "order": [1, 1]}, ['"order" must list each of the 2 pieces']),
                           ("split", {"parts": 2, "order": [1, 0], "axis": 2}, ["axis 2 is out of range"])):
        expect_error(lambda: T(a, op, arg, "pos_embed"), "pos_embed [66, 64]", json.dumps(op), *words)
    # through a mapping file: the checkpoint's tensor, named after rename
    m = shipped()
    m["transform"].append({"key": "pos_embed", "reshape": [1, 65, 64]})
    expect_error(lambda: conv(CKPT, m), "mapping transform of pos_embed [1, 66, 64]", "4160")


@check("malformed transform rules are refused when the mapping file is read")
def _():
    for rules, words in (({"k": 1}, ['"transform" is a list']),
                         ([{"unsqueeze": 0}], ['{"key": regex']),
                         ([{"key": "x"}], ["has no operation"]),
                         ([{"key": "x", "flip": 0}], ["unknown operation 'flip'"]),
                         ([{"key": "x", "reshape": [-1, -1]}], ['"reshape" must be a list of sizes']),
                         ([{"key": "x", "unsqueeze": True}], ['"unsqueeze" must be an axis']),
                         ([{"key": "x", "squeeze": "0"}], ['"squeeze" must be an axis']),
                         ([{"key": "x", "transpose": 1}], ['"transpose" must be the new order']),
                         ([{"key": "x", "split": {"parts": 2}}], ['"split" must be']),
                         ([{"key": "x", "split": {"parts": 2, "sizes": [1, 1], "order": [0, 1]}}], ['"split" must be']),
                         ([{"key": "(", "squeeze": 0}], ["bad regex"])):
        mp = path("bad_transform.json")
        with open(mp, "w") as f:
            json.dump({"transform": rules}, f)
        expect_error(lambda: convert.load_mapping(mp), *words)
    with open(mp, "w") as f:
        json.dump({"concat": [{"inputs": ["a", "b"], "output": "c", "axis": "1"}]}, f)
    expect_error(lambda: convert.load_mapping(mp), '"axis" is an integer')


@check("README's transform example is a valid rule list and does what its prose says")
def _():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    start = text.index('```json\n"transform": [')
    block = text[start + len("```json\n"):text.index("```", start + 8)]
    rules = json.loads("{" + block + "}")["transform"]
    for r in rules:
        convert._check_transform_rule(r, "README")
    split = [r for r in rules if "split" in r][0]["split"]
    kqv = torch.randn(3 * 4, 2)
    got = convert.transform_tensor(tensor(kqv.numpy()), "split", split, "qkv")
    expect(np.array_equal(array(got), torch.cat([kqv[4:8], kqv[0:4], kqv[8:]]).numpy()), "k, q, v -> q, k, v")


@check("convert.py --help documents transform rules")
def _():
    code, out, err = common.run([sys.executable, common.CONVERT, "--help"])
    for w in ('"transform"', '"unsqueeze"', '"transpose"', '"split"', '"reshape"', '"squeeze"'):
        expect(w in out, "help lacks %s" % w)


res.finish()
