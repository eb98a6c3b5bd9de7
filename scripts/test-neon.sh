#!/usr/bin/env bash
# Builds the CPU kernels and their unit tests for AArch64 with Debian's cross compiler
# and runs them under qemu-user, so the NEON kernels are checked against the scalar
# reference on every CI run (the CI machine is x86-64). Needs g++-aarch64-linux-gnu,
# qemu-user and doctest-dev (scripts/install-deps.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
cxx=${KMQ_AARCH64_CXX:-aarch64-linux-gnu-g++}
qemu=${KMQ_QEMU:-qemu-aarch64}
if ! command -v "$cxx" >/dev/null || ! command -v "$qemu" >/dev/null; then
  echo "test-neon: SKIP: $cxx or $qemu not installed (apt-get install g++-aarch64-linux-gnu qemu-user)"
  exit 0
fi
out=${KMQ_BUILD_DIR:-build}/neon
mkdir -p "$out"
# doctest is header-only; -idirafter finds it in /usr/include after the cross sysroot.
srcs=(kernels/cpu/*.cpp src/util/types.cpp tests/test_kernels_cpu.cpp tests/doctest_main.cpp)
"$cxx" -std=c++20 -O2 -ffp-contract=off -static -Wall -Wextra -Wno-unused-parameter -I include -I src -I . -I tests \
  -idirafter /usr/include "${srcs[@]}" -o "$out/test_kernels_cpu"
echo "test-neon: built $out/test_kernels_cpu for aarch64; running under $qemu"
"$qemu" "$out/test_kernels_cpu" "$@"
# The NEON table must be among the ones tested.
"$qemu" "$out/test_kernels_cpu" -tc="kernels: KMQ_ISA*" -s | grep -q "isa neon" || {
  echo "test-neon: the NEON kernel table was not selected"; exit 1; }
