"""tests/test_threads.c, built plain, with ThreadSanitizer and with OpenMP: four POSIX threads run
one loaded model at once, each with its own session, on every family (the tiny fuzz-corpus models
and the firmware's LeMeViT); results bit-identical to the single-threaded run, and no data race.
A batch on two threads (side by side in the OpenMP build) gives the same bits as one by one."""
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import BUILD, ROOT, Results, run  # noqa: E402

res = Results()
SRC = os.path.join(ROOT, "tests", "test_threads.c")
BUILDS = [("plain", "cc", ["-O2", "-march=native"]), ("tsan", "clang", ["-O1", "-g", "-fsanitize=thread"]),
          ("openmp", "cc", ["-O2", "-march=native", "-fopenmp"])]


def main():
    corpus = os.path.join(ROOT, "tests", "fuzz", "corpus_lmv")
    models = [os.path.join(corpus, f) for f in sorted(os.listdir(corpus))]
    inputs = os.path.join(BUILD, "fw", "inputs")  # the model `make firmware` embedded
    if os.path.exists(inputs):
        models.append(open(inputs).read().split()[0])
    for label, cc, flags in BUILDS:
        exe = os.path.join(BUILD, f"test_threads_{label}")
        code, out, err = run([cc, "-std=c99", "-Wall", "-Wextra", "-pedantic", "-D_POSIX_C_SOURCE=200809L", *flags,
                              "-pthread", "-o", exe, SRC, "-lm"])
        if not res.check(f"{label}: test_threads.c builds", code == 0, err.strip()[-400:]):
            continue
        for model in models:
            env = dict(os.environ, TSAN_OPTIONS="halt_on_error=1 exitcode=66")
            p = subprocess.run([exe, model, "4", "3"], capture_output=True, text=True, env=env)
            name = os.path.basename(model)
            for ln in p.stdout.splitlines():
                if ln.startswith(("PASS ", "FAIL ")):
                    res.check(f"{label} {name}: {ln[5:]}", ln.startswith("PASS"), "")
            race = "ThreadSanitizer" in p.stderr
            res.check(f"{label} {name}: exits cleanly{' with no data race' if label == 'tsan' else ''}",
                      p.returncode == 0 and not race,
                      "" if p.returncode == 0 and not race else (p.stderr.strip() or f"exit {p.returncode}")[-600:])
    res.finish()


main()
