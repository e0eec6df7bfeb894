"""build/classify as a command-line program: --help, usage errors, --json (JSON Lines) against the
plain text output, folders (walked recursively, in sorted order) against the same files listed,
failed images (an error object, exit 1), and the folder case once more under ASan/UBSan with leak
detection. Runs the bundled CIFAR-10 model on the bundled pictures: a few seconds."""
import json
import os
import re
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import BIN, BUILD, ROOT, Results, tmpdir  # noqa: E402

res = Results()
CLASSIFY = os.path.join(BIN, "classify")
ASAN_CLASSIFY = os.path.join(BUILD, "asan", "classify")
MODEL = os.path.join(ROOT, "examples", "lemevit_cifar10.lmv")
IMAGES = os.path.join(ROOT, "examples", "images")
PHOTOS = sorted(os.path.join(IMAGES, f) for f in os.listdir(IMAGES) if f.endswith(".jpg"))
PNG_PHOTO = os.path.join(ROOT, "tests", "data", "images", "photos", "chelsea.png")  # CC0, as tests/data/README.md says
LABELS = open(os.path.join(ROOT, "examples", "cifar10_labels.txt")).read().split()
SANITIZER_MARKS = ("AddressSanitizer", "LeakSanitizer", "UndefinedBehaviorSanitizer", "runtime error:")


def classify(*args, exe=CLASSIFY, env=None):
    """(exit status, stdout bytes, stderr text): stdout stays bytes, since file names need not be UTF-8."""
    p = subprocess.run([exe, *args], capture_output=True, env=env)
    return p.returncode, p.stdout, p.stderr.decode("utf-8", "replace")


def json_lines(out, what):
    """Every stdout line through json.loads; a failed check naming `what` and [] when a line is not
    a JSON object (or the bytes are not UTF-8)."""
    objs, lines = [], out.split(b"\n")  # JSON Lines: "\n" ends each line, nothing else does
    try:
        if lines.pop():
            raise ValueError("the output does not end with a newline")
        for line in lines:
            obj = json.loads(line.decode("utf-8"))
            if not isinstance(obj, dict):
                raise ValueError(f"not an object: {line!r}")
            objs.append(obj)
    except ValueError as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        res.check(f"{what}: every --json line parses with json.loads", False, str(e))
        return []
    return objs


def parse_text(out):
    """[(path, [(percent, label), ...]), ...] from the plain text output."""
    result = []
    for line in out.decode("utf-8").splitlines():
        m = re.match(r"^(\S.*) \(([\d.]+) ms\)$", line)
        if m:
            result.append((m.group(1), []))
        elif result and line.startswith("  "):
            pct, label = line.strip().split("%", 1)
            result[-1][1].append((float(pct), label.strip()))
    return result


def without_times(out):
    """Output with the per-image times taken out, to compare two runs."""
    out = re.sub(rb" \([\d.]+ ms\)\n", b"\n", out)
    return re.sub(rb', "ms": [\d.]+\}', b"}", out)


