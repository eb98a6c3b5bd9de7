#!/usr/bin/env bash
# The tools end to end on stories260K: conversion is deterministic (same bytes for the
# same options, whatever the thread count), greedy completion prints the golden text,
# --json carries ids and top logits, info reports schemes and bits, --verify passes.
set -uo pipefail
bin=$1
shared=${KMQ_SHARED:-$(dirname "$0")/../../../shared}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0; pass=0
check() { if eval "$2"; then echo "ok   $1"; pass=$((pass+1)); else echo "FAIL $1"; fail=$((fail+1)); fi; }
if [ ! -f "$shared/models/stories260K-hf/model.safetensors" ]; then
  echo "SKIP: $shared/models/stories260K-hf not found (set KMQ_SHARED)"; exit 0
fi
hf=$shared/models/stories260K-hf
"$bin/kmq-convert" "$hf" -o "$tmp/a.kmq" --bits 3 --codebook row -t 1 -q 2>"$tmp/log" || cat "$tmp/log"
"$bin/kmq-convert" "$hf" -o "$tmp/b.kmq" --bits 3 --codebook row -t 2 -q 2>"$tmp/log" || cat "$tmp/log"
check "conversion is deterministic across thread counts" "cmp -s '$tmp/a.kmq' '$tmp/b.kmq'"
"$bin/kmq-convert" "$hf" -o "$tmp/f.kmq" --float f32 2>"$tmp/convert.log"
check "converter prints per-tensor progress and a summary" "grep -q 'blk.4.ffn_down' '$tmp/convert.log' && grep -q 'bits/weight' '$tmp/convert.log'"
"$bin/kmq" complete -m "$tmp/f.kmq" -p "Once upon a time" -n 48 --temp 0 >"$tmp/out" 2>"$tmp/err"
check "greedy completion prints the golden text" \
  "grep -qF ', there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball. She wanted to play with it,' '$tmp/out'"
check "logs go to stderr" "grep -q 'tok/s' '$tmp/err' && ! grep -q 'tok/s' '$tmp/out'"
"$bin/kmq" complete -m "$tmp/f.kmq" -p "Once upon a time" -n 4 --temp 0 --json --top-logits 3 >"$tmp/json" 2>/dev/null
check "--json has prompt ids, completion ids and top logits" \
  "grep -q '\"prompt_ids\":\[1,403,407,261,378\]' '$tmp/json' && grep -q '\"completion_ids\":\[432,383,286,261\]' '$tmp/json' && grep -q '\"top_logits\":\[{\"id\":432' '$tmp/json'"
"$bin/kmq" complete -m "$tmp/f.kmq" -p "Once upon a time" -n 16 --temp 1 --seed 7 >"$tmp/s1" 2>/dev/null
"$bin/kmq" complete -m "$tmp/f.kmq" -p "Once upon a time" -n 16 --temp 1 --seed 7 >"$tmp/s2" 2>/dev/null
check "sampling is repeatable for a seed" "cmp -s '$tmp/s1' '$tmp/s2'"
printf "Once upon a time" | "$bin/kmq" complete -m "$tmp/f.kmq" -f - -n 8 --temp 0 >"$tmp/stdin" 2>/dev/null
check "prompt from stdin" "grep -q 'there was' '$tmp/stdin'"
"$bin/kmq" info "$tmp/a.kmq" --verify >"$tmp/info"
check "info shows schemes, bits per weight and verifies" \
  "grep -q 'q3 row cb:f16' '$tmp/info' && grep -q 'bits per weight' '$tmp/info' && grep -q 'all 47 tensors intact' '$tmp/info'"
"$bin/kmq" info "$tmp/a.kmq" --json >"$tmp/info.json"
check "info --json" "grep -q '\"bits_per_weight\"' '$tmp/info.json' && grep -q '\"n_layers\": 5' '$tmp/info.json'"
"$bin/kmq" perplexity -m "$tmp/f.kmq" -f "$shared/text/tinystories_sample.txt" --chunks 2 >"$tmp/ppl" 2>/dev/null
check "perplexity prints PPL ± error" "grep -qE 'perplexity: [0-9.]+ ± [0-9.]+' '$tmp/ppl'"
for isa in scalar avx2; do
  KMQ_ISA=$isa "$bin/kmq" complete -m "$tmp/a.kmq" -p "Once upon a time" -n 32 --temp 0 >"$tmp/isa_$isa" 2>/dev/null || true
done
if grep -q avx2 /proc/cpuinfo; then
  check "scalar and avx2 kernels give the same greedy tokens" "[ -s '$tmp/isa_scalar' ] && cmp -s '$tmp/isa_scalar' '$tmp/isa_avx2'"
fi
"$bin/kmq" --help >"$tmp/help" 2>&1
check "--help lists the subcommands" "grep -q complete '$tmp/help' && grep -q perplexity '$tmp/help' && grep -q info '$tmp/help'"
echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
