"""The examples under valgrind memcheck: build/classify on real photos (a build without OpenMP, so
that its thread pool's allocations do not count) and the firmware example. Zero errors and zero
leaks of any kind; the firmware also makes no heap allocation at all."""
import os
import re
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import BUILD, PHOTOS, ROOT, Results, run, tmpdir  # noqa: E402

res = Results()
VG = ["valgrind", "--error-exitcode=251", "--leak-check=full", "--errors-for-leak-kinds=all", "--show-leak-kinds=all"]


def memcheck(name, cmd, want_exit=0):
    p = subprocess.run(VG + cmd, capture_output=True, text=True)
    errors = re.search(r"ERROR SUMMARY: (\d+) errors", p.stderr)
    heap = re.search(r"total heap usage: ([\d,]+) allocs, ([\d,]+) frees", p.stderr)
    clean = p.returncode == want_exit and errors and errors.group(1) == "0"
    leaks = "definitely lost" in p.stderr or "indirectly lost" in p.stderr or "possibly lost" in p.stderr \
        or "still reachable" in p.stderr
    res.check(f"{name}: no memcheck errors, no leaks", clean and not leaks,
              (f"{heap.group(1)} allocs, {heap.group(2)} frees" if heap else "") if clean and not leaks
              else f"exit {p.returncode}: " + "\n".join(p.stderr.strip().splitlines()[-15:]))
    return p, heap


def main():
    if not res.check("valgrind present", shutil.which("valgrind") is not None,
                     "" if shutil.which("valgrind") else "install valgrind (tools/install_deps.sh does)"):
        res.finish()
    exe = os.path.join(BUILD, "valgrind", "classify")
    os.makedirs(os.path.dirname(exe), exist_ok=True)
    # AVX2 at most: valgrind does not decode AVX-512, which -march=native may use
    code, out, err = run(["cc", "-std=c99", "-Wall", "-Wextra", "-pedantic", "-D_POSIX_C_SOURCE=200809L", "-O2", "-g",
                          "-mavx2", "-mfma", "-o", exe, os.path.join(ROOT, "examples", "classify.c"), "-lm"])
    if res.check("classify builds without OpenMP", code == 0, err.strip()[-300:]):
        # the model `make firmware` embedded: the CIFAR-10 LeMeViT, or its random stand-in
        model = open(os.path.join(BUILD, "fw", "inputs")).read().split()[0]
        photos = [os.path.join(PHOTOS, f) for f in ("rocket.jpg", "hubble_deep_field.jpg", "chelsea.png")]
        for photo in photos:
            memcheck(f"classify {os.path.basename(photo)}", [exe, model, photo, "--top", "3"])
        # a failing path frees everything too
        memcheck("classify on a truncated JPEG (error path)",
                 [exe, model, os.path.join(PHOTOS, "truncated.jpg")], want_exit=1)
        cut_png = os.path.join(tmpdir(), "truncated.png")
        open(cut_png, "wb").write(open(os.path.join(PHOTOS, "chelsea.png"), "rb").read()[:50000])
        memcheck("classify on a truncated PNG (error path)", [exe, model, cut_png], want_exit=1)
    fw = os.path.join(BUILD, "fw", "firmware")
    if res.check("build/fw/firmware exists (make firmware)", os.path.exists(fw), ""):
        want = open(os.path.join(BUILD, "fw", "firmware_arena.h")).read()
        want = int(re.search(r"FW_EXPECTED_CLASS (\d+)", want).group(1))
        p, heap = memcheck("firmware", [fw], want_exit=want)
        res.check("firmware makes no heap allocation", heap is not None and heap.group(1) == "0",
                  f"{heap.group(1)} allocs" if heap else "no heap summary")
    res.finish()


main()