def check_help_and_usage():
    for flag in ("--help", "-h"):
        code, out, err = classify(flag)
        res.check(f"classify {flag}: usage on stdout, exit 0", code == 0 and out.startswith(b"usage: classify")
                  and b"--json" in out and b"--top" in out, f"exit {code}, stdout {out[:60]!r}, stderr {err[:80]!r}")
    code, out, err = classify(MODEL, PHOTOS[0], "--help")
    res.check("--help after other arguments still prints usage, exit 0", code == 0 and out.startswith(b"usage:"),
              f"exit {code}")
    for value in ("0", "-2", "abc", "65", "3x"):
        code, out, err = classify(MODEL, PHOTOS[0], "--top", value)
        res.check(f"--top {value}: exit 2 naming the option and the value",
                  code == 2 and "--top" in err and f"'{value}'" in err and not out, f"exit {code}, stderr {err!r}")
    code, out, err = classify(MODEL, PHOTOS[0], "--top")
    res.check("--top without a value: exit 2, says so", code == 2 and "--top needs" in err, f"exit {code}, {err!r}")
    code, out, err = classify(MODEL, PHOTOS[0], "--threads", "many")
    res.check("--threads many: exit 2 naming the value", code == 2 and "'many'" in err, f"exit {code}, {err!r}")
    code, out, err = classify(MODEL, PHOTOS[0], "--frobnicate")
    res.check("an unknown option: exit 2 naming it", code == 2 and "'--frobnicate'" in err, f"exit {code}, {err!r}")
    code, out, err = classify(MODEL)
    res.check("a model and no images: exit 2, says no images", code == 2 and "no images" in err, f"exit {code}, {err!r}")
    code, out, err = classify()
    res.check("no arguments: usage on stderr, exit 2", code == 2 and err.startswith("usage:"), f"exit {code}")
    # the options there were before keep working, anywhere after the model
    code, out, err = classify(MODEL, "--top", "3", PHOTOS[0], "--threads", "1", "--ignore-exif")
    got = parse_text(out)
    res.check("--top 3 --threads 1 --ignore-exif between the images still work",
              code == 0 and len(got) == 1 and len(got[0][1]) == 3, f"exit {code}, {err!r}")


def check_json_matches_text():
    code_t, out_t, err_t = classify(MODEL, *PHOTOS, "--top", "5")
    code_j, out_j, err_j = classify(MODEL, *PHOTOS, "--top", "5", "--json")
    if not res.check("text and --json runs on the bundled pictures exit 0", code_t == 0 and code_j == 0,
                     f"exit {code_t}/{code_j}: {err_t} {err_j}"):
        return
    objs = json_lines(out_j, "the bundled pictures")
    res.check("every --json line parses with json.loads", len(objs) == len(PHOTOS), f"{len(objs)} lines")
    text = parse_text(out_t)
    for (path, rows), obj in zip(text, objs):
        name = os.path.basename(path)
        top = obj.get("top", [])
        ok = (obj.get("path") == path and len(top) == len(rows) == 5 and isinstance(obj.get("ms"), float)
              and set(obj) == {"path", "top", "ms"})
        res.check(f"{name}: the JSON object has path, top (5 rows), ms", ok, repr(obj)[:200])
        if not ok:
            continue
        res.check(f"{name}: top-1 index and label match the text output",
                  top[0]["label"] == rows[0][1] and top[0]["index"] == LABELS.index(rows[0][1]),
                  f"json {top[0]}, text {rows[0]}")
        same = all(t["label"] == label and f"{100.0 * t['prob']:6.2f}".strip() == f"{pct:.2f}"
                   and t["index"] == LABELS.index(t["label"]) for t, (pct, label) in zip(top, rows))
        res.check(f"{name}: every row's label, index and probability match the text output", same,
                  f"json {top}, text {rows}")
    # all the classes: the probabilities are printed with enough digits to add back up to 1
    code, out, err = classify(MODEL, PHOTOS[0], "--top", "64", "--json")
    objs = json_lines(out, "--top 64") if code == 0 else []
    probs = [t["prob"] for t in objs[0]["top"]] if objs else []
    res.check("--top 64 --json: every class once, probabilities sum to 1 within float rounding",
              sorted(t["index"] for t in objs[0]["top"]) == list(range(len(LABELS)))
              and abs(sum(probs) - 1.0) < 1e-6 and probs == sorted(probs, reverse=True) if objs else False,
              f"exit {code}, sum {sum(probs)!r}")
    raw = re.findall(rb'"prob": ([^,}]+)', out)
    res.check("probabilities printed with 9 significant digits (round-trip a float)",
              raw and all(len(re.sub(rb"[^0-9]", b"", r.split(b"e")[0]).lstrip(b"0")) >= 8 for r in raw[:3]),
              repr(raw[:3]))


def shown(paths):
    """File names as --json must give them: each ill-formed piece of UTF-8 one U+FFFD, the way
    Python's own decoder replaces it (the reference, not the program's escaper)."""
    return [p.decode("utf-8", "replace") for p in paths]


