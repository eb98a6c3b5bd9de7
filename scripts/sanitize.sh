#!/usr/bin/env bash
# Sanitizer runs of the test suite (docs/RELIABILITY.md):
#   1. ASan + UBSan (-DKMQ_SANITIZE=ON) in build-asan: every test except the whole-text
#      perplexity test (fullppl, hours under ASan);
#   2. ThreadSanitizer (-DKMQ_TSAN=ON) in build-tsan: the tests that run threads
#      (test_util_thread_pool, test_e2e_model, test_kernels_cpu, test_quant_quantize, and
#      cli_threads: convert, complete, batch, chat and perplexity with -t 2; cli_batch,
#      cli_chat).
#   scripts/sanitize.sh [asan|tsan|all|ci|asan-ci] [CTEST_REGEX] [EXCLUDE_REGEX]
#   (default: all; the regex picks the ASan tests, e.g. '^(test_format|test_e2e_kmq)' -- only
#   their targets are built; '.*' or nothing: all of them; EXCLUDE_REGEX, default fullppl,
#   leaves tests out)
#   ci: ASan of the untrusted-input tests ($ci_asan below) and the whole ThreadSanitizer
#   stage; asan-ci: only that ASan part. (.ci/run runs tsan, then asan without fullppl and
#   cli_isa, falling back to asan-ci when time is short; docs/RELIABILITY.md.)
# CUDA is off in both builds (the sanitizers instrument host code only).
# Shared data: $KMQ_SHARED, default ../shared beside the repo. Jobs: $KMQ_JOBS, default 2.
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
only=${2:-}
exclude=${3:-fullppl}
[ "$only" = '.*' ] && only=""
ci_asan='^(test_format_file|test_e2e_kmq_mutations|test_e2e_fuzz_regressions|test_text_robust|test_text_json|test_convert_.*|cli_bad_input|cli_convert_errors)$'
if [ "$what" = ci ] || [ "$what" = asan-ci ]; then
  only=${only:-$ci_asan}
fi
jobs=${KMQ_JOBS:-2}
export KMQ_SHARED=${KMQ_SHARED:-$(cd .. && pwd)/shared}
# Any report fails the run; leaks are reported too.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:strict_string_checks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1}

if [ "$what" = all ] || [ "$what" = asan ] || [ "$what" = ci ] || [ "$what" = asan-ci ]; then
  b=${KMQ_ASAN_BUILD_DIR:-build-asan}
  cmake -S . -B "$b" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKMQ_SANITIZE=ON -DKMQ_CUDA=OFF >/dev/null
  if [ -n "$only" ]; then
    # the test executables the regex names (cli_* tests need the two tools)
    targets=$(cd "$b" && ctest -N -R "$only" -E "$exclude" | sed -n 's/^ *Test *#[0-9]*: //p' |
              sed 's/^cli_.*/kmq-cli kmq-convert/' | sort -u)
    cmake --build "$b" -j"$jobs" --target $targets
    (cd "$b" && ctest --output-on-failure --stop-on-failure -j"$jobs" -R "$only" -E "$exclude")
  else
    cmake --build "$b" -j"$jobs"
    (cd "$b" && ctest --output-on-failure --stop-on-failure -j"$jobs" -E "$exclude")
  fi
fi

if [ "$what" = all ] || [ "$what" = tsan ] || [ "$what" = ci ]; then
  b=${KMQ_TSAN_BUILD_DIR:-build-tsan}
  tsan_tests=(test_util_thread_pool test_e2e_model test_kernels_cpu test_quant_quantize cli_threads cli_batch cli_chat)
  cmake -S . -B "$b" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKMQ_TSAN=ON -DKMQ_CUDA=OFF >/dev/null
  cmake --build "$b" -j"$jobs" --target test_util_thread_pool test_e2e_model test_kernels_cpu test_quant_quantize \
    kmq-cli kmq-convert
  (cd "$b" && ctest --output-on-failure --stop-on-failure -j"$jobs" -R "^($(IFS='|'; echo "${tsan_tests[*]}"))\$")
fi
echo "sanitize: clean"
