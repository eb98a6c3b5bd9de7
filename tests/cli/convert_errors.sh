#!/usr/bin/env bash
# kmq-convert on inputs that disagree with each other, and interrupted mid-run: each must
# fail with a message that names the inconsistency (file, tensor, the two values), never
# crash (exit >= 128 other than the signal's own), and leave neither the output nor its
# temp file (OUT.tmp-PID) behind. Issue #7; docs/RELIABILITY.md.
set -uo pipefail
bin=$1
shared=${KMQ_SHARED:-$(dirname "$0")/../../../shared}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0; pass=0
conv="$bin/kmq-convert"

# no_output NAME OUT: neither OUT nor OUT.tmp-* exists.
no_output() {
  if ls "$2" "$2".tmp-* >/dev/null 2>&1; then
    echo "FAIL $1: output left behind: $(ls "$2"* 2>/dev/null | tr '\n' ' ')"; fail=$((fail+1)); return 1
  fi
}

# expect_convert_fail NAME OUT PATTERN... -- ARGS...: kmq-convert ARGS -o OUT exits 1..127,
# stderr matches every PATTERN (grep -E), and nothing is left at OUT.
expect_convert_fail() {
  local name=$1 out=$2; shift 2
  local patterns=()
  while [ "$1" != "--" ]; do patterns+=("$1"); shift; done
  shift
  "$conv" "$@" -o "$out" -q >"$tmp/out" 2>"$tmp/err"; local rc=$?
  if [ $rc -eq 0 ] || [ $rc -ge 128 ]; then
    echo "FAIL $name: exit $rc"; cat "$tmp/err"; fail=$((fail+1)); return
  fi
  for p in "${patterns[@]}"; do
    if ! grep -qE -- "$p" "$tmp/err"; then
      echo "FAIL $name: stderr lacks /$p/:"; cat "$tmp/err"; fail=$((fail+1)); return
    fi
  done
  no_output "$name" "$out" || return
  echo "ok   $name: $(grep error "$tmp/err" | head -c 300)"; pass=$((pass+1))
}

