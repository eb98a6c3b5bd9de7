#!/usr/bin/env bash
# Builds kmq and runs the whole test suite (unit, end-to-end against the shared goldens,
# command-line error tests). Shared data: $KMQ_SHARED, default ../shared beside the repo.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/install-deps.sh --qat
build=${KMQ_BUILD_DIR:-build}
jobs=$(nproc 2>/dev/null || echo 2)
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release
cmake --build "$build" -j"$jobs"
export KMQ_SHARED=${KMQ_SHARED:-$(cd .. && pwd)/shared}
[ -d "$KMQ_SHARED" ] || echo "test: $KMQ_SHARED not found: tests that need the shared models will SKIP"
cd "$build"
ctest --output-on-failure -j"$jobs" "$@"
