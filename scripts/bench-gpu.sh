#!/usr/bin/env bash
# GPU checks and benchmarks in one run (docs/PERFORMANCE.md, GPU): the CUDA kernels against
# the CPU reference under each decode-kernel choice (KMQ_CUDA_GEMV=q8lite|q8|q8fast|f32), with
# the former prompt slabs (KMQ_CUDA_SLABS=small) and with the decode fusions and PDL off
# (KMQ_CUDA_FUSE=0 KMQ_CUDA_PDL=0), the end-to-end GPU tests (these run side by side: the
# checks do not need the GPU to themselves), then the llama-3.1-8b benchmark of
# test_cuda_bench -- first that of a baseline build when KMQ_GPU_BASE_BIN names one, so
# that before and after come from one machine and one run.
#   scripts/bench-gpu.sh [BIN_DIR] [OUT_DIR]
# BIN_DIR: where test_cuda_* are (default build/bin); OUT_DIR: where the logs go (default
# build/gpu-logs). KMQ_SHARED as for the tests; KMQ_CUDA_BENCH (default 8b; tiny for a
# quick look), KMQ_CUDA_BENCH_PART (shapes|model|all) and KMQ_CUDA_BENCH_MODES as
# test_cuda_bench reads them; KMQ_GPU_BASE_BIN: a directory with a baseline
# test_cuda_bench; KMQ_GPU_STEPS (default "kernels e2e bench"; also "sanitize":
# compute-sanitizer memcheck over the fusion tests) picks the steps. A summary is printed last.
set -uo pipefail
bin=${1:-build/bin}
out=${2:-build/gpu-logs}
steps=${KMQ_GPU_STEPS:-kernels e2e bench}
mkdir -p "$out"
summary=()
{ nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,clocks.mem,driver_version --format=csv || echo "bench-gpu: no nvidia-smi"; } 2>&1 |
  tee "$out/gpu.txt"
counts() { grep -E '^\[doctest\] (test cases|assertions)' "$1" | tr -s ' ' | tr '\n' ' '; }
# checks: name, environment, command; run in the background, collected by wait_checks
pids=() names=()
check() {
  local name=$1 envs=$2
  shift 2
  (
    start=$SECONDS
    env $envs timeout 300 "$@" >"$out/$name.log" 2>&1
    echo "$name ($envs): rc $?, $((SECONDS - start)) s, $(counts "$out/$name.log")" >"$out/$name.sum"
  ) &
  pids+=($!) names+=("$name")
}
wait_checks() {
  for p in "${pids[@]}"; do wait "$p"; done
  for n in "${names[@]}"; do summary+=("$(cat "$out/$n.sum")"); done
  pids=() names=()
}
for step in $steps; do
  case $step in
    kernels)
      check kernels-q8lite "KMQ_CUDA_GEMV=q8lite" "$bin/test_cuda_kernels"
      check kernels-q8 "KMQ_CUDA_GEMV=q8" "$bin/test_cuda_kernels"
      check kernels-q8fast "KMQ_CUDA_GEMV=q8fast" "$bin/test_cuda_kernels"
      check kernels-f32 "KMQ_CUDA_GEMV=f32" "$bin/test_cuda_kernels"
      check kernels-small "KMQ_CUDA_SLABS=small" "$bin/test_cuda_kernels"
      check kernels-nofuse "KMQ_CUDA_FUSE=0 KMQ_CUDA_PDL=0" "$bin/test_cuda_kernels" ;;
    e2e)
      check e2e "KMQ_CUDA_GRAPHS=1" "$bin/test_cuda_e2e" -s
      check e2e-q8 "KMQ_CUDA_GEMV=q8" "$bin/test_cuda_e2e" -s ;;
    sanitize)
      check memcheck "KMQ_CUDA_GEMV=q8lite" compute-sanitizer --tool memcheck --error-exitcode 9 "$bin/test_cuda_kernels" \
        -tc="*fused*,*rope of q*" ;;
    bench)
      wait_checks
      grep -E "MESSAGE|ppl|SKIP" "$out"/e2e*.log 2>/dev/null | head -40
      if [ -n "${KMQ_GPU_BASE_BIN:-}" ]; then
        start=$SECONDS
        KMQ_CUDA_BENCH=${KMQ_CUDA_BENCH:-8b} KMQ_CUDA_BENCH_MODES= KMQ_CUDA_BENCH_OUT="$out/bench-base.md" timeout 480 \
          "$KMQ_GPU_BASE_BIN/test_cuda_bench" >"$out/bench-base.log" 2>&1
        summary+=("bench (baseline $KMQ_GPU_BASE_BIN): rc $?, $((SECONDS - start)) s (table in $out/bench-base.md)")
        echo "== baseline"
        cat "$out/bench-base.md" 2>/dev/null
      fi
      start=$SECONDS
      KMQ_CUDA_BENCH=${KMQ_CUDA_BENCH:-8b} KMQ_CUDA_BENCH_OUT="$out/bench.md" timeout 480 "$bin/test_cuda_bench" \
        >"$out/bench.log" 2>&1
      summary+=("bench: rc $?, $((SECONDS - start)) s (table in $out/bench.md)")
      echo "== $bin"
      cat "$out/bench.md" 2>/dev/null ;;
    *) echo "bench-gpu: unknown step $step"; exit 2 ;;
  esac
done
wait_checks
echo
printf '%s\n' "${summary[@]}"
