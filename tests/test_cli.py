"""The lmv command line: paths that are not files, --help for every command, option checking,
eval's folder-to-class mapping and its JSON, and that error paths free everything (LeakSanitizer).

Expected classes come from `lmv preprocess` + `lmv run` (argmax of the logits) on each picture,
never from eval itself."""
import json
import os
import stat
import subprocess
import sys

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import BUILD, LMV, ROOT, Results, run, save_npy, tmpdir  # noqa: E402

sys.path.insert(0, os.path.join(ROOT, "tools"))
import lmvfile  # noqa: E402

res = Results()
MODEL = os.path.join(ROOT, "examples", "lemevit_cifar10.lmv")
IMAGES = os.path.join(ROOT, "examples", "images")
CLASSIFY = os.path.join(os.path.dirname(LMV), "classify")
ASAN_LMV = os.path.join(BUILD, "asan", "lmv")
COMMANDS = ["info", "run", "bench", "gemm", "decode", "preprocess", "eval", "embed"]


def runb(args, timeout=120, env=None):
    """Run a command; stdout and stderr as text with undecodable bytes replaced."""
    p = subprocess.run(args, capture_output=True, timeout=timeout, env=env)
    return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")


def parse_json(out, err):
    """(the object, err) from a --json run's stdout, or (None, err with the parse error and the
    start of stdout added)."""
    try:
        return json.loads(out), err
    except ValueError as e:
        return None, err + f" (JSON: {e}: {out[:300]!r})"


def one_line(err):
    lines = [ln for ln in err.splitlines() if ln.strip()]
    return len(lines) == 1


def labels():
    lab = lmvfile.read(MODEL).meta["labels"]
    return lab.split("\n") if isinstance(lab, str) else list(lab)


# ---- 1. a directory or a FIFO where a file is expected ----

def not_files(d):
    folder = os.path.join(d, "photos")
    os.mkdir(folder)
    out = os.path.join(d, "out")
    cases = [
        ("lmv info DIR", [LMV, "info", folder], "a .lmv file"),
        ("lmv decode DIR", [LMV, "decode", folder, out + ".ppm"], "an image file"),
        ("lmv preprocess MODEL DIR", [LMV, "preprocess", MODEL, folder, out + ".npy"], "an image file"),
        ("lmv run MODEL DIR", [LMV, "run", MODEL, folder, out + ".npy"], "a .npy file"),
        ("lmv run DIR", [LMV, "run", folder, folder, out + ".npy"], "a .lmv file"),
        ("lmv eval DIR DIR", [LMV, "eval", folder, folder], "a .lmv file"),
        ("lmv bench DIR", [LMV, "bench", folder], "a .lmv file"),
        ("lmv embed DIR", [LMV, "embed", folder, out + ".c"], "the file to embed"),
        # classify reads through the library alone (plain C, no stat): its reader must say it too
        ("classify DIR IMAGE (library reader)", [CLASSIFY, folder, os.path.join(IMAGES, "cat.jpg")], "a .lmv file"),
    ]
    for name, args, kind in cases:
        code, _, err = runb(args)
        res.check(f"{name}: says it is a directory", code == 1 and "is a directory, not a file" in err and kind in err
                  and "out of memory" not in err and one_line(err), f"exit {code}: {err.strip()}")
    fifo = os.path.join(d, "pipe")
    os.mkfifo(fifo)
    for name, args in (("lmv info FIFO", [LMV, "info", fifo]), ("lmv decode FIFO", [LMV, "decode", fifo, out + ".ppm"]),
                       ("lmv embed FIFO", [LMV, "embed", fifo, out + ".c"])):
        try:
            code, _, err = runb(args, timeout=20)
        except subprocess.TimeoutExpired:
            code, err = None, "blocked opening the FIFO"
        res.check(f"{name}: says it is not a regular file", code == 1 and "not a regular file" in err and one_line(err),
                  f"exit {code}: {err.strip()}")
    if os.path.exists("/dev/zero") and stat.S_ISCHR(os.stat("/dev/zero").st_mode):
        code, _, err = runb([CLASSIFY, MODEL, "/dev/zero"], timeout=20)
        res.check("classify MODEL /dev/zero (library reader): not a regular file",
                  code == 1 and "not a regular file" in err and one_line(err), f"exit {code}: {err.strip()}")


