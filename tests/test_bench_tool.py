"""tools/bench.py's own comparisons, without timing anything: --builds compiles tools/lmv.c with a
flag set into build/bench/lmv_<flags> and that build runs; its table divides the first build's
median by each other's; --busy's busy process is running inside its block and gone after it, and
its table gives each median over the one-thread median; the EVA-02-S recipe converts and its parity
check tells an exact file from a wrong one; the options are checked; the pack for another machine
(tools/bench_pack.py) holds what it must and its run.sh, run here in quick mode, writes every section's
rows, runs the same library as build/lmv, says "ORT not available" without ONNX Runtime and skips what its
time budget does not allow. (The timings themselves are a report, never a test.)"""
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

# the pack for another machine (tools/bench_pack.py): one small model packed, its run.sh run here in quick
# mode; the checks are on what the report holds, never on the timings in it
import json  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import bench_pack  # noqa: E402

d = tmpdir()
pack = os.path.join(d, "pack")
keep = os.path.join(ROOT, "build", "bench", "pack_test")   # the model files and lmv builds, kept between runs
ort_here = bool(shutil.which("node")) and os.path.exists(os.path.join(bench.NODE_DIR, "node_modules",
                                                                      "onnxruntime-node", "package.json"))
pack_cmd = [sys.executable, os.path.join(ROOT, "tools", "bench_pack.py"), "pack", "--out", pack, "--models",
            "lemevit_tiny", "--batches", "1,2", "--xz-preset", "0", "--cache", os.path.join(keep, "src")] + \
    ([] if ort_here else ["--no-ort"])
p = subprocess.run(pack_cmd, capture_output=True, text=True)
man = {}
if os.path.exists(os.path.join(pack, "manifest.json")):
    with open(os.path.join(pack, "manifest.json")) as f:
        man = json.load(f)
files = ["run.sh", "bench_pack.py", "src/lemevit.h", "src/tools/lmv.c", "src/tools/bench_ort.js", "src/fmapeak.c",
         "models/lemevit_tiny.lmv.xz"] + (["models/lemevit_tiny_b1.onnx.xz", "models/lemevit_tiny_b2.onnx.xz",
                                           "ort.tar.xz"] if ort_here else [])
missing = [f for f in files if not os.path.exists(os.path.join(pack, f))]
res.check("--pack: run.sh, the driver, the sources, the xz-compressed model%s" % (" and ONNX files and ONNX Runtime"
                                                                                  if ort_here else ""),
          p.returncode == 0 and not missing and list(man.get("models", {})) == ["lemevit_tiny"],
          "missing %s; %s" % (missing, (p.stdout + p.stderr).strip()[-400:]))
a = bench.parse_args(["--pack", pack, "--models", "lemevit_tiny"])
res.check("bench.py --pack DIR: the pack, with the models named (and only those)",
          a.pack == pack and a.models_given == "lemevit_tiny" and bench.parse_args(["--pack", pack]).models_given is None,
          str(vars(a)))
p = subprocess.run(pack_cmd + ["--max-mib", "0.01"], capture_output=True, text=True)
res.check("--pack: a pack over --max-mib fails with the size", p.returncode == 1 and "over the 0 MiB limit" in p.stdout,
          (p.stdout + p.stderr).strip()[-300:])


def run_pack(out, *args):
    env = dict(os.environ, OUT=out, WORK=os.path.join(keep, "run"))
    env.pop("LEMEVIT_SIMD", None)
    q = subprocess.run(["bash", os.path.join(pack, "run.sh"), "--quick", "--runs", "1"] + list(args), env=env,
                       capture_output=True, text=True, timeout=900)
    md = open(os.path.join(out, "results.md")).read() if os.path.exists(os.path.join(out, "results.md")) else ""
    js = {}
    if os.path.exists(os.path.join(out, "results.json")):
        with open(os.path.join(out, "results.json")) as f:
            js = json.load(f)
    return q, md, js


out = os.path.join(d, "out")
p, md, js = run_pack(out, "--threads", "1,2")
rows = js.get("rows", [])
res.check("run.sh: finishes, prints timestamped progress and writes results.md, results.json and log.txt",
          p.returncode == 0 and re.search(r"^\[\d\d:\d\d:\d\d \+ *\d+s\] == main", p.stdout, re.M) is not None and
          md.startswith("# lemevit.h and ONNX Runtime on") and os.path.exists(os.path.join(out, "log.txt")),
          (p.stdout + p.stderr).strip()[-500:])
