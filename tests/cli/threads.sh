#!/usr/bin/env bash
# The threaded paths with -t 2 on stories260K: conversion, completion, batched completion,
# chat and perplexity each give the same answer as with -t 1. Small enough to run under
# ThreadSanitizer too (scripts/sanitize.sh tsan runs this script), which is its main job:
# the batch and chat paths must be free of data races (issue #7).
set -uo pipefail
bin=$1
shared=${KMQ_SHARED:-$(dirname "$0")/../../../shared}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0; pass=0
check() { if eval "$2"; then echo "ok   $1"; pass=$((pass+1)); else echo "FAIL $1"; fail=$((fail+1)); fi; }
hf=$shared/models/stories260K-hf
if [ ! -f "$hf/model.safetensors" ]; then
  echo "SKIP: $hf not found (set KMQ_SHARED)"; exit 0
fi
"$bin/kmq-convert" "$hf" -o "$tmp/t1.kmq" --bits 3 --codebook row -t 1 -q 2>"$tmp/c1.err"
check "convert -t 1" "[ $? -eq 0 ]"
"$bin/kmq-convert" "$hf" -o "$tmp/t2.kmq" --bits 3 --codebook row -t 2 -q 2>"$tmp/c2.err"
check "convert -t 2" "[ $? -eq 0 ]"
check "convert: the same file with 1 and 2 threads" "cmp -s '$tmp/t1.kmq' '$tmp/t2.kmq'"
m=$tmp/t1.kmq
for t in 1 2; do
  "$bin/kmq" complete -m "$m" -p "Once upon a time" -n 32 --temp 0 -t $t >"$tmp/g$t.out" 2>"$tmp/g$t.err"
  check "complete -t $t" "[ $? -eq 0 ]"
done
check "complete: the same greedy text with 1 and 2 threads" "cmp -s '$tmp/g1.out' '$tmp/g2.out'"
printf 'Once upon a time\nThe little dog\nLily and Ben went to\nOne day, a bird\n' >"$tmp/p.txt"
for t in 1 2; do
  "$bin/kmq" complete -m "$m" --batch-file "$tmp/p.txt" -n 16 --temp 0 --parallel 3 -t $t >"$tmp/b$t.jsonl" 2>"$tmp/b$t.err"
  check "complete --batch-file --parallel 3 -t $t" "[ $? -eq 0 ] && [ \$(wc -l <'$tmp/b$t.jsonl') -eq 4 ]"
done
for t in 1 2; do sed 's/,"timings":{[^}]*}//' "$tmp/b$t.jsonl" >"$tmp/b$t.cmp"; done
check "batch: the same lines (timings aside) with 1 and 2 threads" "cmp -s '$tmp/b1.cmp' '$tmp/b2.cmp'"
for t in 1 2; do
  printf 'Hello there\nTell me a story\n/exit\n' |
    "$bin/kmq" chat -m "$m" --chat-template chatml -n 12 --temp 0 -t $t >"$tmp/c$t.out" 2>"$tmp/c$t.err"
  check "chat -t $t" "[ $? -eq 0 ]"
done
check "chat: the same replies with 1 and 2 threads" "cmp -s '$tmp/c1.out' '$tmp/c2.out'"
text=$shared/text/tinystories_sample.txt
if [ -f "$text" ]; then
  head -c 20000 "$text" >"$tmp/ppl.txt"
  for t in 1 2; do
    "$bin/kmq" perplexity -m "$m" -f "$tmp/ppl.txt" -c 128 --chunks 4 -t $t >"$tmp/p$t.out" 2>"$tmp/p$t.err"
    check "perplexity -t $t" "[ $? -eq 0 ]"
  done
  for t in 1 2; do grep -o 'perplexity: .* tokens scored' "$tmp/p$t.out" >"$tmp/p$t.cmp"; done
  check "perplexity: the same result with 1 and 2 threads" "[ -s '$tmp/p1.cmp' ] && cmp -s '$tmp/p1.cmp' '$tmp/p2.cmp'"
fi
for f in "$tmp"/*.err; do
  if grep -q "ThreadSanitizer\|AddressSanitizer\|runtime error" "$f"; then
    echo "FAIL sanitizer report in $(basename "$f"):"; cat "$f"; fail=$((fail+1))
  fi
done
echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