# ---- 2. --help, unknown options, numbers out of range ----

def help_and_options(d):
    code, out, err = runb([LMV, "--help"])
    lines = out.splitlines()
    listed = {c: sum(1 for ln in lines if ln.startswith("  " + c + " ")) for c in COMMANDS}
    res.check("lmv --help lists every command on one line each", code == 0 and all(v == 1 for v in listed.values()),
              f"exit {code}, {listed}")
    for c in COMMANDS:
        for flag in ("--help", "-h"):
            code, out, err = runb([LMV, c, flag])
            res.check(f"lmv {c} {flag}", code == 0 and out.startswith(f"usage: lmv {c} ") and not err.strip(),
                      f"exit {code}: {(out + err).strip().splitlines()[0][:200] if (out + err).strip() else ''}")
    # --help anywhere after the command, even after other arguments
    code, out, _ = runb([LMV, "run", MODEL, "--threads", "2", "--help"])
    res.check("lmv run MODEL --threads 2 --help", code == 0 and out.startswith("usage: lmv run "), f"exit {code}")
    for c in COMMANDS:
        code, _, err = runb([LMV, c, "--bogus"])
        res.check(f"lmv {c} --bogus: unknown option, points at --help",
                  code == 2 and "unknown option '--bogus'" in err and f"lmv {c} --help" in err and one_line(err),
                  f"exit {code}: {err.strip()}")
    x = os.path.join(d, "x.npy")
    save_npy(x, np.zeros((1, 3, 32, 32)))
    y = os.path.join(d, "y.npy")
    bad = [
        ("run --threads -1", [LMV, "run", MODEL, x, y, "--threads", "-1"], "--threads"),
        ("run --threads two", [LMV, "run", MODEL, x, y, "--threads", "two"], "--threads"),
        ("run --threads (no value)", [LMV, "run", MODEL, x, y, "--threads"], "--threads needs a value"),
        ("bench --runs 0", [LMV, "bench", MODEL, "--runs", "0"], "--runs"),
        ("bench --batch 0", [LMV, "bench", MODEL, "--batch", "0"], "--batch"),
        ("bench --size 0 32", [LMV, "bench", MODEL, "--size", "0", "32"], "--size"),
        ("bench --size 32 (one value)", [LMV, "bench", MODEL, "--size", "32"], "--size"),
        ("gemm 0 4 4", [LMV, "gemm", "0", "4", "4"], "M"),
        ("gemm 4 4 -4", [LMV, "gemm", "4", "4", "-4"], "K"),
        ("gemm 4 4 4 --threads -3", [LMV, "gemm", "4", "4", "4", "--threads", "-3"], "--threads"),
        ("gemm 4 4 4 --dtype f64", [LMV, "gemm", "4", "4", "4", "--dtype", "f64"], "--dtype"),
        ("eval --threads 99999", [LMV, "eval", MODEL, d, "--threads", "99999"], "--threads"),
        ("run --attention without --trace", [LMV, "run", MODEL, x, y, "--attention", "blocks.0"], "--trace"),
        ("info with two models", [LMV, "info", MODEL, MODEL], "unexpected argument"),
        ("decode with one path", [LMV, "decode", os.path.join(IMAGES, "cat.jpg")], "IMAGE.jpg OUT.ppm"),
        ("embed --name 9lives", [LMV, "embed", MODEL, os.path.join(d, "e.c"), "--name", "9lives"], "identifier"),
    ]
    for name, args, want in bad:
        code, _, err = runb(args)
        res.check(f"lmv {name}: says what is wrong", code == 2 and want in err and one_line(err), f"exit {code}: {err.strip()}")
    code, _, err = runb([LMV, "frobnicate"])
    res.check("lmv frobnicate: unknown command", code == 2 and "unknown command" in err and one_line(err), err.strip())


