#!/usr/bin/env bash
# kmq-convert --synthetic and kmq bench end to end on the tiny preset (no shared data
# needed): the synthetic file is deterministic for a seed, verifies, loads and generates;
# bench's JSON has every field, positive; markdown is the default; bad inputs give
# clear errors (exit 1, a message naming the problem, no crash).
set -uo pipefail
bin=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0; pass=0
check() { if eval "$2"; then echo "ok   $1"; pass=$((pass+1)); else echo "FAIL $1"; fail=$((fail+1)); fi; }
expect_fail() {
  local name=$1 pattern=$2; shift 2
  "$@" >"$tmp/out" 2>"$tmp/err"; local rc=$?
  if [ $rc -eq 0 ] || [ $rc -ge 128 ]; then
    echo "FAIL $name: exit $rc"; cat "$tmp/err"; fail=$((fail+1)); return
  fi
  if ! grep -qE -- "$pattern" "$tmp/err"; then
    echo "FAIL $name: stderr lacks /$pattern/:"; cat "$tmp/err"; fail=$((fail+1)); return
  fi
  echo "ok   $name: $(grep -m1 error "$tmp/err" | head -c 200)"; pass=$((pass+1))
}

"$bin/kmq-convert" --synthetic tiny -o "$tmp/a.kmq" --seed 5 -t 1 2>"$tmp/conv.log"
check "synthetic tiny is written with per-tensor progress" "[ -s '$tmp/a.kmq' ] && grep -q 'blk.1.ffn_down' '$tmp/conv.log'"
"$bin/kmq-convert" --synthetic tiny -o "$tmp/b.kmq" --seed 5 -t 2 -q 2>/dev/null
"$bin/kmq-convert" --synthetic tiny -o "$tmp/c.kmq" --seed 6 -q 2>/dev/null
check "same seed, same bytes (any thread count)" "cmp -s '$tmp/a.kmq' '$tmp/b.kmq'"
check "another seed, other bytes" "! cmp -s '$tmp/a.kmq' '$tmp/c.kmq'"
"$bin/kmq" info "$tmp/a.kmq" --verify >"$tmp/info" 2>&1
check "info --verify accepts it" "grep -q 'tensors intact' '$tmp/info' && grep -q 'q4 tensor' '$tmp/info'"
"$bin/kmq-convert" --synthetic tiny -o "$tmp/q2.kmq" --bits 2 --codebook row -q 2>/dev/null
"$bin/kmq" info "$tmp/q2.kmq" --verify >"$tmp/info2" 2>&1
check "--bits 2 --codebook row is honoured (embeddings at 4 bits)" \
  "grep -qE 'blk.0.attn_q .*q2 row' '$tmp/info2' && grep -qE 'token_embd .*q4 row' '$tmp/info2' && grep -q intact '$tmp/info2'"
"$bin/kmq" complete -m "$tmp/a.kmq" -p "hello" -n 6 --temp 0 --json >"$tmp/complete.json" 2>/dev/null
check "it generates" "grep -q '\"completion_ids\":\[[0-9]*,[0-9]*,[0-9]*' '$tmp/complete.json'"

"$bin/kmq" bench -m "$tmp/a.kmq" -m "$tmp/q2.kmq" -p 8 -n 4 -r 2 -t 1,2 --bw-mib 64 --json >"$tmp/bench.json" 2>"$tmp/bench.err"
check "bench --json: every field present and positive" "python3 - '$tmp/bench.json' <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
assert [b['threads'] for b in j['bandwidth']] == [1, 2], j['bandwidth']
assert all(b['gb_per_s'] > 0 and b['buffer_bytes'] == 64 << 20 for b in j['bandwidth'])
# probed at the start and after each of the 2 tg tests per thread count; the best counts
assert all(b['probes'] == 3 and 0 < b['worst_probe_gb_per_s'] <= b['gb_per_s'] for b in j['bandwidth']), j['bandwidth']
best = {b['threads']: b['gb_per_s'] for b in j['bandwidth']}
r = j['results']
assert len(r) == 2 * 2 * 2, len(r)  # models x threads x (pp, tg)
assert [x['test'] for x in r[:2]] == ['pp8', 'tg4']
for x in r:
    for k in ('file_bytes', 'n_params', 'bits_per_weight', 'bytes_per_token', 'threads', 'tok_s_mean'):
        assert x[k] > 0, (k, x)
    assert x['tok_s_stddev'] >= 0 and len(x['seconds']) == 2 and x['backend']
    if x['test'].startswith('tg'):
        assert x['gb_per_s'] > 0 and x['bandwidth_gb_per_s'] == best[x['threads']] and x['bandwidth_pct'] > 0, x
        assert abs(x['bandwidth_pct'] - 100 * x['gb_per_s'] / best[x['threads']]) < 1e-6 * x['bandwidth_pct']
        assert abs(x['gb_per_s'] - x['bytes_per_token'] * x['tok_s_mean'] / 1e9) < 1e-6 * x['gb_per_s']
    else:
        assert x['gb_per_s'] is None
