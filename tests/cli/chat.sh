#!/usr/bin/env bash
# kmq chat with piped turns: replies stream, the KV cache is re-used between turns,
# /reset and /stats work, a model without a chat template gets a clear error.
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
"$bin/kmq-convert" "$shared/models/stories260K-hf" -o "$tmp/s.kmq" --float f32 -q 2>/dev/null
printf 'Hello there\nTell me a story\n/stats\n/reset\n/stats\n/exit\nnot read\n' |
  "$bin/kmq" chat -m "$tmp/s.kmq" --chat-template chatml -n 16 --temp 0 -s "You are a storyteller." >"$tmp/out" 2>"$tmp/err"
check "chat exits 0 on /exit" "[ $? -eq 0 ]"
check "two replies streamed to stdout" "[ \$(grep -c . '$tmp/out') -ge 2 ]"
check "the second turn re-uses the cache" "grep -qE 're-used [1-9][0-9]* from the cache' '$tmp/err'"
check "/stats counts two turns" "grep -q 'turns 2' '$tmp/err'"
check "/reset" "grep -q 'conversation reset' '$tmp/err'"
printf 'Hello\n' | "$bin/kmq" chat -m "$tmp/s.kmq" -n 4 >/dev/null 2>"$tmp/err2"
check "a model without a chat template is refused with advice" "[ $? -ne 0 ] && grep -q 'no chat template' '$tmp/err2'"
printf 'Hello\n' | "$bin/kmq" chat -m "$tmp/s.kmq" --chat-template nope -n 4 >/dev/null 2>"$tmp/err3"
check "an unknown template name lists the built-ins" "grep -q 'llama3' '$tmp/err3'"
echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