# ---- 3. eval ----

def bench_threads():
    """lmv bench --threads N is a most unless --exact-threads; the JSON says which was asked."""
    for extra, want in (([], False), (["--exact-threads"], True)):
        code, out, err = runb([LMV, "bench", MODEL, "--threads", "2", "--runs", "2", "--json"] + extra)
        j, err = parse_json(out, err)
        res.check("lmv bench --threads 2 %s--json: exact_threads %s" % (" ".join(extra) + " " if extra else "",
                                                                          str(want).lower()),
                  code == 0 and j is not None and j.get("threads") == 2 and j.get("exact_threads") is want,
                  f"exit {code}: {err.strip()[-300:]}")


def make_pictures(d, n):
    """n small JPEGs with varied content, from a seeded generator (and the bundled two)."""
    rng = np.random.default_rng(7)
    out = [os.path.join(IMAGES, "cat.jpg"), os.path.join(IMAGES, "cat_32x32.jpg")]
    for i in range(n - 2):
        base = rng.integers(0, 256, size=(1, 1, 3))
        grad = np.linspace(0, 1, 48)[None, :, None] * rng.integers(-128, 128, size=(1, 1, 3))
        noise = rng.integers(-40, 40, size=(48, 48, 3))
        a = np.clip(base + grad + noise, 0, 255).astype(np.uint8)
        p = os.path.join(d, f"pic{i}.jpg")
        Image.fromarray(a).save(p, quality=90)
        out.append(p)
    return out


def top1(d, pictures):
    """The model's class for each picture, from lmv preprocess + lmv run."""
    xs = []
    for i, p in enumerate(pictures):
        q = os.path.join(d, f"pre{i}.npy")
        code, _, err = run([LMV, "preprocess", MODEL, p, q])
        if code != 0:
            raise RuntimeError(err)
        xs.append(np.load(q))
    x, y = os.path.join(d, "batch.npy"), os.path.join(d, "logits.npy")
    save_npy(x, np.concatenate(xs))
    code, _, err = run([LMV, "run", MODEL, x, y])
    if code != 0:
        raise RuntimeError(err)
    return [int(i) for i in np.load(y).argmax(1)]


def layout(root, folders):
    """folders: {name: [picture paths]} -> root/name/kN.jpg; returns {name: [copied paths]}."""
    os.makedirs(root)
    placed = {}
    for name, pics in folders.items():
        sub = os.path.join(root.encode() if isinstance(name, bytes) else root, name)
        os.mkdir(sub)
        placed[name] = []
        for k, p in enumerate(pics):
            ext = [".jpg", ".JPG", ".jpeg"][k % 3]
            q = os.path.join(sub, (f"k{k}{ext}".encode() if isinstance(name, bytes) else f"k{k}{ext}"))
            with open(p, "rb") as s, open(q, "wb") as t:
                t.write(s.read())
            placed[name].append(q)
    return placed


def expected(folders, cls_of, pred):
    """What eval must report, from the folders, each folder's class and the per-picture top-1."""
    names = list(folders)
    col = {cls_of[n]: i for i, n in enumerate(names)}
    images = correct = outside = 0
    conf = [[0] * len(names) for _ in names]
    out_of = [0] * len(names)
    for i, n in enumerate(names):
        for p in folders[n]:
            images += 1
            correct += pred[p] == cls_of[n]
            if pred[p] in col:
                conf[i][col[pred[p]]] += 1
            else:
                outside += 1
                out_of[i] += 1
    return images, correct, outside, conf, out_of


