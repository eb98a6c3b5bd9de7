#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz/ (clang, -DKMQ_FUZZ=ON, ASan + UBSan) in
# build-fuzz/ and runs each for SECONDS (default 60), one after another on one core.
#   scripts/fuzz.sh [SECONDS] [TARGET...]     e.g. scripts/fuzz.sh 30 kmq_file safetensors
# Corpus: tests/fuzz/corpus/<target>/ (hand-written seeds, kept in git) plus seeds made at
# run time from the shared folder ($KMQ_SHARED, default ../shared), and what libFuzzer finds,
# kept in build-fuzz/corpus/<target>/ (reused by the next run). A crashing input is written
# to tests/fuzz/regressions/<target>/; tests/test_e2e_fuzz_regressions.cpp replays every
# file there in the normal test suite. Summary: build-fuzz/fuzz-summary.txt. Exit status 1
# when any target crashed. docs/RELIABILITY.md describes the targets.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
shift || true
build=${KMQ_FUZZ_BUILD_DIR:-build-fuzz}
all=(kmq_file safetensors hf_config tok_hf_json tok_spm_model tok_tiktoken tokenizer_json encode_gpt2 encode_llama2 batch_file chat_template)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")
shared=${KMQ_SHARED:-$(cd .. && pwd)/shared}
export KMQ_SHARED=$shared

command -v clang++ >/dev/null || { echo "fuzz: clang++ not found (scripts/install-deps.sh --fuzz)"; exit 2; }
cmake -S . -B "$build" -DKMQ_FUZZ=ON -DKMQ_BUILD_TESTS=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ >/dev/null
cmake --build "$build" -j"${KMQ_JOBS:-2}" --target kmq-convert $(printf 'fuzz_%s ' "${targets[@]}") \
  >"$build/build.log" || { tail -30 "$build/build.log"; exit 2; }

# Seeds from the shared folder (made once; skipped where the files are absent).
seeds=$build/seeds
if [ ! -f "$seeds/.done" ] && [ -d "$shared" ]; then
  rm -rf "$seeds"
  mkdir -p "$seeds"/{hf_config,tok_spm_model,tok_tiktoken,encode_gpt2,encode_llama2,kmq_file,tokenizer_json}
  for c in "$shared"/models/*/config.json; do cp "$c" "$seeds/hf_config/$(basename "$(dirname "$c")").json"; done
  s260=$shared/models/stories260K
  [ -f "$s260/tok512.model" ] && cp "$s260/tok512.model" "$seeds/tok_spm_model/"
  tik=$shared/tokenizers/llama3-tiktoken/tokenizer.model
  [ -f "$tik" ] && head -n 400 "$tik" >"$seeds/tok_tiktoken/llama3_head.tiktoken"
  # Texts: each test-vector string, and a few 1 KB slices of the shared texts.
  for v in "$shared"/tokenizers/test-vectors/*.inp; do
    [ -f "$v" ] || continue
    awk -v out="$seeds/encode_gpt2/$(basename "$v" .inp)" \
      'BEGIN {first = 1} /^__ggml_vocab_test__$/ {if (f) close(f); n++; first = 1; next}
       {f = out "_" n; printf "%s%s", (first ? "" : "\n"), $0 > f; first = 0}' "$v"
  done
  for t in "$shared"/text/*.txt "$shared"/text/*.raw; do
    [ -f "$t" ] || continue
    for off in 0 40000 80000; do
      dd if="$t" of="$seeds/encode_gpt2/$(basename "$t")_$off" iflag=skip_bytes,count_bytes \
        skip=$off count=1024 status=none
    done
  done
  cp "$seeds"/encode_gpt2/* "$seeds/encode_llama2/" 2>/dev/null || true
  # .kmq files: stories260K converted two ways; the tokenizer_json seed is the metadata of one.
  hf=$shared/models/stories260K-hf
  if [ -d "$hf" ]; then
    "$build"/bin/kmq-convert "$hf" -o "$seeds/kmq_file/s260k_q2_row.kmq" --bits 2 --codebook row -q -t 1
    "$build"/bin/kmq-convert "$hf" -o "$seeds/kmq_file/s260k_q3_group.kmq" --bits 3 --codebook group \
      --group-size 64 --scale-block 32 -q -t 1
    for k in "$seeds"/kmq_file/*.kmq; do printf '\0' | cat - "$k" >"$k.in" && mv "$k.in" "$k"; done
    k=$seeds/kmq_file/s260k_q2_row.kmq
    read -r moff msize < <(od -An -t u8 -j $((1 + 40)) -N 16 "$k")
    dd if="$k" of="$seeds/tokenizer_json/s260k_metadata.json" iflag=skip_bytes,count_bytes \
      skip=$((1 + moff)) count="$msize" status=none
  fi
  touch "$seeds/.done"
fi

export TMPDIR=$PWD/$build/tmp  # the targets' temp files
mkdir -p "$TMPDIR"
summary=$build/fuzz-summary.txt
: >"$summary"
failed=0
for t in "${targets[@]}"; do
  corpus=$build/corpus/$t
  regress=tests/fuzz/regressions/$t
  mkdir -p "$corpus" "$regress"
  dirs=("$corpus")
  for d in tests/fuzz/corpus/$t "$seeds/$t"; do [ -d "$d" ] && dirs+=("$d"); done
  log=$build/fuzz-$t.log
  echo "fuzz: $t for ${secs}s"
  set +e
  "$build/bin/fuzz_$t" -max_total_time="$secs" -timeout=20 -rss_limit_mb=4096 -max_len=262144 \
    -print_final_stats=1 -artifact_prefix="$regress/" "${dirs[@]}" >"$log" 2>&1
  rc=$?
  set -e
  execs=$(awk '/stat::number_of_executed_units/ {print $2}' "$log")
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  if [ $rc -ne 0 ]; then
    failed=1
    echo "fuzz: $t FAILED (exit $rc): input kept in $regress/, log $log"
    grep -m1 -E 'ERROR: (AddressSanitizer|libFuzzer)|runtime error' "$log" || tail -5 "$log"
  fi
  printf '%-15s %5ss %10s execs  cov %6s  %s\n' "$t" "$secs" "${execs:-?}" "${cov:-?}" \
    "$([ $rc -eq 0 ] && echo ok || echo "CRASH (exit $rc)")" | tee -a "$summary"
done
rm -rf "$TMPDIR"
exit $failed
