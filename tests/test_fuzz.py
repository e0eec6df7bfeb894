"""The libFuzzer harnesses (tests/fuzz/fuzz_*.c) under ASan/UBSan: every seed-corpus file and every
saved regression (tests/fuzz/regressions/<harness>_*) is replayed and must pass; then each harness
fuzzes for a short, time-bounded while and the executions and findings are printed. A crash found
there is a real bug and fails the test; the number of executions is reported, not checked."""
import os
import re
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import BUILD, ROOT, Results  # noqa: E402

res = Results()
FUZZ = os.path.join(ROOT, "tests", "fuzz")
OUT = os.path.join(BUILD, "fuzz")
SECONDS = int(os.environ.get("LMV_FUZZ_SECONDS", "20"))
# harness, seed corpus, seconds of fuzzing in `make test`
HARNESSES = [("lmv", "corpus_lmv", SECONDS), ("npy", "corpus_npy", SECONDS), ("jpeg", "corpus_jpeg", SECONDS // 2),
             ("png", "corpus_png", SECONDS // 2)]


def build(name):
    exe = os.path.join(OUT, f"fuzz_{name}")
    src = os.path.join(FUZZ, f"fuzz_{name}.c")
    p = subprocess.run(["clang", "-g", "-O1", "-fsanitize=fuzzer,address,undefined", "-fno-sanitize-recover=all",
                        "-o", exe, src, "-lm"], capture_output=True, text=True)
    res.check(f"fuzz_{name} builds with clang -fsanitize=fuzzer,address,undefined", p.returncode == 0,
              p.stderr.strip()[-400:])
    return exe if p.returncode == 0 else None


def replay(name, exe, corpus):
    regressions = os.path.join(FUZZ, "regressions")
    files = sorted(os.path.join(corpus, f) for f in os.listdir(corpus))
    files += sorted(os.path.join(regressions, f) for f in os.listdir(regressions) if f.startswith(name + "_"))
    p = subprocess.run([exe, "-runs=1", *files], capture_output=True, text=True)
    ok = p.returncode == 0 and "ERROR" not in p.stderr
    res.check(f"fuzz_{name} replays {len(files)} corpus and regression files cleanly", ok and len(files) > 0,
              "" if ok else p.stderr.strip()[-600:])


def fuzz(name, exe, corpus, seconds):
    work = os.path.join(OUT, f"work_{name}")
    crashes = os.path.join(OUT, f"crashes_{name}")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    os.makedirs(crashes, exist_ok=True)
    p = subprocess.run([exe, f"-max_total_time={seconds}", "-print_final_stats=1", "-rss_limit_mb=2048",
                        f"-artifact_prefix={crashes}/", work, corpus], capture_output=True, text=True)
    runs = re.search(r"stat::number_of_executed_units:\s*(\d+)", p.stderr)
    found = [ln for ln in p.stderr.splitlines() if "ERROR: " in ln or "deadly signal" in ln or "Test unit written" in ln]
    print(f"   fuzz_{name}: {int(runs.group(1)) if runs else '?'} executions in {seconds} s, "
          f"{len(os.listdir(work))} inputs in the working corpus, {len(found) and 1} finding(s)", flush=True)
    res.check(f"fuzz_{name}: {seconds} s of fuzzing found no crash", p.returncode == 0 and not found,
              "" if not found else "; ".join(found[:3]) + f" (input saved in {os.path.relpath(crashes, ROOT)}; "
              f"copy it to tests/fuzz/regressions/{name}_<what> once fixed)")


def main():
    os.makedirs(OUT, exist_ok=True)
    if not res.check("clang present", shutil.which("clang") is not None,
                     "" if shutil.which("clang") else "install clang and libclang-rt-14-dev (tools/install_deps.sh does)"):
        res.finish()
    built = [(n, build(n), os.path.join(FUZZ, c), s) for n, c, s in HARNESSES]
    for name, exe, corpus, _ in built:
        if exe:
            replay(name, exe, corpus)
    for name, exe, corpus, seconds in built:
        if exe and seconds > 0:
            fuzz(name, exe, corpus, seconds)
    res.finish()


main()
