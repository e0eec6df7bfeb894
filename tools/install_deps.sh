#!/usr/bin/env bash
# Installs the Debian packages the tests need, if any are missing. Used by `make test` and .ci/run.
# The library itself needs only a C99 compiler; these are for the PyTorch references and tools,
# the cross builds (Cortex-M, booted under qemu-system-arm; AArch64 and big-endian s390x under qemu-user) and valgrind.
set -euo pipefail
pkgs=(build-essential clang libomp-dev libclang-rt-14-dev libopenblas0-pthread python3 python3-numpy python3-pil python3-torch
      python3-torchvision libjpeg-turbo-progs
      gcc-arm-none-eabi libnewlib-arm-none-eabi gcc-aarch64-linux-gnu libc6-dev-arm64-cross
      gcc-s390x-linux-gnu libc6-dev-s390x-cross qemu-user qemu-system-arm valgrind gdb)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing test dependencies: ${missing[*]}"
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