def evaluate(d):
    lab = labels()
    pics = make_pictures(d, 14)
    preds = top1(d, pics)
    pred_of = dict(zip(pics, preds))
    res.check("the pictures give more than one class", len(set(preds)) > 2, str(preds))

    # a subset of the classes, named after labels (one in another case), plus files eval must skip
    root = os.path.join(d, "subset")
    chosen = {"cat": pics[0:5], "Dog": pics[5:9], "airplane": pics[9:14]}
    placed = layout(root, chosen)
    for junk in ("notes.txt", "pic.bmp", ".hidden.jpg"):
        open(os.path.join(root, "Dog", junk), "wb").write(b"not a jpeg")
    open(os.path.join(root, "README"), "w").write("x")
    pred = {q: pred_of[p] for n in chosen for p, q in zip(chosen[n], placed[n])}
    tsv = os.path.join(d, "pred.tsv")
    code, out, err = runb([LMV, "eval", MODEL, root, "--json", "--predictions", tsv])
    j, err = parse_json(out, err)
    if res.check("eval on a subset named by labels: runs, valid JSON", code == 0 and j is not None, f"exit {code}: {err.strip()[-300:]}"):
        names = sorted(chosen)  # eval sorts the folders: Dog, airplane, cat
        cls_of = {n: lab.index(n.lower()) for n in names}
        images, correct, outside, conf, out_of = expected({n: placed[n] for n in names}, cls_of, pred)
        res.check("eval subset: folders take the labels' class indices",
                  j.get("mapping") == "labels" and [c.get("class") for c in j["classes"]] == [cls_of[n] for n in names]
                  and [c["name"] for c in j["classes"]] == names, str([(c["name"], c.get("class")) for c in j["classes"]]))
        res.check("eval subset: images, correct, accuracy over all images",
                  j["images"] == images == 14 and j["correct"] == correct and abs(j["accuracy"] - 100.0 * correct / images) < 1e-3,
                  f"got {j['images']}/{j['correct']}/{j['accuracy']}, want {images}/{correct}/{100.0 * correct / images:.4f}")
        res.check("eval subset: predictions outside the folders' classes counted",
                  j.get("outside") == outside and [c.get("outside") for c in j["classes"]] == out_of,
                  f"got {j.get('outside')} {[c.get('outside') for c in j['classes']]}, want {outside} {out_of}")
        res.check("eval subset: confusion matrix", j["confusion"] == conf, f"got {j['confusion']}, want {conf}")
        want_skip = sorted([os.path.join(root, "Dog", x) for x in ("notes.txt", "pic.bmp", ".hidden.jpg")] +
                           [os.path.join(root, "README")])
        res.check("eval subset: entries that are not JPEG or PNG listed as skipped",
                  j.get("skipped") == 4 and sorted(j.get("skipped_files", [])) == want_skip and "skipped 4 entries" in err,
                  f"{j.get('skipped')} {j.get('skipped_files')}; stderr {err.strip()[:300]}")
        rows = [ln.split("\t") for ln in open(tsv).read().splitlines()]
        res.check("eval subset: --predictions has the true class index and the top-1",
                  len(rows) == 14 and all(int(t) == cls_of[os.path.basename(os.path.dirname(p))] and int(q) == pred[p]
                                          for p, t, q in rows), str(rows[:3]))
    code, out, err = runb([LMV, "eval", MODEL, root])
    res.check("eval subset, text: accuracy and the outside count",
              code == 0 and "14 images, 3 classes" in out and ("outside the folders' classes" in out) == (outside > 0), out[:300])

    # names that are not labels, fewer folders than classes: refused
    root2 = os.path.join(d, "unnamed")
    layout(root2, {"first": pics[0:2], "second": pics[2:4]})
    code, out, err = runb([LMV, "eval", MODEL, root2, "--json"])
    res.check("eval: 2 folders not named after labels, 10 classes: refused", code == 2 and not out.strip() and one_line(err)
              and "not all labels" in err and "airplane" in err, f"exit {code}: {err.strip()}")

    # names that are not labels, one folder per class: sorted order, said so; odd names give valid JSON
    # b"cut\xe2\x82x": a UTF-8 sequence that breaks off, one U+FFFD as Python's decoder gives it
    # b"over\xc0\xaf", b"surr\xed\xa0\x80": an overlong form and a surrogate, one U+FFFD a byte (as classify's)
    odd = ['a"quote', "back\\slash", "tab\there", "ctl\x01x", "new\nline", "unicode\u00e9", b"bad\xffbyte",
           b"cut\xe2\x82x", b"over\xc0\xafx", b"surr\xed\xa0\x80x"]
    root3 = os.path.join(d, "sorted")
    folders = {n: [pics[(i * 3 + k) % len(pics)] for k in range(2)] for i, n in enumerate(odd)}
    placed3 = layout(root3, folders)
    code, out, err = runb([LMV, "eval", MODEL, root3, "--json"])
    j, err = parse_json(out, err)
    if res.check("eval: odd folder names give valid JSON", code == 0 and j is not None, f"exit {code}: {err.strip()[-400:]}"):
        order = sorted(odd, key=lambda n: n if isinstance(n, bytes) else n.encode())
        shown = [n.decode("utf-8", "replace") if isinstance(n, bytes) else n for n in order]
        res.check("eval: odd names round-trip through the JSON", [c["name"] for c in j["classes"]] == shown,
                  str([c["name"] for c in j["classes"]]))
        cls_of = {n: i for i, n in enumerate(order)}
        pred3 = {q: pred_of[p] for n in odd for p, q in zip(folders[n], placed3[n])}
        images, correct, outside, conf, _ = expected({n: placed3[n] for n in order}, cls_of, pred3)
        res.check("eval: folders not named after labels are classes 0..9 in sorted order",
                  j.get("mapping") == "sorted" and [c.get("class") for c in j["classes"]] == list(range(10)) and
                  j["images"] == images and j["correct"] == correct and j.get("outside") == 0 and j["confusion"] == conf,
                  f"got {j['images']}/{j['correct']}, want {images}/{correct}")
        res.check("eval: the sorted mapping is announced", "sorted order" in err and "-> 0 (airplane)" in err, err.strip()[:300])

    # nothing to evaluate
    root4 = os.path.join(d, "empty")
    os.makedirs(os.path.join(root4, "cat"))
    open(os.path.join(root4, "cat", "x.bmp"), "wb").write(b"bmp")
    code, out, err = runb([LMV, "eval", MODEL, root4])
    res.check("eval: no JPEGs or PNGs at all is an error, the skipped file named",
              code == 1 and "no JPEG or PNG files" in err and "x.bmp" in err,
              f"exit {code}: {err.strip()}")


