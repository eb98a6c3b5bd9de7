#!/usr/bin/env bash
# Sanitizer runs of the test suite (docs/RELIABILITY.md):
#   1. ASan + UBSan (-DKMQ_SANITIZE=ON) in build-asan: every test except the whole-text
#      perplexity test (fullppl, hours under ASan);
#   2. ThreadSanitizer (-DKMQ_TSAN=ON) in build-tsan: the tests that run threads
#      (test_e2e_model, test_kernels_cpu, test_quant_quantize).
#   scripts/sanitize.sh [asan|tsan]   (default: both)
# Shared data: $KMQ_SHARED, default ../shared beside the repo. Jobs: $KMQ_JOBS, default 2.
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
jobs=${KMQ_JOBS:-2}
export KMQ_SHARED=${KMQ_SHARED:-$(cd .. && pwd)/shared}
# Any report fails the run; leaks are reported too.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:strict_string_checks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1}

if [ "$what" = all ] || [ "$what" = asan ]; then
  b=${KMQ_ASAN_BUILD_DIR:-build-asan}
  cmake -S . -B "$b" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKMQ_SANITIZE=ON >/dev/null
  cmake --build "$b" -j"$jobs"
  (cd "$b" && ctest --output-on-failure -j"$jobs" -E fullppl)
fi

if [ "$what" = all ] || [ "$what" = tsan ]; then
  b=${KMQ_TSAN_BUILD_DIR:-build-tsan}
  tsan_tests=(test_e2e_model test_kernels_cpu test_quant_quantize)
  cmake -S . -B "$b" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKMQ_TSAN=ON >/dev/null
  cmake --build "$b" -j"$jobs" --target "${tsan_tests[@]}"
  (cd "$b" && ctest --output-on-failure -j"$jobs" -R "^($(IFS='|'; echo "${tsan_tests[*]}"))\$")
fi
echo "sanitize: clean"
