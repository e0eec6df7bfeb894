"""The repository stands alone: no tracked file names a path of a development machine or reads the
material kept beside a checkout, so a clone anywhere passes `make test`; and every file the tests read
from tests/data is tracked there with its licence."""
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import DATA, ROOT, Results  # noqa: E402

res = Results()

p = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True)
if not res.check("git lists the tracked files", p.returncode == 0 and p.stdout, p.stderr.decode(errors="replace")):
    res.finish()
tracked = [f for f in p.stdout.decode().split("\0") if f]

# absolute paths of a machine's home, work and temp folders, and the sibling folder `shared`
# beside a checkout (built from parts so that this file does not match itself)
dirs = "|".join(["ho" + "me", "ro" + "ot", "wo" + "rk", "tm" + "p", "Us" + "ers", "mn" + "t"])
machine_path = re.compile(r"(?<![\w.~$])/(?:%s)/[\w.-]" % dirs)
sibling = re.compile(r"\.\./sh" + r"ared|[\"']sh" + r"ared[\"']")
hits_abs, hits_sib = [], []
for f in tracked:
    if f.startswith("tests/data/"):
        continue
    try:
        text = open(os.path.join(ROOT, f), encoding="utf-8").read()
    except (UnicodeDecodeError, IsADirectoryError, FileNotFoundError):
        continue  # binary files (models, pictures)
    for n, line in enumerate(text.splitlines(), 1):
        if machine_path.search(line):
            hits_abs.append(f"{f}:{n}: {line.strip()[:80]}")
        if sibling.search(line):
            hits_sib.append(f"{f}:{n}: {line.strip()[:80]}")
res.check("no absolute home/root/work/tmp path in any tracked text file", not hits_abs, "; ".join(hits_abs[:5]))
res.check("nothing reads a folder beside the checkout", not hits_sib, "; ".join(hits_sib[:5]))

# the test data is tracked (a clone has it) and each folder of it carries its licence
want = ["images/photos/rocket.jpg", "images/photos/chelsea.png", "images/photos/truncated.jpg",
        "images/libjpeg-turbo/testorig.jpg", "images/libjpeg-turbo/testorig.ppm", "images/libjpeg-turbo/LICENSE.txt",
        "images/exif/Landscape_6.jpg", "images/exif/LICENSE", "pngsuite/basn0g01.png", "pngsuite/LICENSE",
        "cifar10/test_1000.tar", "README.md"]
rel = os.path.relpath(DATA, ROOT).replace(os.sep, "/")
missing = [w for w in want if f"{rel}/{w}" not in tracked]
res.check("tests/data holds the pictures, the CIFAR-10 subset and their licences, tracked", not missing,
          "missing: " + ", ".join(missing))
# the top level is the library, its examples, tests, tools, licence, README and Makefile (dot-files aside)
top = sorted(set(f.split("/")[0] for f in tracked if not f.startswith(".")))
allowed = ["LICENSE", "Makefile", "README.md", "examples", "lemevit.h", "tests", "tools"]
res.check("the top level holds only " + ", ".join(allowed), top == allowed, "found: " + ", ".join(top))
res.finish()
