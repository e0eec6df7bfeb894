#!/usr/bin/env python3
"""bench.py - speed and memory of lemevit.h next to PyTorch and ONNX Runtime on this machine.

    make bench                          (= python3 tools/bench.py, after building build/lmv)
    python3 tools/bench.py --quick      one small model, 1 thread, batch 1, 2 runs, 2 GEMM shapes (smoke test)
    python3 tools/bench.py --models deit_s,swin_t --threads 1,2 --batch 1,8 --runs 10
    python3 tools/bench.py --only-gemm --threads 1      the GEMM micro-benchmark alone
    python3 tools/bench.py --builds --models lemevit_tiny,deit_s --threads 1,2 --no-torch --no-ort
                                        lemevit.h built with -O2 and with -O3 -march=native, side by side
    python3 tools/bench.py --busy --models lemevit_tiny --no-torch
                                        the same runs with one `yes` process busy on a CPU
    python3 tools/bench.py --pack build/devpack
                                        a pack to measure another machine in one command: see
                                        tools/bench_pack.py (there: OUT=DIR bash build/devpack/run.sh)

What it does, in one run:
  1. measures the machine's FP32 FMA peak with a small C program compiled on the fly into
     build/bench/ (independent AVX2 FMA accumulators, 1..N threads with OpenMP);
  2. builds every model with seeded random weights in PyTorch (torchvision vit_b_16 / swin_t,
     the timm-style VisionTransformer of tests/models for DeiT, tests/models/lemevit_ref.py for
     LeMeViT), saves the state dict and converts it once with tools/convert.py; with ONNX Runtime
     also exports it with torch.onnx.export (opset 14), one file per batch size.  Everything is
     cached under build/bench/ and rebuilt only when the converter (or this file's model
     recipe) changes.  Not in the default list, named with --models: eva02_s (EVA-02-S/14,
     tests/models/eva_ref.py), siglip_b16 (SigLIP B/16, map head, tests/models/timm_vit.py) and
     swinv2_t (Swin V2-T at 256x256, tests/models/swinv2_ref.py); before they are timed, lemevit.h's
     logits on the benchmark input are checked against PyTorch's (1e-4 absolute or 1e-5 relative,
     same argmax; the model is skipped otherwise);
  3. for every model x thread count x batch size, times each engine in its own process:
       lemevit.h     build/lmv bench --json (--threads N --exact-threads, OMP_NUM_THREADS=N); 1 warm-up run
       PyTorch       a worker process (this file, `_torch`), inference_mode, with
                     OMP/OPENBLAS/MKL_NUM_THREADS=N and torch.set_num_threads(N) ("pinned");
                     above 1 thread also two variants that dodge the OpenMP + OpenBLAS
                     oversubscription trap (each library's OpenMP team spinning against the
                     other's threads): "passive"
                     (OMP_WAIT_POLICY=PASSIVE) and "blas-only" (torch 1 thread, OpenBLAS N)
       ONNX Runtime  onnxruntime-node via tools/bench_ort.js (intraOpNumThreads=N, graph
                     optimisation 'all'); above 1 thread also with allow_spinning=0
     The comparison columns use the fastest variant of each engine (all are in the JSON).
     Each configuration runs in --rounds processes (default 2) that share its --runs: round 1 of
     every engine, thread count and variant of a model and batch size, then round 2, so a slow
     spell on a shared machine falls on all of them rather than on one; median and best are over
     every run of every round (lmv bench --json and the workers report each run's time).
  4. reduced-precision weights (--dtypes, default f32,f16,int8,int8c; int8c = the int8 file run
     with `lmv bench --int8-compute`): every model's .lmv is also
     re-encoded with lmvfile.requantize into build/bench/<model>_f16.lmv and _int8.lmv (matrix
     weights f16, or int8 with one scale per output channel; cached, rebuilt when the float32 .lmv
     or tools/lmvfile.py changes) and timed with `lmv bench` exactly like the float32 file, right
     after it (same threads, batch, runs and variants, own process, peak RSS the same way).  Table
     "Reduced-precision weights": file size, latency, ratio to lemevit.h f32 and to PyTorch
     (float32 always: PyTorch is not timed with reduced-precision weights, see the report's note);
  5. cold start (--no-cold to skip): process start to the top 5 printed for examples/images/cat.jpg,
     build/classify against a Python script doing the same with PyTorch (worker `_classify`: import,
     build, torch.load, Pillow + torchvision transforms, forward), 3 times each, for ViT-B/16, Swin-T
     and LeMeViT-tiny where prepared; table "Cold start" with the top 5 of both compared;
  6. GEMM micro-benchmark (on by default, --no-gemm to skip, --only-gemm for nothing else): the
     Linear shapes C[M][N] = A[M][K] W[N][K]^T + b (M tokens, N out features, K in features) that
     dominate each model at batch 1, 224x224 (--gemm-models; ViT-B/16 and Swin-T from a fixed
     list, the others from forward hooks on every nn.Linear of the PyTorch model, deduplicated and
     the --gemm-top shapes with the most multiply-adds per image kept; cached in
     build/bench/gemm_shapes.json), at every thread count: lemevit.h `lmv gemm M N K --json`
     --dtype f32p (float32 weights in the panel layout the converter writes) against torch.nn.functional.linear in a worker process (`_gemm`, same BLAS
     and thread settings as the model runs), each best and median of as many calls as fit in
     ~0.3 s.  Table "GEMM at the models' shapes": GFLOP/s at the median, % of the measured FMA
     peak for that many threads, median time ratio;
  7. prints a progress line per measurement, then the tables; writes build/bench/results.json
     (everything) and build/bench/results.md (every table, with the command, date and machine at
     the top; tools/bench_readme.py turns it into README's speed section and keeps it as
     tests/bench/results.md).  --quick writes build/bench/quick.{json,md} instead.

Two comparisons of their own (either or both; they replace steps 3-6, so nothing else is timed):
  --builds ["FLAGS;FLAGS;..."]  tools/lmv.c (with lemevit.h) compiled once per flag set (default
       "-O2;-O3 -march=native") as `cc -std=c99 -D_POSIX_C_SOURCE=200809L FLAGS -fopenmp tools/lmv.c -lm`
       into build/bench/lmv_<flags> (rebuilt when the sources change), every build timed on every
       --models x --threads (x --lmv-variants above 1 thread) at batch 1, in the same rounds; table "Build flags" gives each build's
       median / best and the first build's median over each other's (1.05 = the first is 5 %
       slower): the "-O2 within 5 % of -march=native" target;
  --busy   the run the issue calls a busy machine: one `yes > /dev/null` process runs during every
       timed run (started before each round, stopped after it) while lemevit.h runs with the default
       thread count (0: all, running fewer while that is faster), with 1 thread, with every CPU
       given explicitly (--threads N: at most N, the same guard), with exactly N (--exact-threads,
       and the same with OMP_WAIT_POLICY=PASSIVE), and ONNX Runtime
       with N intra-op threads (its --ort-variants), batch 1; table "Busy machine" gives each
       median / best and its median over lemevit.h's one-thread median, with the load averages.

Peak RSS is the child process's ru_maxrss (wait4), so it is per engine; PyTorch's own
getrusage figure is kept in the JSON too.  Every child has a timeout (--timeout) so a hung engine
cannot hang the run.  Nothing here asserts on timings: it is a report, not a test.

PyTorch's BLAS: Debian's torch calls sgemm through libblas.so.3, which the alternatives system may
point at the slow reference BLAS.  With --torch-blas openblas (the default) the PyTorch workers
get the OpenBLAS (pthread) directory first on LD_LIBRARY_PATH when libopenblas0-pthread is
installed; the header says which library torch actually mapped (read from /proc/self/maps).

Needs: build/lmv (make), a python3 with torch + torchvision for the models (Debian
python3-torch python3-torchvision; the `python3` running this file may lack torch, the script then
uses /usr/bin/python3), libopenblas0-pthread for a fair PyTorch, a C compiler for the peak
measurement, node + npm for ONNX Runtime (`npm install onnxruntime-node --ignore-scripts` into
build/bench/node is done here; skipped with a note when unavailable).
"""

import argparse
import glob
import json
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
THIS = os.path.abspath(__file__)
LMV = os.path.join(ROOT, "build", "lmv")
CLASSIFY = os.path.join(ROOT, "build", "classify")
COLD_IMAGE = os.path.join(ROOT, "examples", "images", "cat.jpg")
COLD_MODELS = ("vit_b16", "swin_t", "lemevit_tiny")   # the cold-start comparison, where prepared
COLD_REPS = 3
OUT = os.path.join(ROOT, "build", "bench")
CONVERT = os.path.join(ROOT, "tools", "convert.py")
BENCH_ORT = os.path.join(ROOT, "tools", "bench_ort.js")
NODE_DIR = os.path.join(OUT, "node")
TEST_MODELS = os.path.join(ROOT, "tests", "models")

# bump when a model recipe below changes: cached checkpoints / .lmv / .onnx files are rebuilt
RECIPE_VERSION = 1
IMG = 224
PREP_TIMEOUT = 1800  # seconds for building / converting / exporting a model and the peak measurement

MODELS = OrderedDict([
    ("vit_b16", dict(label="ViT-B/16", source="torchvision vit_b_16()", conv=["--num-heads", "12"])),
    ("deit_s", dict(label="DeiT-S", source="timm-style VisionTransformer(embed 384, depth 12, heads 6)",
                    conv=["--num-heads", "6"])),
    ("swin_t", dict(label="Swin-T", source="torchvision swin_t()", conv=[])),
    ("lemevit_tiny", dict(label="LeMeViT-tiny", source="tests/models/lemevit_ref.py lemevit_tiny()", conv=[])),
    ("lemevit_small", dict(label="LeMeViT-small", source="tests/models/lemevit_ref.py lemevit_small()", conv=[])),
    ("lemevit_base", dict(label="LeMeViT-base", source="tests/models/lemevit_ref.py lemevit_base()", conv=[])),
    # the newer ViT family (issue "The whole ViT family"): not in the default list (`--models` names them)
    ("eva02_s", dict(label="EVA-02-S/14", source="tests/models/eva_ref.py Eva(eva02_small_patch14_224 options: "
                     "RoPE, packed SwiGLU, 384 wide, 6 heads, depth 12)", conv=["--num-heads", "6"],
                     file="eva02_small_patch14_224.pth", default=False)),
    ("siglip_b16", dict(label="SigLIP B/16", source="tests/models/timm_vit.py VisionTransformer(vit_base_patch16_siglip_224"
                        " layout: map head, no class token; gelu_tanh as SigLIP trains it)",
                        conv=["--num-heads", "12", "--set", "vit.act=gelu_tanh"], default=False)),
    ("swinv2_t", dict(label="Swin V2-T", source="tests/models/swinv2_ref.py SwinTransformerV2(swinv2_tiny_window8_256)",
                      conv=[], file="swinv2_tiny_window8_256.pth", img=256, default=False)),
    # not in the default list: a small ViT for quick checks
    ("deit_ti", dict(label="DeiT-Ti", source="timm-style VisionTransformer(embed 192, depth 12, heads 3)",
                     conv=["--num-heads", "3"], default=False)),
])
DEFAULT_MODELS = [k for k, v in MODELS.items() if v.get("default", True)]

# weight encodings of a .lmv file (tools/lmvfile.py); "int8c" is the int8 file run with
# `lmv bench --int8-compute` (activations quantised too, int8 x int8 products)
DTYPES = ("f32", "f16", "int8", "int8c")
FILE_DTYPE = {"int8c": "int8"}
LMVFILE = os.path.join(ROOT, "tools", "lmvfile.py")

# GEMM micro-benchmark: Linear shapes (label, M tokens, N out features, K in features, uses per image)
# at batch 1, 224x224.  torchvision's ViT and Swin call F.linear / nn.MultiheadAttention's packed
# in-projection, out of reach of nn.Linear hooks, so their shapes are listed here; every other model
# gets its shapes from forward hooks on its nn.Linear modules (worker `_shapes`).
GEMM_FIXED = OrderedDict([
    ("vit_b16", [("qkv", 197, 2304, 768, 12), ("proj", 197, 768, 768, 12), ("fc1", 197, 3072, 768, 12),
                 ("fc2", 197, 768, 3072, 12)]),
    ("swin_t", [("stage 1 qkv", 3136, 288, 96, 2), ("stage 1 proj", 3136, 96, 96, 2),
                ("stage 1 fc1", 3136, 384, 96, 2), ("stage 1 fc2", 3136, 96, 384, 2),
                ("stage 3 qkv", 196, 1152, 384, 6), ("stage 3 fc1", 196, 1536, 384, 6),
                ("stage 3 fc2", 196, 384, 1536, 6), ("stage 4 qkv", 49, 2304, 768, 2),
                ("stage 4 fc2", 49, 768, 3072, 2)]),
])
DEFAULT_GEMM_MODELS = ["vit_b16", "swin_t", "lemevit_tiny", "lemevit_small"]
GEMM_SECONDS = 0.3     # timed calls per shape: as many as fit in this (lmv gemm's own default too)
SHAPES_VERSION = 1     # bump when the hook recipe of worker_shapes changes: gemm_shapes.json is rebuilt

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "GOTO_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS", "OMP_PROC_BIND", "OMP_PLACES")


# =============================================================================================
# worker side: runs inside a python3 with torch (never imported by the driver)
# =============================================================================================

def img_of(name):
    """Input side of a model's benchmark runs (224 unless its recipe says otherwise)."""
    return MODELS.get(name, {}).get("img", IMG)


def build_model(name):
    tests = os.path.dirname(TEST_MODELS)   # the reference modules are imported as the package `models`
    if tests not in sys.path:
        sys.path.insert(0, tests)
    if name == "eva02_s":
        from models import eva_ref
        return eva_ref.Eva(img_size=224, patch_size=14, embed_dim=384, depth=12, num_heads=6, mlp_ratio=4 * 2 / 3,
                           swiglu_mlp=True, use_rot_pos_emb=True, ref_feat_shape=(16, 16))
    if name == "siglip_b16":
        from models import timm_vit
        return timm_vit.VisionTransformer(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12,
                                          class_token=False, global_pool="map", act_layer="gelu_tanh")
    if name == "swinv2_t":
        from models import swinv2_ref
        return swinv2_ref.SwinTransformerV2(patch_size=4, embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24),
                                            window_size=8, num_classes=1000)
    if name == "vit_b16":
        import torchvision
        return torchvision.models.vit_b_16()
    if name == "swin_t":
        import torchvision
        return torchvision.models.swin_t()
    if name in ("deit_s", "deit_ti"):
        from models import timm_vit
        dim, heads = (384, 6) if name == "deit_s" else (192, 3)
        return timm_vit.VisionTransformer(img_size=IMG, patch_size=16, embed_dim=dim, depth=12, num_heads=heads)
    if name.startswith("lemevit_"):
        from models import lemevit_ref
        return getattr(lemevit_ref, name)()
    raise SystemExit("unknown model " + name)