assert r[0]['bytes_per_token'] > r[4]['bytes_per_token']  # 4.25 bpw reads more than 2.25
PY"
check "bench progress goes to stderr" "grep -q 'rep 2/2' '$tmp/bench.err'"
"$bin/kmq" bench -m "$tmp/a.kmq" -p 8 -n 4 -r 1 -t 1 --bw-mib 16 --json-out "$tmp/o.json" >"$tmp/bench.md" 2>/dev/null
check "markdown by default, --json-out beside it" \
  "grep -q '^| model ' '$tmp/bench.md' && grep -q '| tg4 |' '$tmp/bench.md' && grep -q 'read bandwidth, 1 thread' '$tmp/bench.md' && python3 -c 'import json,sys; json.load(open(sys.argv[1]))' '$tmp/o.json'"
"$bin/kmq" bench -m "$tmp/a.kmq" -p 0 -n 4 -b 1,3 -r 1 -t 1 --bw-mib 16 --json >"$tmp/batch.json" 2>/dev/null
check "-b 1,3: a batched tg test counts every sequence" "python3 - '$tmp/batch.json' <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))['results']
one = [x for x in r if x['test'] == 'tg4'][0]; three = [x for x in r if x['test'] == 'tg4 b3'][0]
assert three['batch'] == 3 and one['batch'] == 1, r
assert three['tok_s_mean'] > 0 and abs(three['gb_per_s'] - three['bytes_per_token'] * three['tok_s_mean'] / 3 / 1e9) < 1e-6 * three['gb_per_s'] + 1e-12
PY"
expect_fail "bad batch size" "-b/--batch 0 must be" "$bin/kmq" bench -m "$tmp/a.kmq" -b 0

expect_fail "unknown preset" "unknown synthetic preset 'llama-9b' \(known: tiny, llama-3.2-1b" \
  "$bin/kmq-convert" --synthetic llama-9b -o "$tmp/x.kmq"
expect_fail "input and --synthetic" "give an input or --synthetic, not both" \
  "$bin/kmq-convert" "$tmp" --synthetic tiny -o "$tmp/x.kmq"
expect_fail "no input" "no input: give a checkpoint" "$bin/kmq-convert" -o "$tmp/x.kmq"
expect_fail "existing output" "already exists" "$bin/kmq-convert" --synthetic tiny -o "$tmp/a.kmq"
[ -e "$tmp/x.kmq" ] && { echo "FAIL: output written after an error"; fail=$((fail+1)); }
expect_fail "bench: missing model" "nope.kmq: no such file" "$bin/kmq" bench -m "$tmp/nope.kmq" -p 8 -n 4
expect_fail "bench: nothing to do" "nothing to measure" "$bin/kmq" bench -m "$tmp/a.kmq" -p 0 -n 0
expect_fail "bench: context too small" "needs a context of 1000 tokens but the model holds 512" \
  "$bin/kmq" bench -m "$tmp/a.kmq" -p 1000 -n 4 --bw-mib 0
expect_fail "bench: zero threads" "threads 0 must be at least 1" "$bin/kmq" bench -m "$tmp/a.kmq" -t 0
expect_fail "bench: zero repetitions" "repetitions must be at least 1" "$bin/kmq" bench -m "$tmp/a.kmq" -r 0
expect_fail "bench: not a model" "not a .kmq file" "$bin/kmq" bench -m "$tmp/conv.log" -p 8 -n 4 --bw-mib 0
expect_fail "bench: unknown device" "(unknown|not available|cuda).*" "$bin/kmq" bench -m "$tmp/a.kmq" --device tpu -p 8 -n 4
echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