# ---- 4. error paths free everything (LeakSanitizer) ----

def npy_bytes(header, data=b""):
    h = header.encode()
    h += b" " * ((64 - (10 + len(h) + 1) % 64) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(h).to_bytes(2, "little") + h + data


def leaks(d):
    if not res.check("build/asan/lmv present", os.path.exists(ASAN_LMV), "make build/asan/lmv"):
        return
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=0", UBSAN_OPTIONS="halt_on_error=1")
    f = os.path.join
    good = f(d, "good.npy")
    save_npy(good, np.zeros((1, 3, 32, 32)))
    crafted = {
        "wrong channels": npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1, 32, 32), }", bytes(4 * 1024)),
        "2-d array": npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 32), }", bytes(4 * 96)),
        "truncated data": npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 3, 32, 32), }", bytes(100)),
        "float64": npy_bytes("{'descr': '<f8', 'fortran_order': False, 'shape': (1, 3, 32, 32), }", bytes(8 * 3072)),
        "fortran order": npy_bytes("{'descr': '<f4', 'fortran_order': True, 'shape': (1, 3, 32, 32), }", bytes(4 * 3072)),
        "bad header": b"\x93NUMPY\x01\x00\x40\x00" + b"garbage" * 3,
        "not a npy": b"hello world, not numpy at all",
        "empty file": b"",
        "too small an image": npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 3, 2, 2), }", bytes(48)),
    }
    trunc_model = f(d, "trunc.lmv")
    with open(MODEL, "rb") as s:
        open(trunc_model, "wb").write(s.read()[:5000])
    notjpeg = f(d, "fake.jpg")
    open(notjpeg, "wb").write(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    refused = f(d, "refused")
    for n in ("x", "y"):
        os.makedirs(f(refused, n))
        with open(f(IMAGES, "cat_32x32.jpg"), "rb") as s:
            open(f(refused, n, "a.jpg"), "wb").write(s.read())
    broken = f(d, "broken")
    os.makedirs(f(broken, "cat"))
    open(f(broken, "cat", "bad.jpg"), "wb").write(b"\xff\xd8\xff\xdb broken")
    cases = []
    for name, data in crafted.items():
        p = f(d, name.replace(" ", "_") + ".npy")
        open(p, "wb").write(data)
        cases.append((f"run: {name} .npy", ["run", MODEL, p, f(d, "o.npy")], 1))
    cases += [
        ("run: output not writable", ["run", MODEL, good, f(d, "no", "such", "dir", "o.npy")], 1),
        ("run: --trace into a file", ["run", MODEL, good, f(d, "o.npy"), "--trace", f(d, "good.npy")], 1),
        ("run: truncated model", ["run", trunc_model, good, f(d, "o.npy")], 1),
        ("run: missing input", ["run", MODEL, f(d, "missing.npy"), f(d, "o.npy")], 1),
        ("run: bad --threads", ["run", MODEL, good, f(d, "o.npy"), "--threads", "-5"], 2),
        ("info: truncated model", ["info", trunc_model], 1),
        ("info: directory", ["info", d], 1),
        ("info: unknown option", ["info", "--nope"], 2),
        ("decode: not a JPEG", ["decode", notjpeg, f(d, "o.ppm")], 1),
        ("decode: output not writable", ["decode", f(IMAGES, "cat_32x32.jpg"), f(d, "no", "o.ppm")], 1),
        ("preprocess: not a JPEG", ["preprocess", MODEL, notjpeg, f(d, "o.npy")], 1),
        ("eval: folders that cannot be mapped", ["eval", MODEL, refused], 2),
        ("eval: a broken JPEG", ["eval", MODEL, broken], 1),
        ("eval: not a folder", ["eval", MODEL, good], 1),
        ("eval: predictions not writable", ["eval", MODEL, broken, "--predictions", f(d, "no", "p.tsv")], 1),
        ("embed: damaged model", ["embed", trunc_model, f(d, "o.c")], 1),
        ("embed: output not writable", ["embed", good, f(d, "no", "o.c")], 1),
    ]
    for name, args, want in cases:
        code, out, err = runb([ASAN_LMV, *args], env=env, timeout=300)
        leak = "LeakSanitizer" in err or "AddressSanitizer" in err or "runtime error" in err
        msg = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("[")]
        # eval's broken-JPEG case prints the image's error; the progress bar line is not a message
        res.check(f"asan lmv {name}: exit {want}, one message, no leak",
                  code == want and not leak and len(msg) == 1, f"exit {code}: {err.strip()[-600:]}")


def main():
    for need in (LMV, CLASSIFY, MODEL):
        if not res.check(f"{os.path.relpath(need, ROOT)} present", os.path.exists(need), "run make first"):
            res.finish()
    not_files(tmpdir())
    help_and_options(tmpdir())
    bench_threads()
    evaluate(tmpdir())
    leaks(tmpdir())
    res.finish()


if __name__ == "__main__":
    main()