def randomize(name, m):
    """Seeded non-trivial weights (the timm / LeMeViT constructors zero some tensors)."""
    if name in ("deit_s", "deit_ti", "siglip_b16", "eva02_s"):
        from models import timm_vit
        timm_vit.randomize_(m, seed=0)
    elif name == "swinv2_t":
        from models import swinv2_ref
        swinv2_ref.randomize_(m, seed=0)
    elif name.startswith("lemevit_"):
        from models import lemevit_ref
        lemevit_ref.randomize_(m, seed=0)


def mapped_libs():
    """Shared objects of interest mapped into this process."""
    libs = set()
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                p = line.split()[-1] if line.strip() else ""
                if p.startswith("/") and re.search(r"blas|lapack|mkl|dnnl|gomp|iomp|omp\.so|blis|atlas", p):
                    libs.add(os.path.realpath(p))
    except OSError:
        pass
    return sorted(libs)


def _load(name, pth):
    import torch
    t0 = time.perf_counter()
    m = build_model(name)
    build_ms = (time.perf_counter() - t0) * 1e3
    t0 = time.perf_counter()
    sd = torch.load(pth, map_location="cpu")
    m.load_state_dict(sd)
    m.eval()
    load_ms = (time.perf_counter() - t0) * 1e3
    del sd
    return m, build_ms, load_ms


def worker_build(argv):
    ap = argparse.ArgumentParser(prog="bench.py _build")
    ap.add_argument("--model", required=True)
    ap.add_argument("--pth", required=True)
    a = ap.parse_args(argv)
    import torch
    torch.manual_seed(0)
    m = build_model(a.model)
    randomize(a.model, m)
    m.eval()
    tmp = a.pth + ".tmp"
    torch.save(m.state_dict(), tmp)
    os.replace(tmp, a.pth)
    print(json.dumps({"params": sum(p.numel() for p in m.parameters()), "torch": torch.__version__}))


