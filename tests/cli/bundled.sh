#!/usr/bin/env bash
# The bundled default model (models/kmq-novels-51m-qat1.kmq, docs/QAT.md §3): present,
# intact, under 15 MB, runs the README's first command, and computes the perplexity
# recorded when it was made; and `kmq tokenize` on it (ids, special tokens, raw output).
set -uo pipefail
bin=$1
root=$(cd "$(dirname "$0")/../.." && pwd)
shared=${KMQ_SHARED:-$root/../shared}
model=$root/models/kmq-novels-51m-qat1.kmq
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0; pass=0
check() { if eval "$2"; then echo "ok   $1"; pass=$((pass+1)); else echo "FAIL $1"; fail=$((fail+1)); fi; }
check "the bundled model exists and is under 15 MB" "[ -f '$model' ] && [ \$(stat -c %s '$model') -lt 15000000 ]"
check "kmq info --verify passes (every tensor's checksum)" "'$bin/kmq' info '$model' --verify >/dev/null 2>&1"
"$bin/kmq" complete -m "$model" -p "It was a dark and stormy night" -n 16 --temp 0 >"$tmp/out" 2>"$tmp/err"
check "the README's first command completes the prompt" "[ \$? -eq 0 ] && [ \$(wc -c <'$tmp/out') -gt 20 ]"
"$bin/kmq" tokenize -m "$model" -p "Hello world" --ids >"$tmp/ids" 2>/dev/null
check "tokenize: GPT-2 ids of 'Hello world'" "[ \"\$(cat '$tmp/ids')\" = '[15496,995]' ]"
"$bin/kmq" tokenize -m "$model" -p "Hello<|endoftext|>" --ids >"$tmp/sp" 2>/dev/null
"$bin/kmq" tokenize -m "$model" -p "Hello<|endoftext|>" --ids --no-parse-special >"$tmp/nosp" 2>/dev/null
check "tokenize: special-token text is parsed, or not with --no-parse-special" \
  "[ \"\$(cat '$tmp/sp')\" = '[15496,50256]' ] && [ \"\$(cat '$tmp/nosp')\" != '[15496,50256]' ]"
printf 'It was the best of times, it was the worst of times.' >"$tmp/t.txt"
"$bin/kmq" tokenize -m "$model" -f "$tmp/t.txt" --ids >"$tmp/t.ids" 2>/dev/null
"$bin/kmq" tokenize -m "$model" -f "$tmp/t.txt" -o "$tmp/t.u16" 2>/dev/null
n=$(python3 -c "import json,sys; print(len(json.load(open(sys.argv[1]))))" "$tmp/t.ids" 2>/dev/null || tr -cd , <"$tmp/t.ids" | wc -c)
check "tokenize -o FILE.u16 writes 2 bytes per token, nothing else" "[ \$(stat -c %s '$tmp/t.u16') -eq \$((2 * $n)) ] && [ -z \"\$(ls '$tmp' | grep tmp-)\" ]"
"$bin/kmq" tokenize -m "$model" -f "$tmp/t.txt" -o "$tmp/t.bin" >/dev/null 2>"$tmp/e1"
check "tokenize -o with another extension is refused" "[ \$? -ne 0 ] && grep -q 'must end in .u16 or .u32' '$tmp/e1' && [ ! -e '$tmp/t.bin' ]"
"$bin/kmq" tokenize -m "$model" >/dev/null 2>"$tmp/e2"
check "tokenize without a text is refused" "[ \$? -ne 0 ] && grep -q 'give a text' '$tmp/e2'"
if [ -f "$shared/text/heldout_Stevenson_Treasure_1883.txt" ]; then
  ppl=$("$bin/kmq" perplexity -m "$model" -f "$shared/text/heldout_Stevenson_Treasure_1883.txt" --chunks 8 --json 2>/dev/null |
        python3 -c "import json,sys; print(json.load(sys.stdin)['ppl'])" 2>/dev/null || echo 0)
  # recorded 2026-11-23: 71.492 (scalar, exact), 71.500 (AVX2 lookup tables)
  check "held-out novel, 8 chunks: PPL $ppl is 71.49 within 0.2%" \
    "python3 -c 'import sys; sys.exit(0 if abs($ppl / 71.492 - 1) < 0.002 else 1)'"
else
  echo "SKIP perplexity: $shared/text not found (set KMQ_SHARED)"
fi
echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
