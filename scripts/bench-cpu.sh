#!/usr/bin/env bash
# The documented CPU benchmark matrix (docs/PERFORMANCE.md): synthetic llama-3.2-1b shapes
# at 4.25, 2.25 and 1.25 bits per weight (--bits 4/2/1, default scale blocks of 64; token
# embedding = output layer at 4 bits), 1 and 2 threads, pp512 and tg128, 5 repetitions,
# with the read bandwidth measured in the same run. Prints the markdown table and writes
# it, with the JSON, to $KMQ_BENCH_DIR/bench-<UTC time>.{md,json}.
#   scripts/bench-cpu.sh [extra kmq bench options, e.g. --bw-mib 2048]
# Environment: KMQ_BIN (default build/bin), KMQ_BENCH_DIR (default /tmp/kmq-bench: the
# models, ~1.4 GB, are kept there and reused), KMQ_BENCH_PRESET (default llama-3.2-1b),
# KMQ_BENCH_THREADS (default 1,2), KMQ_BENCH_PROMPT (512), KMQ_BENCH_GEN (128),
# KMQ_BENCH_REPS (5).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${KMQ_BIN:-build/bin}
dir=${KMQ_BENCH_DIR:-/tmp/kmq-bench}
preset=${KMQ_BENCH_PRESET:-llama-3.2-1b}
threads=${KMQ_BENCH_THREADS:-1,2}
prompt=${KMQ_BENCH_PROMPT:-512}
gen=${KMQ_BENCH_GEN:-128}
reps=${KMQ_BENCH_REPS:-5}
mkdir -p "$dir"
models=()
for bits in 4 2 1; do
  f="$dir/synthetic-$preset-q$bits.kmq"
  if [ ! -f "$f" ]; then
    echo "bench-cpu: writing $f" >&2
    "$bin/kmq-convert" --synthetic "$preset" --bits "$bits" -o "$f" -q
  fi
  models+=(-m "$f")
done
stamp=$(date -u +%Y%m%dT%H%M%SZ)
"$bin/kmq" bench "${models[@]}" -p "$prompt" -n "$gen" -t "$threads" -r "$reps" --json-out "$dir/bench-$stamp.json" "$@" |
  tee "$dir/bench-$stamp.md"
echo "bench-cpu: results in $dir/bench-$stamp.md and $dir/bench-$stamp.json" >&2
