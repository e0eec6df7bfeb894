"""README's "Speed and memory" section is what tools/bench_readme.py makes of the bench report kept
in tests/bench/results.md (the run the tables come from): a hand-edited number fails here. And the
checker itself fails on an edited copy, so this test can fail."""
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, Results, tmpdir  # noqa: E402

res = Results()
TOOL = os.path.join(ROOT, "tools", "bench_readme.py")
REPORT = os.path.join(ROOT, "tests", "bench", "results.md")
README = os.path.join(ROOT, "README.md")


def check(readme):
    p = subprocess.run([sys.executable, TOOL, "--check", "--results", REPORT, "--readme", readme],
                       capture_output=True, text=True)
    return p.returncode, p.stderr.strip()


code, err = check(README)
res.check("README's speed section equals bench_readme.py's output for tests/bench/results.md", code == 0,
          (err + "; run `python3 tools/bench_readme.py` after `make bench` instead of editing the tables")
          if code else "")
commit = next(ln for ln in open(REPORT, encoding="utf-8") if ln.startswith("- lemevit.h: git")).split()[3].rstrip(",")
res.check("README names the commit the kept report was measured at", "commit %s;" % commit in open(README).read(),
          commit)

d = tmpdir()
edited = os.path.join(d, "README.md")
shutil.copy(README, edited)
text = open(edited, encoding="utf-8").read()
i = text.index("## Speed and memory")
row = "| ViT-B/16 | 1 | 1 |"
k = text.index(row, i) + len(row)   # the lemevit.h latency cell of the first row
cell_end = text.index("|", k)
with open(edited, "w", encoding="utf-8") as f:
    f.write(text[:k] + " 1 / 1 " + text[cell_end:])
code, err = check(edited)
res.check("a README with one latency typed over is refused", code == 1 and "not what" in err, err)
res.finish()
