#!/usr/bin/env bash
# kmq perplexity on stories260K: sliding windows (--stride), --json, --save-logits written
# atomically, --kl-divergence of a model against itself (exactly 0, 100% top-1) and
# against another conversion (> 0), mismatched reference files refused with the reason.
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
txt=$shared/text/tinystories_sample.txt
"$bin/kmq-convert" "$hf" -o "$tmp/f.kmq" --float f32 -q 2>/dev/null
"$bin/kmq-convert" "$hf" -o "$tmp/q.kmq" --bits 2 --codebook row -q 2>/dev/null
ppl() { "$bin/kmq" perplexity -f "$txt" -t 1 "$@"; }
ppl -m "$tmp/f.kmq" --ctx 64 --stride 16 --chunks 6 >"$tmp/stride" 2>"$tmp/stride.err"
check "--stride scores the first window whole and S tokens per later window" \
  "grep -q '6 windows of 64 by 16, 143 tokens scored' '$tmp/stride'"
check "progress with tokens/s on stderr" "grep -q 'tok/s' '$tmp/stride.err'"
ppl -m "$tmp/f.kmq" --ctx 64 --stride 64 >/dev/null 2>"$tmp/e1"
check "a stride of --ctx or more is refused" "grep -q -- '--stride 64 must be in \[1, --ctx - 1 = 63\]' '$tmp/e1'"
ppl -m "$tmp/f.kmq" --ctx 64 --chunks 4 --save-logits "$tmp/ref.logp" --json >"$tmp/save.json" 2>"$tmp/save.err"
check "--save-logits reports the size and writes the file atomically" \
  "grep -q 'saving f32 log-probs of 124 tokens x 512' '$tmp/save.err' && [ -s '$tmp/ref.logp' ] && [ -z \"\$(ls '$tmp' | grep tmp-)\" ]"
check "the file is header + token ids + f32 rows" "[ \$(stat -c %s '$tmp/ref.logp') -eq \$((64 + 4*256 + 4*512*124)) ]"
ppl -m "$tmp/f.kmq" --ctx 64 --chunks 4 --kl-divergence "$tmp/ref.logp" >"$tmp/self" 2>/dev/null
check "KLD against itself is exactly 0 with 100% top-1 agreement and PPL ratio 1" \
  "grep -q 'mean KLD            0.000000 ± 0.000000' '$tmp/self' && grep -q 'same top-1          100.000' '$tmp/self' && grep -q 'PPL ratio           1.000000' '$tmp/self'"
ppl -m "$tmp/q.kmq" --ctx 64 --chunks 4 --kl-divergence "$tmp/ref.logp" --json >"$tmp/q.json" 2>/dev/null
check "KLD of a 2-bit conversion is positive, in --json with percentiles" "python3 - '$tmp/q.json' <<'PY'
import json, sys
k = json.load(open(sys.argv[1]))['kl_divergence']
assert 0 < k['kld_mean'] < 5 and k['kld_stderr'] > 0, k
assert 0 < k['top1_agreement'] < 1, k
assert k['kld_percentiles']['0'] >= 0 and k['kld_percentiles']['100'] >= k['kld_percentiles']['50']
assert abs(k['ppl_ratio'] - json.load(open(sys.argv[1]))['ppl'] / k['ref_ppl']) < 1e-4 * k['ppl_ratio'], k
PY"
ppl -m "$tmp/f.kmq" --ctx 32 --chunks 4 --kl-divergence "$tmp/ref.logp" >/dev/null 2>"$tmp/e2"
check "a reference saved with another --ctx is refused" "grep -q 'saved with --ctx 64 --stride 0, this run uses --ctx 32' '$tmp/e2'"
"$bin/kmq" perplexity -m "$tmp/f.kmq" -f "$shared/text/tinyshakespeare.txt" --ctx 64 --chunks 4 --kl-divergence "$tmp/ref.logp" >/dev/null 2>"$tmp/e3"
check "a reference of another text is refused" "grep -q 'the token ids differ' '$tmp/e3'"
ppl -m "$tmp/f.kmq" --ctx 64 --chunks 4 --kl-divergence "$tmp/f.kmq" >/dev/null 2>"$tmp/e4"
check "a file of another kind is refused" "grep -q 'not a kmq log-prob file' '$tmp/e4'"
echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
