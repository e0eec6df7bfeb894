"""tools/bench.py's own comparisons, without timing anything: --builds compiles tools/lmv.c with a
flag set into build/bench/lmv_<flags> and that build runs; its table divides the first build's
median by each other's; --busy's busy process is running inside its block and gone after it, and
its table gives each median over the one-thread median; the EVA-02-S recipe converts and its parity
check tells an exact file from a wrong one; the options are checked. (The timings
themselves are a report, never a test.)"""
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, Results, tmpdir  # noqa: E402

sys.path.insert(0, os.path.join(ROOT, "tools"))
import bench  # noqa: E402

res = Results()

# a build with its own flags, cached by its flags
exe, err = bench.build_exe("-O1 -DLEMEVIT_NO_SIMD", 600)
ok = exe is not None and os.path.basename(exe) == "lmv_O1_DLEMEVIT_NO_SIMD"
res.check("--builds: a flag set builds lmv into build/bench/lmv_<flags>", ok, err or str(exe))
if exe:
    p = subprocess.run([exe, "gemm", "8", "8", "8", "--runs", "1", "--simd", "avx2"], capture_output=True, text=True)
    res.check("--builds: that build runs and took its flags (-DLEMEVIT_NO_SIMD: portable kernels only)",
              p.returncode == 2 and "the best here is portable" in p.stderr, (p.stdout + p.stderr).strip()[-300:])
    t = os.path.getmtime(exe)
    again, _ = bench.build_exe("-O1 -DLEMEVIT_NO_SIMD", 600)
    res.check("--builds: an up-to-date build is not compiled again", again == exe and os.path.getmtime(exe) == t, "")
bad, err = bench.build_exe("-O2 --no-such-flag-anywhere", 600)
res.check("--builds: a flag set the compiler refuses is reported, not fatal", bad is None and "failed" in (err or ""),
          str(err)[:200])

# the tables from made-up results
state = {"builds": {"flags": ["-O2", "-O3 -march=native"], "results": [
    {"model": "lemevit_tiny", "threads": 1, "variant": "default", "build": "-O2", "median_ms": 105.0, "best_ms": 100.0},
    {"model": "lemevit_tiny", "threads": 1, "variant": "default", "build": "-O3 -march=native", "median_ms": 100.0,
     "best_ms": 98.0}]},
    "busy": {"cpus": 2, "results": [
        {"model": "lemevit_tiny", "config": "lemevit.h 1 thread", "median_ms": 80.0, "best_ms": 70.0,
         "loadavg_rounds": [1.0, 1.2]},
        {"model": "lemevit_tiny", "config": "lemevit.h --threads 2", "median_ms": 200.0, "best_ms": 150.0,
         "loadavg_rounds": [1.1, 1.3]}]}}
L = []
bench.builds_table(state, L)
row = [ln for ln in L if ln.startswith("| LeMeViT-tiny | 1 |")]
res.check("--builds table: the first build's median over the other's", row and row[0].rstrip().endswith("| 1.050 |"),
          "\n".join(L[-3:]))
L = []
bench.busy_table(state, L)
row = [ln for ln in L if "--threads 2" in ln]
res.check("--busy table: each median over lemevit.h's one-thread median, with the loads",
          row and "| 2.50 |" in row[0] and "1.1/1.3" in row[0], "\n".join(L[-3:]))

# the busy process
with bench.BusyCPU() as b:
    running = b.p.poll() is None
    pid = b.p.pid
time.sleep(0.1)
res.check("--busy: one busy process runs inside the block and is gone after it", running and b.p.poll() is not None,
          "pid %d" % pid)

# a recipe of the newer family: built, converted as prepare_model converts it (the timm file name, the
# recipe's options), and the parity check finds lemevit.h exact on the bench input -- and not exact for
# a file converted with the wrong head count (each head's RoPE and attention differ)
d = tmpdir()
spec = bench.MODELS["eva02_s"]
pth = os.path.join(d, spec["file"])
p = subprocess.run([sys.executable, bench.THIS, "_build", "--model", "eva02_s", "--pth", pth], capture_output=True, text=True)
res.check("eva02_s recipe builds", p.returncode == 0 and os.path.exists(pth), p.stderr.strip()[-300:])
for heads, want in (("6", True), ("12", False)):
    lmv = os.path.join(d, "eva02_s_%s.lmv" % heads)
    conv = [a if a != "6" else heads for a in spec["conv"]]
    q = subprocess.run([sys.executable, bench.CONVERT, pth, "-o", lmv, "--labels", "none", "-q"] + conv,
                       capture_output=True, text=True)
    r = subprocess.run([sys.executable, bench.THIS, "_parity", "--model", "eva02_s", "--pth", pth, "--lmv", lmv],
                       capture_output=True, text=True)
    j = bench.last_json(r.stdout) or {}
    exact = bool(j.get("argmax_same")) and j.get("max_abs_diff", 1e9) <= max(1e-4, 1e-5 * j.get("max_abs_logit", 0))
    res.check("parity check on the bench input: %s heads %s" % (heads, "exact" if want else "caught"),
              q.returncode == 0 and "max_abs_diff" in j and exact == want, (q.stderr + r.stderr).strip()[-300:] + str(j))

# the options
a = bench.parse_args(["--builds", "--models", "lemevit_tiny"])
res.check("--builds alone means -O2 and -O3 -march=native, batch 1, float32 only",
          a.builds == bench.DEFAULT_BUILDS and a.batch == [1] and a.dtypes == ["f32"] and not a.gemm, str(vars(a)))
p = subprocess.run([sys.executable, bench.THIS, "--busy", "--only-gemm"], capture_output=True, text=True)
res.check("--busy with --only-gemm is refused with a message", p.returncode == 2 and "--only-gemm" in p.stderr,
          p.stderr.strip()[-200:])
p = subprocess.run([sys.executable, bench.THIS, "--builds", ";"], capture_output=True, text=True)
res.check("--builds with no flag set is refused with a message", p.returncode == 2 and "flag set" in p.stderr,
          p.stderr.strip()[-200:])
res.finish()