def make_folder():
    """A tree of pictures under awkward names, the non-image entries, and the files it holds."""
    root = os.path.join(tmpdir(), "photos")
    cat, small = PHOTOS[0], PHOTOS[-1]
    files = {
        "a/cat.jpg": cat,
        "a/b/c/deep.jpeg": small,
        "UPPER.JPG": small,
        "no_extension": cat,                      # a JPEG by its signature
        'qu"o\\te.jpg': cat,                      # a quote and a backslash
        "caf\u00e9 \u732b.jpg": small,            # UTF-8
        "tab\tand\nnewline.jpg": small,           # control characters
        os.fsdecode(b"latin1-\xe9t\xe9.jpg"): cat,  # not UTF-8: one U+FFFD a byte
        os.fsdecode(b"cut-\xe2\x82.jpg"): small,   # a UTF-8 sequence that breaks off: one U+FFFD
        os.fsdecode(b"over-\xc0\xaf.jpg"): small,  # an overlong form, a surrogate, past U+10FFFF: one U+FFFD
        os.fsdecode(b"surr-\xed\xa0\x80.jpg"): small,  # a byte, as tools/lmv.c's escaper (test_cli) too
        os.fsdecode(b"big-\xf4\x90\x80\x80.jpg"): small,
        "a/b-side.jpg": small,                    # sorts between a/b/... and a/cat.jpg
        "a/b/kitten.png": PNG_PHOTO,              # a PNG by its name
        "png_no_extension": PNG_PHOTO,            # a PNG by its signature
    }
    for rel, src in files.items():
        os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
        shutil.copy(src, os.path.join(root, rel))
    with open(os.path.join(root, "a", "notes.txt"), "w") as f:
        f.write("not a picture\n")
    os.symlink("..", os.path.join(root, "a", "b", "loop"))  # a link to a folder: not followed
    os.makedirs(os.path.join(root, "empty", "sub"))
    want = sorted(os.fsencode(os.path.join(root, rel)) for rel in files)
    return root, want


def check_folder(root, want):
    code_d, out_d, err_d = classify(MODEL, root, "--json", "--top", "3")
    code_f, out_f, err_f = classify(MODEL, *want, "--json", "--top", "3")
    if not res.check("a folder and the same files listed: both exit 0", code_d == 0 and code_f == 0,
                     f"exit {code_d}/{code_f}: {err_d!r} {err_f!r}"):
        return
    objs = json_lines(out_d, "the folder")
    got = [o["path"] for o in objs]
    res.check("the folder gives every JPEG and PNG under it, recursively, in sorted order (bytes that are not UTF-8 "
              "as Python's decode(errors='replace') shows them)",
              got == shown(want), "" if got == shown(want) else f"got {got}, want {shown(want)}")
    same = without_times(out_d) == without_times(out_f)
    res.check("the folder gives the same results as listing the files", same,
              "" if same else f"folder {out_d[:300]!r}, files {out_f[:300]!r}")
    res.check("the non-image entries are counted on stderr, one line",
              "skipped 2 entries that are not JPEG or PNG images" in err_d and err_d.count("skipped") == 1, repr(err_d))
    text_d = classify(MODEL, root, "--top", "3")[1]
    text_f = classify(MODEL, *want, "--top", "3")[1]
    res.check("plain text: the folder prints what the files print", without_times(text_d) == without_times(text_f)
              and text_d.count(b" ms)\n") == len(want), f"folder {text_d[:200]!r}, files {text_f[:200]!r}")
    # a trailing slash does not double in the paths printed
    objs_slash = json_lines(classify(MODEL, root + "/", "--json")[1], "trailing slash")
    res.check("a folder given with a trailing slash prints dir/name paths",
              [o["path"] for o in objs_slash] == shown(want), repr([o["path"] for o in objs_slash][:2]))
    code, out, err = classify(MODEL, os.path.join(root, "empty"), "--json")
    res.check("a folder without JPEGs: says so, exit 1", code == 1 and "no JPEG or PNG images" in err and not out,
              f"exit {code}, {err!r}")

    if not os.path.exists(ASAN_CLASSIFY):
        res.check("ASan build present", False, "make build/asan/classify")
        return
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1", UBSAN_OPTIONS="print_stacktrace=1")
    code, out, err = classify(MODEL, root, "--json", "--top", "3", exe=ASAN_CLASSIFY, env=env)
    clean = not any(m in err for m in SANITIZER_MARKS)
    top1 = [o["top"][0]["index"] for o in json_lines(out, "ASan folder")] if code == 0 else []
    res.check("ASan/UBSan build over the folder: exit 0, no sanitizer report, the same top-1",
              code == 0 and clean and top1 == [o["top"][0]["index"] for o in objs],
              f"exit {code}: {err.strip()[-600:]}")
    code, out, err = classify(MODEL, root, "--top", "3", exe=ASAN_CLASSIFY, env=env)
    res.check("ASan/UBSan build over the folder in text mode: exit 0, no sanitizer report",
              code == 0 and not any(m in err for m in SANITIZER_MARKS), f"exit {code}: {err.strip()[-600:]}")
    code, out, err = classify(MODEL, os.path.join(root, "empty"), exe=ASAN_CLASSIFY, env=env)
    res.check("ASan/UBSan build over a folder without JPEGs: exit 1, no sanitizer report",
              code == 1 and not any(m in err for m in SANITIZER_MARKS), f"exit {code}: {err.strip()[-600:]}")


