"""Rebuild catalogue.json from a checkout of timm (huggingface/pytorch-image-models); run against a timm
checkout, never by the tests:

    python3 tests/data/timm/make_catalogue.py PATH/TO/pytorch-image-models [COMMIT]

For every @register_model function of the modules below it records the architecture name, its module,
the keyword arguments it passes to the model class (the `model_args` dict merged with any keywords of the
create call, as JSON values; layers and functions by their source text, e.g. "nn.GELU",
"partial(LayerNorm, eps=1e-05)") and the facts of its default pretrained config (input_size, mean, std,
interpolation, num_classes, crop_pct) from the module's `_cfg` and `default_cfgs`. Only Python's ast reads
the source: nothing of timm is imported or run."""
import ast
import json
import os
import subprocess
import sys

MODULES = ["vision_transformer", "eva", "beit", "swin_transformer", "swin_transformer_v2"]
CFG_KEYS = ["input_size", "mean", "std", "interpolation", "num_classes", "crop_pct"]


class Unknown(Exception):
    pass


def literal(node, names):
    """A JSON value for an expression: literals, tuples, names bound in `names`, simple arithmetic;
    anything else (layers, partials) raises Unknown."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.Tuple, ast.List)):
        return [literal(e, names) for e in node.elts]
    if isinstance(node, ast.Dict):
        return {literal(k, names): literal(v, names) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.Name) and node.id in names:
        return names[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -literal(node.operand, names)
    if isinstance(node, ast.BinOp):
        a, b = literal(node.left, names), literal(node.right, names)
        ops = {ast.Add: lambda: a + b, ast.Sub: lambda: a - b, ast.Mult: lambda: a * b, ast.Div: lambda: a / b}
        if type(node.op) in ops:
            return ops[type(node.op)]()
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("pop", "get") \
            and isinstance(node.func.value, ast.Name) and node.func.value.id == "kwargs" and len(node.args) == 2:
        return literal(node.args[1], names)  # kwargs.pop('global_pool', 'token'): the default
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("tuple", "list") \
            and len(node.args) == 1:
        return list(literal(node.args[0], names))
    raise Unknown(ast.unparse(node))


def value(node, names):
    try:
        return literal(node, names)
    except Unknown:
        return ast.unparse(node)


def constants(root):
    """The module-level constants of timm/data/constants.py (mean / std tuples)."""
    tree = ast.parse(open(os.path.join(root, "timm", "data", "constants.py")).read())
    names = {}
    for st in tree.body:
        if isinstance(st, ast.Assign) and len(st.targets) == 1 and isinstance(st.targets[0], ast.Name):
            try:
                names[st.targets[0].id] = literal(st.value, names)
            except Unknown:
                pass
    return names


def cfg_defaults(tree, names):
    """The dict `_cfg(url='', **kwargs)` returns, without the kwargs."""
    for st in tree.body:
        if isinstance(st, ast.FunctionDef) and st.name == "_cfg":
            for sub in ast.walk(st):
                if isinstance(sub, ast.Return) and isinstance(sub.value, ast.Dict):
                    return {k.value: value(v, names) for k, v in zip(sub.value.keys, sub.value.values) if k is not None}
    return {}


def default_cfgs(tree, names, base):
    """{architecture: its default pretrained cfg}, choosing the default tag as timm's
    generate_default_cfgs does (an untagged or '*' entry with weights first, else the first with weights,
    else the first)."""
    table = None
    for st in tree.body:
        if isinstance(st, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "default_cfgs" for t in st.targets):
            node = st.value
            if isinstance(node, ast.Call):  # generate_default_cfgs({...})
                node = node.args[0]
            if isinstance(node, ast.Dict):
                table = node
                break
    out, chosen = {}, {}
    if table is None:
        return out
    for k, v in zip(table.keys, table.values):
        if k is None or not isinstance(k, ast.Constant):
            continue
        arch, _, tag = k.value.partition(".")
        cfg = dict(base)
        if isinstance(v, ast.Call):
            for kw in v.keywords:
                if kw.arg is not None:
                    cfg[kw.arg] = value(kw.value, names)
            if v.args:
                cfg["url"] = value(v.args[0], names)
        has_weights = bool(cfg.get("url") or cfg.get("hf_hub_id") or cfg.get("file"))
        rank = 0 if (has_weights and not tag) or tag.endswith("*") else 1 if has_weights else 2
        if arch not in chosen or rank < chosen[arch][0]:
            chosen[arch] = (rank, tag.strip("*"), cfg)
    for arch, (_, tag, cfg) in chosen.items():
        facts = {key: cfg[key] for key in CFG_KEYS if key in cfg}
        facts["tag"] = tag
        out[arch] = facts
    return out


def is_registered(fn):
    return any((isinstance(d, ast.Name) and d.id == "register_model") or
               (isinstance(d, ast.Call) and isinstance(d.func, ast.Name) and d.func.id == "register_model")
               for d in fn.decorator_list)


def model_args(fn, names):
    """(create function, kwargs): the model_args dict (or dicts, later keys winning) merged with the
    create call's own keywords."""
    args, create = {}, None
    for st in ast.walk(fn):
        if isinstance(st, ast.Assign) and len(st.targets) == 1 and isinstance(st.targets[0], ast.Name) \
                and st.targets[0].id == "model_args":
            v = st.value
            if isinstance(v, ast.Call) and isinstance(v.func, ast.Name) and v.func.id == "dict":
                for kw in v.keywords:
                    if kw.arg is not None:
                        args[kw.arg] = value(kw.value, names)
            elif isinstance(v, ast.Dict):
                args.update(literal(v, names))
    for st in ast.walk(fn):
        if isinstance(st, ast.Call) and isinstance(st.func, ast.Name) and st.func.id.startswith("_create"):
            create = st.func.id
            for kw in st.keywords:
                if kw.arg is not None and kw.arg != "pretrained":
                    args[kw.arg] = value(kw.value, names)
            break
    return create, args


def main():
    root = sys.argv[1]
    commit = sys.argv[2] if len(sys.argv) > 2 else subprocess.run(
        ["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    names = constants(root)
    archs = []
    for mod in MODULES:
        tree = ast.parse(open(os.path.join(root, "timm", "models", mod + ".py")).read())
        base = cfg_defaults(tree, names)
        cfgs = default_cfgs(tree, names, base)
        for fn in tree.body:
            if isinstance(fn, ast.FunctionDef) and is_registered(fn):
                create, args = model_args(fn, names)
                archs.append({"name": fn.name, "module": mod, "create": create, "model_args": args,
                              "pretrained_cfg": cfgs.get(fn.name, {k: base[k] for k in CFG_KEYS if k in base})})
    out = {"source": "https://github.com/huggingface/pytorch-image-models", "commit": commit,
           "licence": "Apache-2.0 (see LICENSE in this folder)", "modules": MODULES, "architectures": archs}
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "catalogue.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print(f"{len(archs)} architectures -> {path}")


if __name__ == "__main__":
    main()