def worker_export(argv):
    ap = argparse.ArgumentParser(prog="bench.py _export")
    ap.add_argument("--model", required=True)
    ap.add_argument("--pth", required=True)
    ap.add_argument("--onnx", required=True)
    ap.add_argument("--batch", type=int, default=1)
    a = ap.parse_args(argv)
    import warnings
    import torch
    warnings.filterwarnings("ignore")
    m, _, _ = _load(a.model, a.pth)
    if a.model == "eva02_s":
        # the same rotation (pairs (a, b) -> (-b, a), bit for bit) as a gather and a sign instead of strided
        # slices stacked: traced, their Concat carries a dimension ONNX Runtime's shape inference refuses
        # ("Can't merge shape info")
        from models import eva_ref
        d = m.blocks[0].attn.head_dim
        perm, sign = torch.arange(d) ^ 1, torch.tensor([-1.0, 1.0]).repeat(d // 2)
        eva_ref.rot = lambda t: t[..., perm] * sign
        # and the RoPE table (a function of the grid alone) computed here, once, so the export holds it as a
        # constant: traced, its repeat_interleave becomes a Split the shape inference refuses too
        g = img_of(a.model) // 14
        table = m.rope.get_embed((g, g))
        m.rope.get_embed = lambda shape: table
    x = torch.rand(a.batch, 3, img_of(a.model), img_of(a.model), generator=torch.Generator().manual_seed(0)) * 2 - 1
    tmp = a.onnx + ".tmp"
    t0 = time.perf_counter()
    # with gradients on: under no_grad torchvision's nn.MultiheadAttention takes its fused fast
    # path (aten::_native_multi_head_attention), which has no ONNX export; the Swin V2 reference keeps
    # numpy copies of its blocks' outputs, which need gradients off
    with (torch.no_grad() if a.model == "swinv2_t" else torch.enable_grad()):
        torch.onnx.export(m, x, tmp, opset_version=14, input_names=["input"], output_names=["output"],
                          do_constant_folding=True)
    os.replace(tmp, a.onnx)
    print(json.dumps({"export_s": time.perf_counter() - t0, "bytes": os.path.getsize(a.onnx)}))


def worker_torch(argv):
    ap = argparse.ArgumentParser(prog="bench.py _torch")
    ap.add_argument("--model", required=True)
    ap.add_argument("--pth", required=True)
    ap.add_argument("--threads", type=int, required=True, help="torch.set_num_threads")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    a = ap.parse_args(argv)
    import resource
    import torch
    torch.set_num_threads(a.threads)
    m, build_ms, load_ms = _load(a.model, a.pth)
    x = torch.rand(a.batch, 3, img_of(a.model), img_of(a.model), generator=torch.Generator().manual_seed(0)) * 2 - 1
    times = []
    with torch.inference_mode():
        for i in range(-a.warmup, a.runs):
            t0 = time.perf_counter()
            m(x)
            dt = (time.perf_counter() - t0) * 1e3
            if i >= 0:
                times.append(dt)
    times.sort()
    print(json.dumps({
        "engine": "pytorch", "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "batch": a.batch, "runs": a.runs, "warmup": a.warmup, "build_ms": round(build_ms, 3),
        "load_ms": round(load_ms, 3), "median_ms": round(statistics.median(times), 3), "best_ms": round(times[0], 3),
        "times_ms": [round(t, 3) for t in times],
        "self_peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "libs": mapped_libs(),
        "env": {k: os.environ[k] for k in THREAD_VARS + ("LD_LIBRARY_PATH",) if k in os.environ},
    }))


def worker_probe(argv):
    """Which BLAS / OpenMP / oneDNN libraries torch maps once it has done a matrix product."""
    import torch
    a = torch.rand(64, 64)
    (a @ a).sum()
    torch.nn.functional.conv2d(torch.rand(1, 3, 8, 8), torch.rand(4, 3, 3, 3))
    import torchvision
    cfg = torch.__config__.show()
    info = {k: v for k, v in re.findall(r"(BLAS_INFO|LAPACK_INFO|USE_MKLDNN|USE_OPENMP)=([^,\s]+)", cfg)}
    print(json.dumps({"torch": torch.__version__, "torchvision": torchvision.__version__, "libs": mapped_libs(),
                      "config": info, "default_threads": torch.get_num_threads()}))


def worker_gemm(argv):
    """torch.nn.functional.linear at each shape: best and median of as many calls as fit in --seconds."""
    ap = argparse.ArgumentParser(prog="bench.py _gemm")
    ap.add_argument("--shapes", required=True, help="M,N,K;M,N,K;...")
    ap.add_argument("--threads", type=int, required=True, help="torch.set_num_threads")
    ap.add_argument("--seconds", type=float, default=GEMM_SECONDS)
    a = ap.parse_args(argv)
    import torch
    torch.set_num_threads(a.threads)
    linear = torch.nn.functional.linear
    g = torch.Generator().manual_seed(0)
    out = []
    with torch.inference_mode():
        for spec in a.shapes.split(";"):
            m, n, k = (int(v) for v in spec.split(","))
            x = torch.rand(m, k, generator=g) * 2 - 1
            w = torch.rand(n, k, generator=g) * 2 - 1
            b = torch.rand(n, generator=g)
            linear(x, w, b)  # warm-up
            t0 = time.perf_counter()
            linear(x, w, b)  # the time of one call sets the number of runs (as lmv gemm does)
            one = time.perf_counter() - t0
            runs = min(100000, max(3, int(a.seconds / one) if one > 0 else 1000))
            times = []
            for _ in range(runs):
                t0 = time.perf_counter()
                linear(x, w, b)
                times.append((time.perf_counter() - t0) * 1e3)
            times.sort()
            out.append({"m": m, "n": n, "k": k, "runs": runs, "best_ms": round(times[0], 5),
                        "median_ms": round(times[runs // 2], 5)})
    print(json.dumps({"torch": torch.__version__, "torch_threads": torch.get_num_threads(), "libs": mapped_libs(),
                      "env": {k: os.environ[k] for k in THREAD_VARS + ("LD_LIBRARY_PATH",) if k in os.environ},
                      "results": out}))


def linear_label(names):
    """Compact name of the nn.Linear modules sharing one shape: module paths grouped by their shape
    with the numbers hidden, a '*' where the group's paths differ (stages.3.*.mlp.0)."""
    groups = OrderedDict()
    for n in names:
        groups.setdefault(re.sub(r"\d+", "#", n), []).append(n.split("."))
    out = []
    for parts in groups.values():
        out.append(".".join(c[0] if len(set(c)) == 1 else "*" for c in zip(*parts)))
    return " + ".join(out)


def worker_shapes(argv):
    """(M, N, K) of every nn.Linear call of a model at batch 1, IMGxIMG, via forward hooks."""
    ap = argparse.ArgumentParser(prog="bench.py _shapes")
    ap.add_argument("--models", required=True)
    a = ap.parse_args(argv)
    import torch
    torch.set_num_threads(1)
    res = OrderedDict()
    for name in a.models.split(","):
        torch.manual_seed(0)
        model = build_model(name)
        model.eval()
        seen = OrderedDict()

        def hook(mod, inp, _out, path):
            x = inp[0]
            key = (x.numel() // x.shape[-1], mod.out_features, mod.in_features)
            seen.setdefault(key, []).append(path)

        handles = [mod.register_forward_hook(lambda mod, inp, out, path=path: hook(mod, inp, out, path))
                   for path, mod in model.named_modules() if isinstance(mod, torch.nn.Linear)]
        with torch.inference_mode():
            model(torch.rand(1, 3, IMG, IMG, generator=torch.Generator().manual_seed(0)))
        for h in handles:
            h.remove()
        total = sum(m * n * k * len(p) for (m, n, k), p in seen.items())
        shapes = [{"m": m, "n": n, "k": k, "count": len(p), "label": linear_label(p)}
                  for (m, n, k), p in sorted(seen.items(), key=lambda kv: -kv[0][0] * kv[0][1] * kv[0][2] * len(kv[1]))]
        res[name] = {"linear_gmac": round(total / 1e9, 4), "shapes": shapes}
    print(json.dumps({"torch": torch.__version__, "img": IMG, "models": res}))


def worker_requant(argv):
    """lmvfile.requantize in its own process (with numpy when this python has it)."""
    ap = argparse.ArgumentParser(prog="bench.py _requant")
    ap.add_argument("--src", required=True)
    ap.add_argument("--dst", required=True)
    ap.add_argument("--dtype", required=True, choices=DTYPES)
    a = ap.parse_args(argv)
    sys.path.insert(0, os.path.dirname(LMVFILE))
    import lmvfile
    t0 = time.perf_counter()
    tmp = a.dst + ".tmp"
    size = lmvfile.requantize(a.src, tmp, a.dtype)
    os.replace(tmp, a.dst)
    print(json.dumps({"bytes": size, "secs": round(time.perf_counter() - t0, 2),
                      "numpy": lmvfile._np is not None}))


def worker_classify(argv):
    """The PyTorch side of the cold start: what a user's script does for one JPEG — import torch and
    torchvision, build the model, load the checkpoint, decode and transform the picture with Pillow and
    torchvision (the preprocessing recorded in the .lmv file), run, print the top 5."""
    ap = argparse.ArgumentParser(prog="bench.py _classify")
    ap.add_argument("--model", required=True)
    ap.add_argument("--pth", required=True)
    ap.add_argument("--lmv", required=True, help="the converted file, for its preprocessing and labels")
    ap.add_argument("--image", required=True)
    ap.add_argument("--threads", type=int, required=True)
    a = ap.parse_args(argv)
    import torch
    import torchvision.transforms as T
    from PIL import Image
    sys.path.insert(0, os.path.dirname(LMVFILE))
    import lmvfile
    torch.set_num_threads(a.threads)
    meta = lmvfile.read(a.lmv, verify_crc=False).meta
    m, _, _ = _load(a.model, a.pth)
    interp = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC,
              "nearest": T.InterpolationMode.NEAREST}[meta.get("pre.interp", "bicubic")]
    crop = list(meta["pre.crop"])
    resize = meta.get("pre.resize", [0])[0] or crop
    tf = T.Compose([T.Resize(resize, interpolation=interp), T.CenterCrop(crop), T.ToTensor(),
                    T.Normalize(list(meta["pre.mean"]), list(meta["pre.std"]))])
    x = tf(Image.open(a.image).convert("RGB")).unsqueeze(0)
    with torch.inference_mode():
        p = torch.softmax(m(x)[0], 0)
    labels = meta.get("labels") or ["class %d" % i for i in range(p.numel())]  # as classify prints them
    for v, i in zip(*torch.topk(p, 5)):
        print("%8.2f%%  %s" % (100 * float(v), labels[int(i)]))


def worker_parity(argv):
    """The model's logits on the benchmark input (batch 1, seed 0) in PyTorch and through `lmv run` on the
    converted file: max |difference|, the largest |logit| and whether the argmax agrees."""
    ap = argparse.ArgumentParser(prog="bench.py _parity")
    ap.add_argument("--model", required=True)
    ap.add_argument("--pth", required=True)
    ap.add_argument("--lmv", required=True)
    a = ap.parse_args(argv)
    import numpy as np
    import torch
    torch.set_num_threads(1)
    m, _, _ = _load(a.model, a.pth)
    s = img_of(a.model)
    x = torch.rand(1, 3, s, s, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.inference_mode():
        want = m(x).numpy().astype(np.float64)
    with tempfile.TemporaryDirectory() as d:
        np.save(os.path.join(d, "x.npy"), x.numpy())
        r = subprocess.run([LMV, "run", a.lmv, os.path.join(d, "x.npy"), os.path.join(d, "y.npy"), "--threads", "1"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
        if r.returncode != 0:
            print(json.dumps({"error": "lmv run failed: " + (r.stderr.strip() or r.stdout.strip())[-300:]}))
            return
        got = np.load(os.path.join(d, "y.npy")).astype(np.float64).reshape(want.shape)
    print(json.dumps({"max_abs_diff": float(np.max(np.abs(got - want))), "max_abs_logit": float(np.max(np.abs(want))),
                      "argmax_same": bool((got.argmax(-1) == want.argmax(-1)).all())}))


WORKERS = {"_parity": worker_parity, "_build": worker_build, "_export": worker_export, "_torch": worker_torch, "_probe": worker_probe,
           "_gemm": worker_gemm, "_shapes": worker_shapes, "_requant": worker_requant, "_classify": worker_classify}


# =============================================================================================
# driver side: standard library only
# =============================================================================================

def log(msg=""):
    print(msg, flush=True)


def run_proc(cmd, env=None, timeout=900.0, cwd=ROOT):
    """Run cmd in its own process group; returns dict(rc, out, err, secs, maxrss_kb, timed_out).
    Peak RSS comes from wait4(), i.e. the child's own ru_maxrss (plus any children it waited for)."""
    with tempfile.TemporaryFile() as fo, tempfile.TemporaryFile() as fe:
        t0 = time.monotonic()
        try:
            p = subprocess.Popen(cmd, stdout=fo, stderr=fe, stdin=subprocess.DEVNULL, env=env, cwd=cwd,
                                 start_new_session=True)
        except OSError as e:
            return dict(rc=127, out="", err=str(e), secs=0.0, maxrss_kb=None, timed_out=False)
        timed_out = False
        try:
            while True:
                pid, status, ru = os.wait4(p.pid, os.WNOHANG)
                if pid:
                    break
                if time.monotonic() - t0 > timeout:
                    timed_out = True
                    try:
                        os.killpg(p.pid, signal.SIGKILL)
                    except OSError:
                        pass
                    pid, status, ru = os.wait4(p.pid, 0)
                    break
                time.sleep(0.05)
        except BaseException:
            try:
                os.killpg(p.pid, signal.SIGKILL)
                os.wait4(p.pid, 0)
            except OSError:
                pass
            p.returncode = -9
            raise
        rc = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -os.WTERMSIG(status)
        p.returncode = rc  # already reaped: keep Popen from waiting again
        secs = time.monotonic() - t0
        fo.seek(0)
        fe.seek(0)
        out = fo.read().decode("utf-8", "replace")
        err = fe.read().decode("utf-8", "replace")
    return dict(rc=rc, out=out, err=err, secs=secs, maxrss_kb=ru.ru_maxrss, timed_out=timed_out)


def last_json(text):
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                return None
    return None


def short_err(r):
    if r["timed_out"]:
        return "timed out after %.0f s" % r["secs"]
    lines = [ln for ln in (r["err"] + "\n" + r["out"]).strip().splitlines() if ln.strip()]
    return "exit %d: %s" % (r["rc"], lines[-1][:300] if lines else "(no output)")


def clean_env(**kw):
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    env.update({k: str(v) for k, v in kw.items() if v is not None})
    return env


def sh(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=dict(os.environ, LC_ALL="C")).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


# ---------------------------------------------------------------------------------------------
# machine, FMA peak
# ---------------------------------------------------------------------------------------------

def machine_info():
    info = OrderedDict()
    lscpu = sh(["lscpu"])
    for key in ("Model name", "CPU(s)", "Thread(s) per core", "Core(s) per socket", "Socket(s)", "CPU max MHz",
                "Hypervisor vendor"):
        m = re.search(r"^%s:\s*(.+)$" % re.escape(key), lscpu, re.M)
        if m:
            info[key] = m.group(1).strip()
    flags = re.search(r"^Flags:\s*(.+)$", lscpu, re.M)
    flags = set(flags.group(1).split()) if flags else set()
    info["simd"] = " ".join(f for f in ("avx2", "fma", "avx512f") if f in flags) or "none of avx2/fma/avx512f"
    info["nproc"] = os.cpu_count()
    info["kernel"] = platform.release()
    try:
        info["loadavg_at_start"] = os.getloadavg()[0]
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            info["mem_gb"] = round(int(re.search(r"MemTotal:\s+(\d+)", f.read()).group(1)) / 1e6, 1)
    except (OSError, AttributeError):
        pass
    cc = os.environ.get("CC", "cc")
    info["cc"] = (sh([cc, "--version"]).splitlines() or ["?"])[0]
    rev = sh(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"]).strip()
    dirty = sh(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"]).strip()
    info["git"] = (rev or "?") + (" (with uncommitted changes)" if dirty else "")
    return info


PEAK_C = r"""
/* FP32 FMA throughput: independent accumulators, no memory traffic.  Written by tools/bench.py. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }

#if defined(__AVX512F__)
__attribute__((noinline)) static float k512(long n, float s) {
    __m512 b = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
    __m512 a0 = _mm512_set1_ps(s), a1 = _mm512_set1_ps(s + 1), a2 = _mm512_set1_ps(s + 2), a3 = _mm512_set1_ps(s + 3);
    __m512 a4 = _mm512_set1_ps(s + 4), a5 = _mm512_set1_ps(s + 5), a6 = _mm512_set1_ps(s + 6), a7 = _mm512_set1_ps(s + 7);
    __m512 a8 = _mm512_set1_ps(s + 8), a9 = _mm512_set1_ps(s + 9), a10 = _mm512_set1_ps(s + 10), a11 = _mm512_set1_ps(s + 11);
    for (long i = 0; i < n; i++) {
        a0 = _mm512_fmadd_ps(a0, b, c); a1 = _mm512_fmadd_ps(a1, b, c); a2 = _mm512_fmadd_ps(a2, b, c);
        a3 = _mm512_fmadd_ps(a3, b, c); a4 = _mm512_fmadd_ps(a4, b, c); a5 = _mm512_fmadd_ps(a5, b, c);
        a6 = _mm512_fmadd_ps(a6, b, c); a7 = _mm512_fmadd_ps(a7, b, c); a8 = _mm512_fmadd_ps(a8, b, c);
        a9 = _mm512_fmadd_ps(a9, b, c); a10 = _mm512_fmadd_ps(a10, b, c); a11 = _mm512_fmadd_ps(a11, b, c);
    }
    a0 = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)), _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7)));
    a0 = _mm512_add_ps(a0, _mm512_add_ps(_mm512_add_ps(a8, a9), _mm512_add_ps(a10, a11)));
    return _mm512_reduce_add_ps(a0);
}
#endif

#if defined(__AVX2__) && defined(__FMA__)
#define ISA "avx2-fma"
#define FLOP_PER_ITER (12 * 8 * 2)
__attribute__((noinline)) static float kernel(long n, float s) {
    __m256 b = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
    __m256 a0 = _mm256_set1_ps(s), a1 = _mm256_set1_ps(s + 1), a2 = _mm256_set1_ps(s + 2), a3 = _mm256_set1_ps(s + 3);
    __m256 a4 = _mm256_set1_ps(s + 4), a5 = _mm256_set1_ps(s + 5), a6 = _mm256_set1_ps(s + 6), a7 = _mm256_set1_ps(s + 7);
    __m256 a8 = _mm256_set1_ps(s + 8), a9 = _mm256_set1_ps(s + 9), a10 = _mm256_set1_ps(s + 10), a11 = _mm256_set1_ps(s + 11);
    float r[8];
    int j;
    for (long i = 0; i < n; i++) {
        a0 = _mm256_fmadd_ps(a0, b, c); a1 = _mm256_fmadd_ps(a1, b, c); a2 = _mm256_fmadd_ps(a2, b, c);
        a3 = _mm256_fmadd_ps(a3, b, c); a4 = _mm256_fmadd_ps(a4, b, c); a5 = _mm256_fmadd_ps(a5, b, c);
        a6 = _mm256_fmadd_ps(a6, b, c); a7 = _mm256_fmadd_ps(a7, b, c); a8 = _mm256_fmadd_ps(a8, b, c);
        a9 = _mm256_fmadd_ps(a9, b, c); a10 = _mm256_fmadd_ps(a10, b, c); a11 = _mm256_fmadd_ps(a11, b, c);
    }
    a0 = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)), _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)));
    a0 = _mm256_add_ps(a0, _mm256_add_ps(_mm256_add_ps(a8, a9), _mm256_add_ps(a10, a11)));
    _mm256_storeu_ps(r, a0);
    for (j = 1; j < 8; j++) r[0] += r[j];
    return r[0];
}
#else
#define ISA "portable"
#define FLOP_PER_ITER (32 * 2)
__attribute__((noinline)) static float kernel(long n, float s) {
    float a[32], r = 0.0f, b = 0.999999f, c = 1e-7f;
    int j;
    for (j = 0; j < 32; j++) a[j] = s + j;
    for (long i = 0; i < n; i++)
        for (j = 0; j < 32; j++) a[j] = a[j] * b + c;
    for (j = 0; j < 32; j++) r += a[j];
    return r;
}
#endif

/* usage: fmapeak THREADS ITERS [512]  ->  one JSON line */
int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 1, rep, wide = argc > 3 && atoi(argv[3]) == 512;
    long n = argc > 2 ? atol(argv[2]) : 100000000L;
    double best = 0.0, flop_per_iter = FLOP_PER_ITER;
    const char *isa = ISA;
    volatile float sink = 0.0f;
#if defined(__AVX512F__)
    if (wide) { isa = "avx512f"; flop_per_iter = 12 * 16 * 2; }
#else
    if (wide) { printf("{\"error\": \"not compiled with AVX-512\"}\n"); return 3; }
#endif
#ifdef _OPENMP
    omp_set_num_threads(threads);
#else
    if (threads != 1) { printf("{\"error\": \"compiled without OpenMP\"}\n"); return 3; }
#endif
    for (rep = 0; rep < 6; rep++) { /* the first repetition also warms the clocks up */
        double t0 = now(), dt;
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
#endif
        {
            float v;
#if defined(__AVX512F__)
            v = wide ? k512(n, (float)rep) : kernel(n, (float)rep);
#else
            v = kernel(n, (float)rep);
#endif
#ifdef _OPENMP
#pragma omp critical
#endif
            sink += v;
        }
        dt = now() - t0;
        if (rep > 0 && threads * (double)n * flop_per_iter / dt / 1e9 > best) best = threads * (double)n * flop_per_iter / dt / 1e9;
    }
    printf("{\"isa\": \"%s\", \"threads\": %d, \"gflops\": %.3f, \"per_thread\": %.3f, \"sink\": %g}\n", isa, threads,
           best, best / threads, (double)sink);
    return 0;
}
"""


def measure_peak(thread_counts, quick, timeout):
    """Compile the FMA loop into build/bench and run it at each thread count: {threads: GFLOP/s}."""
    src = os.path.join(OUT, "fmapeak.c")
    exe = os.path.join(OUT, "fmapeak")
    with open(src, "w") as f:
        f.write(PEAK_C)
    cc = os.environ.get("CC", "cc")
    res = {"isa": None, "gflops": {}, "avx512_gflops": {}, "note": ""}
    built = None
    for flags in (["-O2", "-march=native", "-fopenmp"], ["-O2", "-march=native"], ["-O2", "-fopenmp"], ["-O2"]):
        r = run_proc([cc, "-std=c99", "-D_POSIX_C_SOURCE=200809L", *flags, "-o", exe, src], timeout=timeout)
        if r["rc"] == 0:
            built = flags
            break
    if not built:
        res["note"] = "could not compile the FMA loop (%s)" % short_err(r)
        return res
    if "-fopenmp" not in built:
        res["note"] = "compiled without OpenMP: multi-thread peak not measured"
    iters = "20000000" if quick else "120000000"
    for n in thread_counts:
        r = run_proc([exe, str(n), iters], timeout=timeout)
        j = last_json(r["out"]) if r["rc"] == 0 else None
        if j and "gflops" in j:
            res["isa"] = j["isa"]
            res["gflops"][n] = j["gflops"]
        else:
            res["note"] += "%s%d thread(s): %s" % ("; " if res["note"] else "", n, (j or {}).get("error") or short_err(r))
        r = run_proc([exe, str(n), iters, "512"], timeout=timeout)
        j = last_json(r["out"]) if r["rc"] == 0 else None
        if j and "gflops" in j:
            res["avx512_gflops"][n] = j["gflops"]
    return res


# ---------------------------------------------------------------------------------------------
# PyTorch interpreter, BLAS, ONNX Runtime install
# ---------------------------------------------------------------------------------------------

def find_torch_python():
    cands = []
    if os.environ.get("BENCH_TORCH_PYTHON"):
        cands.append(os.environ["BENCH_TORCH_PYTHON"])
    cands += [sys.executable, "/usr/bin/python3", shutil.which("python3") or ""]
    for py in cands:
        if py and os.path.exists(py):
            r = run_proc([py, "-c", "import torch, torchvision"], timeout=120)
            if r["rc"] == 0:
                return py
    return None


def openblas_dir():
    for d in sorted(glob.glob("/usr/lib/*/openblas-pthread")) + sorted(glob.glob("/usr/lib/*/openblas-openmp")):
        if os.path.exists(os.path.join(d, "libblas.so.3")):
            return d
    return None


def describe_blas(libs):
    """(short name, path) of the BLAS among mapped libraries."""
    for p in libs:
        b = os.path.basename(p)
        m = re.match(r"libopenblas(p|o)?-r([\d.]+)\.so", b)
        if m:
            kind = {"p": "pthread", "o": "openmp"}.get(m.group(1) or "", "serial")
            return "OpenBLAS %s (%s)" % (m.group(2), kind), p
    for p in libs:
        if "openblas" in p:
            return "OpenBLAS", p
    for p in libs:
        if "mkl" in p:
            return "Intel MKL", p
    for p in libs:
        if "blis" in p:
            return "BLIS", p
    for p in libs:
        if "atlas" in p:
            return "ATLAS", p
    for p in libs:
        if re.search(r"/blas/libblas\.so|/libblas\.so", p):
            return "reference BLAS (netlib)", p
    return "unknown", None


def torch_env(threads, variant, blas_dir):
    """Environment of a PyTorch worker; returns (env, torch.set_num_threads value)."""
    kw = dict(OMP_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    tt = threads
    if variant == "passive":
        kw["OMP_WAIT_POLICY"] = "PASSIVE"
    elif variant == "blas-only":
        kw.update(OMP_NUM_THREADS=1, MKL_NUM_THREADS=1)
        tt = 1
    env = clean_env(**kw)
    if blas_dir:
        env["LD_LIBRARY_PATH"] = blas_dir + (":" + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
    return env, tt


def probe_torch(py, blas_dir, timeout):
    out = {}
    for key, d in (("system", None), ("forced", blas_dir)):
        if key == "forced" and not d:
            continue
        env, _ = torch_env(1, "pinned", d)
        r = run_proc([py, THIS, "_probe"], env=env, timeout=timeout)
        j = last_json(r["out"]) if r["rc"] == 0 else None
        out[key] = j if j else {"error": short_err(r)}
    return out


def setup_ort(args):
    """Install onnxruntime-node into build/bench/node if needed; returns (node path or None, note)."""
    node = shutil.which("node")
    if not node:
        return None, "node not found: ONNX Runtime skipped (apt-get install nodejs npm)"
    r = run_proc([node, "--version"], timeout=60)
    ver = r["out"].strip()
    m = re.match(r"v(\d+)", ver)
    if not m or int(m.group(1)) < 16:
        return None, "node %s is too old for onnxruntime-node (needs >= 16): ONNX Runtime skipped" % (ver or "?")
    pkg = os.path.join(NODE_DIR, "node_modules", "onnxruntime-node", "package.json")
    if not os.path.exists(pkg):
        npm = shutil.which("npm")
        if not npm:
            return None, "npm not found: ONNX Runtime skipped (apt-get install npm)"
        os.makedirs(NODE_DIR, exist_ok=True)
        log("installing %s into %s (npm, --ignore-scripts: the CPU binaries ship in the package) ..."
            % (args.ort_package, os.path.relpath(NODE_DIR, ROOT)))
        r = run_proc([npm, "install", args.ort_package, "--ignore-scripts", "--no-audit", "--no-fund",
                      "--loglevel=error", "--prefix", NODE_DIR], timeout=900, cwd=NODE_DIR)
        if r["rc"] != 0 or not os.path.exists(pkg):
            return None, "npm install %s failed (%s): ONNX Runtime skipped" % (args.ort_package, short_err(r))
    r = run_proc([node, "-e", "require(require.resolve('onnxruntime-node', {paths: [process.argv[1]]}));",
                  NODE_DIR], timeout=120)
    if r["rc"] != 0:
        return None, "onnxruntime-node does not load (%s): ONNX Runtime skipped" % short_err(r)
    with open(pkg) as f:
        v = json.load(f).get("version", "?")
    return node, "onnxruntime-node %s (node %s)" % (v, ver)


# ---------------------------------------------------------------------------------------------
# model files
# ---------------------------------------------------------------------------------------------

def newer(path, deps):
    """True if path exists and is newer than every existing dep."""
    if not os.path.exists(path):
        return False
    t = os.path.getmtime(path)
    return all(not os.path.exists(d) or os.path.getmtime(d) <= t for d in deps)


def prepare_model(name, py, batches, want_onnx, timeout):
    """Checkpoint, .lmv and ONNX files of one model (cached); returns an info dict."""
    spec = MODELS[name]
    info = OrderedDict(label=spec["label"], source=spec["source"])
    # the checkpoint keeps the model's registered name where the recipe gives one: the converter reads the
    # options the tensors cannot show (RoPE grid, window size) from it, as it would from a real timm file
    pth = os.path.join(OUT, spec.get("file", name + ".pth"))
    lmv = os.path.join(OUT, name + ".lmv")
    info["img"] = img_of(name)
    stamp = os.path.join(OUT, name + ".json")
    recipe = {"recipe": RECIPE_VERSION, "model": name, "source": spec["source"]}
    old = None
    if os.path.exists(stamp):
        try:
            with open(stamp) as f:
                old = json.load(f)
        except ValueError:
            old = None
    if not (old and all(old.get(k) == v for k, v in recipe.items()) and os.path.exists(pth)):
        if not py:
            info["error"] = "no python3 with torch to build the model"
            return info
        t0 = time.monotonic()
        r = run_proc([py, THIS, "_build", "--model", name, "--pth", pth], timeout=timeout)
        j = last_json(r["out"]) if r["rc"] == 0 else None
        if not j:
            info["error"] = "building the model failed: " + short_err(r)
            return info
        old = dict(recipe, params=j["params"])
        with open(stamp + ".tmp", "w") as f:
            json.dump(old, f)
        os.replace(stamp + ".tmp", stamp)
        log("  %-14s built with random weights (%.1f M parameters) in %.1f s"
            % (name, j["params"] / 1e6, time.monotonic() - t0))
    info["params"] = old.get("params")
    info["pth"] = pth
    conv_deps = [pth, stamp, CONVERT, os.path.join(ROOT, "tools", "lmvfile.py")]
    if not newer(lmv, conv_deps):
        t0 = time.monotonic()
        cpy = py or sys.executable
        r = run_proc([cpy, CONVERT, pth, "-o", lmv + ".tmp", "--labels", "none", "--name", name, "-q"] + spec["conv"],
                     timeout=timeout)
        if r["rc"] != 0 or not os.path.exists(lmv + ".tmp"):
            info["error"] = "convert.py failed: " + short_err(r)
            return info
        os.replace(lmv + ".tmp", lmv)
        log("  %-14s converted to %s in %.1f s" % (name, os.path.relpath(lmv, ROOT), time.monotonic() - t0))
    info["lmv"] = lmv
    info["lmv_mb"] = round(os.path.getsize(lmv) / 1e6, 1)
    if py and spec.get("parity", not spec.get("default", True)):
        # the newer graphs are checked against PyTorch on the benchmark input before anything is timed:
        # exact as the tests require (1e-4 absolute or 1e-5 relative to the largest logit), same argmax
        r = run_proc([py, THIS, "_parity", "--model", name, "--pth", pth, "--lmv", lmv],
                     env=clean_env(OMP_NUM_THREADS=1, OPENBLAS_NUM_THREADS=1), timeout=timeout)
        j = last_json(r["out"]) if r["rc"] == 0 else None
        if not j or "error" in j:
            info["error"] = "parity check failed: " + ((j or {}).get("error") or short_err(r))
            return info
        info["parity"] = j
        ok = j["argmax_same"] and j["max_abs_diff"] <= max(1e-4, 1e-5 * j["max_abs_logit"])
        log("  %-14s lemevit.h against PyTorch on the bench input: max |diff| %.2e (largest |logit| %.3g), "
            "argmax %s -> %s" % (name, j["max_abs_diff"], j["max_abs_logit"],
                                 "same" if j["argmax_same"] else "DIFFERS", "exact" if ok else "NOT EXACT"))
        if not ok:
            info["error"] = "lemevit.h differs from PyTorch on the bench input (max |diff| %.2e)" % j["max_abs_diff"]
            return info
    info["onnx"] = {}
    if want_onnx:
        for b in batches:
            onnx = os.path.join(OUT, "%s_b%d.onnx" % (name, b))
            if not newer(onnx, [pth, stamp]):
                t0 = time.monotonic()
                r = run_proc([py, THIS, "_export", "--model", name, "--pth", pth, "--onnx", onnx, "--batch", str(b)],
                             env=clean_env(OMP_NUM_THREADS=1, OPENBLAS_NUM_THREADS=1), timeout=timeout)
                if r["rc"] != 0 or not os.path.exists(onnx):
                    info.setdefault("onnx_error", {})[b] = short_err(r)
                    log("  %-14s ONNX export (batch %d) FAILED: %s" % (name, b, short_err(r)))
                    continue
                log("  %-14s exported to %s in %.1f s" % (name, os.path.relpath(onnx, ROOT), time.monotonic() - t0))
            info["onnx"][b] = onnx
    return info


def prepare_dtypes(name, info, py, dtypes, timeout):
    """build/bench/<name>_<dtype>.lmv for each reduced-precision dtype (cached, rebuilt when the float32
    .lmv or tools/lmvfile.py changes); fills info["dtypes"][dtype] = {lmv, lmv_mb} or {error}."""
    info["dtypes"] = OrderedDict()
    files = [d for d in dtypes if d not in FILE_DTYPE] + [FILE_DTYPE[d] for d in dtypes if d in FILE_DTYPE]
    for d in OrderedDict.fromkeys(files):
        if d == "f32":
            continue
        path = os.path.join(OUT, "%s_%s.lmv" % (name, d))
        if not newer(path, [info["lmv"], LMVFILE]):
            t0 = time.monotonic()
            r = run_proc([py or sys.executable, THIS, "_requant", "--src", info["lmv"], "--dst", path, "--dtype", d],
                         timeout=timeout)
            if r["rc"] != 0 or not os.path.exists(path):
                info["dtypes"][d] = {"error": "lmvfile.requantize failed: " + short_err(r)}
                log("  %-14s %s re-encoding FAILED: %s" % (name, d, short_err(r)))
                continue
            log("  %-14s re-encoded as %s (%s) in %.1f s" % (name, os.path.relpath(path, ROOT), d,
                                                           time.monotonic() - t0))
        info["dtypes"][d] = OrderedDict(lmv=path, lmv_mb=round(os.path.getsize(path) / 1e6, 1))
    for d in dtypes:  # other ways to run a file made above
        if d in FILE_DTYPE and FILE_DTYPE[d] in info["dtypes"]:
            info["dtypes"][d] = info["dtypes"][FILE_DTYPE[d]]


# ---------------------------------------------------------------------------------------------
# measurements
# ---------------------------------------------------------------------------------------------

def merge_rounds(rs):
    """One configuration's rounds (one process each) as one result: median and best over every timed run
    of every round, the largest peak RSS, the rest from the first round that worked. A failed round makes
    the result a failure: a crash or timeout must not hide behind the other rounds."""
    bad = [r for r in rs if "median_ms" not in r]
    if bad:
        return bad[0]
    r = OrderedDict(rs[0])
    times = [t for x in rs for t in (x.get("times_ms") or [])]
    if len(times) == sum(x.get("runs") or 0 for x in rs) and times:
        r["median_ms"] = round(statistics.median(times), 3)
        r["best_ms"] = round(min(times), 3)
    else:  # an engine that did not report each run: the median of the rounds' medians
        r["median_ms"] = round(statistics.median([x["median_ms"] for x in rs]), 3)
        r["best_ms"] = min(x["best_ms"] for x in rs)
    r["times_ms"] = times
    r["runs"] = sum(x.get("runs") or 0 for x in rs)
    r["rounds"] = len(rs)
    r["round_medians_ms"] = [x["median_ms"] for x in rs]
    r["wall_s"] = round(sum(x.get("wall_s") or 0 for x in rs), 2)
    for k in ("peak_rss_kb", "self_peak_rss_kb"):
        v = [x[k] for x in rs if x.get(k)]
        if v:
            r[k] = max(v)
    return r


def bench_lmv(info, threads, batch, runs, variant, timeout, dtype="f32", exe=None, exact=None):
    """lmv bench on one file; exe: another build of lmv (--builds); threads 0: the library's default.
    exact: --exact-threads, every run on exactly `threads` (default: for any count above one, so the
    tables measure N threads, not the library's choice of at most N)."""
    exact = threads > 1 if exact is None else exact
    res = OrderedDict(engine="lemevit", variant=variant, dtype=dtype, threads=threads, batch=batch, exact_threads=exact)
    path = info["lmv"] if dtype == "f32" else info["dtypes"].get(dtype, {}).get("lmv")
    if not path:
        res["error"] = info["dtypes"].get(dtype, {}).get("error", "no %s file" % dtype)
        return res
    size = info.get("img", IMG)
    cmd = [exe or LMV, "bench", path, "--size", str(size), str(size), "--batch", str(batch), "--threads", str(threads),
           "--runs", str(runs), "--json"] + (["--int8-compute"] if dtype == "int8c" else []) + \
        (["--exact-threads"] if exact else [])
    env = clean_env(OMP_NUM_THREADS=threads or None, OMP_WAIT_POLICY="PASSIVE" if variant == "passive" else None)
    r = run_proc(cmd, env=env, timeout=timeout)
    j = last_json(r["out"]) if r["rc"] == 0 else None
    res.update(wall_s=round(r["secs"], 2), peak_rss_kb=r["maxrss_kb"])
    if not j or "median_ms" not in j:
        res["error"] = short_err(r)
        return res
    res.update(median_ms=j["median_ms"], best_ms=j["best_ms"], gmac=j.get("gmac"),
               open_mapped_ms=j.get("open_mapped_ms"), open_verified_ms=j.get("open_verified_ms"),
               session_bytes=j.get("session_bytes"), self_peak_rss_kb=j.get("peak_rss_kb"), params=j.get("params"),
               weight_bytes=j.get("weight_bytes"), runs=j.get("runs"), warmup=1, times_ms=j.get("times_ms"),
               simd=j.get("simd"))
    return res


def simd_note(results):
    """Which kernel path (lmv bench's "simd": chosen at run time) lemevit.h ran, over all rows."""
    paths = sorted({r.get("simd") for r in results if r.get("engine") == "lemevit" and r.get("simd")})
    return ("lemevit.h kernel path (chosen at run time): %s" % " / ".join(paths)) if paths else ""


def bench_torch(py, name, info, threads, batch, runs, warmup, variant, blas_dir, timeout):
    env, tt = torch_env(threads, variant, blas_dir)
    cmd = [py, THIS, "_torch", "--model", name, "--pth", info["pth"], "--threads", str(tt), "--batch", str(batch),
           "--runs", str(runs), "--warmup", str(warmup)]
    r = run_proc(cmd, env=env, timeout=timeout)
    j = last_json(r["out"]) if r["rc"] == 0 else None
    res = OrderedDict(engine="pytorch", variant=variant, threads=threads, batch=batch, wall_s=round(r["secs"], 2),
                      peak_rss_kb=r["maxrss_kb"])
    if not j or "median_ms" not in j:
        res["error"] = short_err(r)
        return res
    res.update(median_ms=j["median_ms"], best_ms=j["best_ms"], load_ms=j["load_ms"], build_ms=j["build_ms"],
               self_peak_rss_kb=j["self_peak_rss_kb"], torch_threads=j["torch_threads"], runs=runs, warmup=warmup,
               blas=describe_blas(j["libs"])[0], env=j["env"], times_ms=j["times_ms"])
    return res


def bench_ort(node, info, threads, batch, runs, warmup, variant, timeout):
    res = OrderedDict(engine="onnxruntime", variant=variant, threads=threads, batch=batch)
    onnx = info["onnx"].get(batch)
    if not onnx:
        res["error"] = "no ONNX file (export failed)"
        return res
    size = info.get("img", IMG)
    cmd = [node, BENCH_ORT, onnx, "--batch", str(batch), "--size", str(size), str(size), "--threads", str(threads),
           "--runs", str(runs), "--warmup", str(warmup), "--module", NODE_DIR, "--json"]
    if variant == "nospin":
        cmd.append("--no-spin")
    r = run_proc(cmd, env=clean_env(OMP_NUM_THREADS=threads), timeout=timeout)
    j = last_json(r["out"])
    res.update(wall_s=round(r["secs"], 2), peak_rss_kb=r["maxrss_kb"])
    if r["rc"] != 0 or not j or "median_ms" not in j:
        res["error"] = (j or {}).get("error") or short_err(r)
        return res
    res.update(median_ms=j["median_ms"], best_ms=j["best_ms"], create_ms=j["create_ms"],
               self_peak_rss_kb=j["peak_rss_kb"], ort_version=j.get("ort_version"), runs=runs, warmup=warmup,
               times_ms=j["times_ms"])
    return res


# ---------------------------------------------------------------------------------------------
# GEMM micro-benchmark
# ---------------------------------------------------------------------------------------------

def gemm_shapes(models, py, top, timeout):
    """The Linear shapes to time: (list of dicts model, label, m, n, k, count; {model: coverage info}).
    Hooked models come from build/bench/gemm_shapes.json, refreshed when tests/models changes."""
    cache = os.path.join(OUT, "gemm_shapes.json")
    deps = glob.glob(os.path.join(TEST_MODELS, "*.py"))
    hooked = [m for m in models if m not in GEMM_FIXED]
    data = None
    if os.path.exists(cache) and newer(cache, deps):
        try:
            with open(cache) as f:
                data = json.load(f)
        except ValueError:
            data = None
    if not data or data.get("version") != SHAPES_VERSION or data.get("img") != IMG:
        data = {"version": SHAPES_VERSION, "img": IMG, "models": {}}
    missing = [m for m in hooked if m not in data["models"]]
    errors = {}
    if missing and not py:
        errors.update((m, "no python3 with torch to read its Linear shapes") for m in missing)
    elif missing:
        t0 = time.monotonic()
        r = run_proc([py, THIS, "_shapes", "--models", ",".join(missing)], env=clean_env(OMP_NUM_THREADS=1),
                     timeout=timeout)
        j = last_json(r["out"]) if r["rc"] == 0 else None
        if j and "models" in j:
            data["models"].update(j["models"])
            with open(cache + ".tmp", "w") as f:
                json.dump(data, f, indent=1)
            os.replace(cache + ".tmp", cache)
            log("  Linear shapes of %s read with forward hooks in %.1f s" % (", ".join(missing),
                                                                             time.monotonic() - t0))
        else:
            errors.update((m, "reading the Linear shapes failed: " + short_err(r)) for m in missing)
    shapes, coverage = [], OrderedDict()
    for m in models:
        if m in GEMM_FIXED:
            for label, mm, n, k, count in GEMM_FIXED[m]:
                shapes.append(OrderedDict(model=m, label=label, m=mm, n=n, k=k, count=count))
            coverage[m] = {"source": "fixed list"}
        elif m in errors:
            coverage[m] = {"error": errors[m]}
        else:
            d = data["models"][m]
            kept = d["shapes"][:top]
            for x in kept:
                shapes.append(OrderedDict(model=m, label=x["label"], m=x["m"], n=x["n"], k=x["k"], count=x["count"]))
            macs = sum(x["m"] * x["n"] * x["k"] * x["count"] for x in kept)
            coverage[m] = {"source": "nn.Linear forward hooks", "kept": len(kept), "of": len(d["shapes"]),
                           "linear_gmac": d["linear_gmac"],
                           "share": round(macs / (d["linear_gmac"] * 1e9), 4) if d["linear_gmac"] else None}
    return shapes, coverage


def gemm_result(engine, variant, threads, m, n, k, runs, best_ms, median_ms):
    flop = 2.0 * m * n * k
    return OrderedDict(engine=engine, variant=variant, threads=threads, m=m, n=n, k=k, runs=runs, best_ms=best_ms,
                       median_ms=median_ms, gflops_best=round(flop / best_ms / 1e6, 3),
                       gflops_median=round(flop / median_ms / 1e6, 3))


def bench_gemm_lmv(m, n, k, threads, variant, timeout):
    """lmv gemm twice: 3 runs to learn the warm time of one call (lmv's own run count comes from its first,
    cold call, which also starts the threads), then as many runs as fit in GEMM_SECONDS."""
    cmd = [LMV, "gemm", str(m), str(n), str(k), "--threads", str(threads), "--dtype", "f32p", "--json"]
    env = clean_env(OMP_NUM_THREADS=threads, OMP_WAIT_POLICY="PASSIVE" if variant == "passive" else None)
    r = run_proc(cmd + ["--runs", "3"], env=env, timeout=timeout)
    j = last_json(r["out"]) if r["rc"] == 0 else None
    if j and j.get("median_ms"):
        runs = min(100000, max(3, int(GEMM_SECONDS * 1e3 / j["median_ms"])))
        r = run_proc(cmd + ["--runs", str(runs)], env=env, timeout=timeout)
        j = last_json(r["out"]) if r["rc"] == 0 else None
    if not j or "median_ms" not in j:
        return OrderedDict(engine="lemevit", variant=variant, threads=threads, m=m, n=n, k=k, error=short_err(r))
    res = gemm_result("lemevit", variant, threads, m, n, k, j["runs"], j["best_ms"], j["median_ms"])
    res["wall_s"] = round(r["secs"], 2)
    return res


def bench_gemm_torch(py, mnk, threads, variant, blas_dir, timeout):
    """All shapes in one worker process; returns one result per shape."""
    env, tt = torch_env(threads, variant, blas_dir)
    cmd = [py, THIS, "_gemm", "--threads", str(tt), "--seconds", str(GEMM_SECONDS),
           "--shapes", ";".join("%d,%d,%d" % x for x in mnk)]
    r = run_proc(cmd, env=env, timeout=timeout)
    j = last_json(r["out"]) if r["rc"] == 0 else None
    if not j or "results" not in j:
        return [OrderedDict(engine="pytorch", variant=variant, threads=threads, m=m, n=n, k=k, error=short_err(r))
                for m, n, k in mnk]
    out = []
    for x in j["results"]:
        res = gemm_result("pytorch", variant, threads, x["m"], x["n"], x["k"], x["runs"], x["best_ms"],
                          x["median_ms"])
        res.update(torch_threads=j["torch_threads"], blas=describe_blas(j["libs"])[0])
        out.append(res)
    return out


def top5_labels(out):
    """[(percent as printed, label)] of the first five result lines."""
    return [tuple(x.strip() for x in ln.split("%", 1)) for ln in out.splitlines() if re.match(r"^\s+[0-9.]+%\s", ln)][:5]


def same_top5(a, b):
    """'yes', 'yes (ties)' when only the order of equal printed probabilities differs, or 'no'."""
    if a == b:
        return "yes"
    key = lambda r: (-float(r[0]), r[1])  # noqa: E731
    return "yes (ties)" if sorted(map(tuple, a), key=key) == sorted(map(tuple, b), key=key) else "no"


def run_cold(state, a, py, torch_ok, blas_dir):
    """Process start to top-5 printed for one JPEG: build/classify against a PyTorch script
    (worker _classify), COLD_REPS times each, files in the page cache after the first."""
    cold = state["cold"] = []
    models = [m for m in COLD_MODELS if m in state["models"] and "error" not in state["models"][m]]
    if not models or not os.path.exists(CLASSIFY):
        return
    log("")
    log("cold start: process start to top-5 printed for %s ..." % os.path.relpath(COLD_IMAGE, ROOT))
    for m in models:
        info = state["models"][m]
        for t in a.threads:
            row = OrderedDict(model=m, threads=t)
            engines = [("lemevit", [CLASSIFY, info["lmv"], COLD_IMAGE, "--top", "5", "--threads", str(t)],
                        clean_env(OMP_NUM_THREADS=t))]
            if torch_ok:
                env, tt = torch_env(t, "pinned", blas_dir)
                engines.append(("pytorch", [py, THIS, "_classify", "--model", m, "--pth", info["pth"], "--lmv",
                                            info["lmv"], "--image", COLD_IMAGE, "--threads", str(tt)], env))
            for e, cmd, env in engines:
                times, labels, err = [], None, None
                for _ in range(COLD_REPS):
                    r = run_proc(cmd, env=env, timeout=a.timeout)
                    if r["rc"] != 0:
                        err = short_err(r)
                        break
                    times.append(round(r["secs"] * 1e3, 1))
                    labels = top5_labels(r["out"])
                    row[e + "_rss_kb"] = r["maxrss_kb"]
                if err:
                    row[e + "_error"] = err
                else:
                    row[e + "_ms"] = times
                    row[e + "_top5"] = labels
            if "lemevit_top5" in row and "pytorch_top5" in row:
                row["same_top5"] = same_top5(row["lemevit_top5"], row["pytorch_top5"])
            cold.append(row)
            log("  %-14s t=%d  lemevit.h %s ms, PyTorch %s ms%s" % (
                m, t, row.get("lemevit_ms", row.get("lemevit_error")), row.get("pytorch_ms", row.get("pytorch_error", "-")),
                "" if "same_top5" not in row else ", top-5 the same: %s" % row["same_top5"]))
        save(state, a.out)


def cold_table(state, L):
    cold = state.get("cold")
    if not cold:
        return
    L.append("")
    L.append("Cold start, the way a command-line user meets it: process start to the top 5 printed for one JPEG "
             "(%s), %d times each (the first run may read the files from disk, the later ones find them in the page "
             "cache). lemevit.h is `build/classify MODEL.lmv IMAGE --top 5`; PyTorch is a Python script doing the "
             "same: import torch and torchvision, build the model, torch.load + load_state_dict, Pillow + torchvision "
             "transforms with the preprocessing recorded in the .lmv file, forward, softmax, top 5. Times are `first / "
             "median` ms; ratio is median / median; 'yes (ties)': the same classes and printed probabilities, equal "
             "ones in another order (random-weight heads can tie: torchvision starts ViT's head at zero); peak RSS "
             "MB:" % (os.path.relpath(COLD_IMAGE, ROOT), COLD_REPS))
    L.append("")
    L.append("| model | threads | lemevit.h ms | PyTorch ms | lemevit/PyTorch | same top-5 | peak RSS MB lemevit / PyTorch |")
    L.append("|---|---:|---:|---:|---:|---|---|")
    for r in cold:
        def cell(e):
            t = r.get(e + "_ms")
            return "%.0f / %.0f" % (t[0], statistics.median(t)) if t else ("failed" if r.get(e + "_error") else "-")
        lt, pt = r.get("lemevit_ms"), r.get("pytorch_ms")
        ratio = "%.2f" % (statistics.median(lt) / statistics.median(pt)) if lt and pt else "-"
        same = r.get("same_top5", "-")
        same = "**no**" if same in ("no", False) else "yes" if same is True else same
        rss = "%s / %s" % tuple(("%.0f" % (r[e + "_rss_kb"] / 1e3)) if r.get(e + "_rss_kb") else "-"
                                for e in ("lemevit", "pytorch"))
        L.append("| %s | %d | %s | %s | %s | %s | %s |" % (MODELS[r["model"]]["label"], r["threads"],
                                                         cell("lemevit"), cell("pytorch"), ratio, same, rss))


def run_gemm(state, a, py, torch_ok, blas_dir):
    """The GEMM micro-benchmark into state["gemm"]: every distinct shape once per thread count and variant."""
    peak = state["peak"]
    log("")
    log("GEMM shapes (%s) ..." % ", ".join(a.gemm_models))
    shapes, coverage = gemm_shapes(a.gemm_models, py, a.gemm_top, PREP_TIMEOUT)
    gemm = state["gemm"] = OrderedDict(seconds=GEMM_SECONDS, top=a.gemm_top, shapes=shapes, coverage=coverage,
                                       results=[])
    for m, c in coverage.items():
        if "error" in c:
            log("  %-14s SKIPPED: %s" % (m, c["error"]))
    mnk = list(OrderedDict(((x["m"], x["n"], x["k"]), None) for x in shapes))
    if not mnk:
        return
    jobs = []
    for t in a.threads:
        for v in (a.lmv_variants if t > 1 else ["default"]):
            jobs += [("lemevit", t, v, x) for x in mnk]
        if torch_ok:
            for v in (a.torch_variants if t > 1 else ["pinned"]):
                jobs.append(("pytorch", t, v, None))
    n_meas = sum(len(mnk) if x is None else 1 for _, _, _, x in jobs)
    log("timing %d distinct GEMM shapes at %s thread(s): %d measurements (~%.1f s each) ..." % (
        len(mnk), ",".join(str(t) for t in a.threads), n_meas, GEMM_SECONDS))
    i = 0
    for e, t, v, x in jobs:
        t0 = time.monotonic()
        rs = [bench_gemm_lmv(*x, t, v, a.timeout)] if e == "lemevit" else \
            bench_gemm_torch(py, mnk, t, v, blas_dir, a.timeout)
        for r in rs:
            i += 1
            gemm["results"].append(r)
            label = e + ("" if t == 1 or (e == "lemevit" and len(a.lmv_variants) == 1 and v == "default")
                         else "/" + v)
            if "median_ms" in r:
                pk = peak["gflops"].get(t)
                status = "median %7.1f GFLOP/s%s  best %7.1f GFLOP/s  (%d runs)" % (
                    r["gflops_median"], " (%3.0f%% of peak)" % (100 * r["gflops_median"] / pk) if pk else "",
                    r["gflops_best"], r["runs"])
            else:
                status = "FAILED: " + r["error"]
            log("[gemm %3d/%d] %5dx%-5dx%-5d t=%d %-17s %s" % (i, n_meas, r["m"], r["n"], r["k"], t, label, status))
        if e == "pytorch":
            log("              (PyTorch worker: %.1f s for %d shapes)" % (time.monotonic() - t0, len(mnk)))
        save(state, a.out)


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------

def best_of(results, engine, model, threads, batch, dtype="f32"):
    """The fastest successful variant (by median) of an engine for one configuration (lemevit.h: one
    weight dtype; the other engines are float32 only)."""
    ok = [r for r in any_of(results, engine, model, threads, batch, dtype) if "median_ms" in r]
    return min(ok, key=lambda r: r["median_ms"]) if ok else None


def any_of(results, engine, model, threads, batch, dtype="f32"):
    return [r for r in results if r["engine"] == engine and r["model"] == model and r["threads"] == threads
            and r["batch"] == batch and r.get("dtype", "f32") == dtype]


def gemm_best(results, engine, threads, m, n, k):
    """The fastest successful variant (by median) of an engine at one GEMM shape, else the first failure."""
    rs = [r for r in results if r["engine"] == engine and r["threads"] == threads and (r["m"], r["n"], r["k"]) ==
          (m, n, k)]
    ok = [r for r in rs if "median_ms" in r]
    return min(ok, key=lambda r: r["median_ms"]) if ok else (rs[0] if rs else None)


def gflops_cell(r, pk, mark_variant):
    if r is None:
        return "-"
    if "median_ms" not in r:
        return "timeout" if "timed out" in r.get("error", "") else "failed"
    s = "%.1f" % r["gflops_median"] + (" (%.0f%%)" % (100 * r["gflops_median"] / pk) if pk else "")
    if mark_variant and r["variant"] not in ("default", "pinned"):
        s += " (%s)" % r["variant"]
    return s


def fmt_ms(r):
    if r is None:
        return "-"
    if "median_ms" not in r:
        return "timeout" if "timed out" in r.get("error", "") else "failed"
    return "%s / %s" % (fmt_num(r["median_ms"]), fmt_num(r["best_ms"]))


def fmt_num(x):
    return "%.0f" % x if x >= 100 else "%.1f" % x if x >= 10 else "%.2f" % x


def cell(results, engine, model, t, b, mark_variant, dtype="f32"):
    r = best_of(results, engine, model, t, b, dtype)
    if r is None:
        tried = any_of(results, engine, model, t, b, dtype)
        return fmt_ms(tried[0]) if tried else "-"
    s = fmt_ms(r)
    if mark_variant and r["variant"] not in ("default", "pinned", "spin"):
        s += " (%s)" % r["variant"]
    return s


def ratio(a, b):
    return a["median_ms"] / b["median_ms"] if a and b else None


def model_tables(state, L):
    """The main table, the thread speed-ups and the model sizes (float32 weights)."""
    meta, results, peak = state["meta"], state["results"], state["peak"]
    models, threads, batches = meta["models"], meta["threads"], meta["batches"]
    if not models:
        return
    L.append("")
    L.append("Latency is `median / best` in ms per batch. Ratios are lemevit.h median / other median: "
             "**lower is better for lemevit.h**, below 1 means lemevit.h is faster. GFLOP/s counts lemevit.h's "
             "multiply-adds x 2 at the median; % peak is against the measured FMA peak for that many threads. "
             "Peak RSS is the whole process (ru_maxrss), MB. PyTorch and ORT show their fastest thread setting; "
             "a variant in brackets means it beat the plain pinned one (see notes).")
    L.append("")
    L.append("| model | threads | batch | lemevit.h ms | PyTorch ms | ORT ms | lemevit/PyTorch | lemevit/ORT | "
             "lemevit GFLOP/s (% peak) | peak RSS MB lemevit / PyTorch / ORT |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for m in models:
        for t in threads:
            for b in batches:
                lm = best_of(results, "lemevit", m, t, b)
                tr = best_of(results, "pytorch", m, t, b)
                ox = best_of(results, "onnxruntime", m, t, b)
                if not (any_of(results, "lemevit", m, t, b) or any_of(results, "pytorch", m, t, b)
                        or any_of(results, "onnxruntime", m, t, b)):
                    continue
                rt, ro = ratio(lm, tr), ratio(lm, ox)
                gf = ""
                if lm and lm.get("gflops"):
                    g = lm["gflops"]
                    pk = peak.get("gflops", {}).get(t)
                    gf = "%.1f" % g + (" (%.0f%%)" % (100 * g / pk) if pk else "")
                rss = " / ".join("%.0f" % (x["peak_rss_kb"] / 1e3) if x and x.get("peak_rss_kb") else "-"
                                 for x in (lm, tr, ox))
                L.append("| %s | %d | %d | %s | %s | %s | %s | %s | %s | %s |" % (
                    MODELS[m]["label"], t, b, cell(results, "lemevit", m, t, b, True),
                    cell(results, "pytorch", m, t, b, True), cell(results, "onnxruntime", m, t, b, True),
                    "%.2f" % rt if rt else "-", "%.2f" % ro if ro else "-", gf or "-", rss))
    if len(threads) > 1:
        t0 = threads[0]
        L.append("")
        L.append("Speed-up of more threads over %d (%d thread(s) / N threads; each cell: from the medians / from the "
                 "best runs; higher is better; the best runs are the steadier measure when other work shares the "
                 "machine):" % (t0, t0))
        L.append("")
        L.append("| model | batch | threads | lemevit.h | PyTorch | ORT |")
        L.append("|---|---:|---:|---:|---:|---:|")
        for m in models:
            for b in batches:
                for t in threads[1:]:
                    cells = []
                    for e in ("lemevit", "pytorch", "onnxruntime"):
                        a, c = best_of(results, e, m, t0, b), best_of(results, e, m, t, b)
                        cells.append("%.2f / %.2f" % (a["median_ms"] / c["median_ms"], a["best_ms"] / c["best_ms"])
                                     if a and c else "-")
                    L.append("| %s | %d | %d | %s |" % (MODELS[m]["label"], b, t, " | ".join(cells)))
    L.append("")
    L.append("Model size and load time (ms; lemevit.h: open with the header checked and the file mapped / open "
             "with every weight checksummed; PyTorch: torch.load + load_state_dict; ORT: session creation):")
    L.append("")
    L.append("| model | params M | GMAC / image | .lmv MB | lemevit.h open mapped / verified | PyTorch load | "
             "ORT session |")
    L.append("|---|---:|---:|---:|---:|---:|---:|")
    for m in models:
        info = state["models"].get(m, {})
        lms = [r for r in results if r["engine"] == "lemevit" and r["model"] == m and "median_ms" in r
               and r.get("dtype", "f32") == "f32"]
        trs = [r for r in results if r["engine"] == "pytorch" and r["model"] == m and "load_ms" in r]
        oxs = [r for r in results if r["engine"] == "onnxruntime" and r["model"] == m and "create_ms" in r]
        gm = next((r["gmac"] / r["batch"] for r in lms if r.get("gmac")), None)
        om = "%s / %s" % (fmt_num(min(r["open_mapped_ms"] for r in lms)),
                          fmt_num(min(r["open_verified_ms"] for r in lms))) if lms else "-"
        L.append("| %s | %s | %s | %s | %s | %s | %s |" % (
            MODELS[m]["label"], "%.1f" % (info["params"] / 1e6) if info.get("params") else "-",
            "%.2f" % gm if gm else "-", info.get("lmv_mb", "-"), om,
            fmt_num(min(r["load_ms"] for r in trs)) if trs else "-",
            fmt_num(min(r["create_ms"] for r in oxs)) if oxs else "-"))
    memory_table(state, L)


def memory_table(state, L):
    """The memory target: lemevit.h's peak RSS against its weights + 1.5 x its activations: the
    session's planned arena (lmv_session_memory: every buffer one image's forward pass needs at
    once, reused layer after layer, plus per-thread attention scratch; with threads and a batch,
    one such set per thread, the images running side by side) and the batch's input tensor the
    caller holds."""
    rows = [r for r in state["results"] if r["engine"] == "lemevit" and r.get("dtype", "f32") == "f32"
            and r.get("peak_rss_kb") and r.get("weight_bytes") and r.get("session_bytes") is not None]
    if not rows:
        return
    L.append("")
    L.append("Memory of lemevit.h against the target peak RSS <= weights + 1.5 x activations (MB; activations = "
             "the planned session arena, one image's buffers, or one set per thread when a batch runs its images side "
             "by side, plus the batch's "
             "float32 input tensor; peak RSS of the whole `lmv bench` process, code and libc included):")
    L.append("")
    L.append("| model | threads | batch | weights | session arena | input | weights + 1.5 x activations | peak RSS | "
             "within |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        w, a, rss = r["weight_bytes"] / 1e6, r["session_bytes"] / 1e6, r["peak_rss_kb"] / 1e3
        x = r["batch"] * 3 * img_of(r["model"]) ** 2 * 4 / 1e6
        bound = w + 1.5 * (a + x)
        L.append("| %s | %d | %d | %.1f | %.1f | %.1f | %.1f | %.1f | %s |" % (
            MODELS[r["model"]]["label"], r["threads"], r["batch"], w, a, x, bound, rss,
            "yes" if rss <= bound else "**no**"))


def dtype_table(state, L):
    """lemevit.h with f16 / int8 weight files next to its float32 file and PyTorch float32."""
    meta, results = state["meta"], state["results"]
    dtypes = [d for d in DTYPES if d in meta.get("dtypes", [])]
    if not any(r.get("dtype", "f32") != "f32" for r in results if r["engine"] == "lemevit"):
        return
    L.append("")
    L.append("Reduced-precision weights (lemevit.h with its .lmv file re-encoded by `tools/lmvfile.py --dtype`: "
             "matrix weights float16, or int8 with one float32 scale per output channel, widened to float32 inside "
             "the GEMM; the other tensors and that arithmetic stay float32. `int8c` is the int8 file run with "
             "`--int8-compute`: activations quantised per row too, int8 x int8 products summed in int32). Latency `median / best` ms per batch; "
             "ratios are median / median, below 1 means faster; vs PyTorch is against PyTorch float32 (its "
             "fastest thread setting); peak RSS of the lemevit.h process, MB:")
    L.append("")
    L.append("| model | threads | batch | weights | .lmv MB | lemevit.h ms | vs lemevit.h f32 | vs PyTorch f32 | "
             "peak RSS MB |")
    L.append("|---|---:|---:|---|---:|---:|---:|---:|---:|")
    for m in meta["models"]:
        info = state["models"].get(m, {})
        for t in meta["threads"]:
            for b in meta["batches"]:
                f32 = best_of(results, "lemevit", m, t, b)
                tr = best_of(results, "pytorch", m, t, b)
                for d in dtypes:
                    if not any_of(results, "lemevit", m, t, b, d):
                        continue
                    r = best_of(results, "lemevit", m, t, b, d)
                    mb = info.get("lmv_mb") if d == "f32" else info.get("dtypes", {}).get(d, {}).get("lmv_mb")
                    rf, rt = ratio(r, f32), ratio(r, tr)
                    L.append("| %s | %d | %d | %s | %s | %s | %s | %s | %s |" % (
                        MODELS[m]["label"], t, b, d, mb if mb is not None else "-",
                        cell(results, "lemevit", m, t, b, True, d),
                        "%.2f" % rf if rf else "-", "%.2f" % rt if rt else "-",
                        "%.0f" % (r["peak_rss_kb"] / 1e3) if r and r.get("peak_rss_kb") else "-"))


def gemm_table(state, L):
    """lemevit.h's GEMM against torch.nn.functional.linear at the Linear shapes of the models."""
    gemm, peak = state.get("gemm"), state["peak"]
    if not gemm or not gemm.get("results"):
        return
    results = gemm["results"]
    threads = sorted(set(r["threads"] for r in results))
    L.append("")
    L.append("GEMM at the models' shapes (C[M][N] = A[M][K] W[N][K]^T + b with float32 weights, the Linear layers "
             "of each model at batch 1, %dx%d; M tokens, N out features, K in features; lemevit.h `lmv gemm --dtype f32p` "
             "(the weight layout its converter writes), "
             "PyTorch torch.nn.functional.linear in one worker process with the model runs' BLAS and thread "
             "settings, each as many calls as fit in ~%.1f s). GFLOP/s = 2MNK / median time, with %% of the measured "
             "FMA peak for that many threads; lemevit/PyTorch is the median time ratio, **below 1 means lemevit.h "
             "is faster**; uses/image is how many layers of the model have that shape:" % (IMG, IMG,
                                                                                       gemm.get("seconds", 0)))
    L.append("")
    L.append("| model | Linear | M x N x K | uses/image | threads | lemevit.h GFLOP/s (% peak) | "
             "PyTorch GFLOP/s (% peak) | lemevit/PyTorch |")
    L.append("|---|---|---|---:|---:|---:|---:|---:|")
    for x in gemm["shapes"]:
        for t in threads:
            lm = gemm_best(results, "lemevit", t, x["m"], x["n"], x["k"])
            tr = gemm_best(results, "pytorch", t, x["m"], x["n"], x["k"])
            if lm is None and tr is None:
                continue
            pk = peak.get("gflops", {}).get(t)
            rt = lm["median_ms"] / tr["median_ms"] if lm and tr and "median_ms" in lm and "median_ms" in tr else None
            L.append("| %s | %s | %d x %d x %d | %d | %d | %s | %s | %s |" % (
                MODELS[x["model"]]["label"], x["label"], x["m"], x["n"], x["k"], x["count"], t,
                gflops_cell(lm, pk, True), gflops_cell(tr, pk, True), "%.2f" % rt if rt else "-"))
    cov = []
    for m, c in gemm.get("coverage", {}).items():
        if c.get("share") is not None:
            cov.append("%s: the %d of %d distinct shapes kept (read with forward hooks on its nn.Linear modules, "
                       "module paths as in the PyTorch model) are %.0f%% of its %.2f GMAC of Linear layers per image"
                       % (MODELS[m]["label"], c["kept"], c["of"], 100 * c["share"], c["linear_gmac"]))
        elif "error" in c:
            cov.append("%s: not timed (%s)" % (MODELS[m]["label"], c["error"]))
    if cov:
        L.append("")
        for c in cov:
            L.append("- " + c)


def make_report(state):
    """Markdown text of the whole report."""
    meta, results, peak = state["meta"], state["results"], state["peak"]
    models = meta["models"]
    L = []
    runs = results + [r for k in ("builds", "busy") for r in (state.get(k) or {}).get("results", [])]
    mi = meta["machine"]
    L.append("# lemevit.h benchmark")
    L.append("")
    L.append("- command: `%s`" % meta["command"])
    L.append("- date: %s; finished %s" % (meta["date"], meta.get("finished", "(not finished)")))
    L.append("- machine: %s, %s CPU(s) (%s core(s)/socket x %s socket(s), %s thread(s)/core), %s GB RAM, %s; "
             "Linux %s%s" % (mi.get("Model name", "?"), mi.get("CPU(s)", mi.get("nproc")),
                             mi.get("Core(s) per socket", "?"), mi.get("Socket(s)", "?"),
                             mi.get("Thread(s) per core", "?"), mi.get("mem_gb", "?"), mi.get("simd"),
                             mi.get("kernel"), (", KVM guest" if mi.get("Hypervisor vendor") == "KVM" else
                                                ", %s guest" % mi["Hypervisor vendor"] if mi.get("Hypervisor vendor")
                                                else "")))
    L.append("- load average when the run started: %.2f%s" % (
        mi.get("loadavg_at_start", -1),
        "  **(the machine was busy: timings are unreliable)**" if mi.get("loadavg_at_start", 0) > 0.5 else ""))
    L.append("- lemevit.h: git %s, build/lmv from `make` (%s)" % (mi.get("git"), mi.get("cc")))
    if simd_note(runs):
        L.append("- " + simd_note(runs))
    L.append("- PyTorch: %s" % meta.get("torch_note", "-"))
    L.append("- ONNX Runtime: %s" % meta.get("ort_note", "-"))
    p1 = peak.get("gflops", {}).get(1) or peak.get("gflops", {}).get("1")
    if p1:
        extra = ", ".join("%s threads %.1f GFLOP/s" % (k, v) for k, v in peak["gflops"].items() if int(k) != 1)
        L.append("- measured FMA peak (%s): %.1f GFLOP/s/core%s" % (peak.get("isa"), p1,
                                                                   "; " + extra if extra else ""))
        a1 = peak.get("avx512_gflops", {}).get(1) or peak.get("avx512_gflops", {}).get("1")
        if a1:
            L.append("  (AVX-512 FMA: %.1f GFLOP/s/core; %s)" % (a1, simd_note(runs) or "lemevit.h kernel path unknown"))
    else:
        L.append("- measured FMA peak: not available (%s)" % peak.get("note", "?"))
    if models:
        red = [d for d in meta.get("dtypes", []) if d != "f32"]
        rounds = meta.get("rounds", 1)
        L.append("- %d timed runs per configuration%s, each process after its warm-up (lemevit.h 1 run, PyTorch "
                 "and ORT %d); random weights, input %dx%d, float32%s" % (
                     meta["runs"], " in %d rounds of %d (one process per round; a round times every engine, thread "
                     "count and variant of a model and batch size before the next starts)" % (
                         rounds, meta["runs"] // rounds) if rounds > 1 else "", meta["warmup"], IMG, IMG,
                                             " (lemevit.h also with %s weights: own table)" % " and ".join(red)
                                             if red else "") +
                 "".join("; %s at %dx%d" % (MODELS[m]["label"], img_of(m), img_of(m)) for m in models
                         if m in MODELS and img_of(m) != IMG))
    if results or not (state.get("builds") or state.get("busy")):
        model_tables(state, L)
    builds_table(state, L)
    busy_table(state, L)
    dtype_table(state, L)
    cold_table(state, L)
    gemm_table(state, L)
    notes = meta.get("notes", [])
    if notes:
        L.append("")
        L.append("Notes:")
        L.append("")
        for n in notes:
            L.append("- " + n)
    errs = [r for r in results if "error" in r]
    if errs:
        L.append("")
        L.append("Failures:")
        L.append("")
        for r in errs:
            L.append("- %s%s %s (%s) threads %d batch %d: %s" % (
                r["engine"], " " + r["dtype"] if r.get("dtype", "f32") != "f32" else "", r["model"], r["variant"],
                r["threads"], r["batch"], r["error"]))
    gerrs = [r for r in (state.get("gemm") or {}).get("results", []) if "error" in r]
    if gerrs:
        if not errs:
            L.append("")
            L.append("Failures:")
            L.append("")
        for r in gerrs:
            L.append("- GEMM %dx%dx%d %s (%s) threads %d: %s" % (r["m"], r["n"], r["k"], r["engine"], r["variant"],
                                                                r["threads"], r["error"]))
    return "\n".join(L) + "\n"


def save(state, prefix):
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    with open(prefix + ".json.tmp", "w") as f:
        json.dump(state, f, indent=1, default=str)
    os.replace(prefix + ".json.tmp", prefix + ".json")
    text = make_report(state)
    with open(prefix + ".md.tmp", "w") as f:
        f.write(text)
    os.replace(prefix + ".md.tmp", prefix + ".md")
    return text



# ---------------------------------------------------------------------------------------------
# --builds: lemevit.h compiled with several flag sets; --busy: one busy process during the runs
# ---------------------------------------------------------------------------------------------

DEFAULT_BUILDS = "-O2;-O3 -march=native"


def build_exe(flags, timeout):
    """build/bench/lmv_<flags>: tools/lmv.c compiled with these flags; (path, None) or (None, error)."""
    slug = re.sub(r"[^A-Za-z0-9]+", "_", flags).strip("_") or "plain"
    exe = os.path.join(OUT, "lmv_" + slug)
    srcs = [os.path.join(ROOT, "tools", "lmv.c"), os.path.join(ROOT, "lemevit.h")]
    stamp = exe + ".flags"
    if newer(exe, srcs) and os.path.exists(stamp) and open(stamp).read() == flags:
        return exe, None
    os.makedirs(OUT, exist_ok=True)
    cmd = [os.environ.get("CC", "cc"), "-std=c99", "-D_POSIX_C_SOURCE=200809L"] + shlex.split(flags) + \
        ["-fopenmp", "-o", exe + ".tmp", srcs[0], "-lm"]
    r = run_proc(cmd, timeout=timeout)
    if r["rc"] != 0 or not os.path.exists(exe + ".tmp"):
        return None, "`%s` failed: %s" % (" ".join(cmd), short_err(r))
    os.replace(exe + ".tmp", exe)
    with open(stamp, "w") as f:
        f.write(flags)
    return exe, None


class BusyCPU:
    """One process busy on a CPU for the duration of a `with` block: `yes > /dev/null` (a Python loop
    where there is no `yes`)."""

    def __enter__(self):
        cmd = ["yes"] if shutil.which("yes") else [sys.executable, "-c", "while True: pass"]
        self.p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True)
        time.sleep(0.3)  # running before the first timed process starts
        return self

    def __exit__(self, *exc):
        self.p.kill()
        self.p.wait()
        return False


def loadavg():
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def run_rounds(configs, rounds, busy, label):
    """configs: [(key, callable returning a result dict)]; every config once per round, the rounds in
    turn (a busy process around each round with busy); returns {key: merged result}."""
    parts = OrderedDict((k, []) for k, _ in configs)
    n = 0
    for rnd in range(rounds):
        with (BusyCPU() if busy else _Nothing()):
            for k, fn in configs:
                la = loadavg()
                r = fn()
                r["loadavg"] = la
                parts[k].append(r)
                n += 1
                status = ("median %9.2f ms  best %9.2f ms" % (r["median_ms"], r["best_ms"]) if "median_ms" in r
                          else "FAILED: " + r.get("error", "?"))
                log("[%3d/%d] %-8s %-52s round %d/%d  %s  (load %s)" % (n, len(configs) * rounds, label, " ".join(
                    str(x) for x in k), rnd + 1, rounds, status, la))
    out = OrderedDict()
    for k, rs in parts.items():
        r = merge_rounds(rs)
        r["loadavg_rounds"] = [x.get("loadavg") for x in rs]
        out[k] = r
    return out


class _Nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def run_builds(state, a):
    flags = [f.strip() for f in a.builds.split(";") if f.strip()]
    exes = OrderedDict()
    log("")
    log("building lmv with each flag set (build/bench/lmv_<flags>) ...")
    for f in flags:
        exe, err = build_exe(f, PREP_TIMEOUT)
        log("  %-28s %s" % (f, os.path.relpath(exe, ROOT) if exe else "FAILED: " + err))
        if exe:
            exes[f] = exe
        else:
            state["meta"]["notes"].append("build %r failed: %s" % (f, err))
    per_proc = -(-a.runs // a.rounds)
    configs = []
    for m in a.models:
        info = state["models"][m]
        if "error" in info:
            continue
        for t in a.threads:
            for v in (a.lmv_variants if t > 1 else ["default"]):
                for f, exe in exes.items():
                    configs.append(((m, t, v, f), (lambda info=info, t=t, v=v, exe=exe: bench_lmv(
                        info, t, 1, per_proc, v, a.timeout, "f32", exe))))
    log("")
    log("timing %d builds x %d models x %d thread counts, %d round(s) of %d runs ..." % (
        len(exes), len(a.models), len(a.threads), a.rounds, per_proc))
    res = run_rounds(configs, a.rounds, False, "build")
    state["builds"] = OrderedDict(flags=list(exes), results=[dict(r, model=k[0], threads=k[1], build=k[3])
                                                             for k, r in res.items()])


def run_busy(state, a, node):
    n = os.cpu_count() or 2
    per_proc = -(-a.runs // a.rounds)
    configs = []
    for m in a.models:
        info = state["models"][m]
        if "error" in info:
            continue
        for t, v, x, what in ((0, "default", False, "lemevit.h default threads"),
                              (1, "default", False, "lemevit.h 1 thread"),
                              (n, "default", False, "lemevit.h --threads %d" % n),
                              (n, "default", True, "lemevit.h --threads %d --exact-threads" % n),
                              (n, "passive", True, "lemevit.h --threads %d --exact-threads, OMP_WAIT_POLICY=PASSIVE" % n)):
            configs.append(((m, what), (lambda info=info, t=t, v=v, x=x: bench_lmv(info, t, 1, per_proc, v, a.timeout,
                                                                                    exact=x))))
        if node:
            for v in a.ort_variants:
                what = "ONNX Runtime %d threads%s" % (n, "" if v == "spin" else ", " + v)
                configs.append(((m, what), (lambda info=info, v=v: bench_ort(node, info, n, 1, per_proc, a.warmup, v,
                                                                             a.timeout))))
    log("")
    log("timing with one busy process (`yes > /dev/null`) during every round: %d configurations, %d round(s) of "
        "%d runs ..." % (len(configs), a.rounds, per_proc))
    res = run_rounds(configs, a.rounds, True, "busy")
    state["busy"] = OrderedDict(cpus=n, results=[dict(r, model=k[0], config=k[1]) for k, r in res.items()])


def builds_table(state, L):
    b = state.get("builds")
    if not b or not b["results"]:
        return
    flags = b["flags"]
    by = {(r["model"], r["threads"], r["variant"], r["build"]): r for r in b["results"]}
    L.append("")
    L.append("## Build flags")
    L.append("")
    L.append("lemevit.h compiled as `cc -std=c99 -D_POSIX_C_SOURCE=200809L FLAGS -fopenmp tools/lmv.c -lm`, each "
             "flag set timed in the same rounds, batch 1, median / best ms; the last columns: the first build's "
             "median over the other's (1.05: the first is 5 % slower).")
    L.append("")
    head = ["model", "threads"] + ["`%s`" % f for f in flags] + ["`%s` / `%s`" % (flags[0], f) for f in flags[1:]]
    L.append("| " + " | ".join(head) + " |")
    L.append("|" + "---|" * len(head))
    seen = []
    for r in b["results"]:
        if (r["model"], r["threads"], r["variant"]) not in seen:
            seen.append((r["model"], r["threads"], r["variant"]))
    for m, t, v in seen:
        row = [MODELS[m]["label"], str(t) + ("" if v == "default" else " (OMP_WAIT_POLICY=PASSIVE)")]
        for f in flags:
            row.append(fmt_ms(by.get((m, t, v, f), {})))
        first = by.get((m, t, v, flags[0]), {})
        for f in flags[1:]:
            o = by.get((m, t, v, f), {})
            row.append("%.3f" % (first["median_ms"] / o["median_ms"]) if "median_ms" in first and "median_ms" in o
                       else "-")
        L.append("| " + " | ".join(row) + " |")
    paths = sorted({r.get("simd") for r in b["results"] if r.get("simd")})
    if paths:
        L.append("")
        L.append("Kernel path (chosen at run time): %s." % " / ".join(paths))


def busy_table(state, L):
    b = state.get("busy")
    if not b or not b["results"]:
        return
    L.append("")
    L.append("## Busy machine")
    L.append("")
    L.append("One `yes > /dev/null` process busy during every timed run (%d CPU(s)); batch 1, median / best ms, "
             "and the median over lemevit.h's one-thread median; load average (1 min) before each round's run." %
             b["cpus"])
    L.append("")
    L.append("| model | engine, threads | median / best | vs lemevit.h 1 thread | load |")
    L.append("|---|---|---|---|---|")
    one = {r["model"]: r for r in b["results"] if r["config"] == "lemevit.h 1 thread"}
    for r in b["results"]:
        o = one.get(r["model"], {})
        ratio = "%.2f" % (r["median_ms"] / o["median_ms"]) if "median_ms" in r and "median_ms" in o else "-"
        loads = "/".join("%.1f" % x for x in r.get("loadavg_rounds", []) if x is not None) or "-"
        L.append("| %s | %s | %s | %s | %s |" % (MODELS[r["model"]]["label"], r["config"], fmt_ms(r), ratio, loads))

# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------

def int_list(s):
    try:
        v = [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("expected comma-separated integers, got %r" % s)
    if not v or min(v) < 1:
        raise argparse.ArgumentTypeError("values must be >= 1")
    return v


def parse_args(argv):
    ap = argparse.ArgumentParser(
        prog="bench.py", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Speed and memory of lemevit.h next to PyTorch and ONNX Runtime (see the top of this file).",
        epilog="models: " + ", ".join("%s (%s)" % (k, v["label"]) for k, v in MODELS.items()))
    ap.add_argument("--models", help="comma-separated (default: %s)" % ",".join(DEFAULT_MODELS))
    ap.add_argument("--threads", type=int_list, help="thread counts (default: 1,2)")
    ap.add_argument("--batch", type=int_list, help="batch sizes (default: 1,8)")
    ap.add_argument("--runs", type=int, help="timed runs per measurement (default: 10)")
    ap.add_argument("--rounds", type=int,
                    help="processes per configuration, the --runs split evenly over them; each round times every "
                         "engine, thread count and variant of a model and batch size once before the next round "
                         "starts (default: 2; --quick: 1)")
    ap.add_argument("--warmup", type=int, help="warm-up runs per process for PyTorch and ORT (default: 2; "
                                               "lemevit.h: 1)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: lemevit_tiny, 1 thread, batch 1, 2 runs, its f16/int8 files, its 2 largest "
                         "GEMM shapes")
    ap.add_argument("--dtypes", default="f32,f16,int8,int8c",
                    help="weight encodings of lemevit.h's .lmv files to time (default: f32,f16,int8,int8c; int8c is "
                         "the int8 file run with --int8-compute); f32 is always timed, the others go to the "
                         "'Reduced-precision weights' table")
    ap.add_argument("--gemm", dest="gemm", action="store_true", default=True,
                    help="run the GEMM micro-benchmark after the models (the default)")
    ap.add_argument("--no-gemm", dest="gemm", action="store_false", help="skip the GEMM micro-benchmark")
    ap.add_argument("--only-gemm", action="store_true",
                    help="run only the FMA peak and the GEMM micro-benchmark (no models, no ONNX Runtime)")
    ap.add_argument("--gemm-models", help="models whose Linear shapes the GEMM benchmark times (default: %s; "
                                          "--quick: lemevit_tiny)" % ",".join(DEFAULT_GEMM_MODELS))
    ap.add_argument("--gemm-top", type=int,
                    help="shapes kept per model read with forward hooks, most multiply-adds first (default: 8; "
                         "--quick: 2); ViT-B/16 and Swin-T have fixed lists")
    ap.add_argument("--no-torch", action="store_true", help="do not time PyTorch (it still builds the models)")
    ap.add_argument("--no-ort", action="store_true", help="do not time ONNX Runtime")
    ap.add_argument("--no-cold", dest="cold", action="store_false",
                    help="skip the cold-start comparison (process start to top-5 for one JPEG)")
    ap.add_argument("--torch-variants", default="pinned,passive,blas-only",
                    help="PyTorch thread settings above 1 thread (default: pinned,passive,blas-only; "
                         "1 thread always uses pinned)")
    ap.add_argument("--ort-variants", default="spin,nospin",
                    help="ORT settings above 1 thread (default: spin,nospin; 1 thread uses spin)")
    ap.add_argument("--lmv-variants", default="default",
                    help="lemevit.h settings above 1 thread: default and/or passive (OMP_WAIT_POLICY=PASSIVE); "
                         "default: default")
    ap.add_argument("--torch-blas", choices=["openblas", "system"], default="openblas",
                    help="openblas: put OpenBLAS (pthread) first on PyTorch's LD_LIBRARY_PATH when installed; "
                         "system: whatever libblas.so.3 points to (default: openblas)")
    ap.add_argument("--ort-package", default="onnxruntime-node", help="npm package spec (default: onnxruntime-node)")
    ap.add_argument("--timeout", type=float, default=900,
                    help="seconds per timed child process (default: 900; model preparation: %d)" % PREP_TIMEOUT)
    ap.add_argument("--out", help="output prefix (default: build/bench/results, --quick: build/bench/quick)")
    ap.add_argument("--builds", nargs="?", const=DEFAULT_BUILDS, metavar="FLAGS;FLAGS",
                    help="time lemevit.h built with each flag set (default: %r) on --models x --threads, batch 1, "
                         "instead of the usual tables" % DEFAULT_BUILDS)
    ap.add_argument("--pack", metavar="DIR",
                    help="write the benchmark pack for another machine into DIR instead (tools/bench_pack.py pack: "
                         "ViT-B/16, Swin-T, LeMeViT-tiny and -base unless --models, with ONNX Runtime unless --no-ort)")
    ap.add_argument("--busy", action="store_true",
                    help="time lemevit.h (default threads, 1 thread, every CPU) and ONNX Runtime with one `yes` "
                         "process busy during the runs, batch 1, instead of the usual tables")
    a = ap.parse_args(argv)
    a.models_given = a.models
    if a.quick:
        a.models = a.models or "lemevit_tiny"
        a.threads = a.threads or [1]
        a.batch = a.batch or [1]
        a.runs = a.runs or 2
        a.warmup = 1 if a.warmup is None else a.warmup
        a.gemm_models = a.gemm_models or "lemevit_tiny"
        a.gemm_top = a.gemm_top or 2
    a.models = [m.strip() for m in (a.models or ",".join(DEFAULT_MODELS)).split(",") if m.strip()]
    bad = [m for m in a.models if m not in MODELS]
    if bad:
        ap.error("unknown model(s) %s; known: %s" % (", ".join(bad), ", ".join(MODELS)))
    a.threads = sorted(set(a.threads or [1, 2]))
    a.batch = sorted(set(a.batch or [1, 8]))
    a.runs = a.runs or 10
    a.rounds = a.rounds or (1 if a.quick else 2)
    a.warmup = 2 if a.warmup is None else a.warmup
    if a.runs < 1 or a.warmup < 0 or a.rounds < 1:
        ap.error("--runs and --rounds must be >= 1 and --warmup >= 0")
    a.dtypes = [d.strip() for d in a.dtypes.split(",") if d.strip()]
    bad = [d for d in a.dtypes if d not in DTYPES]
    if bad:
        ap.error("unknown dtype(s) %s; known: %s" % (", ".join(bad), ", ".join(DTYPES)))
    a.dtypes = [d for d in DTYPES if d in a.dtypes or d == "f32"]
    a.gemm = a.gemm or a.only_gemm
    a.gemm_models = [m.strip() for m in (a.gemm_models or ",".join(DEFAULT_GEMM_MODELS)).split(",") if m.strip()]
    bad = [m for m in a.gemm_models if m not in MODELS]
    if bad:
        ap.error("unknown GEMM model(s) %s; known: %s" % (", ".join(bad), ", ".join(MODELS)))
    a.gemm_top = 8 if a.gemm_top is None else a.gemm_top
    if a.gemm_top < 1:
        ap.error("--gemm-top must be >= 1")
    if a.only_gemm:
        a.models = []
    a.torch_variants = [v.strip() for v in a.torch_variants.split(",") if v.strip()]
    a.ort_variants = [v.strip() for v in a.ort_variants.split(",") if v.strip()]
    a.lmv_variants = [v.strip() for v in a.lmv_variants.split(",") if v.strip()]
    for v in a.lmv_variants:
        if v not in ("default", "passive"):
            ap.error("unknown lemevit.h variant %r" % v)
    for v in a.torch_variants:
        if v not in ("pinned", "passive", "blas-only"):
            ap.error("unknown torch variant %r" % v)
    for v in a.ort_variants:
        if v not in ("spin", "nospin"):
            ap.error("unknown ORT variant %r" % v)
    if a.builds is not None and not [f for f in a.builds.split(";") if f.strip()]:
        ap.error("--builds needs at least one flag set, e.g. \"-O2;-O3 -march=native\"")
    if a.builds or a.busy:
        if a.only_gemm:
            ap.error("--builds and --busy time whole models: not with --only-gemm")
        a.batch, a.dtypes, a.gemm, a.cold = [1], ["f32"], False, False
    a.out = a.out or os.path.join(OUT, "quick" if a.quick else "results")
    return a


def main(argv):
    a = parse_args(argv)
    if a.pack:
        import bench_pack
        return bench_pack.cmd_pack(["--out", a.pack] + (["--models", a.models_given] if a.models_given else []) +
                                   (["--no-ort"] if a.no_ort else []))
    t_start = time.monotonic()
    os.makedirs(OUT, exist_ok=True)
    cmd = " ".join(shlex.quote(x) for x in [os.path.relpath(sys.executable) if sys.executable.startswith(ROOT)
                                             else sys.executable, os.path.relpath(THIS, ROOT)] + argv)
    meta = OrderedDict(command=cmd, date=time.strftime("%Y-%m-%d %H:%M:%S %Z"), machine=machine_info(),
                       models=a.models, threads=a.threads, batches=a.batch, runs=-(-a.runs // a.rounds) * a.rounds,
                       rounds=a.rounds, warmup=a.warmup,
                       dtypes=a.dtypes, gemm_models=a.gemm_models if a.gemm else [], notes=[])
    state = OrderedDict(meta=meta, peak={}, models=OrderedDict(), results=[], gemm=None)
    mi = meta["machine"]
    log("lemevit.h benchmark   %s" % meta["date"])
    log("command   %s" % cmd)
    log("machine   %s, %s CPU(s), %s GB, %s; load average %.2f" % (mi.get("Model name", "?"), mi.get("CPU(s)"),
                                                                  mi.get("mem_gb", "?"), mi.get("simd"),
                                                                  mi.get("loadavg_at_start", -1)))
    if mi.get("loadavg_at_start", 0) > 0.5:
        log("WARNING   the machine is busy (load average %.2f): timings will be unreliable"
            % mi["loadavg_at_start"])
    log("lemevit.h git %s; %s" % (mi.get("git"), mi.get("cc")))
    if not os.access(LMV, os.X_OK):
        log("ERROR     %s not found: run `make` first" % os.path.relpath(LMV, ROOT))
        return 2
    if max(a.threads) > (os.cpu_count() or 1):
        meta["notes"].append("%d threads asked for on %d CPU(s): oversubscribed" % (max(a.threads), os.cpu_count()))

    # 1. FMA peak
    log("")
    log("measuring the FMA peak ...")
    peak = measure_peak(a.threads, a.quick, PREP_TIMEOUT)
    state["peak"] = peak
    if peak["gflops"].get(1):
        log("measured FMA peak: %.1f GFLOP/s/core (%s, 1 thread)" % (peak["gflops"][1], peak["isa"]))
    elif peak["gflops"]:
        t, g = min(peak["gflops"].items())
        log("measured FMA peak: %.1f GFLOP/s/core (%s, from %d threads)" % (g / t, peak["isa"], t))
    else:
        log("measured FMA peak: not available (%s)" % peak["note"])
    for t, g in sorted(peak["gflops"].items()):
        if t != 1:
            log("                   %.1f GFLOP/s with %d threads (%.1f per thread)" % (g, t, g / t))
    if peak["avx512_gflops"].get(1):
        log("                   AVX-512 FMA: %.1f GFLOP/s/core (%% of peak uses the AVX2 figure)"
            % peak["avx512_gflops"][1])
    if peak["note"]:
        log("                   note: " + peak["note"])

    # 2. PyTorch
    log("")
    py = find_torch_python()
    blas_dir = openblas_dir() if a.torch_blas == "openblas" else None
    torch_ok = False
    if not py:
        meta["torch_note"] = "no python3 with torch + torchvision found (apt-get install python3-torch " \
                             "python3-torchvision): models can only come from the cache, PyTorch not timed"
        log("PyTorch   " + meta["torch_note"])
    else:
        probe = probe_torch(py, blas_dir, PREP_TIMEOUT)
        meta["torch_probe"] = probe
        alt = sh(["update-alternatives", "--query", "libblas.so.3-x86_64-linux-gnu"])
        alt_val = re.search(r"^Value:\s*(.+)$", alt, re.M)
        alt_val = alt_val.group(1).strip() if alt_val else None
        meta["blas_alternative"] = alt_val
        sysb = probe.get("system", {})
        used = probe.get("forced") if blas_dir else sysb
        if used and "libs" in used:
            torch_ok = True
            name, path = describe_blas(used["libs"])
            sname, spath = describe_blas(sysb.get("libs", []))
            note = "torch %s (%s), BLAS: %s" % (used["torch"], py, name)
            if path:
                note += " [%s]" % path
            if blas_dir:
                if sname != name:
                    note += "; put first with LD_LIBRARY_PATH=%s because the system's libblas.so.3 is %s [%s]" % (
                        blas_dir, sname, spath)
                else:
                    note += " (LD_LIBRARY_PATH=%s; the system default is the same)" % blas_dir
            if "reference" in name:
                note += " -- the slow REFERENCE BLAS: PyTorch's matrix products are far slower than usual; " \
                        "install libopenblas0-pthread (apt-get install libopenblas0-pthread) for fair numbers"
                meta["notes"].append("PyTorch ran on the reference BLAS, not OpenBLAS: its numbers are too slow.")
            if "dnnl" in " ".join(used["libs"]):
                note += "; convolutions: oneDNN"
            meta["torch_note"] = note
            log("PyTorch   " + note)
            if alt_val:
                log("          update-alternatives libblas.so.3 -> %s" % alt_val)
        else:
            meta["torch_note"] = "torch probe failed: %s" % (used or {}).get("error", "?")
            log("PyTorch   " + meta["torch_note"])
        if a.no_torch:
            meta["torch_note"] += " (not timed: --no-torch)"
            torch_ok = False

    # 3. ONNX Runtime
    node = None
    if a.only_gemm:
        meta["ort_note"] = "not timed (--only-gemm)"
    elif a.no_ort:
        meta["ort_note"] = "not timed (--no-ort)"
    elif not py:
        meta["ort_note"] = "skipped: exporting ONNX needs torch"
    else:
        node, meta["ort_note"] = setup_ort(a)
        if node:
            meta["ort_note"] += ", graphOptimizationLevel 'all', intraOpNumThreads = threads; models exported " \
                                "with torch.onnx.export opset 14, one file per batch size"
    log("ORT       " + meta["ort_note"])
    if not node and not a.no_ort and not a.only_gemm:
        meta["notes"].append("ONNX Runtime: " + meta["ort_note"])

    # 4. model files
    red = [d for d in a.dtypes if d != "f32"]
    if a.models:
        log("")
        log("preparing models in %s (cached) ..." % os.path.relpath(OUT, ROOT))
    for m in a.models:
        info = prepare_model(m, py, a.batch, bool(node), PREP_TIMEOUT)
        state["models"][m] = info
        if "error" in info:
            log("  %-14s SKIPPED: %s" % (m, info["error"]))
        elif red:
            prepare_dtypes(m, info, py, red, PREP_TIMEOUT)
    save(state, a.out)

    if a.builds or a.busy:  # comparisons of their own instead of steps 5-7
        if a.builds:
            run_builds(state, a)
            save(state, a.out)
        if a.busy:
            run_busy(state, a, node)
        meta["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        meta["elapsed_s"] = round(time.monotonic() - t_start, 1)
        text = save(state, a.out)
        log("")
        log(text)
        log("wrote %s.json and %s.md" % (os.path.relpath(a.out, ROOT), os.path.relpath(a.out, ROOT)))
        return 0

    # 5. measurements
    plan = []
    for m in a.models:
        if "error" in state["models"][m]:
            continue
        for b in a.batch:
            for t in a.threads:
                for v in (a.lmv_variants if t > 1 else ["default"]):
                    for d in a.dtypes:  # the reduced-precision files right after the float32 one
                        plan.append((m, t, b, "lemevit", v, d))
                if torch_ok:
                    for v in (a.torch_variants if t > 1 else ["pinned"]):
                        plan.append((m, t, b, "pytorch", v, "f32"))
                if node:
                    for v in (a.ort_variants if t > 1 else ["spin"]):
                        plan.append((m, t, b, "onnxruntime", v, "f32"))
    per_proc = -(-a.runs // a.rounds)
    if plan:
        log("")
        log("timing %d configurations (%s; %d runs each, in %d round(s) of %d: every configuration of a model and "
            "batch size once per round, so a slow spell on the machine hits them alike) ..." % (
                len(plan), ", ".join(e for e in ("lemevit", "pytorch", "onnxruntime") if any(p[3] == e for p in plan)),
                per_proc * a.rounds, a.rounds, per_proc))
    gmacs = {}
    groups = OrderedDict()
    for x in plan:
        groups.setdefault((x[0], x[2]), []).append(x)
    labels = {x: "%s%s%s" % (x[3], "" if x[5] == "f32" else " " + x[5],
                             "" if x[1] == 1 or (x[3] == "lemevit" and len(a.lmv_variants) == 1 and x[4] == "default")
                             else "/" + x[4]) for x in plan}
    i = 0
    for group in groups.values():
        parts = OrderedDict((x, []) for x in group)
        for rnd in range(a.rounds):
            for (m, t, b, e, v, d) in group:
                info = state["models"][m]
                if e == "lemevit":
                    r = bench_lmv(info, t, b, per_proc, v, a.timeout, d)
                elif e == "pytorch":
                    r = bench_torch(py, m, info, t, b, per_proc, a.warmup, v, blas_dir, a.timeout)
                else:
                    r = bench_ort(node, info, t, b, per_proc, a.warmup, v, a.timeout)
                parts[(m, t, b, e, v, d)].append(r)
                i += 1
                label = labels[(m, t, b, e, v, d)]
                if "median_ms" in r:
                    status = "median %9.2f ms  best %9.2f ms" % (r["median_ms"], r["best_ms"])
                else:
                    status = "FAILED: " + r["error"]
                log("[%3d/%d] %-13s t=%d b=%-2d %-20s round %d/%d  %s  (%.0f s)" % (
                    i, len(plan) * a.rounds, m, t, b, label, rnd + 1, a.rounds, status, r.get("wall_s", 0)))
        for (m, t, b, e, v, d), rs in parts.items():
            r = merge_rounds(rs)
            r["model"] = m
            r.move_to_end("model", last=False)
            if r.get("gmac"):
                gmacs[(m, b)] = r["gmac"]
            g = gmacs.get((m, b))
            if "median_ms" in r and g:
                r["gflops"] = round(2 * g / (r["median_ms"] / 1e3), 2)
            state["results"].append(r)
            if "median_ms" not in r:
                continue
            extra = []
            if "gflops" in r:
                pk = peak["gflops"].get(t)
                extra.append("%.1f GFLOP/s%s" % (r["gflops"], " (%.0f%% of peak)" % (100 * r["gflops"] / pk)
                                                  if pk else ""))
            if r.get("peak_rss_kb"):
                extra.append("RSS %.0f MB" % (r["peak_rss_kb"] / 1e3))
            if e == "lemevit":
                extra.append("open %.1f / %.1f ms" % (r["open_mapped_ms"], r["open_verified_ms"]))
            elif e == "pytorch":
                extra.append("load %.0f ms" % r["load_ms"])
            else:
                extra.append("session %.0f ms" % r["create_ms"])
            log("        %-13s t=%d b=%-2d %-20s all rounds: median %9.2f ms  best %9.2f ms  %s" % (
                m, t, b, labels[(m, t, b, e, v, d)], r["median_ms"],
                r["best_ms"], ", ".join(extra)))
        save(state, a.out)

    # 6. cold start
    if a.cold and not a.only_gemm:
        run_cold(state, a, py, torch_ok, blas_dir)

    # 7. GEMM micro-benchmark
    if a.gemm:
        run_gemm(state, a, py, torch_ok, blas_dir)

    meta["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    meta["elapsed_s"] = round(time.monotonic() - t_start, 1)
    meta["notes"].append("PyTorch variants (above 1 thread): pinned = torch.set_num_threads(N) with OMP, OpenBLAS "
                         "and MKL pinned to N; passive = the same with OMP_WAIT_POLICY=PASSIVE; blas-only = torch 1 "
                         "thread, OpenBLAS N. ORT: spin = default, nospin = session.intra_op.allow_spinning=0. "
                         "lemevit.h: OMP_NUM_THREADS=N and --threads N (passive, if run: OMP_WAIT_POLICY=PASSIVE). "
                         "results.json has every variant.")
    if a.models:
        meta["notes"].append("lemevit.h times lmv_run_features (no classifier head); PyTorch and ORT run the full "
                             "model including the 1000-class head (under 0.1% of the work).")
    if any(r.get("dtype", "f32") != "f32" for r in state["results"]):
        meta["notes"].append("Reduced-precision weights: PyTorch is timed with float32 weights only. It has no CPU "
                             "path that stores Linear weights as float16 or int8 and widens them inside a float32 "
                             "GEMM as lemevit.h does (its dynamic int8 quantisation, "
                             "torch.ao.quantization.quantize_dynamic, quantises the activations too: a different "
                             "scheme, not timed here), so 'vs PyTorch f32' compares with PyTorch float32.")
    text = save(state, a.out)
    log("")
    log(text)
    log("wrote %s.json and %s.md (%.0f s in all)" % (os.path.relpath(a.out, ROOT), os.path.relpath(a.out, ROOT),
                                                     meta["elapsed_s"]))
    if not a.quick:
        log("README's speed section from this report: python3 tools/bench_readme.py")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in WORKERS:
        WORKERS[sys.argv[1]](sys.argv[2:])
        sys.exit(0)
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.stderr.write("\ninterrupted; partial results are in build/bench/\n")
        sys.exit(130)
