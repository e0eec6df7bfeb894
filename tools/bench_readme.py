#!/usr/bin/env python3
"""bench_readme.py - rewrite README's "Speed and memory" section from a bench report.

    python3 tools/bench_readme.py            build/bench/results.md -> README.md, and the report
                                             kept as tests/bench/results.md
    python3 tools/bench_readme.py --check --results tests/bench/results.md
                                             README against the kept report (the test suite does this)

README's speed tables are copied from the tables tools/bench.py wrote (its results.md), a subset
of their rows, and every number in the prose around them (rows faster than each peer, % of peak,
thread speed-ups, GEMM shapes below 85 %, memory rows within the target) is counted from those
tables here, never typed.  The section runs from "## Speed and memory" to the next "## The weight
file format"; the rest of README is left as it is.  The report itself is kept in the repository
(tests/bench/results.md) so the tests can check that README still says what it says: --check
rewrites nothing and exits 1 when README differs from what the report gives.  Standard library only.
"""

import argparse
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEPT = os.path.join(ROOT, "tests", "bench", "results.md")
START, END = "## Speed and memory", "## The weight file format"
GEMM_MODELS = ("ViT-B/16", "Swin-T", "LeMeViT-tiny")   # the GEMM rows README shows (all are in results.md)


def cells(line):
    return [c.strip() for c in line.strip("|").split("|")]


def pct(cell):
    """The integer percentage in a cell such as '104.7 (89%)'."""
    return int(re.search(r"\((\d+)%\)", cell).group(1))


class Report(object):
    """The tables and header lines of a results.md."""

    def __init__(self, text):
        self.lines = text.split("\n")

    def table_after(self, prefix):
        """The markdown table (header, rule and rows) after the first line starting with `prefix`."""
        i = next(k for k, ln in enumerate(self.lines) if ln.startswith(prefix))
        j = next(k for k in range(i, len(self.lines)) if self.lines[k].startswith("|"))
        out = []
        while j < len(self.lines) and self.lines[j].startswith("|"):
            out.append(self.lines[j])
            j += 1
        return out

    def line(self, prefix):
        return next(ln for ln in self.lines if ln.startswith(prefix))


