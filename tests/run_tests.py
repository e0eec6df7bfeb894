"""Runs every test program and script, streams their output, and ends with one line
`N passed, N failed` summed over all of them. A program that crashes or prints no summary
counts as one failure."""
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PY = sys.executable

# (label, command). Order: fast structural checks first, the long parity runs last.
SUITES = [
    ("repo (stands alone)", [PY, os.path.join(HERE, "test_repo.py")]),
    ("core", [os.path.join(ROOT, "build", "test_core")]),
    ("core (asan+ubsan)", [os.path.join(ROOT, "build", "asan", "test_core")]),
    ("api", [PY, os.path.join(HERE, "test_api.py")]),
    ("loader", [PY, os.path.join(HERE, "test_loader.py")]),
    ("cli", [PY, os.path.join(HERE, "test_cli.py")]),
    ("convert", [PY, os.path.join(HERE, "test_convert.py")]),
    ("convert mapping transforms", [PY, os.path.join(HERE, "test_mapping.py")]),
    ("convert (hostile inputs)", [PY, os.path.join(HERE, "test_convert_hostile.py")]),
    ("convert (tensor accounting, assumed options)", [PY, os.path.join(HERE, "test_convert_assumed.py")]),
    ("image", [PY, os.path.join(HERE, "test_image.py")]),
    ("png", [PY, os.path.join(HERE, "test_png.py")]),
    ("vit", [PY, os.path.join(HERE, "test_vit.py")]),
    ("clip, dinov2 (image encoders on the ViT graph)", [PY, os.path.join(HERE, "test_clip.py")]),
    ("openclip eva siglip clip (OpenCLIP timm image towers: EVA-02, SigLIP, other timm ViT trunks)",
     [PY, os.path.join(HERE, "test_openclip_timm.py")]),
    ("beit (relative position bias, q/v bias, layer scale on the ViT graph)", [PY, os.path.join(HERE, "test_beit.py")]),
    ("eva (EVA-02 and RoPE ViTs: rotary embedding, SwiGLU + sub-LN, post-norm on the ViT graph)",
     [PY, os.path.join(HERE, "test_eva.py")]),
    ("relpos (timm relative-position ViTs, parallel blocks, RmsNorm on the ViT graph)", [PY, os.path.join(HERE, "test_relpos.py")]),
    ("siglip (Hugging Face SigLIP image encoders on the ViT graph)", [PY, os.path.join(HERE, "test_siglip.py")]),
    ("lemevit reference", [PY, os.path.join(HERE, "test_lemevit_ref.py")]),
    ("lemevit", [PY, os.path.join(HERE, "test_lemevit.py")]),
    ("swin", [PY, os.path.join(HERE, "test_swin.py")]),
    ("swinv2 (cosine attention, continuous position bias, res-post-norm)", [PY, os.path.join(HERE, "test_swinv2.py")]),
    ("timm family (every architecture timm registers in its ViT, EVA, BEiT and Swin modules: exact or refused)",
     [PY, os.path.join(HERE, "test_timm_family.py")]),
    ("pipeline", [PY, os.path.join(HERE, "test_pipeline.py")]),
    ("messages (long paths, keys and values)", [PY, os.path.join(HERE, "test_messages.py")]),
    ("classify (command line: --json, folders, exit status)", [PY, os.path.join(HERE, "test_classify.py")]),
    ("explain (attention pictures, heat-map overlay, PNG encoder)", [PY, os.path.join(HERE, "test_explain.py")]),
    ("cifar10", [PY, os.path.join(HERE, "test_cifar10.py")]),
    ("quantized weights (f16, int8)", [PY, os.path.join(HERE, "test_quant.py")]),
    ("simd (every kernel path this CPU runs; a plain -O2 build)", [PY, os.path.join(HERE, "test_simd.py")]),
    # firmware builds and hardening
    ("firmware", [PY, os.path.join(HERE, "test_firmware.py")]),
    ("firmware on qemu (Cortex-M7, mps2-an500)", [PY, os.path.join(HERE, "test_firmware_qemu.py")]),
    ("cross (aarch64, s390x)", [PY, os.path.join(HERE, "test_cross.py")]),
    ("limits", [PY, os.path.join(HERE, "test_limits.py")]),
    ("threads (pthreads, tsan)", [PY, os.path.join(HERE, "test_threads.py")]),
    ("valgrind", [PY, os.path.join(HERE, "test_valgrind.py")]),
    ("fuzz (libFuzzer, asan+ubsan)", [PY, os.path.join(HERE, "test_fuzz.py")]),
    ("readme (speed tables from the kept bench report)", [PY, os.path.join(HERE, "test_readme.py")]),
    ("bench tool (--builds, --busy; nothing timed)", [PY, os.path.join(HERE, "test_bench_tool.py")]),
]


# the parity suites once more on the AddressSanitizer + UBSan builds (small models only)
SANITIZED = [
    ("vit (asan+ubsan)", [PY, os.path.join(HERE, "test_vit.py"), "--quick"]),
    ("clip, dinov2 (asan+ubsan)", [PY, os.path.join(HERE, "test_clip.py")]),
    ("openclip eva siglip clip (asan+ubsan)", [PY, os.path.join(HERE, "test_openclip_timm.py")]),
    ("beit (asan+ubsan)", [PY, os.path.join(HERE, "test_beit.py")]),
    ("eva (asan+ubsan)", [PY, os.path.join(HERE, "test_eva.py")]),
    ("relpos (asan+ubsan)", [PY, os.path.join(HERE, "test_relpos.py")]),
    ("siglip (asan+ubsan)", [PY, os.path.join(HERE, "test_siglip.py")]),
    ("lemevit (asan+ubsan)", [PY, os.path.join(HERE, "test_lemevit.py"), "--quick"]),
    ("swin (asan+ubsan)", [PY, os.path.join(HERE, "test_swin.py"), "--quick"]),
    ("swinv2 (asan+ubsan)", [PY, os.path.join(HERE, "test_swinv2.py"), "--quick"]),
    ("pipeline (asan+ubsan)", [PY, os.path.join(HERE, "test_pipeline.py"), "--quick"]),
    ("explain (asan+ubsan)", [PY, os.path.join(HERE, "test_explain.py")]),
]
SUITES += SANITIZED
ENV = {label: {"LMV_SANITIZE": "1", "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=1"} for label, _ in SANITIZED}


def main():
    only = sys.argv[1:]
    passed = failed = skipped = 0
    for label, cmd in SUITES:
        if only and not any(o in label for o in only):
            continue
        scripts = [c for c in cmd if c.endswith(".py")]
        script = scripts[0] if scripts else cmd[0]
        if not os.path.exists(script):
            print(f"FAIL {label}: {os.path.relpath(script, ROOT)} is missing", flush=True)
            failed += 1
            continue
        print(f"== {label}", flush=True)
        env = dict(os.environ, **ENV.get(label, {}))
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env)
        last = None
        for line in p.stdout:
            sys.stdout.write("   " + line)
            sys.stdout.flush()
            m = re.fullmatch(r"(\d+) passed, (\d+) failed(?:, (\d+) skipped)?\s*", line)
            if m:
                last = (int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))
        code = p.wait()
        if last is None:
            print(f"FAIL {label}: exited {code} without a summary line", flush=True)
            failed += 1
            continue
        passed += last[0]
        failed += last[1]
        skipped += last[2]
        if code != 0 and last[1] == 0:
            print(f"FAIL {label}: exited {code}", flush=True)
            failed += 1
    print(f"{passed} passed, {failed} failed" + (f", {skipped} skipped" if skipped else ""), flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
