#!/usr/bin/env bash
# GPU checks and benchmarks in one run (docs/PERFORMANCE.md, GPU): the CUDA kernels against
# the CPU reference under each decode-kernel choice (KMQ_CUDA_GEMV=q8|q8fast|f32) and with
# the former prompt slabs (KMQ_CUDA_SLABS=small), the
# end-to-end GPU tests, and the llama-3.1-8b benchmark of test_cuda_bench.
#   scripts/bench-gpu.sh [BIN_DIR] [OUT_DIR]
# BIN_DIR: where test_cuda_* are (default build/bin); OUT_DIR: where the logs go (default
# build/gpu-logs). KMQ_SHARED as for the tests; KMQ_CUDA_BENCH (default 8b; tiny for a
# quick look) and KMQ_CUDA_BENCH_PART (shapes|model|all) as test_cuda_bench reads them;
# KMQ_GPU_STEPS (default "kernels e2e bench") picks the steps. A summary is printed last.
set -uo pipefail
bin=${1:-build/bin}
out=${2:-build/gpu-logs}
steps=${KMQ_GPU_STEPS:-kernels e2e bench}
mkdir -p "$out"
summary=()
{ nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,clocks.mem,driver_version --format=csv || echo "bench-gpu: no nvidia-smi"; } 2>&1 |
  tee "$out/gpu.txt"
for step in $steps; do
  case $step in
    kernels)
      for mode in q8 q8fast f32; do
        start=$SECONDS
        KMQ_CUDA_GEMV=$mode timeout 300 "$bin/test_cuda_kernels" >"$out/kernels-$mode.log" 2>&1
        rc=$?
        summary+=("kernels KMQ_CUDA_GEMV=$mode: rc $rc, $((SECONDS - start)) s, $(grep -E '^\[doctest\] (test cases|assertions)' "$out/kernels-$mode.log" | tr -s ' ' | tr '\n' ' ')")
      done
      start=$SECONDS
      KMQ_CUDA_SLABS=small timeout 300 "$bin/test_cuda_kernels" >"$out/kernels-small.log" 2>&1
      rc=$?
      summary+=("kernels KMQ_CUDA_SLABS=small: rc $rc, $((SECONDS - start)) s, $(grep -E '^\[doctest\] (test cases|assertions)' "$out/kernels-small.log" | tr -s ' ' | tr '\n' ' ')") ;;
    e2e)
      start=$SECONDS
      timeout 400 "$bin/test_cuda_e2e" -s >"$out/e2e.log" 2>&1
      rc=$?
      summary+=("e2e: rc $rc, $((SECONDS - start)) s, $(grep -E '^\[doctest\] (test cases|assertions)' "$out/e2e.log" | tr -s ' ' | tr '\n' ' ')")
      grep -E "MESSAGE|ppl|SKIP" "$out/e2e.log" | head -20 ;;
    bench)
      start=$SECONDS
      KMQ_CUDA_BENCH=${KMQ_CUDA_BENCH:-8b} KMQ_CUDA_BENCH_OUT="$out/bench.md" timeout 480 "$bin/test_cuda_bench" \
        >"$out/bench.log" 2>&1
      rc=$?
      summary+=("bench: rc $rc, $((SECONDS - start)) s (table in $out/bench.md)")
      cat "$out/bench.md" 2>/dev/null ;;
    *) echo "bench-gpu: unknown step $step"; exit 2 ;;
  esac
done
echo
printf '%s\n' "${summary[@]}"