def section(rep):
    main = rep.table_after("Latency is `median / best`")
    speed = rep.table_after("Speed-up of more threads")
    dtypes = rep.table_after("Reduced-precision weights")
    dtypes = dtypes[:2] + [ln for ln in dtypes[2:] if cells(ln)[2] == "1"]
    cold = rep.table_after("Cold start, the way")
    mem = rep.table_after("Memory of lemevit.h against")
    mem_rows = [cells(ln) for ln in mem[2:]]
    mem = mem[:2] + [ln for ln in mem[2:] if cells(ln)[1] == "1"]
    gemm = rep.table_after("GEMM at the models")
    gemm = gemm[:2] + [ln for ln in gemm[2:] if cells(ln)[4] == "1" and cells(ln)[0] in GEMM_MODELS]
    sizes = rep.table_after("Model size and load time")

    cmd = rep.line("- command:").split("`")[1]
    git = rep.line("- lemevit.h: git").split()[3].rstrip(",")
    peak = rep.line("- measured FMA peak").split(": ", 1)[1].split(";")[0]
    date = rep.line("- date:").split()[2]
    load = rep.line("- load average when the run started:").split(":")[1].split()[0]
    m = re.search(r"- (\d+) timed runs per configuration(?: in (\d+) rounds of (\d+))?",
                  next(ln for ln in rep.lines if "timed runs per configuration" in ln))
    runs = m.group(1) + " timed runs" + (
        " per configuration in %s rounds of %s, one process per round, all engines and thread counts of a model "
        "and batch in each round" % (m.group(2), m.group(3)) if m.group(2) else "")

    rows = [cells(ln) for ln in main[2:]]
    n = len(rows)
    faster_pt = sum(1 for r in rows if r[6] != "-" and float(r[6]) < 1)
    vs_ort = [(float(r[7]), r) for r in rows if r[7] != "-"]
    faster_ort = sum(1 for v, _ in vs_ort if v < 1)
    worst, wr = max(vs_ort, key=lambda x: x[0])
    where = "%s, %s thread%s, batch %s" % (wr[0], wr[1], "s" if wr[1] != "1" else "", wr[2])
    ort = ("ONNX Runtime's largest lead is %d %% (%s)" % (int(round((worst - 1) * 100)), where) if worst > 1
           else "the closest row is %s (%.2f)" % (where, worst))
    others = "" if faster_pt == n else " (the others: " + ", ".join(
        "%s %st b%s %s" % (r[0], r[1], r[2], r[6]) for r in rows if r[6] != "-" and float(r[6]) >= 1) + ")"

    def lowest(r):  # lemevit.h's peak RSS below both others'
        v = [float(x) if x.strip() != "-" else None for x in r[9].split("/")]
        return all(o is None or v[0] < o for o in v[1:])
    n_low = sum(1 for r in rows if lowest(r))
    memory = "the lowest of the three in every row" if n_low == n else \
        "the lowest of the three in %d of %d rows" % (n_low, n)
    opens = [float(cells(ln)[4].split("/")[0]) for ln in sizes[2:]]
    mem_ok = sum(1 for r in mem_rows if r[8] == "yes")

    sp = [float(cells(ln)[3].split("/")[0]) for ln in speed[2:]]
    spb = [float(cells(ln)[3].split("/")[1]) for ln in speed[2:]]
    g1 = [pct(cells(ln)[5]) for ln in gemm[2:]]
    low = ["%s %s %s (%d %%)" % (cells(ln)[0], cells(ln)[1], cells(ln)[2].replace(" x ", "x"), pct(cells(ln)[5]))
           for ln in gemm[2:] if pct(cells(ln)[5]) < 85]

    def family(name):  # % of peak, 1 thread, batch 1
        return pct(next(r for r in rows if r[0] == name and r[1] == "1" and r[2] == "1")[8])

    # the targets, each counted from the tables above
    met = (faster_pt == n and faster_ort == len(vs_ort) == n and not low and family("ViT-B/16") >= 88 and
           family("Swin-T") >= 80 and family("LeMeViT-tiny") >= 70 and min(spb) >= 1.9 and mem_ok == len(mem_rows))
    verdict = ("Every target is met in this run (two threads: from the best runs; the medians also carry what",
               "else the shared machine was doing).") if met else (
               "What is not met is listed with its measurements in the", "issue notes.")

    return "\n".join([
        START, "",
        "`make bench` (tools/bench.py) times this library, PyTorch and ONNX Runtime in one run on the same",
        "machine, each in its own process with its threads pinned, and writes `build/bench/results.md` (all",
        "tables, every variant) and `results.json`. The tables below are copied from the last run's",
        "`results.md` by `tools/bench_readme.py` (%s, commit %s; the 2-core development machine: AMD EPYC, AVX2+FMA "
        "used, measured" % (date, git),
        "peak %s; random weights, 224×224, %s; Debian's PyTorch 1.13 with OpenBLAS 0.3.21," % (peak, runs),
        "onnxruntime-node 1.30.0; load average %s when the run started; the machine is shared, so single rows can be"
        % load,
        "off by 10 % or more):", "",
        "```sh", cmd, "```", ""] + main + [
        "",
        "Ratios are lemevit.h's median over the other engine's: below 1 means lemevit.h is faster. In this run",
        "lemevit.h is faster than PyTorch in %d of the %d rows%s, and faster than ONNX Runtime in" % (faster_pt, n, others),
        "%d of %d; %s. Peak memory is" % (faster_ort, n, ort),
        "%s: the weights are mapped, not copied (opening a mapped model takes" % memory,
        "%.2f–%.2f ms), and the activations are planned up front. Two threads over one:" % (min(opens), max(opens)),
        ""] + speed + [
        "",
        "The memory target, peak RSS ≤ weights + 1.5 × activations (activations: the planned session arena, one",
        "image's buffers reused layer after layer — on two threads a batch runs two images side by side, each in",
        "buffers of its own — plus the batch's input tensor; MB, one thread here; %d of %d rows within, all rows"
        % (mem_ok, len(mem_rows)),
        "in `results.md`):", ""] + mem + [
        "",
        "Cold start, the way a command-line user meets it: process start to the top 5 printed for",
        "`examples/images/cat.jpg`, `build/classify` against a Python script doing the same job with PyTorch,",
        "torchvision and Pillow (`first / median` of 3 runs; \"yes (ties)\": the same classes and printed",
        "probabilities, equal ones in another order — torchvision starts ViT's head at zero, so with random",
        "weights every class ties):", ""] + cold + [
        "",
        "Reduced-precision weights (batch 1; `int8c` is the int8 file with `--int8-compute`; ratios against",
        "lemevit.h float32 and PyTorch float32, below 1 is faster):", ""] + dtypes + [
        "",
        "The GEMM alone at the models' Linear shapes, one thread (`lmv gemm --dtype f32p`, the layout the converter "
        "writes; PyTorch is `F.linear` with",
        "OpenBLAS; the two-thread rows and LeMeViT-small are in `results.md`):", ""] + gemm + [
        "",
        "Where the targets of the performance work stand in this run: the GEMM reaches %d–%d %% of the"
        % (min(g1), max(g1)),
        "measured FMA peak at these shapes on one thread, %d of %d shapes at ≥ 85 %% (the target%s). Whole models on "
        "one thread, batch 1: %d %% ViT-B/16" % (sum(1 for g in g1 if g >= 85), len(g1),
                                                  "; below it: " + ", ".join(low) if low else "", family("ViT-B/16")),
        "(target ≥ 88), %d %% Swin-T (≥ 80), %d %% LeMeViT-tiny (≥ 70). Two threads give"
        % (family("Swin-T"), family("LeMeViT-tiny")),
        "%.2f–%.2f× one thread from the medians and %.2f–%.2f× from the best runs (target 1.9×). %s"
        % (min(sp), max(sp), min(spb), max(spb), verdict[0]),
        verdict[1], "", ""])