cell = r"[\d.]+ / [\d.]+ \([\d.]+x\)" if ort_here else r"[\d.]+ / ORT not available"
row = [ln for ln in md.splitlines() if ln.startswith("| LeMeViT-tiny | ")]
res.check("run.sh: the main table has LeMeViT-tiny at 1 and 2 threads, each cell lemevit.h / ORT%s, and the path" %
          (" (ratio)" if ort_here else ""),
          "| model | 1 thread lemevit.h / ORT | 2 | path |" in md and bool(row) and
          re.match(r"\| LeMeViT-tiny \| %s \| %s \| \w+ \|$" % (cell, cell), row[0]) is not None, "\n".join(row[:2]))
want = {("main", "lemevit", 1, 1), ("main", "lemevit", 2, 1), ("batch", "lemevit", 2, 2), ("busy", "lemevit", 0, 1),
        ("busy", "lemevit", 1, 1), ("avx2", "lemevit", 1, 1), ("avx2", "lemevit", 2, 1), ("O2", "lemevit", 1, 1)}
if ort_here:
    want |= {("main", "onnxruntime", 1, 1), ("main", "onnxruntime", 2, 1), ("batch", "onnxruntime", 2, 2),
             ("busy", "onnxruntime", 2, 1)}
got = {(r["section"], r["engine"], r["threads"], r["batch"]) for r in rows if "median_ms" in r and "best_ms" in r}
res.check("run.sh: results.json has every section's rows with best and median (main, batch 2 on 2 threads, busy, "
          "--simd avx2, -O2)", not (want - got), "missing %s" % sorted(want - got))
paths = {r["section"]: r.get("simd") for r in rows if r["engine"] == "lemevit"}
res.check("run.sh: each lemevit.h row says its kernel path; the --simd avx2 rows ran avx2",
          paths.get("avx2") == "avx2" and all(paths.get(k) for k in ("main", "batch", "busy", "O2")), str(paths))
res.check("run.sh: the FMA peak, batch, busy, kernel-path and target sections are in results.md",
          all(h in md for h in ("## FMA peak", "## Batch 2 on 2 threads", "## Busy machine", "## Kernel paths and builds",
                                "## Targets", "## Logits check")) and js.get("peak", {}).get("avx2_1", {}).get("gflops"),
          md[-600:])
# the pack's own -O3 -march=native build against build/lmv on the same unpacked file and input
logits = js.get("checks", {}).get("lemevit_tiny", {}).get("native", {}).get("logits") or []
lmv_file = os.path.join(keep, "run", "models", "lemevit_tiny.lmv")
inp, outp = os.path.join(d, "in.npy"), os.path.join(d, "logits.npy")
bench_pack.write_npy(inp, (1, 3, 224, 224), bench_pack.lcg_input(3 * 224 * 224))
q = subprocess.run([os.path.join(ROOT, "build", "lmv"), "run", lmv_file, inp, outp], capture_output=True, text=True)
ref = bench_pack.read_npy(outp)[1] if q.returncode == 0 else []
big = max(abs(x) for x in ref) if ref else 0.0
diff = max(abs(x - y) for x, y in zip(logits, ref)) if len(logits) == len(ref) == 1000 else float("inf")
res.check("run.sh: the pack's build gives build/lmv's logits on the tiled-pattern model (float rounding at most)",
          diff <= 1e-5 * big and len(set(ref)) > 100, "max |diff| %g, largest |logit| %g; %s" % (diff, big, q.stderr[-200:]))
if ort_here:   # the same pack without ONNX Runtime: its rows say so and the rest still runs
    os.remove(os.path.join(pack, "ort.tar.xz"))
    p, md, js = run_pack(os.path.join(d, "out2"), "--threads", "1")
    row = [ln for ln in md.splitlines() if ln.startswith("| LeMeViT-tiny | ")]
    res.check("run.sh without ort.tar.xz: the rows say \"ORT not available\" and lemevit.h is still timed",
              p.returncode == 0 and bool(row) and re.match(r"\| LeMeViT-tiny \| [\d.]+ / ORT not available \|", row[0])
              is not None and "ORT not available" in js.get("meta", {}).get("ort", ""), "\n".join(row[:1]) + p.stderr[-300:])
p, md, js = run_pack(os.path.join(d, "out3"), "--budget", "0")
res.check("run.sh with no time left: every section skipped with a note, and the report still written",
          p.returncode == 0 and md.startswith("# lemevit.h") and "O2: skipped, the run's 0 s budget was spent" in md,
          md[-400:] + p.stderr[-300:])
res.finish()