def check_failures():
    d = tmpdir()
    good = os.path.join(d, "good.jpg")
    shutil.copy(PHOTOS[0], good)
    data = open(PHOTOS[0], "rb").read()
    truncated = os.path.join(d, "truncated.jpg")
    with open(truncated, "wb") as f:
        f.write(data[: len(data) // 2])
    garbage = os.path.join(d, "garbage.jpg")
    with open(garbage, "wb") as f:
        f.write(b"this is not a JPEG at all\n")
    missing = os.path.join(d, "missing.jpg")
    args = [MODEL, truncated, good, garbage, missing]
    code, out, err = classify(*args, "--json")
    objs = json_lines(out, "failed images")
    by_path = {o.get("path"): o for o in objs}
    res.check("failed images: one object each, in order, exit 1", code == 1 and [o.get("path") for o in objs]
              == args[1:], f"exit {code}, paths {[o.get('path') for o in objs]}")
    for path in (truncated, garbage, missing):
        o = by_path.get(path, {})
        res.check(f"{os.path.basename(path)}: an error object with a message and an LMV_ERR_ code",
                  set(o) == {"path", "error", "code"} and o["code"].startswith("LMV_ERR_") and len(o["error"]) > 10,
                  repr(o))
    res.check("the missing file is an i/o error", by_path.get(missing, {}).get("code") == "LMV_ERR_IO",
              repr(by_path.get(missing)))
    res.check("the good image among them is still classified", "top" in by_path.get(good, {}), repr(by_path.get(good)))
    code, out, err = classify(*args)
    res.check("plain text: the failures on stderr, the good image on stdout, exit 1",
              code == 1 and [p for p, _ in parse_text(out)] == [good] and err.count("classify: ") == 3,
              f"exit {code}, {err!r}")
    # the folder holding them: the same errors, and the error paths free everything under ASan
    if os.path.exists(ASAN_CLASSIFY):
        env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1")
        code, out, err = classify(MODEL, d, "--json", exe=ASAN_CLASSIFY, env=env)
        objs = json_lines(out, "ASan failed images") if not any(m in err for m in SANITIZER_MARKS) else []
        res.check("ASan/UBSan build over a folder with corrupt images: exit 1, error objects, no sanitizer report",
                  code == 1 and sum("error" in o for o in objs) == 2 and sum("top" in o for o in objs) == 1,
                  f"exit {code}: {err.strip()[-600:]}")


def main():
    if not res.check("build/classify present", os.path.exists(CLASSIFY), "make build/classify"):
        res.finish()
    check_help_and_usage()
    check_json_matches_text()
    root, want = make_folder()
    check_folder(root, want)
    check_failures()
    res.finish()


if __name__ == "__main__":
    main()