# hf_copy SRC DST: a writable copy of a Hugging Face folder whose large files are links.
hf_copy() {
  mkdir -p "$2"
  for f in "$1"/*; do
    case "$f" in
      *.safetensors) ln -s "$(cd "$(dirname "$f")" && pwd)/$(basename "$f")" "$2/" ;;
      *) cp "$f" "$2/" && chmod u+w "$2/$(basename "$f")" ;;
    esac
  done
}

s260=$shared/models/stories260K
s260hf=$shared/models/stories260K-hf
novels=$shared/models/kmq-novels-51m

if [ -d "$s260hf" ]; then
  # Shapes vs config.json: 2 KV heads instead of 4 makes k_proj [16, 64], the file has [32, 64].
  hf_copy "$s260hf" "$tmp/kv"
  sed -i 's/"num_key_value_heads": 4/"num_key_value_heads": 2/' "$tmp/kv/config.json"
  expect_convert_fail "k_proj shape vs num_key_value_heads" "$tmp/kv.kmq" \
    "model.safetensors" "k_proj.weight" "\[32, 64\]" "\[16, 64\]" -- "$tmp/kv"
  # vocab_size vs the embedding.
  hf_copy "$s260hf" "$tmp/vocab"
  sed -i 's/"vocab_size": 512/"vocab_size": 500/' "$tmp/vocab/config.json"
  expect_convert_fail "embedding shape vs vocab_size" "$tmp/vocab.kmq" \
    "embed_tokens.weight" "\[512, 64\]" "\[500, 64\]" -- "$tmp/vocab"
  # A tokenizer larger than the vocabulary: the 32000-token Llama-2 tokenizer.model beside
  # stories260K's 512-row embedding.
  if [ -f "$shared/tokenizers/llama2-spm/tokenizer.model" ]; then
    hf_copy "$s260hf" "$tmp/bigtok"
    cp "$shared/tokenizers/llama2-spm/tokenizer.model" "$tmp/bigtok/tokenizer.model"
    expect_convert_fail "tokenizer.model larger than vocab_size" "$tmp/bigtok.kmq" \
      "bigtok" "tokenizer has 32000 tokens but vocab_size is 512" -- "$tmp/bigtok"
  fi
else
  echo "SKIP: $s260hf not found (set KMQ_SHARED)"
fi

if [ -f "$s260/stories260K.bin" ] && [ -f "$shared/tokenizers/llama2-spm/tokenizer.bin" ]; then
  # llama2.c: the 32000-token Llama-2 tokenizer.bin with the 512-token stories260K.
  expect_convert_fail "tokenizer.bin larger than the checkpoint's vocab" "$tmp/l2c.kmq" \
    "llama2-spm/tokenizer.bin" "more tokens than the checkpoint's vocab_size 512" -- \
    "$s260/stories260K.bin" --tokenizer "$shared/tokenizers/llama2-spm/tokenizer.bin"
  # and a tokenizer.bin cut after 100 tokens.
  python3 - "$s260/tok512.bin" "$tmp/tok100.bin" <<'EOF' || head -c 1000 "$s260/tok512.bin" >"$tmp/tok100.bin"
import struct, sys
b = open(sys.argv[1], 'rb').read(); pos = 4
for _ in range(100):
    _, n = struct.unpack('<fi', b[pos:pos + 8]); pos += 8 + n
open(sys.argv[2], 'wb').write(b[:pos])
EOF
  expect_convert_fail "tokenizer.bin smaller than the checkpoint's vocab" "$tmp/l2c-small.kmq" \
    "tok100.bin" "(tokenizer has 100 tokens but the checkpoint's vocab_size is 512|past end of file)" -- \
    "$s260/stories260K.bin" --tokenizer "$tmp/tok100.bin"
fi

if [ -d "$novels" ]; then
  # A shard named in model.safetensors.index.json that is not there.
  hf_copy "$novels" "$tmp/noshard"
  rm "$tmp/noshard/model-00002-of-00003.safetensors"
  expect_convert_fail "missing shard" "$tmp/noshard.kmq" \
    "model.safetensors.index.json" "model-00002-of-00003.safetensors" "not found" -- "$tmp/noshard"
  # A shard that is there but lacks a tensor the index puts in it.
  hf_copy "$novels" "$tmp/wrongshard"
  ln -sf "$(cd "$novels" && pwd)/model-00001-of-00003.safetensors" "$tmp/wrongshard/model-00003-of-00003.safetensors"
  expect_convert_fail "shard without its tensors" "$tmp/wrongshard.kmq" \
    "model-00003-of-00003.safetensors" -- "$tmp/wrongshard"

  # Interrupted mid-run: SIGINT (Ctrl-C) and SIGTERM once the temp file holds at least one
  # tensor (the bf16 embedding, 51 MB; the layers are then being quantized), then neither
  # output nor temp file may remain.
  for sig in INT TERM; do
    out=$tmp/int-$sig.kmq
    "$conv" "$novels" -o "$out" --bits 2 --codebook row --embed-type bf16 -t 1 >/dev/null 2>"$tmp/int.err" &
    pid=$!
    started=0
    for _ in $(seq 1 1200); do  # up to 120 s (sanitizer builds are slow)
      t=$out.tmp-$pid
      if [ -f "$t" ] && [ "$(stat -c %s "$t" 2>/dev/null || echo 0)" -ge 1000000 ]; then started=1; break; fi
      kill -0 $pid 2>/dev/null || break
      sleep 0.1
    done
    kill -"$sig" $pid 2>/dev/null; wait $pid; rc=$?
    expect_rc=$((128 + $(kill -l "$sig")))
    if [ $started -ne 1 ]; then
      echo "FAIL interrupted conversion (SIG$sig): the temp file never reached 1 MB (exit $rc)"; cat "$tmp/int.err"
      fail=$((fail+1))
    elif [ $rc -ne $expect_rc ] || ! grep -q "interrupted; no output written" "$tmp/int.err"; then
      echo "FAIL interrupted conversion (SIG$sig): exit $rc (want $expect_rc)"; cat "$tmp/int.err"; fail=$((fail+1))
    elif no_output "interrupted conversion (SIG$sig)" "$out"; then
      echo "ok   interrupted conversion (SIG$sig) mid-write: exit $rc, no output, no temp file"; pass=$((pass+1))
    fi
  done
else
  echo "SKIP: $novels not found (set KMQ_SHARED)"
fi

echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
