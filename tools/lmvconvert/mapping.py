"""Mapping files: users' own module names, tensor transforms."""

import itertools
import json
import re
from collections import OrderedDict
from .base import ConvertError
from .registry import MAPPING_BUILDERS
from .settings import coerce
from .tensors import Tensor, _is_int, _prod, concat0

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