def main(argv=None):
    ap = argparse.ArgumentParser(prog="bench_readme.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default=os.path.join(ROOT, "build", "bench", "results.md"),
                    help="the bench report (default: build/bench/results.md)")
    ap.add_argument("--readme", default=os.path.join(ROOT, "README.md"), help="the README to rewrite")
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if README differs")
    a = ap.parse_args(argv)
    try:
        with open(a.results, encoding="utf-8") as f:
            report = f.read()
        new = section(Report(report))
        with open(a.readme, encoding="utf-8") as f:
            readme = f.read()
    except (OSError, StopIteration, AttributeError, IndexError, ValueError) as e:
        sys.stderr.write("bench_readme: cannot read the report %s (%s: %s); run `make bench` first\n"
                         % (a.results, type(e).__name__, e))
        return 1
    i, j = readme.find(START), readme.find(END)
    if i < 0 or j < i:
        sys.stderr.write("bench_readme: %s has no '%s' ... '%s' section\n" % (a.readme, START, END))
        return 1
    out = readme[:i] + new + readme[j:]
    if a.check:
        if out != readme:
            sys.stderr.write("bench_readme: %s is not what %s gives\n" % (a.readme, a.results))
            return 1
        return 0
    with open(a.readme, "w", encoding="utf-8") as f:
        f.write(out)
    # the report is kept next to the repository's README only (a README elsewhere, e.g. a test's
    # copy, leaves the kept report alone)
    if os.path.abspath(a.results) != KEPT and os.path.abspath(a.readme) == os.path.join(ROOT, "README.md"):
        os.makedirs(os.path.dirname(KEPT), exist_ok=True)
        with open(KEPT, "w", encoding="utf-8") as f:
            f.write(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
